//! Group commit across products: the batches of products that are not under a surge (a
//! broad sale: many products, a few orders each at any moment) share one transaction, so
//! that a catalogue-wide sale gets the gain of batching too, not only a hot item.
//!
//! A product's writer hands its batch here instead of writing it alone (when nothing of the
//! product is in flight and fewer than [`PIPELINE_DEPTH`] orders wait behind it). One group
//! writer takes every batch handed in meanwhile (up to [`BatchSettings::max_batch`] orders)
//! and writes them as one batch of several products: it locks them in ascending id, plans,
//! inserts every row in bulk and updates every product in one statement. As for one product,
//! there is no timer: a group starts at once when the writer is idle, and another one
//! starts while some are in flight (up to [`GROUPS_IN_FLIGHT`]) once [`GROUP_DEPTH`] orders wait. Each product's
//! writer then gets the figures the group left for its product.
//!
//! A product is in at most one group at a time (its writer hands in a batch only when
//! nothing of the product is in flight), so groups in flight touch different products,
//! except through orders of several lines, which wait on each other's locks like any two
//! writers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::plan::Stock;
use super::queue::Request;
#[cfg(doc)]
use super::queue::PIPELINE_DEPTH;
use super::write::{run_batch, Outcome, Turn};
use super::{lock, Inner};
use crate::order::OrderWriter;

#[cfg(doc)]
use super::BatchSettings;

/// Orders waiting before a second group starts while one is in flight.
pub(super) const GROUP_DEPTH: usize = 8;
/// Groups in flight at once.
pub(super) const GROUPS_IN_FLIGHT: usize = 4;

/// The batches waiting for a group, and whether the group writer runs.
#[derive(Default)]
pub(super) struct Groups {
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    batches: VecDeque<Handed>,
    /// Orders in `batches`.
    orders: usize,
    writing: bool,
}

/// One product's batch handed in.
struct Handed {
    requests: Vec<Request>,
    known: Stock,
    turn: Turn,
    reply: oneshot::Sender<Outcome>,
}

/// Writes `requests` in the next group; returns what the group left (nothing known if the
/// group writer failed: the callers then got an error).
pub(super) async fn write(
    inner: &Arc<Inner>,
    writer: &OrderWriter,
    requests: Vec<Request>,
    known: Stock,
    turn: Turn,
) -> Outcome {
    let (reply, outcome) = oneshot::channel();
    let start = {
        let mut waiting = lock(&inner.groups.waiting);
        waiting.orders += requests.len();
        waiting.batches.push_back(Handed {
            requests,
            known,
            turn,
            reply,
        });
        !std::mem::replace(&mut waiting.writing, true)
    };
    if start {
        let (inner, writer) = (Arc::clone(inner), writer.clone());
        tokio::spawn(async move { write_groups(inner, writer).await });
    }
    outcome.await.unwrap_or(Outcome {
        after: Stock::new(),
        conflicted: false,
    })
}

/// The group writer: starts groups while batches wait, then stops.
async fn write_groups(inner: Arc<Inner>, writer: OrderWriter) {
    let guard = GroupGuard { inner: &inner };
    let settings = inner.settings;
    let mut running: JoinSet<()> = JoinSet::new();
    loop {
        loop {
            let group = {
                let mut waiting = lock(&inner.groups.waiting);
                if waiting.batches.is_empty() {
                    if running.is_empty() {
                        waiting.writing = false;
                        drop(waiting);
                        std::mem::forget(guard);
                        return;
                    }
                    break;
                }
                let busy = running.len() >= GROUPS_IN_FLIGHT
                    || (!running.is_empty() && waiting.orders < GROUP_DEPTH);
                if busy {
                    break;
                }
                let mut group = Vec::new();
                let mut orders = 0;
                while let Some(next) = waiting.batches.front() {
                    let size = next.requests.len();
                    if !group.is_empty() && orders + size > settings.max_batch {
                        break;
                    }
                    orders += size;
                    group.extend(waiting.batches.pop_front());
                }
                waiting.orders -= orders;
                group
            };
            let (inner, writer) = (Arc::clone(&inner), writer.clone());
            running.spawn(async move { write_group(&inner, &writer, group).await });
        }
        let _ = running.join_next().await;
    }
}

/// Writes the handed-in batches of `group` as one batch and tells each product's writer.
async fn write_group(inner: &Inner, writer: &OrderWriter, group: Vec<Handed>) {
    let mut requests = Vec::new();
    let mut known = Stock::new();
    let mut turn = Turn::default();
    let mut replies = Vec::with_capacity(group.len());
    for handed in group {
        requests.extend(handed.requests);
        known.extend(handed.known);
        turn.mine.extend(handed.turn.mine);
        replies.push(handed.reply);
    }
    let watch = inner.watch.get();
    let outcome = run_batch(writer, requests, known, &inner.settings, watch, turn).await;
    for reply in replies {
        let _ = reply.send(Outcome {
            after: outcome.after.clone(),
            conflicted: outcome.conflicted,
        });
    }
}

/// If the group writer panics: its waiting batches are dropped (their callers get an error,
/// their products' writers learn nothing) and the next batch handed in starts a new writer.
struct GroupGuard<'a> {
    inner: &'a Inner,
}

impl Drop for GroupGuard<'_> {
    fn drop(&mut self) {
        let mut waiting = lock(&self.inner.groups.waiting);
        waiting.writing = false;
        waiting.orders = 0;
        waiting.batches.clear();
    }
}
