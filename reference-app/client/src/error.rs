//! The API's error body, and the client's [`Error`].

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

/// The body of every error response: `{"error": {"code", "message", "details"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorObject,
}

/// What went wrong, for machines (`code`) and people (`message`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorObject {
    /// Stable, machine-readable, snake_case (the table in docs/reference-app.md#errors), e.g.
    /// `insufficient_stock`.
    #[cfg_attr(feature = "openapi", schema(example = "insufficient_stock"))]
    pub code: String,
    /// A sentence for people.
    pub message: String,
    /// Facts a client can act on (e.g. the product and the units short); `{}` when none.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub details: serde_json::Value,
}

/// Why a call of [`ApiClient`](crate::ApiClient) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The API answered with an error status and its error body.
    #[error("{status}: {} ({})", .error.code, .error.message)]
    Api {
        /// The HTTP status (4xx or 5xx).
        status: StatusCode,
        /// The code, message and details of the body.
        error: ErrorObject,
        /// The request id the server logged the request under (`x-request-id`).
        request_id: Option<String>,
        /// The server's `Retry-After` (whole seconds), with a 429 or a 503.
        retry_after: Option<std::time::Duration>,
    },
    /// The request did not get an answer: no connection, a broken connection, a timeout.
    #[error("no answer from the API: {0}")]
    Transport(#[source] reqwest::Error),
    /// An answer that is not what the API documents (a body that does not decode, or a
    /// status this route does not give).
    #[error("unexpected answer {status}: {reason}")]
    UnexpectedResponse {
        /// The HTTP status.
        status: StatusCode,
        /// What did not match.
        reason: String,
    },
    /// The status stream sent something that is not a status event.
    #[error("status stream: {0}")]
    Stream(String),
    /// The client was configured with a base URL it cannot use.
    #[error("invalid base URL {url:?}: {reason}")]
    InvalidBaseUrl {
        /// The URL given.
        url: String,
        /// Why it cannot be used.
        reason: String,
    },
}

impl Error {
    /// The HTTP status of an answer, if there was one.
    #[must_use]
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Api { status, .. } | Self::UnexpectedResponse { status, .. } => Some(*status),
            Self::Transport(e) => e.status(),
            Self::Stream(_) | Self::InvalidBaseUrl { .. } => None,
        }
    }

    /// How long the server asked the client to wait before trying again (`Retry-After`).
    #[must_use]
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The error code of an API error body (e.g. `insufficient_stock`).
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { error, .. } => Some(&error.code),
            _ => None,
        }
    }

    /// The details of an API error body.
    #[must_use]
    pub fn details(&self) -> Option<&serde_json::Value> {
        match self {
            Self::Api { error, .. } => Some(&error.details),
            _ => None,
        }
    }

    /// Whether the same request may succeed if sent again unchanged: no answer came, the
    /// server shed it (429), or it answered 503 (`timeout`, `unavailable`, `conflict_retry`,
    /// `outcome_unknown`). Only safe to act on for reads and keyed placements.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Api { status, .. } => {
                *status == StatusCode::SERVICE_UNAVAILABLE
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// The result of a call of [`ApiClient`](crate::ApiClient).
pub type Result<T, E = Error> = std::result::Result<T, E>;
