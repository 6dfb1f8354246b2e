//! Writing one batch: allocate first come first served, write every row in bulk, take the
//! stock with one update, commit, answer each caller.
//!
//! Two ways to hold the product row:
//! - **optimistic** (the figures the previous batch committed are known): every row goes in
//!   first, and the stock update comes last as a compare-and-set on the figures the batch
//!   was planned with, so the hot row is locked only for that one statement and the commit.
//!   If anything else changed the product meanwhile (another instance, a receipt, a
//!   multi-line order) the update matches nothing, the transaction is rolled back and the
//!   batch is planned again, pessimistically. A batch that queues backorders takes the row
//!   first (the compare-and-set, then its rows), so that backorder ids follow commit order.
//! - **pessimistic**: `SELECT ... FOR NO KEY UPDATE` first (which leaves the foreign-key
//!   checks of other transactions' inserts free to go on), then plan and write under the lock.
//!   Always makes progress; used for a product's first batch and after a conflict.
//!
//! Either way the database condition is the final guard: several instances batching the same
//! product stay correct.
//!
//! **Who is written.** Callers that gave up are dropped after the batch's connection is
//! acquired and again before every attempt; from the start of an attempt's transaction to its
//! commit the batch is written whoever is still listening.
//!
//! **Failures.** A conflict (stale figures, a deadlock, a key taken meanwhile) is tried
//! again, with a short growing pause, up to [`BatchSettings::max_attempts`] attempts in all.
//! Any other failure before the commit (a hook refusing an order, a statement error) is
//! isolated: the batch is split in halves, each written on its own, until the failing order
//! is alone and gets its own error, so at most about 2 log2(n) extra transactions for one bad
//! order. A lost commit reply ([`Error::CommitOutcomeUnknown`]) goes to every caller of the
//! batch: each may have been written.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::Duration;

use sqlx::{Connection, PgConnection};

use super::plan::{allocate, Decision, Figures, Plan, Stock};
use super::queue::Request;
use super::sql::{insert_rows, stock_rows, take_stock, taken_keys};
use super::watch::StockWatch;
use super::BatchSettings;
use crate::effects::commit;
use crate::error::{violated_constraint, Error, Result};
use crate::event::CoreEvent;
use crate::ids::ProductId;
use crate::inventory::Allocation;
use crate::order::{is_same_request, load_order, Exposures, OrderLine, OrderWriter, PlacedOrder};

/// How a batch ended, for its product's writer.
pub(super) struct Outcome {
    /// The figures of the products the batch read or wrote, as it left them (a product
    /// missing here: read it again).
    pub(super) after: Stock,
    /// A compare-and-set failed: the product changed under the batch.
    pub(super) conflicted: bool,
}

/// Why an attempt did not commit.
enum Retry {
    /// A product changed between the plan and the write.
    Stale,
    /// Another transaction holds or committed one of the batch's idempotency keys.
    KeyTaken,
    /// The figures planned on were not current; these are (nothing was written).
    Replan(Stock),
}

