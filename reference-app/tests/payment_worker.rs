//! The payment worker against the real database, with a scripted gateway that holds each
//! call until the test lets it answer: what happens when the order is cancelled while its
//! charge is on the wire, when a call's answer is lost, and when refunds race or are refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use commerce_outbox::{Backoff, EventHandler, EventId};
use commerce_testkit::TestDb;
use reference_app::services::contracts::ORDER_CANCELLED;
use reference_app::services::payment::gateway::{
    BreakerState, ChargeId, ChargeOutcome, ChargeRequest, Gateway, GatewayError, RefundReceipt,
    RefundRequest, UnavailableCause,
};
use reference_app::services::payment::{OrderEvents, PaymentWorker, WorkerSettings};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

type ChargeAnswer = Result<ChargeOutcome, GatewayError>;
type RefundAnswer = Result<RefundReceipt, GatewayError>;

/// A gateway whose every call waits for the test's answer.
struct Scripted {
    charges: mpsc::UnboundedSender<oneshot::Sender<ChargeAnswer>>,
    refunds: mpsc::UnboundedSender<(String, oneshot::Sender<RefundAnswer>)>,
    charge_calls: AtomicU64,
    refund_calls: Mutex<Vec<String>>,
}

fn test_over() -> GatewayError {
    GatewayError::BreakerOpen { retry_after: None }
}

#[async_trait]
impl Gateway for Scripted {
    async fn charge(&self, _request: &ChargeRequest) -> ChargeAnswer {
        self.charge_calls.fetch_add(1, Ordering::SeqCst);
        let (answer, wait) = oneshot::channel();
        self.charges.send(answer).map_err(|_| test_over())?;
        wait.await.unwrap_or_else(|_| Err(test_over()))
    }

    async fn refund(&self, request: &RefundRequest) -> RefundAnswer {
        let charge = request.charge_id.0.clone();
        self.refund_calls.lock().unwrap().push(charge.clone());
        let (answer, wait) = oneshot::channel();
        self.refunds
            .send((charge, answer))
            .map_err(|_| test_over())?;
        wait.await.unwrap_or_else(|_| Err(test_over()))
    }

    fn breaker_state(&self) -> BreakerState {
        BreakerState::Closed
    }
}

fn approved(id: &str) -> ChargeAnswer {
    Ok(ChargeOutcome::Approved {
        charge_id: ChargeId(id.into()),
    })
}

/// A 503: the gateway turned the call away before doing anything.
fn turned_away() -> ChargeAnswer {
    Err(GatewayError::Unavailable {
        attempts: 1,
        cause: UnavailableCause::ServerError {
            status: 503,
            retry_after: None,
        },
        may_have_charged: false,
    })
}

/// Every attempt timed out: the gateway may have taken the money.
fn answer_lost() -> ChargeAnswer {
    Err(GatewayError::Unavailable {
        attempts: 3,
        cause: UnavailableCause::AttemptTimedOut {
            after: Duration::from_secs(2),
        },
        may_have_charged: true,
    })
}

fn receipt(charge: &str) -> RefundAnswer {
    Ok(RefundReceipt {
        refund_id: format!("re_{charge}"),
        charge_id: ChargeId(charge.into()),
    })
}

struct Rig {
    db: TestDb,
    gateway: Arc<Scripted>,
    charges: mpsc::UnboundedReceiver<oneshot::Sender<ChargeAnswer>>,
    refunds: mpsc::UnboundedReceiver<(String, oneshot::Sender<RefundAnswer>)>,
    events: OrderEvents,
    stop: CancellationToken,
    tasks: TaskTracker,
}

fn settings() -> WorkerSettings {
    WorkerSettings {
        poll: Duration::from_millis(20),
        lease: Duration::from_secs(60),
        concurrency: 4,
        backoff: Backoff::new(Duration::from_millis(50), Duration::from_millis(100)),
        ..WorkerSettings::default()
    }
}

impl Rig {
    async fn start() -> Self {
        Self::with_workers(1, settings()).await
    }

    /// `workers` workers (as in several processes) sharing the database and the gateway.
    async fn with_workers(workers: usize, settings: WorkerSettings) -> Self {
        let db = TestDb::new(&reference_app::migrators().map(|(_, migrator)| migrator)).await;
        let (charges_tx, charges) = mpsc::unbounded_channel();
        let (refunds_tx, refunds) = mpsc::unbounded_channel();
        let gateway = Arc::new(Scripted {
            charges: charges_tx,
            refunds: refunds_tx,
            charge_calls: AtomicU64::new(0),
            refund_calls: Mutex::new(Vec::new()),
        });
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        let mut wake = None;
        for _ in 0..workers {
            let worker = PaymentWorker::new(
                db.pool().clone(),
                "payments",
                "KRW",
                Arc::clone(&gateway) as Arc<dyn Gateway>,
                settings,
                Arc::default(),
            );
            wake.get_or_insert_with(|| worker.wake());
            worker.spawn(stop.clone(), &tasks);
        }
        let events = OrderEvents::new(wake.expect("one worker at least"), "payments", "KRW");
        Self {
            db,
            gateway,
            charges,
            refunds,
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
            traceparent: None,
        };
        let mut conn = self.db.pool().acquire().await.unwrap();
        self.events.handle(&mut conn, &envelope).await.unwrap();
    }

