//! The client's retry policy and idempotency keys, against a stand-in server that fails on
//! cue and records what it was sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use commerce_client::{ApiClient, Error, OrderStatus, PlaceOrder, RetryPolicy};
use serde_json::json;

/// What the stand-in answers and what it saw.
#[derive(Default)]
struct Script {
    /// Answers to give first, in order (status, error code); then 201.
    failures: Vec<(StatusCode, &'static str)>,
    /// The `Idempotency-Key` of each placement received.
    keys: Vec<Option<String>>,
    /// Placements answered 201 so far (the second and later are replays).
    placed: usize,
}

type Shared = Arc<Mutex<Script>>;

async fn place(State(script): State<Shared>, headers: HeaderMap) -> Response {
    let mut script = script.lock().unwrap();
    script.keys.push(
        headers
            .get("idempotency-key")
            .map(|v| v.to_str().unwrap().to_owned()),
    );
    if !script.failures.is_empty() {
        let (status, code) = script.failures.remove(0);
        let body = json!({"error": {"code": code, "message": "scripted", "details": {}}});
        let mut response = (status, Json(body)).into_response();
        // `rate_limited` names its wait, in seconds, as the server does.
        if let Some(seconds) = code.strip_prefix("rate_limited_") {
            response
                .headers_mut()
                .insert("retry-after", seconds.parse().unwrap());
        }
        return response;
    }
    script.placed += 1;
    let order = json!({
        "id": "0192cb0e-1d2f-7c38-a4b5-e6f708192a3b",
        "user_id": "alice",
        "status": "CREATED",
        "items": [{"product_id": 1, "quantity": 2, "unit_price": 100}],
        "total": 200,
        "currency": "EUR",
        "history": [],
        "created_at": "2026-01-01T00:00:00Z",
    });
    let mut response = (StatusCode::CREATED, Json(order)).into_response();
    if script.placed > 1 {
        response
            .headers_mut()
            .insert("idempotent-replayed", "true".parse().unwrap());
    }
    response
}

async fn slow_audit() -> Json<serde_json::Value> {
    tokio::time::sleep(Duration::from_secs(5)).await;
    Json(json!({"consistent": true, "products": 0, "orders": 0, "violations": []}))
}

/// The stand-in on a free port, and a client of it retrying quickly.
async fn stand_in(failures: Vec<(StatusCode, &'static str)>) -> (ApiClient, Shared) {
    let script = Arc::new(Mutex::new(Script {
        failures,
        ..Script::default()
    }));
    let router = Router::new()
        .route("/api/v1/orders", post(place))
        .route("/api/v1/admin/audit", get(slow_audit))
        .with_state(Arc::clone(&script));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client = ApiClient::builder(url)
        .bearer_token("t")
        .timeout(Duration::from_millis(500))
        .retry(RetryPolicy::default().delays(Duration::from_millis(10), Duration::from_millis(40)))
        .build()
        .unwrap();
    (client, script)
}

#[tokio::test]
async fn a_placement_retried_after_503_and_429_keeps_its_key() {
    let (client, script) = stand_in(vec![
        (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
    ])
    .await;
    let placed = client.place_order(&PlaceOrder::one(1, 2)).await.unwrap();
    assert_eq!(placed.attempts, 3);
    assert_eq!(placed.order.status, OrderStatus::Created);
    assert!(!placed.replayed);
    let keys = script.lock().unwrap().keys.clone();
    let key = placed.idempotency_key.clone().expect("a generated key");
    assert!(uuid::Uuid::parse_str(&key).is_ok(), "a UUID: {key}");
    assert_eq!(keys, vec![Some(key); 3], "every attempt under one key");

    // A repeat is told apart by the server's header.
    let again = client
        .place_order_with_key(&PlaceOrder::one(1, 2), "mine")
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.idempotency_key.as_deref(), Some("mine"));
}

#[tokio::test]
async fn retries_are_bounded_and_refusals_are_not_retried() {
    let unavailable = (StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let (client, script) = stand_in(vec![unavailable; 5]).await;
    let err = client
        .place_order(&PlaceOrder::one(1, 2))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("unavailable"), "{err:?}");
    assert_eq!(
        script.lock().unwrap().keys.len(),
        3,
        "the default: 3 attempts"
    );

    let (client, script) = stand_in(vec![(StatusCode::CONFLICT, "insufficient_stock")]).await;
    let err = client
        .place_order(&PlaceOrder::one(1, 2))
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::Api { status, .. } if *status == StatusCode::CONFLICT));
    assert!(!err.is_transient());
    assert_eq!(script.lock().unwrap().keys.len(), 1, "a refusal is final");

    let (client, script) = stand_in(vec![unavailable]).await;
    let once = client.with_retry(RetryPolicy::none());
    once.place_order(&PlaceOrder::one(1, 2)).await.unwrap_err();
    assert_eq!(script.lock().unwrap().keys.len(), 1);
    let unkeyed = client
        .place_order_without_key(&PlaceOrder::one(1, 2))
        .await
        .unwrap();
    assert_eq!((unkeyed.attempts, unkeyed.idempotency_key), (1, None));
    assert_eq!(script.lock().unwrap().keys.last(), Some(&None));
}

#[tokio::test]
async fn no_answer_is_a_transport_error_after_the_retries() {
    let (client, _) = stand_in(Vec::new()).await;
    // The audit answers after 5 s; each attempt gives up after 500 ms.
    let err = client.audit().await.unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    assert!(err.is_transient());

    // Nothing listens there.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let client = ApiClient::builder(format!("http://{closed}"))
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    assert!(matches!(client.health().await, Err(Error::Transport(_))));
}

#[test]
fn base_urls_are_checked() {
    for bad in [
        "not a url",
        "ftp://example.com",
        "http://h:1/?q=1",
        "mailto:a@b",
    ] {
        assert!(
            matches!(
                ApiClient::builder(bad).build(),
                Err(Error::InvalidBaseUrl { .. })
            ),
            "{bad}"
        );
    }
    let client = ApiClient::builder("http://127.0.0.1:8080/prefix/")
        .build()
        .unwrap();
    assert_eq!(client.base_url(), "http://127.0.0.1:8080/prefix");
}

/// A 429 with a short `Retry-After` is waited out (longer than the client's own backoff) and
/// retried with the same key; one beyond the policy's longest delay ends the retries at once,
/// so the caller decides whether to wait that long.
#[tokio::test]
async fn a_retry_after_is_honoured_or_ends_the_retries() {
    let (client, script) = stand_in(vec![(StatusCode::TOO_MANY_REQUESTS, "rate_limited_1")]).await;
    // Delays of 10 ms up to 2 s: the server's second is longer than the first delay.
    let client = client.with_retry(
        RetryPolicy::default().delays(Duration::from_millis(10), Duration::from_secs(2)),
    );
    let started = std::time::Instant::now();
    let placed = client
        .place_order(&PlaceOrder::one(1, 2))
        .await
        .expect("placed");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(placed.attempts, 2);
    let keys = script.lock().unwrap().keys.clone();
    assert_eq!(keys[0], keys[1]);

    let (client, script) = stand_in(vec![(StatusCode::TOO_MANY_REQUESTS, "rate_limited_60")]).await;
    let error = client
        .place_order(&PlaceOrder::one(1, 2))
        .await
        .unwrap_err();
    assert_eq!(
        error.retry_after(),
        Some(Duration::from_secs(60)),
        "{error:?}"
    );
    assert_eq!(script.lock().unwrap().keys.len(), 1);
}
