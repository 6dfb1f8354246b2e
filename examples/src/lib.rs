//! Shared helpers for the example programs and the load harnesses.

pub mod load;

use sqlx::PgPool;

/// A database of the example's own, `name`, on the `DATABASE_URL` server (the machine's local
/// Postgres by default): dropped and recreated, with commerce-core's and commerce-outbox's
/// migrations applied, and a
/// pool of `connections` to it. Examples never touch an application's data.
///
/// # Errors
/// When the server cannot be reached or a statement fails.
pub async fn fresh_database(name: &str, connections: u32) -> anyhow::Result<PgPool> {
    commerce_testkit::scratch_database(
        name,
        &[&commerce_core::MIGRATOR, &commerce_outbox::MIGRATOR],
        connections,
    )
    .await
    .map_err(|e| anyhow::anyhow!("database {name}: {e} (run scripts/services.sh up)"))
}

/// Logs to stderr at `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // A pool wait over 2 s is what a load run measures (2,000 clients on 32
                // connections), not news: sqlx would warn once per request.
                .unwrap_or_else(|_| "info,sqlx=warn,sqlx::pool::acquire=error".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}
