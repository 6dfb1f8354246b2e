//! A consumer group member's end of the in-process transport.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::registry::{Queued, Registry, Reply};
use crate::error::{Error, Result};
use crate::transport::{Delivery, DeliveryPosition, Subscription};

/// A member's queue and the deliveries it handed out and has not answered yet.
pub(super) struct InProcessSubscription {
    registry: Arc<Registry>,
    member: u64,
    group: String,
    topics: Vec<String>,
    queue: mpsc::Receiver<Queued>,
    /// Handed out, not yet acknowledged or refused; by delivery number.
    outstanding: HashMap<i64, Queued>,
    delivered: i64,
    closed: bool,
}

impl InProcessSubscription {
    pub(super) fn join(
        registry: Arc<Registry>,
        group: &str,
        topics: &[&str],
        capacity: usize,
    ) -> Self {
        let (sender, queue) = mpsc::channel(capacity);
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        let member = registry.join(group, &topics, &sender);
        Self {
            registry,
            member,
            group: group.to_owned(),
            topics,
            queue,
            outstanding: HashMap::new(),
            delivered: 0,
            closed: false,
        }
    }

    fn take(&mut self, delivery: &Delivery) -> Option<Queued> {
        self.outstanding.remove(&delivery.position.offset)
    }

    /// Leaves the group and lets go of everything queued: each publisher waiting for one of
    /// them sees the member gone (no attempt counted; the row is published again).
    fn leave(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.registry.leave(self.member, &self.group, &self.topics);
        self.queue.close();
        while self.queue.try_recv().is_ok() {}
        self.outstanding.clear();
    }
}

impl std::fmt::Debug for InProcessSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessSubscription")
            .field("group", &self.group)
            .field("member", &self.member)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl Drop for InProcessSubscription {
    fn drop(&mut self) {
        self.leave();
    }
}

#[async_trait]
impl Subscription for InProcessSubscription {
    async fn next(&mut self) -> Result<Delivery> {
        loop {
            if self.closed {
                return Err(Error::SubscriptionClosed);
            }
            // Cancel safe: `recv` is, and nothing below awaits.
            let Some(queued) = self.queue.recv().await else {
                return Err(Error::SubscriptionClosed);
            };
            if queued.batch.is_abandoned() {
                // The publisher stopped waiting; the row is still pending and comes again.
                continue;
            }
            if queued.batch.is_refused(&queued.parcel.aggregate) {
                // An earlier message of this aggregate in the same publish was refused here:
                // applying this one would overtake it.
                let _ = queued.reply.send(Reply::Held);
                continue;
            }
            let parcel = &queued.parcel;
            let delivery = Delivery {
                topic: parcel.topic.clone(),
                key: Some(parcel.key.clone()),
                headers: parcel.headers.clone(),
                position: DeliveryPosition {
                    partition: 0,
                    offset: self.delivered,
                },
                content: parcel.content.clone(),
            };
            self.outstanding.insert(self.delivered, queued);
            self.delivered += 1;
            return Ok(delivery);
        }
    }

    async fn acknowledge(&mut self, delivery: &Delivery) -> Result<()> {
        // Acknowledging twice, or after leaving, has nothing left to answer.
        if let Some(queued) = self.take(delivery) {
            let _ = queued.reply.send(Reply::Applied);
        }
        Ok(())
    }

    fn can_refuse(&self) -> bool {
        true
    }

    async fn refuse(&mut self, delivery: &Delivery, error: &str) -> Result<()> {
        if let Some(queued) = self.take(delivery) {
            queued.batch.refuse(&queued.parcel.aggregate);
            // Later messages of the aggregate from the same publish that this member has
            // already taken (a batching consumer) are held too, as `next` holds those still
            // queued: the consumer leaves them unanswered.
            let held: Vec<i64> = self
                .outstanding
                .iter()
                .filter(|(&at, later)| {
                    at > delivery.position.offset
                        && Arc::ptr_eq(&later.batch, &queued.batch)
                        && later.parcel.aggregate == queued.parcel.aggregate
                })
                .map(|(&at, _)| at)
                .collect();
            for at in held {
                if let Some(later) = self.outstanding.remove(&at) {
                    let _ = later.reply.send(Reply::Held);
                }
            }
            let _ = queued.reply.send(Reply::Refused(error.to_owned()));
        }
        Ok(())
    }

    async fn close(&mut self) {
        self.leave();
    }
}
