//! commerce-client in one sitting: every route of the reference app through the typed client:
//! a product, an order placed under an idempotency key and repeated, its live status stream,
//! paging, typed errors, fulfilment, a receipt, the ledger, dead letters, the audit and the
//! health routes.
//!
//! ```text
//! cargo run -p commerce-examples --bin client-tour
//! COMMERCE_JWT_SECRET=... cargo run -p commerce-examples --bin client-tour -- --url http://127.0.0.1:8080
//! ```
//! Without `--url` it starts the reference app in this process on its own database
//! `commerce_example_client` on the `DATABASE_URL` server; with `--url` it drives a running
//! system, minting its tokens with that system's `COMMERCE_JWT_SECRET`.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use commerce_client::{
    ApiClient, CreateProduct, DeadLetterQuery, Inbound, ListQuery, MovementsQuery, OrderStatus,
    PlaceOrder, Shortage,
};
use futures::StreamExt;
use reference_app::auth::{Auth, Role};
use reference_app::config::{Config, Secret};
use reference_app::{Application, RunningApp};

#[derive(Debug, Parser)]
#[command(about = "A tour of the reference app's API through commerce-client")]
struct Args {
    /// A running system's base URL (default: start one in this process).
    #[arg(long)]
    url: Option<String>,
}

/// The secret of the in-process system.
const SECRET: &str = "client-tour-secret-0123456789abcdef-0123";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    commerce_examples::init_tracing();
    let args = Args::parse();
    let (url, secret, running) = match args.url {
        Some(url) => {
            let secret = std::env::var("COMMERCE_JWT_SECRET")
                .context("COMMERCE_JWT_SECRET: the running system's token key")?;
            (url, secret, None)
        }
        None => {
            let (url, running) = start_in_process().await?;
            (url, SECRET.to_owned(), Some(running))
        }
    };
    let auth = Auth::new(&Secret::new(secret))?;
    let hour = Duration::from_secs(3600);
    let admin = ApiClient::builder(&url)
        .bearer_token(auth.issue("tour-admin", Role::Admin, hour)?)
        .build()?;
    let alice = admin.with_token(auth.issue("tour-alice", Role::Customer, hour)?);
    tour(&admin, &alice).await?;
    if let Some(running) = running {
        running.stop().await?;
    }
    Ok(())
}

async fn tour(admin: &ApiClient, alice: &ApiClient) -> anyhow::Result<()> {
    println!("health: {:?}", admin.health().await?.status);
    println!("ready: {:?}", admin.ready().await?);

    let sku = format!("TOUR-{:x}", rand::random::<u32>());
    let kettle = admin
        .create_product(&CreateProduct {
            sku,
            name: "Kettle".into(),
            price: 3_999,
            initial_stock: 3,
        })
        .await?;
    println!(
        "created {} (id {}), {} in stock",
        kettle.name, kettle.id, kettle.available
    );

    // A placement under a key; repeating it returns the same order, marked as a replay.
    let order = PlaceOrder::one(kettle.id, 2);
    let placed = alice.place_order_with_key(&order, "tour-cart-1").await?;
    let again = alice.place_order_with_key(&order, "tour-cart-1").await?;
    println!(
        "order {} is {} ({}); the repeat is the same order: {}, a replay: {}",
        placed.order.id,
        placed.order.status,
        placed.status,
        again.order.id == placed.order.id,
        again.replayed
    );

    // Its live status: the current status first, then each change until the saga settles.
    let mut events = alice.order_events(placed.order.id).await?;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .context("no status event within 30 s")?
    {
        let event = event?;
        println!("  status event {:?}: {}", event.id, event.change.status);
        if event.change.status != OrderStatus::Created {
            break;
        }
    }

    // Typed errors: the API's code, message and details.
    match alice.place_order(&PlaceOrder::one(kettle.id, 5)).await {
        Err(e) => println!(
            "5 more: {:?} {:?}, details {}",
            e.status(),
            e.code(),
            e.details().cloned().unwrap_or_default()
        ),
        Ok(placed) => println!("5 more were placed?! {placed:?}"),
    }
    let waiting = alice
        .place_order(&PlaceOrder::one(kettle.id, 4).on_shortage(Shortage::Backorder))
        .await?;
    println!(
        "4 more, backordered: {} ({})",
        waiting.order.status, waiting.status
    );

    let receipt = admin
        .receive_stock(
            kettle.id,
            &Inbound {
                quantity: 10,
                note: Some("PO-TOUR".into()),
            },
        )
        .await?;
    println!(
        "a receipt of 10 served {:?}; {} available now",
        receipt.allocated_order_ids, receipt.available
    );

    let processing = admin.order(placed.order.id).await?;
    if processing.status == OrderStatus::Processing {
        admin.ship_order(processing.id).await?;
        let delivered = admin.deliver_order(processing.id).await?;
        println!("order {} is {}", delivered.id, delivered.status);
    }
    let cancelled = alice.cancel_order(waiting.order.id).await?;
    println!("order {} is {}", cancelled.id, cancelled.status);

    // Paging: the caller's orders, two per page, newest first.
    let mut page = ListQuery {
        limit: Some(2),
        cursor: None,
    };
    loop {
        let list = alice.orders(&page).await?;
        let ids: Vec<_> = list.items.iter().map(|o| o.status).collect();
        println!("a page of alice's orders: {ids:?}");
        match list.next_cursor {
            Some(cursor) => page.cursor = Some(cursor),
            None => break,
        }
    }
    let ledger = admin
        .movements(kettle.id, &MovementsQuery::default())
        .await?;
    for movement in &ledger.items {
        println!(
            "  ledger {}: {:?} {:+} -> {}",
            movement.id, movement.kind, movement.delta, movement.available_after
        );
    }
    let dead = admin.dead_letters(&DeadLetterQuery::default()).await?;
    println!("dead letters: {}", dead.len());
    let audit = admin.audit().await?;
    println!(
        "audit: consistent {} ({} products, {} orders)",
        audit.consistent, audit.products, audit.orders
    );
    Ok(())
}

/// The reference app on a fresh database of its own, serving in this process.
async fn start_in_process() -> anyhow::Result<(String, RunningApp)> {
    let server = commerce_testkit::database_url();
    let base = server
        .rsplit_once('/')
        .map_or(server.as_str(), |(base, _)| base);
    let url = format!("{base}/commerce_example_client");
    // Fresh each run, like the other examples' databases.
    commerce_testkit::scratch_database("commerce_example_client", &[], 1)
        .await
        .map_err(|e| anyhow::anyhow!("database: {e} (run scripts/services.sh up)"))?
        .close()
        .await;
    let mut config = Config::local(url, SECRET);
    config.events.prefix = commerce_testkit::unique_name("tour");
    let app = Application::build(config).await?;
    let url = app.base_url();
    Ok((url, app.spawn()))
}
