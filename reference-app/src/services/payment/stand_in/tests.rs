//! The stand-in PG's API, called in-process through its router.

use axum::body::Body;
use axum::http::{Method, Request};
use tower::ServiceExt as _;

use super::*;

const ORDER: &str = "00000000-0000-0000-0000-00000000002a";

fn charge_body(amount: i64) -> String {
    json!({ "order_id": ORDER, "amount": amount, "currency": "EUR" }).to_string()
}

async fn send(
    router: &Router,
    uri: &str,
    key: Option<&str>,
    body: Option<String>,
) -> (StatusCode, Value) {
    let method = if uri == "/health" {
        Method::GET
    } else {
        Method::POST
    };
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(body.map_or_else(Body::empty, Body::from))
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body)
}

async fn charge(router: &Router, key: &str, amount: i64) -> (StatusCode, Value) {
    send(router, "/v1/charges", Some(key), Some(charge_body(amount))).await
}

fn refunds_of(charge_id: &Value) -> String {
    format!(
        "/v1/charges/{}/refunds",
        charge_id.as_str().expect("charge id")
    )
}

#[tokio::test]
async fn approves_a_charge_and_replays_the_answer_for_its_key() {
    let (router, control) = router(&StandInConfig::default());
    let (status, first) = charge(&router, "k1", 4_990).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(first["status"], "approved");
    assert!(first["charge_id"]
        .as_str()
        .is_some_and(|id| id.starts_with("ch_")));

    assert_eq!(
        charge(&router, "k1", 4_990).await,
        (StatusCode::CREATED, first)
    );
    let (_, other) = charge(&router, "k2", 4_990).await;
    assert_ne!(other["charge_id"], Value::Null);
    assert_eq!(control.stats().charges_taken, 2);
    assert_eq!(control.stats().requests, 3);
}

#[tokio::test]
async fn declines_above_the_threshold_once_per_key() {
    let config = StandInConfig {
        decline_above: 1_000,
        ..StandInConfig::default()
    };
    let (router, control) = router(&config);
    assert_eq!(charge(&router, "at", 1_000).await.0, StatusCode::CREATED);
    let declined = (
        StatusCode::PAYMENT_REQUIRED,
        json!({ "status": "declined", "reason": "amount_above_limit" }),
    );
    assert_eq!(charge(&router, "above", 1_001).await, declined);
    assert_eq!(charge(&router, "above", 1_001).await, declined);
    let stats = control.stats();
    assert_eq!((stats.charges_taken, stats.declines), (1, 1));
}

#[tokio::test]
async fn a_key_reused_with_another_body_is_refused() {
    let (router, control) = router(&StandInConfig::default());
    charge(&router, "k1", 100).await;
    let (status, body) = charge(&router, "k1", 200).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["code"], "idempotency_key_reused");
    assert_eq!(control.stats().charges_taken, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_repeats_of_a_key_charge_once() {
    let config = StandInConfig {
        // Holds the repeats in flight together before they reach the ledger.
        latency: Duration::from_millis(20),
        ..StandInConfig::default()
    };
    let (router, control) = router(&config);
    let repeats: Vec<_> = (0..16)
        .map(|_| {
            let router = router.clone();
            tokio::spawn(async move { charge(&router, "same", 4_990).await })
        })
        .collect();
    let mut answers = Vec::new();
    for repeat in repeats {
        answers.push(repeat.await.expect("task"));
    }
    assert_eq!(answers[0].0, StatusCode::CREATED);
    assert!(answers.iter().all(|answer| *answer == answers[0]));
    assert_eq!(control.stats().charges_taken, 1);
}

#[tokio::test]
async fn bad_requests_get_a_400_with_a_json_error() {
    let (router, control) = router(&StandInConfig::default());
    let cases = [
        (Some("k"), Some("{not json".to_owned()), "invalid_json"),
        (
            Some("k"),
            Some(json!({ "amount": 1 }).to_string()),
            "invalid_json",
        ),
        (None, Some(charge_body(100)), "missing_idempotency_key"),
        (Some(" "), Some(charge_body(100)), "missing_idempotency_key"),
        (Some("k"), Some(charge_body(0)), "invalid_request"),
        (
            Some("k"),
            Some(json!({ "order_id": ORDER, "amount": 1, "currency": "euro" }).to_string()),
            "invalid_request",
        ),
    ];
    for (key, body, code) in cases {
        let (status, answer) = send(&router, "/v1/charges", key, body).await;
        assert_eq!(
            (status, &answer["code"]),
            (StatusCode::BAD_REQUEST, &json!(code))
        );
        assert!(answer["message"].is_string());
    }
    assert_eq!(control.stats().charges_taken, 0);
}

#[tokio::test]
async fn refunds_once_per_charge_and_replays_for_its_key() {
    let (router, control) = router(&StandInConfig::default());
    let (_, charged) = charge(&router, "c1", 500).await;
    let uri = refunds_of(&charged["charge_id"]);

    let (status, refund) = send(&router, &uri, Some("r1"), None).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(refund["status"], "refunded");
    assert_eq!(refund["charge_id"], charged["charge_id"]);
    assert_eq!(
        send(&router, &uri, Some("r1"), None).await,
        (status, refund)
    );

    let (status, body) = send(&router, &uri, Some("r2"), None).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::CONFLICT, &json!("charge_already_refunded"))
    );
    let (status, body) = send(&router, "/v1/charges/ch_nope/refunds", Some("r3"), None).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::NOT_FOUND, &json!("charge_not_found"))
    );
    let (_, other) = charge(&router, "c2", 500).await;
    let (status, body) = send(&router, &refunds_of(&other["charge_id"]), Some("r1"), None).await;
    assert_eq!(
        (status, &body["code"]),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!("idempotency_key_reused")
        )
    );
    assert_eq!(control.stats().refunds, 1);
}

