//! The order service's HTTP handlers.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use commerce_core::{NewOrder, OrderCursor, OrderId, OrderStatus, ShortagePolicy};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{OrderState, OrderView};
use crate::auth::{Admin, Caller};
use crate::http::extract::{Json, Path, Query};
use crate::http::{ApiError, ApiResult, ErrorBody};
use crate::telemetry::count_order;

/// The header a client sets to make a request safe to repeat.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on the answer to a repeated request: the order is the first one.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// What to do when a line asks for more than is in stock.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Shortage {
    /// Refuse the whole order (409 `insufficient_stock`).
    #[default]
    Reject,
    /// Take what is there, queue the rest (202, status `BACKORDERED`).
    Backorder,
}

/// One requested line.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderItem {
    /// The product.
    pub product_id: i64,
    /// Units, 1 to 10000.
    pub quantity: i64,
}

/// An order to place.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    /// The lines; each product at most once.
    pub items: Vec<OrderItem>,
    /// Default `reject`.
    #[serde(default)]
    pub on_shortage: Shortage,
}

/// Paging of the caller's orders.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Orders per page, 1 to 100 (default 20).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of the caller's orders, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderList {
    /// The orders (without history).
    pub items: Vec<OrderView>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

fn encode_cursor(cursor: &OrderCursor) -> String {
    format!(
        "{}.{}",
        cursor.created_at.timestamp_micros(),
        cursor.id.0.simple()
    )
}

fn decode_cursor(text: &str) -> Option<OrderCursor> {
    let (micros, id) = text.split_once('.')?;
    Some(OrderCursor {
        created_at: chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id: OrderId(Uuid::parse_str(id).ok()?),
    })
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    headers
        .get(IDEMPOTENCY_KEY)
        .map(|value| {
            value.to_str().map(str::to_owned).map_err(|_| {
                ApiError::bad_request("the Idempotency-Key header must be visible ASCII")
            })
        })
        .transpose()
}

