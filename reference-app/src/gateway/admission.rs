//! The gateway's adaptive admission, one per service: how many requests it lets be in flight
//! to the service's instances at once, learned from how fast they answer (decision 0016).
//!
//! A fixed bound has to be sized to the instances behind it, which the gateway does not know:
//! too high and a surge queues inside the instances until every answer is late (at 4,096 on two
//! cores, 30 s); too low and it refuses what they could serve. This one is the congestion
//! control of TCP, with an answer later than the latency target in place of a lost packet:
//!
//! - while answers come back within the target and the bound is in use (at least half of it in
//!   flight), it grows: by one per answer up to the threshold (slow start, doubling each round
//!   trip), by one per round trip above it;
//! - an answer later than the target (queueing inside the instances), or one that says they are
//!   overloaded (429, 503, the gateway's timeout), shrinks it by a quarter, at most once per
//!   target interval (the answers already in flight were admitted under the old bound);
//! - a late answer also sets the threshold to the shrunk bound: what the instances take is
//!   about there. An overload answer that came fast (a dependency down) does not, so that the
//!   bound grows back in slow start once they recover.
//!
//! At overload the requests admitted see about the target's latency and the rest are refused
//! at once (429 with `Retry-After`), rather than every request waiting in a queue; the bound
//! stays between [`MIN_LIMIT`] and `GATEWAY_MAX_IN_FLIGHT`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The smallest bound: requests that keep probing whether the instances recovered.
pub(crate) const MIN_LIMIT: f64 = 4.0;

/// The bound a service starts with (then grows in slow start when used).
const INITIAL_LIMIT: f64 = 32.0;

/// What a late or overloaded answer leaves of the bound.
const BACKOFF: f64 = 0.75;

/// How an admitted request ended, as the admission reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The service answered (any status but the overload ones).
    Answered,
    /// The service said it is overloaded (429 or 503), or its answer did not begin in time.
    Overloaded,
    /// No answer that says anything about the service's load (a refused connection, a
    /// failure before the answer): the bound does not move.
    Unknown,
}

/// The bound and its state; see the [module](self) documentation.
#[derive(Debug)]
pub(crate) struct Admission {
    service: &'static str,
    target: Duration,
    max: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    limit: f64,
    threshold: f64,
    in_flight: usize,
    /// No shrinking before this (once per target interval).
    calm_until: Option<Instant>,
}

impl Admission {
    /// An admission for `service` aiming at answers within `target`, its bound at most `max`.
    pub(crate) fn new(service: &'static str, target: Duration, max: usize) -> Arc<Self> {
        #[allow(clippy::cast_precision_loss)] // bounds far below 2^52
        let max = (max as f64).max(MIN_LIMIT);
        let admission = Arc::new(Self {
            service,
            target,
            max,
            state: Mutex::new(State {
                limit: INITIAL_LIMIT.min(max),
                threshold: max,
                in_flight: 0,
                calm_until: None,
            }),
        });
        admission.publish(INITIAL_LIMIT.min(max));
        admission
    }

