//! The bulk SQL of a batch: its product rows, every row of its orders in one statement, its
//! one stock update, and which of its idempotency keys are taken already.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::plan::{Decision, Figures, Plan, Stock};
use super::queue::Request;
use crate::error::Result;
use crate::ids::{OrderId, ProductId};
use crate::inventory::Allocation;

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
pub(super) async fn stock_rows<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    products: &[ProductId],
    generation: Option<u64>,
    lock: bool,
) -> Result<Stock> {
    let ids: Vec<i64> = products.iter().map(|p| p.0).collect();
    let sql = if lock {
        "SELECT id, available, backordered, price FROM commerce.products \
         WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE"
    } else {
        "SELECT id, available, backordered, price FROM commerce.products WHERE id = ANY($1)"
    };
    let rows = sqlx::query_as(sql).bind(&ids).fetch_all(executor).await?;
    Ok(figures_of(rows, generation))
}

/// Every row of the placed orders but the stock: orders, first history rows (at the orders'
/// creation time, `now()` as `created_at`'s default), lines, backorder
/// queue entries and ledger rows, in one statement. Returns the orders' creation time.
pub(super) async fn insert_rows(
    conn: &mut PgConnection,
    requests: &[Request],
    plan: &Plan,
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
        statuses.push(Allocation::placement_status(lines).as_str());
        policies.push(order.policy().as_str());
        for take in lines {
            line_orders.push(id.0);
            line_products.push(take.product.0);
            quantities.push(take.quantity);
            allocated.push(take.allocated);
            prices.push(take.unit_price);
            afters.push(take.available_after);
        }
    }
    sqlx::query_scalar(
        "WITH o AS ( \
           INSERT INTO commerce.orders (id, user_id, idempotency_key, status, shortage_policy) \
           SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[]) \
           RETURNING created_at \
         ), h AS ( \
           INSERT INTO commerce.order_status_history (order_id, from_status, to_status, reason, at) \
           SELECT id, NULL, s, 'placed', now() FROM UNNEST($1::uuid[], $4::text[]) AS t(id, s) \
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

/// The batch's stock update of every product in `$1`, with the compare-and-set on its planned
/// figures when `$7` (optimistic); its `WHERE` clause may take more conditions.
macro_rules! take_update {
    () => {
        "UPDATE commerce.products p SET available = p.available - t.taken, \
         backordered = p.backordered + t.queued, updated_at = now() \
         FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], \
                     $6::bigint[]) AS t(id, taken, queued, available, backordered, price) \
         WHERE p.id = t.id AND (NOT $7 OR (p.available = t.available \
               AND p.backordered = t.backordered AND p.price = t.price))"
    };
}

/// What `take_update!` returns: the rows after it.
macro_rules! take_returning {
    () => {
        " RETURNING p.id, p.available, p.backordered, p.price"
    };
}

/// The batch's one stock update (every product it changes). Optimistic: a compare-and-set
/// on the figures planned with (`None` when any changed). Returns the rows after it.
pub(super) async fn take_stock(
    conn: &mut PgConnection,
    plan: &Plan,
    stock: &Stock,
    optimistic: bool,
) -> Result<Option<Stock>> {
    let (mut ids, mut taken, mut queued) = (Vec::new(), Vec::new(), Vec::new());
    let (mut available, mut backordered, mut price) = (Vec::new(), Vec::new(), Vec::new());
    for (product, figures) in stock {
        let (t, q) = plan.changes.get(product).copied().unwrap_or_default();
        // Optimistic, every product planned on is checked, those the batch only turned
        // orders away from too (their refusals rest on the same figures).
        if t == 0 && q == 0 && !optimistic {
            continue;
        }
        let (t, q) = (&t, &q);
        ids.push(product.0);
        taken.push(*t);
        queued.push(*q);
        available.push(figures.available);
        backordered.push(figures.backordered);
        price.push(figures.price);
    }
    // Several rows are locked first in ascending id (the crate's lock order) by an init plan,
    // so that the update cannot lock them in another order; the update then checks each on
    // its newest version. One row needs no such step.
    let sql = if ids.len() > 1 {
        concat!(
            "WITH locked AS MATERIALIZED ( \
               SELECT id FROM commerce.products WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE \
             ) ",
            take_update!(),
            " AND p.id = ANY(ARRAY(SELECT id FROM locked))",
            take_returning!()
        )
    } else {
        concat!(take_update!(), take_returning!())
    };
    let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(sql)
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

/// The orders already placed under the idempotency keys of `requests`, by request index
/// (one query for the whole batch; none when no request has a key).
pub(super) async fn taken_keys(
    conn: &mut PgConnection,
    requests: &[Request],
) -> Result<Vec<(usize, OrderId)>> {
    let (mut indexes, mut users, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    for (index, request) in requests.iter().enumerate() {
        if let Some(key) = request.order.idempotency_key() {
            indexes.push(i64::try_from(index).unwrap_or(i64::MAX));
            users.push(request.order.user_id());
            keys.push(key);
        }
    }
    if indexes.is_empty() {
        return Ok(Vec::new());
    }
    // Unprepared, planned for its keys each time: prepared, Postgres kept the generic plan
    // it made while the orders were few (reading them all is cheapest there) until something
    // analyzed the table, and every batch then read every order (3 ms a batch after 30,000
    // orders, most of the Postgres time of the benchmark's realistic row).
    let rows: Vec<(i64, Uuid)> = sqlx::query_as(
        "SELECT t.i, o.id FROM UNNEST($1::bigint[], $2::text[], $3::text[]) AS t(i, u, k) \
         JOIN commerce.orders o ON o.user_id = t.u AND o.idempotency_key = t.k",
    )
    .persistent(false)
    .bind(&indexes)
    .bind(&users)
    .bind(&keys)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(index, id)| Some((usize::try_from(index).ok()?, OrderId(id))))
        .collect())
}
