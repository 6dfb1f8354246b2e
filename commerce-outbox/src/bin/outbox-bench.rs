//! Load harness for the relay: throughput through one relay, and commit-to-publish latency
//! at a fixed event rate. Prints its figures and settings.
//!
//! ```text
//! cargo run --release -p commerce-outbox --bin outbox-bench -- throughput [--events N] [--aggregates N] [--batch N] [--workers N]
//! cargo run --release -p commerce-outbox --bin outbox-bench -- latency [--rate N] [--seconds N] [--writers N] [--batch N] [--workers N]
//! ```
//! Uses `DATABASE_URL` (a scratch database is created on that server and dropped) and
//! `KAFKA_BROKERS` (a fresh topic per run).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use commerce_outbox::{
    enqueue, ensure_topics, outbox_stats, NewEvent, Relay, TopicSettings, MIGRATOR,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use uuid::Uuid;

/// Padding that makes an envelope about 400 bytes, the size of a small order event.
const PAD: usize = 200;

struct Args(HashMap<String, u64>);

impl Args {
    fn parse(raw: &[String]) -> anyhow::Result<Self> {
        let mut map = HashMap::new();
        let mut it = raw.iter();
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .with_context(|| format!("unexpected argument {flag}"))?;
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            map.insert(
                name.to_owned(),
                value
                    .parse()
                    .with_context(|| format!("{flag} takes a number"))?,
            );
        }
        Ok(Self(map))
    }

    fn get(&self, name: &str, default: u64) -> u64 {
        self.0.get(name).copied().unwrap_or(default)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = raw.split_first() else {
        bail!("usage: outbox-bench throughput|latency [--flag value]...");
    };
    let args = Args::parse(rest)?;
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let scratch = ScratchDb::create().await?;
    let topic = format!(
        "outbox-bench-{}-{}",
        std::process::id(),
        Utc::now().timestamp()
    );
    ensure_topics(
        &brokers,
        &[&topic],
        TopicSettings {
            partitions: 8,
            replication_factor: 1,
        },
    )
    .await?;
    let result = match mode.as_str() {
        "throughput" => throughput(&scratch.pool, &brokers, &topic, &args).await,
        "latency" => latency(&scratch.pool, &brokers, &topic, &args).await,
        "broker" => broker_latency(&brokers, &topic, &args).await,
        other => Err(anyhow::anyhow!("unknown mode {other}")),
    };
    scratch.drop_db().await;
    delete_topic(&brokers, &topic).await;
    result
}

