//! Who is subscribed to what, and routing a publish's messages to consumer group members.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot};

use crate::transport::{DeliveryContent, OutboundMessage};

/// An aggregate: (type, id).
pub(super) type Aggregate = (String, String);

/// One message as every consumer group gets it (shared, not copied, between groups).
#[derive(Debug)]
pub(super) struct Parcel {
    pub(super) topic: String,
    pub(super) key: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) content: DeliveryContent,
    pub(super) aggregate: Aggregate,
}

impl Parcel {
    pub(super) fn of(message: &OutboundMessage, content: DeliveryContent) -> Self {
        Self {
            topic: message.topic.clone(),
            key: message.key.clone(),
            headers: message.headers.clone(),
            content,
            aggregate: (
                message.envelope.aggregate_type.clone(),
                message.envelope.aggregate_id.clone(),
            ),
        }
    }
}

/// A consumer group's answer about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    /// Its inbox transaction committed.
    Applied,
    /// Its handler kept failing.
    Refused(String),
    /// Not delivered: an earlier message of its aggregate in the same publish was refused.
    Held,
}

/// What one consumer group knows about one publish: the aggregates it refused (their later
/// messages are held), and whether the publisher gave up waiting (the rest is skipped).
#[derive(Debug, Default)]
pub(super) struct GroupBatch {
    refused: Mutex<HashSet<Aggregate>>,
    abandoned: AtomicBool,
}

impl GroupBatch {
    pub(super) fn refuse(&self, aggregate: &Aggregate) {
        self.refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(aggregate.clone());
    }

    pub(super) fn is_refused(&self, aggregate: &Aggregate) -> bool {
        self.refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(aggregate)
    }

    pub(super) fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }
}

/// Marks a publish's batches abandoned when the publish ends, however it ends (answered,
/// timed out, or dropped with its relay): whatever is still queued of it is skipped.
pub(super) struct AbandonOnDrop(pub(super) Vec<Arc<GroupBatch>>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        for batch in &self.0 {
            batch.abandoned.store(true, Ordering::Release);
        }
    }
}

/// One message in a member's queue.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) parcel: Arc<Parcel>,
    pub(super) batch: Arc<GroupBatch>,
    /// Dropped unanswered (member gone, publisher gone): the publisher counts no attempt.
    pub(super) reply: oneshot::Sender<Reply>,
}

/// A message waiting for one group's answer.
#[derive(Debug)]
pub(super) struct Wait {
    /// Index of the message in the publish.
    pub(super) index: usize,
    pub(super) group: String,
    pub(super) reply: oneshot::Receiver<Reply>,
}

/// A publish's messages routed to members: what to send where, and what to wait for.
#[derive(Debug, Default)]
pub(super) struct Routing {
    pub(super) sends: Vec<(mpsc::Sender<Queued>, Queued)>,
    pub(super) waits: Vec<Wait>,
    pub(super) batches: Vec<Arc<GroupBatch>>,
}

#[derive(Debug)]
struct Member {
    id: u64,
    queue: mpsc::Sender<Queued>,
}

#[derive(Debug, Default)]
struct Topic {
    /// Created by `ensure_topics` or a subscription; publishing to a topic that is not is
    /// refused, as a broker refuses a topic that does not exist.
    declared: bool,
    /// The groups subscribed now, each with its members in joining order.
    groups: BTreeMap<String, Vec<Member>>,
}

#[derive(Debug, Default)]
struct State {
    topics: HashMap<String, Topic>,
    next_member: u64,
}

/// The transport's topics and subscriptions.
#[derive(Debug, Default)]
pub(super) struct Registry {
    state: Mutex<State>,
}

/// What became of a parcel when routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Routed {
    /// To every group subscribed now (possibly none).
    ToGroups,
    /// Its topic was never created.
    UnknownTopic,
    /// Not routed: an earlier parcel of its aggregate went to an unknown topic.
    Held,
}

impl Registry {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub(super) fn declare(&self, topics: impl IntoIterator<Item = String>) {
        self.with(|state| {
            for topic in topics {
                state.topics.entry(topic).or_default().declared = true;
            }
        });
    }

