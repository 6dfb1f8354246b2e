//! First statistics for the tables a new deployment grows from empty.
//!
//! Every statement the services run is prepared once per connection, and after five runs
//! Postgres may keep a generic plan for it. On a fresh database those runs happen while the
//! tables are nearly empty, where reading the whole table is the cheapest plan, and Postgres
//! keeps that plan until the table's statistics change: autovacuum's first `ANALYZE` comes
//! about a minute later. Meanwhile the saga's lookups by a batch's ids (`payments`, `orders`,
//! `order_lines`) read whole tables that grow by thousands of rows a second in a flash sale:
//! 40 % of Postgres's statement time over HTTP in the benchmark's hot row
//! (docs/performance.md). [`spawn_first_statistics`] runs that first `ANALYZE` itself as soon
//! as a table has [`FIRST_STATISTICS_ROWS`] rows, which makes Postgres plan again (an index
//! scan for a batch's ids), and leaves the rest to autovacuum.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Rows a table without statistics needs before it is analyzed: enough for an index to beat
/// a whole-table read for a batch's ids, few enough that the analyze costs next to nothing.
pub const FIRST_STATISTICS_ROWS: i64 = 1_000;

/// The schemas whose tables are watched: commerce-core's, commerce-outbox's and the payment
/// service's.
pub const SCHEMAS: &[&str] = &["commerce", "commerce_outbox", "payment"];

/// How often the tables are looked at, and for how long after start: autovacuum has analyzed
/// every busy table by then.
const EVERY: Duration = Duration::from_secs(1);
const FOR: Duration = Duration::from_secs(300);

/// The advisory lock a round holds (transaction-scoped), so that of several instances on one
/// database one analyzes a grown table and the others skip that round.
const ROUND_LOCK: i64 = 0x636f_6d6d_7374_6174; // "commstat"

/// Analyzes each table of `schemas` that has never been analyzed and has at least `min_rows`
/// live rows; returns the tables analyzed (`schema.table`). A round holds an advisory lock
/// to its end: while another instance's round runs on the same database this one returns
/// nothing at once (the other analyzes what grew).
///
/// # Errors
/// When the database cannot be asked or an `ANALYZE` fails.
pub async fn analyze_grown(
    pool: &PgPool,
    schemas: &[&str],
    min_rows: i64,
) -> sqlx::Result<Vec<String>> {
    let mut round = pool.begin().await?;
    let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(ROUND_LOCK)
        .fetch_one(&mut *round)
        .await?;
    if !ours {
        return Ok(Vec::new());
    }
    // Never analyzed: `reltuples` is -1 until the first ANALYZE (or VACUUM) of the table.
    let grown: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', s.schemaname, s.relname) \
         FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid \
         WHERE s.schemaname = ANY($1) AND c.reltuples < 0 AND s.n_live_tup >= $2 \
         ORDER BY 1",
    )
    .bind(schemas)
    .bind(min_rows)
    .fetch_all(&mut *round)
    .await?;
    for table in &grown {
        // The name is Postgres's own, quoted by format('%I'). ANALYZE may run inside a
        // transaction; its statistics are visible to others once the round commits.
        sqlx::query(&format!("ANALYZE {table}"))
            .execute(&mut *round)
            .await?;
    }
    round.commit().await?;
    Ok(grown)
}