/// The order of the stock updates of a product's batches in flight: a batch planned on what
/// the batch before it will leave sends its compare-and-set only once that batch has
/// committed (or ended). Sent earlier, it would find the row as it was before that batch:
/// a statement's snapshot skips a row whose committed version does not match its condition,
/// without waiting for the lock of the transaction about to change it. Its rows and hooks go
/// in meanwhile, which is what running two batches at once is for.
#[derive(Default)]
pub(super) struct Turn {
    /// Resolves (or closes) once the previous batch committed or ended.
    pub(super) after: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Dropped once this batch committed or ended (several in a group of products' batches).
    pub(super) mine: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Turn {
    async fn wait(&mut self) {
        if let Some(previous) = self.after.take() {
            let _ = previous.await;
        }
    }

    fn done(&mut self) {
        self.mine.clear();
    }
}

/// How one group of a batch ended.
enum GroupEnd {
    /// Every caller answered; the figures of the products it read or wrote.
    Done(Stock),
    /// A failure that may be one order's: write the group in halves.
    Split(Vec<Request>),
}

/// Writes `requests` and answers every caller. `known`: figures of the batch's products that
/// earlier batches left (a batch of one product whose figures are known is written
/// optimistically; any other locks its products first).
pub(super) async fn run_batch(
    writer: &OrderWriter,
    requests: Vec<Request>,
    known: Stock,
    settings: &BatchSettings,
    watch: Option<&StockWatch>,
    mut turn: Turn,
) -> Outcome {
    // Splits left before a failure is taken as everyone's (a broken hook would otherwise
    // cost a transaction per order).
    let mut splits = 2 * (usize::BITS - requests.len().leading_zeros()) + 2;
    let mut groups = vec![requests];
    let mut known = known;
    let mut left = Stock::new();
    let mut conflicted = false;
    while let Some(group) = groups.pop() {
        let isolate = splits > 0;
        let context = Context {
            writer,
            settings,
            watch,
            isolate,
        };
        match write_group(&context, group, known, &mut turn, &mut conflicted).await {
            GroupEnd::Done(after) => {
                left.extend(after.iter().map(|(product, figures)| (*product, *figures)));
                known = after;
            }
            GroupEnd::Split(mut first) => {
                splits -= 1;
                let second = first.split_off(first.len() / 2);
                // The earlier half first: first come, first served.
                groups.push(second);
                groups.push(first);
                known = Stock::new();
            }
        }
    }
    Outcome {
        after: left,
        conflicted,
    }
}

/// What every group of a batch shares.
struct Context<'a> {
    writer: &'a OrderWriter,
    settings: &'a BatchSettings,
    watch: Option<&'a StockWatch>,
    /// Whether a failure that may be one order's splits the group.
    isolate: bool,
}

/// Attempts to write `requests` in one transaction until it commits, fails for everyone, or
/// fails in a way that may be one order's (with `isolate`: [`GroupEnd::Split`]).
async fn write_group(
    context: &Context<'_>,
    mut requests: Vec<Request>,
    mut known: Stock,
    turn: &mut Turn,
    conflicted: &mut bool,
) -> GroupEnd {
    let Context {
        writer,
        settings,
        watch,
        isolate,
    } = *context;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            let mut conn = writer.pool().acquire().await?;
            requests.retain(|request| !request.is_abandoned());
            answer_repeats(&mut conn, &mut requests).await?;
            if requests.is_empty() {
                return Ok(Ok((Vec::new(), known.clone())));
            }
            let generation = watch.and_then(StockWatch::generation);
            attempt_batch(&mut conn, writer, &requests, &known, generation, turn).await
        }
        .await;
        let error = match result {
            Ok(Ok((answers, after))) => {
                for (request, answer) in requests.into_iter().zip(answers) {
                    let _ = request.reply.send(answer);
                }
                return GroupEnd::Done(after);
            }
            Ok(Err(Retry::Replan(now))) => {
                // Not a failed attempt: the batch wrote nothing and knows the row now.
                attempt -= 1;
                known = now;
                continue;
            }
            Ok(Err(Retry::Stale)) => {
                *conflicted = true;
                known = Stock::new();
                Error::Conflict("the product changed under the batch at every attempt".into())
            }
            Ok(Err(Retry::KeyTaken)) => {
                known = Stock::new();
                Error::Conflict("idempotency keys of the batch were taken at every attempt".into())
            }
            Err(e) => {
                known = Stock::new();
                e
            }
        };
        let retry = error.is_retryable();
        if retry && attempt < settings.max_attempts {
            if !matches!(error, Error::Conflict(_)) || attempt > 1 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            continue;
        }
        let shared = retry || matches!(error, Error::CommitOutcomeUnknown(_));
        if !shared && isolate && requests.len() > 1 {
            return GroupEnd::Split(requests);
        }
        fail_all(requests, error);
        return GroupEnd::Done(Stock::new());
    }
}

/// The pause before attempt `attempt + 1`: 2, 4, 8 ... ms, at most about 100 ms, each drawn
/// between half and all of it (so the batches of several instances do not retry in step).
fn backoff(attempt: u32) -> Duration {
    let full = 1u64 << attempt.clamp(1, 7);
    let random = std::collections::hash_map::RandomState::new().hash_one(attempt);
    let micros = full * 1_000 / 2 + random % (full * 1_000 / 2 + 1);
    Duration::from_micros(micros)
}

