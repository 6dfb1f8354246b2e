//! The order service's HTTP handlers.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use commerce_core::{NewOrder, OrderCursor, OrderId, OrderStatus, ShortagePolicy};
use uuid::Uuid;

use super::watch::{Opened, Resume};
use super::{order_view, ListQuery, OrderList, OrderState, OrderView, PlaceOrder, Shortage};
use crate::auth::{Admin, Caller};
use crate::http::extract::{Json, Path, Query};
use crate::http::{page_limit, ApiError, ApiResult, ErrorBody};
use crate::telemetry::count_order;

pub use commerce_client::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
/// Sent by a reconnecting event-stream client: the id of the last event it received.
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// Most orders on one page of `GET /api/v1/orders`.
const MAX_PAGE: u32 = 100;

fn encode_cursor(cursor: &OrderCursor) -> String {
    format!(
        "{}.{}",
        cursor.created_at.timestamp_micros(),
        cursor.id.0.simple()
    )
}

/// The cursor `text` if it has the one form [`encode_cursor`] gives (the pattern the API
/// documents, [`commerce_client::ORDER_CURSOR_PATTERN`]).
fn decode_cursor(text: &str) -> Option<OrderCursor> {
    let (micros, id) = text.split_once('.')?;
    let digits = |s: &str, range: std::ops::RangeInclusive<usize>, hex: bool| {
        range.contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (hex && (b'a'..=b'f').contains(&b)))
    };
    if !digits(micros, 1..=16, false) || !digits(id, 32..=32, true) {
        return None;
    }
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
    params(("Idempotency-Key" = Option<String>, Header,
        description = "makes the request safe to repeat (per user): 1 to 200 visible ASCII characters, single spaces inside allowed",
        max_length = 200, pattern = r"^[!-~]+( [!-~]+)*$")),
    responses(
        (status = 201, description = "CREATED: every line has its stock", body = OrderView,
            headers(("Idempotent-Replayed" = String, description = "`true` when a repeat of a keyed request answers with the first order"))),
        (status = 202, description = "BACKORDERED: waiting for stock", body = OrderView,
            headers(("Idempotent-Replayed" = String, description = "`true` when a repeat of a keyed request answers with the first order"))),
        (status = 404, description = "`product_not_found`: a line's product does not exist", body = ErrorBody),
        (status = 409, description = "`insufficient_stock` (details: product_id, requested, available), `idempotency_key_reused` (details: idempotency_key, order_id) or `user_limit_exceeded` (details: limit, current, requested, max)", body = ErrorBody),
        (status = 422, description = "`validation_failed`: the JSON has the wrong shape or types, no lines or more than 100, a quantity outside 1..=10000, a product twice, or an idempotency key that is blank, too long or holds control characters", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the caller placed orders faster than `ORDER_RATE_PER_MINUTE` (after a burst of `ORDER_BURST`; details: retry_after_seconds); `Retry-After` says in how many seconds the next is allowed", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds until a retry may succeed"))),
    ),
    security(("bearer" = []))
)]
pub async fn place(
    State(state): State<OrderState>,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<PlaceOrder>,
) -> ApiResult<Response> {
    state
        .placement_rate
        .check(&caller.user_id)
        .map_err(|wait| {
            count_order("rate_limited");
            ApiError::rate_limited("orders", wait)
        })?;
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
    // Behind a saga that does not keep pace, the buyer waits here rather than adding to what
    // is placed and not yet paid (saga_pace).
    let wait = state.saga_pace.wait();
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
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
    // A new order's history is what the placement wrote; a replay's is read (the order may
    // have moved on). The order is committed: a failed read must not make the client think
    // otherwise (and place it again), so the answer then goes without the history.
    let history = match placed.placement_history() {
        Some(history) => history,
        None => state
            .commerce
            .order_history(placed.order.id)
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(
                    %error,
                    order = %placed.order.id,
                    "placed, but its history cannot be read: answered without it"
                );
                Vec::new()
            }),
    };
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
    let view = order_view(&placed.order, &history, &state.currency);
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
        (status = 403, description = "`forbidden`: another user's order", body = ErrorBody),
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
    Ok(Json(order_view(&order, &history, &state.currency)))
}

