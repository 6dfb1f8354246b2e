//! The stand-in payment gateway as its own process: settings from `STAND_IN_GATEWAY_*` (see
//! `reference_app::services::payment::stand_in::StandInConfig`), Ctrl-C or SIGTERM to stop
//! after the requests under way. For local runs and tests: it approves every charge up to its
//! limit, no real money moves.

use anyhow::Context;
use reference_app::services::payment::stand_in::{self, StandInConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    reference_app::telemetry::init_logs();
    let config = StandInConfig::from_env()?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("bind {}", config.addr))?;
    let (router, _control) = stand_in::router(&config);
    tracing::info!(
        addr = %listener.local_addr()?,
        latency_ms = config.latency.as_millis(),
        failure_rate = config.failure_rate,
        decline_above = config.decline_above,
        "stand-in payment gateway listening (no real money moves)"
    );
    stand_in::serve(listener, router, reference_app::shutdown_signal()).await?;
    tracing::info!("stand-in payment gateway stopped");
    Ok(())
}
