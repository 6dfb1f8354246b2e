//! The relay: tokio tasks that publish committed outbox rows through an
//! [`EventTransport`] (Kafka, or in-process).
//!
//! Several relays (processes, or workers of one relay) may run on one table. Each batch is
//! one Postgres transaction: claim (`FOR UPDATE SKIP LOCKED`, see [`claim`]), publish and
//! wait for every outcome, mark published, commit. A relay that dies mid-batch releases its
//! locks with its connection, so its rows are published again by whoever claims them next:
//! delivery is at least once, and the [`crate::inbox`] absorbs the duplicates.
//!
//! The pieces: `builder` (settings), `worker` (the batch loop), `listen` (wake-ups on
//! commit), `claim`, `topics` (per-topic backoff while the transport does not answer for a
//! topic) and `settle`. Everything about a particular transport (Kafka's producer, topic
//! lookups and fault classification) lives in [`crate::transport`].

mod builder;
mod claim;
mod listen;
mod settle;
mod topics;
mod worker;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

pub use builder::RelayBuilder;

use crate::error::{Error, Result};
use crate::metrics::{outbox_stats, RelayCounters, RelayMetrics};
use crate::retention::prune_periodically;
use crate::transport::EventTransport;
use topics::Topics;

/// How long a shutting-down relay waits for messages still buffered in its transport.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What every task of one relay shares.
struct Shared {
    transport: Arc<dyn EventTransport>,
    topics: Topics,
    counters: RelayCounters,
    config: RelayBuilder,
}

/// A configured relay; [`Relay::spawn`] starts it.
pub struct Relay {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("name", &self.shared.config.name)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A builder for a relay reading `pool`'s outbox and publishing to Kafka at `brokers`
    /// (`host:port[,host:port]`): the shorthand of [`Relay::with_transport`] with a
    /// [`crate::KafkaTransport`] of its own (librdkafka settings through
    /// [`RelayBuilder::producer_config`]).
    pub fn builder(pool: PgPool, brokers: impl Into<String>) -> RelayBuilder {
        RelayBuilder::new(pool, builder::Source::Kafka(brokers.into()))
    }

    /// A builder for a relay reading `pool`'s outbox and publishing through `transport`
    /// (shared with other relays and the consumers if you like).
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use commerce_outbox::{InProcessTransport, Relay};
    ///
    /// # async fn run(pool: sqlx::PgPool) -> commerce_outbox::Result<()> {
    /// let events = Arc::new(InProcessTransport::new());
    /// let relay = Relay::with_transport(pool, events).build()?.spawn();
    /// # relay.shutdown().await }
    /// ```
    pub fn with_transport(pool: PgPool, transport: Arc<dyn EventTransport>) -> RelayBuilder {
        RelayBuilder::new(pool, builder::Source::Transport(transport))
    }

    /// Starts the relay's tasks on the current tokio runtime; the handle owns them.
    #[must_use]
    pub fn spawn(self) -> RelayHandle {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let supervisor = tasks.spawn(supervise(
            Arc::clone(&self.shared),
            tasks.clone(),
            shutdown.clone(),
        ));
        // Closed only means "wait() may finish once every task has ended"; the supervisor
        // still spawns the relay's tasks on it.
        tasks.close();
        RelayHandle {
            shared: self.shared,
            shutdown,
            tasks,
            supervisor,
        }
    }
}

/// Owns a running relay: stop it with [`RelayHandle::shutdown`].
pub struct RelayHandle {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    supervisor: JoinHandle<Result<()>>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("name", &self.shared.config.name)
            .finish_non_exhaustive()
    }
}

impl RelayHandle {
    /// Lets in-flight batches finish (each is published and marked, or rolled back), stops
    /// every task of the relay and flushes the transport (Kafka: the producer's queue).
    ///
    /// An in-flight batch may wait for its transport's answer: on Kafka up to the delivery
    /// timeout, in-process up to the ack timeout (stop the consumers first and it is
    /// immediate: their queued messages come back unavailable).
    ///
    /// # Errors
    /// [`Error::Task`] when a relay task panicked.
    pub async fn shutdown(self) -> Result<()> {
        self.shutdown.cancel();
        let outcome = match self.supervisor.await {
            Ok(outcome) => outcome,
            Err(error) => Err(Error::Task(error.to_string())),
        };
        self.tasks.wait().await;
        if let Err(error) = self.shared.transport.flush(FLUSH_TIMEOUT).await {
            tracing::warn!(relay = %self.shared.config.name, %error, "flushing the transport on shutdown failed");
        }
        outcome
    }

    /// Kills the relay without letting batches finish, as a crash would: rows published but
    /// not yet marked stay pending and are published again (at least once).
    pub fn abort(self) {
        // The supervisor holds every task's abort-on-drop handle.
        self.supervisor.abort();
    }

    /// Events this relay published so far (no database query, unlike
    /// [`RelayHandle::metrics`]).
    #[must_use]
    pub fn published_total(&self) -> u64 {
        self.shared.counters.published.load(Ordering::Relaxed)
    }

    /// The outbox table's state and this relay's counters.
    ///
    /// # Errors
    /// [`Error::Database`] when the stats query fails.
    pub async fn metrics(&self) -> Result<RelayMetrics> {
        let outbox = outbox_stats(&self.shared.config.pool).await?;
        Ok(self.shared.counters.snapshot(outbox))
    }
}

/// Starts the relay's tasks (LISTEN, workers, pruning) on `tasks` and waits for them all,
/// logging a task that panicked as soon as it does. The tasks are held by abort-on-drop
/// handles, so aborting the supervisor aborts them all: nothing outlives its handle.
async fn supervise(
    shared: Arc<Shared>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) -> Result<()> {
    let (wake_tx, wake_rx) = watch::channel(0_u64);
    let mut running = FuturesUnordered::new();
    // Without a listener the sender stays here, so workers' `changed()` waits instead of
    // failing at once.
    let _keep_wake_open = if shared.config.listen {
        running.push(AbortOnDropHandle::new(tasks.spawn(
            listen::listen_for_commits(Arc::clone(&shared), wake_tx, shutdown.clone()),
        )));
        None
    } else {
        Some(wake_tx)
    };
    for worker in 0..shared.config.workers {
        running.push(AbortOnDropHandle::new(tasks.spawn(worker::run_worker(
            Arc::clone(&shared),
            worker,
            wake_rx.clone(),
            shutdown.clone(),
        ))));
    }
    if let Some(retention) = shared.config.retention {
        let config = &shared.config;
        running.push(AbortOnDropHandle::new(tasks.spawn(prune_periodically(
            config.pool.clone(),
            config.name.clone(),
            retention,
            config.prune_interval,
            shutdown.clone(),
        ))));
    }
    let mut outcome = Ok(());
    while let Some(joined) = running.next().await {
        if let Err(error) = joined {
            tracing::error!(relay = %shared.config.name, %error, "outbox relay task failed");
            if outcome.is_ok() {
                outcome = Err(Error::Task(error.to_string()));
            }
        }
    }
    outcome
}
