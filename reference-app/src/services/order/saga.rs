//! The order side of the payment saga (choreography):
//! - an order that becomes CREATED starts the saga, in the transaction that made it CREATED:
//!   placed CREATED, with commerce-core's `order.placed` (its lines at their prices say the
//!   amount); made CREATED later (its backorder served), with `order.created` (with the
//!   amount), which [`SagaStart`] writes into the outbox;
//! - [`PaymentAnswers`] applies the payment service's answer, exactly once (inbox), in one
//!   transaction with its own outgoing events: `payment.approved` moves the order to
//!   PROCESSING, `payment.failed` cancels it (its stock returns with a `cancel` ledger row and
//!   serves backorders);
//! - [`spawn_timeout_sweep`] cancels an order still CREATED after the saga timeout, so no
//!   order waits forever for a payment service or gateway that does not answer;
//! - [`spawn_answer_reconciliation`] moves on an order still CREATED whose payment was
//!   approved, declined or refused a while ago: its `payment.approved` or `payment.failed`
//!   never arrived (a broker lost the delivery), and the payment's record says what the event
//!   would have.
//!
//! Every step is written to the saga log (commerce-outbox's `saga_log`).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use commerce_core::{
    Commerce, CoreEvent, Error, OrderId, OrderLine, OrderStatus, OrderTotal, TransactionHook,
};
use commerce_outbox::saga::{record_saga_step, record_saga_steps, SagaStatus, SagaStepRecord};
use commerce_outbox::{
    enqueue_all, Envelope, EventHandler, EventId, HandlerError, NewEvent, UnprocessableEvent,
};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::expiry::{spawn_every, spawn_expiry, Expiry};

use crate::services::contracts::{
    reason_text, OrderCreated, PaymentOutcome, ORDER_CREATED, PAYMENT_APPROVED, PAYMENT_FAILED,
    PAYMENT_REFUNDED, SAGA,
};
use crate::telemetry::count_saga;

/// Starts the saga for every order a transaction made CREATED, in the same transaction (so
/// the start exists exactly when the order does): for an order placed CREATED, the placement's
/// own `order.placed` is the start (the payment service charges from its lines) and only the
/// step is logged; an order made CREATED later, when its last backordered line is served,
/// gets `order.created` with the amount to charge.
#[derive(Debug, Clone)]
pub struct SagaStart {
    currency: String,
    topic: String,
}

impl SagaStart {
    /// Amounts in `currency`, events on `topic` (the orders topic).
    #[must_use]
    pub fn new(currency: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            currency: currency.into(),
            topic: topic.into(),
        }
    }
}

#[async_trait]
impl TransactionHook for SagaStart {
    async fn before_commit(
        &self,
        conn: &mut PgConnection,
        events: &[CoreEvent],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        // An order placed CREATED starts the saga with its placement's own event: commerce-
        // core's `order.placed` (written by the outbox hook in this transaction) carries who
        // placed it and its lines at their prices, which is all the payment service charges
        // from; only its step is logged here. An order made CREATED later (its last
        // backordered line served) gets `order.created`, with its total read.
        let mut steps = Vec::new();
        let mut served = Vec::new();
        for event in events {
            match event {
                CoreEvent::OrderPlaced {
                    order,
                    status: OrderStatus::Created,
                    lines,
                    ..
                } => steps.push(started(*order, OrderLine::total_of(lines))),
                CoreEvent::OrderStatusChanged {
                    order,
                    to: OrderStatus::Created,
                    ..
                } => served.push(*order),
                _ => {}
            }
        }
        let mut outgoing = Vec::with_capacity(served.len());
        if !served.is_empty() {
            // One sorted order of aggregates, as commerce-core's outbox hook takes them.
            served.sort_unstable();
            served.dedup();
            for OrderTotal {
                order,
                user_id,
                total: amount,
            } in Commerce::order_totals_in(conn, &served).await?
            {
                let payload = serde_json::to_value(OrderCreated {
                    order_id: order.0,
                    user_id,
                    amount,
                    currency: self.currency.clone(),
                })?;
                outgoing.push(NewEvent::new(
                    &self.topic,
                    ORDER_CREATED,
                    "order",
                    order.to_string(),
                    payload,
                ));
                steps.push(started(order, amount));
            }
        }
        if steps.is_empty() {
            return Ok(());
        }
        // One statement for the transaction's orders (a batch places many at once).
        record_saga_steps(conn, SAGA, &steps).await?;
        enqueue_all(conn, &outgoing).await?;
        Ok(())
    }
}

