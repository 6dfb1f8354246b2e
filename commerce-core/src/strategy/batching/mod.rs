//! The batching strategy: group commit per product (see [`Batching`]).

mod group;
mod plan;
mod queue;
mod sql;
mod watch;
mod write;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::ids::ProductId;
use crate::order::{OrderWriter, PlacedOrder, ShortagePolicy, ValidatedOrder};

use super::StockStrategy;
use plan::{predict, Figures, Stock};
use queue::{next_step, overloaded, ProductQueue, Request, Scene, Step, PIPELINE_DEPTH};
use watch::StockWatch;
use write::{run_batch, Outcome, Turn};

/// Batches planned on locked rows, one at a time, after a compare-and-set failed: an
/// outside write (a receipt, a cancellation, another instance) costs a few wasted batches,
/// not every batch of the surge.
const PESSIMISTIC_SPELL: u32 = 8;

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
    /// The most orders of one product waiting for a batch (default 10,000): an order beyond
    /// it is refused at once with [`Error::Overloaded`] (retryable; nothing written).
    pub max_queue: usize,
    /// The longest an order waits for its batch to start (default 5 s): an order that waited
    /// longer is refused with [`Error::Overloaded`] instead of being written for a caller
    /// that has most likely given up.
    pub max_wait: Duration,
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
    /// Whether the batches of products that are not under a surge share transactions
    /// (default `true`): under a broad sale, the orders of many products arriving together
    /// are written in one transaction (their products locked in ascending id), as a hot
    /// product's orders are.
    pub group_commit: bool,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_batch: 500,
            max_attempts: 8,
            sold_out_fast_path: true,
            in_flight: 2,
            max_queue: 10_000,
            max_wait: Duration::from_secs(5),
            listener_heartbeat: Duration::from_secs(1),
            listener_timeout: Duration::from_secs(1),
            sold_out_max_age: Duration::from_secs(5),
            group_commit: true,
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
/// **Back-pressure.** At most [`BatchSettings::max_queue`] orders wait per product; one
/// more is refused at once with [`Error::Overloaded`] (retryable, nothing written), and so is
/// an order that waited longer than [`BatchSettings::max_wait`] for its batch to start. A
/// caller that gives up (drops the future) before its batch's transaction starts is not
/// written; after that it is written like everyone else of its batch.
///
/// **Failures.** A conflict is tried again (with a short growing pause) up to
/// [`BatchSettings::max_attempts`] attempts; any other failure of one order (its hook
/// refusing it, say) is isolated by writing the batch in halves, so the others commit and
/// each caller gets its own error.
///
/// **Group commit across products.** A product that is not under a surge (nothing of it in
/// flight, fewer than 100 orders waiting) hands its batch to a group writer shared by all
/// products, which writes every batch handed in meanwhile in one transaction (its products
/// locked in ascending id), so a broad sale over many products gets the gain too
/// ([`BatchSettings::group_commit`], on by default). A hot product's second batch in flight
/// is written on its own, as before.
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
    /// One queue per product with orders waiting or a sold-out figure worth keeping; each
    /// behind its own lock (the map's lock is only held to find or add an entry).
    products: RwLock<HashMap<ProductId, Arc<Mutex<ProductQueue>>>>,
    watch: OnceLock<StockWatch>,
    /// Batches of products not under a surge, waiting to share a transaction.
    groups: group::Groups,
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

    /// Batching with `settings` (a `max_batch`, `max_attempts`, `in_flight` or `max_queue` of
    /// 0 counts as 1; a listener heartbeat, listener timeout or sold-out age limit under 10 ms
    /// counts as 10 ms).
    #[must_use]
    pub fn with_settings(settings: BatchSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings: BatchSettings {
                    max_batch: settings.max_batch.max(1),
                    max_attempts: settings.max_attempts.max(1),
                    in_flight: settings.in_flight.max(1),
                    max_queue: settings.max_queue.max(1),
                    listener_heartbeat: settings.listener_heartbeat.max(watch::SHORTEST),
                    listener_timeout: settings.listener_timeout.max(watch::SHORTEST),
                    sold_out_max_age: settings.sold_out_max_age.max(watch::SHORTEST),
                    ..settings
                },
                products: RwLock::new(HashMap::new()),
                watch: OnceLock::new(),
                groups: group::Groups::default(),
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
        order.lines().iter().find_map(|line| {
            let queue = self.inner.existing(line.product)?;
            let known = lock(&queue).known?;
            watch
                .still_sold_out(known)
                .then_some(Error::InsufficientStock {
                    product: line.product,
                    requested: line.quantity,
                    available: 0,
                })
        })
    }

    /// Queues `order` for its product's next batch (refused when the queue is full); starts
    /// the product's writer if idle.
    fn enqueue(
        &self,
        writer: &OrderWriter,
        product: ProductId,
        order: &ValidatedOrder,
    ) -> Result<oneshot::Receiver<Result<PlacedOrder>>> {
        let settings = &self.inner.settings;
        let (reply, answer) = oneshot::channel();
        let request = Request {
            order: order.clone(),
            reply,
            queued_at: Instant::now(),
            trace: caller_trace(),
        };
        let (queue, start) = loop {
            let queue = self.inner.entry(product);
            let mut waiting = lock(&queue);
            if waiting.retired {
                // Its writer just took it out of the map: add a new entry.
                continue;
            }
            if waiting.pending.len() >= settings.max_queue {
                return Err(overloaded(product, settings.max_wait));
            }
            waiting.pending.push_back(request);
            let start = !std::mem::replace(&mut waiting.writing, true);
            drop(waiting);
            break (queue, start);
        };
        if start {
            let (inner, writer) = (Arc::clone(&self.inner), writer.clone());
            tokio::spawn(async move { write_queue(inner, writer, product, queue).await });
        }
        Ok(answer)
    }
}

