//! The payment worker: claims due payments, calls the gateway outside any transaction, and
//! records each outcome with its event in one transaction. What an answer means is decided by
//! [`decide`], a pure function of the claim, the row and the answer (decision 0011).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use commerce_core::{Commerce, OrderId};
use commerce_outbox::saga::{record_saga_step, record_saga_steps, SagaStatus, SagaStepRecord};
use commerce_outbox::{enqueue, enqueue_all, trace, Backoff, EventId, NewEvent};
use futures::stream::{self, StreamExt};
use futures::FutureExt;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::gateway::{
    BreakerState, ChargeOutcome, ChargeRequest, Gateway, GatewayError, RefundReceipt, RefundRequest,
};
use super::store::{self, Current, Due, PaymentStatus, Settle, StoreError};
use crate::services::contracts::{
    reason_text, PaymentOutcome, PAYMENT_APPROVED, PAYMENT_FAILED, PAYMENT_REFUNDED, SAGA,
};
use crate::telemetry::count_payment;

/// Tries of the transaction that records a round's answers before they are left to their
/// leases.
const RECORD_ATTEMPTS: u32 = 3;

/// How the worker paces itself.
#[derive(Debug, Clone, Copy)]
pub struct WorkerSettings {
    /// Look for due payments at least this often (the consumer also wakes it).
    pub poll: Duration,
    /// A claimed payment is another worker's to retry after this (a worker that died
    /// mid-call): longer than a gateway call, shorter than the saga timeout (default 15 s).
    pub lease: Duration,
    /// Gateway calls in flight at once, at most, and so payments claimed per round (in one
    /// statement): `PAYMENT_CONCURRENCY`, default 64. Claiming no more than can be called at
    /// once keeps every claimed call inside its lease (a payment never waits for a free slot
    /// while its lease runs out).
    pub concurrency: usize,
    /// Wait before a parked payment is asked again: 0.5 s doubling per claim up to 10 s,
    /// with jitter; longer when the gateway says so (`Retry-After`, the breaker's open time).
    pub backoff: Backoff,
    /// How often the reconciliation looks for payments of cancelled orders that no
    /// `order.cancelled` event reached, and for CREATED orders without a payment that no
    /// `order.placed` or `order.created` reached (a lost or stalled delivery): default 5 s.
    pub reconcile_every: Duration,
    /// How long after its cancellation (or after it became CREATED) an order is the
    /// reconciliation's to act on rather than the event's (default 10 s: an event normally
    /// arrives in milliseconds; the app keeps it within a third of the saga's timeout).
    pub reconcile_grace: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(200),
            lease: Duration::from_secs(15),
            concurrency: 64,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(10)),
            reconcile_every: Duration::from_secs(5),
            reconcile_grace: Duration::from_secs(10),
        }
    }
}

/// Payments the reconciliation moves on in one transaction, at most (the rest at its next
/// round).
const RECONCILE_BATCH: i64 = 100;

/// The payment worker. Several (in several processes) may run: claims skip each other's rows.
#[derive(Clone)]
pub struct PaymentWorker {
    pool: PgPool,
    /// Where the answers go (the payments topic).
    topic: String,
    /// What a payment the reconciliation records is in (the system's currency: `CURRENCY`).
    currency: String,
    gateway: Arc<dyn Gateway>,
    settings: WorkerSettings,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for PaymentWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentWorker")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A claimed payment with the gateway's answer, to record.
enum Answered {
    /// A charge, or asking about a cancelled order's charge.
    Charge(Due, Result<ChargeOutcome, GatewayError>),
    /// A refund.
    Refund(Due, Result<RefundReceipt, GatewayError>),
}

/// What to write for a claimed payment once the gateway has answered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    /// Taken for a live order: `approved`, and `payment.approved`.
    Approve { charge_id: String },
    /// Taken for an order cancelled since: `refund_pending` (the worker refunds it next).
    RefundAfterCancel { charge_id: String },
    /// Declined or refused for good: `declined` / `failed`, and `payment.failed` with a
    /// bounded, cleaned reason (the raw text goes to the saga log).
    Fail { status: PaymentStatus, raw: String },
    /// Nothing was taken and the order is cancelled: `voided`.
    Void { why: String },
    /// Nothing settled: back to `to` (`pending`, or `void_pending` for a cancelled order whose
    /// money may have been taken), asked again after `wait`.
    Park {
        to: PaymentStatus,
        wait: Duration,
        error: String,
        may_have_charged: bool,
    },
}

