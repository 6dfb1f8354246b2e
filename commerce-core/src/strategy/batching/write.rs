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

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::watch::StockWatch;
use super::{BatchSettings, Request};
use crate::effects::{commit, Hooks};
use crate::error::{violated_constraint, Error, Result};
use crate::event::CoreEvent;
use crate::ids::{OrderId, ProductId};
use crate::order::{Order, OrderLine, OrderStatus, OrderWriter, PlacedOrder, ShortagePolicy};

/// A product row as a batch saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Figures {
    pub(crate) available: i64,
    pub(crate) backordered: i64,
    pub(crate) price: i64,
    /// The stock watch's generation noted before these were read (sold-out fast path).
    pub(crate) generation: Option<u64>,
}

/// What a batch decided for one request.
enum Decision {
    /// Write this order.
    Place {
        id: OrderId,
        allocated: i64,
        /// The product's `available` after this order's units.
        available_after: i64,
    },
    /// Not enough stock (reject policy).
    Reject { available: i64 },
    /// Repeats the idempotency key of an earlier request of this batch: answered with that
    /// order after the commit.
    SameKeyAs(usize),
}

struct Plan {
    decisions: Vec<Decision>,
    taken: i64,
    queued: i64,
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
    /// The product changed between the plan and the write.
    Stale,
    /// Another transaction holds or committed one of the batch's idempotency keys.
    KeyTaken,
}

