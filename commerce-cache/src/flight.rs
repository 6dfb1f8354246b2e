//! Single flight: concurrent misses of one key on one node share one load.
//!
//! Callers of a key queue on the key's flight in arrival order. The first one loads (it holds
//! the flight's *turn*); the others wait. When the load succeeds every waiter gets the value.
//! When it fails, or its caller goes away (a client disconnect, a request timeout), the turn
//! passes to the longest waiting caller only, and the rest keep waiting: a failing backend
//! sees one load of the key at a time from this node, never one per waiter (review C2).
//! Errors are not shared, since a caller's error type need not be `Clone`: each caller that
//! ends up with an error got it from its own loader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{watch, OwnedMutexGuard};

/// The flights in progress, by key.
#[derive(Debug)]
pub(crate) struct Flights<V> {
    inflight: Mutex<HashMap<String, Arc<Flight<V>>>>,
}

#[derive(Debug)]
struct Flight<V> {
    /// `Some(value)` once a load succeeded (`value` itself is `None` for a "not found").
    landed: watch::Sender<Option<Option<V>>>,
    /// Held by the caller that is loading. tokio's mutex is fair, so a turn that is given
    /// back goes to the caller that has waited longest.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// A caller's place in a key's flight; see [`Ticket::wait_turn`].
pub(crate) struct Ticket<V> {
    flights: Arc<Flights<V>>,
    key: String,
    flight: Arc<Flight<V>>,
}

/// What a caller's turn brought.
pub(crate) enum Turn<V> {
    /// Another caller loaded the key: here is its value.
    Landed(Option<V>),
    /// This caller loads; it must [`Leader::land`] a value or drop the leader on failure.
    Lead(Leader<V>),
}

/// The caller that loads for everyone queued on the key. Dropping it without landing (its
/// load failed, or its caller went away) hands the turn to the next caller in line.
pub(crate) struct Leader<V> {
    ticket: Ticket<V>,
    _turn: OwnedMutexGuard<()>,
}

impl<V> Default for Flights<V> {
    fn default() -> Self {
        Self {
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

impl<V: Clone> Flights<V> {
    /// Queues on the flight for `key`, starting one if there is none.
    pub(crate) fn join(self: &Arc<Self>, key: &str) -> Ticket<V> {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        let flight = inflight.entry(key.to_owned()).or_insert_with(|| {
            Arc::new(Flight {
                landed: watch::Sender::new(None),
                turn: Arc::new(tokio::sync::Mutex::new(())),
            })
        });
        Ticket {
            flights: Arc::clone(self),
            key: key.to_owned(),
            flight: Arc::clone(flight),
        }
    }

    /// Forgets `flight` if it is still the key's current one.
    fn remove(&self, key: &str, flight: &Arc<Flight<V>>) {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if inflight
            .get(key)
            .is_some_and(|current| Arc::ptr_eq(current, flight))
        {
            inflight.remove(key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl<V: Clone> Ticket<V> {
    /// Waits until a value landed or it is this caller's turn to load.
    pub(crate) async fn wait_turn(self) -> Turn<V> {
        let mut landed = self.flight.landed.subscribe();
        let turn = Arc::clone(&self.flight.turn).lock_owned();
        tokio::select! {
            // A value beats a turn: a caller handed the turn after a success must not load.
            biased;
            Ok(value) = landed.wait_for(Option::is_some) => Turn::Landed(value.clone().flatten()),
            guard = turn => {
                // The previous holder may have landed a value just before giving the turn back.
                let value = self.flight.landed.borrow().clone();
                match value {
                    Some(value) => Turn::Landed(value),
                    None => Turn::Lead(Leader { ticket: self, _turn: guard }),
                }
            }
        }
    }
}

impl<V> Drop for Ticket<V> {
    fn drop(&mut self) {
        // The last caller of a flight that never landed (every load failed) removes it, so a
        // failing key leaves nothing behind. Joins clone the flight under the same lock, so
        // the count cannot grow while it is read.
        let mut inflight = self
            .flights
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if inflight
            .get(&self.key)
            .is_some_and(|current| Arc::ptr_eq(current, &self.flight))
            && Arc::strong_count(&self.flight) == 2
        {
            inflight.remove(&self.key);
        }
    }
}

impl<V: Clone> Leader<V> {
    /// Ends the flight with `value`: every caller queued on it gets it, later callers start a
    /// new flight (and find the value in L1).
    pub(crate) fn land(self, value: Option<V>) {
        let flight = &self.ticket.flight;
        flight.landed.send_replace(Some(value));
        self.ticket.flights.remove(&self.ticket.key, flight);
        // Dropping `self` gives the turn back; queued callers see the value first.
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn leader(turn: Turn<u32>) -> Leader<u32> {
        match turn {
            Turn::Lead(leader) => leader,
            Turn::Landed(_) => panic!("expected to lead"),
        }
    }

    async fn queued(flights: &Arc<Flights<u32>>) -> tokio::task::JoinHandle<Option<u32>> {
        let ticket = flights.join("k");
        let task = tokio::spawn(async move {
            match ticket.wait_turn().await {
                Turn::Landed(value) => value,
                Turn::Lead(_) => Some(0),
            }
        });
        // Let it reach the queue before anything else happens.
        tokio::task::yield_now().await;
        task
    }

    #[tokio::test]
    async fn waiters_get_the_value_the_leader_landed() {
        let flights = Arc::new(Flights::<u32>::default());
        let first = leader(flights.join("k").wait_turn().await);
        let waiters = [queued(&flights).await, queued(&flights).await];
        first.land(Some(7));
        for waiter in waiters {
            assert_eq!(waiter.await.expect("join"), Some(7));
        }
        assert_eq!(flights.len(), 0, "flight is over");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_or_cancelled_leader_hands_the_turn_to_one_waiter_only() {
        let flights = Arc::new(Flights::<u32>::default());
        let first = leader(flights.join("k").wait_turn().await);
        let second = tokio::spawn({
            let ticket = flights.join("k");
            async move { leader(ticket.wait_turn().await) }
        });
        tokio::task::yield_now().await;
        let third = queued(&flights).await;

        drop(first); // failed, or its caller went away
        let second = second.await.expect("the next caller in line leads");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!third.is_finished(), "the caller behind it keeps waiting");
        second.land(Some(8));
        assert_eq!(third.await.expect("join"), Some(8));
    }

    #[tokio::test]
    async fn a_flight_nobody_waits_for_anymore_is_forgotten() {
        let flights = Arc::new(Flights::<u32>::default());
        let first = leader(flights.join("k").wait_turn().await);
        let waiter = flights.join("k");
        drop(first);
        assert_eq!(flights.len(), 1, "a caller still waits");
        drop(waiter);
        assert_eq!(flights.len(), 0);
        assert!(matches!(flights.join("k").wait_turn().await, Turn::Lead(_)));
    }
}
