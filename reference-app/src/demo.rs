//! `reference-app demo --url URL`: the end-to-end scenario, driven through the HTTP API of a
//! running system: a catalogue, a crowd ordering at the same instant (both shortage
//! policies, repeated requests), a restock serving the backorders, the payment saga
//! (approved orders PROCESSING, a declined payment compensated), fulfilment and a
//! cancellation, then the audit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Barrier;

use crate::auth::{Auth, Role};
use crate::config::Secret;

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoSettings {
    /// The running system, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// The system's `COMMERCE_JWT_SECRET` (to mint the demo's tokens).
    pub secret: Secret,
    /// Customers ordering at the same instant.
    pub customers: usize,
    /// Seed of their choices.
    pub seed: u64,
}

struct Api {
    client: Client,
    url: String,
    admin: String,
    auth: Auth,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.with_context(|| path.to_owned())?;
        let status = response.status();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, body) = self.call(method, path, &self.admin, body, None).await?;
        if !status.is_success() {
            bail!("{path}: {status} {body}");
        }
        Ok(body)
    }

    fn customer(&self, name: &str) -> anyhow::Result<String> {
        Ok(self
            .auth
            .issue(name, Role::Customer, Duration::from_secs(3600))?)
    }
}

/// Runs the scenario and prints what happened; fails when the system misbehaves or the audit
/// finds an inconsistency.
///
/// # Errors
/// HTTP failures, unexpected answers, an order stuck, an inconsistent audit.
pub async fn run(settings: DemoSettings) -> anyhow::Result<()> {
    let auth = Auth::new(&settings.secret)?;
    let api = Arc::new(Api {
        client: Client::builder().timeout(Duration::from_secs(30)).build()?,
        url: settings.url.trim_end_matches('/').to_owned(),
        admin: auth.issue("demo-admin", Role::Admin, Duration::from_secs(3600))?,
        auth,
    });
    let run = format!("{:x}", rand::random::<u32>());
    println!("demo run {run} against {}", api.url);

    // The catalogue: four everyday products and one so dear that its payment is declined.
    let catalogue = [
        ("Espresso machine", 24_900, 20),
        ("Burr grinder", 12_900, 10),
        ("Milk jug", 1_990, 60),
        ("Limited-edition mug", 2_500, 5),
        ("Gold-plated kettle", 650_000, 3),
    ];
    let mut products = Vec::new();
    for (i, (name, price, stock)) in catalogue.iter().enumerate() {
        let body = json!({"sku": format!("DEMO-{run}-{i}"), "name": name, "price": price, "initial_stock": stock});
        let product = api
            .admin(Method::POST, "/api/v1/products", Some(body))
            .await?;
        products.push(product["id"].as_i64().context("product id")?);
    }
    let everyday = &products[..4];
    let kettle = products[4];
    println!("catalogue: {} products created", products.len());

    // The crowd.
    let barrier = Arc::new(Barrier::new(settings.customers));
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let mut crowd = Vec::new();
    for n in 0..settings.customers {
        let api = Arc::clone(&api);
        let barrier = Arc::clone(&barrier);
        let product = everyday[rng.gen_range(0..everyday.len())];
        let quantity = rng.gen_range(1..=2);
        let backorder = rng.gen_bool(0.4);
        let repeat = n % 5 == 0;
        let token = api.customer(&format!("demo-{run}-{n}"))?;
        crowd.push(tokio::spawn(async move {
            let body = json!({
                "items": [{"product_id": product, "quantity": quantity}],
                "on_shortage": if backorder { "backorder" } else { "reject" },
            });
            let key = format!("order-{n}");
            barrier.wait().await;
            let first = api
                .call(
                    Method::POST,
                    "/api/v1/orders",
                    &token,
                    Some(body.clone()),
                    Some(&key),
                )
                .await;
            let again = if repeat {
                Some(
                    api.call(
                        Method::POST,
                        "/api/v1/orders",
                        &token,
                        Some(body),
                        Some(&key),
                    )
                    .await,
                )
            } else {
                None
            };
            (token, first, again)
        }));
    }
    let started = Instant::now();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut orders: Vec<(String, String)> = Vec::new();
    let mut repeats_ok = 0;
    for customer in crowd {
        let (token, first, again) = customer.await?;
        let (status, body) = first?;
        let outcome = match status {
            StatusCode::CREATED => "created",
            StatusCode::ACCEPTED => "backordered",
            StatusCode::CONFLICT => "insufficient stock",
            other => bail!("unexpected answer to an order: {other} {body}"),
        };
        *outcomes.entry(outcome.to_owned()).or_default() += 1;
        if let Some(id) = body["id"].as_str() {
            orders.push((id.to_owned(), token));
            if let Some(again) = again {
                let (status_again, body_again) = again?;
                if status_again == status && body_again["id"] == body["id"] {
                    repeats_ok += 1;
                } else {
                    bail!("a repeated request got another answer: {status_again} {body_again}");
                }
            }
        }
    }
    println!(
        "{} customers ordered at once in {:.0} ms: {outcomes:?}; {repeats_ok} repeated requests got the first order back",
        settings.customers,
        started.elapsed().as_secs_f64() * 1000.0
    );

    // The restock serves backorders, oldest first.
    for product in everyday {
        let receipt = api
            .admin(
                Method::POST,
                &format!("/api/v1/products/{product}/inbound"),
                Some(json!({"quantity": 40, "note": format!("demo restock {run}")})),
            )
            .await?;
        let served = receipt["allocated_order_ids"]
            .as_array()
            .map_or(0, Vec::len);
        if served > 0 {
            println!("restock of product {product}: served {served} backordered orders");
        }
    }

    // A payment the gateway declines: the saga cancels the order and returns its stock.
    let buyer = api.customer(&format!("demo-{run}-big-spender"))?;
    let (status, declined) = api
        .call(
            Method::POST,
            "/api/v1/orders",
            &buyer,
            Some(json!({"items": [{"product_id": kettle, "quantity": 2}]})),
            None,
        )
        .await?;
    if status != StatusCode::CREATED {
        bail!("the dear order was not created: {status} {declined}");
    }
    let declined_id = declined["id"].as_str().context("order id")?.to_owned();
    orders.push((declined_id.clone(), buyer));

    // Every order leaves CREATED: PROCESSING once paid, CANCELLED when declined.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut statuses: BTreeMap<String, String> = BTreeMap::new();
    loop {
        statuses.clear();
        for (id, token) in &orders {
            let (_, order) = api
                .call(
                    Method::GET,
                    &format!("/api/v1/orders/{id}"),
                    token,
                    None,
                    None,
                )
                .await?;
            statuses.insert(
                id.clone(),
                order["status"].as_str().unwrap_or("?").to_owned(),
            );
        }
        if statuses.values().all(|s| s != "CREATED") {
            break;
        }
        if Instant::now() > deadline {
            bail!("orders still CREATED after 60 s: the saga did not finish");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, declined) = api
        .call(
            Method::GET,
            &format!("/api/v1/orders/{declined_id}"),
            &orders.last().context("buyer")?.1,
            None,
            None,
        )
        .await?;
    let reason = declined["history"]
        .as_array()
        .and_then(|h| h.last())
        .map_or_else(String::new, |h| h["reason"].to_string());
    println!(
        "declined payment: order {declined_id} is {} ({reason})",
        declined["status"]
    );
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for status in statuses.values() {
        *counts.entry(status.as_str()).or_default() += 1;
    }
    println!("after the payment saga: {counts:?}");

    // Fulfilment: ship and deliver the paid orders, one customer cancels.
    let mut shipped = 0;
    let mut cancelled = 0;
    for (i, (id, token)) in orders.iter().enumerate() {
        if statuses.get(id).map(String::as_str) != Some("PROCESSING") {
            continue;
        }
        if i % 7 == 0 {
            let (status, body) = api
                .call(
                    Method::POST,
                    &format!("/api/v1/orders/{id}/cancel"),
                    token,
                    None,
                    None,
                )
                .await?;
            if status != StatusCode::OK {
                bail!("cancel: {status} {body}");
            }
            cancelled += 1;
            continue;
        }
        api.admin(Method::POST, &format!("/api/v1/orders/{id}/ship"), None)
            .await?;
        api.admin(Method::POST, &format!("/api/v1/orders/{id}/deliver"), None)
            .await?;
        shipped += 1;
    }
    println!("fulfilment: {shipped} orders shipped and delivered, {cancelled} cancelled by their customers (paid ones refunded)");

    let audit = api.admin(Method::GET, "/api/v1/admin/audit", None).await?;
    if audit["consistent"] != json!(true) {
        bail!("audit failed: {}", audit["violations"]);
    }
    println!(
        "audit: {} products, {} orders: stock equals the ledger, nothing oversold, backorders consistent",
        audit["products"], audit["orders"]
    );
    Ok(())
}