/// Gives every caller of `requests` `error` (the first its very value, the others the same
/// variant).
fn fail_all(requests: Vec<Request>, error: Error) {
    let mut requests = requests.into_iter();
    if let Some(first) = requests.next() {
        for request in requests {
            let _ = request.reply.send(Err(replicate(&error)));
        }
        let _ = first.reply.send(Err(error));
    }
}

/// Answers the requests whose idempotency key already has an order (placed earlier, on any
/// instance) with that order, and takes them out of the batch: one query for the batch.
async fn answer_repeats(conn: &mut PgConnection, requests: &mut Vec<Request>) -> Result<()> {
    let taken = taken_keys(conn, requests).await?;
    if taken.is_empty() {
        return Ok(());
    }
    let mut answers: HashMap<usize, Result<PlacedOrder>> = HashMap::new();
    for (index, id) in taken {
        let existing = load_order(conn, id).await?;
        let request = &requests[index];
        let answer = if is_same_request(&existing, &request.order) {
            Ok(PlacedOrder {
                order: existing,
                replayed: true,
            })
        } else {
            Err(Error::DuplicateRequest {
                user: request.order.user_id().to_owned(),
                key: request
                    .order
                    .idempotency_key()
                    .unwrap_or_default()
                    .to_owned(),
                existing: existing.id,
            })
        };
        answers.insert(index, answer);
    }
    let all = std::mem::take(requests);
    for (index, request) in all.into_iter().enumerate() {
        match answers.remove(&index) {
            Some(answer) => {
                let _ = request.reply.send(answer);
            }
            None => requests.push(request),
        }
    }
    Ok(())
}

type Answers = Vec<Result<PlacedOrder>>;
type Attempted = Result<std::result::Result<(Answers, Stock), Retry>>;

