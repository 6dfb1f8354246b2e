//! The client's policies against the scripted PG, on tokio's paused clock: every wait below is
//! virtual, so the assertions on timing are exact and the tests take no real time.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::scripted::{ScriptedTransport, Step};
use super::*;

fn config() -> GatewayClientConfig {
    GatewayClientConfig {
        overall_timeout: Duration::from_secs(10),
        attempt_timeout: Duration::from_secs(2),
        max_attempts: 3,
        backoff_initial: Duration::from_millis(100),
        backoff_multiplier: 2.0,
        backoff_max: Duration::from_secs(1),
        // Exact backoffs, except in the jitter test.
        backoff_jitter: 0.0,
        breaker_failure_threshold: 3,
        breaker_open_duration: Duration::from_secs(30),
    }
}

/// The breaker tests make one attempt per call, so one scripted failure is one failed call.
fn single_attempt() -> GatewayClientConfig {
    GatewayClientConfig {
        max_attempts: 1,
        ..config()
    }
}

fn client(
    config: GatewayClientConfig,
    steps: impl IntoIterator<Item = Step>,
) -> (GatewayClient<ScriptedTransport>, ScriptedTransport) {
    let pg = ScriptedTransport::new(steps);
    let client = GatewayClient::new(pg.clone(), config).expect("valid config");
    (client, pg)
}

fn request() -> ChargeRequest {
    ChargeRequest {
        order_id: uuid::Uuid::from_u128(42),
        amount: 4_990,
        currency: "EUR".into(),
        idempotency_key: "charge-42".into(),
    }
}

fn approved(id: &str) -> ChargeOutcome {
    ChargeOutcome::Approved {
        charge_id: ChargeId(id.into()),
    }
}

fn gaps(attempts: &[Instant]) -> Vec<Duration> {
    attempts.windows(2).map(|w| w[1] - w[0]).collect()
}

