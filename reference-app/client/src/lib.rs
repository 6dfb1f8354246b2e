//! A typed client of the commerce-rs reference order system's HTTP API.
//!
//! The crate owns the API's request and response types: the server's handlers and its
//! OpenAPI document use these very types (with the `openapi` feature, which derives
//! `utoipa::ToSchema` with the constraints the server enforces), so client and server cannot
//! drift apart. [`ApiClient`] has one method per route:
//!
//! - **store**: [`create_product`](ApiClient::create_product), [`product`](ApiClient::product),
//!   [`stock`](ApiClient::stock), [`receive_stock`](ApiClient::receive_stock),
//!   [`movements`](ApiClient::movements);
//! - **orders**: [`place_order`](ApiClient::place_order), [`order`](ApiClient::order),
//!   [`orders`](ApiClient::orders) (paged by cursor), [`cancel_order`](ApiClient::cancel_order),
//!   [`ship_order`](ApiClient::ship_order), [`deliver_order`](ApiClient::deliver_order), and
//!   [`order_events`](ApiClient::order_events), the live status stream as a
//!   [`futures::Stream`] of [`StatusEvent`]s;
//! - **admin**: [`dead_letters`](ApiClient::dead_letters),
//!   [`replay_dead_letter`](ApiClient::replay_dead_letter), [`audit`](ApiClient::audit),
//!   [`consumer_dead_letters`](ApiClient::consumer_dead_letters),
//!   [`replay_consumer_dead_letter`](ApiClient::replay_consumer_dead_letter),
//!   [`discard_consumer_dead_letter`](ApiClient::discard_consumer_dead_letter);
//! - **ops**: [`health`](ApiClient::health), [`ready`](ApiClient::ready),
//!   [`metrics`](ApiClient::metrics).
//!
//! Errors are an [`Error`]: the API's own error body (`code`, `message`, `details`, status)
//! as [`Error::Api`], or a transport failure. Placements are safe to retry: each carries an
//! idempotency key (generated unless given), reused when the client repeats it after a
//! connection error, a timeout, 429 or 503, as bounded by its [`RetryPolicy`]; [`Placed`]
//! says whether the answer was a replay of an earlier attempt.
//!
//! ```no_run
//! use commerce_client::{ApiClient, CreateProduct, OrderStatus, PlaceOrder};
//! use futures::StreamExt;
//!
//! # async fn tour(admin_token: &str, customer_token: &str) -> Result<(), commerce_client::Error> {
//! let admin = ApiClient::builder("http://127.0.0.1:8080")
//!     .bearer_token(admin_token)
//!     .build()?;
//! let kettle = admin
//!     .create_product(&CreateProduct {
//!         sku: "KET-01".into(),
//!         name: "Kettle".into(),
//!         price: 3_999,
//!         initial_stock: 10,
//!     })
//!     .await?;
//!
//! let alice = admin.with_token(customer_token);
//! let placed = alice.place_order(&PlaceOrder::one(kettle.id, 2)).await?;
//! assert_eq!(placed.order.status, OrderStatus::Created);
//!
//! // Follow it until a final status.
//! let mut events = alice.order_events(placed.order.id).await?;
//! while let Some(event) = events.next().await {
//!     println!("{}: {}", event?.change.status, placed.order.id);
//! }
//! # Ok(()) }
//! ```
//!
//! An error names what went wrong in the API's words:
//!
//! ```no_run
//! # async fn short(alice: commerce_client::ApiClient) {
//! use commerce_client::{Error, PlaceOrder};
//!
//! match alice.place_order(&PlaceOrder::one(7, 1_000)).await {
//!     Err(Error::Api { error, .. }) if error.code == "insufficient_stock" => {
//!         println!("only {} left", error.details["available"]);
//!     }
//!     other => println!("{other:?}"),
//! }
//! # }
//! ```

mod admin;
mod client;
mod decode;
mod error;
mod events;
mod int;
mod ops;
mod order;
mod retry;
mod store;

pub use admin::{
    AuditView, ConsumerDeadLetterQuery, ConsumerDeadLetterView, DeadLetterQuery, DeadLetterView,
    Replayed,
};
pub use client::{
    ApiClient, ApiClientBuilder, Placed, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, REQUEST_ID,
};
pub use decode::{decode, DecodeError};
pub use error::{Error, ErrorBody, ErrorObject, Result};
pub use events::{StatusEvent, StatusStream, STATUS_EVENT};
pub use ops::{Health, HealthStatus};
pub use order::{
    HistoryView, ItemView, ListQuery, OrderItem, OrderList, OrderStatus, OrderView, PlaceOrder,
    Shortage, MAX_IDEMPOTENCY_KEY_LEN, MAX_LINES, MAX_QUANTITY, ORDER_CURSOR_PATTERN,
};
pub use reqwest::StatusCode;
pub use retry::RetryPolicy;
pub use store::{
    CreateProduct, Inbound, InboundView, MovementKind, MovementView, MovementsPage, MovementsQuery,
    ProductView, RenameProduct, StockView, MAX_MOVEMENT, MAX_PRICE, MAX_SKU_LEN, MAX_TEXT_CHARS,
};
