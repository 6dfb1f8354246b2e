//! `reference-app demo --url URL` (a module of the binary, not of the library): the end-to-end
//! scenario, driven through the HTTP API of a running system with `commerce-client`: a
//! catalogue, a crowd ordering at the same instant (both shortage policies, repeated
//! requests), a restock serving the backorders, the payment saga (approved orders
//! PROCESSING, a declined payment compensated), fulfilment and a cancellation, then the audit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use commerce_client::{
    ApiClient, CreateProduct, Inbound, OrderStatus, PlaceOrder, RetryPolicy, Shortage, StatusCode,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reference_app::auth::{Auth, Role};
use reference_app::config::Secret;
use tokio::sync::Barrier;
use uuid::Uuid;

/// What the demo does.
#[derive(Debug, Clone)]
pub(crate) struct DemoSettings {
    /// The running system, e.g. `http://127.0.0.1:8080`.
    pub(crate) url: String,
    /// The system's `COMMERCE_JWT_SECRET` (to mint the demo's tokens).
    pub(crate) secret: Secret,
    /// Customers ordering at the same instant.
    pub(crate) customers: usize,
    /// Seed of their choices.
    pub(crate) seed: u64,
}

/// Attempts of a customer's placement. The crowd arrives at one instant; a gateway admitting
/// by its adaptive bound (decision 0016) takes what its instances answer in time and refuses
/// the rest at once with 429 and `Retry-After: 1`, growing the bound with each round of fast
/// answers. A buyer asks again then, under the same key, as often as a flash-sale buyer would:
/// the client's default of 3 attempts gives up while the bound is still growing, and on a
/// machine in a slow spell (answers near the latency target grow the bound slowly) 10 did too.
const CUSTOMER_ATTEMPTS: u32 = 20;

/// The demo's callers: an admin, and customers minted on demand.
struct Cast {
    admin: ApiClient,
    auth: Auth,
    run: String,
}

impl Cast {
    fn customer(&self, name: &str) -> anyhow::Result<ApiClient> {
        let token = self.auth.issue(
            &format!("demo-{}-{name}", self.run),
            Role::Customer,
            Duration::from_secs(3600),
        )?;
        Ok(self
            .admin
            .with_token(token)
            .with_retry(RetryPolicy::default().attempts(CUSTOMER_ATTEMPTS)))
    }
}

/// An order of the demo and the customer who placed it.
type Placed = (Uuid, ApiClient);

/// Runs the scenario and prints what happened; fails when the system misbehaves or the audit
/// finds an inconsistency.
///
/// # Errors
/// HTTP failures, unexpected answers, an order stuck, an inconsistent audit.
pub(crate) async fn run(settings: DemoSettings) -> anyhow::Result<()> {
    let auth = Auth::new(&settings.secret)?;
    let admin = ApiClient::builder(&settings.url)
        .bearer_token(auth.issue("demo-admin", Role::Admin, Duration::from_secs(3600))?)
        .pool_max_idle_per_host(settings.customers)
        .build()?;
    let cast = Cast {
        admin,
        auth,
        run: format!("{:x}", rand::random::<u32>()),
    };
    println!("demo run {} against {}", cast.run, cast.admin.base_url());

    let products = catalogue(&cast).await?;
    let (everyday, kettle) = products.split_at(4);
    let mut orders = crowd(&cast, everyday, &settings).await?;
    restock(&cast, everyday).await?;
    orders.push(declined_payment(&cast, kettle[0]).await?);
    let statuses = saga_outcomes(&orders).await?;
    fulfilment(&cast, &orders, &statuses).await?;

    let audit = cast.admin.audit().await?;
    if !audit.consistent {
        bail!("audit failed: {:?}", audit.violations);
    }
    println!(
        "audit: {} products, {} orders: stock equals the ledger, nothing oversold, backorders consistent",
        audit.products, audit.orders
    );
    Ok(())
}

/// Four everyday products and one so dear that its payment is declined (last).
async fn catalogue(cast: &Cast) -> anyhow::Result<Vec<i64>> {
    let catalogue = [
        ("Espresso machine", 24_900, 20),
        ("Burr grinder", 12_900, 10),
        ("Milk jug", 1_990, 60),
        ("Limited-edition mug", 2_500, 5),
        ("Gold-plated kettle", 650_000, 3),
    ];
    let mut products = Vec::new();
    for (i, (name, price, stock)) in catalogue.into_iter().enumerate() {
        let product = cast
            .admin
            .create_product(&CreateProduct {
                sku: format!("DEMO-{}-{i}", cast.run),
                name: name.to_owned(),
                price,
                initial_stock: stock,
            })
            .await
            .context("create a product")?;
        products.push(product.id);
    }
    println!("catalogue: {} products created", products.len());
    Ok(products)
}