/// Writes `requests` (single-line orders of `product`) and answers every caller. Returns the
/// figures to plan the next batch with (`None`: read them again).
pub(super) async fn run_batch(
    writer: &OrderWriter,
    product: ProductId,
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
        let outcome = attempt_batch(writer, product, &requests, known, generation).await;
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

type Answers = Vec<Result<PlacedOrder>>;

/// One try: `Ok(Ok(..))` committed (or nothing to write) with every caller's answer.
async fn attempt_batch(
    writer: &OrderWriter,
    product: ProductId,
    requests: &[Request],
    known: Option<Figures>,
    generation: Option<u64>,
) -> Result<Result<(Answers, Option<Figures>), Retry>> {
    let pool = writer.pool();
    let figures = match known {
        Some(figures) => figures,
        // Nothing written yet: plan on a plain read; if it turns out there is something to
        // write, the write takes the lock and plans again.
        None => match read_figures(pool, product, generation).await? {
            Some(figures) => figures,
            None => return Ok(Ok((not_found(requests, product), None))),
        },
    };
    let plan = allocate(requests, figures);
    if plan.writes_nothing() {
        // Every request is turned away (or repeats one that is). The figures must be current
        // for that: confirm them unless they were just read.
        if known.is_some() {
            return match read_figures(pool, product, generation).await? {
                Some(fresh) if fresh.available == figures.available => Ok(Ok((
                    answer_rejections(writer, requests, &plan).await,
                    Some(fresh),
                ))),
                Some(fresh) => {
                    Box::pin(attempt_batch(
                        writer,
                        product,
                        requests,
                        Some(fresh),
                        generation,
                    ))
                    .await
                }
                None => Ok(Ok((not_found(requests, product), None))),
            };
        }
        return Ok(Ok((
            answer_rejections(writer, requests, &plan).await,
            Some(figures),
        )));
    }

    let mut tx = pool.begin().await?;
    let (figures, plan) = if known.is_some() {
        (figures, plan)
    } else {
        // Pessimistic: lock, then plan on what the lock shows.
        let Some(figures) = lock_figures(&mut tx, product, generation).await? else {
            return Ok(Ok((not_found(requests, product), None)));
        };
        let plan = allocate(requests, figures);
        if plan.writes_nothing() {
            drop(tx);
            return Ok(Ok((
                answer_rejections(writer, requests, &plan).await,
                Some(figures),
            )));
        }
        (figures, plan)
    };
    let optimistic = known.is_some();
    let created_at = match insert_rows(&mut tx, product, requests, &plan, figures).await {
        Ok(created_at) => created_at,
        Err(e) if violated_constraint(&e) == Some("orders_user_idempotency_key") => {
            return Ok(Err(Retry::KeyTaken));
        }
        Err(e) => return Err(e.into()),
    };
    let (events, lines) = events_and_lines(product, requests, &plan, figures);
    run_hooks(&mut tx, writer.hooks(), &events).await?;
    let after = take_stock(&mut tx, product, &plan, figures, optimistic).await?;
    let Some(after) = after else {
        return Ok(Err(Retry::Stale));
    };
    commit(tx).await?;

    let after = Figures {
        generation,
        ..after
    };
    let mut answers: Answers = Vec::with_capacity(requests.len());
    let mut placed: HashMap<usize, PlacedOrder> = HashMap::new();
    for (index, (request, decision)) in requests.iter().zip(&plan.decisions).enumerate() {
        let answer = match decision {
            Decision::Place { id, .. } => {
                let order = &request.order;
                let line = lines[index].unwrap_or_else(|| unreachable_line(product));
                let status = status_of(&line);
                let first = PlacedOrder {
                    order: Order {
                        id: *id,
                        user_id: order.user_id().to_owned(),
                        status,
                        policy: order.policy(),
                        idempotency_key: order.idempotency_key().map(str::to_owned),
                        lines: vec![line],
                        created_at,
                        updated_at: created_at,
                    },
                    replayed: false,
                };
                placed.insert(index, first.clone());
                Ok(first)
            }
            Decision::Reject { available } => Err(Error::InsufficientStock {
                product,
                requested: request.order.lines()[0].quantity,
                available: *available,
            }),
            Decision::SameKeyAs(first) => match placed.get(first) {
                Some(order) => same_request(order, request),
                // The first was turned away: so is its repeat.
                None => match &plan.decisions[*first] {
                    Decision::Reject { available } => Err(Error::InsufficientStock {
                        product,
                        requested: request.order.lines()[0].quantity,
                        available: *available,
                    }),
                    _ => Err(Error::Conflict(
                        "idempotency key of an unplaced request".into(),
                    )),
                },
            },
        };
        answers.push(answer);
    }
    Ok(Ok((answers, Some(after))))
}

fn unreachable_line(product: ProductId) -> OrderLine {
    // `events_and_lines` builds a line for every placed decision; kept total all the same.
    OrderLine {
        product,
        quantity: 0,
        allocated: 0,
        unit_price: 0,
    }
}

fn status_of(line: &OrderLine) -> OrderStatus {
    if line.allocated == line.quantity {
        OrderStatus::Created
    } else {
        OrderStatus::Backordered
    }
}

/// The answer to a request repeating the key of `first` (placed in this batch).
fn same_request(first: &PlacedOrder, request: &Request) -> Result<PlacedOrder> {
    let order = &request.order;
    let line = &order.lines()[0];
    let same = first.order.policy == order.policy()
        && first.order.lines.len() == 1
        && first.order.lines[0].product == line.product
        && first.order.lines[0].quantity == line.quantity;
    if same {
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

/// First come first served: each request in arrival order takes what it asks for if it fits
/// (reject policy) or what is left (backorder policy, the rest queued).
fn allocate(requests: &[Request], figures: Figures) -> Plan {
    let mut left = figures.available;
    let (mut taken, mut queued) = (0, 0);
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
            let quantity = order.lines()[0].quantity;
            let allocated = match order.policy() {
                ShortagePolicy::Reject if quantity > left => {
                    return Decision::Reject { available: left };
                }
                ShortagePolicy::Reject => quantity,
                ShortagePolicy::Backorder => quantity.min(left),
            };
            left -= allocated;
            taken += allocated;
            queued += quantity - allocated;
            Decision::Place {
                id: OrderId::new(),
                allocated,
                available_after: left,
            }
        })
        .collect();
    Plan {
        decisions,
        taken,
        queued,
    }
}

async fn read_figures(
    pool: &PgPool,
    product: ProductId,
    generation: Option<u64>,
) -> Result<Option<Figures>> {
    let row: Option<(i64, i64, i64)> =
        sqlx::query_as("SELECT available, backordered, price FROM commerce.products WHERE id = $1")
            .bind(product.0)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(available, backordered, price)| Figures {
        available,
        backordered,
        price,
        generation,
    }))
}

