//! The resilience stack: one tower layer per policy, assembled in [`build`] in a fixed order
//! that the [`Stack`] type spells out (outermost first).
//!
//! The overall timeout is a *deadline* carried down with the request rather than only a timer
//! around the stack: [`AttemptTimeout`] clips every attempt to it and ends the retries when the
//! next backoff could not finish before it. So the call comes back up through the breaker by the
//! deadline and the breaker records it; a bare outer timer would drop the breaker's future
//! instead, and a PG that hangs would never open the breaker. The outer timer stays as a
//! backstop ([`tokio::time::timeout_at`] polls the call before its own timer, so when both are
//! due at the deadline the recorded outcome wins).
//!
//! tower-resilience's breaker times its open state with `std::time::Instant`, which tokio's
//! paused clock does not move. Its own wait is therefore set to zero and [`BreakerGate`] holds
//! the open duration on tokio's clock; the crate still counts failures, admits the single
//! half-open probe and makes every transition.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::layer::layer_fn;
use tower::{Service, ServiceBuilder};
use tower_resilience_circuitbreaker::{
    CircuitBreaker, CircuitBreakerConfigError, CircuitBreakerError, CircuitBreakerHandle,
    CircuitBreakerLayer, CircuitState, FailureClassifier,
};
use tower_resilience_retry::{BackoffConfigError, ExponentialRandomBackoff, Retry, RetryLayer};

use super::{
    BreakerState, ChargeOutcome, ChargeRequest, ConfigError, GatewayClientConfig, GatewayError,
    GatewayTransport, RefundReceipt, RefundRequest, TransportError, UnavailableCause,
};

/// The assembled stack over transport `T`, outermost layer first.
pub(super) type Stack<T> = OverallTimeout<
    BreakerGate<
        CircuitBreaker<
            Retry<AttemptTimeout<TransportService<T>>, Attempt, GatewayReply, StackError>,
            UnavailableCallsFail,
        >,
    >,
>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// An operation on the PG.
#[derive(Debug, Clone)]
pub(super) enum GatewayCall {
    Charge(ChargeRequest),
    Refund(RefundRequest),
}

/// The PG's answer to a [`GatewayCall`], of the same kind.
#[derive(Debug)]
pub(super) enum GatewayReply {
    Charge(ChargeOutcome),
    Refund(RefundReceipt),
}

/// A call on its way down the stack (cloned for each attempt).
#[derive(Debug, Clone)]
pub(super) struct Attempt {
    call: GatewayCall,
    deadline: Instant,
    overall_timeout: Duration,
    /// Shared by the clones, so the outer layers can report how many attempts were made ...
    attempts: Arc<AtomicU32>,
    /// ... and whether any of them may have been done by the PG.
    may_have_charged: Arc<AtomicBool>,
}

impl Attempt {
    fn deadline_exceeded(&self) -> UnavailableCause {
        UnavailableCause::DeadlineExceeded {
            after: self.overall_timeout,
        }
    }
}

/// What the outer layers read of a call's attempts once it is over.
#[derive(Debug, Clone)]
struct Tally {
    attempts: Arc<AtomicU32>,
    may_have_charged: Arc<AtomicBool>,
}

impl Tally {
    fn of(attempt: &Attempt) -> Self {
        Self {
            attempts: Arc::clone(&attempt.attempts),
            may_have_charged: Arc::clone(&attempt.may_have_charged),
        }
    }

    fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::SeqCst)
    }

    fn unavailable(&self, cause: UnavailableCause) -> GatewayError {
        // A call that made no attempt did nothing, whatever its cause says.
        let attempts = self.attempts();
        let may_have_charged = attempts > 0
            && (self.may_have_charged.load(Ordering::SeqCst) || cause.may_have_charged());
        GatewayError::Unavailable {
            attempts,
            cause,
            may_have_charged,
        }
    }
}

/// The error inside the stack: a [`TransportError`] plus whether a retry may follow.
#[derive(Debug)]
pub(super) enum StackError {
    /// Nothing settled; a retry may follow.
    Transient(UnavailableCause),
    /// Nothing settled, and no retry within this call: the deadline leaves no room for
    /// another attempt, or the PG asked for a `Retry-After` (the caller parks the charge).
    LastAttempt(UnavailableCause),
    /// A permanent refusal.
    Refused { status: u16, message: String },
}

