//! Load harness for the outbox relay: throughput through one relay, commit-to-publish
//! latency at a fixed event rate, and the broker's own send-to-acknowledgement latency.
//! Prints its settings and one `RESULT` line per run.
//!
//! ```text
//! cargo run --release -p commerce-examples --bin outbox-load -- throughput --events 200000 --aggregates 10000 --batch 1000 --workers 2
//! cargo run --release -p commerce-examples --bin outbox-load -- latency --rate 1000 --seconds 20 --writers 4 --workers 2
//! cargo run --release -p commerce-examples --bin outbox-load -- broker --rate 1000 --seconds 10 --linger 0
//! ```
//!
//! Uses database `commerce_outbox_load` on `DATABASE_URL`'s server (recreated each run) and a
//! fresh 8-partition topic on `KAFKA_BROKERS`, deleted at the end (a memory-backed broker
//! would otherwise keep every message).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use commerce_outbox::{enqueue, ensure_topics, outbox_stats, NewEvent, Relay, TopicSettings};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use uuid::Uuid;

/// Padding that makes an envelope about 400 bytes, the size of a small order event.
const PAD: usize = 200;
/// Partitions of the run's topic.
const PARTITIONS: i32 = 8;
/// The harness's own database.
const DATABASE: &str = "commerce_outbox_load";

