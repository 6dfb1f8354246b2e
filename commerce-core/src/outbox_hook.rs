//! commerce-core's events into the transactional outbox (feature `outbox`).

use async_trait::async_trait;
use commerce_outbox::{enqueue_all, NewEvent, TopicRoutes};
use sqlx::PgConnection;

use crate::event::{CoreEvent, TransactionHook};

/// Schema version of the [`CoreEvent`] payloads.
pub const CORE_EVENT_SCHEMA_VERSION: i32 = 1;

/// A [`TransactionHook`] that writes every event of a commerce-core transaction to the
/// commerce-outbox table, in that transaction: the relay publishes them after commit, and a
/// rolled-back order leaves no event behind.
///
/// Each event becomes an outbox envelope with the event type (`order.placed`, ...), the
/// aggregate (`order` / `product` and its id, the Kafka key), schema version
/// [`CORE_EVENT_SCHEMA_VERSION`] and the [`CoreEvent`] as JSON payload. Events are written
/// grouped by aggregate in a fixed order (so concurrent transactions cannot deadlock on the
/// outbox's per-aggregate sequence rows), each aggregate's events in the order they happened.
///
/// ```no_run
/// # fn demo(pool: sqlx::PgPool) {
/// use commerce_core::{Commerce, OutboxHook};
///
/// let commerce = Commerce::builder(pool)
///     .hook(OutboxHook::with_topics("orders", "stock"))
///     .build();
/// # let _ = commerce; }
/// ```
#[derive(Debug, Clone)]
pub struct OutboxHook {
    routes: TopicRoutes,
}

impl OutboxHook {
    /// Routes events by aggregate type (`order`, `product`) with `routes`.
    #[must_use]
    pub fn new(routes: TopicRoutes) -> Self {
        Self { routes }
    }

    /// Order events to `orders`, stock events to `products`.
    #[must_use]
    pub fn with_topics(orders: &str, products: &str) -> Self {
        Self::new(
            TopicRoutes::new()
                .route("order", orders)
                .route("product", products),
        )
    }

    /// The topics events go to (for creating them at start-up).
    #[must_use]
    pub fn topics(&self) -> Vec<&str> {
        self.routes.topics()
    }

    fn envelope(&self, event: &CoreEvent) -> commerce_outbox::Result<NewEvent> {
        let topic = self.routes.topic_for(event.aggregate_type())?;
        let payload = serde_json::to_value(event).map_err(commerce_outbox::Error::from)?;
        Ok(NewEvent::new(
            topic,
            event.event_type(),
            event.aggregate_type(),
            event.aggregate_id(),
            payload,
        )
        .with_schema_version(CORE_EVENT_SCHEMA_VERSION))
    }
}

#[async_trait]
impl TransactionHook for OutboxHook {
    async fn before_commit(
        &self,
        conn: &mut PgConnection,
        events: &[CoreEvent],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut envelopes = events
            .iter()
            .map(|event| self.envelope(event))
            .collect::<commerce_outbox::Result<Vec<_>>>()?;
        // Each enqueue locks its aggregate's sequence row until commit. Taken in event order,
        // two transactions serving the same orders in different orders (a cancellation and a
        // receipt) would lock them in opposite orders and deadlock; sorted, every transaction
        // takes them in one order. The sort is stable, so one aggregate's events keep their
        // order; the order across aggregates carries no meaning downstream.
        envelopes.sort_by(|a, b| {
            (&a.aggregate_type, &a.aggregate_id).cmp(&(&b.aggregate_type, &b.aggregate_id))
        });
        enqueue_all(conn, &envelopes).await?;
        Ok(())
    }
}
