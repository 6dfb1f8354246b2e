//! `commerce-outbox`: inspect the outbox and handle dead letters from a shell.
//!
//! ```text
//! commerce-outbox stats
//! commerce-outbox dlq list [--limit N]
//! commerce-outbox dlq show EVENT_ID
//! commerce-outbox dlq replay EVENT_ID
//! commerce-outbox dlq discard EVENT_ID
//! ```
//! The database comes from `DATABASE_URL`.

use anyhow::{bail, Context};
use commerce_outbox::dead_letter::{
    discard_dead_letter, inspect_event, list_dead_letters, replay_dead_letter, OutboxEvent,
};
use commerce_outbox::{outbox_stats, EventId};
use sqlx::PgPool;

const USAGE: &str = "usage:
  commerce-outbox stats
  commerce-outbox dlq list [--limit N]
  commerce-outbox dlq show EVENT_ID
  commerce-outbox dlq replay EVENT_ID
  commerce-outbox dlq discard EVENT_ID
DATABASE_URL selects the database.";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if matches!(args.first().copied(), None | Some("-h" | "--help" | "help")) {
        println!("{USAGE}");
        return Ok(());
    }
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
    let pool = PgPool::connect(&url)
        .await
        .with_context(|| "cannot connect to DATABASE_URL")?;
    match args.as_slice() {
        ["stats"] => {
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
        }
        ["dlq", "list"] => print_list(&list_dead_letters(&pool, 100).await?),
        ["dlq", "list", "--limit", limit] => {
            let limit: i64 = limit.parse().context("--limit takes a number")?;
            print_list(&list_dead_letters(&pool, limit).await?);
        }
        ["dlq", "show", id] => print_event(&inspect_event(&pool, parse_id(id)?).await?),
        ["dlq", "replay", id] => {
            replay_dead_letter(&pool, parse_id(id)?).await?;
            println!("replayed {id}: pending again, the relay publishes it next");
        }
        ["dlq", "discard", id] => {
            discard_dead_letter(&pool, parse_id(id)?).await?;
            println!("discarded {id}: the events held behind it are released");
        }
        _ => bail!("unknown command\n{USAGE}"),
    }
    Ok(())
}

fn parse_id(id: &str) -> anyhow::Result<EventId> {
    id.parse()
        .with_context(|| format!("{id:?} is not an event id (a UUID)"))
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

fn print_event(event: &OutboxEvent) {
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
    const SHOWN: usize = 2000;
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
