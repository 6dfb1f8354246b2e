//! Idempotent placement: a request repeated with the same idempotency key (per user) gets
//! the first order back instead of a second one.

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
