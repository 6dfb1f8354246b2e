//! The `commerce-outbox` command-line tool against a real database (feature `cli`).

mod common;

use std::time::Duration;

use commerce_outbox::dead_letter::inspect_event;
use commerce_outbox::{EventId, MIGRATOR};
use commerce_testkit::{database_url, within, TestDb};
use common::commit_event;

/// The URL of `db`: `DATABASE_URL`'s server with the test database's name.
fn url_of(db: &TestDb) -> String {
    let base = database_url();
    let (base, query) = base.split_once('?').unwrap_or((&base, ""));
    let (server, _) = base
        .rsplit_once('/')
        .expect("DATABASE_URL names a database");
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{server}/{}{query}", db.name())
}

/// Runs the tool with `args` against `db`; returns (success, stdout, stderr).
async fn run(db: &TestDb, args: &[&str]) -> (bool, String, String) {
    let output = within(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_commerce-outbox"))
            .arg("--database-url")
            .arg(url_of(db))
            .args(args)
            .output(),
    )
    .await
    .expect("run commerce-outbox");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Dead-letters `id` as the relay does after `attempts` refusals.
async fn kill(db: &TestDb, id: EventId, attempts: i32) {
    sqlx::query(
        "UPDATE commerce_outbox.event
         SET status = 'dead', attempts = $2, last_error = 'refused', dead_at = now()
         WHERE id = $1",
    )
    .bind(id.0)
    .bind(attempts)
    .execute(db.pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn dlq_replay_topic_replays_every_dead_letter_of_that_topic_only() {
    let db = TestDb::new(&[&MIGRATOR]).await;
    let first = commit_event(db.pool(), "orders", "order-1", 0).await;
    commit_event(db.pool(), "orders", "order-1", 1).await;
    let second = commit_event(db.pool(), "orders", "order-2", 0).await;
    let elsewhere = commit_event(db.pool(), "payments", "payment-1", 0).await;
    for id in [first, second, elsewhere] {
        kill(&db, id, 10).await;
    }

    let (ok, stdout, stderr) = run(&db, &["dlq", "replay", "--topic", "orders"]).await;
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("replayed 2 dead letter(s) of topic orders"),
        "{stdout}"
    );
    assert_eq!(
        lines[1..],
        [first.to_string(), second.to_string()],
        "ids in sequence order"
    );
    for id in [first, second] {
        let event = inspect_event(db.pool(), id).await.unwrap();
        assert_eq!((event.status.as_str(), event.attempts), ("pending", 0));
    }
    assert_eq!(
        inspect_event(db.pool(), elsewhere).await.unwrap().status,
        "dead"
    );

    let (ok, stdout, _) = run(&db, &["dlq", "replay", "--topic", "orders"]).await;
    assert!(ok);
    assert!(stdout.starts_with("replayed 0 dead letter(s)"), "{stdout}");
}

#[tokio::test]
async fn dlq_replay_needs_either_an_event_or_a_topic() {
    let db = TestDb::new(&[&MIGRATOR]).await;
    let (ok, _, stderr) = run(&db, &["dlq", "replay"]).await;
    assert!(!ok, "no target must fail");
    assert!(stderr.contains("--topic"), "{stderr}");

    let id = EventId::new_v7().to_string();
    let (ok, _, stderr) = run(&db, &["dlq", "replay", &id, "--topic", "orders"]).await;
    assert!(!ok, "both targets must fail");
    assert!(stderr.contains("cannot be used with"), "{stderr}");

    let (ok, _, stderr) = run(&db, &["dlq", "replay", &id]).await;
    assert!(!ok, "an unknown event must fail");
    assert!(stderr.contains("not found"), "{stderr}");
}

/// Sets `id` aside as a dead letter of `consumer`, as the runner does.
async fn set_aside(db: &TestDb, consumer: &str, id: EventId, error: &str) {
    sqlx::query("INSERT INTO commerce_outbox.inbox (consumer, event_id) VALUES ($1, $2)")
        .bind(consumer)
        .bind(id.0)
        .execute(db.pool())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO commerce_outbox.consumer_dead_letter
             (consumer, topic, event_id, event_type, aggregate_type, aggregate_id,
              aggregate_seq, occurred_at, schema_version, payload, error)
         SELECT $1, topic, id, event_type, aggregate_type, aggregate_id, aggregate_seq,
                occurred_at, schema_version, payload, $3
         FROM commerce_outbox.event WHERE id = $2",
    )
    .bind(consumer)
    .bind(id.0)
    .bind(error)
    .execute(db.pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn consumer_dlq_lists_a_consumers_dead_letters_and_discards_one() {
    let db = TestDb::new(&[&MIGRATOR]).await;
    let first = commit_event(db.pool(), "payments", "payment-1", 0).await;
    let second = commit_event(db.pool(), "payments", "payment-2", 0).await;
    let others = commit_event(db.pool(), "payments", "payment-3", 0).await;
    set_aside(&db, "orders", first, "unprocessable event: no order_id").await;
    set_aside(
        &db,
        "orders",
        second,
        "unprocessable event: negative amount",
    )
    .await;
    set_aside(&db, "shipping", others, "unprocessable event: no address").await;

    let (ok, stdout, stderr) = run(&db, &["consumer-dlq", "list", "orders"]).await;
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two dead letters: {stdout}");
    assert!(
        lines[1].starts_with(&first.to_string()),
        "oldest first: {stdout}"
    );
    assert!(lines[1].contains("test payment-1 #1") && lines[1].ends_with("no order_id"));
    assert!(lines[2].starts_with(&second.to_string()), "{stdout}");

    let (ok, stdout, _) = run(&db, &["stats"]).await;
    assert!(ok);
    assert!(stdout.contains("consumer dead letters: 3"), "{stdout}");
    assert!(
        stdout.contains("  orders: 2") && stdout.contains("  shipping: 1"),
        "{stdout}"
    );

    let (ok, stdout, stderr) = run(
        &db,
        &["consumer-dlq", "discard", "orders", &first.to_string()],
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with(&format!("discarded {first} for consumer orders")));
    let (_, stdout, _) = run(&db, &["consumer-dlq", "list", "orders", "--limit", "5"]).await;
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(!stdout.contains(&first.to_string()), "{stdout}");

    let (ok, _, stderr) = run(
        &db,
        &["consumer-dlq", "discard", "orders", &first.to_string()],
    )
    .await;
    assert!(!ok, "discarding twice must fail");
    assert!(stderr.contains("has no dead letter"), "{stderr}");
    let (_, stdout, _) = run(&db, &["consumer-dlq", "list", "nobody"]).await;
    assert_eq!(stdout.trim(), "no consumer dead letters");
}
