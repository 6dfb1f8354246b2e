//! Single flight: concurrent misses of one key on one node share one load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// How a flight ended, as seen by the callers that waited for it.
#[derive(Debug, Clone)]
pub(crate) enum Landing<V> {
    /// The leader got a value (or a cached/loaded "not found").
    Loaded(Option<V>),
    /// The leader's load failed: waiters run their own loader, since a caller's error type
    /// need not be `Clone` and so cannot be shared.
    Failed,
}

type Slot<V> = watch::Receiver<Option<Landing<V>>>;

/// The flights in progress, by key.
#[derive(Debug)]
pub(crate) struct Flights<V> {
    inflight: Mutex<HashMap<String, (u64, Slot<V>)>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// What [`Flights::join`] hands out.
pub(crate) enum Role<V: Clone> {
    /// This caller loads and must [`Leader::land`] the result.
    Leader(Leader<V>),
    /// Another caller is loading; wait on this.
    Waiter(Slot<V>),
}

/// The caller that loads for everyone. Dropping it without landing (cancellation) releases
/// the waiters, who then load themselves.
pub(crate) struct Leader<V: Clone> {
    flights: Arc<Flights<V>>,
    key: String,
    id: u64,
    sender: Option<watch::Sender<Option<Landing<V>>>>,
}

impl<V: Clone> Default for Flights<V> {
    fn default() -> Self {
        Self {
            inflight: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl<V: Clone> Flights<V> {
    /// Joins the flight for `key`, starting one if there is none.
    pub(crate) fn join(self: &Arc<Self>, key: &str) -> Role<V> {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, slot)) = inflight.get(key) {
            return Role::Waiter(slot.clone());
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (sender, receiver) = watch::channel(None);
        inflight.insert(key.to_owned(), (id, receiver));
        Role::Leader(Leader {
            flights: Arc::clone(self),
            key: key.to_owned(),
            id,
            sender: Some(sender),
        })
    }

    fn remove(&self, key: &str, id: u64) {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if inflight.get(key).is_some_and(|(current, _)| *current == id) {
            inflight.remove(key);
        }
    }
}

impl<V: Clone> Leader<V> {
    /// Ends the flight: later callers start a new one, current waiters get `landing`.
    pub(crate) fn land(mut self, landing: Landing<V>) {
        self.flights.remove(&self.key, self.id);
        if let Some(sender) = self.sender.take() {
            // No receiver left is fine: every waiter gave up.
            let _ = sender.send(Some(landing));
        }
    }
}

impl<V: Clone> Drop for Leader<V> {
    fn drop(&mut self) {
        if self.sender.is_some() {
            self.flights.remove(&self.key, self.id);
        }
    }
}

/// Waits for the leader; a leader that vanished without landing counts as a failure.
pub(crate) async fn wait<V: Clone>(mut slot: Slot<V>) -> Landing<V> {
    match slot.wait_for(Option::is_some).await {
        Ok(landing) => landing.clone().unwrap_or(Landing::Failed),
        Err(_) => Landing::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_caller_waits_for_the_first_and_gets_its_value() {
        let flights = Arc::new(Flights::<u32>::default());
        let Role::Leader(leader) = flights.join("k") else {
            panic!("first caller leads");
        };
        let Role::Waiter(slot) = flights.join("k") else {
            panic!("second caller waits");
        };
        leader.land(Landing::Loaded(Some(7)));
        assert!(matches!(wait(slot).await, Landing::Loaded(Some(7))));
        assert!(
            matches!(flights.join("k"), Role::Leader(_)),
            "flight is over"
        );
    }

    #[tokio::test]
    async fn a_cancelled_leader_releases_its_waiters() {
        let flights = Arc::new(Flights::<u32>::default());
        let leader = flights.join("k");
        let Role::Waiter(slot) = flights.join("k") else {
            panic!("second caller waits");
        };
        drop(leader);
        assert!(matches!(wait(slot).await, Landing::Failed));
        assert!(matches!(flights.join("k"), Role::Leader(_)));
    }
}