/// Runs [`analyze_grown`] on [`SCHEMAS`] every second for the first five minutes after start
/// (or until `shutdown`); a failure is logged and the next round tries again.
pub fn spawn_first_statistics(pool: PgPool, shutdown: CancellationToken, tasks: &TaskTracker) {
    tasks.spawn(async move {
        let until = tokio::time::Instant::now() + FOR;
        while tokio::time::Instant::now() < until {
            match analyze_grown(&pool, SCHEMAS, FIRST_STATISTICS_ROWS).await {
                Ok(analyzed) if !analyzed.is_empty() => {
                    tracing::info!(?analyzed, "first statistics of tables grown from empty");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "first statistics: will try again"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(EVERY) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use commerce_testkit::TestDb;
    use sqlx::{Connection, PgConnection};
    use uuid::Uuid;

    /// The payment worker's read of a batch's payments, as it runs it
    /// (`payment::store`).
    const READ: &str = "SELECT order_id, status, cancel_requested, may_have_charged \
                        FROM payment.payments WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE";

    async fn add_payments(pool: &PgPool, rows: i64) {
        let mut writer = pool.acquire().await.unwrap();
        sqlx::query(
            "INSERT INTO payment.payments (order_id, amount, currency, status) \
             SELECT gen_random_uuid(), 100, 'EUR', 'approved' FROM generate_series(1, $1)",
        )
        .bind(rows)
        .execute(&mut *writer)
        .await
        .unwrap();
        // Postgres's own count of live rows, as the task reads it, up to date now: the
        // writer's backend flushes its counts when it next goes idle, before the next query.
        for flush in ["SELECT pg_stat_force_next_flush()", "SELECT 1"] {
            sqlx::query(flush).execute(&mut *writer).await.unwrap();
        }
    }

    /// One round of the task, as it runs it: the tables it analyzed.
    async fn analyze_round(db: &TestDb) -> Vec<String> {
        analyze_grown(db.pool(), SCHEMAS, FIRST_STATISTICS_ROWS)
            .await
            .unwrap()
    }

    /// A fresh database with every schema the app migrates.
    async fn app_db() -> TestDb {
        TestDb::new(&crate::migrators().map(|(_, migrator)| migrator)).await
    }

    async fn seq_scans(conn: &mut PgConnection) -> i64 {
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::query_scalar(
            "SELECT seq_scan FROM pg_stat_user_tables \
             WHERE schemaname = 'payment' AND relname = 'payments'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap()
    }

    async fn read(conn: &mut PgConnection, ids: &[Uuid]) {
        sqlx::query(READ)
            .bind(ids)
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_table_grown_from_empty_is_analyzed_and_its_lookups_stop_reading_all_of_it() {
        let db = app_db().await;
        let mut conn = PgConnection::connect(&db.url()).await.unwrap();
        let ids: Vec<Uuid> = (0..16).map(|_| Uuid::now_v7()).collect();
        // The first orders of a sale: the statement prepared on a nearly empty table and run
        // past the plan cache's five custom plans (Postgres keeps a generic plan then).
        add_payments(db.pool(), 50).await;
        for _ in 0..10 {
            read(&mut conn, &ids).await;
        }
        add_payments(db.pool(), 20_000).await;
        let before = seq_scans(&mut conn).await;
        read(&mut conn, &ids).await;
        assert_eq!(
            seq_scans(&mut conn).await,
            before + 1,
            "the plan kept from the empty table reads all of it (the problem this fixes)"
        );

        let analyzed = analyze_round(&db).await;
        assert!(
            analyzed.contains(&"payment.payments".to_owned()),
            "analyzed: {analyzed:?}"
        );
        let before = seq_scans(&mut conn).await;
        for _ in 0..10 {
            read(&mut conn, &ids).await;
        }
        assert_eq!(
            seq_scans(&mut conn).await,
            before,
            "the same prepared statement on the same connection probes the primary key now"
        );
        assert!(
            analyze_round(&db).await.is_empty(),
            "once analyzed, a table is left to autovacuum"
        );
    }

    #[tokio::test]
    async fn tables_below_the_threshold_are_left_alone() {
        let db = app_db().await;
        add_payments(db.pool(), 10).await;
        let analyzed = analyze_round(&db).await;
        assert!(analyzed.is_empty(), "analyzed: {analyzed:?}");
        let reltuples: f32 = sqlx::query_scalar(
            "SELECT reltuples FROM pg_class WHERE oid = 'payment.payments'::regclass",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert!(reltuples < 0.0, "never analyzed: {reltuples}");
    }

    #[tokio::test]
    async fn a_round_another_instance_is_running_is_skipped_not_repeated() {
        let db = app_db().await;
        add_payments(db.pool(), 2_000).await;
        // Another instance of the app, in the middle of its round on the same database.
        let mut other = PgConnection::connect(&db.url()).await.unwrap();
        let mut round = other.begin().await.unwrap();
        let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(ROUND_LOCK)
            .fetch_one(&mut *round)
            .await
            .unwrap();
        assert!(held);
        let analyzed = analyze_round(&db).await;
        assert!(
            analyzed.is_empty(),
            "another instance is at it, so this one leaves the tables to it: {analyzed:?}"
        );
        round.rollback().await.unwrap();
        let analyzed = analyze_round(&db).await;
        assert!(
            analyzed.contains(&"payment.payments".to_owned()),
            "its round over, the next one runs: {analyzed:?}"
        );
    }
}
