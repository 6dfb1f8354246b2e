//! Writing one batch: allocate first come first served, write every row in bulk, take the
//! stock with one update, commit, answer each caller.
//!
//! Two ways to hold the product row:
//! - **optimistic** (the figures the previous batch committed are known): every row goes in
//!   first, and the stock update comes last as a compare-and-set on the figures the batch
//!   was planned with, so the hot row is locked only for that one statement and the commit.
//!   If anything else changed the product meanwhile (another instance, a receipt, a
//!   multi-line order) the update matches nothing, the transaction is rolled back and the
//!   batch is planned again, pessimistically.
//! - **pessimistic**: `SELECT ... FOR UPDATE` first, then plan and write under the lock.
//!   Always makes progress; used for a product's first batch and after a conflict.
//!
//! Either way the database condition is the final guard: several instances batching the same
//! product stay correct.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::watch::StockWatch;
use super::{BatchSettings, Request};
use crate::effects::commit;
use crate::error::{violated_constraint, Error, Result};
use crate::event::CoreEvent;
use crate::ids::{OrderId, ProductId};
use crate::order::{
    is_same_request, Exposures, OrderLine, OrderStatus, OrderWriter, OverLimit, PlacedOrder,
    ShortagePolicy,
};

/// A product row as a batch saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Figures {
    pub(crate) available: i64,
    pub(crate) backordered: i64,
    pub(crate) price: i64,
    /// The stock watch's generation noted before these were read (sold-out fast path).
    pub(crate) generation: Option<u64>,
}

/// The rows of the products a batch touches, by id (ascending: the lock order).
type Stock = BTreeMap<ProductId, Figures>;

/// What a batch takes for one line of an order.
#[derive(Debug, Clone, Copy)]
struct Take {
    product: ProductId,
    quantity: i64,
    allocated: i64,
    /// The product's `available` after this line's units.
    available_after: i64,
}

/// What a batch decided for one request.
enum Decision {
    /// Write this order.
    Place { id: OrderId, lines: Vec<Take> },
    /// Not enough stock for a line (reject policy).
    Reject {
        product: ProductId,
        requested: i64,
        available: i64,
    },
    /// A line names a product that does not exist.
    Missing(ProductId),
    /// It would take its user past a per-user limit.
    OverLimit(OverLimit),
    /// Repeats the idempotency key of an earlier request of this batch: answered with that
    /// order after the commit.
    SameKeyAs(usize),
}

struct Plan {
    decisions: Vec<Decision>,
    /// Units taken and queued per product.
    changes: BTreeMap<ProductId, (i64, i64)>,
}

impl Plan {
    fn writes_nothing(&self) -> bool {
        !self
            .decisions
            .iter()
            .any(|d| matches!(d, Decision::Place { .. }))
    }
}

/// Why an attempt did not commit.
enum Retry {
    /// A product changed between the plan and the write.
    Stale,
    /// Another transaction holds or committed one of the batch's idempotency keys.
    KeyTaken,
}

/// Writes `requests` (orders whose lowest product is `home`) and answers every caller.
/// Returns the figures of `home` to plan its next batch with (`None`: read them again).
pub(super) async fn run_batch(
    writer: &OrderWriter,
    home: ProductId,
    mut requests: Vec<Request>,
    known: Option<Figures>,
    settings: &BatchSettings,
    watch: Option<&StockWatch>,
) -> Option<Figures> {
    let mut known = known;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let generation = watch.and_then(StockWatch::generation);
        let outcome = attempt_batch(writer, home, &requests, known, generation).await;
        match outcome {
            Ok(Ok((answers, after))) => {
                for (request, answer) in requests.into_iter().zip(answers) {
                    let _ = request.reply.send(answer);
                }
                return after;
            }
            Ok(Err(Retry::Stale)) => known = None,
            Ok(Err(Retry::KeyTaken)) => {
                known = None;
                requests = answer_repeats(writer, requests).await;
                if requests.is_empty() {
                    return None;
                }
            }
            Err(e) if e.is_retryable() && attempt < settings.max_attempts => known = None,
            Err(e) => {
                let mut requests = requests.into_iter();
                if let Some(first) = requests.next() {
                    for request in requests {
                        let _ = request.reply.send(Err(replicate(&e)));
                    }
                    let _ = first.reply.send(Err(e));
                }
                return None;
            }
        }
    }
}