/// Places an order: its stock and the order in one transaction. With `Idempotency-Key`, a
/// repeat returns the first order (same status code, `Idempotent-Replayed: true`).
#[utoipa::path(
    post, path = "/api/v1/orders", tag = "orders",
    request_body = PlaceOrder,
    params(("Idempotency-Key" = Option<String>, Header, description = "makes the request safe to repeat (per user)")),
    responses(
        (status = 201, description = "CREATED: every line has its stock", body = OrderView),
        (status = 202, description = "BACKORDERED: waiting for stock", body = OrderView),
        (status = 409, description = "`insufficient_stock` (with product, requested, available) or `idempotency_key_reused`", body = ErrorBody),
        (status = 422, description = "`validation_failed`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn place(
    State(state): State<OrderState>,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<PlaceOrder>,
) -> ApiResult<Response> {
    let mut request = NewOrder::new(caller.user_id.clone()).policy(match body.on_shortage {
        Shortage::Reject => ShortagePolicy::Reject,
        Shortage::Backorder => ShortagePolicy::Backorder,
    });
    for item in &body.items {
        request = request.line(item.product_id, item.quantity);
    }
    if let Some(key) = idempotency_key(&headers)? {
        request = request.idempotency_key(key);
    }
    let placed = match state.commerce.place_order(request).await {
        Ok(placed) => placed,
        Err(e) => {
            count_order(match e {
                commerce_core::Error::InsufficientStock { .. } => "insufficient_stock",
                _ => "error",
            });
            return Err(e.into());
        }
    };
    let history = state.commerce.order_history(placed.order.id).await?;
    // A repeat answers as the first request did, whatever the order went through since.
    let placed_as = history.first().map_or(placed.order.status, |h| h.to);
    let status = if placed_as == OrderStatus::Backordered {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    };
    count_order(if placed.replayed {
        "replayed"
    } else if placed_as == OrderStatus::Backordered {
        "backordered"
    } else {
        "created"
    });
    let view = OrderView::of(&placed.order, &history, &state.currency);
    let mut response = (status, Json(view)).into_response();
    if placed.replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

async fn owned_order(
    state: &OrderState,
    caller: &Caller,
    id: Uuid,
) -> ApiResult<commerce_core::Order> {
    let order = state.commerce.order(OrderId(id)).await?;
    caller.require_owner_or_admin(&order.user_id)?;
    Ok(order)
}

/// An order with its status history (its owner or an admin).
#[utoipa::path(
    get, path = "/api/v1/orders/{id}", tag = "orders",
    params(("id" = Uuid, Path, description = "order id")),
    responses(
        (status = 200, body = OrderView),
        (status = 403, description = "another user's order", body = ErrorBody),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn order(
    State(state): State<OrderState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<OrderView>> {
    let order = owned_order(&state, &caller, id).await?;
    let history = state.commerce.order_history(order.id).await?;
    Ok(Json(OrderView::of(&order, &history, &state.currency)))
}

/// The caller's orders, newest first.
#[utoipa::path(
    get, path = "/api/v1/orders", tag = "orders",
    params(ListQuery),
    responses(
        (status = 200, body = OrderList),
        (status = 400, description = "`invalid_query` (e.g. a cursor this API did not give out)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<OrderState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<OrderList>> {
    let after = match query.cursor.as_deref() {
        Some(text) => Some(decode_cursor(text).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", "unknown cursor")
        })?),
        None => None,
    };
    let page = state
        .commerce
        .orders_of_user(&caller.user_id, query.limit.unwrap_or(20), after.as_ref())
        .await?;
    Ok(Json(OrderList {
        items: page
            .orders
            .iter()
            .map(|o| OrderView::of(o, &[], &state.currency))
            .collect(),
        next_cursor: page.next.as_ref().map(encode_cursor),
    }))
}

/// Cancels an order (its owner or an admin): its stock returns and serves backorders; a
/// payment already taken is refunded by the saga.
#[utoipa::path(
    post, path = "/api/v1/orders/{id}/cancel", tag = "orders",
    params(("id" = Uuid, Path, description = "order id")),
    responses(
        (status = 200, body = OrderView),
        (status = 403, description = "another user's order", body = ErrorBody),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
        (status = 409, description = "`illegal_transition` (already shipped, delivered or cancelled)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(state): State<OrderState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<OrderView>> {
    let order = owned_order(&state, &caller, id).await?;
    let reason = if caller.is_admin() && caller.user_id != order.user_id {
        "cancelled by an admin"
    } else {
        "cancelled by the customer"
    };
    let order = state.commerce.cancel_order(order.id, reason).await?;
    let history = state.commerce.order_history(order.id).await?;
    Ok(Json(OrderView::of(&order, &history, &state.currency)))
}

async fn advance(
    state: &OrderState,
    id: Uuid,
    to: OrderStatus,
    reason: &str,
) -> ApiResult<Json<OrderView>> {
    let order = state
        .commerce
        .transition_order(OrderId(id), to, reason)
        .await?;
    let history = state.commerce.order_history(order.id).await?;
    Ok(Json(OrderView::of(&order, &history, &state.currency)))
}

/// Marks a PROCESSING order as shipped (admin).
#[utoipa::path(
    post, path = "/api/v1/orders/{id}/ship", tag = "orders",
    params(("id" = Uuid, Path, description = "order id")),
    responses(
        (status = 200, body = OrderView),
        (status = 403, description = "not an admin", body = ErrorBody),
        (status = 409, description = "`illegal_transition`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn ship(
    State(state): State<OrderState>,
    _admin: Admin,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<OrderView>> {
    advance(&state, id, OrderStatus::Shipped, "handed to the carrier").await
}

/// Marks a SHIPPED order as delivered (admin).
#[utoipa::path(
    post, path = "/api/v1/orders/{id}/deliver", tag = "orders",
    params(("id" = Uuid, Path, description = "order id")),
    responses(
        (status = 200, body = OrderView),
        (status = 403, description = "not an admin", body = ErrorBody),
        (status = 409, description = "`illegal_transition`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn deliver(
    State(state): State<OrderState>,
    _admin: Admin,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<OrderView>> {
    advance(&state, id, OrderStatus::Delivered, "delivered").await
}

/// Server-Sent Events of an order's status: the current status first, then one event per
/// change, until a final status (DELIVERED or CANCELLED). Its owner or an admin.
#[utoipa::path(
    get, path = "/api/v1/orders/{id}/events", tag = "orders",
    params(("id" = Uuid, Path, description = "order id")),
    responses(
        (status = 200, description = "`text/event-stream`: events named `status`, data a HistoryView", content_type = "text/event-stream", body = super::HistoryView),
        (status = 403, description = "another user's order", body = ErrorBody),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn watch(
    State(state): State<OrderState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    let order = owned_order(&state, &caller, id).await?;
    Ok(super::watch::stream(&state, order.id).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = OrderCursor {
            created_at: chrono::DateTime::from_timestamp_micros(1_732_900_000_123_456).unwrap(),
            id: OrderId(Uuid::now_v7()),
        };
        assert_eq!(decode_cursor(&encode_cursor(&cursor)), Some(cursor));
        for bad in [
            "",
            "x",
            "1.2",
            "abc.0192",
            "9999999999999999999.00000000000000000000000000000000",
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }
}
