//! Uncontended acquire+release and contended hand-off on one key, Redis vs in-process, in
//! one run. Criterion measures means; a percentile pass afterwards prints p50/p99 of single
//! operations and the hand-off rate of tasks fighting for one key.
//!
//! `cargo bench -p commerce-lock --bench lock` (needs the local Redis, `REDIS_URL`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use commerce_lock::{DistributedLock, LocalLock, LockOptions, RedisLock};
use commerce_testkit::{redis_url, unique_name};
use criterion::{BenchmarkId, Criterion};
use tokio::runtime::Runtime;
use tokio::time::Instant;

const OPTIONS: LockOptions = LockOptions::new(Duration::from_secs(5), Duration::from_secs(10));
/// Time given to a waiter to fail its attempts and subscribe before the holder releases.
const SETTLE: Duration = Duration::from_millis(2);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("bench runtime")
}

fn locks(runtime: &Runtime) -> Vec<(&'static str, Arc<dyn DistributedLock>)> {
    let redis = runtime.block_on(async {
        RedisLock::builder(redis_url())
            .namespace(unique_name("lock-bench"))
            .connect()
            .await
            .expect("connect to Redis")
    });
    vec![
        ("redis", Arc::new(redis)),
        ("local", Arc::new(LocalLock::new())),
    ]
}

/// One hand-off: the holder releases while a waiter is parked; returns release-to-acquired.
async fn hand_off(lock: &Arc<dyn DistributedLock>, key: &str) -> Duration {
    let holder = lock.acquire(key, OPTIONS).await.expect("acquire");
    let waiter_lock = Arc::clone(lock);
    let waiter_key = key.to_owned();
    let waiter = tokio::spawn(async move {
        let guard = waiter_lock
            .acquire(&waiter_key, OPTIONS)
            .await
            .expect("hand-off");
        let acquired = Instant::now();
        guard.release().await.expect("release");
        acquired
    });
    tokio::time::sleep(SETTLE).await;
    let released = Instant::now();
    holder.release().await.expect("release");
    waiter.await.expect("waiter") - released
}

fn criterion_benches(
    c: &mut Criterion,
    runtime: &Runtime,
    locks: &[(&'static str, Arc<dyn DistributedLock>)],
) {
    let mut group = c.benchmark_group("uncontended_acquire_release");
    for (name, lock) in locks {
        group.bench_with_input(BenchmarkId::from_parameter(name), lock, |b, lock| {
            b.to_async(runtime).iter(|| async {
                lock.acquire("uncontended", OPTIONS)
                    .await
                    .expect("acquire")
                    .release()
                    .await
                    .expect("release");
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("contended_hand_off");
    group
        .sample_size(20)
        .measurement_time(Duration::from_millis(300));
    for (name, lock) in locks {
        group.bench_with_input(BenchmarkId::from_parameter(name), lock, |b, lock| {
            b.to_async(runtime).iter_custom(|iters| async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += hand_off(lock, "hand-off").await;
                }
                total
            });
        });
    }
    group.finish();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank]
}

fn report(name: &str, what: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    println!(
        "{what:<28} {name:<6} n={:<5} p50={:>9.3?} p90={:>9.3?} p99={:>9.3?} max={:>9.3?}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.90),
        percentile(&samples, 0.99),
        samples[samples.len() - 1],
    );
}

/// Tasks looping acquire/release on one key for `duration`: completed holds per second.
async fn hand_off_rate(lock: &Arc<dyn DistributedLock>, tasks: usize, duration: Duration) -> f64 {
    let holds = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let (lock, holds) = (Arc::clone(lock), Arc::clone(&holds));
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let guard = lock.acquire("rate", OPTIONS).await.expect("acquire");
                    holds.fetch_add(1, Ordering::Relaxed);
                    guard.release().await.expect("release");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    holds.load(Ordering::Relaxed) as f64 / duration.as_secs_f64()
}

fn percentiles(runtime: &Runtime, locks: &[(&'static str, Arc<dyn DistributedLock>)]) {
    println!("\nsingle-operation percentiles (2 worker threads):");
    for (name, lock) in locks {
        runtime.block_on(async {
            let mut samples = Vec::with_capacity(5_000);
            for _ in 0..5_000 {
                let started = Instant::now();
                lock.acquire("p-uncontended", OPTIONS)
                    .await
                    .expect("acquire")
                    .release()
                    .await
                    .expect("release");
                samples.push(started.elapsed());
            }
            report(name, "uncontended acquire+release", samples);
            let mut samples = Vec::with_capacity(500);
            for _ in 0..500 {
                samples.push(hand_off(lock, "p-hand-off").await);
            }
            report(name, "hand-off release->acquired", samples);
            let rate = hand_off_rate(lock, 8, Duration::from_secs(2)).await;
            println!(
                "{:<28} {name:<6} {rate:.0} holds/s (8 tasks, one key)",
                "contended hand-off rate"
            );
        });
    }
}

fn main() {
    let runtime = runtime();
    let locks = locks(&runtime);
    let mut criterion = Criterion::default().configure_from_args();
    criterion_benches(&mut criterion, &runtime, &locks);
    criterion.final_summary();
    percentiles(&runtime, &locks);
}
