//! Product reads go through the two-level cache; renames reach every instance.

use std::time::Duration;

use commerce_core::{Commerce, NewProduct, ProductId, MIGRATOR};
use commerce_testkit::{redis_url, unique_name, TestDb};
use reference_app::services::store::catalog::Catalog;

async fn instance(db: &TestDb, prefix: &str) -> Catalog {
    let commerce = Commerce::builder(db.pool().clone()).build();
    let redis = redis::Client::open(redis_url()).unwrap();
    Catalog::new(commerce, Some(redis), prefix).await.unwrap()
}

#[tokio::test]
async fn reads_are_cached_and_a_rename_on_one_instance_reaches_the_other() {
    let db = TestDb::new(&[&MIGRATOR]).await;
    let prefix = unique_name("catalog");
    let (a, b) = (instance(&db, &prefix).await, instance(&db, &prefix).await);
    a.commerce()
        .create_product(NewProduct::new(ProductId(1), "Kettle").stock(1))
        .await
        .unwrap();

    assert_eq!(
        a.product(ProductId(1)).await.unwrap().unwrap().name,
        "Kettle"
    );
    assert_eq!(
        a.product(ProductId(1)).await.unwrap().unwrap().name,
        "Kettle"
    );
    let metrics = a.metrics();
    assert_eq!((metrics.loads, metrics.l1.hits), (1, 1), "{metrics:?}");
    // The other instance finds it in Redis without touching the database.
    assert_eq!(
        b.product(ProductId(1)).await.unwrap().unwrap().name,
        "Kettle"
    );
    assert_eq!((b.metrics().loads, b.metrics().l2.hits), (0, 1));

    b.rename(ProductId(1), "Tea kettle").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    loop {
        let name = a.product(ProductId(1)).await.unwrap().unwrap().name;
        if name == "Tea kettle" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "instance a still serves {name:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn unknown_products_are_remembered_as_not_found() {
    let db = TestDb::new(&[&MIGRATOR]).await;
    let catalog = instance(&db, &unique_name("catalog")).await;
    for _ in 0..3 {
        assert_eq!(catalog.product(ProductId(404)).await.unwrap(), None);
    }
    assert_eq!(catalog.metrics().loads, 1, "not-found is cached");
    catalog.shutdown().await;
}
