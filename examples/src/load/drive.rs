//! The load generators (closed and open loop) and what they record.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::target::{Attempt, Target};

/// Recorders are sharded so that thousands of tasks do not queue on one mutex.
const SHARDS: usize = 16;
/// Highest latency recorded, in microseconds (10 minutes); longer ones saturate.
const MAX_MICROS: u64 = 600_000_000;

/// Counts and latencies of one run, filled by every client concurrently.
#[derive(Debug)]
pub(crate) struct Recorder {
    start: Instant,
    shards: Vec<Mutex<Shard>>,
    /// Units taken per product, indexed by product id (index 0 unused).
    sold: Vec<AtomicI64>,
    shed: AtomicU64,
    warned: AtomicBool,
}

#[derive(Debug)]
struct Shard {
    latency: Histogram<u64>,
    ok: u64,
    rejected: u64,
    errors: u64,
    /// Completion of the last successful request, from the start.
    last_ok: Option<Duration>,
    /// Rejections per millisecond of completion time, from the start.
    rejections_per_ms: Vec<u64>,
}

/// Everything a run recorded, merged.
#[derive(Debug)]
pub(crate) struct Totals {
    pub(crate) ok: u64,
    pub(crate) rejected: u64,
    /// Failed requests plus shed arrivals.
    pub(crate) errors: u64,
    /// Open-loop arrivals dropped because `clients` requests were outstanding.
    pub(crate) shed: u64,
    pub(crate) latency: Histogram<u64>,
    pub(crate) last_ok: Option<Duration>,
    rejections_per_ms: Vec<u64>,
    /// Units taken per product, indexed by product id (index 0 unused).
    pub(crate) sold: Vec<i64>,
}

impl Totals {
    /// Rejections completed at or after `instant` (to the millisecond).
    pub(crate) fn rejections_from(&self, instant: Duration) -> u64 {
        let first = usize::try_from(instant.as_millis()).unwrap_or(usize::MAX);
        self.rejections_per_ms.iter().skip(first).sum()
    }
}

impl Recorder {
    /// A recorder for products `1..=products`; the run's clock starts now.
    pub(crate) fn new(products: i64) -> anyhow::Result<Self> {
        let shards = (0..SHARDS)
            .map(|_| {
                Ok(Mutex::new(Shard {
                    latency: Histogram::new_with_bounds(1, MAX_MICROS, 3)?,
                    ok: 0,
                    rejected: 0,
                    errors: 0,
                    last_ok: None,
                    rejections_per_ms: Vec::new(),
                }))
            })
            .collect::<anyhow::Result<_>>()?;
        let slots = usize::try_from(products).context("products")? + 1;
        Ok(Self {
            start: Instant::now(),
            shards,
            sold: (0..slots).map(|_| AtomicI64::new(0)).collect(),
            shed: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        })
    }

    /// When the run started.
    pub(crate) fn start(&self) -> Instant {
        self.start
    }

    fn record(&self, key: usize, product: i64, attempt: &Attempt, latency: Duration) {
        let done = self.start.elapsed();
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if *attempt == Attempt::Ok {
            if let Some(n) = usize::try_from(product).ok().and_then(|p| self.sold.get(p)) {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Attempt::Failed(error) = attempt {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(%error, "request failed (only the first failure is logged)");
            }
        }
        let mut shard = self.shards[key % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shard.latency.saturating_record(micros);
        match attempt {
            Attempt::Ok => {
                shard.ok += 1;
                shard.last_ok = shard.last_ok.max(Some(done));
            }
            Attempt::Rejected => {
                shard.rejected += 1;
                let ms = usize::try_from(done.as_millis()).unwrap_or(usize::MAX);
                // A run lasts minutes at most; a clock gone wild must not allocate the world.
                let ms = ms.min(24 * 3_600_000);
                if shard.rejections_per_ms.len() <= ms {
                    shard.rejections_per_ms.resize(ms + 1, 0);
                }
                shard.rejections_per_ms[ms] += 1;
            }
            Attempt::Failed(_) => shard.errors += 1,
        }
    }

    /// Everything recorded so far, merged.
    pub(crate) fn totals(&self) -> anyhow::Result<Totals> {
        let shed = self.shed.load(Ordering::Relaxed);
        let mut totals = Totals {
            ok: 0,
            rejected: 0,
            errors: shed,
            shed,
            latency: Histogram::new_with_bounds(1, MAX_MICROS, 3)?,
            last_ok: None,
            rejections_per_ms: Vec::new(),
            sold: self
                .sold
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .collect(),
        };
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            totals.ok += shard.ok;
            totals.rejected += shard.rejected;
            totals.errors += shard.errors;
            totals.latency.add(&shard.latency)?;
            totals.last_ok = totals.last_ok.max(shard.last_ok);
            if totals.rejections_per_ms.len() < shard.rejections_per_ms.len() {
                totals
                    .rejections_per_ms
                    .resize(shard.rejections_per_ms.len(), 0);
            }
            for (total, n) in totals
                .rejections_per_ms
                .iter_mut()
                .zip(&shard.rejections_per_ms)
            {
                *total += n;
            }
        }
        Ok(totals)
    }
}

/// A product to order: 1 when there is one, else uniformly random.
fn pick(products: i64) -> i64 {
    if products <= 1 {
        1
    } else {
        rand::thread_rng().gen_range(1..=products)
    }
}

/// `clients` tasks, each sending its next request as soon as the last one is answered, until
/// `deadline`. Latency is from sending to the answer.
///
/// # Errors
/// When a client task panicked.
pub(crate) async fn closed_loop(
    target: &Target,
    recorder: &Arc<Recorder>,
    clients: usize,
    products: i64,
    deadline: Instant,
) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    for client in 0..clients {
        let target = target.clone();
        let recorder = Arc::clone(recorder);
        tasks.spawn(async move {
            let user = format!("load-client-{client}");
            while Instant::now() < deadline {
                let product = pick(products);
                let sent = Instant::now();
                let attempt = target.attempt(&user, product).await;
                recorder.record(client, product, &attempt, sent.elapsed());
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("client task")?;
    }
    Ok(())
}

/// Arrivals at `rate` per second on a fixed schedule (arrival k at start + k / rate) until
/// `deadline`, each sent by a task of its own. Latency is from the arrival's intended time, so
/// a slow system is not let off by a slow generator (no coordinated omission). At most `cap`
/// requests are outstanding; arrivals beyond that are shed and counted as errors.
///
/// # Errors
/// When a request task panicked.
pub(crate) async fn open_loop(
    target: &Target,
    recorder: &Arc<Recorder>,
    cap: usize,
    products: i64,
    rate: f64,
    deadline: Instant,
) -> anyhow::Result<()> {
    let start = recorder.start();
    let permits = Arc::new(Semaphore::new(cap));
    let mut tasks = JoinSet::new();
    for k in 0_u64.. {
        let intended = start + Duration::from_secs_f64(k as f64 / rate);
        if intended >= deadline {
            break;
        }
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            recorder.shed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let target = target.clone();
        let recorder = Arc::clone(recorder);
        tasks.spawn(async move {
            let _permit = permit;
            let product = pick(products);
            let attempt = target.attempt("load-open", product).await;
            let key = usize::try_from(k).unwrap_or_default();
            recorder.record(key, product, &attempt, intended.elapsed());
        });
        while let Some(done) = tasks.try_join_next() {
            done.context("request task")?;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.context("request task")?;
    }
    Ok(())
}
