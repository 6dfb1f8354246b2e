//! The order service: places orders (stock and order in one transaction, through
//! commerce-core), shows them, streams their status, moves them through fulfilment, and runs
//! the order side of the payment saga (start it, react to the payment's answer, time it out).

mod expiry;
mod placement_rate;
pub mod routes;
pub mod saga;
pub mod saga_pace;
mod stream_admission;
pub mod watch;

use axum::extract::FromRef;
use axum::routing::{get, post};
use axum::Router;
use commerce_core::{Commerce, Order, StatusChange};
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;

pub use commerce_client::{
    HistoryView, ItemView, ListQuery, OrderItem, OrderList, OrderStatus, OrderView, PlaceOrder,
    Shortage,
};
pub use placement_rate::PlacementRate;
pub use routes::{cancel, deliver, list, order, place, ship, watch as events};
pub use saga_pace::SagaPace;
pub use watch::{StatusFeed, Streams};

/// What the order service needs.
#[derive(Debug, Clone, FromRef)]
pub struct OrderState {
    /// Orders and stock.
    pub commerce: Commerce,
    /// Token checks.
    pub auth: Auth,
    /// Status changes as they commit (for the event streams).
    pub feed: StatusFeed,
    /// The event streams' reader, caps and lifetime.
    pub streams: Streams,
    /// Each user's allowance of order placements.
    pub placement_rate: PlacementRate,
    /// How long a placement waits for the payment saga to catch up.
    pub saga_pace: SagaPace,
    /// Cancelled when the process shuts down: open event streams end.
    pub shutdown: CancellationToken,
    /// The currency of the prices.
    pub currency: Currency,
}

/// The currency all prices and totals are in.
#[derive(Debug, Clone)]
pub struct Currency(pub String);

/// Starts the order service's background housekeeping until `shutdown`: BACKORDERED orders
/// past `settings.backorder_timeout` are cancelled (their stock returns), idempotency keys past
/// their retention are forgotten. (The saga's own timeout is [`saga::spawn_timeout_sweep`].)
pub fn spawn_housekeeping(
    commerce: Commerce,
    settings: &crate::config::OrderSettings,
    shutdown: CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) {
    expiry::spawn_expiry(
        commerce.clone(),
        expiry::backorder_expiry(settings.backorder_timeout),
        shutdown.clone(),
        tasks,
    );
    expiry::spawn_key_purge(
        commerce,
        settings.idempotency_key_retention,
        shutdown,
        tasks,
    );
}

/// The order service's routes.
pub fn router(state: OrderState) -> Router {
    Router::new()
        .route("/api/v1/orders", post(place).get(list))
        .route("/api/v1/orders/{id}", get(order))
        .route("/api/v1/orders/{id}/events", get(events))
        .route("/api/v1/orders/{id}/cancel", post(cancel))
        .route("/api/v1/orders/{id}/ship", post(ship))
        .route("/api/v1/orders/{id}/deliver", post(deliver))
        .with_state(state)
}

/// The view of `order` with `history`.
#[must_use]
pub fn order_view(order: &Order, history: &[StatusChange], currency: &Currency) -> OrderView {
    OrderView {
        id: order.id.0,
        user_id: order.user_id.clone(),
        status: status_view(order.status),
        items: order
            .lines
            .iter()
            .map(|l| ItemView {
                product_id: l.product.0,
                quantity: l.quantity,
                unit_price: l.unit_price,
            })
            .collect(),
        total: order.total(),
        currency: currency.0.clone(),
        history: history.iter().map(history_view).collect(),
        created_at: order.created_at,
    }
}

/// The view of one status change.
#[must_use]
pub fn history_view(change: &StatusChange) -> HistoryView {
    HistoryView {
        status: status_view(change.to),
        at: change.at,
        reason: change.reason.clone(),
    }
}

/// commerce-core's status in the API's words.
#[must_use]
pub fn status_view(status: commerce_core::OrderStatus) -> OrderStatus {
    use commerce_core::OrderStatus as Core;
    match status {
        Core::Backordered => OrderStatus::Backordered,
        Core::Created => OrderStatus::Created,
        Core::Processing => OrderStatus::Processing,
        Core::Shipped => OrderStatus::Shipped,
        Core::Delivered => OrderStatus::Delivered,
        Core::Cancelled => OrderStatus::Cancelled,
    }
}
