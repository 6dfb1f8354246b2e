//! The flash sale through HTTP: 2,000 customers order the same product at the same instant;
//! the stock (500) goes to exactly 500 of them, the others get `insufficient_stock`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestApp, Transport};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::Barrier;

const CUSTOMERS: usize = 2_000;
const STOCK: i64 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_orders_for_five_hundred_units() {
    let app = TestApp::start(Transport::InProcess).await;
    let product = app.product("FLASH-1", 1_000, STOCK).await;
    let start = Arc::new(Barrier::new(CUSTOMERS));
    let orders: Vec<_> = (0..CUSTOMERS)
        .map(|n| {
            let (client, url) = (app.client.clone(), app.url.clone());
            let token = app.customer(&format!("crowd-{n}"));
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                let response = client
                    .post(format!("{url}/api/v1/orders"))
                    .bearer_auth(token)
                    .json(&json!({"items": [{"product_id": product, "quantity": 1}]}))
                    .send()
                    .await
                    .expect("request sent");
                let status = response.status();
                (
                    status,
                    response.json::<Value>().await.unwrap_or(Value::Null),
                )
            })
        })
        .collect();
    let (mut created, mut sold_out, mut other) = (0, 0, Vec::new());
    for order in orders {
        let (status, body) = commerce_testkit::within(Duration::from_secs(300), order)
            .await
            .unwrap();
        match (status, body["error"]["code"].as_str()) {
            (StatusCode::CREATED, _) => created += 1,
            (StatusCode::CONFLICT, Some("insufficient_stock")) => sold_out += 1,
            _ => other.push((status, body)),
        }
    }
    assert!(
        other.is_empty(),
        "unexpected answers: {:?}",
        &other[..other.len().min(5)]
    );
    assert_eq!(created, 500);
    assert_eq!(sold_out, CUSTOMERS - 500);
    let stock = app
        .get(&format!("/api/v1/products/{product}/stock"), &app.admin)
        .await;
    assert_eq!(stock.body["available"], 0);
    app.assert_audit_clean().await;
    app.stop().await;
}
