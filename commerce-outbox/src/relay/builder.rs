//! The relay's settings and their defaults.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use super::topics::Topics;
use super::{Relay, Shared};
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::metrics::RelayCounters;
use crate::transport::{EventTransport, KafkaTransport};

/// Where the relay publishes.
#[derive(Debug, Clone)]
pub(super) enum Source {
    /// A Kafka transport of its own, created by `build` (with the producer overrides).
    Kafka(String),
    /// A transport given by the caller.
    Transport(Arc<dyn EventTransport>),
}

/// Configures a [`Relay`]. Every knob has a default suited to a production service.
#[derive(Debug, Clone)]
#[must_use]
pub struct RelayBuilder {
    pub(super) pool: PgPool,
    source: Source,
    pub(super) name: String,
    pub(super) batch_size: u32,
    pub(super) workers: usize,
    pub(super) poll_interval: Duration,
    pub(super) max_attempts: u32,
    pub(super) broker_backoff: Backoff,
    pub(super) retry_backoff: Backoff,
    pub(super) retention: Option<Duration>,
    pub(super) prune_interval: Duration,
    pub(super) producer_overrides: Vec<(String, String)>,
    pub(super) listen: bool,
}

impl RelayBuilder {
    /// The defaults: see each setter.
    pub(super) fn new(pool: PgPool, source: Source) -> Self {
        Self {
            pool,
            source,
            name: "outbox-relay".into(),
            batch_size: 500,
            workers: 1,
            poll_interval: Duration::from_secs(1),
            max_attempts: 10,
            broker_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            retry_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            prune_interval: Duration::from_secs(60),
            producer_overrides: Vec::new(),
            listen: true,
        }
    }

    /// A name for log lines (default `"outbox-relay"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Rows claimed per batch (default 500; at least 1).
    pub fn batch_size(mut self, rows: u32) -> Self {
        self.batch_size = rows.max(1);
        self
    }

    /// Concurrent batch loops in this relay (default 1). Two overlap one batch's database
    /// round trips with the other's broker round trip. Each holds one pool connection.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// How often to look for work without a notification (default 1 s). NOTIFY makes the
    /// common case immediate; polling covers lost notifications and retry timers.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Failed publish attempts after which an event becomes a dead letter (default 10).
    ///
    /// An attempt counts when the transport refused the message ([`crate::PublishOutcome::Refused`]:
    /// on Kafka the broker refused it, its topic does not exist, or it went undelivered while
    /// the broker was answering; in-process a consumer group's handler kept failing); not
    /// while the transport is unavailable.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Per-topic backoff while the transport does not answer for a topic's messages
    /// (default 100 ms up to 10 s): only that topic's events wait, other topics' keep
    /// flowing. Also the wait after a failed database round and between LISTEN
    /// reconnections.
    pub fn broker_backoff(mut self, backoff: Backoff) -> Self {
        self.broker_backoff = backoff;
        self
    }

    /// Per-event wait between failed attempts (default 1 s up to 5 min).
    pub fn retry_backoff(mut self, backoff: Backoff) -> Self {
        self.retry_backoff = backoff;
        self
    }

    /// Published (and discarded) rows older than this are deleted (default 7 days);
    /// `None` keeps them forever.
    pub fn retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// How often retention pruning runs (default 1 min).
    pub fn prune_interval(mut self, interval: Duration) -> Self {
        self.prune_interval = interval;
        self
    }

    /// Overrides a librdkafka producer setting (e.g. `message.timeout.ms`,
    /// `message.max.bytes`, `linger.ms`) of the Kafka transport [`Relay::builder`] creates.
    /// `enable.idempotence=true` and `acks=all` are the defaults; overriding them gives up
    /// the ordering and durability this crate promises. A relay built
    /// [`Relay::with_transport`] refuses it at [`RelayBuilder::build`]: set it on the
    /// [`KafkaTransport`] instead.
    pub fn producer_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.producer_overrides.push((key.into(), value.into()));
        self
    }

    /// Whether to `LISTEN` for enqueue notifications (default true; false leaves polling
    /// only).
    pub fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// The relay (with [`Relay::builder`], its Kafka transport and producer).
    ///
    /// # Errors
    /// [`Error::Kafka`] when librdkafka rejects the producer configuration;
    /// [`Error::InvalidSetting`] for producer settings on a relay with a given transport.
    pub fn build(self) -> Result<Relay> {
        let transport: Arc<dyn EventTransport> = match &self.source {
            Source::Kafka(brokers) => {
                let mut kafka = KafkaTransport::builder(brokers.as_str());
                for (key, value) in &self.producer_overrides {
                    kafka = kafka.producer_config(key.as_str(), value.as_str());
                }
                Arc::new(kafka.build()?)
            }
            Source::Transport(_) if !self.producer_overrides.is_empty() => {
                return Err(Error::InvalidSetting {
                    setting: "producer_config",
                    reason: "the relay was given its transport; set librdkafka settings on the KafkaTransport".into(),
                });
            }
            Source::Transport(transport) => Arc::clone(transport),
        };
        Ok(Relay {
            shared: Arc::new(Shared {
                transport,
                topics: Topics::default(),
                counters: RelayCounters::new(),
                config: self,
            }),
        })
    }
}
