//! The probes and shutdown under pressure: `/health` and `/ready` are not shed, `/ready` does
//! not wait for the request pool, says nothing of internals, and turns 503 while the
//! instance drains; shutdown is bounded; shed requests are counted.

mod common;

use std::time::Duration;

use common::faults::{HeldPool, HeldRequest};
use common::{Answer, TestApp, Transport};
use reference_app::auth::Role;
use reqwest::{Method, StatusCode};

/// `GET path`, with `token` unless empty.
async fn get(app: &TestApp, path: &str, token: &str) -> Answer {
    app.raw_request(Method::GET, path, token, None, &[]).await
}

/// GETs `url` on a fresh connection; `None` when no answer came (e.g. refused).
async fn status_of(url: &str) -> Option<StatusCode> {
    reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()
        .map(|response| response.status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_answer_while_every_request_slot_is_taken() {
    let app = TestApp::start_with(Transport::InProcess, |config| {
        config.http.max_in_flight = 1;
        config.http.request_timeout = Duration::from_secs(60);
    })
    .await;
    let alice = app.token("alice", Role::Customer);
    let held = HeldRequest::take_the_only_slot(&app, &alice, "/api/v1/orders").await;

    let health = get(&app, "/health", "").await;
    assert_eq!(health.status, StatusCode::OK, "{health:?}");
    let ready = get(&app, "/ready", "").await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");
    // Mounted apart, the probes still answer a wrong method with the JSON error.
    app.raw_request(
        Method::POST,
        "/health",
        "",
        Some(serde_json::json!({})),
        &[],
    )
    .await
    .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    drop(held);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_requests_are_counted_in_http_requests_total() {
    let app = TestApp::start_with(Transport::InProcess, |config| {
        config.http.max_in_flight = 1;
        config.http.request_timeout = Duration::from_secs(60);
    })
    .await;
    let product = app.product("SHED-1", 100, 10).await;
    let alice = app.token("alice", Role::Customer);
    let path = format!("/api/v1/products/{product}/stock");
    let held = HeldRequest::take_the_only_slot(&app, &alice, &path).await;
    drop(held);

    // The held request's place is free once a request gets through again.
    let free = commerce_testkit::eventually(Duration::from_secs(10), || async {
        get(&app, "/health", "").await.status == StatusCode::OK
            && get(&app, &path, &alice).await.status == StatusCode::OK
    })
    .await;
    assert!(free, "the held request never gave its place back");
    let metrics = get(&app, "/metrics", "").await;
    assert_eq!(metrics.status, StatusCode::OK, "{metrics:?}");
    let text = metrics.body.as_str().unwrap_or_default();
    let counted = text.lines().any(|line| {
        line.starts_with("http_requests_total{")
            && line.contains("route=\"/api/v1/products/{id}/stock\"")
            && line.contains("status=\"429\"")
    });
    assert!(
        counted,
        "the shed request is missing from http_requests_total:\n{text}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_answers_while_the_request_pool_is_exhausted() {
    let app = TestApp::start_with(Transport::InProcess, |config| {
        config.database.max_connections = 1;
        config.http.request_timeout = Duration::from_secs(60);
    })
    .await;
    let product = app.product("READY-1", 100, 10).await;
    let held = HeldPool::hold(&app, product).await;
    let ready = get(&app, "/ready", "").await;
    let blocked = held.release().await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");
    assert_eq!(ready.body["checks"]["postgres"], "ok", "{ready:?}");
    assert_eq!(blocked.status, StatusCode::CREATED, "{blocked:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_names_a_failing_check_without_internal_text() {
    let upstream = commerce_testkit::redis_url();
    let upstream = upstream
        .trim_start_matches("redis://")
        .trim_end_matches('/');
    let proxy = commerce_testkit::TcpProxy::start(upstream).await;
    let port = proxy.port().to_string();
    let redis_url = format!("redis://{}", proxy.address());
    let app = TestApp::start_with(Transport::InProcess, |config| {
        config.redis_url = Some(reference_app::config::SecretUrl::new(redis_url));
    })
    .await;
    assert_eq!(get(&app, "/ready", "").await.status, StatusCode::OK);

    drop(proxy);
    let ready = get(&app, "/ready", "").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{ready:?}");
    assert_eq!(ready.body["checks"]["redis"], "unavailable", "{ready:?}");
    assert_eq!(ready.body["checks"]["postgres"], "ok", "{ready:?}");
    let text = ready.body.to_string().to_lowercase();
    for leak in ["127.0.0.1", port.as_str(), "refused", "error", "os "] {
        assert!(!text.contains(leak), "{leak:?} in /ready: {text}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_while_draining_and_health_stays_200() {
    let mut app = TestApp::start_with(Transport::InProcess, |config| {
        config.http.shutdown_drain = Duration::from_secs(3);
    })
    .await;
    let (ready, health) = (format!("{}/ready", app.url), format!("{}/health", app.url));
    assert_eq!(status_of(&ready).await, Some(StatusCode::OK));

    let stopping = tokio::spawn(app.running.take().unwrap().stop());
    let draining = commerce_testkit::eventually(Duration::from_secs(2), || async {
        status_of(&ready).await == Some(StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    let live = status_of(&health).await;
    assert!(
        draining,
        "/ready never answered 503 after the shutdown signal"
    );
    assert_eq!(live, Some(StatusCode::OK), "liveness while draining");
    commerce_testkit::within(Duration::from_secs(30), stopping)
        .await
        .unwrap()
        .unwrap();
    // Once drained, the listener is gone.
    assert_eq!(status_of(&ready).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_while_a_request_holds_a_connection() {
    let mut app = TestApp::start_with(Transport::InProcess, |config| {
        config.database.max_connections = 1;
        config.http.request_timeout = Duration::from_secs(120);
        config.http.shutdown_grace = Duration::from_secs(1);
    })
    .await;
    // A request stuck in a query (it waits for a row lock this test holds), with the request
    // pool's only connection.
    let product = app.product("STUCK-1", 100, 10).await;
    let held = HeldPool::hold(&app, product).await;
    let running = app.running.take().unwrap();
    commerce_testkit::within(Duration::from_secs(15), running.stop())
        .await
        .expect("a clean stop");
    held.abandon().await;
}
