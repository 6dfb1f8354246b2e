//! `commerce-outbox`: inspect the outbox and handle dead letters from a shell (built with the
//! `cli` feature).
//!
//! ```text
//! commerce-outbox stats
//! commerce-outbox dlq list [--limit N]
//! commerce-outbox dlq show EVENT_ID
//! commerce-outbox dlq replay EVENT_ID
//! commerce-outbox dlq replay --topic TOPIC
//! commerce-outbox dlq discard EVENT_ID
//! commerce-outbox consumer-dlq list CONSUMER [--limit N]
//! commerce-outbox consumer-dlq discard CONSUMER EVENT_ID
//! ```
//! A consumer dead letter is replayed through its handler, so by the application that has
//! it (`dead_letter::replay_consumer_dead_letter`), not here.
//! The database comes from `--database-url` or `DATABASE_URL`.

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use commerce_outbox::dead_letter::{
    count_consumer_dead_letters, discard_consumer_dead_letter, discard_dead_letter, inspect_event,
    list_consumer_dead_letters, list_dead_letters, replay_dead_letter, replay_dead_letters,
    ConsumerDeadLetter, OutboxEvent,
};
use commerce_outbox::{outbox_stats, EventId};
use sqlx::PgPool;

#[derive(Debug, Parser)]
#[command(about = "Inspect the commerce-rs outbox and handle its dead letters")]
struct Cli {
    /// The database holding the `commerce_outbox` schema.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pending events, the oldest pending age, dead letters, consumer dead letters.
    Stats,
    /// Dead letters.
    #[command(subcommand)]
    Dlq(Dlq),
    /// Consumer dead letters: events a consumer's handler declared unprocessable.
    #[command(subcommand)]
    ConsumerDlq(ConsumerDlq),
}

#[derive(Debug, Subcommand)]
enum ConsumerDlq {
    /// A consumer's dead letters, oldest first.
    List {
        /// The consumer (its inbox name).
        consumer: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Gives up on a consumer dead letter: it is deleted, and the consumer's inbox keeps
    /// skipping the event.
    Discard {
        /// The consumer (its inbox name).
        consumer: String,
        /// The event id (a UUID).
        id: EventId,
    },
}

#[derive(Debug, Subcommand)]
enum Dlq {
    /// Dead letters, oldest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// One event, whatever its status, with its payload.
    Show {
        /// The event id (a UUID).
        id: EventId,
    },
    /// Makes a dead letter pending again (attempts reset); the relay publishes it, then the
    /// events held behind it. Fix the cause first.
    Replay(ReplayTarget),
    /// Gives up on a dead letter; the events held behind it are released.
    Discard {
        /// The event id (a UUID).
        id: EventId,
    },
}

/// One dead letter, or all of a topic's: exactly one of the two.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct ReplayTarget {
    /// The event id (a UUID).
    id: Option<EventId>,
    /// Replays every dead letter of this topic instead, in sequence order.
    #[arg(long)]
    topic: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    let pool = PgPool::connect(&cli.database_url)
        .await
        .context("cannot connect to the database (--database-url / DATABASE_URL)")?;
    match cli.command {
        Command::Stats => {
            let stats = outbox_stats(&pool).await?;
            println!("pending:            {}", stats.pending);
            println!(
                "oldest pending age: {}",
                stats.oldest_pending_age.map_or_else(
                    || "-".to_owned(),
                    |age| format!("{:.3} s", age.as_secs_f64())
                )
            );
            println!("dead letters:       {}", stats.dead_letters);
            println!("consumer dead letters: {}", stats.consumer_dead_letters);
            for (consumer, count) in count_consumer_dead_letters(&pool).await? {
                println!("  {consumer}: {count}");
            }
        }
        Command::Dlq(Dlq::List { limit }) => print_list(&list_dead_letters(&pool, limit).await?),
        Command::Dlq(Dlq::Show { id }) => print_event(&inspect_event(&pool, id).await?),
        Command::Dlq(Dlq::Replay(ReplayTarget { id: Some(id), .. })) => {
            replay_dead_letter(&pool, id).await?;
            println!("replayed {id}: pending again, the relay publishes it next");
        }
        Command::Dlq(Dlq::Replay(ReplayTarget {
            id: None,
            topic: None,
        })) => bail!("give an event id or --topic TOPIC"),
        Command::Dlq(Dlq::Replay(ReplayTarget {
            id: None,
            topic: Some(topic),
        })) => {
            let replayed = replay_dead_letters(&pool, &topic).await?;
            println!(
                "replayed {} dead letter(s) of topic {topic}: pending again, the relay publishes them next",
                replayed.len()
            );
            for id in replayed {
                println!("{id}");
            }
        }
        Command::Dlq(Dlq::Discard { id }) => {
            discard_dead_letter(&pool, id).await?;
            println!("discarded {id}: the events held behind it are released");
        }
        Command::ConsumerDlq(ConsumerDlq::List { consumer, limit }) => {
            print_consumer_list(&list_consumer_dead_letters(&pool, &consumer, limit).await?);
        }
        Command::ConsumerDlq(ConsumerDlq::Discard { consumer, id }) => {
            discard_consumer_dead_letter(&pool, &consumer, id).await?;
            println!("discarded {id} for consumer {consumer}: it stays skipped by its inbox");
        }
    }
    Ok(())
}

