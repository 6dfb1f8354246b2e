//! Pooled Redis connections that died while idle are replaced, not reported as an outage.

use std::future::Future;

use redis::aio::ConnectionManager;
use redis::RedisResult;

/// Runs `command` on `connection`, and once more if the connection turned out to be dead.
///
/// After Redis restarted (or the socket broke while idle), the manager still holds the old
/// connection, or the failed result of its last reconnect attempt: the first command fails
/// with "broken pipe" or "connection refused" although the server is up, and the manager
/// only then starts a new connection. Retrying once on that new connection keeps a long gone
/// outage from failing a write and opening the circuit breaker. Every script this crate
/// sends may run twice without harm: a repeated write or delete only bumps the version
/// again, a repeated fill reports a conflict, a repeated notice is applied once.
pub(crate) async fn on_live_connection<T, F, Fut>(
    connection: &ConnectionManager,
    mut command: F,
) -> RedisResult<T>
where
    F: FnMut(ConnectionManager) -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    match command(connection.clone()).await {
        Err(error) if connection_must_be_replaced(&error) => command(connection.clone()).await,
        outcome => outcome,
    }
}

/// The errors on which the manager replaces its connection.
fn connection_must_be_replaced(error: &redis::RedisError) -> bool {
    error.is_io_error() || error.is_unrecoverable_error()
}
