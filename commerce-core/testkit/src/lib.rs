//! Test support for the commerce-rs workspace (dev-only, never published): every crate's
//! tests, the examples and the load harnesses use it instead of keeping copies.
//!
//! Every integration test talks to the real servers, isolated from every other test:
//! - [`TestDb`]: a freshly created and migrated Postgres database, dropped when the value is;
//!   [`scratch_database`]: a named one for examples and harnesses.
//! - [`unique_name`]: unique Redis key prefixes and Kafka topic names.
//! - [`PrivatePostgres`], [`PrivateRedis`], [`PrivateBroker`]: servers of the test's own,
//!   which it may kill and start again without disturbing other tests.
//! - [`TcpProxy`]: a proxy that can black-hole, delay or cut a connection, for the failures
//!   a killed server cannot show (a hung network, a lost reply).
//! - [`eventually`], [`within`]: bounded waits, so a broken build fails instead of hanging.
//!
//! Server addresses come from the same environment variables as the applications
//! (`DATABASE_URL`, `REDIS_URL`, `KAFKA_BROKERS`), with the machine's defaults.
//!
//! It lives in `commerce-core/testkit` because the workspace's top level holds only the
//! published crates, the examples, the app and the docs.

mod db;
mod postgres;
mod proxy;
mod servers;
mod wait;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use db::{scratch_database, seq_scans, TestDb};
pub use postgres::PrivatePostgres;
pub use proxy::TcpProxy;
pub use servers::{free_port, tansu_binary, PrivateBroker, PrivateRedis};
pub use wait::{eventually, within};

/// Default Postgres URL (the machine's local server, trust auth).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Default Redis URL.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default Kafka bootstrap servers.
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";

/// `DATABASE_URL` or [`DEFAULT_DATABASE_URL`]: the server on which test databases are created.
#[must_use]
pub fn database_url() -> String {
    env_or("DATABASE_URL", DEFAULT_DATABASE_URL)
}

/// `REDIS_URL` or [`DEFAULT_REDIS_URL`].
#[must_use]
pub fn redis_url() -> String {
    env_or("REDIS_URL", DEFAULT_REDIS_URL)
}

/// `KAFKA_BROKERS` or [`DEFAULT_KAFKA_BROKERS`].
#[must_use]
pub fn kafka_brokers() -> String {
    env_or("KAFKA_BROKERS", DEFAULT_KAFKA_BROKERS)
}

/// The variable's value, or `default` when it is unset or empty.
fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// A name no other test (in this process or another) uses: `<prefix>-<unix secs>-<pid>-<n>`.
///
/// Use it for Redis key prefixes and Kafka topic names.
#[must_use]
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{}-{n}", unix_secs(), std::process::id())
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
