//! Operations routes for admins: dead letters of the outbox, and the audit.

use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use commerce_client::{AuditView, DeadLetterQuery, DeadLetterView, Replayed};
use commerce_core::Commerce;
use commerce_outbox::dead_letter::{list_dead_letters, replay_dead_letter, OutboxEvent};
use commerce_outbox::EventId;
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::{Admin, Auth};
use crate::http::extract::{Json, Path, Query};
use crate::http::{ApiError, ApiResult, ErrorBody};

/// What the admin routes need.
#[derive(Debug, Clone, FromRef)]
pub struct AdminState {
    /// The outbox's database.
    pub pool: PgPool,
    /// For the audit.
    pub commerce: Commerce,
    /// Token checks.
    pub auth: Auth,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/api/v1/admin/dead-letters", get(dead_letters))
        .route("/api/v1/admin/dead-letters/{id}/replay", post(replay))
        .route("/api/v1/admin/audit", get(audit))
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

fn outbox_error(e: commerce_outbox::Error) -> ApiError {
    match e {
        commerce_outbox::Error::EventNotFound(id) => {
            ApiError::not_found("event_not_found", format!("no outbox event {id}"))
        }
        commerce_outbox::Error::NotDeadLetter { id, status } => ApiError::new(
            StatusCode::CONFLICT,
            "not_a_dead_letter",
            format!("event {id} is {status}, not a dead letter"),
        ),
        other => ApiError::unavailable(other),
    }
}

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
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_DEAD_LETTERS).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be 1 to {MAX_DEAD_LETTERS}"),
        )
        .details(serde_json::json!({ "field": "limit" })));
    }
    let letters = list_dead_letters(&state.pool, i64::from(limit))
        .await
        .map_err(outbox_error)?;
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
    replay_dead_letter(&state.pool, EventId(id))
        .await
        .map_err(outbox_error)?;
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
