//! The crate's error type.

use std::time::Duration;

/// Everything that can go wrong inside the cache itself.
///
/// Read paths never return these: when L2 is unreachable or a stored value cannot be decoded,
/// reads fall back to L1 and the loader. Write paths (`put`, `evict`) return them so the caller
/// knows other nodes may keep the old value until its TTL runs out.
///
/// Non-exhaustive: new failure kinds may be added without a breaking release, so a `match`
/// needs a catch-all arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The L2 backend (Redis) refused or failed the operation.
    #[error("cache backend {operation} failed: {source}")]
    Backend {
        /// The backend operation (`read`, `fill`, `write`, `delete`, `publish`, `subscribe`).
        operation: &'static str,
        /// The backend's error.
        #[source]
        source: redis::RedisError,
    },
    /// The L2 backend did not answer in time.
    #[error("cache backend {operation} timed out after {timeout:?}")]
    Timeout {
        /// The backend operation that timed out.
        operation: &'static str,
        /// The configured per-operation timeout.
        timeout: Duration,
    },
    /// The L2 backend is considered down after a recent failure and was not asked.
    #[error("cache backend unavailable (recent failure, next probe pending)")]
    Unavailable,
    /// The backend answered with something this crate did not write (foreign data under the prefix).
    #[error("cache backend returned an unexpected reply for {key}: {detail}")]
    UnexpectedReply {
        /// The full backend key.
        key: String,
        /// What was wrong with the reply.
        detail: String,
    },
    /// A value could not be serialized for L2.
    #[error("value for cache key {key} cannot be encoded: {source}")]
    Encode {
        /// The cache key (without prefix).
        key: String,
        /// The codec's error.
        #[source]
        source: serde_json::Error,
    },
    /// The builder was given settings that cannot work together.
    #[error("invalid cache configuration: {0}")]
    Config(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
