//! The payment worker against the real database, with a scripted gateway that holds each
//! charge until the test lets it answer: what happens when the order is cancelled while its
//! charge is on the wire.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use commerce_outbox::{EventHandler, EventId};
use commerce_testkit::TestDb;
use reference_app::services::contracts::ORDER_CANCELLED;
use reference_app::services::payment::{
    Charge, ChargeAnswer, Gateway, GatewayFailure, OrderEvents, PaymentWorker, WorkerSettings,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// A gateway whose every charge waits for the test's answer.
struct Scripted {
    /// Each charge call announces itself with a channel for its answer.
    calls: mpsc::UnboundedSender<oneshot::Sender<Result<ChargeAnswer, GatewayFailure>>>,
    charges: AtomicU64,
    refunds: Mutex<Vec<String>>,
}

#[async_trait]
impl Gateway for Scripted {
    async fn charge(&self, _charge: &Charge) -> Result<ChargeAnswer, GatewayFailure> {
        self.charges.fetch_add(1, Ordering::SeqCst);
        let (answer, wait) = oneshot::channel();
        self.calls
            .send(answer)
            .map_err(|_| GatewayFailure::Unavailable("test over".into()))?;
        wait.await
            .unwrap_or_else(|_| Err(GatewayFailure::Unavailable("test over".into())))
    }

    async fn refund(&self, charge_id: &str, _key: &str) -> Result<(), GatewayFailure> {
        self.refunds.lock().unwrap().push(charge_id.to_owned());
        Ok(())
    }

    fn breaker_state(&self) -> &'static str {
        "closed"
    }
}

struct Rig {
    db: TestDb,
    gateway: Arc<Scripted>,
    calls: mpsc::UnboundedReceiver<oneshot::Sender<Result<ChargeAnswer, GatewayFailure>>>,
    events: OrderEvents,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Rig {
    async fn start() -> Self {
        let db = TestDb::new(&[
            &commerce_core::MIGRATOR,
            &commerce_outbox::MIGRATOR,
            &reference_app::MIGRATOR,
        ])
        .await;
        let (tx, calls) = mpsc::unbounded_channel();
        let gateway = Arc::new(Scripted {
            calls: tx,
            charges: AtomicU64::new(0),
            refunds: Mutex::new(Vec::new()),
        });
        let settings = WorkerSettings {
            poll: Duration::from_millis(20),
            lease: Duration::from_secs(60),
            batch: 4,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(100),
        };
        let worker = PaymentWorker::new(
            db.pool().clone(),
            "payments",
            Arc::clone(&gateway) as Arc<dyn Gateway>,
            settings,
            Arc::default(),
        );
        let events = OrderEvents::new(worker.wake());
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        worker.spawn(stop.clone(), &tasks);
        Self {
            db,
            gateway,
            calls,
            events,
            stop,
            tasks,
        }
    }

    async fn payment_to_take(&self) -> Uuid {
        let order = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO payment.payments (order_id, amount, currency, status) \
             VALUES ($1, 1000, 'KRW', 'pending')",
        )
        .bind(order)
        .execute(self.db.pool())
        .await
        .unwrap();
        order
    }

    /// The order service's `order.cancelled`, applied by the payment service's consumer.
    async fn cancel(&self, order: Uuid) {
        let envelope = commerce_outbox::Envelope {
            id: EventId(Uuid::now_v7()),
            event_type: ORDER_CANCELLED.into(),
            aggregate_type: "order".into(),
            aggregate_id: order.to_string(),
            aggregate_seq: 2,
            occurred_at: chrono::Utc::now(),
            schema_version: 1,
            payload: serde_json::json!({ "order": order, "reason": "payment timed out" }),
        };
        let mut conn = self.db.pool().acquire().await.unwrap();
        self.events.handle(&mut conn, &envelope).await.unwrap();
    }

    async fn next_call(&mut self) -> oneshot::Sender<Result<ChargeAnswer, GatewayFailure>> {
        tokio::time::timeout(Duration::from_secs(5), self.calls.recv())
            .await
            .expect("the worker calls the gateway")
            .expect("gateway alive")
    }

    async fn status(&self, order: Uuid) -> String {
        sqlx::query_scalar("SELECT status FROM payment.payments WHERE order_id = $1")
            .bind(order)
            .fetch_one(self.db.pool())
            .await
            .unwrap()
    }

    async fn wait_for(&self, order: Uuid, status: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.status(order).await;
            if now == status {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "payment still {now}, expected {status}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        drop(self.calls);
        self.tasks.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_that_fails_after_the_order_was_cancelled_is_voided_not_tried_again() {
    let mut rig = Rig::start().await;
    let order = rig.payment_to_take().await;
    let answer = rig.next_call().await;
    // The saga timeout cancels the order while the charge is on the wire ...
    rig.cancel(order).await;
    assert_eq!(rig.status(order).await, "charging");
    // ... and the gateway, still down, fails it.
    answer
        .send(Err(GatewayFailure::Unavailable("503".into())))
        .unwrap();
    rig.wait_for(order, "voided").await;
    // Well past the backoff: no further attempt, so a gateway that comes back charges nothing.
    let later = tokio::time::timeout(Duration::from_millis(500), rig.calls.recv()).await;
    assert!(later.is_err(), "the cancelled payment was tried again");
    assert_eq!(rig.gateway.charges.load(Ordering::SeqCst), 1);
    assert_eq!(rig.status(order).await, "voided");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_approved_after_the_order_was_cancelled_is_refunded() {
    let mut rig = Rig::start().await;
    let order = rig.payment_to_take().await;
    let answer = rig.next_call().await;
    rig.cancel(order).await;
    answer
        .send(Ok(ChargeAnswer::Approved {
            charge_id: "ch_1".into(),
        }))
        .unwrap();
    rig.wait_for(order, "refunded").await;
    assert_eq!(*rig.gateway.refunds.lock().unwrap(), ["ch_1"]);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_charge_of_a_live_order_is_tried_again_and_approved() {
    let mut rig = Rig::start().await;
    let order = rig.payment_to_take().await;
    rig.next_call()
        .await
        .send(Err(GatewayFailure::Unavailable("503".into())))
        .unwrap();
    rig.wait_for(order, "pending").await;
    rig.next_call()
        .await
        .send(Ok(ChargeAnswer::Approved {
            charge_id: "ch_2".into(),
        }))
        .unwrap();
    rig.wait_for(order, "approved").await;
    assert_eq!(rig.gateway.charges.load(Ordering::SeqCst), 2);
    rig.stop().await;
}