impl From<TransportError> for StackError {
    fn from(error: TransportError) -> Self {
        match error {
            // Within a call, a retry comes after a backoff of milliseconds: when the PG asks
            // for longer, the caller waits instead, out of the call.
            TransportError::Unavailable(cause) if cause.retry_after().is_some() => {
                Self::LastAttempt(cause)
            }
            TransportError::Unavailable(cause) => Self::Transient(cause),
            TransportError::Refused { status, message } => Self::Refused { status, message },
        }
    }
}

impl StackError {
    fn into_gateway_error(self, tally: &Tally) -> GatewayError {
        match self {
            Self::Transient(cause) | Self::LastAttempt(cause) => tally.unavailable(cause),
            Self::Refused { status, message } => GatewayError::Refused { status, message },
        }
    }
}

/// Assembles the stack over `transport`, with the monitor of its breaker.
pub(super) fn build<T: GatewayTransport>(
    transport: T,
    config: &GatewayClientConfig,
) -> Result<(Stack<T>, BreakerMonitor), ConfigError> {
    let opened_at = Arc::new(Mutex::new(None));
    let on_open = Arc::clone(&opened_at);
    let (breaker, handle) = CircuitBreakerLayer::builder()
        .name("payment-gateway")
        .consecutive_failures(config.breaker_failure_threshold as usize)
        // The open duration is kept by BreakerGate on tokio's clock (see the module docs).
        .wait_duration_in_open(Duration::ZERO)
        .permitted_calls_in_half_open(1)
        .on_state_transition(move |_, to| {
            if to == CircuitState::Open {
                *on_open.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            }
        })
        .failure_classifier_type(UnavailableCallsFail)
        .build_with_handle()
        .map_err(|e| breaker_config_error(&e))?;
    let monitor = BreakerMonitor(Arc::new(BreakerClock {
        handle,
        opened_at,
        open_duration: config.breaker_open_duration,
    }));

    let backoff = ExponentialRandomBackoff::new(config.backoff_initial, config.backoff_jitter)
        .and_then(|b| b.multiplier(config.backoff_multiplier))
        .map_err(|e| backoff_config_error(&e))?
        .max_interval(config.backoff_max);
    let retry = RetryLayer::<Attempt, GatewayReply, StackError>::builder()
        .name("payment-gateway")
        .max_attempts(config.max_attempts as usize)
        .backoff(backoff)
        .retry_on(|error: &StackError| matches!(error, StackError::Transient(_)))
        .build();
    let bound = BackoffBound::of(config);

    let (overall_timeout, attempt_timeout) = (config.overall_timeout, config.attempt_timeout);
    let gate_monitor = monitor.clone();
    let stack: Stack<T> = ServiceBuilder::new()
        .layer(layer_fn(move |inner| OverallTimeout {
            inner,
            timeout: overall_timeout,
        }))
        .layer(layer_fn(move |inner| BreakerGate {
            inner,
            monitor: gate_monitor.clone(),
            fail_fast: None,
        }))
        .layer(breaker)
        .layer(retry)
        .layer(layer_fn(move |inner| AttemptTimeout {
            inner,
            timeout: attempt_timeout,
            backoff: bound,
        }))
        .service(TransportService(Arc::new(transport)));
    Ok((stack, monitor))
}

fn breaker_config_error(error: &CircuitBreakerConfigError) -> ConfigError {
    match error {
        CircuitBreakerConfigError::ZeroConsecutiveFailures => ConfigError::Invalid {
            field: "breaker_failure_threshold",
            reason: "must be at least 1",
        },
        _ => ConfigError::Invalid {
            field: "breaker",
            reason: "rejected by the circuit breaker",
        },
    }
}

fn backoff_config_error(error: &BackoffConfigError) -> ConfigError {
    match error {
        BackoffConfigError::InvalidMultiplier(_) => ConfigError::Invalid {
            field: "backoff_multiplier",
            reason: "must be finite and at least 1.0",
        },
        _ => ConfigError::Invalid {
            field: "backoff_jitter",
            reason: "must be within 0.0..=1.0",
        },
    }
}

