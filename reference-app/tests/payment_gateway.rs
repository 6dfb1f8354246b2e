//! The payment gateway client over HTTP against the stand-in PG, served on a free loopback port.
//! Real time, short settings: each test takes well under a second.

use std::time::Duration;

use reference_app::services::payment::gateway::{
    BreakerState, ChargeId, ChargeOutcome, ChargeRequest, GatewayClient, GatewayClientConfig,
    GatewayError, HttpTransport, RefundReceipt, RefundRequest, UnavailableCause,
};
use reference_app::services::payment::stand_in::{self, StandInConfig, StandInControl};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A stand-in PG served on 127.0.0.1:0 until [`RunningGateway::stop`].
struct RunningGateway {
    url: String,
    control: StandInControl,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

impl RunningGateway {
    async fn start(config: StandInConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        let (router, control) = stand_in::router(&config);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(stand_in::serve(listener, router, async {
            let _ = stopped.await;
        }));
        Self {
            url,
            control,
            stop,
            server,
        }
    }

    fn client(&self) -> GatewayClient<HttpTransport> {
        GatewayClient::http(&self.url, client_config()).expect("client")
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.server
            .await
            .expect("server task")
            .expect("server ran cleanly");
    }
}

fn client_config() -> GatewayClientConfig {
    GatewayClientConfig {
        overall_timeout: Duration::from_secs(5),
        attempt_timeout: Duration::from_secs(1),
        max_attempts: 3,
        backoff_initial: Duration::from_millis(10),
        backoff_multiplier: 2.0,
        backoff_max: Duration::from_millis(50),
        backoff_jitter: 0.5,
        breaker_failure_threshold: 3,
        breaker_open_duration: Duration::from_millis(300),
    }
}

fn charge(key: &str, amount: i64) -> ChargeRequest {
    ChargeRequest {
        order_id: uuid::Uuid::new_v4(),
        amount,
        currency: "EUR".into(),
        idempotency_key: key.into(),
    }
}

#[tokio::test]
async fn approves_and_declines_above_the_threshold() {
    let pg = RunningGateway::start(StandInConfig {
        decline_above: 10_000,
        ..StandInConfig::default()
    })
    .await;
    let client = pg.client();

    let approved = client.charge(&charge("a", 10_000)).await.expect("answer");
    let ChargeOutcome::Approved { charge_id } = &approved else {
        panic!("declined: {approved:?}")
    };
    assert!(charge_id.0.starts_with("ch_"), "{charge_id}");
    assert_eq!(
        client.charge(&charge("b", 10_001)).await,
        Ok(ChargeOutcome::Declined {
            reason: "amount_above_limit".into()
        })
    );
    let stats = pg.control.stats();
    assert_eq!((stats.charges_taken, stats.declines), (1, 1));
    pg.stop().await;
}

#[tokio::test]
async fn retries_through_injected_503s_and_charges_once() {
    let pg = RunningGateway::start(StandInConfig::default()).await;
    let client = pg.client();
    pg.control.fail_next(2);

    let outcome = client.charge(&charge("k", 4_990)).await;
    assert!(
        matches!(outcome, Ok(ChargeOutcome::Approved { .. })),
        "{outcome:?}"
    );
    let stats = pg.control.stats();
    assert_eq!(
        (stats.requests, stats.injected_failures, stats.charges_taken),
        (3, 2, 1)
    );
    assert_eq!(client.breaker_state(), BreakerState::Closed);
    pg.stop().await;
}

#[tokio::test]
async fn a_repeated_charge_with_the_same_key_charges_once() {
    let pg = RunningGateway::start(StandInConfig {
        latency: Duration::from_millis(20),
        ..StandInConfig::default()
    })
    .await;
    let client = std::sync::Arc::new(pg.client());
    let request = charge("order-7", 4_990);

    let first = client.charge(&request).await.expect("answer");
    let repeats: Vec<_> = (0..8)
        .map(|_| {
            let (client, request) = (client.clone(), request.clone());
            tokio::spawn(async move { client.charge(&request).await })
        })
        .collect();
    for repeat in repeats {
        assert_eq!(repeat.await.expect("task"), Ok(first.clone()));
    }
    assert_eq!(pg.control.stats().charges_taken, 1);

    let ChargeOutcome::Approved { charge_id } = first else {
        panic!("declined: {first:?}")
    };
    let refund = RefundRequest {
        charge_id: charge_id.clone(),
        idempotency_key: "refund-7".into(),
    };
    let receipt: RefundReceipt = client.refund(&refund).await.expect("refund");
    assert_eq!(receipt.charge_id, charge_id);
    assert_eq!(client.refund(&refund).await, Ok(receipt));
    assert_eq!(pg.control.stats().refunds, 1);
    pg.stop().await;
}

#[tokio::test]
async fn a_permanent_refusal_ends_the_call_at_once() {
    let pg = RunningGateway::start(StandInConfig::default()).await;
    let client = pg.client();
    client.charge(&charge("k", 100)).await.expect("answer");

    // The same key for another amount: the PG refuses it, and a retry would not help.
    let error = client.charge(&charge("k", 200)).await.unwrap_err();
    let GatewayError::Refused { status, message } = &error else {
        panic!("not a refusal: {error:?}")
    };
    assert_eq!(*status, 422);
    assert!(message.starts_with("idempotency_key_reused"), "{message}");
    let unknown = RefundRequest {
        charge_id: ChargeId("ch_unknown".into()),
        idempotency_key: "r".into(),
    };
    let error = client.refund(&unknown).await.unwrap_err();
    assert!(
        matches!(error, GatewayError::Refused { status: 404, .. }),
        "{error:?}"
    );
    assert_eq!(pg.control.stats().requests, 3);
    pg.stop().await;
}

#[tokio::test]
async fn a_down_pg_opens_the_breaker_and_recovery_closes_it() {
    let pg = RunningGateway::start(StandInConfig::default()).await;
    let client = pg.client();
    pg.control.set_failure_rate(1.0).expect("valid rate");

    for _ in 0..3 {
        let error = client.charge(&charge("k", 100)).await.unwrap_err();
        assert_eq!(
            error,
            GatewayError::Unavailable {
                attempts: 3,
                cause: UnavailableCause::ServerError {
                    status: 503,
                    retry_after: None
                },
                // 503s turn a request away before any work: nothing can have been taken.
                may_have_charged: false,
            }
        );
    }
    assert_eq!(client.breaker_state(), BreakerState::Open);
    let requests = pg.control.stats().requests;
    assert_eq!(requests, 9);

    // Open: the call fails fast and never reaches the PG.
    let error = client.charge(&charge("k", 100)).await.unwrap_err();
    assert!(
        matches!(
            error,
            GatewayError::BreakerOpen {
                retry_after: Some(_)
            }
        ),
        "{error:?}"
    );
    assert_eq!(pg.control.stats().requests, requests);

    // The PG recovers; after the open duration the probe goes through and closes the breaker.
    pg.control.set_failure_rate(0.0).expect("valid rate");
    tokio::time::sleep(client_config().breaker_open_duration).await;
    let outcome = client.charge(&charge("k", 100)).await;
    assert!(
        matches!(outcome, Ok(ChargeOutcome::Approved { .. })),
        "{outcome:?}"
    );
    assert_eq!(client.breaker_state(), BreakerState::Closed);
    assert_eq!(pg.control.stats().charges_taken, 1);
    pg.stop().await;
}

#[tokio::test]
async fn a_slow_pg_times_out_per_attempt() {
    let pg = RunningGateway::start(StandInConfig {
        latency: Duration::from_millis(600),
        ..StandInConfig::default()
    })
    .await;
    let config = GatewayClientConfig {
        attempt_timeout: Duration::from_millis(100),
        max_attempts: 2,
        ..client_config()
    };
    let client = GatewayClient::http(&pg.url, config).expect("client");

    let started = std::time::Instant::now();
    assert_eq!(
        client.charge(&charge("k", 100)).await,
        Err(GatewayError::Unavailable {
            attempts: 2,
            cause: UnavailableCause::AttemptTimedOut {
                after: Duration::from_millis(100)
            },
            may_have_charged: true,
        })
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    pg.stop().await;
}

#[tokio::test]
async fn a_pg_that_is_not_listening_is_unavailable() {
    // A port that was free a moment ago and has no listener now.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    drop(listener);
    let client = GatewayClient::http(&url, client_config()).expect("client");

    let error = client.charge(&charge("k", 100)).await.unwrap_err();
    assert!(
        matches!(
            error,
            GatewayError::Unavailable {
                attempts: 3,
                cause: UnavailableCause::Connection { sent: false, .. },
                may_have_charged: false,
            }
        ),
        "{error:?}"
    );
}
