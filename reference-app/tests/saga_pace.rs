//! The saga keeps pace with a burst of orders (issue 16, point 11): the payment worker calls
//! the gateway for many payments at once, under a bound (`PAYMENT_CONCURRENCY`), and records
//! their outcomes together; the order service moves a round of paid orders to PROCESSING
//! together. Nothing of the money rules gives way for it (`money.rs`, `payment_worker.rs`).

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use commerce_client::OrderStatus;
use commerce_outbox::Backoff;
use commerce_testkit::TestDb;
use common::gateway::ScriptedGateway;
use common::{TestApp, Transport};
use reference_app::config::{PaymentGateway, SagaSettings, SecretUrl, StockStrategyKind};
use reference_app::services::payment::gateway::{
    BreakerState, ChargeId, ChargeOutcome, ChargeRequest, Gateway, GatewayError, RefundReceipt,
    RefundRequest,
};
use reference_app::services::payment::{PaymentWorker, WorkerSettings};
use reqwest::StatusCode;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

on_both_transports!(two_hundred_orders_placed_at_once_are_all_paid_and_processing_in_time);

/// Approves every charge after a short wait, counting the calls per order and the most it
/// had in flight at once.
#[derive(Default)]
struct Counting {
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    calls: Mutex<HashMap<Uuid, usize>>,
}

#[async_trait]
impl Gateway for Counting {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        *self
            .calls
            .lock()
            .unwrap()
            .entry(request.order_id)
            .or_default() += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(ChargeOutcome::Approved {
            charge_id: ChargeId(format!("ch_{}", request.order_id)),
        })
    }

    async fn refund(&self, request: &RefundRequest) -> Result<RefundReceipt, GatewayError> {
        Ok(RefundReceipt {
            refund_id: format!("re_{}", request.charge_id.0),
            charge_id: request.charge_id.clone(),
        })
    }

    fn breaker_state(&self) -> BreakerState {
        BreakerState::Closed
    }
}

/// 200 payments due at once: each charged exactly once, never more than the bound in flight
/// (and more than one: the calls overlap), every one approved with its `payment.approved`,
/// and the outcomes written in far fewer transactions than payments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_charges_a_burst_concurrently_under_its_bound_and_records_in_bulk() {
    const PAYMENTS: usize = 200;
    const BOUND: usize = 8;
    let db = TestDb::new(&reference_app::migrators().map(|(_, migrator)| migrator)).await;
    let orders: Vec<Uuid> = (0..PAYMENTS).map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO payment.payments (order_id, amount, currency, status) \
         SELECT id, 1000, 'EUR', 'pending' FROM UNNEST($1::uuid[]) AS t(id)",
    )
    .bind(&orders)
    .execute(db.pool())
    .await
    .unwrap();
    let gateway = Arc::new(Counting::default());
    let settings = WorkerSettings {
        poll: Duration::from_millis(20),
        lease: Duration::from_secs(60),
        concurrency: BOUND,
        backoff: Backoff::new(Duration::from_millis(50), Duration::from_millis(100)),
        ..WorkerSettings::default()
    };
    let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
    PaymentWorker::new(
        db.pool().clone(),
        "payments",
        "EUR",
        Arc::clone(&gateway) as Arc<dyn Gateway>,
        settings,
        Arc::default(),
    )
    .spawn(stop.clone(), &tasks);

    let approved = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM payment.payments WHERE status = 'approved'",
        )
        .fetch_one(db.pool())
        .await
        .unwrap()
    };
    // 200 calls of 20 ms, 8 at a time: 0.5 s of calls; one at a time would take 4 s.
    let all = commerce_testkit::eventually(Duration::from_secs(3), || async {
        approved().await == PAYMENTS as i64
    })
    .await;
    assert!(all, "{} of {PAYMENTS} approved in 3 s", approved().await);
    stop.cancel();
    tasks.close();
    tasks.wait().await;

    let calls = gateway.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), PAYMENTS);
    assert!(calls.values().all(|&n| n == 1), "a payment charged twice");
    let most = gateway.most_in_flight.load(Ordering::SeqCst);
    assert!(most <= BOUND, "{most} calls in flight, bound {BOUND}");
    assert!(most > 1, "the calls never overlapped");
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM commerce_outbox.event WHERE event_type = 'payment.approved'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(events, PAYMENTS as i64);
    // Rows written in one transaction share its `now()`.
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT updated_at) FROM payment.payments")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert!(
        transactions <= (PAYMENTS / 2) as i64,
        "{transactions} transactions recorded {PAYMENTS} outcomes"
    );
}

