//! The batching strategy: group commit per product (see [`Batching`]).

mod watch;
mod write;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::ids::ProductId;
use crate::order::{OrderWriter, PlacedOrder, ShortagePolicy, ValidatedOrder};

use super::StockStrategy;
use watch::StockWatch;
use write::{predict, run_batch, Figures};

/// Waiting orders needed before a product's next batch starts while one is still in flight.
const PIPELINE_DEPTH: usize = 100;

/// How [`Batching`] forms its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// The most orders written in one transaction (default 500).
    pub max_batch: usize,
    /// Attempts of a batch that conflicted (another writer changed the product between the
    /// batch's read and its write, a deadlock, a repeated idempotency key) before its callers
    /// get the error (default 8).
    pub max_attempts: u32,
    /// Whether to turn reject-policy orders for a product seen sold out away in memory
    /// (default `true`).
    pub sold_out_fast_path: bool,
    /// Batches of one product written at the same time (default 2): under a surge (100 or
    /// more orders waiting) the next batch's rows go in while the previous one commits; their
    /// stock updates still apply one after the other, each a compare-and-set on what the
    /// previous one left.
    pub in_flight: usize,
    /// How long the stock listener's connection may stay quiet before it is asked a
    /// `SELECT 1` (default 1 s). A connection that does not answer within
    /// [`BatchSettings::listener_timeout`] counts as lost: the sold-out fast path is off
    /// until a new one listens.
    pub listener_heartbeat: Duration,
    /// How long the stock listener waits for the answer to its heartbeat (default 1 s).
    pub listener_timeout: Duration,
    /// The longest a batch's sold-out figure turns orders away from memory (default 5 s):
    /// after that the next order reads the product again, so even a listener that looks
    /// alive but hears nothing costs at most one read per product per this interval.
    pub sold_out_max_age: Duration,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_batch: 500,
            max_attempts: 8,
            sold_out_fast_path: true,
            in_flight: 2,
            listener_heartbeat: Duration::from_secs(1),
            listener_timeout: Duration::from_secs(1),
            sold_out_max_age: Duration::from_secs(5),
        }
    }
}

/// Group commit per product: the concurrent orders of a product are written in one
/// transaction.
///
/// Every design that commits one order per hand-off of a hot product's row lock is capped
/// below the rate at which the database can pass that lock around (the bare one-row
/// `UPDATE` ceiling). `Batching` passes it by writing many orders of one product in one
/// transaction: one stock update for the whole batch, every order, line, history, ledger and
/// outbox row inserted in bulk, then one commit, after which each caller gets its own result.
///
/// **When batching kicks in.** There is no timer. Each product has at most one batch in
/// flight; requests that arrive while it is being written wait and go together in the next
/// one (up to [`BatchSettings::max_batch`]). A product that is not busy therefore pays no
/// window at all: its order is written at once, as a batch of one. Under a surge the batches
/// grow by themselves to what arrives during one commit, and once 100 or more orders wait a
/// second batch starts before the first has committed ([`BatchSettings::in_flight`]): its
/// rows go in meanwhile, and its stock update is a compare-and-set on what the first one
/// leaves.
///
/// **What goes in a batch.** Every order joins the queue of its lowest product, so the orders
/// of several lines go in batches too. A batch of one product's single-line orders takes the
/// short optimistic path above; a batch with orders spanning several products locks all of
/// them first, in ascending id (the crate's lock order, which every other writer follows too),
/// so batches and one-order transactions never wait on each other in a cycle.
///
/// **Sold-out fast path.** Once a batch has seen a product with no stock left, reject-policy
/// orders for it are turned away in memory, without a database round trip, until Postgres
/// announces that its stock went up again (a trigger on `commerce.products` notifies channel
/// `commerce_stock` on every increase, from any instance). A figure counts only while the
/// generation the batch noted before its read is current: every notification moves it on,
/// and so does every loss of the listener's connection. The rule that keeps a figure from
/// being wrong for long:
/// - **The listener proves it is alive.** After [`BatchSettings::listener_heartbeat`] without
///   a notification it sends `SELECT 1` on its connection; no answer within
///   [`BatchSettings::listener_timeout`] (a half-open connection, a black-holed failover), a
///   lost connection (reported at once, not after reconnecting) or the end of its task (its
///   runtime shut down) turns the fast path off until a new connection listens; the next
///   batch on a running runtime starts a new listener if its task is gone.
/// - **Figures age out.** No figure turns orders away longer than
///   [`BatchSettings::sold_out_max_age`] after its generation began, whatever the listener
///   says: at worst one database read per sold-out product per that interval.
///
/// - **Read your own writes.** Stock raised through the same [`crate::Commerce`] (a receipt,
///   an upward adjustment, a cancellation) moves the generation on as soon as its
///   transaction commits ([`StockStrategy::stock_raised`]): the next order reads the product
///   again.
///
/// So after stock comes back on another instance, this one may refuse it from memory for the
/// notification's few milliseconds, for at most heartbeat plus timeout if the notification
/// is lost on a silent connection, and never beyond the age limit.
/// Orders already queued for the product when it is seen sold out are turned away the same
/// way, all at once, rather than batch by batch.
///
/// Needs a Tokio runtime (it spawns one writer task per busy product, and the stock listener).
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> commerce_core::Result<()> {
/// use commerce_core::strategy::Batching;
/// use commerce_core::{Commerce, NewOrder};
///
/// let commerce = Commerce::builder(pool).strategy(Batching::new()).build();
/// let placed = commerce.place_order(NewOrder::new("alice").line(1, 1)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Batching {
    inner: Arc<Inner>,
}