/// Layer 1: the overall timeout, as a deadline, set when the call enters the stack.
#[derive(Debug, Clone)]
pub(super) struct OverallTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<GatewayCall> for OverallTimeout<S>
where
    S: Service<Attempt, Response = GatewayReply, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = GatewayReply;
    type Error = GatewayError;
    type Future = BoxFuture<Result<GatewayReply, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: GatewayCall) -> Self::Future {
        let attempt = Attempt {
            call,
            deadline: Instant::now() + self.timeout,
            overall_timeout: self.timeout,
            attempts: Arc::new(AtomicU32::new(0)),
            may_have_charged: Arc::new(AtomicBool::new(false)),
        };
        let (deadline, tally, cause) = (
            attempt.deadline,
            Tally::of(&attempt),
            attempt.deadline_exceeded(),
        );
        let response = self.inner.call(attempt);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, response).await {
                Ok(result) => result,
                Err(_elapsed) => Err(tally.unavailable(cause)),
            }
        })
    }
}

/// Layer 2, in front of the crate's `CircuitBreaker`: keeps the breaker's open duration on
/// tokio's clock and turns the stack's errors into [`GatewayError`]s.
#[derive(Debug, Clone)]
pub(super) struct BreakerGate<S> {
    inner: S,
    monitor: BreakerMonitor,
    /// Set by `poll_ready` when the breaker is open: the next `call` fails fast.
    fail_fast: Option<Duration>,
}

impl<S> Service<Attempt> for BreakerGate<S>
where
    S: Service<Attempt, Response = GatewayReply, Error = CircuitBreakerError<StackError>>,
    S::Future: Send + 'static,
{
    type Response = GatewayReply;
    type Error = GatewayError;
    type Future = BoxFuture<Result<GatewayReply, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Some(remaining) = self.monitor.open_for() {
            self.fail_fast = Some(remaining);
            return Poll::Ready(Ok(()));
        }
        self.fail_fast = None;
        self.inner.poll_ready(cx).map_err(|error| match error {
            CircuitBreakerError::OpenCircuit => GatewayError::BreakerOpen { retry_after: None },
            // The crate's readiness reports no call's error; nothing was attempted.
            CircuitBreakerError::Inner(error) => error.into_gateway_error(&Tally {
                attempts: Arc::default(),
                may_have_charged: Arc::default(),
            }),
        })
    }

    fn call(&mut self, attempt: Attempt) -> Self::Future {
        if let Some(remaining) = self.fail_fast.take() {
            return Box::pin(std::future::ready(Err(GatewayError::BreakerOpen {
                retry_after: Some(remaining),
            })));
        }
        let tally = Tally::of(&attempt);
        let response = self.inner.call(attempt);
        Box::pin(async move { response.await.map_err(|error| breaker_error(error, &tally)) })
    }
}

fn breaker_error(error: CircuitBreakerError<StackError>, tally: &Tally) -> GatewayError {
    match error {
        // The crate rejects here only while its single half-open probe is under way (the gate
        // answers for the open period), so when it will let the next call through is unknown.
        CircuitBreakerError::OpenCircuit => GatewayError::BreakerOpen { retry_after: None },
        CircuitBreakerError::Inner(error) => error.into_gateway_error(tally),
    }
}

/// Which calls count against the breaker: those that settled nothing. A decline or a
/// permanent refusal means the PG is up.
#[derive(Debug, Clone, Copy)]
pub(super) struct UnavailableCallsFail;

impl<Res> FailureClassifier<Res, StackError> for UnavailableCallsFail {
    fn classify(&self, result: &Result<Res, StackError>) -> bool {
        matches!(
            result,
            Err(StackError::Transient(_) | StackError::LastAttempt(_))
        )
    }
}

/// The breaker's state as the client reports it, and the open period on tokio's clock.
#[derive(Clone)]
pub(super) struct BreakerMonitor(Arc<BreakerClock>);

struct BreakerClock {
    handle: CircuitBreakerHandle<UnavailableCallsFail>,
    /// When the breaker last opened, by tokio's clock (set by its transition listener).
    opened_at: Arc<Mutex<Option<Instant>>>,
    open_duration: Duration,
}

impl BreakerMonitor {
    pub(super) fn state(&self) -> BreakerState {
        match self.0.handle.state() {
            CircuitState::Closed => BreakerState::Closed,
            CircuitState::Open => BreakerState::Open,
            CircuitState::HalfOpen => BreakerState::HalfOpen,
        }
    }

    /// How long the breaker stays open from now, or `None` when calls may reach it (closed,
    /// half-open, or open with its open duration over: the next call is the probe).
    fn open_for(&self) -> Option<Duration> {
        if self.0.handle.state() != CircuitState::Open {
            return None;
        }
        let opened_at = (*self
            .0
            .opened_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner))?;
        let reopens = opened_at + self.0.open_duration;
        let now = Instant::now();
        (now < reopens).then(|| reopens - now)
    }
}

