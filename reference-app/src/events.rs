//! The event transport of the running system: Kafka when `KAFKA_BROKERS` is set, the
//! in-process transport otherwise (Postgres alone). The same relay, consumers and saga code
//! run on both; only this module knows which one it is.

use std::sync::Arc;
use std::time::Duration;

use commerce_outbox::{
    ConsumerHandle, EventHandler, EventTransport, InProcessTransport, InboxConsumer,
    KafkaTransport, Relay, RelayHandle,
};
use sqlx::PgPool;

use crate::services::contracts::Topics;
use crate::services::ops::ReadinessCheck;

/// Deliveries a consumer applies in one transaction, at most (only those already waiting).
const CONSUMER_BATCH: usize = 128;

/// The transport, the relay publishing the outbox through it, and the consumers.
#[derive(Debug)]
pub struct EventBus {
    pool: PgPool,
    transport: Arc<dyn EventTransport>,
    brokers: Option<String>,
    consumers: Vec<ConsumerHandle>,
    relay: Option<RelayHandle>,
}

impl EventBus {
    /// Kafka at `brokers` (consumers' session timeout `session_timeout`), or the in-process
    /// transport when `None`; creates the topics.
    ///
    /// # Errors
    /// When the broker refuses the configuration or the topics.
    pub async fn new(
        pool: PgPool,
        brokers: Option<&str>,
        topics: &Topics,
        session_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let transport: Arc<dyn EventTransport> = match brokers {
            // A silent consumer's partitions move after `session_timeout`; heartbeats at a
            // third of it, as the broker expects.
            Some(brokers) => Arc::new(
                KafkaTransport::builder(brokers)
                    .consumer_config(
                        "session.timeout.ms",
                        session_timeout.as_millis().to_string(),
                    )
                    .consumer_config(
                        "heartbeat.interval.ms",
                        (session_timeout / 3).as_millis().to_string(),
                    )
                    .build()?,
            ),
            None => Arc::new(InProcessTransport::new()),
        };
        transport.ensure_topics(&topics.all()).await?;
        Ok(Self {
            pool,
            transport,
            brokers: brokers.map(str::to_owned),
            consumers: Vec::new(),
            relay: None,
        })
    }

    /// `"kafka"` or `"in-process"`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        self.transport.kind()
    }

    /// Runs `handler` as consumer `name` (its inbox) in consumer group `name` on `topics`.
    /// Subscribe every consumer before [`EventBus::start_relay`]: in-process, a message
    /// reaches the groups subscribed when it is published.
    ///
    /// # Errors
    /// When the transport refuses the subscription.
    pub fn consume(
        &mut self,
        name: &str,
        topics: &[&str],
        handler: impl EventHandler,
    ) -> anyhow::Result<()> {
        let consumer = InboxConsumer::with_transport(
            self.pool.clone(),
            Arc::clone(&self.transport),
            name,
            name,
        )
        .topics(topics.iter().copied())
        // A burst of orders or payment answers is applied many events per transaction
        // (the saga's handlers write a run of them in one statement).
        .max_batch(CONSUMER_BATCH)
        .build(handler)?;
        self.consumers.push(consumer.spawn());
        Ok(())
    }

    /// Starts the relay that publishes committed outbox events.
    ///
    /// # Errors
    /// When the relay cannot be built.
    pub fn start_relay(&mut self) -> anyhow::Result<()> {
        let relay = Relay::with_transport(self.pool.clone(), Arc::clone(&self.transport))
            .build()?
            .spawn();
        self.relay = Some(relay);
        Ok(())
    }

    /// A readiness check of the broker (Kafka only): its bootstrap addresses accept a
    /// connection.
    #[must_use]
    pub fn readiness(&self) -> Option<ReadinessCheck> {
        let brokers = self.brokers.clone()?;
        Some(ReadinessCheck::new("broker", move || {
            let brokers = brokers.clone();
            async move {
                let mut last = String::from("no bootstrap address");
                for address in brokers.split(',').map(str::trim) {
                    match tokio::time::timeout(
                        Duration::from_secs(1),
                        tokio::net::TcpStream::connect(address),
                    )
                    .await
                    {
                        Ok(Ok(_)) => return Ok(()),
                        Ok(Err(e)) => last = format!("{address}: {e}"),
                        Err(_) => last = format!("{address}: no answer within 1 s"),
                    }
                }
                Err(last)
            }
        }))
    }

    /// Stops the consumers after their current event, then the relay. In that order an
    /// in-process publish waiting for a consumer gets its answer (unavailable: the row stays
    /// pending for the next start) instead of holding the relay until its timeout.
    pub async fn shutdown(self) {
        for consumer in self.consumers {
            if let Err(error) = consumer.shutdown().await {
                tracing::warn!(%error, "consumer stopped with an error");
            }
        }
        if let Some(relay) = self.relay {
            if let Err(error) = relay.shutdown().await {
                tracing::warn!(%error, "outbox relay stopped with an error");
            }
        }
    }
}
