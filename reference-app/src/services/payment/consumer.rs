//! The payment service's consumer of order events: each applied exactly once (inbox), in the
//! consumer's transaction.

use std::sync::Arc;

use async_trait::async_trait;
use commerce_core::OrderStatus;
use commerce_outbox::saga::{record_saga_step, SagaStatus};
use commerce_outbox::{Envelope, EventHandler, HandlerError, UnprocessableEvent};
use sqlx::PgConnection;
use tokio::sync::Notify;

use super::store;
use super::worker::{record_payments, PaymentRequest};
use crate::services::contracts::{
    OrderCancelled, OrderCreated, OrderPlaced, ORDER_CANCELLED, ORDER_CREATED, ORDER_PLACED, SAGA,
};

/// Records a payment to take for every start of the saga: an `order.placed` of an order placed
/// CREATED, or an `order.created` (settling an amount of 0 at once, without a gateway call);
/// voids, asks about or refunds it on `order.cancelled`. Wakes the worker when there is
/// something to do.
#[derive(Debug, Clone)]
pub struct OrderEvents {
    wake: Arc<Notify>,
    /// Where answers settled here go (the payments topic).
    topic: String,
    /// What a placement's amount is in (the system's currency: `CURRENCY`).
    currency: String,
}

impl OrderEvents {
    /// A consumer that wakes `wake` (the worker's) after new work and answers on `topic`;
    /// placements are charged in `currency`.
    #[must_use]
    pub fn new(wake: Arc<Notify>, topic: impl Into<String>, currency: impl Into<String>) -> Self {
        Self {
            wake,
            topic: topic.into(),
            currency: currency.into(),
        }
    }

    /// What `envelope` asks to charge, if it starts the saga: `None` for an order placed
    /// BACKORDERED (its `order.created` comes when it is served) and for other events.
    ///
    /// # Errors
    /// [`UnprocessableEvent`] for a payload that does not decode, or a negative amount: never
    /// chargeable, so set aside (a consumer dead letter), not retried.
    fn charge_of(&self, envelope: &Envelope) -> Result<Option<OrderCreated>, HandlerError> {
        let order = match envelope.event_type.as_str() {
            ORDER_CREATED => envelope.decode_payload::<OrderCreated>()?,
            ORDER_PLACED => match envelope
                .decode_payload::<OrderPlaced>()?
                .charge(&self.currency)
            {
                Some(order) => order,
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        if order.amount < 0 {
            return Err(UnprocessableEvent::new(format!(
                "{} {} with a negative amount {}",
                envelope.event_type, order.order_id, order.amount
            ))
            .into());
        }
        Ok(Some(order))
    }

    async fn created(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        let Some(order) = self.charge_of(envelope)? else {
            return Ok(());
        };
        self.record(conn, &[(envelope, order)]).await
    }

    /// Records the payments of saga starts (see [`record_payments`]) and wakes the worker
    /// when one waits for a charge.
    async fn record(
        &self,
        conn: &mut PgConnection,
        starts: &[(&Envelope, OrderCreated)],
    ) -> Result<(), HandlerError> {
        let requests: Vec<PaymentRequest<'_>> = starts
            .iter()
            .map(|(envelope, order)| PaymentRequest {
                order: order.order_id,
                amount: order.amount,
                currency: &order.currency,
                traceparent: envelope.traceparent.as_deref(),
                event_id: Some(envelope.id),
            })
            .collect();
        if record_payments(conn, &self.topic, &requests, None)
            .await?
            .to_charge
        {
            self.wake.notify_one();
        }
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

    /// [`OrderEvents::created`] for a run of saga starts at once: the payments in one insert,
    /// their saga steps in another. An event that cannot be applied fails the run (the
    /// consumer then applies the events one by one, and sets that one aside).
    async fn created_all(
        &self,
        conn: &mut PgConnection,
        envelopes: &[&Envelope],
    ) -> Result<(), HandlerError> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let mut starts = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            if let Some(order) = self.charge_of(envelope)? {
                starts.push((*envelope, order));
            }
        }
        self.record(conn, &starts).await
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
            ORDER_CREATED | ORDER_PLACED => self.created(conn, envelope).await,
            ORDER_CANCELLED => self.cancelled(conn, envelope).await,
            _ => Ok(()),
        }
    }