/// The figures of `home` after `requests` commit as planned on `known`; `None` when that
/// cannot be told in advance (figures unknown, or orders touching other products).
pub(super) fn predict(
    requests: &[Request],
    home: ProductId,
    known: Option<Figures>,
) -> Option<Figures> {
    let known = known?;
    if requests
        .iter()
        .any(|r| r.order.products().any(|product| product != home))
    {
        return None;
    }
    let plan = allocate(requests, &Stock::from([(home, known)]), None);
    let (taken, queued) = plan.changes.get(&home).copied().unwrap_or_default();
    Some(Figures {
        available: known.available - taken,
        backordered: known.backordered + queued,
        ..known
    })
}

type Answers = Vec<Result<PlacedOrder>>;
type Attempted = Result<Result<(Answers, Option<Figures>), Retry>>;

/// One try: `Ok(Ok(..))` committed (or nothing to write) with every caller's answer.
///
/// Optimistic only when every order is for `home` alone and its figures are known; a batch
/// with orders of several lines locks all its products (ascending) first.
async fn attempt_batch(
    writer: &OrderWriter,
    home: ProductId,
    requests: &[Request],
    known: Option<Figures>,
    generation: Option<u64>,
) -> Attempted {
    let pool = writer.pool();
    let products: Vec<ProductId> = {
        let mut all: Vec<ProductId> = requests.iter().flat_map(|r| r.order.products()).collect();
        all.sort_unstable();
        all.dedup();
        all
    };
    let known = known.filter(|_| products == [home]);
    let stock = match known {
        Some(figures) => Stock::from([(home, figures)]),
        // Nothing written yet: plan on a plain read; if it turns out there is something to
        // write, the write takes the locks and plans again.
        None => stock_rows(pool, &products, generation, false).await?,
    };
    // Per-user limits can only turn more requests away, never fewer: a batch with nothing
    // to write without them has nothing to write with them, and needs no user's lock.
    let plan = allocate(requests, &stock, None);
    if plan.writes_nothing() {
        // Every request is turned away (or repeats one that is). The figures must be current
        // for that: confirm them unless they were just read.
        if let Some(figures) = known {
            let fresh = stock_rows(pool, &[home], generation, false).await?;
            return match fresh.get(&home) {
                Some(now) if now.available == figures.available => Ok(Ok((
                    answer_rejections(writer, requests, &plan).await,
                    Some(*now),
                ))),
                Some(now) => {
                    Box::pin(attempt_batch(
                        writer,
                        home,
                        requests,
                        Some(*now),
                        generation,
                    ))
                    .await
                }
                None => {
                    let plan = allocate(requests, &fresh, None);
                    Ok(Ok((answer_rejections(writer, requests, &plan).await, None)))
                }
            };
        }
        return Ok(Ok((
            answer_rejections(writer, requests, &plan).await,
            stock.get(&home).copied(),
        )));
    }

    let mut tx = pool.begin().await?;
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
            let home_figures = stock.get(&home).copied();
            return Ok(Ok((
                answer_rejections(writer, requests, &plan).await,
                home_figures,
            )));
        }
        (stock, plan)
    };
    let created_at = match insert_rows(&mut tx, requests, &plan, &stock).await {
        Ok(created_at) => created_at,
        Err(e) if violated_constraint(&e) == Some("orders_user_idempotency_key") => {
            return Ok(Err(Retry::KeyTaken));
        }
        Err(e) => return Err(e.into()),
    };
    let (events, lines) = events_and_lines(requests, &plan, &stock);
    writer.hooks().run(&mut tx, &events).await?;
    let Some(after) = take_stock(&mut tx, &plan, &stock, optimistic).await? else {
        return Ok(Err(Retry::Stale));
    };
    commit(tx).await?;

    let home_after = after
        .get(&home)
        .or_else(|| stock.get(&home))
        .map(|figures| Figures {
            generation,
            ..*figures
        });
    let mut answers: Answers = Vec::with_capacity(requests.len());
    let mut placed: HashMap<usize, PlacedOrder> = HashMap::new();
    for (index, (request, decision)) in requests.iter().zip(&plan.decisions).enumerate() {
        let answer = match decision {
            Decision::Place { id, .. } => {
                let lines = lines[index].clone().unwrap_or_default();
                let first = PlacedOrder::new_order(
                    *id,
                    &request.order,
                    status_of(&lines),
                    lines,
                    created_at,
                );
                placed.insert(index, first.clone());
                Ok(first)
            }
            Decision::SameKeyAs(first) => match placed.get(first) {
                Some(order) => same_request(order, request),
                // The first was turned away: so is its repeat, for the same reason.
                None => refusal(&plan.decisions[*first]).unwrap_or_else(|| {
                    Err(Error::Conflict(
                        "idempotency key of an unplaced request".into(),
                    ))
                }),
            },
            other => refusal(other).unwrap_or_else(|| {
                Err(Error::Conflict("a batch decision without an answer".into()))
            }),
        };
        answers.push(answer);
    }
    Ok(Ok((answers, home_after)))
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

