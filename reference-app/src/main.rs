//! `reference-app`: serves the order system (default), prints a token, or drives the demo
//! scenario against a running system. See the README.

mod demo;

/// mimalloc instead of glibc's malloc: under a surge glibc's allocator (its arena locks and
/// consolidation) took about a quarter of the process's CPU (`perf`, `docs/performance.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use reference_app::auth::{Auth, Role};
use reference_app::config::{AuthSettings, GatewayConfig, Secret, Service};
use reference_app::gateway::Gateway;
use reference_app::{Application, Config};

#[derive(Debug, Parser)]
#[command(version, about = "The commerce-rs reference order system")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the order system until Ctrl-C (the default; configured by the environment).
    Serve {
        /// Which services this process runs: all (the default), order, payment or store
        /// (overrides `SERVICE`; apart, they need KAFKA_BROKERS and REDIS_URL), or gateway
        /// (the public entry in front of them: GATEWAY_ORDER_URLS, GATEWAY_STORE_URLS).
        #[arg(long)]
        service: Option<String>,
    },
    /// Print a bearer token signed with COMMERCE_JWT_SECRET.
    Token {
        /// The user id.
        #[arg(long)]
        sub: String,
        /// `customer` or `admin`.
        #[arg(long, value_enum, default_value = "customer")]
        role: Role,
        /// Hours until it expires (at most TOKEN_MAX_LIFETIME_HOURS, default 24).
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
    /// Drive the end-to-end scenario through the HTTP API of a running system.
    Demo {
        /// The system's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Customers ordering at the same instant.
        #[arg(long, default_value_t = 200)]
        customers: usize,
        /// Seed of the customers' choices.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
}

/// The `--service` (or `SERVICE`) value of the gateway.
const GATEWAY: &str = "gateway";

fn secret() -> anyhow::Result<Secret> {
    let secret = std::env::var("COMMERCE_JWT_SECRET").context(
        "COMMERCE_JWT_SECRET is not set (the key the running system checks tokens with)",
    )?;
    Ok(Secret::new(secret))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    reference_app::telemetry::init_logs();
    match Cli::parse()
        .command
        .unwrap_or(Command::Serve { service: None })
    {
        Command::Serve { service } => {
            // The flag stands for `SERVICE`, before the checks that depend on it.
            let service = service.or_else(|| std::env::var("SERVICE").ok());
            if service.as_deref().map(str::trim) == Some(GATEWAY) {
                let gateway = Gateway::build(GatewayConfig::from_env()?).await?;
                println!("gateway serving on {}", gateway.base_url());
                let served = gateway.run_until_stopped().await;
                reference_app::telemetry::shutdown();
                return served;
            }
            let service: Option<Service> = service
                .map(|name| name.parse())
                .transpose()
                .context("--service (or SERVICE): all, order, payment, store or gateway")?;
            let config = Config::from_lookup(|name| match service {
                Some(service) if name == "SERVICE" => Some(service.name().to_owned()),
                _ => std::env::var(name).ok(),
            })?;
            let app = Application::build(config).await?;
            println!("serving on {}", app.base_url());
            let served = app.run_until_stopped().await;
            reference_app::telemetry::shutdown();
            served
        }
        Command::Token { sub, role, hours } => {
            let settings = AuthSettings::from_env()?;
            let lifetime = Duration::from_secs(hours.saturating_mul(3600));
            anyhow::ensure!(
                !lifetime.is_zero() && lifetime <= settings.max_token_lifetime,
                "--hours {hours}: must be 1 to {} (TOKEN_MAX_LIFETIME_HOURS)",
                settings.max_token_lifetime.as_secs() / 3600
            );
            let token = Auth::new(&settings.jwt_secret)?.issue(&sub, role, lifetime)?;
            println!("{token}");
            Ok(())
        }
        Command::Demo {
            url,
            customers,
            seed,
        } => {
            demo::run(demo::DemoSettings {
                url,
                secret: secret()?,
                customers: customers.max(1),
                seed,
            })
            .await
        }
    }
}
