//! Order events from the outbox to Kafka and on to a consumer, when `KAFKA_BROKERS` is set.
//!
//! commerce-core writes its events into the outbox inside each order transaction
//! ([`OutboxHook`]); the relay publishes them after commit; an idempotent consumer (the
//! inbox) applies each order event once. This is the pipe the choreographed saga between
//! the order, payment and store services runs on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use commerce_core::OutboxHook;
use commerce_outbox::{
    ensure_topics, ConsumerHandle, Envelope, EventHandler, HandlerError, InboxConsumer, Relay,
    RelayHandle, TopicSettings,
};
use sqlx::{PgConnection, PgPool};

/// The topic of order events.
pub const ORDERS_TOPIC: &str = "commerce.orders";
/// The topic of stock events.
pub const STOCK_TOPIC: &str = "commerce.stock";

/// The hook that routes commerce-core's events to [`ORDERS_TOPIC`] and [`STOCK_TOPIC`].
#[must_use]
pub fn outbox_hook() -> OutboxHook {
    OutboxHook::with_topics(ORDERS_TOPIC, STOCK_TOPIC)
}

/// Counts the order events of this run that reach the consumer (each once, by the inbox).
struct OrderTracking {
    since: DateTime<Utc>,
    seen: Arc<AtomicU64>,
}

#[async_trait]
impl EventHandler for OrderTracking {
    async fn handle(
        &self,
        _conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        if envelope.occurred_at >= self.since {
            self.seen.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The running relay and consumer.
#[derive(Debug)]
pub struct EventPipeline {
    pool: PgPool,
    relay: RelayHandle,
    consumer: ConsumerHandle,
    since: DateTime<Utc>,
    seen: Arc<AtomicU64>,
}

impl EventPipeline {
    /// Creates the topics, runs the outbox migrations and starts the relay and an order
    /// consumer (its own consumer group, so a run sees every event of that run).
    ///
    /// # Errors
    /// When the broker cannot be reached or a migration fails.
    pub async fn start(pool: PgPool, brokers: &str, since: DateTime<Utc>) -> anyhow::Result<Self> {
        commerce_outbox::MIGRATOR
            .run(&pool)
            .await
            .context("migrate commerce-outbox")?;
        ensure_topics(
            brokers,
            &[ORDERS_TOPIC, STOCK_TOPIC],
            TopicSettings::default(),
        )
        .await
        .with_context(|| format!("create topics on {brokers} (run scripts/services.sh up)"))?;
        let relay = Relay::builder(pool.clone(), brokers)
            .name("reference-app")
            .build()?
            .spawn();
        let seen = Arc::new(AtomicU64::new(0));
        let group = format!("reference-app-tracking-{}", since.timestamp_micros());
        let consumer = InboxConsumer::builder(pool.clone(), brokers, group, "order-tracking")
            .topics([ORDERS_TOPIC])
            .build(OrderTracking {
                since,
                seen: Arc::clone(&seen),
            })?
            .spawn();
        Ok(Self {
            pool,
            relay,
            consumer,
            since,
            seen,
        })
    }

    /// Waits until the consumer has applied every order event written since the start (up to
    /// `timeout`), then stops both tasks. Returns (written, delivered).
    ///
    /// # Errors
    /// Database errors, or a task that failed to stop.
    pub async fn drain(self, timeout: Duration) -> anyhow::Result<(u64, u64)> {
        let written: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM commerce_outbox.event WHERE topic = $1 AND occurred_at >= $2",
        )
        .bind(ORDERS_TOPIC)
        .bind(self.since)
        .fetch_one(&self.pool)
        .await?;
        let written = u64::try_from(written)?;
        let deadline = tokio::time::Instant::now() + timeout;
        while self.seen.load(Ordering::Relaxed) < written && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let delivered = self.seen.load(Ordering::Relaxed);
        self.consumer.shutdown().await?;
        self.relay.shutdown().await?;
        Ok((written, delivered))
    }
}