/// The error of a request turned away.
fn refusal(decision: &Decision) -> Option<Result<PlacedOrder>> {
    match decision {
        Decision::Reject {
            product,
            requested,
            available,
        } => Some(Err(Error::InsufficientStock {
            product: *product,
            requested: *requested,
            available: *available,
        })),
        Decision::Missing(product) => Some(Err(Error::ProductNotFound { product: *product })),
        Decision::OverLimit(over) => Some(Err(over.clone().into())),
        Decision::Place { .. } | Decision::SameKeyAs(_) => None,
    }
}

fn status_of(lines: &[OrderLine]) -> OrderStatus {
    if lines.iter().all(|line| line.allocated == line.quantity) {
        OrderStatus::Created
    } else {
        OrderStatus::Backordered
    }
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

/// First come first served: each request in arrival order takes what it asks for if every
/// line fits (reject policy) or what is left of each line (backorder policy, the rest queued).
/// With `exposures` (per-user limits on), a request that would take its user past a limit
/// is refused and takes nothing, so what it would have taken goes to the requests after it.
fn allocate(requests: &[Request], stock: &Stock, mut exposures: Option<&mut Exposures>) -> Plan {
    let mut left: BTreeMap<ProductId, i64> = stock.iter().map(|(p, f)| (*p, f.available)).collect();
    let mut changes: BTreeMap<ProductId, (i64, i64)> = BTreeMap::new();
    let mut keys: HashMap<(&str, &str), usize> = HashMap::new();
    let decisions = requests
        .iter()
        .enumerate()
        .map(|(index, request)| {
            let order = &request.order;
            if let Some(key) = order.idempotency_key() {
                if let Some(first) = keys.get(&(order.user_id(), key)) {
                    return Decision::SameKeyAs(*first);
                }
                keys.insert((order.user_id(), key), index);
            }
            for line in order.lines() {
                let Some(&available) = left.get(&line.product) else {
                    return Decision::Missing(line.product);
                };
                if order.policy() == ShortagePolicy::Reject && line.quantity > available {
                    return Decision::Reject {
                        product: line.product,
                        requested: line.quantity,
                        available,
                    };
                }
            }
            // Each product appears once per order, so every line can be planned on `left`
            // before any is taken from it.
            let lines: Vec<Take> = order
                .lines()
                .iter()
                .map(|line| {
                    let available = left.get(&line.product).copied().unwrap_or_default();
                    let allocated = line.quantity.min(available);
                    Take {
                        product: line.product,
                        quantity: line.quantity,
                        allocated,
                        available_after: available - allocated,
                    }
                })
                .collect();
            if let Some(exposures) = exposures.as_deref_mut() {
                let shortfall = lines.iter().map(|t| t.quantity - t.allocated).sum();
                if let Err(over) = exposures.admit(order.user_id(), shortfall) {
                    return Decision::OverLimit(over);
                }
            }
            for take in &lines {
                left.insert(take.product, take.available_after);
                let change = changes.entry(take.product).or_default();
                change.0 += take.allocated;
                change.1 += take.quantity - take.allocated;
            }
            Decision::Place {
                id: OrderId::new(),
                lines,
            }
        })
        .collect();
    Plan { decisions, changes }
}

fn figures_of(rows: Vec<(i64, i64, i64, i64)>, generation: Option<u64>) -> Stock {
    rows.into_iter()
        .map(|(id, available, backordered, price)| {
            (
                ProductId(id),
                Figures {
                    available,
                    backordered,
                    price,
                    generation,
                },
            )
        })
        .collect()
}

/// The rows of `products` (those that exist): a plain read on `executor`, or with
/// `lock` the rows locked in ascending id on the caller's transaction.
async fn stock_rows<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    products: &[ProductId],
    generation: Option<u64>,
    lock: bool,
) -> Result<Stock> {
    let ids: Vec<i64> = products.iter().map(|p| p.0).collect();
    let sql = if lock {
        "SELECT id, available, backordered, price FROM commerce.products \
         WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    } else {
        "SELECT id, available, backordered, price FROM commerce.products WHERE id = ANY($1)"
    };
    let rows = sqlx::query_as(sql).bind(&ids).fetch_all(executor).await?;
    Ok(figures_of(rows, generation))
}

