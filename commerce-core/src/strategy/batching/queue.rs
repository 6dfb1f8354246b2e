//! A product's waiting orders: who goes in the next batch, when the next batch starts, and
//! who is turned away without one (sold out, overloaded, or gone).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::plan::Figures;
use crate::error::{Error, Result};
use crate::ids::ProductId;
use crate::order::{PlacedOrder, ShortagePolicy, ValidatedOrder};

/// Waiting orders needed before a product's next batch starts while one is still in flight.
pub(super) const PIPELINE_DEPTH: usize = 100;

/// A caller waiting for its order.
pub(super) struct Request {
    pub(super) order: ValidatedOrder,
    pub(super) reply: oneshot::Sender<Result<PlacedOrder>>,
    /// When it joined its product's queue (for [`super::BatchSettings::max_wait`]).
    pub(super) queued_at: Instant,
    /// The caller's trace context (`commerce_outbox::trace`, with the `outbox` feature), for
    /// the events the batch writes for this order.
    #[cfg_attr(not(feature = "outbox"), allow(dead_code))]
    pub(super) trace: Option<String>,
}

impl Request {
    /// Whether its caller is gone (the future of `place` dropped): it is not written.
    pub(super) fn is_abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// One product's waiting orders and what the last batch learned about it.
#[derive(Default)]
pub(super) struct ProductQueue {
    pub(super) pending: VecDeque<Request>,
    /// A writer task is working this queue.
    pub(super) writing: bool,
    /// The product's row as the last batch committed or read it.
    pub(super) known: Option<Figures>,
    /// Taken out of the product map: a caller that finds it so looks the product up again.
    pub(super) retired: bool,
}

/// What a product's writer does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Start a batch of the first `n` waiting orders.
    Start(usize),
    /// Wait for a batch in flight to finish (or for the oldest order's wait to run out).
    Wait,
    /// Nothing waits and nothing is in flight: the writer stops.
    Stop,
}

/// The writer's view of its product when it decides.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scene {
    /// Orders waiting (callers still there).
    pub(super) waiting: usize,
    /// Batches in flight.
    pub(super) running: usize,
    /// Most batches in flight ([`super::BatchSettings::in_flight`]).
    pub(super) in_flight: usize,
    /// Most orders in a batch.
    pub(super) max_batch: usize,
    /// The product's figures once the batches in flight commit as planned, if known.
    pub(super) predicted: Option<Figures>,
    /// A batch failed its compare-and-set lately: plan on locked rows, one batch at a time.
    pub(super) pessimistic: bool,
}

/// The scheduling rule. A second batch in flight pays only under a surge (a queue of
/// [`PIPELINE_DEPTH`] or more; with a few callers it would split one batch in two and add a
/// commit), only while the product's figures after the batches in flight are known (planned
/// on figures that are not, it would lock and wait anyway), and never on a predicted sell-out
/// (it would refuse on a figure that is not committed yet, and could commit before the batch
/// that took the last units: first come, first served would be broken).
pub(super) fn next_step(scene: Scene) -> Step {
    if scene.waiting == 0 {
        return if scene.running == 0 {
            Step::Stop
        } else {
            Step::Wait
        };
    }
    let batch = scene.waiting.min(scene.max_batch.max(1));
    if scene.running == 0 {
        return Step::Start(batch);
    }
    let pipelined = scene.running < scene.in_flight
        && !scene.pessimistic
        && scene.waiting >= PIPELINE_DEPTH
        && scene.predicted.is_some_and(|p| p.available > 0);
    if pipelined {
        Step::Start(batch)
    } else {
        Step::Wait
    }
}

/// The refusal of an order that cannot wait for `product` any longer.
pub(super) fn overloaded(product: ProductId, max_wait: Duration) -> Error {
    Error::Overloaded {
        product,
        retry_after: max_wait.clamp(Duration::from_millis(100), Duration::from_secs(1)),
    }
}

impl ProductQueue {
    /// Takes out the callers that are gone and refuses, with [`Error::Overloaded`], the
    /// orders at the front that waited longer than `max_wait` (the queue is in arrival
    /// order). Returns when the oldest remaining order runs out of wait, if any.
    pub(super) fn sweep(
        &mut self,
        product: ProductId,
        max_wait: Duration,
        now: Instant,
    ) -> Option<Instant> {
        while let Some(front) = self.pending.front() {
            if front.is_abandoned() {
                self.pending.pop_front();
            } else if now.duration_since(front.queued_at) > max_wait {
                if let Some(late) = self.pending.pop_front() {
                    let _ = late.reply.send(Err(overloaded(product, max_wait)));
                }
            } else {
                break;
            }
        }
        self.pending.front().map(|front| front.queued_at + max_wait)
    }