    async fn next_charge(&mut self) -> oneshot::Sender<ChargeAnswer> {
        tokio::time::timeout(Duration::from_secs(5), self.charges.recv())
            .await
            .expect("the worker calls the gateway")
            .expect("gateway alive")
    }

    async fn next_refund(&mut self) -> (String, oneshot::Sender<RefundAnswer>) {
        tokio::time::timeout(Duration::from_secs(5), self.refunds.recv())
            .await
            .expect("the worker asks for a refund")
            .expect("gateway alive")
    }

    async fn status(&self, order: Uuid) -> String {
        sqlx::query_scalar("SELECT status FROM payment.payments WHERE order_id = $1")
            .bind(order)
            .fetch_one(self.db.pool())
            .await
            .unwrap()
    }

    async fn events_of(&self, event_type: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM commerce_outbox.event WHERE event_type = $1")
            .bind(event_type)
            .fetch_one(self.db.pool())
            .await
            .unwrap()
    }

    async fn wait_for(&self, order: Uuid, status: &str) {
        let reached = commerce_testkit::eventually(Duration::from_secs(5), || async {
            self.status(order).await == status
        })
        .await;
        assert!(
            reached,
            "payment still {}, expected {status}",
            self.status(order).await
        );
    }

    async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        drop(self.charges);
        drop(self.refunds);
        self.tasks.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_turned_away_after_the_order_was_cancelled_is_voided_not_tried_again() {
    let mut rig = Rig::start().await;
    let order = rig.payment_to_take().await;
    let answer = rig.next_charge().await;
    // The saga timeout cancels the order while the charge is on the wire ...
    rig.cancel(order).await;
    assert_eq!(rig.status(order).await, "charging");
    // ... and the gateway, still down, turns it away: nothing can have been taken.
    answer.send(turned_away()).unwrap();
    rig.wait_for(order, "voided").await;
    // Well past the backoff: no further attempt, so a gateway that comes back charges nothing.
    let later = tokio::time::timeout(Duration::from_millis(500), rig.charges.recv()).await;
    assert!(later.is_err(), "the cancelled payment was tried again");
    assert_eq!(rig.gateway.charge_calls.load(Ordering::SeqCst), 1);
    rig.stop().await;
}

/// Review M1: the gateway took the money but its answer was lost (every attempt timed out),
/// and the order was cancelled meanwhile. Voiding blind would keep the money; the worker asks
/// again with the same key and refunds what the replay says was approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_whose_answer_was_lost_is_asked_again_after_a_cancel_and_refunded() {
    let mut rig = Rig::start().await;
    let order = rig.payment_to_take().await;
    let answer = rig.next_charge().await;
    rig.cancel(order).await;
    answer.send(answer_lost()).unwrap();
    // Asked again (the gateway replays the key's first answer: approved) ...
    rig.next_charge().await.send(approved("ch_lost")).unwrap();
    // ... and refunded.
    let (charge, refund) = rig.next_refund().await;
    assert_eq!(charge, "ch_lost");
    refund.send(receipt("ch_lost")).unwrap();
    rig.wait_for(order, "refunded").await;
    assert_eq!(rig.events_of("payment.refunded").await, 1);
    rig.stop().await;
}

/// Review M1, the other order: the answer was lost while the order was live (parked, maybe
/// charged); then the saga timeout cancels it. The cancel asks the gateway again, never voids
/// blind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_charge_that_may_have_been_taken_is_asked_again_when_its_order_is_cancelled() {
    let mut rig = Rig::start().await;
    let order = rig.payment_to_take().await;
    rig.next_charge().await.send(answer_lost()).unwrap();
    rig.wait_for(order, "pending").await;
    rig.cancel(order).await;
    // Asked again at once (due now), whether or not the parked retry came first.
    let asked = rig.next_charge().await;
    asked.send(approved("ch_parked")).unwrap();
    let (charge, refund) = rig.next_refund().await;
    assert_eq!(charge, "ch_parked");
    refund.send(receipt("ch_parked")).unwrap();
    rig.wait_for(order, "refunded").await;
    rig.stop().await;
}

