//! The commerce-rs reference order system: an axum HTTP service assembling the library
//! crates into order, payment and store services with a choreographed payment saga.
//!
//! - **Order service** ([`services::order`]): places orders (stock and order in one
//!   transaction, commerce-core), shows and streams them, fulfilment, and the order side of
//!   the saga (start it, apply the payment's answer, time it out).
//! - **Payment service** ([`services::payment`]): charges the external payment gateway
//!   ([`services::payment::gateway`]: timeouts, retries, breaker, the outcome rules) and
//!   answers with events.
//! - **Store service** ([`services::store`]): catalogue (read through commerce-cache), stock,
//!   inbound stock, the ledger.
//! - [`services::payment::stand_in`]: the stand-in payment gateway, for local runs and tests
//!   (also its own binary, `stand-in-gateway`).
//!
//! The services talk only through events (commerce-outbox: Kafka when configured, in-process
//! otherwise) and HTTP. [`Application`] assembles them in one process (the all-in-one mode,
//! on Postgres alone by default).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = reference_app::Config::from_env()?;
//! let app = reference_app::Application::build(config).await?;
//! println!("serving on port {}", app.port());
//! app.run_until_stopped().await?;
//! # Ok(()) }
//! ```

// An application: `pub` inside a private module is the crate's own surface, not an API.
#![allow(unreachable_pub)]

// Public where the binaries, the tests, the examples or the load harness use the module;
// the rest is the app's own, so the dead-code lint sees it.
mod app;
pub mod auth;
pub mod config;
mod events;
pub mod gateway;
mod http;
mod openapi;
pub mod services;
pub mod telemetry;

pub use app::{shutdown_signal, Application, RunningApp};
pub use config::Config;

/// The reference app's own migrations (schemas `store` and `payment`); run after
/// commerce-core's and commerce-outbox's. Other crates' migrations share the database's
/// migration table, so missing versions are ignored.
pub static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| {
        let mut migrator = sqlx::migrate!();
        migrator.set_ignore_missing(true);
        migrator
    });

/// Every migration the app runs on its database, in the order it runs them, each with the
/// crate it belongs to: commerce-core's, commerce-outbox's, then the app's own ([`MIGRATOR`]).
/// A test that needs the app's whole schema gives these to its database.
#[must_use]
pub fn migrators() -> [(&'static str, &'static sqlx::migrate::Migrator); 3] {
    [
        ("commerce-core", &commerce_core::MIGRATOR),
        ("commerce-outbox", &commerce_outbox::MIGRATOR),
        ("reference-app", &MIGRATOR),
    ]
}