#[derive(Debug, Parser)]
#[command(
    about = "Measures the outbox relay: throughput, commit-to-publish latency, broker latency"
)]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = commerce_testkit::DEFAULT_KAFKA_BROKERS)]
    brokers: String,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Prefills pending events, then times one relay until it has published them all.
    Throughput {
        /// Events to prefill.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Aggregates they are spread over (round robin).
        #[arg(long, default_value_t = 10_000)]
        aggregates: u64,
        /// The relay's batch size.
        #[arg(long, default_value_t = 1000)]
        batch: u32,
        /// The relay's workers.
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
    /// Commits one event per transaction at a fixed rate and measures commit-to-publish.
    Latency {
        /// Events per second, over all writers.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Measured seconds (after a 2 s warm-up).
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Concurrent writers.
        #[arg(long, default_value_t = 4)]
        writers: u64,
        /// The relay's batch size.
        #[arg(long, default_value_t = 500)]
        batch: u32,
        /// The relay's workers.
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// The broker's share alone: send-to-ack of single messages with the relay's producer
    /// settings, no database.
    Broker {
        /// Messages per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Seconds (the first one is not counted: connection and producer id set-up).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The producer's `linger.ms`.
        #[arg(long, default_value_t = 0)]
        linger: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    commerce_examples::init_tracing();
    let args = Args::parse();
    let topic = commerce_testkit::unique_name("outbox-load");
    ensure_topics(
        &args.brokers,
        &[&topic],
        TopicSettings {
            partitions: PARTITIONS,
            replication_factor: 1,
        },
    )
    .await
    .with_context(|| {
        format!(
            "create topic on {} (run scripts/services.sh up)",
            args.brokers
        )
    })?;
    let result = run(&args, &topic).await;
    delete_topic(&args.brokers, &topic).await;
    result
}

async fn run(args: &Args, topic: &str) -> anyhow::Result<()> {
    match args.mode {
        Mode::Throughput {
            events,
            aggregates,
            batch,
            workers,
        } => {
            let pool = database().await?;
            throughput(
                &pool,
                &args.brokers,
                topic,
                events,
                aggregates.max(1),
                batch,
                workers,
            )
            .await
        }
        Mode::Latency {
            rate,
            seconds,
            writers,
            batch,
            workers,
        } => {
            let pool = database().await?;
            let load = Load {
                rate: rate.max(1),
                seconds,
                writers: writers.max(1),
            };
            latency(&pool, &args.brokers, topic, load, batch, workers).await
        }
        Mode::Broker {
            rate,
            seconds,
            linger,
        } => broker_latency(&args.brokers, topic, rate.max(1), seconds, linger).await,
    }
}

async fn database() -> anyhow::Result<PgPool> {
    commerce_testkit::scratch_database(DATABASE, &[&commerce_outbox::MIGRATOR], 16)
        .await
        .map_err(|e| anyhow::anyhow!("database {DATABASE}: {e} (run scripts/services.sh up)"))
}

async fn delete_topic(brokers: &str, topic: &str) {
    let Ok(admin) = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let dlq = commerce_outbox::dlq_topic(topic);
    if let Err(error) = admin
        .delete_topics(&[topic, &dlq], &AdminOptions::new())
        .await
    {
        eprintln!("could not delete topic {topic}: {error}");
    }
}

async fn throughput(
    pool: &PgPool,
    brokers: &str,
    topic: &str,
    events: u64,
    aggregates: u64,
    batch: u32,
    workers: usize,
) -> anyhow::Result<()> {
    println!("throughput: {events} events over {aggregates} aggregates, ~{PAD}-byte padding, {PARTITIONS} partitions");
    println!("relay: 1 relay, batch_size {batch}, workers {workers}, producer defaults (idempotent, acks=all, linger.ms=0)");
    let started = Instant::now();
    prefill(pool, topic, events, aggregates).await?;
    println!("prefilled in {:.1} s", started.elapsed().as_secs_f64());

    let relay = Relay::builder(pool.clone(), brokers)
        .batch_size(batch)
        .workers(workers)
        .retention(None)
        .build()?
        .spawn();
    let started = Instant::now();
    let mut last_report = Instant::now();
    // The handle's counter needs no query, so polling it does not load the database.
    while relay.published_total() < events {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if last_report.elapsed() > Duration::from_secs(2) {
            println!("  ... {} published", relay.published_total());
            last_report = Instant::now();
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "relay did not finish in 10 minutes: {:?}",
                relay.metrics().await?
            );
        }
    }
    let elapsed = started.elapsed();
    let metrics = relay.metrics().await?;
    relay.shutdown().await?;
    let rate = events as f64 / elapsed.as_secs_f64();
    println!(
        "RESULT throughput: {events} events in {:.2} s = {rate:.0} events/s ({} batches, {:.0} events/batch)",
        elapsed.as_secs_f64(),
        metrics.batches_total,
        events as f64 / metrics.batches_total.max(1) as f64
    );
    Ok(())
}

/// Bulk-writes `events` pending rows as `enqueue` would (sequence numbers per aggregate).
async fn prefill(pool: &PgPool, topic: &str, events: u64, aggregates: u64) -> anyhow::Result<()> {
    let events = i64::try_from(events)?;
    let aggregates = i64::try_from(aggregates)?;
    sqlx::query(
        "INSERT INTO commerce_outbox.event
            (id, topic, event_type, aggregate_type, aggregate_id, aggregate_seq, occurred_at, schema_version, payload)
         SELECT gen_random_uuid(), $1, 'load.event', 'load', 'agg-' || (g % $3), (g / $3) + 1, now(), 1,
                jsonb_build_object('n', g, 'pad', repeat('x', $4))
         FROM generate_series(0, $2 - 1) g",
    )
    .bind(topic)
    .bind(events)
    .bind(aggregates)
    .bind(i32::try_from(PAD)?)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO commerce_outbox.aggregate_sequence (aggregate_type, aggregate_id, last_seq)
         SELECT aggregate_type, aggregate_id, max(aggregate_seq) FROM commerce_outbox.event GROUP BY 1, 2",
    )
    .execute(pool)
    .await?;
    sqlx::query("VACUUM ANALYZE commerce_outbox.event")
        .execute(pool)
        .await?;
    Ok(())
}

/// The writers' load in `latency` mode.
#[derive(Debug, Clone, Copy)]
struct Load {
    rate: u64,
    seconds: u64,
    writers: u64,
}

/// One committed event: its id and when the commit returned.
struct Commit {
    id: Uuid,
    at: SystemTime,
    measured: bool,
}