fn print_list(events: &[OutboxEvent]) {
    if events.is_empty() {
        println!("no dead letters");
        return;
    }
    println!(
        "{:<36}  {:<20}  {:<24}  {:>8}  {:>4}  error",
        "event id", "dead at", "topic", "attempts", "held"
    );
    for event in events {
        println!(
            "{:<36}  {:<20}  {:<24}  {:>8}  {:>4}  {}",
            event.id,
            event.dead_at.map_or_else(
                || "-".to_owned(),
                |at| at.format("%Y-%m-%d %H:%M:%S").to_string()
            ),
            event.topic,
            event.attempts,
            event.held_behind,
            event.last_error.as_deref().unwrap_or("-")
        );
    }
}

fn print_consumer_list(letters: &[ConsumerDeadLetter]) {
    if letters.is_empty() {
        println!("no consumer dead letters");
        return;
    }
    println!(
        "{:<36}  {:<20}  {:<24}  {:<24}  {:<24}  error",
        "event id", "dead at", "topic", "event type", "aggregate"
    );
    for letter in letters {
        let envelope = &letter.envelope;
        println!(
            "{:<36}  {:<20}  {:<24}  {:<24}  {:<24}  {}",
            envelope.id,
            letter.dead_at.format("%Y-%m-%d %H:%M:%S"),
            letter.topic,
            envelope.event_type,
            format!(
                "{} {} #{}",
                envelope.aggregate_type, envelope.aggregate_id, envelope.aggregate_seq
            ),
            letter.error
        );
    }
}

fn print_event(event: &OutboxEvent) {
    const SHOWN: usize = 2000;
    println!("id:             {}", event.id);
    println!("status:         {}", event.status);
    println!("topic:          {}", event.topic);
    println!(
        "event type:     {} (schema v{})",
        event.event_type, event.schema_version
    );
    println!(
        "aggregate:      {} {} (seq {})",
        event.aggregate_type, event.aggregate_id, event.aggregate_seq
    );
    println!("occurred at:    {}", event.occurred_at);
    println!("enqueued at:    {}", event.created_at);
    if let Some(at) = event.published_at {
        println!("published at:   {at}");
    }
    if let Some(at) = event.dead_at {
        println!("dead since:     {at}");
    }
    println!("attempts:       {}", event.attempts);
    println!(
        "last error:     {}",
        event.last_error.as_deref().unwrap_or("-")
    );
    println!(
        "held behind it: {} pending event(s) of the same aggregate",
        event.held_behind
    );
    let payload = event.payload.to_string();
    if payload.len() > SHOWN {
        let cut = (0..=SHOWN)
            .rev()
            .find(|&i| payload.is_char_boundary(i))
            .unwrap_or(0);
        println!(
            "payload ({} bytes, first {cut}): {}",
            payload.len(),
            &payload[..cut]
        );
    } else {
        println!("payload:        {payload}");
    }
}