/// 200 customers order at once through the app (the batching stock strategy) against the
/// scripted gateway: every order ends PROCESSING within a bound, each charged exactly once.
async fn two_hundred_orders_placed_at_once_are_all_paid_and_processing_in_time(
    transport: Transport,
) {
    two_hundred_orders_paid_in_time(transport, SagaSettings::default().threads).await;
}

/// The same with `SAGA_THREADS=0`: the saga's work on the server's runtime, among the
/// requests, still pays every order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_runtime_of_its_own_the_saga_still_pays_every_order() {
    two_hundred_orders_paid_in_time(Transport::InProcess, 0).await;
}

async fn two_hundred_orders_paid_in_time(transport: Transport, saga_threads: usize) {
    const ORDERS: usize = 200;
    let gateway = ScriptedGateway::start().await;
    let url = gateway.url().to_owned();
    let app = Arc::new(
        TestApp::start_with(transport, |config| {
            config.payment.gateway = Some(PaymentGateway::Url(SecretUrl::new(url)));
            config.stock.strategy = StockStrategyKind::Batching;
            config.payment.worker.concurrency = 16;
            config.database.max_connections = 8;
            config.database.background_connections = 6;
            config.http.request_timeout = Duration::from_secs(50);
            config.orders.rate_per_minute = None;
            config.saga.threads = saga_threads;
        })
        .await,
    );
    let product = app.product("PACE-1", 700, 1_000).await;
    let started = Instant::now();
    let mut placing = JoinSet::new();
    for i in 0..ORDERS {
        let app = Arc::clone(&app);
        placing.spawn(async move {
            let customer = app.customer(&format!("pace-{i}"));
            let placed = app.order(&customer, product, 1).await.expect("placed");
            assert_eq!(placed.status, StatusCode::CREATED, "{placed:?}");
            placed.order.id
        });
    }
    let orders: Vec<Uuid> = placing.join_all().await;

    let bound = Duration::from_secs(30);
    let all_processing = commerce_testkit::eventually(bound, || async {
        let page: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM commerce.orders WHERE id = ANY($1) AND status = 'PROCESSING'",
        )
        .bind(&orders)
        .fetch_one(app.db.pool())
        .await
        .unwrap();
        page == ORDERS as i64
    })
    .await;
    let took = started.elapsed();
    if !all_processing {
        let mut stuck = Vec::new();
        for &order in &orders {
            let status = app.status(order).await;
            if status != OrderStatus::Processing {
                stuck.push(format!("{order}: {status:?}"));
            }
        }
        panic!(
            "{} of {ORDERS} orders not PROCESSING after {bound:?}: {:?}",
            stuck.len(),
            &stuck[..stuck.len().min(5)]
        );
    }
    for &order in &orders {
        let charges = gateway
            .requests()
            .iter()
            .filter(|r| r.kind == "charge" && r.order_id == Some(order))
            .count();
        assert_eq!(charges, 1, "order {order} charged {charges} times");
        assert!(gateway.money_kept(order), "{}", gateway.describe(order));
    }
    println!("{ORDERS} orders placed and PROCESSING in {took:?}");
    app.assert_audit_clean().await;
    Arc::into_inner(app).expect("no other handle").stop().await;
}
