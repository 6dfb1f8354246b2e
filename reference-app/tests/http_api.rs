//! The HTTP contract: every error class has its documented status and JSON body, tokens and
//! roles are enforced, repeats are idempotent, and the docs, metrics and health routes answer.
//!
//! The error and authorization tests are tables of raw requests (what is on the wire is the
//! point, malformed requests included); every row runs, and the failures are reported
//! together, each naming its row.

mod common;

use std::time::Duration;

use commerce_client::{
    Error, HealthStatus, Inbound, ListQuery, MovementKind, MovementsQuery, OrderStatus, PlaceOrder,
    RetryPolicy, Shortage,
};
use common::{expect_api_error, Answer, TestApp, Transport};
use futures::StreamExt;
use reference_app::auth::{Claims, Role};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// What a row sends as its body.
#[derive(Debug, Clone)]
enum Body {
    None,
    Json(Value),
    /// Bytes as given, with this content type (or none).
    Raw(&'static str, Option<&'static str>),
    /// A JSON body of about this many bytes, over a raw socket (see [`oversized_post`]).
    Oversized(usize),
}

/// One request and the answer it must get: `code` empty for a success.
#[derive(Debug, Clone)]
struct Row {
    name: &'static str,
    method: Method,
    path: String,
    token: String,
    body: Body,
    status: StatusCode,
    code: &'static str,
    /// Must equal the error's `details`, when given.
    details: Option<Value>,
}

fn row(
    name: &'static str,
    method: Method,
    path: impl Into<String>,
    token: &str,
    body: Body,
    (status, code): (StatusCode, &'static str),
) -> Row {
    Row {
        name,
        method,
        path: path.into(),
        token: token.to_owned(),
        body,
        status,
        code,
        details: None,
    }
}

impl Row {
    fn details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Why the answer to this row is wrong (`None`: it is right).
    async fn check(&self, app: &TestApp) -> Option<String> {
        let answer = match &self.body {
            Body::Oversized(size) => {
                let (status, body) = oversized_post(&app.url, &self.token, *size).await;
                Answer {
                    status: StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT),
                    headers: reqwest::header::HeaderMap::new(),
                    body,
                }
            }
            Body::Raw(bytes, content_type) => {
                let mut request = app
                    .raw
                    .request(self.method.clone(), format!("{}{}", app.url, self.path))
                    .bearer_auth(&self.token)
                    .body(*bytes);
                if let Some(content_type) = content_type {
                    request = request.header("content-type", *content_type);
                }
                let response = request.send().await.expect("request sent");
                let status = response.status();
                let headers = response.headers().clone();
                let body = response.json().await.unwrap_or(Value::Null);
                Answer {
                    status,
                    headers,
                    body,
                }
            }
            Body::None | Body::Json(_) => {
                let json = match &self.body {
                    Body::Json(value) => Some(value.clone()),
                    _ => None,
                };
                app.raw_request(self.method.clone(), &self.path, &self.token, json, &[])
                    .await
            }
        };
        if self.code.is_empty() {
            return (answer.status != self.status)
                .then(|| format!("got {} {}", answer.status, answer.body));
        }
        if let Some(mismatch) = answer.error_mismatch(self.status, self.code) {
            return Some(mismatch);
        }
        match &self.details {
            Some(details) if answer.body["error"]["details"] != *details => Some(format!(
                "details {} instead of {details}",
                answer.body["error"]["details"]
            )),
            _ => None,
        }
    }
}