    /// Only the saga's starts (`order.created`, and `order.placed` of an order placed CREATED)
    /// and `order.cancelled`: the orders topic's other events (a backordered placement, status
    /// changes) cost this consumer neither a transaction nor an inbox row.
    fn handles(&self, envelope: &Envelope) -> bool {
        match envelope.event_type.as_str() {
            ORDER_CREATED | ORDER_CANCELLED => true,
            // A payload without the status is handled, and set aside there.
            ORDER_PLACED => envelope
                .payload
                .get("status")
                .and_then(serde_json::Value::as_str)
                .is_none_or(|status| status == OrderStatus::Created.as_str()),
            _ => false,
        }
    }

    /// The saga's starts are recorded together, then the `order.cancelled` ones are
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
            .partition(|e| e.event_type != ORDER_CANCELLED);
        self.created_all(conn, &created).await?;
        // Stable: two cancellations of one order keep their order.
        cancelled.sort_by(|a, b| a.aggregate_id.cmp(&b.aggregate_id));
        for envelope in cancelled {
            self.cancelled(conn, envelope).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use commerce_core::OrderId;
    use commerce_outbox::EventId;
    use commerce_testkit::TestDb;
    use uuid::Uuid;

    use super::*;
    use crate::services::contracts::placed_by_alice;

    fn placed(order: Uuid, status: OrderStatus, lines: &[(i64, i64, i64)]) -> Envelope {
        // commerce-core's own event, as its outbox hook writes it.
        let event = placed_by_alice(OrderId(order), status, lines);
        Envelope {
            id: EventId(Uuid::now_v7()),
            event_type: event.event_type().into(),
            aggregate_type: event.aggregate_type().into(),
            aggregate_id: order.to_string(),
            aggregate_seq: 1,
            occurred_at: chrono::Utc::now(),
            schema_version: commerce_core::CORE_EVENT_SCHEMA_VERSION,
            payload: serde_json::to_value(&event).unwrap(),
            traceparent: None,
        }
    }

    /// One event per placement: an order placed CREATED is charged from commerce-core's
    /// `order.placed` (its lines at their prices, summed saturating, in the system's
    /// currency), alone or in a run; an order placed BACKORDERED costs the consumer nothing
    /// (its `order.created` comes when it is served); a placement whose lines do not decode
    /// is refused for good, not retried; an `order.created` for the same order (from an order
    /// service of the version before) records nothing more.
    #[tokio::test]
    async fn an_order_placed_created_is_charged_from_its_placement() {
        let db = TestDb::new(&crate::migrators().map(|(_, migrator)| migrator)).await;
        let events = OrderEvents::new(Arc::default(), "payments", "KRW");
        let (cheap, dear, waiting) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let cheap_placed = placed(cheap, OrderStatus::Created, &[(3, 3, 450), (1, 1, 7)]);
        let dear_placed = placed(
            dear,
            OrderStatus::Created,
            &[(2, 2, i64::MAX / 2), (1, 1, 7)],
        );
        let waiting_placed = placed(waiting, OrderStatus::Backordered, &[(5, 2, 450)]);
        assert!(events.handles(&cheap_placed));
        assert!(!events.handles(&waiting_placed));

        let mut conn = db.pool().acquire().await.unwrap();
        events.handle(&mut conn, &cheap_placed).await.unwrap();
        events
            .handle_batch(&mut conn, &[&dear_placed, &waiting_placed])
            .await
            .unwrap();
        events.handle(&mut conn, &waiting_placed).await.unwrap();
        // The `order.created` an order service of the version before writes beside it: the
        // payment is recorded once.
        let created = Envelope {
            id: EventId(Uuid::now_v7()),
            event_type: ORDER_CREATED.into(),
            payload: serde_json::json!({
                "order_id": cheap, "user_id": "alice", "amount": 1357, "currency": "KRW"
            }),
            ..cheap_placed.clone()
        };
        events.handle(&mut conn, &created).await.unwrap();
        let payments: Vec<(Uuid, i64, String)> = sqlx::query_as(
            "SELECT order_id, amount, currency FROM payment.payments ORDER BY amount",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        assert_eq!(
            payments,
            [(cheap, 1357, "KRW".into()), (dear, i64::MAX, "KRW".into())]
        );
        let started: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM commerce_outbox.saga_log WHERE step = 'payment_recorded'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!(started, 2);

        let mut garbage = placed(Uuid::now_v7(), OrderStatus::Created, &[(1, 1, 450)]);
        garbage.payload["lines"] = serde_json::json!("many");
        assert!(events.handles(&garbage));
        let error = events.handle(&mut conn, &garbage).await.unwrap_err();
        assert!(
            UnprocessableEvent::find(error.as_ref()).is_some(),
            "{error}"
        );
    }
}
