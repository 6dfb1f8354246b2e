//! Operations routes for admins: dead letters of the outbox and of the consumers, and the
//! audit.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::Router;
use commerce_client::{
    AuditView, ConsumerDeadLetterQuery, ConsumerDeadLetterView, DeadLetterQuery, DeadLetterView,
    Replayed,
};
use commerce_core::Commerce;
use commerce_outbox::dead_letter::{
    discard_consumer_dead_letter, list_consumer_dead_letters, list_dead_letters,
    replay_consumer_dead_letter, replay_dead_letter, OutboxEvent,
};
use commerce_outbox::{EventHandler, EventId};
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::{Admin, Auth};
use crate::http::extract::{Json, Path, Query};
use crate::http::{page_limit, ApiError, ApiResult, ErrorBody};

/// What the admin routes need.
#[derive(Debug, Clone, FromRef)]
pub struct AdminState {
    /// The outbox's database.
    pub pool: PgPool,
    /// For the audit.
    pub commerce: Commerce,
    /// Token checks.
    pub auth: Auth,
    /// This process's event consumers by name, to replay their dead letters through.
    pub consumers: Consumers,
}

/// The event consumers of a process by name (their inbox and consumer group), each with the
/// handler its dead letters are replayed through.
#[derive(Clone, Default)]
pub struct Consumers(Arc<BTreeMap<String, Arc<dyn EventHandler>>>);

impl Consumers {
    /// The consumers `handlers` (name, handler).
    #[must_use]
    pub fn new(handlers: impl IntoIterator<Item = (String, Arc<dyn EventHandler>)>) -> Self {
        Self(Arc::new(handlers.into_iter().collect()))
    }

    fn handler(&self, consumer: &str) -> ApiResult<&dyn EventHandler> {
        self.0.get(consumer).map(AsRef::as_ref).ok_or_else(|| {
            let known: Vec<&str> = self.0.keys().map(String::as_str).collect();
            ApiError::consumer_not_found(consumer, &known)
        })
    }
}

impl std::fmt::Debug for Consumers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/api/v1/admin/dead-letters", get(dead_letters))
        .route("/api/v1/admin/dead-letters/{id}/replay", post(replay))
        .route("/api/v1/admin/audit", get(audit))
        .route(
            "/api/v1/admin/consumer-dead-letters",
            get(consumer_dead_letters),
        )
        .route(
            "/api/v1/admin/consumer-dead-letters/{consumer}/{event_id}/replay",
            post(replay_consumer),
        )
        .route(
            "/api/v1/admin/consumer-dead-letters/{consumer}/{event_id}",
            delete(discard_consumer),
        )
        .with_state(state)
}

fn dead_letter_view(e: OutboxEvent) -> DeadLetterView {
    DeadLetterView {
        id: e.id.0,
        topic: e.topic,
        event_type: e.event_type,
        aggregate_type: e.aggregate_type,
        aggregate_id: e.aggregate_id,
        aggregate_seq: e.aggregate_seq,
        attempts: e.attempts,
        last_error: e.last_error,
        dead_at: e.dead_at,
        held_behind: e.held_behind,
    }
}

/// Most dead letters on one page.
const MAX_DEAD_LETTERS: u32 = 500;

