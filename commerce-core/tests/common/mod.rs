//! Shared set-up for commerce-core's integration tests (real Postgres, one database per test).
#![allow(dead_code, unreachable_pub)]

pub mod flash_sale;
pub mod gate;
pub mod user_limits;

use commerce_core::{Commerce, NewProduct, OrderLimits, ProductId, StockStrategy, MIGRATOR};
use commerce_testkit::TestDb;

/// A fresh database and a `Commerce` on it.
pub async fn setup() -> (TestDb, Commerce) {
    setup_with_pool(10).await
}

/// Like [`setup`] with a pool of `connections`.
pub async fn setup_with_pool(connections: u32) -> (TestDb, Commerce) {
    let db = TestDb::with_pool_size(&[&MIGRATOR], connections).await;
    let commerce = Commerce::builder(db.pool().clone()).build();
    (db, commerce)
}

/// A fresh database and a `Commerce` on it using `strategy`.
pub async fn setup_with_strategy(
    connections: u32,
    strategy: impl StockStrategy,
) -> (TestDb, Commerce) {
    let db = TestDb::with_pool_size(&[&MIGRATOR], connections).await;
    let commerce = Commerce::builder(db.pool().clone())
        .strategy(strategy)
        .build();
    (db, commerce)
}

/// A fresh database and a `Commerce` on it using `strategy` under `limits`.
pub async fn setup_with_limits(
    connections: u32,
    strategy: impl StockStrategy,
    limits: OrderLimits,
) -> (TestDb, Commerce) {
    let db = TestDb::with_pool_size(&[&MIGRATOR], connections).await;
    let commerce = Commerce::builder(db.pool().clone())
        .strategy(strategy)
        .limits(limits)
        .build();
    (db, commerce)
}

/// Creates product `id` with `stock` units.
pub async fn product(commerce: &Commerce, id: i64, stock: i64) -> ProductId {
    commerce
        .create_product(NewProduct::new(ProductId(id), format!("product {id}")).stock(stock))
        .await
        .expect("create product");
    ProductId(id)
}

/// Fails the test with every violation the audit finds.
pub async fn assert_consistent(commerce: &Commerce) {
    let report = commerce.audit().await.expect("audit");
    assert!(
        report.is_consistent(),
        "inconsistent state:\n{}",
        report.violations.join("\n")
    );
}
