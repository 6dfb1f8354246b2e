//! What orders cost, read on the caller's connection: a saga's hook learns what to charge
//! inside the transaction that placed the order.

mod common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use commerce_core::{
    Commerce, CoreEvent, NewOrder, NewProduct, OrderId, OrderTotal, ProductId, ShortagePolicy,
    TransactionHook, MIGRATOR,
};
use commerce_testkit::TestDb;
use sqlx::PgConnection;

async fn priced(commerce: &Commerce, id: i64, stock: i64, price: i64) {
    commerce
        .create_product(
            NewProduct::new(ProductId(id), format!("p{id}"))
                .stock(stock)
                .price(price),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn totals_sum_every_line_at_its_placed_price_in_order_id_order() {
    let (db, commerce) = common::setup().await;
    priced(&commerce, 1, 10, 250).await;
    priced(&commerce, 2, 0, 1_000).await;
    let single = commerce
        .place_order(NewOrder::new("ann").line(1, 3))
        .await
        .unwrap()
        .order;
    // Backordered lines cost what they were ordered for, allocated or not.
    let multi = commerce
        .place_order(
            NewOrder::new("bob")
                .line(2, 2)
                .line(1, 1)
                .policy(ShortagePolicy::Backorder),
        )
        .await
        .unwrap()
        .order;
    // A later price change does not change what was ordered.
    sqlx::query("UPDATE commerce.products SET price = 1 WHERE id = 1")
        .execute(db.pool())
        .await
        .unwrap();

    let mut conn = db.pool().acquire().await.unwrap();
    let unknown = OrderId::new();
    let totals = Commerce::order_totals_in(&mut conn, &[multi.id, unknown, single.id, multi.id])
        .await
        .unwrap();
    let mut expected = vec![
        OrderTotal {
            order: single.id,
            user_id: "ann".to_owned(),
            total: 750,
        },
        OrderTotal {
            order: multi.id,
            user_id: "bob".to_owned(),
            total: 2_250,
        },
    ];
    expected.sort_by_key(|t| t.order);
    assert_eq!(totals, expected, "unknown ids left out, repeats once");
    assert_eq!(
        totals[0].total,
        commerce.order(totals[0].order).await.unwrap().total()
    );

    assert!(Commerce::order_totals_in(&mut conn, &[])
        .await
        .unwrap()
        .is_empty());
    assert!(Commerce::order_totals_in(&mut conn, &[unknown])
        .await
        .unwrap()
        .is_empty());
}

/// Reads the totals of the orders a transaction placed, from inside that transaction.
#[derive(Clone, Default)]
struct Charges(Arc<Mutex<Vec<OrderTotal>>>);

#[async_trait]
impl TransactionHook for Charges {
    async fn before_commit(
        &self,
        conn: &mut PgConnection,
        events: &[CoreEvent],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let placed: Vec<OrderId> = events
            .iter()
            .filter_map(|e| match e {
                CoreEvent::OrderPlaced { order, .. } => Some(*order),
                _ => None,
            })
            .collect();
        let totals = Commerce::order_totals_in(conn, &placed).await?;
        self.0.lock().unwrap().extend(totals);
        Ok(())
    }
}

#[tokio::test]
async fn a_hook_reads_the_total_of_the_order_its_transaction_is_placing() {
    let db = TestDb::new(&[&MIGRATOR]).await;
    let charges = Charges::default();
    let commerce = Commerce::builder(db.pool().clone())
        .hook(charges.clone())
        .build();
    priced(&commerce, 1, 10, 399).await;
    priced(&commerce, 2, 10, 1_000).await;
    let order = commerce
        .place_order(NewOrder::new("cid").line(1, 2).line(2, 1))
        .await
        .unwrap()
        .order;
    let seen = charges.0.lock().unwrap().clone();
    assert_eq!(
        seen,
        [OrderTotal {
            order: order.id,
            user_id: "cid".to_owned(),
            total: 1_798,
        }]
    );
}
