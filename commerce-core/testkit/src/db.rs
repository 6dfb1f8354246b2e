//! Scratch Postgres databases: one per test ([`TestDb`]), or a named one ([`scratch_database`]).

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;

use crate::{database_url, unix_secs};

/// Test databases are named `ctest_<unix seconds>_<unique>` so a sweep can find leftovers.
const DB_PREFIX: &str = "ctest_";
/// Leftover test databases older than this are dropped by the first test of a run.
const LEFTOVER_AGE: Duration = Duration::from_secs(3600);

/// A freshly created Postgres database with the given migrations applied.
///
/// The database is dropped (`WITH (FORCE)`) when the value is dropped, also when the test
/// panics. Databases leaked by killed test processes are swept by the next run.
pub struct TestDb {
    pool: PgPool,
    name: String,
    options: PgConnectOptions,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
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

        let name = format!(
            "{DB_PREFIX}{}_{}",
            unix_secs(),
            uuid::Uuid::new_v4().simple()
        );
        let mut conn = PgConnection::connect_with(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!("cannot reach Postgres at {url}: {e} (run scripts/services.sh up)")
            });
        sqlx::query(&format!("CREATE DATABASE {}", quote_ident(&name)))
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

    /// A URL of this database (`DATABASE_URL` with the database name replaced), for code
    /// under test that connects by URL.
    #[must_use]
    pub fn url(&self) -> String {
        database_url_for(&database_url(), &self.name)
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
                    sqlx::query(&drop_database_sql(&name))
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
            let now = unix_secs();
            for name in names {
                let created = name
                    .strip_prefix(DB_PREFIX)
                    .and_then(|rest| rest.split('_').next())
                    .and_then(|secs| secs.parse::<u64>().ok());
                if created.is_some_and(|secs| now.saturating_sub(secs) > LEFTOVER_AGE.as_secs()) {
                    let _ = sqlx::query(&drop_database_sql(&name))
                        .execute(&mut conn)
                        .await;
                }
            }
        })
        .await;
}

/// Drops and recreates database `name` on the `DATABASE_URL` server, applies `migrators` in
/// order and returns a pool of `connections` to it. For examples and load harnesses, which
/// keep a database of their own (by name, so a rerun starts clean) and never touch an
/// application's data.
///
/// # Errors
/// When the server cannot be reached or a statement or migration fails.
pub async fn scratch_database(
    name: &str,
    migrators: &[&Migrator],
    connections: u32,
) -> Result<PgPool, sqlx::Error> {
    let admin: PgConnectOptions = database_url().parse()?;
    let admin = admin.disable_statement_logging();
    let mut conn = PgConnection::connect_with(&admin).await?;
    sqlx::query(&drop_database_sql(name))
        .execute(&mut conn)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {}", quote_ident(name)))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(admin.database(name))
        .await?;
    for migrator in migrators {
        migrator.run(&pool).await?;
    }
    Ok(pool)
}

/// `url` with its database (the path) replaced by `name`, query kept.
fn database_url_for(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    // The path starts at the first `/` after the `scheme://authority` part.
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

fn drop_database_sql(name: &str) -> String {
    format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name))
}

/// `name` as a quoted SQL identifier (names found on the server are not trusted).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whole-table reads (`pg_stat_user_tables.seq_scan`) of `schema.table` so far, read on
/// `conn` after telling that backend to report its own counts now.
///
/// A backend reports its counts when it goes idle, at most once a second, and as it ends:
/// a test that counts another backend's reads must wait for that report (e.g. close the
/// pool that ran them) before calling this. Tests use it to show a statement keeps finding
/// rows by index, for instance a prepared one whose table grew after its plan was made.
///
/// # Panics
/// When the statistics cannot be read, or the table does not exist.
pub async fn seq_scans(conn: &mut PgConnection, schema: &str, table: &str) -> i64 {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .expect("pg_stat_force_next_flush");
    sqlx::query_scalar(
        "SELECT seq_scan FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2",
    )
    .bind(schema)
    .bind(table)
    .persistent(false)
    .fetch_one(&mut *conn)
    .await
    .unwrap_or_else(|e| panic!("seq_scan of {schema}.{table}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::database_url_for;

    #[test]
    fn the_database_name_is_replaced() {
        assert_eq!(
            database_url_for("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            database_url_for("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(database_url_for("postgres://h", "x"), "postgres://h/x");
    }
}