/// What a gateway answer means for a claimed payment (the rules of decision 0011).
/// `claimed` is what it was claimed for (`charging` or `voiding`), `row` the payment as found
/// under its lock, `backoff` the wait a parked payment gets unless the gateway asked for longer.
fn decide(
    claimed: PaymentStatus,
    row: Current,
    answer: Result<ChargeOutcome, GatewayError>,
    backoff: Duration,
) -> Decision {
    // Asking about a cancelled order's charge is a charge of a cancelled order.
    let cancelled = row.cancel_requested || claimed == PaymentStatus::Voiding;
    match answer {
        Ok(ChargeOutcome::Approved { charge_id }) if cancelled => Decision::RefundAfterCancel {
            charge_id: charge_id.0,
        },
        Ok(ChargeOutcome::Approved { charge_id }) => Decision::Approve {
            charge_id: charge_id.0,
        },
        Ok(ChargeOutcome::Declined { reason }) if cancelled => Decision::Void {
            why: format!("declined after the order was cancelled: {reason}"),
        },
        Ok(ChargeOutcome::Declined { reason }) => Decision::Fail {
            status: PaymentStatus::Declined,
            raw: format!("declined: {reason}"),
        },
        Err(refused @ GatewayError::Refused { .. }) if cancelled => Decision::Void {
            why: format!("{refused}; the order was cancelled meanwhile"),
        },
        Err(refused @ GatewayError::Refused { .. }) => Decision::Fail {
            status: PaymentStatus::Failed,
            raw: format!("gateway refused the charge: {refused}"),
        },
        Err(unknown) => {
            let may_have_charged = row.may_have_charged || unknown.may_have_charged();
            let wait = unknown
                .retry_after()
                .map_or(backoff, |asked| asked.max(backoff));
            if cancelled && !may_have_charged {
                // Nothing can have been taken: parking would charge a cancelled order once
                // the gateway is back.
                Decision::Void {
                    why: format!("{unknown}; the order was cancelled meanwhile"),
                }
            } else {
                Decision::Park {
                    to: if cancelled {
                        PaymentStatus::VoidPending
                    } else {
                        PaymentStatus::Pending
                    },
                    wait,
                    error: unknown.to_string(),
                    may_have_charged,
                }
            }
        }
    }
}