/// The caller's orders, newest first.
#[utoipa::path(
    get, path = "/api/v1/orders", tag = "orders",
    params(ListQuery),
    responses(
        (status = 200, body = OrderList),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<OrderState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<OrderList>> {
    let after = match query.cursor.as_deref() {
        Some(text) => Some(
            decode_cursor(text)
                .ok_or_else(|| ApiError::invalid_query("cursor", "unknown cursor"))?,
        ),
        None => None,
    };
    let limit = page_limit(query.limit, 20, MAX_PAGE)?;
    let page = state
        .commerce
        .orders_of_user(&caller.user_id, limit, after.as_ref())
        .await?;
    Ok(Json(OrderList {
        items: page
            .orders
            .iter()
            .map(|o| order_view(o, &[], &state.currency))
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
        (status = 403, description = "`forbidden`: another user's order", body = ErrorBody),
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
        format!("cancelled by admin {}", caller.user_id)
    } else {
        "cancelled by the customer".to_owned()
    };
    let order = state.commerce.cancel_order(order.id, &reason).await?;
    let history = state.commerce.order_history(order.id).await?;
    Ok(Json(order_view(&order, &history, &state.currency)))
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
    Ok(Json(order_view(&order, &history, &state.currency)))
}

/// Marks a PROCESSING order as shipped (admin).
#[utoipa::path(
    post, path = "/api/v1/orders/{id}/ship", tag = "orders",
    params(("id" = Uuid, Path, description = "order id")),
    responses(
        (status = 200, body = OrderView),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
        (status = 409, description = "`illegal_transition`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn ship(
    State(state): State<OrderState>,
    Admin(admin): Admin,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<OrderView>> {
    let reason = format!("handed to the carrier (by admin {})", admin.user_id);
    advance(&state, id, OrderStatus::Shipped, &reason).await
}

/// Marks a SHIPPED order as delivered (admin).
#[utoipa::path(
    post, path = "/api/v1/orders/{id}/deliver", tag = "orders",
    params(("id" = Uuid, Path, description = "order id")),
    responses(
        (status = 200, body = OrderView),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
        (status = 409, description = "`illegal_transition`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn deliver(
    State(state): State<OrderState>,
    Admin(admin): Admin,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<OrderView>> {
    let reason = format!("delivered (marked by admin {})", admin.user_id);
    advance(&state, id, OrderStatus::Delivered, &reason).await
}

/// Server-Sent Events of an order's status: the current status first, then one event per
/// change, until a final status (DELIVERED or CANCELLED). Its owner or an admin.
///
/// Each event's id is the position of its change in the order's history (1 for the first
/// status); a client reconnecting with `Last-Event-ID` gets exactly the changes after it. A
/// stream ends after `SSE_MAX_LIFETIME_SECS` or when the caller's token expires (reconnect).
#[utoipa::path(
    get, path = "/api/v1/orders/{id}/events", tag = "orders",
    params(
        ("id" = Uuid, Path, description = "order id"),
        ("Last-Event-ID" = Option<u64>, Header, description = "the id of the last event received: resume after it"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: events named `status`, data a HistoryView, id the change's position in the order's history", content_type = "text/event-stream", body = super::HistoryView),
        (status = 204, description = "`Last-Event-ID` is the final event: nothing will follow (an EventSource stops reconnecting)"),
        (status = 400, description = "`invalid_path`: the id is not a UUID; `bad_request`: a `Last-Event-ID` this stream never gave out", body = ErrorBody),
        (status = 403, description = "`forbidden`: another user's order", body = ErrorBody),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
        (status = 429, description = "`too_many_streams`: the caller has `SSE_MAX_STREAMS_PER_USER` streams open, or the server `SSE_MAX_STREAMS` (`details.limit`: `per_user` or `overall`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds until a retry may succeed"))),
    ),
    security(("bearer" = []))
)]
pub async fn watch(
    State(state): State<OrderState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let resume = Resume::from_header(headers.get(LAST_EVENT_ID))?;
    let order = owned_order(&state, &caller, id).await?;
    let opened =
        super::watch::open(&state, order.id, &caller.user_id, caller.expires_at, resume).await?;
    Ok(match opened {
        Opened::Stream(stream) => stream.into_response(),
        Opened::Finished => StatusCode::NO_CONTENT.into_response(),
    })
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
            "+1.0192cb0e1d2f7c38a4b5e6f708192a3b",
            "1.0192CB0E1D2F7C38A4B5E6F708192A3B",
            "1.0192cb0e-1d2f-7c38-a4b5-e6f708192a3b",
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }
}
