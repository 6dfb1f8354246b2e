//! The payment service's consumer of order events: each applied exactly once (inbox), in the
//! consumer's transaction.

use std::sync::Arc;

use async_trait::async_trait;
use commerce_outbox::saga::{record_saga_step, record_saga_steps, SagaStatus, SagaStepRecord};
use commerce_outbox::{Envelope, EventHandler, EventId, HandlerError, UnprocessableEvent};
use sqlx::PgConnection;
use tokio::sync::Notify;
use uuid::Uuid;

use super::store;
use super::worker::answer_with;
use crate::services::contracts::{
    OrderCancelled, OrderCreated, PaymentOutcome, ORDER_CANCELLED, ORDER_CREATED, PAYMENT_APPROVED,
    SAGA,
};
use crate::telemetry::count_payment;

/// Records a payment to take for every `order.created` (settling an amount of 0 at once,
/// without a gateway call); voids, asks about or refunds it on `order.cancelled`. Wakes the
/// worker when there is something to do.
#[derive(Debug, Clone)]
pub struct OrderEvents {
    wake: Arc<Notify>,
    /// Where answers settled here go (the payments topic).
    topic: String,
}

impl OrderEvents {
    /// A consumer that wakes `wake` (the worker's) after new work and answers on `topic`.
    #[must_use]
    pub fn new(wake: Arc<Notify>, topic: impl Into<String>) -> Self {
        Self {
            wake,
            topic: topic.into(),
        }
    }

    async fn created(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        let order: OrderCreated = envelope.decode_payload()?;
        if order.amount < 0 {
            // Never chargeable: set aside (a consumer dead letter), not retried.
            return Err(UnprocessableEvent::new(format!(
                "order.created {} with a negative amount {}",
                order.order_id, order.amount
            ))
            .into());
        }
        let saga_id = order.order_id.to_string();
        let recorded = store::record(
            conn,
            order.order_id,
            order.amount,
            &order.currency,
            envelope.traceparent.as_deref(),
        )
        .await?;
        if !recorded {
            return Ok(());
        }
        if order.amount == 0 {
            return self.settle_free(conn, order.order_id, envelope.id).await;
        }
        record_saga_step(
            conn,
            SAGA,
            &saga_id,
            "payment_recorded",
            SagaStatus::Started,
            Some(envelope.id),
            None,
        )
        .await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Nothing to take: settled now, with no gateway call.
    async fn settle_free(
        &self,
        conn: &mut PgConnection,
        order: Uuid,
        event_id: EventId,
    ) -> Result<(), HandlerError> {
        let outcome = PaymentOutcome {
            order_id: order,
            amount: 0,
            charge_id: None,
            reason: None,
        };
        answer_with(conn, &self.topic, PAYMENT_APPROVED, &outcome).await?;
        count_payment("settled_without_charge");
        record_saga_step(
            conn,
            SAGA,
            &order.to_string(),
            "settled_without_charge",
            SagaStatus::Completed,
            Some(event_id),
            Some("amount 0: nothing to charge"),
        )
        .await?;
        Ok(())
    }

    async fn cancelled(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        let cancelled: OrderCancelled = envelope.decode_payload()?;
        // No payment: the order never became CREATED (cancelled while backordered).
        let Some(status) = store::request_cancel(conn, cancelled.order).await? else {
            return Ok(());
        };
        record_saga_step(
            conn,
            SAGA,
            &cancelled.order.to_string(),
            "payment_cancelled",
            SagaStatus::Compensated,
            Some(envelope.id),
            Some(&format!("payment {status}: {}", cancelled.reason)),
        )
        .await?;
        self.wake.notify_one();
        Ok(())
    }

    /// [`OrderEvents::created`] for a run of `order.created` events at once: the payments in
    /// one insert, their saga steps in another. An event that cannot be applied fails the
    /// run (the consumer then applies the events one by one, and sets that one aside).
    async fn created_all(
        &self,
        conn: &mut PgConnection,
        envelopes: &[&Envelope],
    ) -> Result<(), HandlerError> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let mut orders = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let order: OrderCreated = envelope.decode_payload()?;
            if order.amount < 0 {
                return Err(
                    format!("order.created {} with a negative amount", order.order_id).into(),
                );
            }
            orders.push((envelope.id, order, envelope.traceparent.as_deref()));
        }
        let rows: Vec<(Uuid, i64, &str, Option<&str>)> = orders
            .iter()
            .map(|(_, o, trace)| (o.order_id, o.amount, o.currency.as_str(), *trace))
            .collect();
        let recorded = store::record_all(conn, &rows).await?;
        let mut steps = Vec::with_capacity(recorded.len());
        let mut to_charge = false;
        for (event_id, order, _) in &orders {
            if !recorded.contains(&order.order_id) {
                continue;
            }
            if order.amount == 0 {
                // Rare: settled on its own, as `created` does.
                self.settle_free(conn, order.order_id, *event_id).await?;
                continue;
            }
            to_charge = true;
            steps.push(SagaStepRecord {
                saga_id: order.order_id.to_string(),
                step: "payment_recorded",
                status: SagaStatus::Started,
                event_id: Some(*event_id),
                detail: None,
            });
        }
        record_saga_steps(conn, SAGA, &steps).await?;
        if to_charge {
            self.wake.notify_one();
        }
        Ok(())
    }
}

#[async_trait]
impl EventHandler for OrderEvents {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        match envelope.event_type.as_str() {
            ORDER_CREATED => self.created(conn, envelope).await,
            ORDER_CANCELLED => self.cancelled(conn, envelope).await,
            _ => Ok(()),
        }
    }

    /// Only `order.created` and `order.cancelled`: the orders topic's other events
    /// (`order.placed`, status changes) cost this consumer neither a transaction nor an inbox
    /// row.
    fn handles(&self, envelope: &Envelope) -> bool {
        envelope.event_type == ORDER_CREATED || envelope.event_type == ORDER_CANCELLED
    }

    /// The `order.created` events are recorded together, then the `order.cancelled` ones are
    /// applied in order id: the payment rows are locked in the order the worker locks them,
    /// so the two never deadlock. (An order's cancellation always follows its creation, so
    /// taking every creation first keeps each order's own events in order.)
    async fn handle_batch(
        &self,
        conn: &mut PgConnection,
        envelopes: &[&Envelope],
    ) -> Result<(), HandlerError> {
        let (created, mut cancelled): (Vec<&Envelope>, Vec<&Envelope>) = envelopes
            .iter()
            .copied()
            .filter(|e| self.handles(e))
            .partition(|e| e.event_type == ORDER_CREATED);
        self.created_all(conn, &created).await?;
        // Stable: two cancellations of one order keep their order.
        cancelled.sort_by(|a, b| a.aggregate_id.cmp(&b.aggregate_id));
        for envelope in cancelled {
            self.cancelled(conn, envelope).await?;
        }
        Ok(())
    }
}
