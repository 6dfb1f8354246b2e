//! The order system through HTTP, with the payment saga, on both event transports: each
//! scenario runs once in-process (Postgres alone) and once over Kafka.

mod common;

use std::time::Duration;

use common::{TestApp, Transport};
use reqwest::StatusCode;
use serde_json::json;

/// One `#[tokio::test]` per transport for each scenario.
macro_rules! on_both_transports {
    ($($scenario:ident),* $(,)?) => {
        mod in_process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Transport::InProcess).await;
                }
            )*
        }
        mod kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Transport::Kafka).await;
                }
            )*
        }
    };
}

on_both_transports!(
    an_order_is_paid_watched_live_shipped_and_delivered,
    a_declined_payment_cancels_the_order_and_restores_stock_and_ledger,
    a_gateway_that_recovers_ends_processing,
    a_gateway_that_stays_down_ends_cancelled_by_the_saga_timeout,
    cancelling_a_paid_order_refunds_it,
);

const SAGA_DONE: Duration = Duration::from_secs(30);

async fn an_order_is_paid_watched_live_shipped_and_delivered(transport: Transport) {
    let app = TestApp::start(transport).await;
    let product = app.product("KET-1", 3_999, 10).await;
    let alice = app.customer("alice");
    // A slow gateway keeps the order CREATED while the watcher connects.
    app.running()
        .stand_in_gateway()
        .unwrap()
        .set_latency(Duration::from_millis(500));

    let placed = app.order(&alice, product, 2).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{placed:?}");
    assert_eq!(placed.body["status"], "CREATED");
    assert_eq!(placed.body["total"], 7_998);
    assert_eq!(placed.body["items"][0]["unit_price"], 3_999);
    let id = placed.body["id"].as_str().unwrap().to_owned();

    // Watch it live: the current status first, then PROCESSING once the payment is approved;
    // the stream ends after the final status.
    let watcher = {
        let (url, client, token, id) = (
            app.url.clone(),
            app.client.clone(),
            alice.clone(),
            id.clone(),
        );
        tokio::spawn(async move {
            let probe = TestAppProbe { url, client };
            probe.statuses(&id, &token).await
        })
    };
    app.wait_for_status(&id, "PROCESSING", SAGA_DONE).await;
    for step in ["ship", "deliver"] {
        let moved = app
            .post(
                &format!("/api/v1/orders/{id}/{step}"),
                &app.admin,
                json!({}),
            )
            .await;
        assert_eq!(moved.status, StatusCode::OK, "{moved:?}");
    }
    let seen = commerce_testkit::within(Duration::from_secs(30), watcher)
        .await
        .unwrap();
    assert_eq!(
        seen.first().map(String::as_str),
        Some("CREATED"),
        "{seen:?}"
    );
    assert_eq!(
        seen[1..],
        ["PROCESSING", "SHIPPED", "DELIVERED"],
        "one event per change, in order, ending at the final status: {seen:?}"
    );

    let order = app.get(&format!("/api/v1/orders/{id}"), &alice).await;
    let history: Vec<&str> = order.body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["CREATED", "PROCESSING", "SHIPPED", "DELIVERED"]);
    assert_eq!(order.body["history"][1]["reason"], "payment approved");
    let stock = app
        .get(&format!("/api/v1/products/{product}/stock"), &alice)
        .await;
    assert_eq!(stock.body["available"], 8);
    assert_eq!(
        app.running()
            .stand_in_gateway()
            .unwrap()
            .stats()
            .charges_taken,
        1
    );
    app.assert_audit_clean().await;
    app.stop().await;
}

/// A second HTTP client for a watcher task (the app itself stays with the test).
struct TestAppProbe {
    url: String,
    client: reqwest::Client,
}

impl TestAppProbe {
    async fn statuses(&self, order: &str, token: &str) -> Vec<String> {
        use futures::StreamExt;
        let response = self
            .client
            .get(format!("{}/api/v1/orders/{order}/events", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let mut statuses = Vec::new();
        let mut buffer = String::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) {
                    let value: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
                    statuses.push(value["status"].as_str().unwrap().to_owned());
                }
            }
        }
        statuses
    }
}

