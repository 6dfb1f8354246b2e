//! The admin routes' answers: dead letters of the outbox and the audit.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Paging of dead letters (`GET /api/v1/admin/dead-letters` query).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct DeadLetterQuery {
    /// At most this many, 1 to 500 (default 100), oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 500))]
    pub limit: Option<u32>,
}

/// An event the relay gave up publishing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetterView {
    /// The event id.
    pub id: Uuid,
    /// Its topic.
    pub topic: String,
    /// Its type (e.g. `order.placed`).
    pub event_type: String,
    /// The kind of its aggregate (`order`, `product`, `payment`).
    pub aggregate_type: String,
    /// The id of its aggregate.
    pub aggregate_id: String,
    /// Its place in the aggregate's sequence.
    pub aggregate_seq: i64,
    /// Attempts refused.
    pub attempts: i32,
    /// The last refusal, if recorded.
    pub last_error: Option<String>,
    /// When it was given up, if recorded.
    pub dead_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Later events of the aggregate held back behind it.
    pub held_behind: i64,
}

/// The answer to a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Replayed {
    /// The event, pending again.
    pub replayed: Uuid,
}

/// The audit of stock against the ledger, orders and the backorder queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditView {
    /// Whether every rule holds.
    pub consistent: bool,
    /// Products checked.
    pub products: i64,
    /// Orders checked.
    pub orders: i64,
    /// One line per broken rule (empty when consistent).
    pub violations: Vec<String>,
}

/// Which consumer's dead letters, and how many
/// (`GET /api/v1/admin/consumer-dead-letters` query).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct ConsumerDeadLetterQuery {
    /// The consumer (its group, e.g. `commerce.order-service`); an unknown one has none.
    pub consumer: String,
    /// At most this many, 1 to 500 (default 100), oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 500))]
    pub limit: Option<u32>,
}

/// An event a consumer set aside because it can never be applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsumerDeadLetterView {
    /// The consumer.
    pub consumer: String,
    /// The event id.
    pub event_id: Uuid,
    /// Its topic.
    pub topic: String,
    /// Its type.
    pub event_type: String,
    /// Its aggregate (`order`, `payment`, ...) and id.
    pub aggregate: String,
    /// Its payload.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: serde_json::Value,
    /// Why it cannot be applied.
    pub error: String,
    /// When it was set aside.
    pub dead_at: chrono::DateTime<chrono::Utc>,
}
