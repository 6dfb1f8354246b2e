//! The task that applies invalidations from other nodes to this node's L1.
//!
//! Owned by the cache: it holds only a weak reference, stops on the shutdown signal or when
//! the last cache clone is dropped (which also aborts it).

use std::sync::Weak;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::{CacheValue, Inner};
use crate::bus::{BusEvent, Subscription};
use crate::metrics::bump;

enum Woke {
    Event(Option<BusEvent>),
    RepairDue,
}

pub(super) async fn run<V: CacheValue>(
    inner: Weak<Inner<V>>,
    mut subscription: Box<dyn Subscription>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(retry_after) = inner.upgrade().map(|inner| inner.config.l2_retry_after) else {
        return;
    };
    let mut repair_tick = tokio::time::interval(retry_after);
    repair_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let woke = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            event = subscription.next() => Woke::Event(event),
            _ = repair_tick.tick() => Woke::RepairDue,
        };
        let event = match woke {
            Woke::Event(event) => event,
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
                bump(&inner.counters.resyncs);
                inner.drop_l1();
                inner.repair().await;
            }
            None => {
                tracing::warn!(cache = %inner.config.name, "cache invalidation bus closed; L1 now relies on its TTL");
                return;
            }
        }
    }
}