async fn a_declined_payment_cancels_the_order_and_restores_stock_and_ledger(transport: Transport) {
    let app = TestApp::start(transport).await;
    // Above the stand-in gateway's decline threshold (1,000,000 minor units).
    let product = app.product("GOLD-1", 700_000, 5).await;
    let bob = app.customer("bob");
    let placed = app.order(&bob, product, 2).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{placed:?}");
    let id = placed.body["id"].as_str().unwrap().to_owned();

    app.wait_for_status(&id, "CANCELLED", SAGA_DONE).await;
    let order = app.get(&format!("/api/v1/orders/{id}"), &bob).await;
    let last = order.body["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .starts_with("payment failed: declined"),
        "{last}"
    );
    let stock = app
        .get(&format!("/api/v1/products/{product}/stock"), &bob)
        .await;
    assert_eq!(stock.body["available"], 5, "stock returned");
    let ledger = app
        .get(&format!("/api/v1/products/{product}/movements"), &app.admin)
        .await;
    let kinds: Vec<(&str, i64)> = ledger.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["kind"].as_str().unwrap(), m["delta"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("cancel", 2), ("order", -2), ("inbound", 5)],
        "newest first"
    );
    assert_eq!(
        app.running()
            .stand_in_gateway()
            .unwrap()
            .stats()
            .charges_taken,
        0
    );
    app.assert_audit_clean().await;
    app.stop().await;
}

async fn a_gateway_that_recovers_ends_processing(transport: Transport) {
    let app = TestApp::start(transport).await;
    let product = app.product("MUG-1", 450, 5).await;
    // Two whole calls (three attempts each) fail: the charge is parked twice, then taken.
    app.running().stand_in_gateway().unwrap().fail_next(6);
    let carol = app.customer("carol");
    let placed = app.order(&carol, product, 1).await;
    let id = placed.body["id"].as_str().unwrap().to_owned();
    app.wait_for_status(&id, "PROCESSING", SAGA_DONE).await;
    let stats = app.running().stand_in_gateway().unwrap().stats();
    assert_eq!(
        stats.charges_taken, 1,
        "taken once whatever the retries: {stats:?}"
    );
    assert!(stats.injected_failures >= 6, "{stats:?}");
    app.assert_audit_clean().await;
    app.stop().await;
}

async fn a_gateway_that_stays_down_ends_cancelled_by_the_saga_timeout(transport: Transport) {
    let app = TestApp::start_with(transport, |config| {
        common::short_saga(config, Duration::from_secs(3));
    })
    .await;
    app.running()
        .stand_in_gateway()
        .unwrap()
        .set_failure_rate(1.0)
        .unwrap();
    let product = app.product("MUG-2", 450, 5).await;
    let dave = app.customer("dave");
    let placed = app.order(&dave, product, 1).await;
    let id = placed.body["id"].as_str().unwrap().to_owned();
    app.wait_for_status(&id, "CANCELLED", SAGA_DONE).await;
    let order = app.get(&format!("/api/v1/orders/{id}"), &dave).await;
    let last = order.body["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .starts_with("payment timed out"),
        "{last}"
    );
    // The gateway comes back: the voided payment is never charged.
    app.running()
        .stand_in_gateway()
        .unwrap()
        .set_failure_rate(0.0)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app.running()
            .stand_in_gateway()
            .unwrap()
            .stats()
            .charges_taken,
        0
    );
    assert_eq!(app.status(&id).await, "CANCELLED");
    let stock = app
        .get(&format!("/api/v1/products/{product}/stock"), &dave)
        .await;
    assert_eq!(stock.body["available"], 5);
    app.assert_audit_clean().await;
    app.stop().await;
}

async fn cancelling_a_paid_order_refunds_it(transport: Transport) {
    let app = TestApp::start(transport).await;
    let product = app.product("JUG-1", 1_990, 5).await;
    let erin = app.customer("erin");
    let placed = app.order(&erin, product, 1).await;
    let id = placed.body["id"].as_str().unwrap().to_owned();
    app.wait_for_status(&id, "PROCESSING", SAGA_DONE).await;
    let cancelled = app
        .post(&format!("/api/v1/orders/{id}/cancel"), &erin, json!({}))
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:?}");
    assert_eq!(cancelled.body["status"], "CANCELLED");
    let stand_in = app.running().stand_in_gateway().unwrap().clone();
    let refunded = commerce_testkit::eventually(SAGA_DONE, || {
        let stand_in = stand_in.clone();
        async move { stand_in.stats().refunds == 1 }
    })
    .await;
    assert!(
        refunded,
        "the charge was not refunded: {:?}",
        stand_in.stats()
    );
    app.assert_audit_clean().await;
    app.stop().await;
}