/// Every row of the placed orders but the stock: orders, first history rows, lines, backorder
/// queue entries and ledger rows, in one statement. Returns the orders' creation time.
async fn insert_rows(
    conn: &mut PgConnection,
    requests: &[Request],
    plan: &Plan,
    stock: &Stock,
) -> std::result::Result<DateTime<Utc>, sqlx::Error> {
    let mut ids: Vec<Uuid> = Vec::new();
    let (mut users, mut keys, mut statuses, mut policies) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut line_orders, mut line_products, mut quantities, mut allocated, mut prices, mut afters) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for (request, decision) in requests.iter().zip(&plan.decisions) {
        let Decision::Place { id, lines } = decision else {
            continue;
        };
        let order = &request.order;
        ids.push(id.0);
        users.push(order.user_id());
        keys.push(order.idempotency_key());
        let complete = lines.iter().all(|take| take.allocated == take.quantity);
        statuses.push(if complete {
            OrderStatus::Created.as_str()
        } else {
            OrderStatus::Backordered.as_str()
        });
        policies.push(order.policy().as_str());
        for take in lines {
            line_orders.push(id.0);
            line_products.push(take.product.0);
            quantities.push(take.quantity);
            allocated.push(take.allocated);
            prices.push(stock.get(&take.product).map_or(0, |f| f.price));
            afters.push(take.available_after);
        }
    }
    sqlx::query_scalar(
        "WITH o AS ( \
           INSERT INTO commerce.orders (id, user_id, idempotency_key, status, shortage_policy) \
           SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[]) \
           RETURNING created_at \
         ), h AS ( \
           INSERT INTO commerce.order_status_history (order_id, from_status, to_status, reason) \
           SELECT id, NULL, s, 'placed' FROM UNNEST($1::uuid[], $4::text[]) AS t(id, s) \
         ), l AS ( \
           INSERT INTO commerce.order_lines (order_id, product_id, quantity, allocated, unit_price) \
           SELECT * FROM UNNEST($6::uuid[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[]) \
         ), b AS ( \
           INSERT INTO commerce.backorders (order_id, product_id, outstanding) \
           SELECT o, p, q - a \
           FROM UNNEST($6::uuid[], $7::bigint[], $8::bigint[], $9::bigint[]) \
             WITH ORDINALITY AS t(o, p, q, a, ord) \
           WHERE q > a ORDER BY ord \
         ), g AS ( \
           INSERT INTO commerce.stock_ledger (product_id, delta, kind, reference, available_after) \
           SELECT p, -a, 'order', o::text, after \
           FROM UNNEST($6::uuid[], $7::bigint[], $9::bigint[], $11::bigint[]) \
             WITH ORDINALITY AS t(o, p, a, after, ord) \
           WHERE a > 0 ORDER BY ord \
         ) \
         SELECT created_at FROM o LIMIT 1",
    )
    .bind(&ids)
    .bind(&users)
    .bind(&keys)
    .bind(&statuses)
    .bind(&policies)
    .bind(&line_orders)
    .bind(&line_products)
    .bind(&quantities)
    .bind(&allocated)
    .bind(&prices)
    .bind(&afters)
    .fetch_one(conn)
    .await
}