    /// Up to `n` waiting orders for the next batch, oldest first, skipping callers that are
    /// gone.
    pub(super) fn take(&mut self, n: usize) -> Vec<Request> {
        let mut batch = Vec::with_capacity(n.min(self.pending.len()));
        while batch.len() < n {
            let Some(request) = self.pending.pop_front() else {
                break;
            };
            if !request.is_abandoned() {
                batch.push(request);
            }
        }
        if self.pending.is_empty() && self.pending.capacity() > 1_024 {
            // After a surge: give the queue's memory back.
            self.pending = VecDeque::new();
        }
        batch
    }

    /// Answers the reject-policy orders waiting (all of which have a line for `product`, the
    /// queue's product) with `InsufficientStock`, leaving the backorder-policy ones queued.
    pub(super) fn turn_away(&mut self, product: ProductId) {
        let (kept, refused): (VecDeque<Request>, VecDeque<Request>) = self
            .pending
            .drain(..)
            .partition(|request| request.order.policy() != ShortagePolicy::Reject);
        self.pending = kept;
        for request in refused {
            let requested = request
                .order
                .lines()
                .iter()
                .find(|line| line.product == product)
                .map_or(0, |line| line.quantity);
            let _ = request.reply.send(Err(Error::InsufficientStock {
                product,
                requested,
                available: 0,
            }));
        }
    }

    /// Whether the entry holds nothing worth keeping once its writer stops: no order waits
    /// and no figures of the product are known (a product that does not exist, or whose
    /// figures were lost), so entries are bounded by the products of the catalogue.
    pub(super) fn is_idle_and_useless(&self) -> bool {
        !self.writing && self.pending.is_empty() && self.known.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(available: i64) -> Option<Figures> {
        Some(Figures {
            available,
            backordered: 0,
            price: 1,
            generation: None,
        })
    }

    fn scene(waiting: usize, running: usize) -> Scene {
        Scene {
            waiting,
            running,
            in_flight: 2,
            max_batch: 500,
            predicted: figures(1_000),
            pessimistic: false,
        }
    }

    #[test]
    fn an_idle_writer_starts_at_once_and_stops_when_nothing_waits() {
        assert_eq!(next_step(scene(1, 0)), Step::Start(1));
        assert_eq!(next_step(scene(900, 0)), Step::Start(500));
        assert_eq!(next_step(scene(0, 0)), Step::Stop);
        assert_eq!(next_step(scene(0, 1)), Step::Wait);
    }

    #[test]
    fn a_second_batch_starts_only_under_a_surge_and_within_the_bound() {
        assert_eq!(next_step(scene(PIPELINE_DEPTH - 1, 1)), Step::Wait);
        assert_eq!(
            next_step(scene(PIPELINE_DEPTH, 1)),
            Step::Start(PIPELINE_DEPTH)
        );
        assert_eq!(next_step(scene(5_000, 2)), Step::Wait);
        let three = Scene {
            in_flight: 3,
            ..scene(5_000, 2)
        };
        assert_eq!(next_step(three), Step::Start(500));
    }

    #[test]
    fn no_second_batch_on_unknown_figures_a_predicted_sell_out_or_after_a_conflict() {
        let unknown = Scene {
            predicted: None,
            ..scene(5_000, 1)
        };
        let sold_out = Scene {
            predicted: figures(0),
            ..scene(5_000, 1)
        };
        let pessimistic = Scene {
            pessimistic: true,
            ..scene(5_000, 1)
        };
        for waiting in [unknown, sold_out, pessimistic] {
            assert_eq!(next_step(waiting), Step::Wait, "{waiting:?}");
        }
    }

    #[test]
    fn the_sweep_drops_the_gone_and_refuses_the_late_at_the_front() {
        use crate::order::{NewOrder, OrderLimits};
        let start = Instant::now();
        let mut queue = ProductQueue::default();
        let mut answers = Vec::new();
        for (n, age) in [(0, 900), (1, 800), (2, 100), (3, 50)] {
            let (reply, answer) = oneshot::channel();
            let order = ValidatedOrder::new(
                NewOrder::new(format!("u{n}")).line(1, 1),
                &OrderLimits::default(),
            )
            .unwrap();
            queue.pending.push_back(Request {
                order,
                reply,
                queued_at: start - Duration::from_millis(age),
                trace: None,
            });
            answers.push(answer);
        }
        drop(answers.remove(3)); // the caller of u3 gave up
        let next = queue.sweep(ProductId(1), Duration::from_millis(500), start);
        assert_eq!(
            queue.pending.len(),
            2,
            "u3 stays until it reaches the front"
        );
        assert_eq!(
            next,
            Some(start - Duration::from_millis(100) + Duration::from_millis(500))
        );
        for mut late in answers.drain(..2) {
            assert!(matches!(late.try_recv(), Ok(Err(Error::Overloaded { .. }))));
        }
        let batch = queue.take(10);
        assert_eq!(batch.len(), 1, "the gone caller is skipped");
        assert_eq!(batch[0].order.user_id(), "u2");
    }
}