/// The saga log's first step for `order`, which is to be charged `amount`.
fn started(order: OrderId, amount: i64) -> SagaStepRecord {
    SagaStepRecord {
        saga_id: order.to_string(),
        step: "order_created",
        status: SagaStatus::Started,
        event_id: None,
        detail: Some(format!("charge {amount}")),
    }
}

/// Applies the payment service's answers to orders (consumer of the payments topic).
#[derive(Debug, Clone)]
pub struct PaymentAnswers {
    commerce: Commerce,
}

impl PaymentAnswers {
    /// Answers applied with `commerce` (whose hooks write the resulting order events).
    #[must_use]
    pub fn new(commerce: Commerce) -> Self {
        Self { commerce }
    }
}

#[async_trait]
impl EventHandler for PaymentAnswers {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        let kind = envelope.event_type.as_str();
        if ![PAYMENT_APPROVED, PAYMENT_FAILED, PAYMENT_REFUNDED].contains(&kind) {
            return Ok(());
        }
        // A payload that does not parse never will: set aside, not retried (commerce-outbox's
        // consumer dead letters).
        let outcome: PaymentOutcome = envelope.decode_payload()?;
        let order = OrderId(outcome.order_id);
        let saga_id = order.to_string();
        let (step, applied) = match kind {
            PAYMENT_APPROVED => (
                PAYMENT_APPROVED_STEP,
                self.commerce
                    .transition_order_in(conn, order, OrderStatus::Processing, "payment approved")
                    .await
                    .map(drop),
            ),
            PAYMENT_FAILED => {
                // Text from outside (the gateway's) never blocks the saga: cleaned and bounded
                // here too, whoever wrote the event.
                let reason = format!(
                    "payment failed: {}",
                    reason_text(outcome.reason.as_deref().unwrap_or_default())
                );
                (
                    PAYMENT_FAILED_STEP,
                    self.commerce
                        .cancel_order_in(conn, order, &reason)
                        .await
                        .map(drop),
                )
            }
            _ => ("payment_refunded", Ok(())),
        };
        let (status, detail) = match applied {
            Ok(()) => {
                count_saga(match kind {
                    PAYMENT_APPROVED => "paid",
                    PAYMENT_FAILED => "declined",
                    _ => "refunded",
                });
                let status = if kind == PAYMENT_APPROVED {
                    SagaStatus::Completed
                } else {
                    SagaStatus::Compensated
                };
                // The cleaned text: the event's own may hold what Postgres refuses (a NUL).
                (status, outcome.reason.as_deref().map(reason_text))
            }
            // The order moved on meanwhile (cancelled by its owner or by the saga's timeout):
            // nothing to do here; the payment service refunds a charge for a cancelled order
            // when it sees the cancellation.
            Err(Error::IllegalTransition { from, .. }) => (
                SagaStatus::Failed,
                Some(format!("ignored: the order is already {from}")),
            ),
            Err(e) => return Err(retry_or_set_aside(e)),
        };
        record_saga_step(
            conn,
            SAGA,
            &saga_id,
            step,
            status,
            Some(envelope.id),
            detail.as_deref(),
        )
        .await?;
        Ok(())
    }

    /// Runs of `payment.approved` for distinct orders are applied together; anything else
    /// (and a second answer for an order already in the run) in delivery order.
    async fn handle_batch(
        &self,
        conn: &mut PgConnection,
        envelopes: &[&Envelope],
    ) -> Result<(), HandlerError> {
        let mut run: Vec<&Envelope> = Vec::new();
        for &envelope in envelopes {
            let repeat = run
                .iter()
                .any(|queued| queued.aggregate_id == envelope.aggregate_id);
            if envelope.event_type == PAYMENT_APPROVED && !repeat {
                run.push(envelope);
                continue;
            }
            self.approved_all(conn, &std::mem::take(&mut run)).await?;
            if envelope.event_type == PAYMENT_APPROVED {
                run.push(envelope);
            } else {
                self.handle(conn, envelope).await?;
            }
        }
        self.approved_all(conn, &run).await
    }
}