/// Runs every row; panics naming each failing row.
async fn run_table(app: &TestApp, rows: &[Row]) {
    let mut failures = Vec::new();
    for row in rows {
        if let Some(why) = row.check(app).await {
            failures.push(format!(
                "- {} ({} {} → expected {} {}): {why}",
                row.name, row.method, row.path, row.status, row.code
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

const BAD_REQUEST: StatusCode = StatusCode::BAD_REQUEST;
const INVALID: StatusCode = StatusCode::UNPROCESSABLE_ENTITY;
const NOT_FOUND: StatusCode = StatusCode::NOT_FOUND;
const CONFLICT: StatusCode = StatusCode::CONFLICT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_class_has_its_status_and_json_body() {
    let app = TestApp::start(Transport::InProcess).await;
    let alice = app.token("alice", Role::Customer);
    let admin = app.admin_token.clone();
    let product = app.product("ERR-1", 100, 1).await;
    let created = app
        .order(&app.customer("alice"), product, 1)
        .await
        .expect("placed")
        .order
        .id;
    let product_path = format!("/api/v1/products/{product}");
    let order = |items: Value| Body::Json(json!({ "items": items }));
    let new_product = |sku: &str, name: &str| {
        Body::Json(json!({"sku": sku, "name": name, "price": 1, "initial_stock": 0}))
    };
    use Method as M;
    #[rustfmt::skip]
    let rows = [
        // 400: malformed JSON, path, query.
        row("an empty JSON body", M::POST, "/api/v1/orders", &alice, Body::Raw("", Some("application/json")), (BAD_REQUEST, "invalid_json")),
        row("truncated JSON", M::POST, "/api/v1/orders", &alice, Body::Raw("{\"items\": [", Some("application/json")), (BAD_REQUEST, "invalid_json")),
        row("an order id that is not a UUID", M::GET, "/api/v1/orders/not-a-uuid", &alice, Body::None, (BAD_REQUEST, "invalid_path")),
        row("a product id that is not an integer", M::GET, "/api/v1/products/x1", &alice, Body::None, (BAD_REQUEST, "invalid_path")),
        row("a limit that is not a number", M::GET, "/api/v1/orders?limit=lots", &alice, Body::None, (BAD_REQUEST, "invalid_query")),
        row("a limit of 0", M::GET, "/api/v1/orders?limit=0", &alice, Body::None, (BAD_REQUEST, "invalid_query")),
        row("a limit above 100", M::GET, "/api/v1/orders?limit=101", &alice, Body::None, (BAD_REQUEST, "invalid_query")),
        row("a cursor the API did not give out", M::GET, "/api/v1/orders?cursor=abc", &alice, Body::None, (BAD_REQUEST, "invalid_query")),
        row("a ledger limit above 1000", M::GET, format!("{product_path}/movements?limit=1001"), &admin, Body::None, (BAD_REQUEST, "invalid_query")),
        row("a dead-letter limit above 500", M::GET, "/api/v1/admin/dead-letters?limit=501", &admin, Body::None, (BAD_REQUEST, "invalid_query")),
        // 422: wrong types, unknown fields, bad values.
        row("items of the wrong type", M::POST, "/api/v1/orders", &alice, Body::Json(json!({"items": "three"})), (INVALID, "validation_failed")),
        row("an unknown field", M::POST, "/api/v1/orders", &alice, Body::Json(json!({"items": [], "surprise": 1})), (INVALID, "validation_failed")),
        row("a quantity of 0", M::POST, "/api/v1/orders", &alice, order(json!([{"product_id": product, "quantity": 0}])), (INVALID, "validation_failed"))
            .details(json!({"product_id": product, "quantity": 0})),
        row("a quantity above 10000", M::POST, "/api/v1/orders", &alice, order(json!([{"product_id": product, "quantity": 10_001}])), (INVALID, "validation_failed")),
        row("no lines", M::POST, "/api/v1/orders", &alice, order(json!([])), (INVALID, "validation_failed")),
        row("a product twice", M::POST, "/api/v1/orders", &alice, order(json!([{"product_id": product, "quantity": 1}, {"product_id": product, "quantity": 2}])), (INVALID, "validation_failed")),
        row("an unknown shortage policy", M::POST, "/api/v1/orders", &alice, Body::Json(json!({"items": [{"product_id": product, "quantity": 1}], "on_shortage": "wait"})), (INVALID, "validation_failed")),
        row("a blank product name", M::POST, "/api/v1/products", &admin, new_product("ERR-2", "  "), (INVALID, "validation_failed")),
        row("a name of 121 characters", M::POST, "/api/v1/products", &admin, new_product("ERR-2", &"é".repeat(121)), (INVALID, "validation_failed")),
        row("a SKU that is not ASCII", M::POST, "/api/v1/products", &admin, new_product("ÉRR-2", "kettle"), (INVALID, "validation_failed")),
        row("a negative price", M::POST, "/api/v1/products", &admin, Body::Json(json!({"sku": "ERR-2", "name": "x", "price": -1})), (INVALID, "validation_failed")),
        row("a blank new name", M::PATCH, product_path.clone(), &admin, Body::Json(json!({"name": " "})), (INVALID, "validation_failed")),
        row("a new name with a control character", M::PATCH, product_path.clone(), &admin, Body::Json(json!({"name": "ket\u{7}tle"})), (INVALID, "validation_failed")),
        row("a rename with an unknown field", M::PATCH, product_path.clone(), &admin, Body::Json(json!({"name": "kettle", "price": 1})), (INVALID, "validation_failed")),
        row("a receipt of 0 units", M::POST, format!("{product_path}/inbound"), &admin, Body::Json(json!({"quantity": 0})), (INVALID, "validation_failed")),
        // 415: not JSON.
        row("a form body", M::POST, "/api/v1/orders", &alice, Body::Raw("items=1", None), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")),
        // 404: unknown route, product, order.
        row("an unknown route", M::GET, "/api/v1/nothing-here", &alice, Body::None, (NOT_FOUND, "route_not_found")),
        row("an unknown product", M::GET, "/api/v1/products/999999", &alice, Body::None, (NOT_FOUND, "product_not_found")),
        row("an order of an unknown product", M::POST, "/api/v1/orders", &alice, order(json!([{"product_id": 999_999, "quantity": 1}])), (NOT_FOUND, "product_not_found")),
        row("renaming an unknown product", M::PATCH, "/api/v1/products/999999", &admin, Body::Json(json!({"name": "kettle"})), (NOT_FOUND, "product_not_found")),
        row("an unknown order", M::GET, format!("/api/v1/orders/{}", uuid::Uuid::now_v7()), &alice, Body::None, (NOT_FOUND, "order_not_found")),
        // 405: wrong method.
        row("DELETE on the orders", M::DELETE, "/api/v1/orders", &alice, Body::None, (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")),
        // 413: too large. The server answers before reading the whole body and closes the
        // connection, which HTTP client libraries report as a failed send; a raw socket reads
        // the answer as a browser or curl would.
        row("a body above the limit", M::POST, "/api/v1/orders", &alice, Body::Oversized(200_000), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")),
        // 409: out of stock (with the figures), illegal transition, SKU taken.
        row("more than the stock", M::POST, "/api/v1/orders", &alice, order(json!([{"product_id": product, "quantity": 5}])), (CONFLICT, "insufficient_stock"))
            .details(json!({"product_id": product, "requested": 5, "available": 0})),
        row("delivering a CREATED order", M::POST, format!("/api/v1/orders/{created}/deliver"), &admin, Body::None, (CONFLICT, "illegal_transition")),
        row("a SKU taken", M::POST, "/api/v1/products", &admin, new_product("ERR-1", "again"), (CONFLICT, "sku_taken")),
    ];
    run_table(&app, &rows).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id_and_echoes_the_clients() {
    let app = TestApp::start(Transport::InProcess).await;
    let echoed = app
        .raw_request(
            Method::GET,
            "/health",
            "",
            None,
            &[("x-request-id", "trace-me-42")],
        )
        .await;
    assert_eq!(echoed.headers["x-request-id"], "trace-me-42");
    let refused = app
        .raw_request(Method::GET, "/api/v1/products/999999", "", None, &[])
        .await;
    assert!(refused.headers.contains_key("x-request-id"), "{refused:?}");
    match app.admin.product(999_999).await {
        Err(Error::Api {
            request_id: Some(_),
            ..
        }) => {}
        other => panic!("expected an API error with a request id, got {other:?}"),
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_overload_are_503_and_429() {
    let app = TestApp::start_with(Transport::InProcess, |config| {
        config.http.request_timeout = Duration::from_millis(1);
    })
    .await;
    // The audit waits for a lock the test holds on the products: it cannot answer within a
    // millisecond however fast the machine.
    let mut held = app.db.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE commerce.products IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *held)
        .await
        .unwrap();
    let once = app.admin.with_retry(RetryPolicy::none());
    expect_api_error(
        once.audit().await,
        StatusCode::SERVICE_UNAVAILABLE,
        "timeout",
    );
    held.rollback().await.unwrap();
    app.stop().await;

    let app = TestApp::start_with(Transport::InProcess, |config| {
        config.http.max_in_flight = 1;
    })
    .await;
    let once = app.admin.with_retry(RetryPolicy::none());
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let once = once.clone();
            tokio::spawn(async move { once.audit().await })
        })
        .collect();
    let mut shed = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(audit) => assert!(audit.consistent, "{audit:?}"),
            Err(e) => {
                assert_eq!(
                    (e.status(), e.code()),
                    (
                        Some(StatusCode::TOO_MANY_REQUESTS),
                        Some("too_many_requests")
                    ),
                    "{e:?}"
                );
                shed += 1;
            }
        }
    }
    assert!(
        shed > 0,
        "20 concurrent requests with room for one: none was shed"
    );
    app.stop().await;
}

/// A token signed with `secret` for `claims` (expired, foreign, ...).
fn signed(claims: &Claims, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_are_enforced() {
    let app = TestApp::start(Transport::InProcess).await;
    let product = app.product("AUTH-1", 100, 10).await;
    let alice = app.token("alice", Role::Customer);
    let mallory = app.token("mallory", Role::Customer);
    let id = app
        .order(&app.customer("alice"), product, 1)
        .await
        .expect("placed")
        .order
        .id;
    let far = 4_102_444_800; // 2100-01-01
    let claims = |role, exp| Claims {
        sub: "alice".into(),
        role,
        exp,
    };
    let foreign = signed(&claims(Role::Admin, far), "some-other-secret-entirely");
    let expired = signed(&claims(Role::Customer, 1), common::SECRET);
    let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.\
        eyJzdWIiOiJhbGljZSIsInJvbGUiOiJhZG1pbiIsImV4cCI6NDEwMjQ0NDgwMH0.";
    let order = format!("/api/v1/orders/{id}");
    let unauthorized = (StatusCode::UNAUTHORIZED, "unauthorized");
    let forbidden = (StatusCode::FORBIDDEN, "forbidden");
    let ok = (StatusCode::OK, "");
    let admin_body = || Body::Json(json!({"sku": "x", "name": "x", "price": 1, "quantity": 1}));
    use Method as M;
    #[rustfmt::skip]
    let rows = [
        // 401: no token, garbage, wrong key, expired, unsigned.
        row("no token", M::GET, &order, "", Body::None, unauthorized),
        row("a garbage token", M::GET, &order, "not-a-token", Body::None, unauthorized),
        row("a token of another key", M::GET, &order, &foreign, Body::None, unauthorized),
        row("an expired token", M::GET, &order, &expired, Body::None, unauthorized),
        row("an unsigned token claiming admin", M::GET, &order, unsigned, Body::None, unauthorized),
        row("no token on an admin route", M::GET, "/api/v1/admin/audit", "", Body::None, unauthorized),
        // 403: another customer's order, in every way.
        row("reading another's order", M::GET, &order, &mallory, Body::None, forbidden),
        row("cancelling another's order", M::POST, format!("{order}/cancel"), &mallory, Body::None, forbidden),
        row("watching another's order", M::GET, format!("{order}/events"), &mallory, Body::None, forbidden),
        // 403: admin routes, checked before the body is read.
        row("creating a product", M::POST, "/api/v1/products", &alice, admin_body(), forbidden),
        row("receiving stock", M::POST, format!("/api/v1/products/{product}/inbound"), &alice, admin_body(), forbidden),
        row("renaming a product", M::PATCH, format!("/api/v1/products/{product}"), &alice, admin_body(), forbidden),
        row("reading the ledger", M::GET, format!("/api/v1/products/{product}/movements"), &alice, Body::None, forbidden),
        row("shipping", M::POST, format!("{order}/ship"), &alice, Body::None, forbidden),
        row("delivering", M::POST, format!("{order}/deliver"), &alice, Body::None, forbidden),
        row("listing dead letters", M::GET, "/api/v1/admin/dead-letters", &alice, Body::None, forbidden),
        row("replaying a dead letter", M::POST, format!("/api/v1/admin/dead-letters/{id}/replay"), &alice, Body::None, forbidden),
        row("the audit", M::GET, "/api/v1/admin/audit", &alice, Body::None, forbidden),
        // The owner and an admin may read.
        row("the owner reads", M::GET, &order, &alice, Body::None, ok),
        row("an admin reads", M::GET, &order, &app.admin_token, Body::None, ok),
        // A NUL in a name Postgres would refuse: no consumer has it, nothing listed (was 503).
        row("a consumer name with a NUL", M::GET, "/api/v1/admin/consumer-dead-letters?consumer=a%00b", &app.admin_token, Body::None, ok),
    ];
    run_table(&app, &rows).await;

    // The expired token is refused as expired.
    let answer = app.raw_request(M::GET, &order, &expired, None, &[]).await;
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{answer:?}"
    );
    // Mallory's list does not show Alice's order; Alice's does; an admin may cancel it.
    let page = ListQuery::default();
    let mine = app.admin.with_token(&alice).orders(&page).await.unwrap();
    assert_eq!(mine.items.len(), 1);
    let theirs = app.admin.with_token(&mallory).orders(&page).await.unwrap();
    assert!(theirs.items.is_empty());
    let cancelled = app.admin.cancel_order(id).await.expect("an admin cancels");
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_key_returns_the_first_order_and_backorders_answer_202() {
    let app = TestApp::start(Transport::InProcess).await;
    let product = app.product("IDEM-1", 100, 1).await;
    let alice = app.customer("alice");
    let one = PlaceOrder::one(product, 1);
    let first = alice.place_order_with_key(&one, "k-1").await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed);
    let again = alice.place_order_with_key(&one, "k-1").await.unwrap();
    assert_eq!(again.status, StatusCode::CREATED, "the same status code");
    assert!(again.replayed);
    assert_eq!(again.order.id, first.order.id);
    // The same key for another request is refused.
    expect_api_error(
        alice
            .place_order_with_key(&PlaceOrder::one(product, 2), "k-1")
            .await,
        CONFLICT,
        "idempotency_key_reused",
    );

    // Out of stock, backorder policy: 202 BACKORDERED; a receipt serves it.
    let waiting = alice
        .place_order(&PlaceOrder::one(product, 2).on_shortage(Shortage::Backorder))
        .await
        .unwrap();
    assert_eq!(waiting.status, StatusCode::ACCEPTED, "{waiting:?}");
    assert_eq!(waiting.order.status, OrderStatus::Backordered);
    let receipt = app
        .admin
        .receive_stock(
            product,
            &Inbound {
                quantity: 5,
                note: Some("PO-7".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(receipt.allocated_order_ids, [waiting.order.id]);
    assert_eq!(receipt.available, 3);
    let movements = app
        .admin
        .movements(
            product,
            &MovementsQuery {
                limit: Some(2),
                cursor: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(movements.items.len(), 2);
    assert_eq!(movements.items[0].kind, MovementKind::Order);
    assert_eq!(movements.items[1].note.as_deref(), Some("PO-7"));
    let next = movements.next_cursor.expect("a next page");
    let rest = app
        .admin
        .movements(
            product,
            &MovementsQuery {
                limit: None,
                cursor: Some(next),
            },
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 2);
    assert!(rest.next_cursor.is_none());
    app.assert_audit_clean().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_list_pages_by_cursor() {
    let app = TestApp::start(Transport::InProcess).await;
    let product = app.product("PAGE-1", 100, 10).await;
    let alice = app.customer("alice");
    let mut placed = Vec::new();
    for _ in 0..5 {
        placed.push(app.order(&alice, product, 1).await.unwrap().order.id);
    }
    let mut seen = Vec::new();
    let mut page = ListQuery {
        limit: Some(2),
        cursor: None,
    };
    loop {
        let list = alice.orders(&page).await.unwrap();
        assert!(list.items.len() <= 2);
        seen.extend(list.items.iter().map(|o| o.id));
        match list.next_cursor {
            Some(cursor) => page.cursor = Some(cursor),
            None => break,
        }
    }
    placed.reverse();
    assert_eq!(seen, placed, "every order once, newest first");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_metrics_health_and_readiness_answer() {
    let app = TestApp::start(Transport::InProcess).await;
    let spec = app
        .raw_request(Method::GET, "/api-docs/openapi.json", "", None, &[])
        .await;
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
        .raw
        .get(format!("{}/docs/", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ui.status(), StatusCode::OK);
    assert!(ui.text().await.unwrap().to_lowercase().contains("swagger"));

    assert_eq!(app.admin.health().await.unwrap().status, HealthStatus::Ok);
    let ready = app.admin.ready().await.unwrap();
    assert_eq!(ready.status, HealthStatus::Ok, "{ready:?}");
    assert_eq!(ready.checks["postgres"], "ok");

    let product = app.product("MET-1", 100, 5).await;
    app.admin.product(product).await.unwrap();
    app.order(&app.customer("m"), product, 1).await.unwrap();
    let text = app.admin.metrics().await.unwrap();
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
    let id = app.order(&alice, product, 1).await.unwrap().order.id;
    app.wait_for_status(id, OrderStatus::Processing, Duration::from_secs(30))
        .await;
    // A stream of an order that will not reach a final status soon, open once its first
    // event (the current status) has arrived.
    let mut events = alice.order_events(id).await.expect("stream opened");
    let first = commerce_testkit::within(Duration::from_secs(10), events.next())
        .await
        .expect("a first event")
        .expect("a status event");
    assert_eq!(first.change.status, OrderStatus::Processing);
    let rest = tokio::spawn(events.collect::<Vec<_>>());
    app.stop().await;
    let rest = commerce_testkit::within(Duration::from_secs(10), rest)
        .await
        .unwrap();
    assert!(
        rest.iter().all(Result::is_ok),
        "the stream ends cleanly: {rest:?}"
    );
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
