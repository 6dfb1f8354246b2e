//! The order service: places orders (stock and order in one transaction, through
//! commerce-core), shows them, streams their status, moves them through fulfilment, and runs
//! the order side of the payment saga (start it, react to the payment's answer, time it out).

mod expiry;
pub mod routes;
pub mod saga;
pub mod watch;

use axum::extract::FromRef;
use axum::routing::{get, post};
use axum::Router;
use commerce_core::{Commerce, Order, StatusChange};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::auth::Auth;

pub use routes::{
    cancel, deliver, list, order, place, ship, watch as events, ListQuery, OrderItem, OrderList,
    PlaceOrder, Shortage,
};
pub use watch::StatusFeed;

/// What the order service needs.
#[derive(Debug, Clone, FromRef)]
pub struct OrderState {
    /// Orders and stock.
    pub commerce: Commerce,
    /// Token checks.
    pub auth: Auth,
    /// Status changes as they commit (for the event streams).
    pub feed: StatusFeed,
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

/// One line of an order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ItemView {
    /// The product.
    pub product_id: i64,
    /// Units ordered.
    pub quantity: i64,
    /// Unit price when the order was placed, minor units.
    pub unit_price: i64,
}

/// One status change.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryView {
    /// The status entered.
    #[schema(example = "CREATED")]
    pub status: String,
    /// When.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Why.
    pub reason: String,
}

impl From<&StatusChange> for HistoryView {
    fn from(change: &StatusChange) -> Self {
        Self {
            status: change.to.as_str().to_owned(),
            at: change.at,
            reason: change.reason.clone(),
        }
    }
}

/// An order as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrderView {
    /// Its id.
    pub id: uuid::Uuid,
    /// Who placed it.
    pub user_id: String,
    /// `BACKORDERED`, `CREATED`, `PROCESSING`, `SHIPPED`, `DELIVERED` or `CANCELLED`.
    #[schema(example = "CREATED")]
    pub status: String,
    /// Its lines.
    pub items: Vec<ItemView>,
    /// Sum of quantity × unit price, minor units.
    pub total: i64,
    /// Currency of the prices.
    pub currency: String,
    /// Its status changes, oldest first (empty in lists).
    pub history: Vec<HistoryView>,
    /// When it was placed.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl OrderView {
    /// The view of `order` with `history`.
    #[must_use]
    pub fn of(order: &Order, history: &[StatusChange], currency: &Currency) -> Self {
        Self {
            id: order.id.0,
            user_id: order.user_id.clone(),
            status: order.status.as_str().to_owned(),
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
            history: history.iter().map(HistoryView::from).collect(),
            created_at: order.created_at,
        }
    }
}