impl PaymentAnswers {
    /// Applies a run of `payment.approved` answers at once: the orders still CREATED move to
    /// PROCESSING in one transition (commerce-core's `transition_orders_in`: one update, one
    /// history insert, one run of the outbox hook), and each answer gets its saga step. An
    /// order found in another status is left alone, as one by one ("ignored"); an unknown
    /// order fails the run, so that the consumer applies the events one by one and sets
    /// that answer aside.
    async fn approved_all(
        &self,
        conn: &mut PgConnection,
        envelopes: &[&Envelope],
    ) -> Result<(), HandlerError> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let mut answers = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let outcome: PaymentOutcome = envelope.decode_payload()?;
            answers.push((envelope.id, outcome));
        }
        let orders: Vec<OrderId> = answers.iter().map(|(_, o)| OrderId(o.order_id)).collect();
        let moved = self
            .commerce
            .transition_orders_in(
                conn,
                &orders,
                OrderStatus::Created,
                OrderStatus::Processing,
                "payment approved",
            )
            .await
            .map_err(retry_or_set_aside)?;
        if let Some(missing) = moved.missing.first() {
            return Err(format!("payment.approved for an unknown order {missing}").into());
        }
        let skipped: HashMap<OrderId, OrderStatus> = moved.skipped.into_iter().collect();
        let mut steps = Vec::with_capacity(answers.len());
        for (event_id, outcome) in &answers {
            let order = OrderId(outcome.order_id);
            steps.push(match skipped.get(&order) {
                Some(from) => SagaStepRecord {
                    status: SagaStatus::Failed,
                    detail: Some(format!("ignored: the order is already {from}")),
                    ..approval_step(order, Some(*event_id), None)
                },
                None => {
                    count_saga("paid");
                    approval_step(
                        order,
                        Some(*event_id),
                        outcome.reason.as_deref().map(reason_text),
                    )
                }
            });
        }
        record_saga_steps(conn, SAGA, &steps).await?;
        Ok(())
    }
}

/// The saga step of a payment approval for `order` (from the event `event_id`, or none), to
/// record: completed, unless the caller says otherwise. The event's path and the
/// reconciliation's share it, so the two cannot drift apart.
fn approval_step(
    order: OrderId,
    event_id: Option<EventId>,
    detail: Option<String>,
) -> SagaStepRecord {
    SagaStepRecord {
        saga_id: order.to_string(),
        step: PAYMENT_APPROVED_STEP,
        status: SagaStatus::Completed,
        event_id,
        detail,
    }
}

/// What a consumer does with commerce-core's error: trouble that passes (the database, a
/// concurrent change) is retried, the whole transaction rolled back; an answer the domain
/// refuses for good (an unknown order, input it rejects) would be refused on every retry, in
/// front of every answer behind it, so it is set aside as a consumer dead letter.
fn retry_or_set_aside(e: Error) -> HandlerError {
    match e {
        Error::DatabaseUnavailable(_)
        | Error::CommitOutcomeUnknown(_)
        | Error::Database(_)
        | Error::Conflict(_)
        | Error::StockChanged { .. }
        | Error::Overloaded { .. }
        | Error::Hook(_)
        | Error::Strategy(_) => Box::new(e),
        refused => {
            count_saga("unprocessable");
            UnprocessableEvent::because(refused).into()
        }
    }
}

/// Cancels orders that stayed CREATED longer than `timeout` (no payment answer): the saga's
/// compensation when the payment side is silent. Runs every `timeout / 4` (at most every 5
/// s) until `shutdown`, each round going on while full pages come back (a gateway outage in a
/// flash sale leaves thousands of orders to time out at once). Several instances may sweep at
/// once: each cancellation re-checks, under the order's row lock, that it is still CREATED.
pub fn spawn_timeout_sweep(
    commerce: Commerce,
    timeout: Duration,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) {
    spawn_expiry(commerce, payment_timeout(timeout), shutdown, tasks);
}

/// The saga's timeout as an [`Expiry`]: CREATED for longer than `timeout`.
pub(crate) fn payment_timeout(timeout: Duration) -> Expiry {
    Expiry {
        status: OrderStatus::Created,
        after: timeout,
        reason: format!("payment timed out after {}s", timeout.as_secs()),
        saga_step: Some("payment_timed_out"),
        counter: "timed_out",
    }
}

/// The saga log's step of a payment approval.
const PAYMENT_APPROVED_STEP: &str = "payment_approved";

/// The saga log's step of a payment that failed (declined or refused for good).
const PAYMENT_FAILED_STEP: &str = "payment_failed";