async fn lock_figures(
    conn: &mut PgConnection,
    product: ProductId,
    generation: Option<u64>,
) -> Result<Option<Figures>> {
    let row: Option<(i64, i64, i64)> = sqlx::query_as(
        "SELECT available, backordered, price FROM commerce.products WHERE id = $1 FOR UPDATE",
    )
    .bind(product.0)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(available, backordered, price)| Figures {
        available,
        backordered,
        price,
        generation,
    }))
}

/// Every row of the placed orders but the stock: orders, lines, first history rows, backorder
/// queue entries and ledger rows, in one statement. Returns the orders' creation time.
async fn insert_rows(
    conn: &mut PgConnection,
    product: ProductId,
    requests: &[Request],
    plan: &Plan,
    figures: Figures,
) -> std::result::Result<DateTime<Utc>, sqlx::Error> {
    let mut ids: Vec<Uuid> = Vec::new();
    let (mut users, mut keys, mut statuses, mut policies) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut quantities, mut allocated, mut afters) = (Vec::new(), Vec::new(), Vec::new());
    for (request, decision) in requests.iter().zip(&plan.decisions) {
        let Decision::Place {
            id,
            allocated: units,
            available_after,
        } = decision
        else {
            continue;
        };
        let order = &request.order;
        let quantity = order.lines()[0].quantity;
        ids.push(id.0);
        users.push(order.user_id());
        keys.push(order.idempotency_key());
        statuses.push(if *units == quantity {
            OrderStatus::Created.as_str()
        } else {
            OrderStatus::Backordered.as_str()
        });
        policies.push(order.policy().as_str());
        quantities.push(quantity);
        allocated.push(*units);
        afters.push(*available_after);
    }
    sqlx::query_scalar(
        "WITH o AS ( \
           INSERT INTO commerce.orders (id, user_id, idempotency_key, status, shortage_policy) \
           SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[]) \
           RETURNING created_at \
         ), l AS ( \
           INSERT INTO commerce.order_lines (order_id, product_id, quantity, allocated, unit_price) \
           SELECT id, $6, q, a, $7 FROM UNNEST($1::uuid[], $8::bigint[], $9::bigint[]) AS t(id, q, a) \
         ), h AS ( \
           INSERT INTO commerce.order_status_history (order_id, from_status, to_status, reason) \
           SELECT id, NULL, s, 'placed' FROM UNNEST($1::uuid[], $4::text[]) AS t(id, s) \
         ), b AS ( \
           INSERT INTO commerce.backorders (order_id, product_id, outstanding) \
           SELECT id, $6, q - a \
           FROM UNNEST($1::uuid[], $8::bigint[], $9::bigint[]) WITH ORDINALITY AS t(id, q, a, ord) \
           WHERE q > a ORDER BY ord \
         ), g AS ( \
           INSERT INTO commerce.stock_ledger (product_id, delta, kind, reference, available_after) \
           SELECT $6, -a, 'order', id::text, after \
           FROM UNNEST($1::uuid[], $9::bigint[], $10::bigint[]) WITH ORDINALITY AS t(id, a, after, ord) \
           WHERE a > 0 ORDER BY ord \
         ) \
         SELECT created_at FROM o LIMIT 1",
    )
    .bind(&ids)
    .bind(&users)
    .bind(&keys)
    .bind(&statuses)
    .bind(&policies)
    .bind(product.0)
    .bind(figures.price)
    .bind(&quantities)
    .bind(&allocated)
    .bind(&afters)
    .fetch_one(conn)
    .await
}