/// A memory-backed broker keeps every message: drop the run's topics when done.
async fn delete_topic(brokers: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
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

async fn throughput(pool: &PgPool, brokers: &str, topic: &str, args: &Args) -> anyhow::Result<()> {
    let events = args.get("events", 200_000);
    let aggregates = args.get("aggregates", 10_000).max(1);
    let batch = u32::try_from(args.get("batch", 1000))?;
    let workers = usize::try_from(args.get("workers", 2))?;
    println!("throughput: {events} events over {aggregates} aggregates, ~{PAD}-byte padding, 8 partitions");
    println!("relay: 1 relay, batch_size {batch}, workers {workers}, producer defaults (idempotent, acks=all, linger.ms=1)");
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
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let metrics = relay.metrics().await?;
        if metrics.published_total >= events {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            println!(
                "  ... {} published, {:.0}/s",
                metrics.published_total, metrics.published_per_sec
            );
            last_report = Instant::now();
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("relay did not finish in 10 minutes: {metrics:?}");
        }
    }
    let elapsed = started.elapsed();
    let metrics = relay.metrics().await?;
    relay.shutdown().await?;
    #[allow(clippy::cast_precision_loss)]
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
         SELECT gen_random_uuid(), $1, 'bench.event', 'bench', 'agg-' || (g % $3), (g / $3) + 1, now(), 1,
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

async fn latency(pool: &PgPool, brokers: &str, topic: &str, args: &Args) -> anyhow::Result<()> {
    let rate = args.get("rate", 1000).max(1);
    let seconds = args.get("seconds", 20);
    let writers = args.get("writers", 4).max(1);
    let batch = u32::try_from(args.get("batch", 500))?;
    let workers = usize::try_from(args.get("workers", 1))?;
    let warmup = Duration::from_secs(2);
    println!("latency: {rate} events/s for {seconds} s (+{} s warm-up) from {writers} writers, one event per transaction", warmup.as_secs());
    println!("relay: 1 relay, batch_size {batch}, workers {workers}, LISTEN/NOTIFY on, producer defaults (linger.ms=1)");
    let relay = Relay::builder(pool.clone(), brokers)
        .batch_size(batch)
        .workers(workers)
        .retention(None)
        .build()?
        .spawn();

    let period = Duration::from_secs_f64(writers as f64 / rate as f64);
    let total_per_writer = (seconds + warmup.as_secs()) * rate / writers;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let pool = pool.clone();
        let topic = topic.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut commits: Vec<(Uuid, SystemTime, Instant)> =
                Vec::with_capacity(usize::try_from(total_per_writer).unwrap_or(0));
            for n in 0..total_per_writer {
                ticker.tick().await;
                let mut tx = pool.begin().await?;
                let event = NewEvent::new(
                    &topic,
                    "bench.event",
                    "bench",
                    format!("agg-{w}-{}", n % 100),
                    serde_json::json!({"n": n, "pad": "x".repeat(PAD)}),
                );
                let id = enqueue(&mut tx, &event).await?;
                tx.commit().await?;
                commits.push((id.0, SystemTime::now(), Instant::now()));
            }
            anyhow::Ok(commits)
        }));
    }
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

    let ids: Vec<Uuid> = commits.iter().map(|c| c.0).collect();
    let published: HashMap<Uuid, DateTime<Utc>> = sqlx::query_as::<_, (Uuid, DateTime<Utc>)>(
        "SELECT id, published_at FROM commerce_outbox.event WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let measured_from = started + warmup;
    let mut latencies: Vec<f64> = commits
        .iter()
        .filter(|c| c.2 >= measured_from)
        .filter_map(|(id, committed, _)| {
            let published: SystemTime = (*published.get(id)?).into();
            Some(
                published
                    .duration_since(*committed)
                    .map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            )
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    if latencies.is_empty() {
        bail!("no latency samples");
    }
    let pct = |p: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[index]
    };
    #[allow(clippy::cast_precision_loss)]
    let achieved = commits.len() as f64 / wrote_for.as_secs_f64();
    println!(
        "RESULT latency: {} samples at {achieved:.0} events/s achieved: commit-to-publish p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} batches)",
        latencies.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        latencies[latencies.len() - 1],
        metrics.batches_total
    );
    Ok(())
}

/// The broker's own share: send-to-acknowledgement latency of single messages with the
/// relay's producer settings (idempotent, acks=all), no database involved.
async fn broker_latency(brokers: &str, topic: &str, args: &Args) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let rate = args.get("rate", 1000).max(1);
    let seconds = args.get("seconds", 10);
    let linger = args.get("linger", 1);
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
            let _ = delivery.await;
            sent.elapsed().as_secs_f64() * 1000.0
        }));
    }
    let mut latencies = Vec::with_capacity(pending.len());
    for (n, task) in pending.into_iter().enumerate() {
        let latency = task.await?;
        // The first second is connection set-up and the idempotent producer's id request.
        if n as u64 >= rate {
            latencies.push(latency);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[index]
    };
    println!(
        "RESULT broker: {} messages: send-to-ack p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
    Ok(())
}

/// A database of its own on `DATABASE_URL`'s server, dropped at the end.
struct ScratchDb {
    pool: PgPool,
    admin: PgConnectOptions,
    name: String,
}

impl ScratchDb {
    async fn create() -> anyhow::Result<Self> {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let admin: PgConnectOptions = url.parse::<PgConnectOptions>()?.disable_statement_logging();
        let name = format!("outbox_bench_{}", std::process::id());
        let mut conn = PgConnection::connect_with(&admin).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut conn)
            .await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect_with(admin.clone().database(&name))
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool, admin, name })
    }

    async fn drop_db(self) {
        self.pool.close().await;
        if let Ok(mut conn) = PgConnection::connect_with(&self.admin).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
        }
    }
}