/// One try on `conn`: `Ok(Ok(..))` committed (or nothing to write) with every caller's
/// answer and the figures of the products it read or wrote.
///
/// Optimistic only when every order is for one product whose figures are known; a batch
/// touching several products (orders of several lines, or a group of several products'
/// orders) locks all of them (ascending) first.
async fn attempt_batch(
    conn: &mut PgConnection,
    writer: &OrderWriter,
    requests: &[Request],
    known: &Stock,
    generation: Option<u64>,
    turn: &mut Turn,
) -> Attempted {
    let products: Vec<ProductId> = {
        let mut all: Vec<ProductId> = requests.iter().flat_map(|r| r.order.products()).collect();
        all.sort_unstable();
        all.dedup();
        all
    };
    // Optimistic when the figures of every product are known (left by earlier batches).
    let known: Option<Stock> = products
        .iter()
        .map(|product| known.get(product).map(|figures| (*product, *figures)))
        .collect();
    let known = known.filter(|figures| !figures.is_empty());
    let stock = match &known {
        Some(figures) => figures.clone(),
        // Nothing written yet: plan on a plain read; if it turns out there is something to
        // write, the write takes the locks and plans again.
        None => stock_rows(&mut *conn, &products, generation, false).await?,
    };
    // Per-user limits can only turn more requests away, never fewer: a batch with nothing
    // to write without them has nothing to write with them, and needs no user's lock.
    let plan = allocate(requests, &stock, None);
    if plan.writes_nothing() {
        // Every request is turned away. The figures must be current for that: confirm them
        // unless they were just read.
        if let Some(figures) = &known {
            let fresh = stock_rows(&mut *conn, &products, generation, false).await?;
            let same = figures.iter().all(|(product, f)| {
                fresh.get(product).map(|now| now.available) == Some(f.available)
            });
            return Ok(if same || fresh.len() < figures.len() {
                Ok((answer_rejections(&allocate(requests, &fresh, None)), fresh))
            } else {
                Err(Retry::Replan(fresh))
            });
        }
        return Ok(Ok((answer_rejections(&plan), stock)));
    }

    let mut tx = conn.begin().await?;
    let mut exposures = lock_and_count_users(&mut tx, writer, requests).await?;
    let optimistic = known.is_some();
    let (stock, plan) = if optimistic {
        match exposures.as_mut() {
            None => (stock, plan),
            Some(exposures) => {
                let plan = allocate(requests, &stock, Some(exposures));
                if plan.writes_nothing() {
                    // Every request over a limit or short on the previous batch's figures,
                    // which are not confirmed: decide again with the rows locked.
                    return Ok(Err(Retry::Stale));
                }
                (stock, plan)
            }
        }
    } else {
        // Pessimistic: lock every product (ascending), then plan on what the locks show.
        let stock = stock_rows(&mut *tx, &products, generation, true).await?;
        let plan = allocate(requests, &stock, exposures.as_mut());
        if plan.writes_nothing() {
            drop(tx);
            return Ok(Ok((answer_rejections(&plan), stock)));
        }
        (stock, plan)
    };
    // Backorders queue by id, and ids are handed out as rows go in: a batch that queues
    // takes the row first, so that its ids follow those of the batch that committed before.
    let lock_first = optimistic && plan.queues_backorders();
    let mut after = None;
    if lock_first {
        turn.wait().await;
        let Some(taken) = take_stock(&mut tx, &plan, &stock, optimistic).await? else {
            return Ok(Err(Retry::Stale));
        };
        after = Some(taken);
    }
    let created_at = match insert_rows(&mut tx, requests, &plan).await {
        Ok(created_at) => created_at,
        Err(e) if violated_constraint(&e) == Some("orders_user_idempotency_key") => {
            return Ok(Err(Retry::KeyTaken));
        }
        Err(e) => return Err(e.into()),
    };
    let (events, lines) = events_and_lines(requests, &plan);
    run_hooks(writer, &mut tx, &events, requests, &plan).await?;
    let after = match after {
        Some(after) => after,
        None => {
            turn.wait().await;
            match take_stock(&mut tx, &plan, &stock, optimistic).await? {
                Some(after) => after,
                None => return Ok(Err(Retry::Stale)),
            }
        }
    };
    let committed = commit(tx).await;
    turn.done();
    committed?;

    // Every product the batch read, as the batch left it (the update returns those it changed).
    let left: Stock = stock
        .iter()
        .map(|(product, figures)| {
            let now = after.get(product).unwrap_or(figures);
            (*product, Figures { generation, ..*now })
        })
        .collect();
    let mut answers: Answers = Vec::with_capacity(requests.len());
    let mut placed: HashMap<usize, PlacedOrder> = HashMap::new();
    for (index, (request, decision)) in requests.iter().zip(&plan.decisions).enumerate() {
        let answer = match decision {
            Decision::Place {
                id,
                lines: allocations,
            } => {
                let lines = lines[index].clone().unwrap_or_default();
                let first = PlacedOrder::new_order(
                    *id,
                    &request.order,
                    Allocation::placement_status(allocations),
                    lines,
                    created_at,
                );
                placed.insert(index, first.clone());
                Ok(first)
            }
            Decision::SameKeyAs(first) => match placed.get(first) {
                Some(order) => same_request(order, request),
                None => Err(Error::Conflict(
                    "idempotency key of an unplaced request".into(),
                )),
            },
            other => refused(other),
        };
        answers.push(answer);
    }
    Ok(Ok((answers, left)))
}

/// The error of a request turned away.
fn refused(decision: &Decision) -> Result<PlacedOrder> {
    Err(decision
        .refusal()
        .unwrap_or_else(|| Error::Conflict("a batch decision without an answer".into())))
}

/// Answers a batch with nothing to write (a repeat points only at a placed request, so
/// there is none here).
fn answer_rejections(plan: &Plan) -> Answers {
    plan.decisions.iter().map(refused).collect()
}

/// With a per-user limit that concerns an order of the batch: takes the advisory locks of the
/// batch's users and counts what each has open, first thing in the batch's transaction (the
/// crate's lock order puts users before products). `None`, without a round trip, otherwise
/// (no limit set, or only the units limit and only reject-policy orders).
async fn lock_and_count_users(
    conn: &mut PgConnection,
    writer: &OrderWriter,
    requests: &[Request],
) -> Result<Option<Exposures>> {
    let limits = writer.user_limits();
    if !requests.iter().any(|r| limits.apply_to(r.order.policy())) {
        return Ok(None);
    }
    let users: Vec<&str> = requests.iter().map(|r| r.order.user_id()).collect();
    Exposures::lock_and_count(conn, limits, &users)
        .await
        .map(Some)
}