/// Dead letters, oldest first (admin).
#[utoipa::path(
    get, path = "/api/v1/admin/dead-letters", tag = "admin",
    params(DeadLetterQuery),
    responses(
        (status = 200, body = [DeadLetterView]),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn dead_letters(
    State(state): State<AdminState>,
    _admin: Admin,
    Query(query): Query<DeadLetterQuery>,
) -> ApiResult<Json<Vec<DeadLetterView>>> {
    let letters = list_dead_letters(
        &state.pool,
        i64::from(page_limit(query.limit, 100, MAX_DEAD_LETTERS)?),
    )
    .await?;
    Ok(Json(letters.into_iter().map(dead_letter_view).collect()))
}

/// Makes a dead letter pending again; the relay publishes it, then what it held back (admin).
#[utoipa::path(
    post, path = "/api/v1/admin/dead-letters/{id}/replay", tag = "admin",
    params(("id" = Uuid, Path, description = "event id")),
    responses(
        (status = 200, body = Replayed),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 404, description = "`event_not_found`", body = ErrorBody),
        (status = 409, description = "`not_a_dead_letter`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn replay(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Replayed>> {
    replay_dead_letter(&state.pool, EventId(id)).await?;
    Ok(Json(Replayed { replayed: id }))
}

/// Checks stock against the ledger, orders and the backorder queue, in one snapshot (admin).
#[utoipa::path(
    get, path = "/api/v1/admin/audit", tag = "admin",
    responses(
        (status = 200, body = AuditView),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn audit(State(state): State<AdminState>, _admin: Admin) -> ApiResult<Json<AuditView>> {
    let report = state.commerce.audit().await?;
    Ok(Json(AuditView {
        consistent: report.is_consistent(),
        products: report.products,
        orders: report.orders,
        violations: report.violations,
    }))
}

/// Events a consumer set aside because they can never be applied, oldest first (admin).
#[utoipa::path(
    get, path = "/api/v1/admin/consumer-dead-letters", tag = "admin",
    params(ConsumerDeadLetterQuery),
    responses(
        (status = 200, body = [ConsumerDeadLetterView]),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn consumer_dead_letters(
    State(state): State<AdminState>,
    _admin: Admin,
    Query(query): Query<ConsumerDeadLetterQuery>,
) -> ApiResult<Json<Vec<ConsumerDeadLetterView>>> {
    let limit = i64::from(page_limit(query.limit, 100, MAX_DEAD_LETTERS)?);
    // Postgres text cannot hold a NUL, so no consumer is named with one: nothing to list (the
    // query would fail as a database error, a 503).
    if query.consumer.contains('\0') {
        return Ok(Json(Vec::new()));
    }
    let letters = list_consumer_dead_letters(&state.pool, &query.consumer, limit).await?;
    Ok(Json(
        letters
            .into_iter()
            .map(|letter| ConsumerDeadLetterView {
                consumer: letter.consumer,
                event_id: letter.envelope.id.0,
                topic: letter.topic,
                event_type: letter.envelope.event_type,
                aggregate: format!(
                    "{} {}",
                    letter.envelope.aggregate_type, letter.envelope.aggregate_id
                ),
                payload: letter.envelope.payload,
                error: letter.error,
                dead_at: letter.dead_at,
            })
            .collect(),
    ))
}

/// Applies a consumer dead letter again through its consumer's handler (after a fix); it
/// stays a dead letter if it still cannot be applied (admin).
#[utoipa::path(
    post, path = "/api/v1/admin/consumer-dead-letters/{consumer}/{event_id}/replay", tag = "admin",
    params(
        ("consumer" = String, Path, description = "the consumer"),
        ("event_id" = Uuid, Path, description = "event id"),
    ),
    responses(
        (status = 200, body = Replayed),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 404, description = "`consumer_not_found`, `dead_letter_not_found`", body = ErrorBody),
        (status = 409, description = "`replay_failed`: still cannot be applied", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn replay_consumer(
    State(state): State<AdminState>,
    _admin: Admin,
    Path((consumer, event_id)): Path<(String, Uuid)>,
) -> ApiResult<Json<Replayed>> {
    let handler = state.consumers.handler(&consumer)?;
    replay_consumer_dead_letter(&state.pool, &consumer, EventId(event_id), handler).await?;
    Ok(Json(Replayed { replayed: event_id }))
}

/// Drops a consumer dead letter for good (admin).
#[utoipa::path(
    delete, path = "/api/v1/admin/consumer-dead-letters/{consumer}/{event_id}", tag = "admin",
    params(
        ("consumer" = String, Path, description = "the consumer"),
        ("event_id" = Uuid, Path, description = "event id"),
    ),
    responses(
        (status = 204, description = "discarded"),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 404, description = "`dead_letter_not_found`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn discard_consumer(
    State(state): State<AdminState>,
    _admin: Admin,
    Path((consumer, event_id)): Path<(String, Uuid)>,
) -> ApiResult<StatusCode> {
    // Postgres text cannot hold a NUL, so no consumer is named with one: no such dead letter
    // (the query would fail as a database error, a 503).
    if consumer.contains('\0') {
        return Err(commerce_outbox::Error::ConsumerDeadLetterNotFound {
            consumer,
            event_id: EventId(event_id),
        }
        .into());
    }
    discard_consumer_dead_letter(&state.pool, &consumer, EventId(event_id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