/// A crash between two steps: a worker claimed a payment (its lease in `next_attempt_at`)
/// and died before the gateway answered. Once the lease runs out another worker takes it up,
/// counting it as maybe charged (the dead one may have called), and finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_claimed_by_a_worker_that_died_is_taken_up_after_its_lease() {
    let mut rig = Rig::start().await;
    let order = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO payment.payments (order_id, amount, currency, status, attempts, \
         next_attempt_at) VALUES ($1, 1000, 'KRW', 'charging', 1, now() + interval '300 ms')",
    )
    .bind(order)
    .execute(rig.db.pool())
    .await
    .unwrap();
    // The order is cancelled while the dead worker's claim stands ...
    rig.cancel(order).await;
    // ... so the worker that takes it up after the lease asks the gateway (same key) and
    // refunds what it approved, instead of voiding blind.
    rig.next_charge().await.send(turned_away()).unwrap();
    rig.wait_for(order, "void_pending").await;
    rig.next_charge().await.send(approved("ch_dead")).unwrap();
    let (charge, refund) = rig.next_refund().await;
    assert_eq!(charge, "ch_dead");
    refund.send(receipt("ch_dead")).unwrap();
    rig.wait_for(order, "refunded").await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_approved_after_the_order_was_cancelled_is_refunded() {
    let mut rig = Rig::start().await;
    let order = rig.payment_to_take().await;
    let answer = rig.next_charge().await;
    rig.cancel(order).await;
    answer.send(approved("ch_1")).unwrap();
    let (charge, refund) = rig.next_refund().await;
    assert_eq!(charge, "ch_1");
    refund.send(receipt("ch_1")).unwrap();
    rig.wait_for(order, "refunded").await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_charge_of_a_live_order_is_tried_again_and_approved() {
    let mut rig = Rig::start().await;
    let order = rig.payment_to_take().await;
    rig.next_charge().await.send(turned_away()).unwrap();
    rig.wait_for(order, "pending").await;
    rig.next_charge().await.send(approved("ch_2")).unwrap();
    rig.wait_for(order, "approved").await;
    assert_eq!(rig.gateway.charge_calls.load(Ordering::SeqCst), 2);
    rig.stop().await;
}

/// Review minor 1: a refund slower than the lease is claimed by a second worker too; both
/// refunds succeed at the gateway (one key), but `payment.refunded` is written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_repeated_by_a_second_worker_emits_payment_refunded_once() {
    let settings = WorkerSettings {
        lease: Duration::from_millis(300),
        ..settings()
    };
    let mut rig = Rig::with_workers(2, settings).await;
    let order = rig.payment_to_take().await;
    rig.next_charge().await.send(approved("ch_slow")).unwrap();
    rig.wait_for(order, "approved").await;
    rig.cancel(order).await;
    // The first worker's refund hangs past its lease; the second claims it again.
    let (_, first) = rig.next_refund().await;
    let (_, second) = rig.next_refund().await;
    first.send(receipt("ch_slow")).unwrap();
    second.send(receipt("ch_slow")).unwrap();
    rig.wait_for(order, "refunded").await;
    // Both answers applied (or given up) before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rig.events_of("payment.refunded").await, 1);
    rig.stop().await;
}

/// Review minor 2: a refund the gateway refuses for good (an unknown charge, refunded under
/// another key) ends in `refund_failed`, not in a retry every few seconds forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_refused_for_good_ends_in_a_final_state() {
    let mut rig = Rig::start().await;
    let order = rig.payment_to_take().await;
    rig.next_charge().await.send(approved("ch_gone")).unwrap();
    rig.wait_for(order, "approved").await;
    rig.cancel(order).await;
    let (_, refund) = rig.next_refund().await;
    refund
        .send(Err(GatewayError::Refused {
            status: 404,
            message: "charge_not_found: no charge ch_gone".into(),
        }))
        .unwrap();
    rig.wait_for(order, "refund_failed").await;
    let later = tokio::time::timeout(Duration::from_millis(500), rig.refunds.recv()).await;
    assert!(later.is_err(), "the refused refund was tried again");
    rig.stop().await;
}

/// A round's charges are recorded together: one of four orders is cancelled while all four
/// charges are on the wire, and all four are approved. The three live orders keep their
/// money (`approved`, `payment.approved` each); the cancelled one's is refunded and no
/// `payment.approved` is written for it: money is kept only for a live order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_an_order_cancelled_meanwhile_refunds_only_that_order() {
    let mut rig = Rig::start().await;
    // Due at once, so that one round claims all four (`concurrency: 4`).
    let orders: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO payment.payments (order_id, amount, currency, status) \
         SELECT id, 1000, 'KRW', 'pending' FROM UNNEST($1::uuid[]) AS t(id)",
    )
    .bind(&orders)
    .execute(rig.db.pool())
    .await
    .unwrap();
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(rig.next_charge().await);
    }
    let cancelled = orders[2];
    rig.cancel(cancelled).await;
    for (i, answer) in answers.into_iter().enumerate() {
        answer.send(approved(&format!("ch_{i}"))).unwrap();
    }
    let (charge, refund) = rig.next_refund().await;
    refund.send(receipt(&charge)).unwrap();
    rig.wait_for(cancelled, "refunded").await;
    for &order in &orders {
        if order != cancelled {
            rig.wait_for(order, "approved").await;
        }
    }
    assert_eq!(rig.events_of("payment.approved").await, 3);
    assert_eq!(rig.events_of("payment.refunded").await, 1);
    assert_eq!(rig.gateway.charge_calls.load(Ordering::SeqCst), 4);
    rig.stop().await;
}