    /// A ticket for one more request in flight, or `None` when the bound is reached.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<Ticket> {
        let mut state = self.lock();
        #[allow(clippy::cast_precision_loss)]
        if state.in_flight as f64 + 1.0 > state.limit.floor() {
            return None;
        }
        state.in_flight += 1;
        Some(Ticket {
            admission: self.clone(),
            started: Instant::now(),
            finished: false,
        })
    }

    /// The bound now, whole requests.
    #[cfg(test)]
    pub(crate) fn limit(&self) -> usize {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let limit = self.lock().limit.floor() as usize;
        limit
    }

    /// Records one admitted request's end: `latency` until its answer began, `outcome`, at
    /// `now`.
    fn finish(&self, latency: Duration, outcome: Outcome, now: Instant) {
        let mut state = self.lock();
        #[allow(clippy::cast_precision_loss)]
        let in_use = state.in_flight as f64 >= state.limit / 2.0;
        state.in_flight = state.in_flight.saturating_sub(1);
        let late = latency > self.target;
        let before = state.limit;
        let overloaded = outcome == Outcome::Overloaded;
        if outcome == Outcome::Unknown {
            // Nothing learned.
        } else if late || overloaded {
            if state.calm_until.is_none_or(|until| now >= until) {
                state.limit = (state.limit * BACKOFF).max(MIN_LIMIT);
                if late {
                    state.threshold = state.limit;
                }
                state.calm_until = Some(now + self.target);
            }
        } else if in_use {
            let step = if state.limit < state.threshold {
                1.0
            } else {
                1.0 / state.limit
            };
            state.limit = (state.limit + step).min(self.max);
        }
        let after = state.limit;
        drop(state);
        if after.floor() != before.floor() {
            self.publish(after);
        }
    }

    fn publish(&self, limit: f64) {
        metrics::gauge!("gateway_admission_limit", "service" => self.service).set(limit.floor());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One admitted request. [`Ticket::finish`] reports how it ended; dropped without it (the
/// caller gave up) it only frees its place.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    started: Instant,
    finished: bool,
}

impl Ticket {
    /// Frees the place and lets the answer's latency and `outcome` move the bound.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        let now = Instant::now();
        self.admission
            .finish(now.duration_since(self.started), outcome, now);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.finished {
            self.admission
                .finish(Duration::ZERO, Outcome::Unknown, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Duration = Duration::from_millis(100);
    const FAST: Duration = Duration::from_millis(5);
    const LATE: Duration = Duration::from_millis(300);

    /// A client with more requests than the bound takes: keeps the bound full and finishes
    /// `answers` requests one by one with `latency` and `outcome` at `now`.
    fn saturate(
        a: &Arc<Admission>,
        answers: usize,
        latency: Duration,
        outcome: Outcome,
        now: Instant,
    ) {
        let mut tickets = Vec::new();
        for _ in 0..answers {
            while let Some(ticket) = a.admit() {
                tickets.push(ticket);
            }
            let mut ticket = tickets.pop().expect("the bound admits at least one");
            ticket.finished = true;
            a.finish(latency, outcome, now);
        }
    }

    /// A client with one request at a time: `answers` of them.
    fn trickle(a: &Arc<Admission>, answers: usize, latency: Duration, now: Instant) {
        for _ in 0..answers {
            let mut ticket = a.admit().expect("one is admitted");
            ticket.finished = true;
            a.finish(latency, Outcome::Answered, now);
        }
    }

    #[test]
    fn the_bound_refuses_beyond_it_and_a_dropped_ticket_frees_its_place() {
        let a = Admission::new("test", TARGET, 1000);
        let held: Vec<Ticket> = (0..32).map(|_| a.admit().expect("within")).collect();
        assert!(a.admit().is_none(), "the 33rd is refused");
        drop(held);
        assert!(a.admit().is_some());
        assert_eq!(a.limit(), 32, "giving up moves nothing");
    }

    #[test]
    fn fast_answers_grow_the_bound_in_slow_start_only_while_it_is_used() {
        let a = Admission::new("test", TARGET, 1000);
        let now = Instant::now();
        trickle(&a, 500, FAST, now);
        assert_eq!(
            a.limit(),
            32,
            "one at a time uses too little of it to grow it"
        );
        saturate(&a, 32, FAST, Outcome::Answered, now);
        assert_eq!(
            a.limit(),
            64,
            "one more per answer: doubled in one round trip"
        );
        saturate(&a, 2000, FAST, Outcome::Answered, now);
        assert_eq!(a.limit(), 1000, "capped at the maximum");
    }

    #[test]
    fn late_answers_shrink_it_once_per_interval_and_growth_is_then_additive() {
        let a = Admission::new("test", TARGET, 1000);
        let t0 = Instant::now();
        saturate(&a, 100, LATE, Outcome::Answered, t0);
        assert_eq!(
            a.limit(),
            24,
            "one shrink in the interval, however many late answers"
        );
        saturate(&a, 100, LATE, Outcome::Answered, t0 + TARGET);
        assert_eq!(a.limit(), 18);
        // Fast again: about one more per round trip (18 answers) above the threshold.
        saturate(&a, 100, FAST, Outcome::Answered, t0 + TARGET * 2);
        assert!((21..=24).contains(&a.limit()), "{}", a.limit());
        // Late forever: down to the floor, never below.
        for i in 3..40 {
            saturate(
                &a,
                10,
                Duration::from_secs(1),
                Outcome::Answered,
                t0 + TARGET * i,
            );
        }
        assert_eq!(a.limit(), 4);
    }

    #[test]
    fn fast_overload_answers_shrink_it_but_it_grows_back_in_slow_start() {
        let a = Admission::new("test", TARGET, 1000);
        let t0 = Instant::now();
        for i in 0..12 {
            saturate(&a, 10, FAST, Outcome::Overloaded, t0 + TARGET * i);
        }
        assert_eq!(a.limit(), 4, "a dependency down: the floor");
        saturate(&a, 28, FAST, Outcome::Answered, t0 + TARGET * 20);
        assert_eq!(a.limit(), 32, "one more per answer: back in 28 answers");
    }

    #[test]
    fn unknown_outcomes_move_nothing() {
        let a = Admission::new("test", TARGET, 1000);
        saturate(
            &a,
            100,
            Duration::from_secs(9),
            Outcome::Unknown,
            Instant::now(),
        );
        assert_eq!(a.limit(), 32);
    }
}
