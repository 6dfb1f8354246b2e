//! The batch loop: claim, publish, settle, commit; then decide how long to pause.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::claim::{self, ClaimedRow};
use super::fault::{attribute, missing_topic};
use super::publish::{self, RowOutcome};
use super::settle::{self, Settlement};
use super::topics::{look_up, TopicStatus};
use super::Shared;
use crate::error::Result;
use crate::shutdown::sleep_or_shutdown;

/// Consecutive batches in which the broker was unreachable and nothing was published,
/// after which the producer is replaced (see `Publisher::renew`).
const RENEW_PRODUCER_AFTER: u32 = 3;

/// The shortest pause when everything claimed waits behind rows other relays hold.
const BLOCKED_PAUSE: Duration = Duration::from_millis(20);

/// Why a worker pauses after a batch.
enum Next {
    /// A full batch or progress: look again at once.
    Continue,
    /// Nothing to do: wait for a notification or the given time.
    Idle(Duration),
    /// Database trouble: wait, then try again.
    Backoff(Duration),
}

/// What one batch did.
struct Batch {
    /// Rows the claim locked (a full batch means more work is likely waiting).
    locked: usize,
    settlement: Settlement,
}

pub(super) async fn run_worker(
    shared: Arc<Shared>,
    worker: usize,
    mut wake: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let config = &shared.config;
    // Consecutive batches without progress because of the broker, or failed on the database.
    let mut failures = 0_u32;
    while !shutdown.is_cancelled() {
        wake.borrow_and_update();
        let next = match run_batch(&shared).await {
            Ok(batch) => {
                let settlement = &batch.settlement;
                let outage = settlement.unavailable > 0 && settlement.published == 0;
                if outage {
                    failures = failures.saturating_add(1);
                    tracing::warn!(
                        relay = %config.name, worker, consecutive_failures = failures,
                        unsent = settlement.unavailable,
                        error = settlement.unavailable_error.as_deref().unwrap_or("-"),
                        "kafka unreachable: events stay pending; their topics back off"
                    );
                    if failures % RENEW_PRODUCER_AFTER == 0 {
                        tracing::warn!(relay = %config.name, worker, consecutive_failures = failures, "recreating the kafka producer after repeated failures");
                        if let Err(error) = shared.publisher.renew() {
                            tracing::error!(relay = %config.name, %error, "cannot recreate the kafka producer");
                        }
                    }
                } else if settlement.published > 0 {
                    if failures > 0 {
                        tracing::info!(relay = %config.name, worker, "kafka reachable again; relay resumed");
                    }
                    failures = 0;
                }
                let progressed = settlement.published + settlement.rejected > 0;
                let idle = shared
                    .topics
                    .next_thaw(Instant::now())
                    .map_or(config.poll_interval, |thaw| thaw.min(config.poll_interval));
                if outage || progressed || batch.locked >= config.batch_size as usize {
                    // After an outage the next claim skips the topics now backing off, so
                    // this does not spin: with nothing else to do it finds no rows and idles.
                    Next::Continue
                } else if batch.locked > 0 {
                    // Everything we locked waits behind rows other relays hold: look again
                    // soon, without spinning.
                    Next::Idle(idle.min(BLOCKED_PAUSE))
                } else {
                    Next::Idle(idle)
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
                if sleep_or_shutdown(delay, &shutdown).await {
                    return;
                }
            }
            Next::Idle(delay) => {
                let woken = tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = wake.changed() => changed.is_ok(),
                    () = tokio::time::sleep(delay) => true,
                };
                // A closed wake channel means no listener: fall back to the poll interval.
                if !woken && sleep_or_shutdown(delay, &shutdown).await {
                    return;
                }
            }
        }
    }
}