/// How long after it was settled (approved, declined, refused) a payment's answer may take to
/// arrive before the reconciliation acts on the payment's record instead.
pub const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// Orders one reconciliation round moves on in one transaction, at most (the rest at the
/// next round).
const RECONCILE_BATCH: i64 = 500;

/// Moves on orders whose payment answer never arrived (see [`reconcile_approvals`] and
/// [`reconcile_failures`]), for payments settled more than [`ANSWER_GRACE`] ago (or a third
/// of the saga's `timeout`, if shorter, so it comes well before the timeout would cancel
/// them), checking every half of that (between 1 and 5 s). An answer that is only slow costs
/// nothing when acted on early: the event finds the order PROCESSING (or CANCELLED) and is
/// ignored. Several instances may run it at once: each move re-checks, under the order's row
/// lock, that it is still CREATED.
pub fn spawn_answer_reconciliation(
    commerce: Commerce,
    pool: PgPool,
    timeout: Duration,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) {
    let grace = ANSWER_GRACE.min(timeout / 3);
    let every = (grace / 2).clamp(Duration::from_secs(1), Duration::from_secs(5));
    spawn_every(
        "payment answer reconciliation",
        every,
        shutdown,
        tasks,
        move || {
            let (commerce, pool) = (commerce.clone(), pool.clone());
            async move {
                // Each half is tried even when the other fails.
                let approvals = reconcile_approvals(&commerce, &pool, grace).await;
                reconcile_failures(&commerce, &pool, grace).await?;
                approvals?;
                Ok(())
            }
        },
    );
}

/// Orders still CREATED (oldest first, at most [`RECONCILE_BATCH`]) whose payment, in the
/// database the services share, was settled with one of `statuses` more than `grace` ago and
/// not asked to be cancelled, with the payment's last error.
async fn unheard_answers(
    conn: &mut PgConnection,
    grace: Duration,
    statuses: &[&str],
) -> sqlx::Result<Vec<(OrderId, Option<String>)>> {
    // The order became CREATED before its payment was settled: its own age bounds the index
    // range (orders by status and last change) to old CREATED orders.
    let rows: Vec<(uuid::Uuid, Option<String>)> = sqlx::query_as(
        "SELECT o.id, p.last_error FROM commerce.orders o \
         JOIN payment.payments p ON p.order_id = o.id \
         WHERE o.status = 'CREATED' AND o.updated_at < now() - make_interval(secs => $1) \
           AND p.status = ANY($3) AND NOT p.cancel_requested \
           AND p.updated_at < now() - make_interval(secs => $1) \
         ORDER BY o.updated_at LIMIT $2",
    )
    .bind(grace.as_secs_f64())
    .bind(RECONCILE_BATCH)
    .bind(statuses)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(order, error)| (OrderId(order), error))
        .collect())
}

/// One round: orders still CREATED whose payment (in the database the services share) was
/// approved more than `grace` ago and not asked to be cancelled move to PROCESSING, as their
/// `payment.approved` would have moved them, each with its saga step. The event, if it comes
/// after all, finds the order PROCESSING and is ignored. Returns the orders moved.
///
/// # Errors
/// Database errors, commerce-core's and the saga log's (the round is rolled back).
pub async fn reconcile_approvals(
    commerce: &Commerce,
    pool: &PgPool,
    grace: Duration,
) -> anyhow::Result<Vec<OrderId>> {
    let mut tx = pool.begin().await?;
    let stale = unheard_answers(&mut tx, grace, &["approved"]).await?;
    if stale.is_empty() {
        return Ok(Vec::new());
    }
    let stale: Vec<OrderId> = stale.into_iter().map(|(order, _)| order).collect();
    let outcome = commerce
        .transition_orders_in(
            &mut tx,
            &stale,
            OrderStatus::Created,
            OrderStatus::Processing,
            "payment approved (found by the reconciliation: its event never arrived)",
        )
        .await?;
    let steps: Vec<SagaStepRecord> = outcome
        .moved
        .iter()
        .map(|&order| {
            approval_step(
                order,
                None,
                Some("reconciliation: the payment was approved, its event never arrived".into()),
            )
        })
        .collect();
    record_saga_steps(&mut tx, SAGA, &steps).await?;
    tx.commit().await?;
    for order in &outcome.moved {
        count_saga("paid");
        tracing::warn!(
            %order,
            "an order's payment was approved but its event never reached the order service: \
             moved on by the reconciliation"
        );
    }
    Ok(outcome.moved)
}