/// tokio's timer counts whole milliseconds, so a wait may end up to 1 ms late.
fn assert_within(actual: Duration, low: Duration, high: Duration) {
    assert!(
        actual >= low && actual <= high + Duration::from_millis(1),
        "{actual:?} not within {low:?}..={high:?}"
    );
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

#[tokio::test(start_paused = true)]
async fn approves_on_the_first_attempt() {
    let (client, pg) = client(config(), [Step::Approve("ch_1")]);
    assert_eq!(client.charge(&request()).await, Ok(approved("ch_1")));
    assert_eq!(pg.attempts().len(), 1);
    assert_eq!(client.breaker_state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_decline_is_an_answer_and_is_not_retried() {
    let (client, pg) = client(
        config(),
        [Step::Decline("insufficient_funds"), Step::Approve("ch_1")],
    );
    assert_eq!(
        client.charge(&request()).await,
        Ok(ChargeOutcome::Declined {
            reason: "insufficient_funds".into()
        })
    );
    assert_eq!((pg.attempts().len(), pg.remaining()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_permanent_refusal_is_not_retried_and_took_nothing() {
    let (client, pg) = client(config(), [Step::refused(422), Step::Approve("ch_1")]);
    let error = client.charge(&request()).await.unwrap_err();
    assert!(
        matches!(error, GatewayError::Refused { status: 422, .. }),
        "{error:?}"
    );
    assert!(!error.may_have_charged());
    assert_eq!((pg.attempts().len(), pg.remaining()), (1, 1));
}

/// Review C2: an answer that cannot be read may have taken the money, so the same key is
/// asked again (the PG replays its first answer) instead of the charge being failed.
#[tokio::test(start_paused = true)]
async fn an_unreadable_answer_is_an_unknown_outcome_asked_again() {
    let (gateway, pg) = client(config(), [Step::unreadable(), Step::Approve("ch_1")]);
    assert_eq!(gateway.charge(&request()).await, Ok(approved("ch_1")));
    assert_eq!(pg.attempts().len(), 2);

    let (gateway, _pg) = client(single_attempt(), [Step::unreadable()]);
    let error = gateway.charge(&request()).await.unwrap_err();
    assert!(
        matches!(
            error,
            GatewayError::Unavailable {
                cause: UnavailableCause::UnreadableAnswer { .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.may_have_charged(), "{error:?}");
}

/// Review C2: 408, 409 (the key's first request still running), 425 and 429 are "not now",
/// never a refusal: retried within the call, and an unknown outcome after it.
#[tokio::test(start_paused = true)]
async fn not_now_answers_are_retried_and_never_refusals() {
    for step in [
        Step::throttled(408, None),
        Step::Fail(UnavailableCause::InProgress.into()),
        Step::throttled(425, None),
        Step::throttled(429, None),
    ] {
        let name = format!("{step:?}");
        let (gateway, pg) = client(config(), [step.clone(), Step::Approve("ch_1")]);
        assert_eq!(
            gateway.charge(&request()).await,
            Ok(approved("ch_1")),
            "{name}"
        );
        assert_eq!(pg.attempts().len(), 2, "{name}");

        let (gateway, _pg) = client(single_attempt(), [step]);
        let error = gateway.charge(&request()).await.unwrap_err();
        assert!(
            matches!(error, GatewayError::Unavailable { .. }),
            "{name}: {error:?}"
        );
    }
}

/// A PG that names its wait is not retried within the call: the caller parks the charge for
/// that long (decision 0009), and nothing was taken.
#[tokio::test(start_paused = true)]
async fn a_retry_after_ends_the_call_and_is_reported() {
    let (gateway, pg) = client(
        config(),
        [
            Step::throttled(429, Some(Duration::from_secs(7))),
            Step::Approve("ch_1"),
        ],
    );
    let error = gateway.charge(&request()).await.unwrap_err();
    assert_eq!(
        error.retry_after(),
        Some(Duration::from_secs(7)),
        "{error:?}"
    );
    assert!(!error.may_have_charged());
    assert_eq!((pg.attempts().len(), pg.remaining()), (1, 1));
}

/// Review M1: whether a failed call may have taken the money is remembered across its
/// attempts: a timeout then a 503 may have charged; 503s alone did not.
#[tokio::test(start_paused = true)]
async fn whether_a_call_may_have_charged_covers_every_attempt() {
    let (gateway, _pg) = client(
        config(),
        [Step::Hang, Step::unavailable(503), Step::unavailable(503)],
    );
    let error = gateway.charge(&request()).await.unwrap_err();
    assert!(error.may_have_charged(), "{error:?}");

    let (gateway, _pg) = client(
        config(),
        [
            Step::unavailable(503),
            Step::throttled(429, None),
            Step::unavailable(503),
        ],
    );
    let error = gateway.charge(&request()).await.unwrap_err();
    assert!(!error.may_have_charged(), "{error:?}");
}

#[tokio::test(start_paused = true)]
async fn retries_5xx_with_exponential_backoff_until_approved() {
    let (client, pg) = client(
        config(),
        [
            Step::unavailable(503),
            Step::unavailable(502),
            Step::Approve("ch_1"),
        ],
    );
    assert_eq!(client.charge(&request()).await, Ok(approved("ch_1")));
    let gaps = gaps(&pg.attempts());
    assert_eq!(gaps.len(), 2);
    assert_within(gaps[0], ms(100), ms(100));
    assert_within(gaps[1], ms(200), ms(200));
}

#[tokio::test(start_paused = true)]
async fn retries_stop_after_max_attempts() {
    let (client, pg) = client(
        config(),
        [
            Step::unavailable(503),
            Step::unavailable(503),
            Step::unavailable(503),
            Step::Approve("ch_1"),
        ],
    );
    assert_eq!(
        client.charge(&request()).await,
        Err(GatewayError::Unavailable {
            attempts: 3,
            cause: UnavailableCause::ServerError {
                status: 503,
                retry_after: None
            },
            may_have_charged: false,
        })
    );
    assert_eq!(pg.remaining(), 1);
}

#[tokio::test(start_paused = true)]
async fn jitter_keeps_each_backoff_within_its_band() {
    let config = GatewayClientConfig {
        max_attempts: 5,
        backoff_jitter: 0.5,
        ..config()
    };
    let (client, pg) = client(
        config,
        [
            Step::unavailable(503),
            Step::unavailable(503),
            Step::unavailable(503),
            Step::unavailable(503),
            Step::Approve("ch_1"),
        ],
    );
    assert_eq!(client.charge(&request()).await, Ok(approved("ch_1")));
    // 100, 200, 400, 800 ms (under the 1 s cap), each within ±50 %.
    let gaps = gaps(&pg.attempts());
    for (gap, base) in gaps.iter().zip([100, 200, 400, 800]) {
        assert_within(*gap, ms(base / 2), ms(base * 3 / 2));
    }
    assert_eq!(gaps.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_that_times_out_is_retried() {
    let (client, pg) = client(config(), [Step::Hang, Step::Approve("ch_1")]);
    let started = Instant::now();
    assert_eq!(client.charge(&request()).await, Ok(approved("ch_1")));
    // The 2 s attempt timeout, then the first backoff.
    assert_within(started.elapsed(), ms(2_100), ms(2_100));
    assert_eq!(pg.attempts().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_slow_answer_within_the_attempt_timeout_is_kept() {
    let (client, pg) = client(config(), [Step::after(ms(1_900), Step::Approve("ch_1"))]);
    assert_eq!(client.charge(&request()).await, Ok(approved("ch_1")));
    assert_eq!(pg.attempts().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_overall_timeout_ends_the_call_and_the_breaker_counts_it() {
    let config = GatewayClientConfig {
        overall_timeout: Duration::from_secs(3),
        breaker_failure_threshold: 1,
        ..config()
    };
    let (client, pg) = client(config, [Step::Hang, Step::Hang, Step::Hang]);
    let started = Instant::now();
    assert_eq!(
        client.charge(&request()).await,
        Err(GatewayError::Unavailable {
            attempts: 2,
            cause: UnavailableCause::DeadlineExceeded {
                after: Duration::from_secs(3)
            },
            may_have_charged: true,
        })
    );
    // Attempt 1 times out at 2 s, attempt 2 starts at 2.1 s and is cut at the 3 s deadline.
    assert_within(started.elapsed(), ms(3_000), ms(3_000));
    assert_eq!(pg.attempts().len(), 2);
    // A PG that hangs past the deadline still counts against the breaker.
    assert_eq!(client.breaker_state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_when_its_backoff_would_pass_the_deadline() {
    let config = GatewayClientConfig {
        overall_timeout: ms(2_050),
        ..config()
    };
    let (client, pg) = client(config, [Step::Hang, Step::Approve("ch_1")]);
    let started = Instant::now();
    assert_eq!(
        client.charge(&request()).await,
        Err(GatewayError::Unavailable {
            attempts: 1,
            cause: UnavailableCause::AttemptTimedOut {
                after: Duration::from_secs(2)
            },
            may_have_charged: true,
        })
    );
    assert_within(started.elapsed(), ms(2_000), ms(2_000));
    assert_eq!(pg.remaining(), 1);
}

/// Fails `threshold` single-attempt calls, checking that each one before the last is an
/// ordinary `Unavailable` with the breaker still closed: the fallback is for an open breaker only.
async fn trip(client: &GatewayClient<ScriptedTransport>, pg: &ScriptedTransport) {
    let threshold = client.config().breaker_failure_threshold;
    pg.push((0..threshold).map(|_| Step::unavailable(503)));
    for _ in 0..threshold {
        assert_eq!(client.breaker_state(), BreakerState::Closed);
        let error = client.charge(&request()).await.unwrap_err();
        assert!(
            matches!(error, GatewayError::Unavailable { attempts: 1, .. }),
            "{error:?}"
        );
    }
    assert_eq!(client.breaker_state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_after_the_threshold_and_fails_fast_without_calling() {
    let (client, pg) = client(single_attempt(), []);
    trip(&client, &pg).await;
    pg.push([Step::Approve("ch_1")]);
    assert_eq!(
        client.charge(&request()).await,
        Err(GatewayError::BreakerOpen {
            retry_after: Some(Duration::from_secs(30))
        })
    );
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(
        client.charge(&request()).await,
        Err(GatewayError::BreakerOpen {
            retry_after: Some(Duration::from_secs(1))
        })
    );
    assert_eq!(pg.attempts().len(), 3, "no call reached the PG while open");
    assert_eq!(pg.remaining(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_successful_probe_after_the_open_duration_closes_the_breaker() {
    let (client, pg) = client(single_attempt(), []);
    let client = Arc::new(client);
    trip(&client, &pg).await;
    tokio::time::advance(Duration::from_secs(30)).await;

    pg.push([Step::after(Duration::from_secs(1), Step::Approve("ch_1"))]);
    let probe = tokio::spawn({
        let client = Arc::clone(&client);
        async move { client.charge(&request()).await }
    });
    for _ in 0..10 {
        if pg.attempts().len() == 4 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(pg.attempts().len(), 4, "the probe reached the PG");
    assert_eq!(client.breaker_state(), BreakerState::HalfOpen);
    // Only the probe goes through while half-open.
    assert_eq!(
        client.charge(&request()).await,
        Err(GatewayError::BreakerOpen { retry_after: None })
    );
    assert_eq!(pg.attempts().len(), 4);

    assert_eq!(probe.await.expect("probe task"), Ok(approved("ch_1")));
    assert_eq!(client.breaker_state(), BreakerState::Closed);
    pg.push([Step::Approve("ch_2")]);
    assert_eq!(client.charge(&request()).await, Ok(approved("ch_2")));
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_the_breaker_for_another_open_duration() {
    let (client, pg) = client(single_attempt(), []);
    trip(&client, &pg).await;
    tokio::time::advance(Duration::from_secs(30)).await;

    pg.push([Step::unavailable(503)]);
    let error = client.charge(&request()).await.unwrap_err();
    assert!(
        matches!(error, GatewayError::Unavailable { attempts: 1, .. }),
        "{error:?}"
    );
    assert_eq!(client.breaker_state(), BreakerState::Open);
    assert_eq!(
        client.charge(&request()).await,
        Err(GatewayError::BreakerOpen {
            retry_after: Some(Duration::from_secs(30))
        })
    );

    tokio::time::advance(Duration::from_secs(30)).await;
    pg.push([Step::Approve("ch_1")]);
    assert_eq!(client.charge(&request()).await, Ok(approved("ch_1")));
    assert_eq!(client.breaker_state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_counts_calls_not_attempts() {
    // Two calls of three failed attempts each stay under a threshold of three calls.
    let (client, pg) = client(config(), []);
    pg.push((0..6).map(|_| Step::unavailable(503)));
    for _ in 0..2 {
        let error = client.charge(&request()).await.unwrap_err();
        assert!(
            matches!(error, GatewayError::Unavailable { attempts: 3, .. }),
            "{error:?}"
        );
    }
    assert_eq!(client.breaker_state(), BreakerState::Closed);
    assert_eq!(pg.attempts().len(), 6);
}

#[tokio::test(start_paused = true)]
async fn declines_and_refusals_do_not_open_the_breaker() {
    let config = GatewayClientConfig {
        breaker_failure_threshold: 2,
        ..single_attempt()
    };
    let (client, _pg) = client(
        config,
        [
            Step::Decline("do_not_honor"),
            Step::refused(400),
            Step::Decline("do_not_honor"),
            Step::refused(403),
        ],
    );
    for _ in 0..4 {
        let _answer = client.charge(&request()).await;
    }
    assert_eq!(client.breaker_state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_count_of_consecutive_failures() {
    let (client, _pg) = client(
        single_attempt(),
        [
            Step::unavailable(503),
            Step::unavailable(503),
            Step::Approve("ch_1"),
            Step::unavailable(503),
            Step::unavailable(503),
        ],
    );
    for _ in 0..5 {
        let _answer = client.charge(&request()).await;
    }
    assert_eq!(client.breaker_state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_refund_is_retried_like_a_charge() {
    let (client, pg) = client(config(), [Step::unavailable(503), Step::Refund("re_1")]);
    let receipt = client
        .refund(&RefundRequest {
            charge_id: ChargeId("ch_1".into()),
            idempotency_key: "refund-42".into(),
        })
        .await
        .expect("refunded");
    assert_eq!(
        receipt,
        RefundReceipt {
            refund_id: "re_1".into(),
            charge_id: ChargeId("ch_1".into())
        }
    );
    assert_eq!(pg.attempts().len(), 2);
}

#[test]
fn settings_out_of_range_are_refused() {
    type Breakage = fn(&mut GatewayClientConfig);
    let cases: [(&str, Breakage); 8] = [
        ("overall_timeout", |c| c.overall_timeout = Duration::ZERO),
        ("attempt_timeout", |c| c.attempt_timeout = Duration::MAX),
        ("breaker_open_duration", |c| {
            c.breaker_open_duration = Duration::ZERO;
        }),
        ("max_attempts", |c| c.max_attempts = 0),
        ("backoff_multiplier", |c| c.backoff_multiplier = f64::NAN),
        ("backoff_jitter", |c| c.backoff_jitter = 1.5),
        ("backoff_max", |c| c.backoff_max = Duration::from_millis(10)),
        ("breaker_failure_threshold", |c| {
            c.breaker_failure_threshold = 0;
        }),
    ];
    for (field, break_it) in cases {
        let mut config = GatewayClientConfig::default();
        break_it(&mut config);
        let error = GatewayClient::new(ScriptedTransport::default(), config).unwrap_err();
        assert!(
            matches!(error, ConfigError::Invalid { field: f, .. } if f == field),
            "{field}: {error:?}"
        );
    }
    assert!(
        GatewayClient::new(ScriptedTransport::default(), GatewayClientConfig::default()).is_ok()
    );
}

#[test]
fn only_http_urls_make_a_transport() {
    for url in ["not a url", "ftp://pg.example/", "mailto:pg@example.com"] {
        assert!(
            matches!(HttpTransport::new(url), Err(ConfigError::InvalidUrl { .. })),
            "{url}"
        );
    }
    assert!(HttpTransport::new("http://127.0.0.1:8090/pg").is_ok());
}
