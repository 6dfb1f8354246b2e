//! The relay: a tokio task that publishes committed outbox rows to Kafka.
//!
//! Several relays (processes, or workers of one relay) may run on one table. Each batch is
//! one Postgres transaction: claim (`FOR UPDATE SKIP LOCKED`, see [`claim`]), publish and
//! wait for every acknowledgement, mark published, commit. A relay that dies mid-batch
//! releases its locks with its connection, so its rows are published again by whoever
//! claims them next: delivery is at least once, and the [`crate::inbox`] absorbs the
//! duplicates.

mod claim;
mod publish;
mod settle;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::backoff::Backoff;
use crate::enqueue::NOTIFY_CHANNEL;
use crate::error::{Error, Result};
use crate::kafka::producer_config;
use crate::metrics::{outbox_stats, RelayCounters, RelayMetrics};
use crate::retention::prune_settled;
use publish::Publisher;
use settle::{RetryPolicy, Settlement};

/// Configures a [`Relay`]. Every knob has a default suited to a production service.
#[derive(Debug, Clone)]
#[must_use]
pub struct RelayBuilder {
    pool: PgPool,
    brokers: String,
    name: String,
    batch_size: u32,
    workers: usize,
    poll_interval: Duration,
    max_attempts: u32,
    broker_backoff: Backoff,
    retry_backoff: Backoff,
    retention: Option<Duration>,
    prune_interval: Duration,
    producer_overrides: Vec<(String, String)>,
    listen: bool,
}

impl RelayBuilder {
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

    /// Refused publish attempts after which an event becomes a dead letter (default 10).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Relay-wide backoff while the broker is unreachable (default 100 ms up to 10 s).
    pub fn broker_backoff(mut self, backoff: Backoff) -> Self {
        self.broker_backoff = backoff;
        self
    }

    /// Per-event wait between refused attempts (default 1 s up to 5 min).
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
    /// `message.max.bytes`, `linger.ms`). `enable.idempotence=true` and `acks=all` are the
    /// defaults; overriding them gives up the ordering and durability this crate promises.
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

    /// Creates the producer.
    ///
    /// # Errors
    /// [`Error::Kafka`] when librdkafka rejects the configuration.
    pub fn build(self) -> Result<Relay> {
        let publisher = Publisher::new(producer_config(&self.brokers, &self.producer_overrides))?;
        Ok(Relay {
            shared: Arc::new(Shared {
                publisher,
                counters: RelayCounters::new(),
                config: self,
            }),
        })
    }
}

struct Shared {
    publisher: Publisher,
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
    /// A builder for a relay reading `pool`'s outbox and publishing to `brokers`
    /// (`host:port[,host:port]`).
    pub fn builder(pool: PgPool, brokers: impl Into<String>) -> RelayBuilder {
        RelayBuilder {
            pool,
            brokers: brokers.into(),
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

    /// Starts the relay's tasks on the current tokio runtime; the handle owns them.
    #[must_use]
    pub fn spawn(self) -> RelayHandle {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(Arc::clone(&self.shared), shutdown_rx));
        RelayHandle {
            shared: self.shared,
            shutdown: shutdown_tx,
            task,
        }
    }
}

/// Owns a running relay: stop it with [`RelayHandle::shutdown`].
pub struct RelayHandle {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
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
    /// every task of the relay and flushes the producer.
    ///
    /// # Errors
    /// [`Error::Task`] when a relay task panicked.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        let joined = self.task.await;
        self.shared.publisher.flush(Duration::from_secs(5));
        joined.map_err(|e| Error::Task(e.to_string()))
    }

