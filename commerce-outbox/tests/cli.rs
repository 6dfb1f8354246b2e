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
