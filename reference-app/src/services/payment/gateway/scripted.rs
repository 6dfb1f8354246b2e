//! A scripted stand-in for the PG transport: each attempt takes the next programmed step, so a
//! test decides exactly what the PG answers, and when, on tokio's (paused) clock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{
    ChargeId, ChargeOutcome, ChargeRequest, GatewayTransport, RefundReceipt, RefundRequest,
    TransportError, UnavailableCause,
};

/// What the scripted PG does with one attempt.
#[derive(Debug, Clone)]
pub(super) enum Step {
    /// Approves a charge with this charge id.
    Approve(&'static str),
    /// Declines a charge with this reason.
    Decline(&'static str),
    /// Confirms a refund with this refund id.
    Refund(&'static str),
    /// Fails the attempt.
    Fail(TransportError),
    /// Waits, then does the inner step.
    Delay(Duration, Box<Step>),
    /// Never answers.
    Hang,
}

impl Step {
    pub(super) fn unavailable(status: u16) -> Self {
        Self::Fail(
            UnavailableCause::ServerError {
                status,
                retry_after: None,
            }
            .into(),
        )
    }

    pub(super) fn refused(status: u16) -> Self {
        Self::Fail(TransportError::Refused {
            status,
            message: "scripted refusal".into(),
        })
    }

    pub(super) fn unreadable() -> Self {
        Self::Fail(
            UnavailableCause::UnreadableAnswer {
                status: 201,
                detail: "garbage".into(),
            }
            .into(),
        )
    }

    pub(super) fn throttled(status: u16, retry_after: Option<Duration>) -> Self {
        Self::Fail(
            UnavailableCause::Throttled {
                status,
                retry_after,
            }
            .into(),
        )
    }

    pub(super) fn after(delay: Duration, step: Step) -> Self {
        Self::Delay(delay, Box::new(step))
    }
}

/// The scripted transport; clones share the script and the record of attempts.
#[derive(Debug, Clone, Default)]
pub(super) struct ScriptedTransport(Arc<Mutex<Script>>);

#[derive(Debug, Default)]
struct Script {
    steps: VecDeque<Step>,
    attempts: Vec<Instant>,
}

impl ScriptedTransport {
    pub(super) fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        let transport = Self::default();
        transport.push(steps);
        transport
    }

    /// Appends steps to the script.
    pub(super) fn push(&self, steps: impl IntoIterator<Item = Step>) {
        self.script().steps.extend(steps);
    }

    /// When each attempt reached the transport, by tokio's clock.
    pub(super) fn attempts(&self) -> Vec<Instant> {
        self.script().attempts.clone()
    }

    /// Steps not yet used.
    pub(super) fn remaining(&self) -> usize {
        self.script().steps.len()
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn next(&self) -> Result<Step, TransportError> {
        let step = {
            let mut script = self.script();
            script.attempts.push(Instant::now());
            script.steps.pop_front()
        };
        let mut step = step.ok_or_else(|| UnavailableCause::UnreadableAnswer {
            status: 0,
            detail: "the script has no step left for this attempt".into(),
        })?;
        loop {
            match step {
                Step::Delay(delay, next) => {
                    tokio::time::sleep(delay).await;
                    step = *next;
                }
                Step::Hang => std::future::pending::<()>().await,
                Step::Fail(error) => return Err(error),
                answer => return Ok(answer),
            }
        }
    }
}

impl GatewayTransport for ScriptedTransport {
    async fn charge(&self, _request: &ChargeRequest) -> Result<ChargeOutcome, TransportError> {
        match self.next().await? {
            Step::Approve(id) => Ok(ChargeOutcome::Approved {
                charge_id: ChargeId(id.into()),
            }),
            Step::Decline(reason) => Ok(ChargeOutcome::Declined {
                reason: reason.into(),
            }),
            other => Err(UnavailableCause::UnreadableAnswer {
                status: 0,
                detail: format!("scripted {other:?} for a charge"),
            }
            .into()),
        }
    }

    async fn refund(&self, request: &RefundRequest) -> Result<RefundReceipt, TransportError> {
        match self.next().await? {
            Step::Refund(id) => Ok(RefundReceipt {
                refund_id: id.into(),
                charge_id: request.charge_id.clone(),
            }),
            other => Err(UnavailableCause::UnreadableAnswer {
                status: 0,
                detail: format!("scripted {other:?} for a refund"),
            }
            .into()),
        }
    }
}