/// The `order.placed` events and each placed request's line (indexed like `requests`).
fn events_and_lines(
    product: ProductId,
    requests: &[Request],
    plan: &Plan,
    figures: Figures,
) -> (Vec<CoreEvent>, Vec<Option<OrderLine>>) {
    let mut events = Vec::new();
    let lines = requests
        .iter()
        .zip(&plan.decisions)
        .map(|(request, decision)| {
            let Decision::Place { id, allocated, .. } = decision else {
                return None;
            };
            let order = &request.order;
            let line = OrderLine {
                product,
                quantity: order.lines()[0].quantity,
                allocated: *allocated,
                unit_price: figures.price,
            };
            events.push(CoreEvent::OrderPlaced {
                order: *id,
                user_id: order.user_id().to_owned(),
                status: status_of(&line),
                policy: order.policy(),
                lines: vec![line],
            });
            Some(line)
        })
        .collect();
    (events, lines)
}

async fn run_hooks(conn: &mut PgConnection, hooks: &Hooks, events: &[CoreEvent]) -> Result<()> {
    hooks.run(conn, events).await
}

/// The batch's one stock update. Optimistic: a compare-and-set on the figures planned with
/// (`None` when they changed). Returns the row after the update.
async fn take_stock(
    conn: &mut PgConnection,
    product: ProductId,
    plan: &Plan,
    figures: Figures,
    optimistic: bool,
) -> Result<Option<Figures>> {
    let row: Option<(i64, i64, i64)> = sqlx::query_as(
        "UPDATE commerce.products SET available = available - $2, \
         backordered = backordered + $3, updated_at = now() \
         WHERE id = $1 AND (NOT $7 OR (available = $4 AND backordered = $5 AND price = $6)) \
         RETURNING available, backordered, price",
    )
    .bind(product.0)
    .bind(plan.taken)
    .bind(plan.queued)
    .bind(figures.available)
    .bind(figures.backordered)
    .bind(figures.price)
    .bind(optimistic)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(available, backordered, price)| Figures {
        available,
        backordered,
        price,
        generation: None,
    }))
}

/// Answers a batch with nothing to write.
async fn answer_rejections(writer: &OrderWriter, requests: &[Request], plan: &Plan) -> Answers {
    let mut answers = Vec::with_capacity(requests.len());
    for (request, decision) in requests.iter().zip(&plan.decisions) {
        let quantity = request.order.lines()[0].quantity;
        let product = request.order.lines()[0].product;
        answers.push(match decision {
            Decision::Reject { available } => Err(Error::InsufficientStock {
                product,
                requested: quantity,
                available: *available,
            }),
            // A repeat of a rejected request (or of an order placed meanwhile elsewhere).
            _ => match writer.replay(&request.order).await {
                Ok(Some(first)) => Ok(first),
                Ok(None) => Err(Error::InsufficientStock {
                    product,
                    requested: quantity,
                    available: 0,
                }),
                Err(e) => Err(e),
            },
        });
    }
    answers
}

fn not_found(requests: &[Request], product: ProductId) -> Answers {
    requests
        .iter()
        .map(|_| Err(Error::ProductNotFound { product }))
        .collect()
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

    fn figures(available: i64) -> Figures {
        Figures {
            available,
            backordered: 0,
            price: 100,
            generation: None,
        }
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
        let plan = allocate(&requests, figures(5));
        let summary: Vec<String> = plan
            .decisions
            .iter()
            .map(|d| match d {
                Decision::Place {
                    allocated,
                    available_after,
                    ..
                } => format!("place {allocated} -> {available_after}"),
                Decision::Reject { available } => format!("reject at {available}"),
                Decision::SameKeyAs(i) => format!("same as {i}"),
            })
            .collect();
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
        assert_eq!((plan.taken, plan.queued), (5, 1));
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
        let plan = allocate(&requests, figures(10));
        assert!(matches!(plan.decisions[2], Decision::SameKeyAs(0)));
        assert_eq!(plan.taken, 2);
    }

    #[test]
    fn a_batch_of_rejections_writes_nothing() {
        let requests = [request("a", 2, ShortagePolicy::Reject, None)];
        assert!(allocate(&requests, figures(1)).writes_nothing());
    }
}