/// The answer to a request repeating the key of `first` (placed in this batch).
fn same_request(first: &PlacedOrder, request: &Request) -> Result<PlacedOrder> {
    let order = &request.order;
    if is_same_request(&first.order, order) {
        Ok(PlacedOrder {
            order: first.order.clone(),
            replayed: true,
        })
    } else {
        Err(Error::DuplicateRequest {
            user: order.user_id().to_owned(),
            key: order.idempotency_key().unwrap_or_default().to_owned(),
            existing: first.order.id,
        })
    }
}

/// Runs the hooks on the batch's events, each order's under its caller's trace context (with
/// the outbox: the events the hooks write for an order carry its request's trace).
async fn run_hooks(
    writer: &OrderWriter,
    tx: &mut sqlx::PgConnection,
    events: &[CoreEvent],
    requests: &[Request],
    plan: &Plan,
) -> Result<()> {
    #[cfg(feature = "outbox")]
    {
        let traces: std::collections::HashMap<String, String> = requests
            .iter()
            .zip(&plan.decisions)
            .filter_map(|(request, decision)| match (decision, &request.trace) {
                (Decision::Place { id, .. }, Some(trace)) => Some((id.to_string(), trace.clone())),
                _ => None,
            })
            .collect();
        commerce_outbox::trace::scope_by_aggregate(traces, writer.hooks().run(tx, events)).await
    }
    #[cfg(not(feature = "outbox"))]
    {
        let _ = (requests, plan);
        writer.hooks().run(tx, events).await
    }
}

/// The `order.placed` events and each placed request's lines (indexed like `requests`).
fn events_and_lines(
    requests: &[Request],
    plan: &Plan,
) -> (Vec<CoreEvent>, Vec<Option<Vec<OrderLine>>>) {
    let mut events = Vec::new();
    let lines = requests
        .iter()
        .zip(&plan.decisions)
        .map(|(request, decision)| {
            let Decision::Place {
                id,
                lines: allocations,
            } = decision
            else {
                return None;
            };
            let order = &request.order;
            let lines: Vec<OrderLine> = allocations
                .iter()
                .map(|take| OrderLine {
                    product: take.product,
                    quantity: take.quantity,
                    allocated: take.allocated,
                    unit_price: take.unit_price,
                })
                .collect();
            events.push(CoreEvent::OrderPlaced {
                order: *id,
                user_id: order.user_id().to_owned(),
                status: Allocation::placement_status(allocations),
                policy: order.policy(),
                lines: lines.clone(),
            });
            Some(lines)
        })
        .collect();
    (events, lines)
}

/// The same error for another caller of a failed batch (errors are not `Clone`): the same
/// variant, so [`Error::is_retryable`] and the HTTP mapping treat it alike, with the first
/// caller's message.
fn replicate(e: &Error) -> Error {
    let text = e.to_string();
    let source = || sqlx::Error::Protocol(format!("{e:#}"));
    match e {
        Error::DatabaseUnavailable(_) => Error::DatabaseUnavailable(source()),
        Error::CommitOutcomeUnknown(_) => Error::CommitOutcomeUnknown(source()),
        Error::Conflict(_) => Error::Conflict(text.into()),
        Error::Hook(_) => Error::Hook(text.into()),
        Error::Strategy(_) => Error::Strategy(text.into()),
        Error::ProductNotFound { product } => Error::ProductNotFound { product: *product },
        Error::StockChanged { product } => Error::StockChanged { product: *product },
        Error::UserLimitExceeded {
            user,
            limit,
            current,
            requested,
            max,
        } => Error::UserLimitExceeded {
            user: user.clone(),
            limit: *limit,
            current: *current,
            requested: *requested,
            max: *max,
        },
        _ => Error::Database(source()),
    }
}
