//! Shared helpers for the example programs and the load harness.

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// `DATABASE_URL`, or the machine's local Postgres.
#[must_use]
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Drops and recreates database `name` on the `DATABASE_URL` server, runs commerce-core's
/// migrations and returns a pool of `connections` to it. Examples use their own database so
/// they never touch an application's data.
///
/// # Errors
/// When the server cannot be reached or a statement fails.
pub async fn fresh_database(name: &str, connections: u32) -> anyhow::Result<PgPool> {
    let url = database_url();
    let admin: PgConnectOptions = url.parse().context("DATABASE_URL")?;
    let admin = admin.disable_statement_logging();
    let mut conn = PgConnection::connect_with(&admin)
        .await
        .with_context(|| format!("connect to {url} (run scripts/services.sh up)"))?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect_with(admin.database(name))
        .await?;
    commerce_core::MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Logs to stderr at `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}