async fn latency(
    pool: &PgPool,
    brokers: &str,
    topic: &str,
    load: Load,
    batch: u32,
    workers: usize,
) -> anyhow::Result<()> {
    let Load {
        rate,
        seconds,
        writers,
    } = load;
    let warmup = Duration::from_secs(2);
    println!("latency: {rate} events/s for {seconds} s (+{} s warm-up) from {writers} writers, one event per transaction", warmup.as_secs());
    println!("relay: 1 relay, batch_size {batch}, workers {workers}, LISTEN/NOTIFY on, producer defaults (linger.ms=0)");
    let relay = Relay::builder(pool.clone(), brokers)
        .batch_size(batch)
        .workers(workers)
        .retention(None)
        .build()?
        .spawn();

    let period = Duration::from_secs_f64(writers as f64 / rate as f64);
    let per_writer = (seconds + warmup.as_secs()) * rate / writers;
    let started = Instant::now();
    let measured_from = started + warmup;
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let pool = pool.clone();
            let topic = topic.to_owned();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(period);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut commits = Vec::with_capacity(usize::try_from(per_writer).unwrap_or(0));
                for n in 0..per_writer {
                    ticker.tick().await;
                    let mut tx = pool.begin().await?;
                    let event = NewEvent::new(
                        &topic,
                        "load.event",
                        "load",
                        format!("agg-{writer}-{}", n % 100),
                        serde_json::json!({"n": n, "pad": "x".repeat(PAD)}),
                    );
                    let id = enqueue(&mut tx, &event).await?;
                    tx.commit().await?;
                    commits.push(Commit {
                        id: id.0,
                        at: SystemTime::now(),
                        measured: Instant::now() >= measured_from,
                    });
                }
                anyhow::Ok(commits)
            })
        })
        .collect();
    let mut commits = Vec::new();
    for task in tasks {
        commits.extend(task.await??);
    }
    let wrote_for = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    while outbox_stats(pool).await?.pending > 0 {
        if Instant::now() > deadline {
            bail!("events still pending 60 s after the writers stopped");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = relay.metrics().await?;
    relay.shutdown().await?;

    // `published_at` is stamped by Postgres right after the broker's acknowledgement; as
    // seconds since the epoch it keeps sub-microsecond precision.
    let ids: Vec<Uuid> = commits.iter().map(|c| c.id).collect();
    let published: HashMap<Uuid, f64> = sqlx::query_as::<_, (Uuid, f64)>(
        "SELECT id, extract(epoch FROM published_at)::float8 FROM commerce_outbox.event WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for commit in commits.iter().filter(|c| c.measured) {
        let Some(published) = published.get(&commit.id) else {
            continue;
        };
        let committed = commit.at.duration_since(UNIX_EPOCH)?.as_secs_f64();
        let micros = ((published - committed) * 1e6).max(0.0);
        histogram.saturating_record(micros as u64);
    }
    if histogram.is_empty() {
        bail!("no latency samples");
    }
    let achieved = commits.len() as f64 / wrote_for.as_secs_f64();
    println!(
        "RESULT latency: {} samples at {achieved:.0} events/s achieved: commit-to-publish {} ({} batches)",
        histogram.len(),
        percentiles(&histogram),
        metrics.batches_total
    );
    Ok(())
}

async fn broker_latency(
    brokers: &str,
    topic: &str,
    rate: u64,
    seconds: u64,
    linger: u64,
) -> anyhow::Result<()> {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger.to_string())
        .create()?;
    println!("broker: {rate} messages/s for {seconds} s (first second not counted), ~400 bytes, idempotent, acks=all, linger.ms={linger}");
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(PAD + 150));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pending = Vec::new();
    for n in 0..rate * seconds {
        ticker.tick().await;
        let key = format!("agg-{}", n % 100);
        let sent = Instant::now();
        let delivery = producer
            .send_result(FutureRecord::to(topic).key(&key).payload(&body))
            .map_err(|(e, _)| e)?;
        pending.push(tokio::spawn(async move {
            let acknowledged = matches!(delivery.await, Ok(Ok(_)));
            (acknowledged, sent.elapsed())
        }));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut failed = 0_u64;
    for (n, task) in pending.into_iter().enumerate() {
        let (acknowledged, latency) = task.await?;
        if !acknowledged {
            failed += 1;
        } else if n as u64 >= rate {
            histogram.saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        }
    }
    if histogram.is_empty() {
        bail!("no acknowledged message after the first second ({failed} failed)");
    }
    println!(
        "RESULT broker: {} messages ({failed} failed): send-to-ack {}",
        histogram.len(),
        percentiles(&histogram)
    );
    Ok(())
}

/// "p50 … ms, p90 … ms, p99 … ms, max … ms" of a histogram in microseconds.
fn percentiles(histogram: &Histogram<u64>) -> String {
    let ms = |micros: u64| micros as f64 / 1000.0;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(histogram.value_at_quantile(0.50)),
        ms(histogram.value_at_quantile(0.90)),
        ms(histogram.value_at_quantile(0.99)),
        ms(histogram.max())
    )
}