impl Inner {
    /// The queue of `product`, if it has one.
    fn existing(&self, product: ProductId) -> Option<Arc<Mutex<ProductQueue>>> {
        read(&self.products).get(&product).cloned()
    }

    /// The queue of `product`, added if missing.
    fn entry(&self, product: ProductId) -> Arc<Mutex<ProductQueue>> {
        if let Some(queue) = self.existing(product) {
            return queue;
        }
        Arc::clone(write(&self.products).entry(product).or_default())
    }

    /// Takes the queue of `product` out of the map when it holds nothing worth keeping (so
    /// that ids of products that do not exist, or that are not sold out, take no memory once
    /// their orders are answered).
    fn retire_if_useless(&self, product: ProductId, queue: &Arc<Mutex<ProductQueue>>) {
        let mut products = write(&self.products);
        let mut waiting = lock(queue);
        let same = products
            .get(&product)
            .is_some_and(|entry| Arc::ptr_eq(entry, queue));
        if same && waiting.is_idle_and_useless() {
            waiting.retired = true;
            products.remove(&product);
        }
    }
}

#[async_trait]
impl StockStrategy for Batching {
    fn name(&self) -> &'static str {
        "batching"
    }

    /// Repeats of an idempotency key are found by the batch (one query for all its keyed
    /// orders), not by a query per order here; a keyed order turned away is looked up again
    /// by [`crate::Commerce::place_order`], which finds a repeat placed through any instance.
    async fn place(&self, writer: &OrderWriter, order: &ValidatedOrder) -> Result<PlacedOrder> {
        let watch = self.watch(writer);
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
        self.enqueue(writer, home, order)?
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

/// The writer task of one product: starts batches while orders wait (as [`next_step`]
/// says), refuses orders that waited too long, then stops.
async fn write_queue(
    inner: Arc<Inner>,
    writer: OrderWriter,
    product: ProductId,
    queue: Arc<Mutex<ProductQueue>>,
) {
    // If a batch panics, the guard fails the waiting callers and frees the queue, so the
    // next order starts a new writer instead of waiting forever.
    let guard = WriterGuard { queue: &queue };
    let settings = inner.settings;
    let mut running: JoinSet<(Outcome, Option<Figures>)> = JoinSet::new();
    // The product's figures once every batch started so far has committed as planned: the
    // next batch in flight is planned on them (its compare-and-set fails, and it re-plans,
    // if one of them did not).
    let mut predicted: Option<Figures> = None;
    let mut spell: u32 = 0;
    // Closes when the latest batch started has committed (or ended).
    let mut latest: Option<tokio::sync::oneshot::Receiver<()>> = None;
    loop {
        let deadline = loop {
            let (batch, planned_on, grouped) = {
                let mut waiting = lock(&queue);
                let deadline = waiting.sweep(product, settings.max_wait, Instant::now());
                // Orders that queued before the product was seen sold out are turned away
                // as later arrivals are, from memory (with one batch at a time a crowd
                // queued behind the sell-out would otherwise wait for a read per batch).
                if running.is_empty() {
                    if let (Some(watch), Some(known)) = (inner.watch.get(), waiting.known) {
                        if watch.still_sold_out(known) {
                            waiting.turn_away(product);
                        }
                    }
                }
                let scene = Scene {
                    waiting: waiting.pending.len(),
                    running: running.len(),
                    in_flight: settings.in_flight,
                    max_batch: settings.max_batch,
                    predicted,
                    pessimistic: spell > 0,
                };
                match next_step(scene) {
                    Step::Stop => {
                        waiting.writing = false;
                        drop(waiting);
                        std::mem::forget(guard);
                        inner.retire_if_useless(product, &queue);
                        return;
                    }
                    Step::Wait => break deadline,
                    Step::Start(n) => {
                        let planned_on = if spell > 0 {
                            None
                        } else if running.is_empty() {
                            waiting.known
                        } else {
                            predicted
                        };
                        let batch = waiting.take(n);
                        // A product that is not under a surge shares a transaction with the
                        // other products' orders of the moment (group commit).
                        let grouped = settings.group_commit
                            && running.is_empty()
                            && waiting.pending.len() < PIPELINE_DEPTH;
                        (batch, planned_on, grouped)
                    }
                }
            };
            if batch.is_empty() {
                continue;
            }
            spell = spell.saturating_sub(1);
            let prediction = predict(&batch, product, planned_on);
            predicted = prediction;
            let (mine, next) = tokio::sync::oneshot::channel();
            let turn = Turn {
                after: if running.is_empty() {
                    None
                } else {
                    latest.take()
                },
                mine: vec![mine],
            };
            latest = Some(next);
            let (inner, writer) = (Arc::clone(&inner), writer.clone());
            let known: Stock = planned_on.map(|f| (product, f)).into_iter().collect();
            running.spawn(async move {
                let outcome = if grouped {
                    group::write(&inner, &writer, batch, known, turn).await
                } else {
                    let watch = inner.watch.get();
                    run_batch(&writer, batch, known, &inner.settings, watch, turn).await
                };
                (outcome, prediction)
            });
        };
        let joined = match deadline {
            Some(deadline) => tokio::select! {
                joined = running.join_next() => joined,
                () = tokio::time::sleep_until(deadline.into()) => continue,
            },
            None => running.join_next().await,
        };
        let after = match joined {
            Some(Ok((outcome, prediction))) => {
                let after = outcome.after.get(&product).copied();
                if outcome.conflicted {
                    spell = PESSIMISTIC_SPELL;
                }
                if outcome.conflicted || !same_figures(after, prediction) {
                    // The batches still in flight were planned on figures that did not come
                    // true: the next one plans on what they commit.
                    predicted = None;
                }
                after
            }
            // A batch task panicked: its callers were answered with an error when their
            // replies dropped; plan the next batch on a fresh read.
            Some(Err(_)) | None => {
                predicted = None;
                None
            }
        };
        if running.is_empty() {
            predicted = after;
            lock(&queue).known = after;
        }
    }
}

/// Whether two figures of a product agree on what a plan depends on.
fn same_figures(a: Option<Figures>, b: Option<Figures>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            (a.available, a.backordered, a.price) == (b.available, b.backordered, b.price)
        }
        _ => false,
    }
}

struct WriterGuard<'a> {
    queue: &'a Mutex<ProductQueue>,
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        let mut waiting = lock(self.queue);
        waiting.writing = false;
        waiting.known = None;
        for request in waiting.pending.drain(..) {
            let _ = request.reply.send(Err(Error::Strategy(
                "the batch writer of this product failed".into(),
            )));
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

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The caller's trace context, carried to the events its order's batch writes.
#[cfg(feature = "outbox")]
fn caller_trace() -> Option<String> {
    commerce_outbox::trace::current()
}

/// Without the outbox there is no trace context to carry.
#[cfg(not(feature = "outbox"))]
fn caller_trace() -> Option<String> {
    None
}