struct Inner {
    settings: BatchSettings,
    products: Mutex<HashMap<ProductId, ProductQueue>>,
    watch: OnceLock<StockWatch>,
}

/// One product's waiting orders and what the last batch learned about it.
#[derive(Default)]
struct ProductQueue {
    pending: VecDeque<Request>,
    /// A writer task is working this queue.
    writing: bool,
    /// The product's row as the last batch committed or read it.
    known: Option<Figures>,
}

/// A caller waiting for its order.
struct Request {
    order: ValidatedOrder,
    reply: oneshot::Sender<Result<PlacedOrder>>,
}

impl std::fmt::Debug for Batching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batching")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Default for Batching {
    fn default() -> Self {
        Self::new()
    }
}

impl Batching {
    /// Batching with [`BatchSettings::default`].
    #[must_use]
    pub fn new() -> Self {
        Self::with_settings(BatchSettings::default())
    }

    /// Batching with `settings` (a `max_batch`, `max_attempts` or `in_flight` of 0 counts as
    /// 1; a listener heartbeat, listener timeout or sold-out age limit under 10 ms counts as
    /// 10 ms).
    #[must_use]
    pub fn with_settings(settings: BatchSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings: BatchSettings {
                    max_batch: settings.max_batch.max(1),
                    max_attempts: settings.max_attempts.max(1),
                    in_flight: settings.in_flight.max(1),
                    listener_heartbeat: settings.listener_heartbeat.max(watch::SHORTEST),
                    listener_timeout: settings.listener_timeout.max(watch::SHORTEST),
                    sold_out_max_age: settings.sold_out_max_age.max(watch::SHORTEST),
                    ..settings
                },
                products: Mutex::new(HashMap::new()),
                watch: OnceLock::new(),
            }),
        }
    }

    /// The settings in use.
    #[must_use]
    pub fn settings(&self) -> BatchSettings {
        self.inner.settings
    }

    fn watch(&self, writer: &OrderWriter) -> Option<&StockWatch> {
        if !self.inner.settings.sold_out_fast_path {
            return None;
        }
        Some(
            self.inner
                .watch
                .get_or_init(|| StockWatch::start(writer.pool().clone(), &self.inner.settings)),
        )
    }

    /// The fast path's answer: a reject-policy order with a line for a product known to be
    /// sold out is turned away.
    fn known_sold_out(&self, watch: &StockWatch, order: &ValidatedOrder) -> Option<Error> {
        if order.policy() != ShortagePolicy::Reject {
            return None;
        }
        let products = lock(&self.inner.products);
        order.lines().iter().find_map(|line| {
            let known = products.get(&line.product).and_then(|q| q.known)?;
            watch
                .still_sold_out(known)
                .then_some(Error::InsufficientStock {
                    product: line.product,
                    requested: line.quantity,
                    available: 0,
                })
        })
    }

    /// Queues `order` for its product's next batch; starts the product's writer if idle.
    fn enqueue(
        &self,
        writer: &OrderWriter,
        product: ProductId,
        order: &ValidatedOrder,
    ) -> oneshot::Receiver<Result<PlacedOrder>> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut products = lock(&self.inner.products);
            let queue = products.entry(product).or_default();
            queue.pending.push_back(Request {
                order: order.clone(),
                reply,
            });
            !std::mem::replace(&mut queue.writing, true)
        };
        if start {
            let (inner, writer) = (Arc::clone(&self.inner), writer.clone());
            tokio::spawn(async move { write_queue(inner, writer, product).await });
        }
        answer
    }
}