/// The `order.placed` events and each placed request's lines (indexed like `requests`).
fn events_and_lines(
    requests: &[Request],
    plan: &Plan,
    stock: &Stock,
) -> (Vec<CoreEvent>, Vec<Option<Vec<OrderLine>>>) {
    let mut events = Vec::new();
    let lines = requests
        .iter()
        .zip(&plan.decisions)
        .map(|(request, decision)| {
            let Decision::Place { id, lines } = decision else {
                return None;
            };
            let order = &request.order;
            let lines: Vec<OrderLine> = lines
                .iter()
                .map(|take| OrderLine {
                    product: take.product,
                    quantity: take.quantity,
                    allocated: take.allocated,
                    unit_price: stock.get(&take.product).map_or(0, |f| f.price),
                })
                .collect();
            events.push(CoreEvent::OrderPlaced {
                order: *id,
                user_id: order.user_id().to_owned(),
                status: status_of(&lines),
                policy: order.policy(),
                lines: lines.clone(),
            });
            Some(lines)
        })
        .collect();
    (events, lines)
}

/// The batch's one stock update (every product it changes). Optimistic: a compare-and-set
/// on the figures planned with (`None` when any changed). Returns the rows after it.
async fn take_stock(
    conn: &mut PgConnection,
    plan: &Plan,
    stock: &Stock,
    optimistic: bool,
) -> Result<Option<Stock>> {
    let (mut ids, mut taken, mut queued) = (Vec::new(), Vec::new(), Vec::new());
    let (mut available, mut backordered, mut price) = (Vec::new(), Vec::new(), Vec::new());
    for (product, (t, q)) in &plan.changes {
        if *t == 0 && *q == 0 {
            continue;
        }
        let Some(figures) = stock.get(product) else {
            continue;
        };
        ids.push(product.0);
        taken.push(*t);
        queued.push(*q);
        available.push(figures.available);
        backordered.push(figures.backordered);
        price.push(figures.price);
    }
    let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
        "UPDATE commerce.products p SET available = p.available - t.taken, \
         backordered = p.backordered + t.queued, updated_at = now() \
         FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], \
                     $6::bigint[]) AS t(id, taken, queued, available, backordered, price) \
         WHERE p.id = t.id AND (NOT $7 OR (p.available = t.available \
               AND p.backordered = t.backordered AND p.price = t.price)) \
         RETURNING p.id, p.available, p.backordered, p.price",
    )
    .bind(&ids)
    .bind(&taken)
    .bind(&queued)
    .bind(&available)
    .bind(&backordered)
    .bind(&price)
    .bind(optimistic)
    .fetch_all(conn)
    .await?;
    if rows.len() != ids.len() {
        return Ok(None);
    }
    Ok(Some(figures_of(rows, None)))
}

