//! Liveness and readiness answers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Whether the process (`/health`) or its dependencies (`/ready`) are fit to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Fit to serve.
    Ok,
    /// A dependency is down (`/ready` answers 503).
    Unavailable,
}

/// The body of `/health` and `/ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: HealthStatus,
    /// Per dependency (for `/ready`; empty for `/health`): `ok` or `unavailable` (the server
    /// logs why); `shutdown: draining` while the server shuts down.
    pub checks: BTreeMap<String, String>,
}