/// One round: orders still CREATED whose payment was declined or failed for good more than
/// `grace` ago (and not asked to be cancelled) are cancelled as their `payment.failed` would
/// have cancelled them, with the payment's recorded reason, each with its saga step; their
/// units go back on sale. Nothing was taken, so nothing is refunded. The event, if it comes
/// after all, finds the order CANCELLED and is ignored. Returns the orders cancelled.
///
/// # Errors
/// Database errors, commerce-core's and the saga log's (the round is rolled back).
pub async fn reconcile_failures(
    commerce: &Commerce,
    pool: &PgPool,
    grace: Duration,
) -> anyhow::Result<Vec<OrderId>> {
    let mut tx = pool.begin().await?;
    let failed = unheard_answers(&mut tx, grace, &["declined", "failed"]).await?;
    let mut cancelled = Vec::with_capacity(failed.len());
    for (order, raw) in failed {
        let cleaned = reason_text(raw.as_deref().unwrap_or_default());
        let reason = format!("payment failed: {cleaned}");
        // Re-decided under the order's row lock: one that moved on meanwhile is left alone.
        let Some(done) = commerce
            .cancel_order_if_in(&mut tx, order, OrderStatus::Created, &reason)
            .await?
        else {
            continue;
        };
        record_saga_step(
            &mut tx,
            SAGA,
            &order.to_string(),
            PAYMENT_FAILED_STEP,
            SagaStatus::Compensated,
            None,
            Some(&format!(
                "reconciliation: the payment failed, its event never arrived: {cleaned}"
            )),
        )
        .await?;
        cancelled.push(done);
    }
    tx.commit().await?;
    for order in &cancelled {
        // Its units are for sale again: this instance's stock strategy hears it now.
        for line in &order.lines {
            commerce.stock_raised(line.product);
        }
        count_saga("declined");
        tracing::warn!(
            order = %order.id,
            "an order's payment failed but its event never reached the order service: \
             cancelled by the reconciliation"
        );
    }
    Ok(cancelled.into_iter().map(|order| order.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::order::expiry::tests::shop;
    use commerce_core::{NewProduct, ProductId};
    use commerce_testkit::TestDb;

    async fn place(commerce: &Commerce, user: &str) -> OrderId {
        crate::services::order::expiry::tests::place(commerce, user, 1).await
    }

    fn answer(event_type: &str, payload: serde_json::Value) -> Envelope {
        Envelope {
            id: commerce_outbox::EventId(uuid::Uuid::now_v7()),
            event_type: event_type.into(),
            aggregate_type: "payment".into(),
            aggregate_id: "any".into(),
            aggregate_seq: 1,
            occurred_at: chrono::Utc::now(),
            schema_version: 1,
            payload,
            traceparent: None,
        }
    }

    /// A shop with `stock` of product 1 (450 each) and the payment service's tables.
    async fn shop_with_payments(stock: i64) -> (TestDb, Commerce) {
        let db = TestDb::new(&[
            &commerce_core::MIGRATOR,
            &commerce_outbox::MIGRATOR,
            &crate::MIGRATOR,
        ])
        .await;
        let commerce = Commerce::builder(db.pool().clone()).build();
        commerce
            .create_product(NewProduct::new(ProductId(1), "mug").price(450).stock(stock))
            .await
            .unwrap();
        (db, commerce)
    }

    /// The payment service's row for `order` as it would stand `age` seconds after it was
    /// settled with `status`, the order last changed a second before.
    async fn settled_payment(
        pool: &PgPool,
        order: OrderId,
        status: &str,
        cancel_requested: bool,
        age: u32,
        last_error: Option<&str>,
    ) {
        sqlx::query(
            "INSERT INTO payment.payments
                 (order_id, amount, currency, status, cancel_requested, charge_id, last_error,
                  updated_at)
             VALUES ($1, 450, 'EUR', $2, $3, 'ch_1', $4, now() - make_interval(secs => $5))",
        )
        .bind(order.0)
        .bind(status)
        .bind(cancel_requested)
        .bind(last_error)
        .bind(f64::from(age))
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "UPDATE commerce.orders SET updated_at = now() - make_interval(secs => $2)
             WHERE id = $1",
        )
        .bind(order.0)
        .bind(f64::from(age + 1))
        .execute(pool)
        .await
        .unwrap();
    }

    /// The saga log's last step of `order` (step, status).
    async fn last_step(pool: &PgPool, order: OrderId) -> Option<(String, String)> {
        sqlx::query_as(
            "SELECT step, status FROM commerce_outbox.saga_log WHERE saga_id = $1
             ORDER BY entry_id DESC LIMIT 1",
        )
        .bind(order.to_string())
        .fetch_optional(pool)
        .await
        .unwrap()
    }

    /// A broker that lost a `payment.approved` delivery (tansu 0.6 under load, in the
    /// services-apart mode): the order moves on from the payment's record once the grace is
    /// over, with its saga step, once; a payment approved just now (its event may still
    /// come), one still being charged and one whose cancellation was asked are left alone.
    #[tokio::test]
    async fn an_approved_payment_whose_event_never_arrived_moves_its_order_on() {
        let (db, commerce) = shop_with_payments(10).await;
        let lost = place(&commerce, "lost").await;
        let fresh = place(&commerce, "fresh").await;
        let charging = place(&commerce, "charging").await;
        let cancelling = place(&commerce, "cancelling").await;
        for (order, status, cancel, age) in [
            (lost, "approved", false, 20),
            (fresh, "approved", false, 0),
            (charging, "charging", false, 20),
            (cancelling, "approved", true, 20),
        ] {
            settled_payment(db.pool(), order, status, cancel, age, None).await;
        }
        let grace = Duration::from_secs(10);
        let moved = reconcile_approvals(&commerce, db.pool(), grace)
            .await
            .unwrap();
        assert_eq!(moved, vec![lost]);
        for (order, status) in [
            (lost, OrderStatus::Processing),
            (fresh, OrderStatus::Created),
            (charging, OrderStatus::Created),
            (cancelling, OrderStatus::Created),
        ] {
            assert_eq!(commerce.order(order).await.unwrap().status, status);
        }
        assert_eq!(
            last_step(db.pool(), lost).await,
            Some(("payment_approved".to_owned(), "completed".to_owned()))
        );
        // Once: the next round finds nothing.
        let again = reconcile_approvals(&commerce, db.pool(), grace)
            .await
            .unwrap();
        assert!(again.is_empty(), "{again:?}");
    }

    /// A broker that lost a `payment.failed` delivery: the order is cancelled from the
    /// payment's record once the grace is over, with the payment's (cleaned) reason and its
    /// saga step, once, and its unit is for sale again; the late event is then ignored. A
    /// payment declined just now, one approved and one whose cancellation was asked are left
    /// alone.
    #[tokio::test]
    async fn a_failed_payment_whose_event_never_arrived_cancels_its_order() {
        let (db, commerce) = shop_with_payments(5).await;
        let declined = place(&commerce, "declined").await;
        let refused = place(&commerce, "refused").await;
        let fresh = place(&commerce, "fresh").await;
        let approved = place(&commerce, "approved").await;
        let cancelling = place(&commerce, "cancelling").await;
        for (order, status, cancel, age, error) in [
            (
                declined,
                "declined",
                false,
                21,
                Some("card declined\nby the issuer"),
            ),
            (refused, "failed", false, 20, Some("invalid card")),
            (fresh, "declined", false, 0, Some("card declined")),
            (approved, "approved", false, 20, None),
            (cancelling, "declined", true, 20, Some("card declined")),
        ] {
            settled_payment(db.pool(), order, status, cancel, age, error).await;
        }
        let grace = Duration::from_secs(10);
        let cancelled = reconcile_failures(&commerce, db.pool(), grace)
            .await
            .unwrap();
        assert_eq!(cancelled, vec![declined, refused]);
        for (order, status) in [
            (declined, OrderStatus::Cancelled),
            (refused, OrderStatus::Cancelled),
            (fresh, OrderStatus::Created),
            (approved, OrderStatus::Created),
            (cancelling, OrderStatus::Created),
        ] {
            assert_eq!(commerce.order(order).await.unwrap().status, status);
        }
        let history = commerce.order_history(declined).await.unwrap();
        assert_eq!(
            history.last().unwrap().reason,
            "payment failed: card declined by the issuer"
        );
        assert_eq!(commerce.stock(ProductId(1)).await.unwrap().available, 2);
        assert_eq!(
            last_step(db.pool(), refused).await,
            Some(("payment_failed".to_owned(), "compensated".to_owned()))
        );
        // Once: the next round finds nothing; the late event is ignored.
        let again = reconcile_failures(&commerce, db.pool(), grace)
            .await
            .unwrap();
        assert!(again.is_empty(), "{again:?}");
        let late = answer(
            PAYMENT_FAILED,
            serde_json::json!({ "order_id": declined.0, "amount": 450, "charge_id": null, "reason": "card declined" }),
        );
        let mut tx = db.pool().begin().await.unwrap();
        PaymentAnswers::new(commerce.clone())
            .handle(&mut tx, &late)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            commerce.order(declined).await.unwrap().status,
            OrderStatus::Cancelled
        );
    }

    /// Review C1: a decline reason from the gateway with a newline, or of 600 characters, is
    /// applied (cleaned and bounded), not refused by commerce-core on every retry.
    #[tokio::test]
    async fn a_payment_failure_with_any_reason_cancels_the_order() {
        let (db, commerce) = shop(5).await;
        let answers = PaymentAnswers::new(commerce.clone());
        for raw in [
            "declined: do_not_honor\nretry later".to_owned(),
            format!("declined: {}", "x".repeat(600)),
            "<html>\r\n<head><title>403 Forbidden</title></head>\u{0}".to_owned(),
        ] {
            let order = place(&commerce, "alice").await;
            let envelope = answer(
                PAYMENT_FAILED,
                serde_json::json!({ "order_id": order.0, "amount": 450, "charge_id": null, "reason": raw }),
            );
            let mut tx = db.pool().begin().await.unwrap();
            answers.handle(&mut tx, &envelope).await.unwrap();
            tx.commit().await.unwrap();
            let cancelled = commerce.order(order).await.unwrap();
            assert_eq!(cancelled.status, OrderStatus::Cancelled, "{raw:?}");
            let history = commerce.order_history(order).await.unwrap();
            let reason = &history.last().unwrap().reason;
            assert!(reason.chars().count() <= 220, "{reason}");
            assert!(!reason.chars().any(char::is_control), "{reason:?}");
        }
    }

    /// An answer for an order that does not exist is refused for good: set aside, not retried.
    #[tokio::test]
    async fn an_answer_the_domain_refuses_for_good_is_unprocessable() {
        let (db, commerce) = shop(5).await;
        let answers = PaymentAnswers::new(commerce);
        let envelope = answer(
            PAYMENT_APPROVED,
            serde_json::json!({ "order_id": uuid::Uuid::now_v7(), "amount": 450, "charge_id": "ch_1", "reason": null }),
        );
        let mut tx = db.pool().begin().await.unwrap();
        let error = answers.handle(&mut tx, &envelope).await.unwrap_err();
        assert!(
            UnprocessableEvent::find(error.as_ref()).is_some(),
            "{error}"
        );
    }

    /// A placement's event carries who placed the order and its lines at their prices, which
    /// is all the payment service charges from: the saga starts with it, without an
    /// `order.created` beside it and without reading back the orders the transaction has just
    /// written (an order unknown to the database starts all the same); the log's first step
    /// says the amount, the sum of its lines saturating as `Order::total` does.
    #[tokio::test]
    async fn a_placed_order_starts_the_saga_with_its_placement_event() {
        use crate::services::contracts::placed_by_alice;
        let (db, _commerce) = shop(5).await;
        let (cheap, dear) = (OrderId(uuid::Uuid::now_v7()), OrderId(uuid::Uuid::now_v7()));
        let events = [
            placed_by_alice(
                dear,
                OrderStatus::Created,
                &[(2, 2, i64::MAX / 2), (1, 1, 7)],
            ),
            placed_by_alice(cheap, OrderStatus::Created, &[(3, 3, 450), (1, 1, 7)]),
        ];
        let mut tx = db.pool().begin().await.unwrap();
        SagaStart::new("EUR", "orders")
            .before_commit(&mut tx, &events)
            .await
            .unwrap();
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM commerce_outbox.event")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(events, 0, "no order.created for a placement");
        let steps: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT saga_id, step, detail FROM commerce_outbox.saga_log ORDER BY saga_id",
        )
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        let step = |order: OrderId, amount: i64| {
            (
                order.to_string(),
                "order_created".to_owned(),
                format!("charge {amount}"),
            )
        };
        assert_eq!(steps, [step(cheap, 1357), step(dear, i64::MAX)]);
    }
}
