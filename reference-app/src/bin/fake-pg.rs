//! The stand-in payment gateway as its own process: settings from `FAKE_PG_*` (see
//! `reference_app::fake_pg::FakePgConfig`), Ctrl-C to stop after the requests under way.

use anyhow::Context;
use reference_app::fake_pg::{self, FakePgConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = FakePgConfig::from_env()?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("bind {}", config.addr))?;
    let (router, _control) = fake_pg::router(&config);
    tracing::info!(
        addr = %listener.local_addr()?,
        latency_ms = config.latency.as_millis(),
        failure_rate = config.failure_rate,
        decline_above = config.decline_above,
        "fake payment gateway listening"
    );
    fake_pg::serve(listener, router, shutdown_signal()).await?;
    tracing::info!("fake payment gateway stopped");
    Ok(())
}

async fn shutdown_signal() {
    if let Err(error) = tokio::signal::ctrl_c().await {
        // Without a signal handler the process is stopped from outside; keep serving till then.
        tracing::error!(%error, "cannot listen for Ctrl-C");
        std::future::pending::<()>().await;
    }
}
