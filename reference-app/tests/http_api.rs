//! The HTTP contract: every error class has its documented status and JSON body, tokens and
//! roles are enforced, repeats are idempotent, and the docs, metrics and health routes answer.

mod common;

use std::time::Duration;

use common::{TestApp, Transport};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_class_has_its_status_and_json_body() {
    let app = TestApp::start(Transport::InProcess).await;
    let alice = app.customer("alice");
    let product = app.product("ERR-1", 100, 1).await;

    // 400: malformed JSON.
    let answer = app
        .request(
            Method::POST,
            "/api/v1/orders",
            &alice,
            None,
            &[("content-type", "application/json")],
        )
        .await;
    answer.assert_error(StatusCode::BAD_REQUEST, "invalid_json");
    let raw = app
        .client
        .post(format!("{}/api/v1/orders", app.url))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body("{\"items\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let body: Value = raw.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json");
    // 422: wrong types, unknown fields, bad values.
    app.post("/api/v1/orders", &alice, json!({"items": "three"}))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    app.post(
        "/api/v1/orders",
        &alice,
        json!({"items": [], "surprise": 1}),
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let zero = app
        .post(
            "/api/v1/orders",
            &alice,
            json!({"items": [{"product_id": product, "quantity": 0}]}),
        )
        .await;
    zero.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(zero.body["error"]["details"]["quantity"], 0);
    app.post("/api/v1/orders", &alice, json!({"items": []}))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    // 415: not JSON.
    let plain = app
        .client
        .post(format!("{}/api/v1/orders", app.url))
        .bearer_auth(&alice)
        .body("items=1")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // 404: unknown route, unknown product, unknown order; 400: malformed id.
    app.get("/api/v1/nothing-here", &alice)
        .await
        .assert_error(StatusCode::NOT_FOUND, "route_not_found");
    app.get("/api/v1/products/999999", &alice)
        .await
        .assert_error(StatusCode::NOT_FOUND, "product_not_found");
    app.get(&format!("/api/v1/orders/{}", uuid::Uuid::now_v7()), &alice)
        .await
        .assert_error(StatusCode::NOT_FOUND, "order_not_found");
    app.get("/api/v1/orders/not-a-uuid", &alice)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_path");
    app.get("/api/v1/orders?limit=lots", &alice)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    // 405: wrong method.
    app.request(Method::DELETE, "/api/v1/orders", &alice, None, &[])
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    // 413: too large. The server answers before reading the whole body and closes the
    // connection, which HTTP client libraries report as a failed send; a raw socket reads
    // the answer as a browser or curl would.
    let (status, body) = oversized_post(&app.url, &alice, 200_000).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    // 409: out of stock (with the figures), illegal transition, SKU taken.
    let short = app.order(&alice, product, 5).await;
    short.assert_error(StatusCode::CONFLICT, "insufficient_stock");
    assert_eq!(
        short.body["error"]["details"],
        json!({"product_id": product, "requested": 5, "available": 1})
    );
    let placed = app.order(&alice, product, 1).await;
    let id = placed.body["id"].as_str().unwrap().to_owned();
    app.post(
        &format!("/api/v1/orders/{id}/deliver"),
        &app.admin,
        json!({}),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "illegal_transition");
    app.post(
        "/api/v1/products",
        &app.admin,
        json!({"sku": "ERR-1", "name": "again", "price": 1, "initial_stock": 0}),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "sku_taken");
    // Every answer carries a request id; a client's own is echoed.
    let echoed = app
        .request(
            Method::GET,
            "/health",
            "",
            None,
            &[("x-request-id", "trace-me-42")],
        )
        .await;
    assert_eq!(echoed.headers["x-request-id"], "trace-me-42");
    assert!(short.headers.contains_key("x-request-id"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_overload_are_503_and_429() {
    let app = TestApp::start_with(Transport::InProcess, |config| {
        config.http.request_timeout = Duration::from_millis(1);
    })
    .await;
    // The audit takes more than a millisecond.
    app.get("/api/v1/admin/audit", &app.admin)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "timeout");
    app.stop().await;

    let app = TestApp::start_with(Transport::InProcess, |config| {
        config.http.max_in_flight = 1;
    })
    .await;
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let (client, url, token) = (app.client.clone(), app.url.clone(), app.admin.clone());
            tokio::spawn(async move {
                let response = client
                    .get(format!("{url}/api/v1/admin/audit"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap();
                (response.status(), response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut shed = 0;
    for call in calls {
        let (status, body) = call.await.unwrap();
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(body["error"]["code"], "too_many_requests");
            shed += 1;
        } else {
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    assert!(
        shed > 0,
        "20 concurrent requests with room for one: none was shed"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_are_enforced() {
    let app = TestApp::start(Transport::InProcess).await;
    let product = app.product("AUTH-1", 100, 10).await;
    let alice = app.customer("alice");
    let mallory = app.customer("mallory");
    let placed = app.order(&alice, product, 1).await;
    let id = placed.body["id"].as_str().unwrap().to_owned();

    // 401: no token, garbage, wrong key, expired, unsigned.
    app.get(&format!("/api/v1/orders/{id}"), "")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    app.get(&format!("/api/v1/orders/{id}"), "not-a-token")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let foreign = reference_app::auth::Auth::new(&reference_app::config::Secret::new(
        "some-other-secret-entirely",
    ))
    .unwrap()
    .issue(
        "alice",
        reference_app::auth::Role::Admin,
        Duration::from_secs(60),
    )
    .unwrap();
    app.get(&format!("/api/v1/orders/{id}"), &foreign)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let expired = app
        .auth
        .issue("alice", reference_app::auth::Role::Customer, Duration::ZERO)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answer = app.get(&format!("/api/v1/orders/{id}"), &expired).await;
    answer.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));
    let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.\
        eyJzdWIiOiJhbGljZSIsInJvbGUiOiJhZG1pbiIsImV4cCI6NDEwMjQ0NDgwMH0.";
    app.get(&format!("/api/v1/orders/{id}"), unsigned)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");

    // 403: another customer's order, in every way; admin routes.
    app.get(&format!("/api/v1/orders/{id}"), &mallory)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.post(&format!("/api/v1/orders/{id}/cancel"), &mallory, json!({}))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.get(&format!("/api/v1/orders/{id}/events"), &mallory)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    for (method, path) in [
        (Method::POST, "/api/v1/products".to_owned()),
        (Method::POST, format!("/api/v1/products/{product}/inbound")),
        (Method::GET, format!("/api/v1/products/{product}/movements")),
        (Method::POST, format!("/api/v1/orders/{id}/ship")),
        (Method::POST, format!("/api/v1/orders/{id}/deliver")),
        (Method::GET, "/api/v1/admin/dead-letters".to_owned()),
        (Method::GET, "/api/v1/admin/audit".to_owned()),
    ] {
        let body = (method == Method::POST)
            .then(|| json!({"sku": "x", "name": "x", "price": 1, "quantity": 1}));
        app.request(method.clone(), &path, &alice, body, &[])
            .await
            .assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    // Mallory's list does not show Alice's order; Alice's does.
    let mine = app.get("/api/v1/orders", &alice).await;
    assert_eq!(mine.body["items"].as_array().unwrap().len(), 1);
    let theirs = app.get("/api/v1/orders", &mallory).await;
    assert!(theirs.body["items"].as_array().unwrap().is_empty());
    // The owner and an admin may read and cancel.
    assert_eq!(
        app.get(&format!("/api/v1/orders/{id}"), &alice)
            .await
            .status,
        StatusCode::OK
    );
    let cancelled = app
        .post(
            &format!("/api/v1/orders/{id}/cancel"),
            &app.admin,
            json!({}),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_key_returns_the_first_order_and_backorders_answer_202() {
    let app = TestApp::start(Transport::InProcess).await;
    let product = app.product("IDEM-1", 100, 1).await;
    let alice = app.customer("alice");
    let body = json!({"items": [{"product_id": product, "quantity": 1}]});
    let key = [("idempotency-key", "k-1")];
    let first = app
        .request(
            Method::POST,
            "/api/v1/orders",
            &alice,
            Some(body.clone()),
            &key,
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.headers.contains_key("idempotent-replayed"));
    let again = app
        .request(Method::POST, "/api/v1/orders", &alice, Some(body), &key)
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "the same status code");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body["id"], first.body["id"]);
    // The same key for another request is refused.
    let other = json!({"items": [{"product_id": product, "quantity": 2}]});
    app.request(Method::POST, "/api/v1/orders", &alice, Some(other), &key)
        .await
        .assert_error(StatusCode::CONFLICT, "idempotency_key_reused");

    // Out of stock, backorder policy: 202 BACKORDERED; a receipt serves it.
    let waiting = app
        .post(
            "/api/v1/orders",
            &alice,
            json!({"items": [{"product_id": product, "quantity": 2}], "on_shortage": "backorder"}),
        )
        .await;
    assert_eq!(waiting.status, StatusCode::ACCEPTED, "{waiting:?}");
    assert_eq!(waiting.body["status"], "BACKORDERED");
    let receipt = app
        .post(
            &format!("/api/v1/products/{product}/inbound"),
            &app.admin,
            json!({"quantity": 5, "note": "PO-7"}),
        )
        .await;
    assert_eq!(receipt.status, StatusCode::OK, "{receipt:?}");
    assert_eq!(
        receipt.body["allocated_order_ids"],
        json!([waiting.body["id"]])
    );
    assert_eq!(receipt.body["available"], 3);
    let movements = app
        .get(
            &format!("/api/v1/products/{product}/movements?limit=2"),
            &app.admin,
        )
        .await;
    assert_eq!(movements.body["items"].as_array().unwrap().len(), 2);
    assert_eq!(movements.body["items"][0]["kind"], "order");
    assert_eq!(movements.body["items"][1]["note"], "PO-7");
    let next = movements.body["next_cursor"].as_i64().expect("a next page");
    let rest = app
        .get(
            &format!("/api/v1/products/{product}/movements?cursor={next}"),
            &app.admin,
        )
        .await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 2);
    assert!(rest.body["next_cursor"].is_null());
    app.assert_audit_clean().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_metrics_health_and_readiness_answer() {
    let app = TestApp::start(Transport::InProcess).await;
    let spec = app.get("/api-docs/openapi.json", "").await;
    assert_eq!(spec.status, StatusCode::OK);
    assert!(spec.body["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/products",
        "/api/v1/orders",
        "/api/v1/orders/{id}/events",
        "/api/v1/admin/dead-letters/{id}/replay",
    ] {
        assert!(
            spec.body["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    let ui = app
        .client
        .get(format!("{}/docs/", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ui.status(), StatusCode::OK);
    assert!(ui.text().await.unwrap().to_lowercase().contains("swagger"));

    assert_eq!(app.get("/health", "").await.body["status"], "ok");
    let ready = app.get("/ready", "").await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");
    assert_eq!(ready.body["checks"]["postgres"], "ok");

    let product = app.product("MET-1", 100, 5).await;
    let _ = app
        .get(&format!("/api/v1/products/{product}"), &app.admin)
        .await;
    let _ = app.order(&app.customer("m"), product, 1).await;
    let metrics = app
        .client
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap();
    let text = metrics.text().await.unwrap();
    for series in [
        "http_request_duration_seconds_bucket",
        "orders_total",
        "outbox_pending_events",
        "payment_breaker_state",
        "cache_hit_ratio",
    ] {
        assert!(text.contains(series), "{series} missing from /metrics");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_ends_open_event_streams_and_finishes() {
    let app = TestApp::start(Transport::InProcess).await;
    let product = app.product("STOP-1", 100, 5).await;
    let alice = app.customer("alice");
    let placed = app.order(&alice, product, 1).await;
    let id = placed.body["id"].as_str().unwrap().to_owned();
    app.wait_for_status(&id, "PROCESSING", Duration::from_secs(30))
        .await;
    // A stream of an order that will not reach a final status soon.
    let watcher = {
        let client = app.client.clone();
        let url = format!("{}/api/v1/orders/{id}/events", app.url);
        tokio::spawn(async move {
            let response = client.get(url).bearer_auth(alice).send().await.unwrap();
            response.text().await.unwrap_or_default()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.stop().await;
    let streamed = commerce_testkit::within(Duration::from_secs(10), watcher)
        .await
        .unwrap();
    assert!(streamed.contains("PROCESSING"), "{streamed}");
}

/// POSTs a JSON body of about `size` bytes over a raw socket; returns the status and body.
async fn oversized_post(url: &str, token: &str, size: usize) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = url.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let body = format!("{{\"items\": [], \"padding\": \"{}\"}}", "x".repeat(size));
    let head = format!(
        "POST /api/v1/orders HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = socket.into_split();
    // The server may stop reading (and close) before the body is all sent: that is the point.
    let sender = tokio::spawn(async move {
        let _ = writer.write_all(body.as_bytes()).await;
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut answer)).await;
    sender.abort();
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b.trim()).ok())
        .unwrap_or(Value::Null);
    (status, json)
}