/// The crowd orders at the same instant; every fifth customer repeats the request under the
/// same key and must get the first order back.
async fn crowd(
    cast: &Cast,
    products: &[i64],
    settings: &DemoSettings,
) -> anyhow::Result<Vec<Placed>> {
    let barrier = Arc::new(Barrier::new(settings.customers));
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let mut crowd = Vec::new();
    for n in 0..settings.customers {
        let customer = cast.customer(&n.to_string())?;
        let barrier = Arc::clone(&barrier);
        let order = PlaceOrder::one(
            products[rng.gen_range(0..products.len())],
            rng.gen_range(1..=2),
        )
        .on_shortage(if rng.gen_bool(0.4) {
            Shortage::Backorder
        } else {
            Shortage::Reject
        });
        let repeat = n % 5 == 0;
        crowd.push(tokio::spawn(async move {
            let key = format!("order-{n}");
            barrier.wait().await;
            let first = customer.place_order_with_key(&order, &key).await;
            let again = if repeat {
                Some(customer.place_order_with_key(&order, &key).await)
            } else {
                None
            };
            (customer, first, again)
        }));
    }
    let started = Instant::now();
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut orders = Vec::new();
    let mut repeats_ok = 0;
    for customer in crowd {
        let (customer, first, again) = customer.await?;
        let placed = match first {
            Ok(placed) => placed,
            Err(e) if e.code() == Some("insufficient_stock") => {
                *outcomes.entry("insufficient stock").or_default() += 1;
                continue;
            }
            Err(e) => bail!("unexpected answer to an order: {e}"),
        };
        let outcome = if placed.status == StatusCode::ACCEPTED {
            "backordered"
        } else {
            "created"
        };
        *outcomes.entry(outcome).or_default() += 1;
        if let Some(again) = again {
            let again = again.context("a repeated request")?;
            if !again.replayed || again.order.id != placed.order.id || again.status != placed.status
            {
                bail!("a repeated request got another answer: {again:?}");
            }
            repeats_ok += 1;
        }
        orders.push((placed.order.id, customer));
    }
    println!(
        "{} customers ordered at once in {:.0} ms: {outcomes:?}; {repeats_ok} repeated requests got the first order back",
        settings.customers,
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(orders)
}

/// The restock serves backorders, oldest first.
async fn restock(cast: &Cast, products: &[i64]) -> anyhow::Result<()> {
    for &product in products {
        let receipt = cast
            .admin
            .receive_stock(
                product,
                &Inbound {
                    quantity: 40,
                    note: Some(format!("demo restock {}", cast.run)),
                },
            )
            .await?;
        let served = receipt.allocated_order_ids.len();
        if served > 0 {
            println!("restock of product {product}: served {served} backordered orders");
        }
    }
    Ok(())
}

/// A payment the gateway declines: the saga cancels the order and returns its stock.
async fn declined_payment(cast: &Cast, kettle: i64) -> anyhow::Result<Placed> {
    let buyer = cast.customer("big-spender")?;
    let placed = buyer.place_order(&PlaceOrder::one(kettle, 2)).await?;
    if placed.order.status != OrderStatus::Created {
        bail!("the dear order was not created: {:?}", placed.order);
    }
    Ok((placed.order.id, buyer))
}

/// Waits until every order has left CREATED (PROCESSING once paid, CANCELLED when declined)
/// and prints the outcome; returns each order's status.
async fn saga_outcomes(orders: &[Placed]) -> anyhow::Result<BTreeMap<Uuid, OrderStatus>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut statuses = BTreeMap::new();
    loop {
        statuses.clear();
        for (id, customer) in orders {
            statuses.insert(*id, customer.order(*id).await?.status);
        }
        if statuses.values().all(|s| *s != OrderStatus::Created) {
            break;
        }
        if Instant::now() > deadline {
            bail!("orders still CREATED after 60 s: the saga did not finish");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (declined_id, buyer) = orders.last().context("the declined order")?;
    let declined = buyer.order(*declined_id).await?;
    let reason = declined.history.last().map_or("", |h| h.reason.as_str());
    println!(
        "declined payment: order {declined_id} is {} ({reason})",
        declined.status
    );
    let mut counts: BTreeMap<OrderStatus, usize> = BTreeMap::new();
    for status in statuses.values() {
        *counts.entry(*status).or_default() += 1;
    }
    println!("after the payment saga: {counts:?}");
    Ok(statuses)
}

/// Ships and delivers the paid orders; one customer in seven cancels instead (refunded).
async fn fulfilment(
    cast: &Cast,
    orders: &[Placed],
    statuses: &BTreeMap<Uuid, OrderStatus>,
) -> anyhow::Result<()> {
    let (mut shipped, mut cancelled) = (0, 0);
    for (i, (id, customer)) in orders.iter().enumerate() {
        if statuses.get(id) != Some(&OrderStatus::Processing) {
            continue;
        }
        if i % 7 == 0 {
            customer.cancel_order(*id).await.context("cancel")?;
            cancelled += 1;
            continue;
        }
        cast.admin.ship_order(*id).await.context("ship")?;
        cast.admin.deliver_order(*id).await.context("deliver")?;
        shipped += 1;
    }
    println!("fulfilment: {shipped} orders shipped and delivered, {cancelled} cancelled by their customers (paid ones refunded)");
    Ok(())
}
