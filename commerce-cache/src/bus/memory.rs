//! In-process invalidation bus: a tokio broadcast channel per channel name.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{BusEvent, Invalidation, InvalidationBus, Subscription};
use crate::Result;

/// Notices a subscriber may fall behind by before it is told to resync.
const CAPACITY: usize = 4096;

/// An [`InvalidationBus`] within one process (embedded single node, or several caches acting as
/// nodes in a test). Share it through an `Arc`.
#[derive(Debug, Default)]
pub struct MemoryBus {
    channels: Mutex<HashMap<String, broadcast::Sender<Invalidation>>>,
}

impl MemoryBus {
    /// A bus without channels yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn sender(&self, channel: &str) -> broadcast::Sender<Invalidation> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        channels
            .entry(channel.to_owned())
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .clone()
    }
}

#[async_trait]
impl InvalidationBus for MemoryBus {
    async fn publish(&self, channel: &str, notice: &Invalidation) -> Result<()> {
        // No receiver is not an error: no node holds the key in L1 then.
        let _ = self.sender(channel).send(notice.clone());
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Box<dyn Subscription> {
        Box::new(MemorySubscription {
            receiver: self.sender(channel).subscribe(),
        })
    }
}

struct MemorySubscription {
    receiver: broadcast::Receiver<Invalidation>,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Option<BusEvent> {
        match self.receiver.recv().await {
            Ok(notice) => Some(BusEvent::Invalidated(notice)),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(BusEvent::Resync),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_notices_and_resync_after_lagging() {
        let bus = MemoryBus::new();
        let mut subscription = bus.subscribe("c").await;
        let notice = Invalidation {
            key: "k".to_owned(),
            version: 1,
        };
        bus.publish("c", &notice).await.unwrap();
        assert_eq!(
            subscription.next().await,
            Some(BusEvent::Invalidated(notice.clone()))
        );
        for _ in 0..=CAPACITY {
            bus.publish("c", &notice).await.unwrap();
        }
        assert_eq!(subscription.next().await, Some(BusEvent::Resync));
    }
}