    pub(super) fn is_declared(&self, topic: &str) -> bool {
        self.with(|state| state.topics.get(topic).is_some_and(|t| t.declared))
    }

    /// Adds a member to `group` on `topics` (declaring them); returns its id.
    pub(super) fn join(&self, group: &str, topics: &[String], queue: &mpsc::Sender<Queued>) -> u64 {
        self.with(|state| {
            let id = state.next_member;
            state.next_member += 1;
            for topic in topics {
                let topic = state.topics.entry(topic.clone()).or_default();
                topic.declared = true;
                topic
                    .groups
                    .entry(group.to_owned())
                    .or_default()
                    .push(Member {
                        id,
                        queue: queue.clone(),
                    });
            }
            id
        })
    }

    /// Removes member `id` of `group` from `topics`; a group without members is gone.
    pub(super) fn leave(&self, id: u64, group: &str, topics: &[String]) {
        self.with(|state| {
            for topic in topics {
                let Some(topic) = state.topics.get_mut(topic) else {
                    continue;
                };
                if let Some(members) = topic.groups.get_mut(group) {
                    members.retain(|member| member.id != id);
                    if members.is_empty() {
                        topic.groups.remove(group);
                    }
                }
            }
        });
    }

    /// The consumer groups subscribed to `topic` now, with their member counts.
    pub(super) fn groups(&self, topic: &str) -> Vec<(String, usize)> {
        self.with(|state| {
            state
                .topics
                .get(topic)
                .map(|t| {
                    t.groups
                        .iter()
                        .map(|(group, members)| (group.clone(), members.len()))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// Routes each parcel to one member of every group subscribed to its topic, in one
    /// look at the subscriptions (so one aggregate's messages of this publish all go to the
    /// same member of a group). A member is chosen by the hash of the key. Once a parcel's
    /// topic is unknown, its aggregate's later parcels are not routed.
    pub(super) fn route(&self, parcels: &[Arc<Parcel>]) -> (Routing, Vec<Routed>) {
        let mut routing = Routing::default();
        let mut batches: HashMap<String, Arc<GroupBatch>> = HashMap::new();
        let mut halted: HashSet<&Aggregate> = HashSet::new();
        let routed = self.with(|state| {
            parcels
                .iter()
                .enumerate()
                .map(|(index, parcel)| {
                    if halted.contains(&parcel.aggregate) {
                        return Routed::Held;
                    }
                    let Some(topic) = state.topics.get(&parcel.topic).filter(|t| t.declared) else {
                        halted.insert(&parcel.aggregate);
                        return Routed::UnknownTopic;
                    };
                    for (group, members) in &topic.groups {
                        // Never empty: a group goes when its last member leaves.
                        let Some(member) = members.get(lane(&parcel.key, members.len())) else {
                            continue;
                        };
                        let batch = batches.entry(group.clone()).or_default();
                        let (reply, waiting) = oneshot::channel();
                        routing.sends.push((
                            member.queue.clone(),
                            Queued {
                                parcel: Arc::clone(parcel),
                                batch: Arc::clone(batch),
                                reply,
                            },
                        ));
                        routing.waits.push(Wait {
                            index,
                            group: group.clone(),
                            reply: waiting,
                        });
                    }
                    Routed::ToGroups
                })
                .collect()
        });
        routing.batches = batches.into_values().collect();
        (routing, routed)
    }
}

/// The member (of `members`) that gets `key`: stable while the membership is.
fn lane(key: &str, members: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    // The modulo is below `members`, which is a usize.
    usize::try_from(hasher.finish() % members as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_goes_to_the_same_member_and_keys_spread() {
        assert_eq!(lane("o-1", 4), lane("o-1", 4));
        let used: HashSet<usize> = (0..100).map(|n| lane(&format!("o-{n}"), 4)).collect();
        assert_eq!(used.len(), 4, "100 keys use every one of 4 members");
        assert_eq!(lane("o-1", 1), 0);
    }
}
