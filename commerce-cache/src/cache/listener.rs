//! The task that applies invalidations from other nodes to this node's L1.
//!
//! Owned by the cache's task tracker: it holds only a weak reference between events, and
//! stops when the cache's shutdown token is cancelled (by `shutdown()`, or when the last
//! cache clone is dropped) or the cache is gone.

use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{CacheValue, Inner};
use crate::bus::{BusEvent, Subscription};
use crate::metrics::bump;

enum Woke {
    Event(Option<BusEvent>, Box<dyn Subscription>),
    RepairDue,
}

type NextEvent = Pin<Box<dyn Future<Output = (Option<BusEvent>, Box<dyn Subscription>)> + Send>>;

/// The subscription's next event, as a future that owns the subscription (and hands it
/// back), so it can stay pending across loop turns.
fn next_event(mut subscription: Box<dyn Subscription>) -> NextEvent {
    Box::pin(async move {
        let event = subscription.next().await;
        (event, subscription)
    })
}

pub(super) async fn run<V: CacheValue>(
    inner: Weak<Inner<V>>,
    subscription: Box<dyn Subscription>,
    shutdown: CancellationToken,
) {
    let Some(retry_after) = inner.upgrade().map(|inner| inner.config.l2_retry_after) else {
        return;
    };
    // A zero period (probe L2 on every call) would make `interval` panic.
    let mut repair_tick = tokio::time::interval(retry_after.max(Duration::from_millis(1)));
    repair_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The pending `next()` is kept while repairs run, never dropped and restarted: whatever it
    // was waiting for (a reconnect backoff, a heartbeat reply) would start over each tick,
    // and never finish if it takes longer than one (review C1).
    let mut next = next_event(subscription);
    loop {
        let woke = tokio::select! {
            () = shutdown.cancelled() => return,
            (event, subscription) = &mut next => Woke::Event(event, subscription),
            _ = repair_tick.tick() => Woke::RepairDue,
        };
        let event = match woke {
            Woke::Event(event, subscription) => {
                next = next_event(subscription);
                event
            }
            Woke::RepairDue => {
                let Some(inner) = inner.upgrade() else { return };
                inner.repair().await;
                continue;
            }
        };
        let Some(inner) = inner.upgrade() else { return };
        match event {
            Some(BusEvent::Invalidated(notice)) => {
                bump(&inner.counters.invalidations_received);
                inner.apply_version(&notice.key, notice.version, None).await;
            }
            Some(BusEvent::Resync) => {
                // Counted once L1 is dropped: whoever sees the count sees the drop.
                inner.drop_l1();
                bump(&inner.counters.resyncs);
                inner.repair().await;
            }
            None => {
                tracing::warn!(cache = %inner.config.name, "cache invalidation bus closed; L1 now relies on its TTL");
                return;
            }
        }
    }
}