/// One batch in one transaction.
async fn run_batch(shared: &Shared) -> Result<Batch> {
    let config = &shared.config;
    let started = std::time::Instant::now();
    let mut tx = config.pool.begin().await?;
    // Losing this commit in a Postgres crash only loses "published" marks, and those rows
    // are then published again: at least once either way, so the WAL flush wait is skipped.
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    let skip = shared.topics.cooling(Instant::now());
    let claimed = claim::claim(&mut tx, i64::from(config.batch_size), &skip).await?;
    let claimed_at = started.elapsed();
    if claimed.rows.is_empty() {
        tx.commit().await?;
        return Ok(Batch {
            locked: claimed.locked,
            settlement: Settlement::default(),
        });
    }
    let rows = &claimed.rows;
    let producer = shared.publisher.producer();
    let refused = refuse_unpublishable_topics(shared, rows).await;
    let outcomes = publish::publish_batch(&producer, rows, &refused).await;
    let outcomes = settle_undelivered(shared, rows, outcomes).await;
    let published_at = started.elapsed();
    for (topic, delay) in
        shared
            .topics
            .learn(rows, &outcomes, config.broker_backoff, Instant::now())
    {
        tracing::debug!(relay = %config.name, %topic, ?delay, "topic backs off");
    }

    let plan = settle::plan(rows, &outcomes, config.max_attempts);
    let dead_letter_topics = plan.dead_letter_topics(rows);
    let dead_letter_topics_to_look_up = shared
        .topics
        .unknown(dead_letter_topics.iter().map(String::as_str));
    let missing_dead_letter_topics: HashSet<String> =
        look_up_and_remember(shared, dead_letter_topics_to_look_up)
            .await
            .into_iter()
            .filter(|(_, status)| *status == TopicStatus::Missing)
            .map(|(topic, _)| topic)
            .collect();
    if plan.held_after_failure > 0 {
        tracing::warn!(
            relay = %config.name, rows = plan.held_after_failure,
            "events acknowledged after an earlier event of their aggregate failed stay pending; they are published again after it"
        );
    }
    let settlement = settle::apply(
        &mut tx,
        &producer,
        rows,
        plan,
        config.retry_backoff,
        &missing_dead_letter_topics,
    )
    .await?;
    tx.commit().await?;
    tracing::debug!(
        relay = %config.name, locked = claimed.locked, rows = rows.len(),
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
    Ok(Batch {
        locked: claimed.locked,
        settlement,
    })
}

/// Looks up the topics of `rows` the relay has not seen on the broker yet. A topic that does
/// not exist refuses its rows at once (an attempt each); a lookup the broker did not answer
/// marks them unavailable without waiting for a delivery timeout.
async fn refuse_unpublishable_topics(
    shared: &Shared,
    rows: &[ClaimedRow],
) -> HashMap<String, RowOutcome> {
    let unknown = shared.topics.unknown(rows.iter().map(|r| r.topic.as_str()));
    look_up_and_remember(shared, unknown)
        .await
        .into_iter()
        .filter_map(|(topic, status)| match status {
            TopicStatus::Missing => {
                let refusal = RowOutcome::Rejected(missing_topic(&topic));
                Some((topic, refusal))
            }
            TopicStatus::Unreachable(error) => Some((
                topic,
                RowOutcome::Unavailable(format!(
                    "broker did not answer a metadata request: {error}"
                )),
            )),
            // A degraded topic may still take messages (e.g. one partition without leader).
            TopicStatus::Ready | TopicStatus::Degraded(_) => None,
        })
        .collect()
}

/// Settles the rows the broker gave no answer about: their topics are looked up now, and
/// `fault::attribute` decides whether each is an attempt or an outage.
async fn settle_undelivered(
    shared: &Shared,
    rows: &[ClaimedRow],
    outcomes: Vec<RowOutcome>,
) -> Vec<RowOutcome> {
    let undelivered: Vec<String> = {
        let mut topics: Vec<String> = rows
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| matches!(outcome, RowOutcome::Undelivered(_)))
            .map(|(row, _)| row.topic.clone())
            .collect();
        topics.sort_unstable();
        topics.dedup();
        topics
    };
    if undelivered.is_empty() {
        return outcomes;
    }
    let statuses: HashMap<String, TopicStatus> = look_up_and_remember(shared, undelivered)
        .await
        .into_iter()
        .collect();
    attribute(rows, outcomes, &statuses)
}

/// Looks `topics` up and remembers what the broker said.
async fn look_up_and_remember(shared: &Shared, topics: Vec<String>) -> Vec<(String, TopicStatus)> {
    let statuses = look_up(shared.publisher.producer(), topics).await;
    for (topic, status) in &statuses {
        tracing::debug!(relay = %shared.config.name, %topic, ?status, "looked up topic");
        shared.topics.looked_up(topic, status);
    }
    statuses
}