#[tokio::test]
async fn injected_failures_answer_503_and_change_nothing() {
    let (router, control) = router(&StandInConfig::default());
    control.fail_next(2);
    for _ in 0..2 {
        let (status, body) = charge(&router, "k", 100).await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::SERVICE_UNAVAILABLE, &json!("unavailable"))
        );
    }
    assert_eq!(control.stats().charges_taken, 0);
    assert_eq!(charge(&router, "k", 100).await.0, StatusCode::CREATED);

    control.set_failure_rate(1.0).expect("valid rate");
    assert_eq!(
        charge(&router, "k", 100).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(control.set_failure_rate(1.5).is_err());
    assert_eq!(
        charge(&router, "k", 100).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    control.set_failure_rate(0.0).expect("valid rate");
    assert_eq!(charge(&router, "k", 100).await.0, StatusCode::CREATED);

    let stats = control.stats();
    assert_eq!(
        (stats.requests, stats.injected_failures, stats.charges_taken),
        (6, 4, 1)
    );
    assert_eq!(send(&router, "/health", None, None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_seeded_failure_rate_fails_about_that_fraction_reproducibly() {
    let config = StandInConfig {
        failure_rate: 0.3,
        seed: Some(7),
        ..StandInConfig::default()
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (router, control) = router(&config);
        let mut statuses = Vec::new();
        for i in 0..200 {
            statuses.push(charge(&router, &format!("k{i}"), 100).await.0);
        }
        let failed = control.stats().injected_failures;
        assert!((30..=90).contains(&failed), "{failed} of 200 failed");
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1]);
}

#[tokio::test(start_paused = true)]
async fn latency_delays_each_served_request() {
    let (router, control) = router(&StandInConfig::default());
    control.set_latency(Duration::from_millis(250));
    let started = tokio::time::Instant::now();
    charge(&router, "k", 100).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[test]
fn settings_come_from_the_environment_with_defaults() {
    let none = |_: &str| None;
    assert_eq!(
        StandInConfig::from_lookup(none),
        Ok(StandInConfig::default())
    );

    let vars: HashMap<&str, &str> = [
        ("STAND_IN_GATEWAY_HOST", "0.0.0.0"),
        ("STAND_IN_GATEWAY_PORT", "9999"),
        ("STAND_IN_GATEWAY_LATENCY_MS", "15"),
        ("STAND_IN_GATEWAY_FAILURE_RATE", "0.25"),
        ("STAND_IN_GATEWAY_DECLINE_ABOVE", "5000"),
        ("STAND_IN_GATEWAY_SEED", ""),
    ]
    .into();
    let config = StandInConfig::from_lookup(|name| vars.get(name).map(|v| (*v).to_owned()));
    assert_eq!(
        config,
        Ok(StandInConfig {
            addr: "0.0.0.0:9999".parse().expect("address"),
            latency: Duration::from_millis(15),
            failure_rate: 0.25,
            decline_above: 5_000,
            seed: None,
        })
    );

    for (setting, value) in [
        ("STAND_IN_GATEWAY_FAILURE_RATE", "2"),
        ("STAND_IN_GATEWAY_FAILURE_RATE", "often"),
        ("STAND_IN_GATEWAY_PORT", "70000"),
        ("STAND_IN_GATEWAY_LATENCY_MS", "-1"),
    ] {
        let error = StandInConfig::from_lookup(|name| (name == setting).then(|| value.to_owned()))
            .unwrap_err();
        assert_eq!((error.setting, error.value.as_str()), (setting, value));
    }
}
