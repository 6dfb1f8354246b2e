//! The invalidation seam: how a write on one node reaches every other node's L1.
//!
//! Only `put` and `evict` publish, never a fill after a miss, so reads cannot cause a broadcast
//! storm. A subscriber that may have missed notices (its connection dropped, or it fell behind)
//! gets [`BusEvent::Resync`] and drops its whole L1.

mod memory;
mod redis;

use async_trait::async_trait;

pub use self::memory::MemoryBus;
pub use self::redis::RedisBus;
use crate::Result;

/// "The entry `key` changed: versions below `version` are stale."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// The cache key (without prefix).
    pub key: String,
    /// The key's version after the write.
    pub version: u64,
}

impl Invalidation {
    /// The wire form: `<version> <key>` (the key may contain spaces).
    #[must_use]
    pub fn encode(&self) -> String {
        format!("{} {}", self.version, self.key)
    }

    /// Parses the wire form; `None` for anything else.
    #[must_use]
    pub fn decode(message: &str) -> Option<Self> {
        let (version, key) = message.split_once(' ')?;
        Some(Self {
            key: key.to_owned(),
            version: version.parse().ok()?,
        })
    }
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// A key was written or evicted somewhere.
    Invalidated(Invalidation),
    /// Notices may have been lost (reconnect, lag): every L1 entry is suspect.
    Resync,
}

/// A publish/subscribe channel carrying [`Invalidation`]s between the nodes of one cache.
#[async_trait]
pub trait InvalidationBus: Send + Sync + 'static {
    /// Sends `notice` to every subscriber of `channel`, the sender included.
    async fn publish(&self, channel: &str, notice: &Invalidation) -> Result<()>;

    /// Starts listening on `channel`.
    ///
    /// Returns once the subscription is active, or once the first attempt failed: a
    /// subscription keeps reconnecting by itself and reports [`BusEvent::Resync`] each time it
    /// is (re)established after a loss.
    async fn subscribe(&self, channel: &str) -> Box<dyn Subscription>;
}

/// A live subscription; dropping it unsubscribes.
#[async_trait]
pub trait Subscription: Send + 'static {
    /// The next event; `None` once the bus is gone for good.
    ///
    /// The cache's listener keeps one call pending while it does other work (repairs), so a
    /// call may wait as long as it needs (a reconnect backoff); it is dropped only at
    /// shutdown. A dropped call must not lose an event that was already received.
    async fn next(&mut self) -> Option<BusEvent>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_round_trips_keys_with_spaces() {
        let notice = Invalidation {
            key: "search:red shoes:1".to_owned(),
            version: 42,
        };
        assert_eq!(Invalidation::decode(&notice.encode()), Some(notice));
    }

    #[test]
    fn malformed_messages_are_rejected() {
        assert_eq!(Invalidation::decode("nospace"), None);
        assert_eq!(Invalidation::decode("x key"), None);
    }
}