/// Answers a batch with nothing to write.
async fn answer_rejections(writer: &OrderWriter, requests: &[Request], plan: &Plan) -> Answers {
    let mut answers = Vec::with_capacity(requests.len());
    for (request, decision) in requests.iter().zip(&plan.decisions) {
        answers.push(match decision {
            // A repeat of a request turned away (or of an order placed meanwhile elsewhere).
            Decision::SameKeyAs(first) => match writer.replay(&request.order).await {
                Ok(Some(order)) => Ok(order),
                Ok(None) => refusal(&plan.decisions[*first]).unwrap_or_else(|| {
                    Err(Error::Conflict(
                        "idempotency key of an unplaced request".into(),
                    ))
                }),
                Err(e) => Err(e),
            },
            other => refusal(other).unwrap_or_else(|| {
                Err(Error::Conflict("a batch decision without an answer".into()))
            }),
        });
    }
    answers
}

/// After a batch hit an idempotency key held elsewhere: answers every keyed request whose
/// first order now exists, and returns the others to write again.
async fn answer_repeats(writer: &OrderWriter, requests: Vec<Request>) -> Vec<Request> {
    let mut rest = Vec::with_capacity(requests.len());
    for request in requests {
        if request.order.idempotency_key().is_none() {
            rest.push(request);
            continue;
        }
        match writer.replay(&request.order).await {
            Ok(Some(first)) => {
                let _ = request.reply.send(Ok(first));
            }
            Ok(None) => rest.push(request),
            Err(e) => {
                let _ = request.reply.send(Err(e));
            }
        }
    }
    rest
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::{NewOrder, OrderLimits, ValidatedOrder};

    fn request(user: &str, quantity: i64, policy: ShortagePolicy, key: Option<&str>) -> Request {
        let mut order = NewOrder::new(user).line(1, quantity).policy(policy);
        if let Some(key) = key {
            order = order.idempotency_key(key);
        }
        let (reply, _) = tokio::sync::oneshot::channel();
        Request {
            order: ValidatedOrder::new(order, &OrderLimits::default()).unwrap(),
            reply,
        }
    }

    fn stock(available: &[(i64, i64)]) -> Stock {
        available
            .iter()
            .map(|&(product, available)| {
                (
                    ProductId(product),
                    Figures {
                        available,
                        backordered: 0,
                        price: 100,
                        generation: None,
                    },
                )
            })
            .collect()
    }

    fn describe(decision: &Decision) -> String {
        match decision {
            Decision::Place { lines, .. } => lines
                .iter()
                .map(|t| format!("place {} -> {}", t.allocated, t.available_after))
                .collect::<Vec<_>>()
                .join(", "),
            Decision::Reject { available, .. } => format!("reject at {available}"),
            Decision::Missing(p) => format!("missing {p}"),
            Decision::OverLimit(over) => format!("over limit {over:?}"),
            Decision::SameKeyAs(i) => format!("same as {i}"),
        }
    }

    #[test]
    fn an_order_of_several_lines_is_placed_whole_or_turned_away_at_its_short_line() {
        let order = |user: &str, a: i64, b: i64, policy| {
            let (reply, _) = tokio::sync::oneshot::channel();
            Request {
                order: ValidatedOrder::new(
                    NewOrder::new(user).line(1, a).line(2, b).policy(policy),
                    &OrderLimits::default(),
                )
                .unwrap(),
                reply,
            }
        };
        let requests = [
            order("a", 2, 3, ShortagePolicy::Reject),
            order("b", 1, 3, ShortagePolicy::Reject), // product 2 has 2 left
            order("c", 1, 3, ShortagePolicy::Backorder),
        ];
        let plan = allocate(&requests, &stock(&[(1, 5), (2, 5)]), None);
        let summary: Vec<String> = plan.decisions.iter().map(describe).collect();
        assert_eq!(
            summary,
            [
                "place 2 -> 3, place 3 -> 2",
                "reject at 2",
                "place 1 -> 2, place 2 -> 0"
            ]
        );
        assert_eq!(plan.changes[&ProductId(1)], (3, 0));
        assert_eq!(plan.changes[&ProductId(2)], (5, 1));
    }

    #[test]
    fn first_come_first_served_and_exactly_what_does_not_fit_is_turned_away() {
        use ShortagePolicy::{Backorder, Reject};
        let requests = [
            request("a", 3, Reject, None),
            request("b", 4, Reject, None), // 2 left: does not fit
            request("c", 2, Reject, None), // fits
            request("d", 1, Backorder, None),
            request("e", 1, Reject, None),
        ];
        let plan = allocate(&requests, &stock(&[(1, 5)]), None);
        let summary: Vec<String> = plan.decisions.iter().map(describe).collect();
        assert_eq!(
            summary,
            [
                "place 3 -> 2",
                "reject at 2",
                "place 2 -> 0",
                "place 0 -> 0",
                "reject at 0"
            ]
        );
        assert_eq!(plan.changes[&ProductId(1)], (5, 1));
        assert!(!plan.writes_nothing());
    }

    #[test]
    fn a_repeated_key_in_a_batch_points_at_its_first_request() {
        use ShortagePolicy::Reject;
        let requests = [
            request("a", 1, Reject, Some("k")),
            request("b", 1, Reject, Some("k")),
            request("a", 1, Reject, Some("k")),
        ];
        let plan = allocate(&requests, &stock(&[(1, 10)]), None);
        assert!(matches!(plan.decisions[2], Decision::SameKeyAs(0)));
        assert_eq!(plan.changes[&ProductId(1)], (2, 0));
    }

    #[test]
    fn a_request_over_its_users_limit_takes_nothing_and_the_next_gets_the_stock() {
        use ShortagePolicy::{Backorder, Reject};
        // At most 1 open order per user; "a" has one already.
        let mut open = Exposures::counted(None, Some(1), &[("a", 1, 0)]);
        let requests = [
            request("a", 2, Reject, None),
            request("b", 2, Reject, None),
            request("b", 1, Backorder, None), // b's second order
            request("c", 1, Backorder, None),
        ];
        let plan = allocate(&requests, &stock(&[(1, 2)]), Some(&mut open));
        let summary: Vec<String> = plan.decisions.iter().map(describe).collect();
        assert!(summary[0].starts_with("over limit"), "{summary:?}");
        assert_eq!(
            summary[1..],
            ["place 2 -> 0", summary[2].as_str(), "place 0 -> 0"]
        );
        assert!(summary[2].contains("OpenOrders"), "{summary:?}");
        assert_eq!(plan.changes[&ProductId(1)], (2, 1));

        // At most 3 units waiting per user: the shortfall counts, in arrival order.
        let mut waiting = Exposures::counted(Some(3), None, &[]);
        let requests = [
            request("a", 4, Backorder, None), // takes 2, waits for 2
            request("a", 2, Backorder, None), // would wait for 4
            request("a", 1, Backorder, None), // waits for 3: at the limit
        ];
        let plan = allocate(&requests, &stock(&[(1, 2)]), Some(&mut waiting));
        let summary: Vec<String> = plan.decisions.iter().map(describe).collect();
        assert_eq!(summary[0], "place 2 -> 0");
        assert!(
            summary[1].contains("BackorderedUnits")
                && summary[1].contains("current: 2, requested: 2"),
            "{summary:?}"
        );
        assert_eq!(summary[2], "place 0 -> 0");
        assert_eq!(plan.changes[&ProductId(1)], (2, 3));
    }

    #[test]
    fn a_batch_of_rejections_writes_nothing() {
        let requests = [request("a", 2, ShortagePolicy::Reject, None)];
        assert!(allocate(&requests, &stock(&[(1, 1)]), None).writes_nothing());
        let missing = allocate(&requests, &stock(&[]), None);
        assert!(matches!(
            missing.decisions[0],
            Decision::Missing(ProductId(1))
        ));
    }
}