#[async_trait]
impl StockStrategy for Batching {
    fn name(&self) -> &'static str {
        "batching"
    }

    async fn place(&self, writer: &OrderWriter, order: &ValidatedOrder) -> Result<PlacedOrder> {
        let watch = self.watch(writer);
        if let Some(replayed) = writer.replay(order).await? {
            return Ok(replayed);
        }
        if let Some(short) = watch.and_then(|watch| self.known_sold_out(watch, order)) {
            // Answered without waiting on anything: a caller looping on it goes to the back
            // of the run queue each time, so that the batch writers and the callers woken by
            // their answers, on the same threads, run in between (docs/performance.md: a
            // budget of many rejections per turn made the slowest of a 10,000-client flash
            // sale wait seconds).
            tokio::task::yield_now().await;
            return Err(short);
        }
        // An order joins the queue of its lowest product (lines are sorted by product).
        let Some(home) = order.lines().first().map(|line| line.product) else {
            return Err(Error::EmptyOrder);
        };
        self.enqueue(writer, home, order)
            .await
            .unwrap_or_else(|_| Err(Error::Strategy("the batch writer stopped".into())))
    }

    /// Every figure noted before is dead (the generation moves on): the next order for any
    /// product seen sold out reads it again.
    fn stock_raised(&self, _product: ProductId) {
        if let Some(watch) = self.inner.watch.get() {
            watch.stock_raised();
        }
    }
}

/// The writer task of one product: writes batches while orders wait, then stops.
async fn write_queue(inner: Arc<Inner>, writer: OrderWriter, product: ProductId) {
    // If a batch panics, the guard fails the waiting callers and frees the queue, so the
    // next order starts a new writer instead of waiting forever.
    let guard = WriterGuard {
        inner: &inner,
        product,
    };
    let mut running: JoinSet<Option<Figures>> = JoinSet::new();
    // The product's figures once every batch started so far has committed as planned: the
    // next batch is planned on them (its compare-and-set fails, and it re-plans, if one of
    // them did not).
    let mut predicted: Option<Figures> = None;
    loop {
        while running.len() < inner.settings.in_flight {
            let (batch, known, surge) = {
                let mut products = lock(&inner.products);
                let Some(queue) = products.get_mut(&product) else {
                    return;
                };
                // Callers that gave up before their batch started are not written.
                queue.pending.retain(|r| !r.reply.is_closed());
                // Orders that queued before the product was seen sold out are turned away
                // as later arrivals are, from memory (with one batch at a time a crowd
                // queued behind the sell-out would otherwise wait for a read per batch).
                if running.is_empty() {
                    if let (Some(watch), Some(known)) = (inner.watch.get(), queue.known) {
                        if watch.still_sold_out(known) {
                            turn_away(&mut queue.pending, product);
                        }
                    }
                }
                if queue.pending.is_empty() {
                    if running.is_empty() {
                        queue.writing = false;
                        std::mem::forget(guard);
                        return;
                    }
                    break;
                }
                // A second batch in flight pays only when the queue is deep: with a few
                // callers it would split one batch in two and add a commit.
                if !running.is_empty() && queue.pending.len() < PIPELINE_DEPTH {
                    break;
                }
                let n = queue.pending.len().min(inner.settings.max_batch);
                let known = if running.is_empty() {
                    queue.known
                } else {
                    predicted
                };
                let batch: Vec<Request> = queue.pending.drain(..n).collect();
                let surge = queue.pending.len() >= PIPELINE_DEPTH;
                (batch, known, surge)
            };
            if running.is_empty() && !surge {
                // No surge: write it here, without a task hop (what most batches do when
                // callers are few).
                let watch = inner.watch.get();
                let after = run_batch(&writer, product, batch, known, &inner.settings, watch).await;
                predicted = None;
                if let Some(queue) = lock(&inner.products).get_mut(&product) {
                    queue.known = after;
                }
                continue;
            }
            predicted = predict(&batch, product, known);
            let (inner, writer) = (Arc::clone(&inner), writer.clone());
            running.spawn(async move {
                let watch = inner.watch.get();
                run_batch(&writer, product, batch, known, &inner.settings, watch).await
            });
        }
        let after = match running.join_next().await {
            Some(Ok(after)) => after,
            // A batch task panicked: its callers were answered with an error when their
            // replies dropped; plan the next batch on a fresh read.
            Some(Err(_)) | None => None,
        };
        if after.is_none() {
            predicted = None;
        }
        if running.is_empty() {
            if let Some(queue) = lock(&inner.products).get_mut(&product) {
                queue.known = after;
            }
        }
    }
}

/// Answers the reject-policy requests in `pending` (all of which have a line for `product`,
/// the queue's product) with `InsufficientStock`, leaving the backorder-policy ones queued.
fn turn_away(pending: &mut VecDeque<Request>, product: ProductId) {
    let (kept, refused): (VecDeque<Request>, VecDeque<Request>) = pending
        .drain(..)
        .partition(|request| request.order.policy() != ShortagePolicy::Reject);
    *pending = kept;
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

struct WriterGuard<'a> {
    inner: &'a Inner,
    product: ProductId,
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        let mut products = lock(&self.inner.products);
        if let Some(queue) = products.get_mut(&self.product) {
            queue.writing = false;
            queue.known = None;
            for request in queue.pending.drain(..) {
                let _ = request.reply.send(Err(Error::Strategy(
                    "the batch writer of this product failed".into(),
                )));
            }
        }
    }
}

/// Locks `mutex`, ignoring poisoning: the state is a queue and a cached figure, both valid
/// after any panic (a writer's guard resets them).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
