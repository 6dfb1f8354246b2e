//! The private Postgres behaves as a real server does under the faults the fault suite
//! injects: a committed row survives a SIGKILL of the server (crash recovery on restart), and
//! `terminate_connections` ends the clients' sessions while the server stays up.

use commerce_testkit::PrivatePostgres;
use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn a_committed_row_survives_a_kill_and_a_terminated_session_is_ended() {
    let mut postgres = PrivatePostgres::start().await;
    let url = postgres.url("postgres");
    let mut client = PgConnection::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE kept (n int)")
        .execute(&mut client)
        .await
        .unwrap();
    sqlx::query("INSERT INTO kept VALUES (7)")
        .execute(&mut client)
        .await
        .unwrap();

    postgres.kill();
    assert!(
        sqlx::query("SELECT 1").execute(&mut client).await.is_err(),
        "a session outlived the server's kill"
    );
    postgres.restart().await;
    let mut client = PgConnection::connect(&url).await.unwrap();
    let kept: i32 = sqlx::query_scalar("SELECT n FROM kept")
        .fetch_one(&mut client)
        .await
        .unwrap();
    assert_eq!(kept, 7, "the committed row was lost in the crash");

    assert!(postgres.terminate_connections().await >= 1);
    assert!(
        sqlx::query("SELECT 1").execute(&mut client).await.is_err(),
        "a terminated session still answered"
    );
    let mut again = PgConnection::connect(&url).await.unwrap();
    sqlx::query("SELECT 1").execute(&mut again).await.unwrap();
}
