//! The batch loop: claim, publish, settle, commit; then decide how long to pause.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::claim;
use super::settle::{self, Settlement};
use super::Shared;
use crate::error::Result;
use crate::shutdown::sleep_or_shutdown;
use crate::transport::OutboundMessage;

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
    // Consecutive batches without progress because of the transport, or failed on the
    // database.
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
                        relay = %config.name, worker, transport = shared.transport.kind(),
                        consecutive_failures = failures, unsent = settlement.unavailable,
                        error = settlement.unavailable_error.as_deref().unwrap_or("-"),
                        "transport unavailable: events stay pending; their topics back off"
                    );
                } else if settlement.published > 0 {
                    if failures > 0 {
                        tracing::info!(relay = %config.name, worker, transport = shared.transport.kind(), "transport available again; relay resumed");
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
    let locked = claimed.locked;
    let (messages, attempts): (Vec<OutboundMessage>, Vec<i32>) = claimed
        .rows
        .into_iter()
        .map(|row| (row.message, row.attempts))
        .unzip();
    let outcomes = shared.transport.publish(&messages).await;
    let published_at = started.elapsed();
    for (topic, delay) in
        shared
            .topics
            .learn(&messages, &outcomes, config.broker_backoff, Instant::now())
    {
        tracing::debug!(relay = %config.name, %topic, ?delay, "topic backs off");
    }

    let plan = settle::plan(&messages, &attempts, &outcomes, config.max_attempts);
    if plan.held_after_failure > 0 {
        tracing::warn!(
            relay = %config.name, rows = plan.held_after_failure,
            "events acknowledged after an earlier event of their aggregate failed stay pending; they are published again after it"
        );
    }
    let settlement = settle::apply(
        &mut tx,
        shared.transport.as_ref(),
        &messages,
        plan,
        config.retry_backoff,
    )
    .await?;
    tx.commit().await?;
    tracing::debug!(
        relay = %config.name, locked, rows = messages.len(),
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
    Ok(Batch { locked, settlement })
}
