//! The crate's error type.

use std::time::Duration;

/// Everything that can go wrong while taking, holding or releasing a lock.
///
/// Every variant means "you do not (or no longer) hold the lock": callers fail closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock stayed held by someone else for the whole bounded wait.
    #[error("lock `{key}` still held by another owner after waiting {waited:?}")]
    WaitTimeout {
        /// The key that was still held when the wait ran out.
        key: String,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The lock was lost while held: a renewal failed, the key expired or was deleted, or the
    /// lock client shut down. Work done under the lock may have overlapped another holder.
    #[error("lock lost while held: {keys:?}")]
    LockLost {
        /// The keys of the lost guard.
        keys: Vec<String>,
    },
    /// A write carried a fencing token older than one already seen for the resource: the
    /// writer's lease expired and someone else took the lock since.
    #[error("stale fencing token {token} for `{resource}` (newest seen: {newest})")]
    StaleFencingToken {
        /// The resource whose write was refused.
        resource: String,
        /// The token the writer presented.
        token: u64,
        /// The newest token the resource has accepted.
        newest: u64,
    },
    /// Redis could not be reached in time (connection refused, dropped, or timed out).
    #[error("redis unavailable during {operation}: {source}")]
    Unavailable {
        /// What the lock was doing.
        operation: &'static str,
        /// The underlying client error.
        #[source]
        source: redis::RedisError,
    },
    /// Redis answered with an error (e.g. a script failure); not a connectivity problem.
    #[error("redis error during {operation}: {source}")]
    Redis {
        /// What the lock was doing.
        operation: &'static str,
        /// The underlying client error.
        #[source]
        source: redis::RedisError,
    },
    /// The request itself is invalid (no keys, an empty key, a zero lease, a bad URL).
    #[error("invalid lock request: {reason}")]
    Invalid {
        /// What is wrong with it.
        reason: String,
    },
    /// The lock client was shut down; it takes no new locks.
    #[error("lock client shut down")]
    ShutDown,
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Classifies a client error: connectivity problems become [`Error::Unavailable`].
    pub(crate) fn from_redis(operation: &'static str, source: redis::RedisError) -> Self {
        if source.is_io_error()
            || source.is_timeout()
            || source.is_connection_refusal()
            || source.is_connection_dropped()
        {
            Self::Unavailable { operation, source }
        } else {
            Self::Redis { operation, source }
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        Self::Invalid {
            reason: reason.into(),
        }
    }
}
