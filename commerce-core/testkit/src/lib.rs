//! Test support for the commerce-rs workspace (dev-only, never published).
//!
//! Every integration test talks to the real servers, isolated from every other test:
//! - [`TestDb`]: a freshly created and migrated Postgres database, dropped when the value is.
//! - [`unique_name`]: unique Redis key prefixes and Kafka topic names.
//!
//! Server addresses come from the same environment variables as the applications
//! (`DATABASE_URL`, `REDIS_URL`, `KAFKA_BROKERS`), with the machine's defaults.
#![warn(missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;

/// Default Postgres URL (the machine's local server, trust auth).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Default Redis URL.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default Kafka bootstrap servers.
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";

/// Test databases are named `ctest_<unix seconds>_<unique>` so a sweep can find leftovers.
const DB_PREFIX: &str = "ctest_";
/// Leftover test databases older than this are dropped by the first test of a run.
const LEFTOVER_AGE: Duration = Duration::from_secs(3600);

/// `DATABASE_URL` or [`DEFAULT_DATABASE_URL`]: the server on which test databases are created.
#[must_use]
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// `REDIS_URL` or [`DEFAULT_REDIS_URL`].
#[must_use]
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned())
}

/// `KAFKA_BROKERS` or [`DEFAULT_KAFKA_BROKERS`].
#[must_use]
pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| DEFAULT_KAFKA_BROKERS.to_owned())
}

/// A name no other test (in this process or another) uses: `<prefix>-<unix secs>-<pid>-<n>`.
///
/// Use it for Redis key prefixes and Kafka topic names.
#[must_use]
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{prefix}-{secs}-{}-{n}", std::process::id())
}

/// A freshly created Postgres database with the given migrations applied.
///
/// The database is dropped (`WITH (FORCE)`) when the value is dropped, also when the test
/// panics. Databases leaked by killed test processes are swept by the next run.
pub struct TestDb {
    pool: PgPool,
    name: String,
    options: PgConnectOptions,
}

impl TestDb {
    /// Creates a database, applies `migrators` in order, and opens a pool of 10 connections.
    ///
    /// # Panics
    /// When the server cannot be reached or a migration fails: a test cannot go on then.
    pub async fn new(migrators: &[&Migrator]) -> Self {
        Self::with_pool_size(migrators, 10).await
    }

    /// Like [`TestDb::new`] with a pool of `max_connections`.
    ///
    /// # Panics
    /// When the server cannot be reached or a migration fails.
    pub async fn with_pool_size(migrators: &[&Migrator], max_connections: u32) -> Self {
        let url = database_url();
        let admin: PgConnectOptions = url
            .parse()
            .unwrap_or_else(|e| panic!("DATABASE_URL {url:?} is not a Postgres URL: {e}"));
        let admin = admin.disable_statement_logging();
        sweep_leftovers(&admin).await;

        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!("{DB_PREFIX}{secs}_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect_with(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!("cannot reach Postgres at {url}: {e} (run scripts/services.sh up)")
            });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = conn.close().await;

        let options = admin.clone().database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.clone())
            .await
            .unwrap_or_else(|e| panic!("connect to test database {name}: {e}"));
        for migrator in migrators {
            migrator
                .run(&pool)
                .await
                .unwrap_or_else(|e| panic!("migrate test database {name}: {e}"));
        }
        Self {
            pool,
            name,
            options: admin,
        }
    }

    /// The pool connected to this database.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The database's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connect options for this database (for a second, independently sized pool).
    #[must_use]
    pub fn connect_options(&self) -> PgConnectOptions {
        self.options.clone().database(&self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.options.clone();
        let name = std::mem::take(&mut self.name);
        // Drop runs on the test's runtime, which cannot be blocked on, so a thread with its own
        // small runtime does the clean-up and is joined: the database is gone on return. The
        // pool is left alone: its connections belong to the test's runtime (blocked here, on
        // a current-thread runtime nothing else would drive them), and `WITH (FORCE)` ends
        // them on the server side anyway.
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let drop_database = async {
                    let mut conn = PgConnection::connect_with(&admin).await?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await?;
                    conn.close().await
                };
                // A leftover is swept by a later run; a hung clean-up must not hang the test.
                let _ = tokio::time::timeout(Duration::from_secs(30), drop_database).await;
            });
        });
        let _ = handle.join();
    }
}

/// Drops test databases left behind by killed runs, once per process.
async fn sweep_leftovers(admin: &PgConnectOptions) {
    static SWEPT: OnceCell<()> = OnceCell::const_new();
    SWEPT
        .get_or_init(|| async {
            let Ok(mut conn) = PgConnection::connect_with(admin).await else {
                return;
            };
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT datname FROM pg_database WHERE datname LIKE 'ctest\\_%'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            for name in names {
                let created = name
                    .strip_prefix(DB_PREFIX)
                    .and_then(|rest| rest.split('_').next())
                    .and_then(|secs| secs.parse::<u64>().ok());
                if created.is_some_and(|secs| now.saturating_sub(secs) > LEFTOVER_AGE.as_secs()) {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            }
        })
        .await;
}
