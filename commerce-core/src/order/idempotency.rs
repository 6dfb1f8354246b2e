//! Idempotent placement: a request repeated with the same idempotency key (per user) gets
//! the first order back instead of a second one.
//!
//! The (user, key) → order mapping is the order's own `idempotency_key` column, unique per
//! user among the keys kept (a partial unique index). Keys are kept until
//! [`forget_keys`] clears them after a retention; a repeat after that is a new request.

use std::time::Duration;

use sqlx::PgPool;

use crate::error::{Error, Result};
use crate::ids::OrderId;

use super::read::load_order;
use super::{Order, PlacedOrder, ValidatedOrder};

/// The unique key `(user_id, idempotency_key)` was taken by a concurrent request while this
/// one was writing: the transaction is void and the first order is the answer.
pub(crate) struct KeyTaken;

/// The first order placed with `order`'s idempotency key, if any.
///
/// # Errors
/// [`Error::DuplicateRequest`] when the key was used for a different request (other lines
/// or another shortage policy); database errors.
pub(crate) async fn replay(pool: &PgPool, order: &ValidatedOrder) -> Result<Option<PlacedOrder>> {
    let Some(key) = order.idempotency_key() else {
        return Ok(None);
    };
    let id: Option<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM commerce.orders WHERE user_id = $1 AND idempotency_key = $2",
    )
    .bind(order.user_id())
    .bind(key)
    .fetch_optional(pool)
    .await?;
    let Some(id) = id else {
        return Ok(None);
    };
    let mut conn = pool.acquire().await?;
    let existing = load_order(&mut conn, OrderId(id)).await?;
    if !is_same_request(&existing, order) {
        return Err(Error::DuplicateRequest {
            user: order.user_id().to_owned(),
            key: key.to_owned(),
            existing: existing.id,
        });
    }
    Ok(Some(PlacedOrder {
        order: existing,
        replayed: true,
    }))
}

/// Whether `order` asks for what `existing` (placed with the same idempotency key) was placed
/// for: same policy, same products and quantities.
pub(crate) fn is_same_request(existing: &Order, order: &ValidatedOrder) -> bool {
    existing.policy == order.policy()
        && existing.lines.len() == order.lines().len()
        && existing
            .lines
            .iter()
            .zip(order.lines())
            .all(|(a, b)| a.product == b.product && a.quantity == b.quantity)
}

/// Most keys one call of [`forget_keys`] clears: one short transaction, whatever the backlog.
const MAX_FORGET: u32 = 10_000;

/// Clears the idempotency key of at most `limit` (clamped to 1..=10,000) orders placed more
/// than `older_than` ago, oldest first; returns how many it cleared.
///
/// Orders locked by another transaction at that moment (being cancelled, say) are skipped,
/// not waited for: the next call takes them. So no lock is waited for, and the crate's lock
/// order cannot be crossed.
pub(crate) async fn forget_keys(pool: &PgPool, older_than: Duration, limit: u32) -> Result<u64> {
    let micros = i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX);
    // Unprepared (decision 0019), and the orders updated by primary key (`=
    // ANY(ARRAY(...))`) rather than joined to the chosen ids: prepared, the plan made while
    // the table was young (read it whole) stayed until something analyzed it; joined, each
    // call's own plan still read the table whole into a hash join up to some tens of
    // thousands of orders (tests/young_tables.rs).
    let cleared = sqlx::query(
        "WITH old AS ( \
           SELECT id FROM commerce.orders \
           WHERE idempotency_key IS NOT NULL \
             AND created_at < now() - make_interval(secs => $1::float8 / 1000000) \
           ORDER BY created_at LIMIT $2 \
           FOR UPDATE SKIP LOCKED \
         ) \
         UPDATE commerce.orders SET idempotency_key = NULL WHERE id = ANY(ARRAY(SELECT id FROM old))",
    )
    .persistent(false)
    .bind(micros)
    .bind(i64::from(limit.clamp(1, MAX_FORGET)))
    .execute(pool)
    .await?;
    Ok(cleared.rows_affected())
}