impl PaymentWorker {
    /// A worker charging through `gateway` and answering on `topic`; payments its
    /// reconciliation records are in `currency`; `wake` is the consumer's signal.
    #[must_use]
    pub fn new(
        pool: PgPool,
        topic: impl Into<String>,
        currency: impl Into<String>,
        gateway: Arc<dyn Gateway>,
        settings: WorkerSettings,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            pool,
            topic: topic.into(),
            currency: currency.into(),
            gateway,
            settings,
            wake,
        }
    }

    /// The signal that wakes the worker (give it to the consumer).
    #[must_use]
    pub fn wake(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// The gateway client's breaker state, for metrics.
    #[must_use]
    pub fn breaker_state(&self) -> BreakerState {
        self.gateway.breaker_state()
    }

    /// Payments by status, for metrics.
    ///
    /// # Errors
    /// Database errors.
    pub async fn payments_by_status(
        &self,
    ) -> Result<Vec<(PaymentStatus, i64)>, Box<dyn std::error::Error + Send + Sync>> {
        store::count_by_status(&self.pool).await
    }

    /// Runs until `shutdown`; the round in progress finishes first (its calls are bounded by
    /// the gateway client's overall timeout).
    pub fn spawn(self, shutdown: CancellationToken, tasks: &TaskTracker) {
        let reconciler = self.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let mut every = tokio::time::interval(reconciler.settings.reconcile_every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = every.tick() => {}
                }
                match reconciler.reconcile().await {
                    Ok(0) => {}
                    Ok(_) => reconciler.wake.notify_one(),
                    Err(error) => tracing::warn!(%error, "payment reconciliation failed; retrying"),
                }
            }
        });
        tasks.spawn(async move {
            loop {
                let worked = match self.round().await {
                    Ok(worked) => worked,
                    Err(error) => {
                        tracing::warn!(%error, "payment worker round failed; retrying");
                        0
                    }
                };
                if worked > 0 {
                    continue;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(self.settings.poll) => {}
                }
            }
        });
    }

    /// The reconciliation of lost deliveries, both halves, each tried even when the other
    /// fails: payments of orders cancelled without their event (see [`Self::cancel_unheard`])
    /// and orders CREATED without their event ([`record_unheard`]). Returns how many payments
    /// it moved on or recorded; the first error, after trying both.
    async fn reconcile(&self) -> Result<usize, StoreError> {
        let cancelled = self.cancel_unheard().await;
        let recorded = record_unheard(
            &self.pool,
            &self.topic,
            &self.currency,
            self.settings.reconcile_grace,
        )
        .await;
        Ok(cancelled? + recorded?.len())
    }

    /// The reconciliation of lost cancellations: payments of orders cancelled without their
    /// event reaching this service are cancelled as the event would have (refunded, voided
    /// or asked about), with a saga step and a warning each. Returns how many.
    async fn cancel_unheard(&self) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        let moved =
            store::cancel_unheard(&mut tx, self.settings.reconcile_grace, RECONCILE_BATCH).await?;
        for (order, status) in &moved {
            tracing::warn!(
                %order, %status,
                "an order was cancelled but its event never reached the payment service: \
                 its payment is cancelled by the reconciliation"
            );
            record_saga_step(
                &mut tx,
                SAGA,
                &order.to_string(),
                "payment_cancelled",
                SagaStatus::Compensated,
                None,
                Some(&format!(
                    "payment {status}: the order was found cancelled without its event (reconciliation)"
                )),
            )
            .await?;
        }
        tx.commit().await?;
        if !moved.is_empty() {
            metrics::counter!("payment_reconciled_total", "found" => "cancelled")
                .increment(moved.len() as u64);
        }
        Ok(moved.len())
    }

    /// Claims due payments (as many as may be called at once) and works them; returns how
    /// many. Charges are called concurrently and their outcomes recorded in bulk: whatever
    /// answers are in when the recorder is free go into one transaction.
    async fn round(&self) -> Result<usize, StoreError> {
        let concurrency = self.settings.concurrency.max(1);
        let claim = i64::try_from(concurrency).unwrap_or(i64::MAX);
        let due = store::claim_due(&self.pool, claim, self.settings.lease).await?;
        let worked = due.len();
        // The buffered futures only call the gateway: they are not polled while an answer is
        // being recorded, so one holding a database transaction would hold its connection
        // (and its row lock) until then.
        let mut calls = stream::iter(due)
            .map(|payment| async move {
                // Under the trace of the order's event: the call's log lines carry its id.
                let traceparent = payment.traceparent.clone();
                trace::scope(traceparent, self.call(payment)).await
            })
            .buffer_unordered(concurrency);
        while let Some(first) = calls.next().await {
            // Whatever else has been answered meanwhile goes into the same transaction.
            let mut answered = vec![first];
            while let Some(Some(more)) = calls.next().now_or_never() {
                answered.push(more);
            }
            self.record_round(answered).await;
        }
        Ok(worked)
    }

    /// Asks the gateway what `payment` needs: a refund, or a charge.
    async fn call(&self, payment: Due) -> Answered {
        if payment.status == PaymentStatus::Refunding {
            let refunded = if payment.charge_id.is_some() {
                self.call_refund(&payment).await
            } else {
                // Recorded as the error it is, below.
                Err(GatewayError::BreakerOpen { retry_after: None })
            };
            Answered::Refund(payment, refunded)
        } else {
            let answer = self.gateway.charge(&charge_request(&payment)).await;
            Answered::Charge(payment, answer)
        }
    }

    /// Records what the gateway answered: refunds one by one, charges together (tried again
    /// at once when the transaction fails: a deadlock with a consumer's cancellations, a lost
    /// connection; each answer is decided anew on its row as then found, so nothing is
    /// applied twice).
    async fn record_round(&self, answered: Vec<Answered>) {
        let mut charges = Vec::with_capacity(answered.len());
        for answer in answered {
            match answer {
                Answered::Charge(payment, answer) => charges.push((payment, answer)),
                Answered::Refund(payment, refunded) => {
                    let traceparent = payment.traceparent.clone();
                    let recorded =
                        trace::scope(traceparent, self.record_refund(&payment, refunded)).await;
                    if let Err(error) = recorded {
                        let order = payment.order_id;
                        // The lease runs out and the payment is claimed again.
                        tracing::warn!(%error, %order, "refund failed; retried after its lease");
                    }
                }
            }
        }
        if charges.is_empty() {
            return;
        }
        for attempt in 1..=RECORD_ATTEMPTS {
            let Err(error) = self.record(&charges).await else {
                return;
            };
            if attempt == RECORD_ATTEMPTS {
                // Their leases run out and they are claimed again, asked with the same keys
                // (the gateway replays its answers).
                tracing::warn!(
                    %error, payments = charges.len(), first_order = %charges[0].0.order_id,
                    "recording payment outcomes failed; retried after their lease"
                );
            } else {
                tracing::debug!(%error, attempt, "recording payment outcomes failed; trying again");
            }
        }
    }

    fn backoff(&self, attempts: i32) -> Duration {
        let failures = u32::try_from(attempts).unwrap_or(1);
        self.settings.backoff.delay_with_random_jitter(failures)
    }

    /// Records the gateway's answers for `answered` (claimed `charging` or `voiding`
    /// payments: a charge, or asking about a cancelled order's charge, the same call) in one
    /// transaction: the rows locked at once, each answer decided on the row as found, the
    /// approvals of live orders written with one statement and their events with one insert.
    async fn record(
        &self,
        answered: &[(Due, Result<ChargeOutcome, GatewayError>)],
    ) -> Result<(), StoreError> {
        let orders: Vec<Uuid> = answered.iter().map(|(p, _)| p.order_id).collect();
        let mut tx = self.pool.begin().await?;
        let rows = store::lock_all(&mut tx, &orders).await?;
        let mut approvals = Vec::new();
        for (payment, answer) in answered {
            let Some(&row) = rows.get(&payment.order_id) else {
                continue;
            };
            if row.status != payment.status {
                // Settled by another worker after our lease ran out.
                continue;
            }
            let backoff = self.backoff(payment.attempts);
            match decide(payment.status, row, answer.clone(), backoff) {
                Decision::Approve { charge_id } => approvals.push((payment, charge_id)),
                decision => {
                    let traceparent = payment.traceparent.clone();
                    trace::scope(traceparent, self.apply(&mut tx, payment, decision)).await?;
                }
            }
        }
        self.approve_all(&mut tx, approvals).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Approves charged payments of live orders in bulk: `approved` with the charge id,
    /// `payment.approved` and the saga step `charged` for each.
    async fn approve_all(
        &self,
        tx: &mut PgConnection,
        approvals: Vec<(&Due, String)>,
    ) -> Result<(), StoreError> {
        if approvals.is_empty() {
            return Ok(());
        }
        let charges: Vec<(Uuid, String)> = approvals
            .iter()
            .map(|(payment, charge_id)| (payment.order_id, charge_id.clone()))
            .collect();
        let moved: HashSet<Uuid> = store::approve_all(tx, &charges)
            .await?
            .into_iter()
            .collect();
        let mut events = Vec::with_capacity(moved.len());
        let mut steps = Vec::with_capacity(moved.len());
        for (payment, charge_id) in approvals {
            if !moved.contains(&payment.order_id) {
                continue;
            }
            let outcome = PaymentOutcome {
                order_id: payment.order_id,
                amount: payment.amount,
                charge_id: Some(charge_id.clone()),
                reason: None,
            };
            events.push(
                answer_event(&self.topic, PAYMENT_APPROVED, &outcome)?
                    .with_traceparent(payment.traceparent.clone()),
            );
            steps.push(SagaStepRecord {
                saga_id: payment.order_id.to_string(),
                step: "charged",
                status: SagaStatus::Completed,
                event_id: None,
                detail: Some(charge_id),
            });
            count_payment("approved");
        }
        enqueue_all(tx, &events).await?;
        record_saga_steps(tx, SAGA, &steps).await?;
        Ok(())
    }

    /// Writes `decision` for the claimed `payment`, with its event and saga step.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        payment: &Due,
        decision: Decision,
    ) -> Result<(), StoreError> {
        let (order, from) = (payment.order_id, payment.status);
        let saga_id = order.to_string();
        let outcome = |charge_id: Option<String>, reason: Option<String>| PaymentOutcome {
            order_id: order,
            amount: payment.amount,
            charge_id,
            reason,
        };
        let (step, status, detail) = match decision {
            // [`PaymentWorker::record`] gathers approvals for one bulk write; one alone goes
            // the same way (a single writer of `approved`, its event and its saga step).
            Decision::Approve { charge_id } => {
                return self.approve_all(tx, vec![(payment, charge_id)]).await;
            }
            Decision::RefundAfterCancel { charge_id } => {
                let facts = Settle {
                    charge_id: Some(&charge_id),
                    due_in: Some(Duration::ZERO),
                    may_have_charged: true,
                    ..Settle::default()
                };
                store::settle(tx, order, from, PaymentStatus::RefundPending, &facts).await?;
                self.wake.notify_one();
                count_payment("charged_after_cancel");
                ("charged_after_cancel", SagaStatus::Compensated, charge_id)
            }
            Decision::Fail { status, raw } => {
                let facts = Settle {
                    last_error: Some(&raw),
                    ..Settle::default()
                };
                store::settle(tx, order, from, status, &facts).await?;
                // The order's history gets a bounded, clean reason; the saga log the raw text.
                let event = outcome(None, Some(reason_text(&raw)));
                answer_with(tx, &self.topic, PAYMENT_FAILED, &event).await?;
                count_payment(status.as_str());
                ("charge_failed", SagaStatus::Failed, raw)
            }
            Decision::Void { why } => {
                let facts = Settle {
                    last_error: Some(&why),
                    ..Settle::default()
                };
                store::settle(tx, order, from, PaymentStatus::Voided, &facts).await?;
                count_payment("voided");
                ("charge_voided", SagaStatus::Compensated, why)
            }
            Decision::Park {
                to,
                wait,
                error,
                may_have_charged,
            } => {
                let facts = Settle {
                    last_error: Some(&error),
                    due_in: Some(wait),
                    may_have_charged,
                    ..Settle::default()
                };
                store::settle(tx, order, from, to, &facts).await?;
                count_payment("parked");
                let step = if to == PaymentStatus::VoidPending {
                    "charge_unknown_after_cancel"
                } else {
                    "charge_parked"
                };
                let detail = format!("{error}; asked again in {} ms", wait.as_millis());
                (step, SagaStatus::Failed, detail)
            }
        };
        record_saga_step(tx, SAGA, &saga_id, step, status, None, Some(&detail)).await?;
        Ok(())
    }

    /// Asks the gateway to refund a `refunding` payment.
    async fn call_refund(&self, payment: &Due) -> Result<RefundReceipt, GatewayError> {
        let request = RefundRequest {
            charge_id: super::gateway::ChargeId(payment.charge_id.clone().unwrap_or_default()),
            idempotency_key: format!("refund-{}", payment.order_id),
        };
        self.gateway.refund(&request).await
    }

    /// Records the gateway's answer to a refund of a `refunding` payment.
    async fn record_refund(
        &self,
        payment: &Due,
        refunded: Result<RefundReceipt, GatewayError>,
    ) -> Result<(), StoreError> {
        let Some(charge_id) = payment.charge_id.clone() else {
            return Err(format!("payment {} to refund has no charge id", payment.order_id).into());
        };
        let order = payment.order_id;
        let from = PaymentStatus::Refunding;
        let mut tx = self.pool.begin().await?;
        match refunded {
            Ok(receipt) => {
                let facts = Settle {
                    refund_id: Some(&receipt.refund_id),
                    ..Settle::default()
                };
                // Only the worker that moves the row emits the event (a lease that ran out
                // during a slow refund lets a second worker refund the same key too).
                if store::settle(&mut tx, order, from, PaymentStatus::Refunded, &facts).await? {
                    let event = PaymentOutcome {
                        order_id: order,
                        amount: payment.amount,
                        charge_id: Some(charge_id.clone()),
                        reason: Some("order cancelled".into()),
                    };
                    answer_with(&mut tx, &self.topic, PAYMENT_REFUNDED, &event).await?;
                    let detail = format!("{charge_id} refunded as {}", receipt.refund_id);
                    record_saga_step(
                        &mut tx,
                        SAGA,
                        &order.to_string(),
                        "refunded",
                        SagaStatus::Compensated,
                        None,
                        Some(&detail),
                    )
                    .await?;
                    count_payment("refunded");
                }
            }
            Err(refused @ GatewayError::Refused { .. }) => {
                let why = refused.to_string();
                let facts = Settle {
                    last_error: Some(&why),
                    ..Settle::default()
                };
                if store::settle(&mut tx, order, from, PaymentStatus::RefundFailed, &facts).await? {
                    tracing::error!(
                        %order, charge_id, error = %why,
                        "the gateway refused a refund for good: the money of a cancelled order \
                         may still be held; a person must look (payment status refund_failed)"
                    );
                    metrics::counter!("payment_refunds_failed_total").increment(1);
                    record_saga_step(
                        &mut tx,
                        SAGA,
                        &order.to_string(),
                        "refund_failed",
                        SagaStatus::Failed,
                        None,
                        Some(&why),
                    )
                    .await?;
                    count_payment("refund_failed");
                }
            }
            Err(unknown) => {
                let wait = unknown
                    .retry_after()
                    .map_or(self.backoff(payment.attempts), |asked| {
                        asked.max(self.backoff(payment.attempts))
                    });
                let error = unknown.to_string();
                let facts = Settle {
                    last_error: Some(&error),
                    due_in: Some(wait),
                    ..Settle::default()
                };
                store::settle(&mut tx, order, from, PaymentStatus::RefundPending, &facts).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The reconciliation of a lost placement (see [`store::unheard_placements`]): each order
/// CREATED for longer than `grace` without a payment gets the one its event would have
/// recorded, in one transaction: its total at the prices it was placed at (commerce-core's
/// [`Commerce::order_totals_in`], read under the same lock), in `currency`, with a saga step
/// and a warning; an order of nothing to take is settled at once with its answer on `topic`,
/// as the consumer does. A late event finds the payment and records nothing. Returns the
/// orders it recorded.
pub(super) async fn record_unheard(
    pool: &PgPool,
    topic: &str,
    currency: &str,
    grace: Duration,
) -> Result<Vec<Uuid>, StoreError> {
    let mut tx = pool.begin().await?;
    let unheard = store::unheard_placements(&mut tx, grace, RECONCILE_BATCH).await?;
    if unheard.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<OrderId> = unheard.into_iter().map(OrderId).collect();
    let totals = Commerce::order_totals_in(&mut tx, &ids).await?;
    let requests: Vec<PaymentRequest<'_>> = totals
        .iter()
        .map(|t| PaymentRequest {
            order: t.order.0,
            amount: t.total,
            currency,
            traceparent: None,
            event_id: None,
        })
        .collect();
    let recorded = record_payments(
        &mut tx,
        topic,
        &requests,
        Some(
            "reconciliation: the order was CREATED without its event reaching the payment \
             service",
        ),
    )
    .await?;
    tx.commit().await?;
    metrics::counter!("payment_reconciled_total", "found" => "placed")
        .increment(recorded.orders.len() as u64);
    for order in &recorded.orders {
        tracing::warn!(
            %order,
            "an order was CREATED but its event never reached the payment service: its payment \
             is recorded by the reconciliation"
        );
    }
    Ok(recorded.orders)
}

/// A payment a saga start asks for: an order's total, and the event that asked, if one did
/// (the reconciliation has none).
pub(super) struct PaymentRequest<'a> {
    pub order: Uuid,
    pub amount: i64,
    pub currency: &'a str,
    /// The trace context of the event that asked, carried on to the gateway call.
    pub traceparent: Option<&'a str>,
    pub event_id: Option<EventId>,
}

/// What [`record_payments`] did.
pub(super) struct Recorded {
    /// The orders whose payment was recorded now, in the requests' order (the others had one
    /// already: a redelivered event, or an event arriving after the reconciliation).
    pub orders: Vec<Uuid>,
    /// Whether one of them waits for a charge (the worker has work).
    pub to_charge: bool,
}

/// Records the payments saga starts ask for, in the caller's transaction, in one insert:
/// each new one gets its `payment_recorded` saga step (with `detail`), and one of amount 0 is
/// settled at once ([`settle_without_charge`]). The one path of `order.created`,
/// `order.placed` and the reconciliation of a placement never heard.
pub(super) async fn record_payments(
    conn: &mut PgConnection,
    topic: &str,
    requests: &[PaymentRequest<'_>],
    detail: Option<&str>,
) -> Result<Recorded, StoreError> {
    let rows: Vec<(Uuid, i64, &str, Option<&str>)> = requests
        .iter()
        .map(|r| (r.order, r.amount, r.currency, r.traceparent))
        .collect();
    let inserted = store::record_all(conn, &rows).await?;
    let mut recorded = Recorded {
        orders: Vec::with_capacity(inserted.len()),
        to_charge: false,
    };
    let mut steps = Vec::with_capacity(inserted.len());
    for request in requests.iter().filter(|r| inserted.contains(&r.order)) {
        recorded.orders.push(request.order);
        if request.amount == 0 {
            // Rare: nothing to charge, settled on its own.
            settle_without_charge(conn, topic, request.order, request.event_id).await?;
            continue;
        }
        recorded.to_charge = true;
        steps.push(SagaStepRecord {
            saga_id: request.order.to_string(),
            step: "payment_recorded",
            status: SagaStatus::Started,
            event_id: request.event_id,
            detail: detail.map(str::to_owned),
        });
    }
    record_saga_steps(conn, SAGA, &steps).await?;
    Ok(recorded)
}

/// Settles the payment of an order of nothing to take (recorded `approved`, amount 0): its
/// `payment.approved` answer on `topic` and its saga step, in the caller's transaction, with
/// no gateway call (gateways refuse charges of 0). `event_id` is the event that started it,
/// if one did (the reconciliation has none).
pub(super) async fn settle_without_charge(
    conn: &mut PgConnection,
    topic: &str,
    order: Uuid,
    event_id: Option<EventId>,
) -> Result<(), StoreError> {
    let outcome = PaymentOutcome {
        order_id: order,
        amount: 0,
        charge_id: None,
        reason: None,
    };
    answer_with(conn, topic, PAYMENT_APPROVED, &outcome).await?;
    count_payment("settled_without_charge");
    record_saga_step(
        conn,
        SAGA,
        &order.to_string(),
        "settled_without_charge",
        SagaStatus::Completed,
        event_id,
        Some("amount 0: nothing to charge"),
    )
    .await?;
    Ok(())
}

/// Writes the payment service's answer into the outbox, in the caller's transaction.
pub(super) async fn answer_with(
    tx: &mut PgConnection,
    topic: &str,
    event_type: &str,
    outcome: &PaymentOutcome,
) -> Result<(), StoreError> {
    enqueue(tx, &answer_event(topic, event_type, outcome)?).await?;
    Ok(())
}

/// The payment service's answer as an outbox event (keyed by the order).
pub(super) fn answer_event(
    topic: &str,
    event_type: &str,
    outcome: &PaymentOutcome,
) -> Result<NewEvent, StoreError> {
    Ok(NewEvent::new(
        topic,
        event_type,
        "payment",
        outcome.order_id.to_string(),
        serde_json::to_value(outcome)?,
    ))
}

/// The gateway request charging `payment` (or asking about it again: the same key).
fn charge_request(payment: &Due) -> ChargeRequest {
    ChargeRequest {
        order_id: payment.order_id,
        amount: payment.amount,
        currency: payment.currency.clone(),
        idempotency_key: format!("charge-{}", payment.order_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::payment::gateway::{ChargeId, UnavailableCause};

    const BACKOFF: Duration = Duration::from_millis(500);

    fn row(cancel_requested: bool, may_have_charged: bool) -> Current {
        Current {
            status: PaymentStatus::Charging,
            cancel_requested,
            may_have_charged,
        }
    }

    fn approved() -> Result<ChargeOutcome, GatewayError> {
        Ok(ChargeOutcome::Approved {
            charge_id: ChargeId("ch_1".into()),
        })
    }

    fn unknown(cause: UnavailableCause) -> Result<ChargeOutcome, GatewayError> {
        let may_have_charged = cause.may_have_charged();
        Err(GatewayError::Unavailable {
            attempts: 1,
            cause,
            may_have_charged,
        })
    }

    fn timed_out() -> Result<ChargeOutcome, GatewayError> {
        unknown(UnavailableCause::AttemptTimedOut {
            after: Duration::from_secs(2),
        })
    }

    fn turned_away() -> Result<ChargeOutcome, GatewayError> {
        unknown(UnavailableCause::ServerError {
            status: 503,
            retry_after: None,
        })
    }

    fn refused() -> Result<ChargeOutcome, GatewayError> {
        Err(GatewayError::Refused {
            status: 403,
            message: "<html>\r\n<head>".into(),
        })
    }

    /// One row per rule: (name, claimed for, cancelled, an earlier call may have charged,
    /// the answer, the decision's kind).
    #[test]
    fn every_answer_has_its_decision() {
        use PaymentStatus::{Charging, Voiding};
        type Row = (
            &'static str,
            PaymentStatus,
            bool,
            bool,
            Result<ChargeOutcome, GatewayError>,
            &'static str,
        );
        let rows: Vec<Row> = vec![
            (
                "approved, live",
                Charging,
                false,
                false,
                approved(),
                "approve",
            ),
            (
                "approved, cancelled meanwhile",
                Charging,
                true,
                false,
                approved(),
                "refund",
            ),
            (
                "asked again: approved",
                Voiding,
                true,
                true,
                approved(),
                "refund",
            ),
            (
                "declined",
                Charging,
                false,
                false,
                Ok(ChargeOutcome::Declined {
                    reason: "do_not_honor\nretry".into(),
                }),
                "fail declined",
            ),
            (
                "asked again: declined",
                Voiding,
                true,
                true,
                Ok(ChargeOutcome::Declined { reason: "x".into() }),
                "void",
            ),
            ("refused", Charging, false, false, refused(), "fail failed"),
            (
                "asked again: refused",
                Voiding,
                true,
                true,
                refused(),
                "void",
            ),
            (
                "timed out, live",
                Charging,
                false,
                false,
                timed_out(),
                "park pending",
            ),
            (
                "503, live",
                Charging,
                false,
                false,
                turned_away(),
                "park pending",
            ),
            (
                "timed out, cancelled",
                Charging,
                true,
                false,
                timed_out(),
                "park void_pending",
            ),
            (
                "503, cancelled, nothing before",
                Charging,
                true,
                false,
                turned_away(),
                "void",
            ),
            (
                "503, cancelled, timed out before",
                Charging,
                true,
                true,
                turned_away(),
                "park void_pending",
            ),
            (
                "asked again: still unknown",
                Voiding,
                true,
                true,
                turned_away(),
                "park void_pending",
            ),
            (
                "breaker open, cancelled",
                Charging,
                true,
                false,
                Err(GatewayError::BreakerOpen { retry_after: None }),
                "void",
            ),
        ];
        let mut failures = Vec::new();
        for (name, claimed, cancelled, earlier, answer, expected) in rows {
            let decision = decide(claimed, row(cancelled, earlier), answer, BACKOFF);
            let kind = match &decision {
                Decision::Approve { .. } => "approve".to_owned(),
                Decision::RefundAfterCancel { .. } => "refund".to_owned(),
                Decision::Fail { status, .. } => format!("fail {status}"),
                Decision::Void { .. } => "void".to_owned(),
                Decision::Park { to, .. } => format!("park {to}"),
            };
            if kind != expected {
                failures.push(format!("{name}: expected {expected}, got {decision:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn a_retry_after_longer_than_the_backoff_is_honoured() {
        let asked = unknown(UnavailableCause::Throttled {
            status: 429,
            retry_after: Some(Duration::from_secs(30)),
        });
        match decide(PaymentStatus::Charging, row(false, false), asked, BACKOFF) {
            Decision::Park {
                wait,
                may_have_charged,
                ..
            } => {
                assert_eq!(wait, Duration::from_secs(30));
                assert!(!may_have_charged);
            }
            other => panic!("{other:?}"),
        }
    }

    /// A broker that lost an `order.placed` delivery (tansu 0.6 under load, in the
    /// services-apart mode): an order CREATED for longer than the grace with no payment gets
    /// the one its event would have recorded (its total, the system's currency), with its saga
    /// step, once; an order of nothing to take is settled at once, with its answer. Left alone:
    /// one placed just now (its event may still come), one that has its payment, one cancelled,
    /// one backordered, and one whose cancellation is in flight (its row is locked).
    #[tokio::test]
    async fn an_order_whose_placement_never_arrived_gets_its_payment() {
        use commerce_core::{
            Commerce, NewOrder, NewProduct, OrderId, OrderStatus, ProductId, ShortagePolicy,
        };
        use commerce_testkit::TestDb;

        let db = TestDb::new(&[
            &commerce_core::MIGRATOR,
            &commerce_outbox::MIGRATOR,
            &crate::MIGRATOR,
        ])
        .await;
        let pool = db.pool();
        let commerce = Commerce::builder(pool.clone()).build();
        for (id, name, price, stock) in [
            (1, "mug", 450, 20),
            (2, "sticker", 0, 5),
            (3, "lamp", 900, 0),
        ] {
            commerce
                .create_product(
                    NewProduct::new(ProductId(id), name)
                        .price(price)
                        .stock(stock),
                )
                .await
                .unwrap();
        }
        let place = |user: &'static str, product: i64, quantity: i64| {
            let commerce = commerce.clone();
            async move {
                commerce
                    .place_order(
                        NewOrder::new(user)
                            .line(product, quantity)
                            .policy(ShortagePolicy::Backorder),
                    )
                    .await
                    .unwrap()
                    .order
                    .id
            }
        };
        let lost = place("lost", 1, 2).await;
        let free = place("free", 2, 1).await;
        let fresh = place("fresh", 1, 1).await;
        let paid = place("paid", 1, 1).await;
        let cancelled = place("cancelled", 1, 1).await;
        let backordered = place("backordered", 3, 1).await;
        let cancelling = place("cancelling", 1, 1).await;
        commerce
            .transition_order(cancelled, OrderStatus::Cancelled, "customer")
            .await
            .unwrap();
        store::record_all(
            &mut pool.acquire().await.unwrap(),
            &[(paid.0, 450, "KRW", None)],
        )
        .await
        .unwrap();
        for (order, age) in [
            (lost, 20),
            (free, 20),
            (fresh, 0),
            (paid, 20),
            (cancelled, 20),
            (backordered, 20),
            (cancelling, 20),
        ] {
            sqlx::query(
                "UPDATE commerce.orders SET updated_at = now() - make_interval(secs => $2)
                 WHERE id = $1",
            )
            .bind(order.0)
            .bind(f64::from(age))
            .execute(pool)
            .await
            .unwrap();
        }
        // The order service's cancellation of `cancelling`, not committed yet.
        let mut cancel = pool.begin().await.unwrap();
        sqlx::query("UPDATE commerce.orders SET status = 'CANCELLED' WHERE id = $1")
            .bind(cancelling.0)
            .execute(&mut *cancel)
            .await
            .unwrap();

        let grace = Duration::from_secs(10);
        let mut recorded = record_unheard(pool, "payments", "KRW", grace)
            .await
            .unwrap();
        recorded.sort();
        let mut expected = vec![lost.0, free.0];
        expected.sort();
        assert_eq!(recorded, expected);
        cancel.commit().await.unwrap();

        let payments: Vec<(uuid::Uuid, i64, String, String)> = sqlx::query_as(
            "SELECT order_id, amount, currency, status FROM payment.payments ORDER BY amount",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        let of = |order: OrderId| {
            payments
                .iter()
                .filter(|p| p.0 == order.0)
                .map(|p| (p.1, p.2.as_str(), p.3.as_str()))
                .collect::<Vec<_>>()
        };
        assert_eq!(of(lost), vec![(900, "KRW", "pending")]);
        assert_eq!(of(free), vec![(0, "KRW", "approved")]);
        assert_eq!(of(paid), vec![(450, "KRW", "pending")]);
        assert_eq!(payments.len(), 3, "{payments:?}");
        let step = |order: OrderId| {
            let pool = pool.clone();
            async move {
                sqlx::query_as::<_, (String, String)>(
                    "SELECT step, status FROM commerce_outbox.saga_log WHERE saga_id = $1
                     ORDER BY entry_id DESC LIMIT 1",
                )
                .bind(order.to_string())
                .fetch_optional(&pool)
                .await
                .unwrap()
            }
        };
        assert_eq!(
            step(lost).await,
            Some(("payment_recorded".to_owned(), "started".to_owned()))
        );
        assert_eq!(
            step(free).await,
            Some(("settled_without_charge".to_owned(), "completed".to_owned()))
        );
        let answers: Vec<(String, String)> = sqlx::query_as(
            "SELECT event_type, aggregate_id FROM commerce_outbox.event WHERE topic = 'payments'",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        assert_eq!(
            answers,
            vec![(PAYMENT_APPROVED.to_owned(), free.to_string())]
        );

        // Once: the next round finds nothing (the cancelled one included), and the late event
        // finds its payment recorded.
        let again = record_unheard(pool, "payments", "KRW", grace)
            .await
            .unwrap();
        assert!(again.is_empty(), "{again:?}");
        let late = store::record_all(
            &mut pool.acquire().await.unwrap(),
            &[(lost.0, 900, "KRW", None)],
        )
        .await
        .unwrap();
        assert!(late.is_empty(), "{late:?}");
    }
}