impl std::fmt::Debug for BreakerMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerMonitor")
            .field("state", &self.state())
            .field("open_duration", &self.0.open_duration)
            .finish_non_exhaustive()
    }
}

/// The longest backoff the retry layer can wait after a given attempt: the same exponential
/// curve as `ExponentialRandomBackoff`, at the top of its jitter.
#[derive(Debug, Clone, Copy)]
struct BackoffBound {
    initial: Duration,
    multiplier: f64,
    max: Duration,
    jitter: f64,
}

impl BackoffBound {
    fn of(config: &GatewayClientConfig) -> Self {
        Self {
            initial: config.backoff_initial,
            multiplier: config.backoff_multiplier,
            max: config.backoff_max,
            jitter: config.backoff_jitter,
        }
    }

    /// The longest wait after attempt number `made` (1 for the first attempt).
    fn longest_after(self, made: u32) -> Duration {
        let exponent = i32::try_from(made.saturating_sub(1)).unwrap_or(i32::MAX);
        let seconds = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = Duration::try_from_secs_f64(seconds).map_or(self.max, |d| d.min(self.max));
        Duration::try_from_secs_f64(capped.as_secs_f64() * (1.0 + self.jitter))
            .unwrap_or(Duration::MAX)
    }
}

/// Layer 4: bounds one attempt by the per-attempt timeout and by the call's deadline.
#[derive(Debug, Clone)]
pub(super) struct AttemptTimeout<S> {
    inner: S,
    timeout: Duration,
    backoff: BackoffBound,
}

impl<S> Service<Attempt> for AttemptTimeout<S>
where
    S: Service<Attempt, Response = GatewayReply, Error = StackError>,
    S::Future: Send + 'static,
{
    type Response = GatewayReply;
    type Error = StackError;
    type Future = BoxFuture<Result<GatewayReply, StackError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, attempt: Attempt) -> Self::Future {
        let deadline = attempt.deadline;
        let deadline_exceeded = attempt.deadline_exceeded();
        let now = Instant::now();
        if now >= deadline {
            return Box::pin(std::future::ready(Err(StackError::LastAttempt(
                deadline_exceeded,
            ))));
        }
        let made = attempt.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        let may_have_charged = Arc::clone(&attempt.may_have_charged);
        let ends = deadline.min(now + self.timeout);
        let (timeout, backoff) = (self.timeout, self.backoff);
        let response = self.inner.call(attempt);
        Box::pin(async move {
            let result = match tokio::time::timeout_at(ends, response).await {
                Ok(result) => result,
                Err(_elapsed) if ends == deadline => {
                    Err(StackError::LastAttempt(deadline_exceeded))
                }
                Err(_elapsed) => Err(StackError::Transient(UnavailableCause::AttemptTimedOut {
                    after: timeout,
                })),
            };
            if let Err(StackError::Transient(cause) | StackError::LastAttempt(cause)) = &result {
                if cause.may_have_charged() {
                    may_have_charged.store(true, Ordering::SeqCst);
                }
            }
            match result {
                // A retry must start before the deadline, or the retry layer would still be
                // sleeping when the outer timer drops the call, unrecorded by the breaker.
                Err(StackError::Transient(cause))
                    if Instant::now()
                        .checked_add(backoff.longest_after(made))
                        .is_none_or(|retry_at| retry_at >= deadline) =>
                {
                    Err(StackError::LastAttempt(cause))
                }
                other => other,
            }
        })
    }
}

/// The innermost service: one attempt through the [`GatewayTransport`].
pub(super) struct TransportService<T>(Arc<T>);

impl<T> Clone for TransportService<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> std::fmt::Debug for TransportService<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportService").finish_non_exhaustive()
    }
}

impl<T: GatewayTransport> Service<Attempt> for TransportService<T> {
    type Response = GatewayReply;
    type Error = StackError;
    type Future = BoxFuture<Result<GatewayReply, StackError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, attempt: Attempt) -> Self::Future {
        let transport = Arc::clone(&self.0);
        Box::pin(async move {
            let reply = match &attempt.call {
                GatewayCall::Charge(request) => {
                    transport.charge(request).await.map(GatewayReply::Charge)
                }
                GatewayCall::Refund(request) => {
                    transport.refund(request).await.map(GatewayReply::Refund)
                }
            };
            reply.map_err(StackError::from)
        })
    }
}