    /// Kills the relay without letting batches finish, as a crash would: rows published but
    /// not yet marked stay pending and are published again (at least once).
    pub fn abort(self) {
        self.task.abort();
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

/// Owns the relay's tasks in a `JoinSet`: aborting the supervisor drops the set, which
/// aborts them all, so nothing outlives its handle.
async fn supervise(shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    let (wake_tx, wake_rx) = watch::channel(0_u64);
    let mut tasks = JoinSet::new();
    if shared.config.listen {
        tasks.spawn(listen_for_commits(
            Arc::clone(&shared),
            wake_tx,
            shutdown.clone(),
        ));
    } else {
        // Keep the sender alive so workers' `changed()` waits instead of failing.
        tasks.spawn(hold_until_shutdown(wake_tx, shutdown.clone()));
    }
    for worker in 0..shared.config.workers {
        tasks.spawn(run_worker(
            Arc::clone(&shared),
            worker,
            wake_rx.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(retention) = shared.config.retention {
        tasks.spawn(prune_periodically(Arc::clone(&shared), retention, shutdown));
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined {
            tracing::error!(relay = %shared.config.name, %error, "outbox relay task failed");
        }
    }
}

async fn hold_until_shutdown(_wake: watch::Sender<u64>, mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn listen_for_commits(
    shared: Arc<Shared>,
    wake: watch::Sender<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let backoff = shared.config.broker_backoff;
    let mut failures = 0_u32;
    while !*shutdown.borrow() {
        let connected = async {
            let mut listener = PgListener::connect_with(&shared.config.pool).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = backoff.delay_with_random_jitter(failures);
                tracing::warn!(relay = %shared.config.name, %error, ?delay, "outbox LISTEN failed; polling only until it reconnects");
                if sleep_or_shutdown(delay, &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        failures = 0;
        // Commits may have happened while (re)connecting.
        wake.send_modify(|n| *n = n.wrapping_add(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                received = listener.try_recv() => match received {
                    // `None`: the connection dropped (notifications may be lost); the next
                    // call reconnects.
                    Ok(_) => wake.send_modify(|n| *n = n.wrapping_add(1)),
                    Err(error) => {
                        tracing::warn!(relay = %shared.config.name, %error, "outbox LISTEN connection failed; reconnecting");
                        wake.send_modify(|n| *n = n.wrapping_add(1));
                        break;
                    }
                },
            }
        }
    }
}

/// Returns true when shutdown was requested during the sleep.
async fn sleep_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        _ = shutdown.wait_for(|stop| *stop) => return true,
    }
    *shutdown.borrow()
}

/// Consecutive broker failures after which the producer is replaced (see
/// `Publisher::renew`).
const RENEW_PRODUCER_AFTER: u32 = 3;

/// Why a worker pauses after a batch.
enum Next {
    /// A full batch or progress: look again at once.
    Continue,
    /// Nothing to do: wait for a notification or the poll interval.
    Idle(Duration),
    /// Broker or database trouble: wait, then try again.
    Backoff(Duration),
}

async fn run_worker(
    shared: Arc<Shared>,
    worker: usize,
    mut wake: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let config = &shared.config;
    let mut failures = 0_u32;
    while !*shutdown.borrow() {
        wake.borrow_and_update();
        let next = match run_batch(&shared).await {
            Ok((locked, settlement)) if settlement.unavailable > 0 => {
                failures = failures.saturating_add(1);
                let delay = config.broker_backoff.delay_with_random_jitter(failures);
                tracing::warn!(
                    relay = %config.name, worker, consecutive_failures = failures,
                    unsent = settlement.unavailable, published = settlement.published,
                    error = settlement.unavailable_error.as_deref().unwrap_or("-"),
                    backoff_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "kafka unreachable: events stay pending; relay backing off"
                );
                let _ = locked;
                if failures % RENEW_PRODUCER_AFTER == 0 {
                    tracing::warn!(relay = %config.name, worker, consecutive_failures = failures, "recreating the kafka producer after repeated failures");
                    if let Err(error) = shared.publisher.renew() {
                        tracing::error!(relay = %config.name, %error, "cannot recreate the kafka producer");
                    }
                }
                Next::Backoff(delay)
            }
            Ok((locked, settlement)) => {
                if failures > 0 {
                    tracing::info!(relay = %config.name, worker, "kafka reachable again; relay resumed");
                }
                failures = 0;
                let progressed = settlement.published + settlement.rejected > 0;
                if locked >= config.batch_size as usize || progressed {
                    Next::Continue
                } else if locked > 0 {
                    // Everything we locked waits behind rows other relays hold: look again
                    // soon, without spinning.
                    Next::Idle(config.poll_interval.min(Duration::from_millis(20)))
                } else {
                    Next::Idle(config.poll_interval)
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = config.broker_backoff.delay_with_random_jitter(failures);
                tracing::warn!(
                    relay = %config.name, worker, consecutive_failures = failures, %error,
                    backoff_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "outbox batch failed; events stay pending; relay backing off"
                );
                Next::Backoff(delay)
            }
        };
        match next {
            Next::Continue => {}
            Next::Backoff(delay) => {
                if sleep_or_shutdown(delay, &mut shutdown).await {
                    return;
                }
            }
            Next::Idle(delay) => {
                let woken = tokio::select! {
                    changed = wake.changed() => changed.is_ok(),
                    () = tokio::time::sleep(delay) => true,
                    _ = shutdown.wait_for(|stop| *stop) => return,
                };
                // A closed wake channel means no listener: fall back to the poll interval.
                if !woken && sleep_or_shutdown(delay, &mut shutdown).await {
                    return;
                }
            }
        }
    }
}

/// One batch in one transaction; returns how many rows were locked and what happened.
async fn run_batch(shared: &Shared) -> Result<(usize, Settlement)> {
    let config = &shared.config;
    let started = std::time::Instant::now();
    let mut tx = config.pool.begin().await?;
    // Losing this commit in a Postgres crash only loses "published" marks, and those rows
    // are then published again: at least once either way, so the WAL flush wait is skipped.
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    let claimed = claim::claim(&mut tx, i64::from(config.batch_size)).await?;
    let claimed_at = started.elapsed();
    if claimed.rows.is_empty() {
        tx.commit().await?;
        return Ok((claimed.locked, Settlement::default()));
    }
    let producer = shared.publisher.producer();
    let outcomes = publish::publish_batch(&producer, &claimed.rows).await;
    let published_at = started.elapsed();
    let policy = RetryPolicy {
        max_attempts: config.max_attempts,
        backoff: config.retry_backoff,
    };
    let settlement = settle::settle(&mut tx, &producer, &claimed.rows, &outcomes, policy).await?;
    tx.commit().await?;
    tracing::debug!(
        relay = %config.name, locked = claimed.locked, rows = claimed.rows.len(),
        claim_us = claimed_at.as_micros(), publish_us = (published_at - claimed_at).as_micros(),
        settle_us = (started.elapsed() - published_at).as_micros(),
        "outbox batch"
    );

    let counters = &shared.counters;
    counters.batches.fetch_add(1, Ordering::Relaxed);
    counters
        .published
        .fetch_add(settlement.published, Ordering::Relaxed);
    counters
        .refused
        .fetch_add(settlement.rejected, Ordering::Relaxed);
    counters
        .dead_lettered
        .fetch_add(settlement.dead_lettered, Ordering::Relaxed);
    counters
        .unavailable
        .fetch_add(settlement.unavailable, Ordering::Relaxed);
    if settlement.unavailable > 0 {
        shared.publisher.recover_if_fatal()?;
    }
    Ok((claimed.locked, settlement))
}

async fn prune_periodically(
    shared: Arc<Shared>,
    retention: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if sleep_or_shutdown(shared.config.prune_interval, &mut shutdown).await {
            return;
        }
        match prune_settled(&shared.config.pool, retention).await {
            Ok(report) if report.events > 0 || report.sequences > 0 => {
                tracing::info!(relay = %shared.config.name, events = report.events, sequences = report.sequences, "outbox retention pruned rows");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(relay = %shared.config.name, %error, "outbox retention pruning failed; will retry");
            }
        }
    }
}
