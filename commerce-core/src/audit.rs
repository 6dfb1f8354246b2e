//! A consistency check of stock, ledger, orders and the backorder queue.
//!
//! Cheap enough to run after a load test or from an operator's console, and what the
//! crate's own tests assert after every random sequence of operations.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::error::Result;

/// What [`crate::Commerce::audit`] found. Empty `violations` means consistent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    /// Products checked.
    pub products: i64,
    /// Orders checked.
    pub orders: i64,
    /// One line per broken rule, naming the product or order.
    pub violations: Vec<String>,
}

impl AuditReport {
    /// Whether every rule holds.
    #[must_use]
    pub fn is_consistent(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Each query returns the rows that break one rule, as text.
const RULES: &[(&str, &str)] = &[
    (
        "available equals the sum of the product's ledger deltas",
        "SELECT format('product %s: available %s, ledger sum %s', p.id, p.available, COALESCE(l.total, 0)) \
         FROM commerce.products p \
         LEFT JOIN (SELECT product_id, SUM(delta) AS total FROM commerce.stock_ledger GROUP BY product_id) l \
           ON l.product_id = p.id \
         WHERE p.available <> COALESCE(l.total, 0)",
    ),
    (
        "backordered equals the outstanding units in the product's queue",
        "SELECT format('product %s: backordered %s, queue %s', p.id, p.backordered, COALESCE(b.total, 0)) \
         FROM commerce.products p \
         LEFT JOIN (SELECT product_id, SUM(outstanding) AS total FROM commerce.backorders GROUP BY product_id) b \
           ON b.product_id = p.id \
         WHERE p.backordered <> COALESCE(b.total, 0)",
    ),
    (
        "no stock sits idle while orders wait for it",
        "SELECT format('product %s: %s available with %s backordered', id, available, backordered) \
         FROM commerce.products WHERE available > 0 AND backordered > 0",
    ),
    (
        "every line's allocation matches its order and cancel ledger rows",
        "SELECT format('order %s product %s: allocated %s, ledger taken %s, status %s', \
                       o.id, ol.product_id, ol.allocated, COALESCE(-l.taken, 0), o.status) \
         FROM commerce.order_lines ol JOIN commerce.orders o ON o.id = ol.order_id \
         LEFT JOIN (SELECT reference, product_id, SUM(delta) AS taken FROM commerce.stock_ledger \
                    WHERE kind IN ('order', 'cancel') GROUP BY reference, product_id) l \
           ON l.reference = o.id::text AND l.product_id = ol.product_id \
         WHERE COALESCE(-l.taken, 0) <> CASE WHEN o.status = 'CANCELLED' THEN 0 ELSE ol.allocated END",
    ),
    (
        "a line's allocation plus its backorder is its quantity",
        "SELECT format('order %s product %s: quantity %s, allocated %s, outstanding %s', \
                       o.id, ol.product_id, ol.quantity, ol.allocated, COALESCE(b.outstanding, 0)) \
         FROM commerce.order_lines ol JOIN commerce.orders o ON o.id = ol.order_id \
         LEFT JOIN commerce.backorders b ON b.order_id = ol.order_id AND b.product_id = ol.product_id \
         WHERE o.status <> 'CANCELLED' AND ol.allocated + COALESCE(b.outstanding, 0) <> ol.quantity",
    ),
    (
        "an order is BACKORDERED exactly while it has queued lines",
        "SELECT format('order %s: status %s, queued lines %s', o.id, o.status, \
                       (SELECT count(*) FROM commerce.backorders b WHERE b.order_id = o.id)) \
         FROM commerce.orders o \
         WHERE (o.status = 'BACKORDERED') <> EXISTS (SELECT 1 FROM commerce.backorders b WHERE b.order_id = o.id)",
    ),
    (
        "every order's history ends at its status",
        "SELECT format('order %s: status %s, last history row %s', o.id, o.status, h.to_status) \
         FROM commerce.orders o \
         LEFT JOIN LATERAL (SELECT to_status FROM commerce.order_status_history \
                            WHERE order_id = o.id ORDER BY id DESC LIMIT 1) h ON true \
         WHERE h.to_status IS DISTINCT FROM o.status",
    ),
];

pub(crate) async fn audit(pool: &PgPool) -> Result<AuditReport> {
    // One snapshot for all rules, so concurrent writers cannot make a consistent state look
    // broken between two queries.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let (products, orders): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM commerce.products), (SELECT count(*) FROM commerce.orders)",
    )
    .fetch_one(&mut *tx)
    .await?;
    let mut violations = Vec::new();
    for (rule, query) in RULES {
        let broken: Vec<String> = sqlx::query_scalar(query).fetch_all(&mut *tx).await?;
        violations.extend(broken.into_iter().map(|row| format!("{rule}: {row}")));
    }
    tx.commit().await?;
    Ok(AuditReport {
        products,
        orders,
        violations,
    })
}
