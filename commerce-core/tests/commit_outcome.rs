//! A connection lost while COMMIT is in flight leaves the outcome unknown: the server may
//! have committed. That must not be reported as "nothing written, retry" (review finding m1).

mod common;

use std::time::Duration;

use commerce_core::{Commerce, Error, NewOrder, ProductId, MIGRATOR};
use commerce_testkit::{TcpProxy, TestDb};
use sqlx::postgres::PgPoolOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_reply_is_an_unknown_outcome_not_a_safe_retry() {
    let db = TestDb::new(&[&MIGRATOR]).await;
    let direct = Commerce::builder(db.pool().clone()).build();
    common::product(&direct, 1, 5).await;

    let options = db.connect_options();
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", options.get_port())).await;
    let through_proxy = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.port(proxy.port()))
        .await
        .unwrap();
    let commerce = Commerce::builder(through_proxy).build();
    // Warm up: the pool's connection and statements work through the proxy.
    assert_eq!(commerce.stock(ProductId(1)).await.unwrap().available, 5);

    proxy.cut_after(b"COMMIT");
    let err = commerce_testkit::within(
        Duration::from_secs(30),
        commerce.place_order(NewOrder::new("u").line(1, 1)),
    )
    .await
    .expect_err("the commit reply was lost");
    assert!(
        matches!(err, Error::CommitOutcomeUnknown(_)),
        "expected an unknown outcome, got {err:?}"
    );
    assert!(
        !err.is_retryable(),
        "a blind retry could place the order twice"
    );

    // The server did commit: the order exists and the stock went down.
    commerce_testkit::eventually(Duration::from_secs(5), || async {
        direct.stock(ProductId(1)).await.unwrap().available == 4
    })
    .await;
    assert_eq!(direct.stock(ProductId(1)).await.unwrap().available, 4);
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM commerce.orders")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(orders, 1);
    common::assert_consistent(&direct).await;
}
