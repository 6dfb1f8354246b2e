//! Catalogue facts (SKU, price), prices kept on order lines, a user's orders page by page,
//! and transitions inside a caller's transaction.

mod common;

use commerce_core::{Error, NewOrder, NewProduct, OrderStatus, ProductId};
use common::{assert_consistent, setup};

#[tokio::test]
async fn products_carry_a_unique_sku_and_a_price_that_order_lines_keep() {
    let (_db, commerce) = setup().await;
    commerce
        .create_product(
            NewProduct::new(ProductId(1), "Kettle")
                .sku("KET-1")
                .price(3_999)
                .stock(5),
        )
        .await
        .unwrap();
    commerce
        .create_product(
            NewProduct::new(ProductId(2), "Mug")
                .sku("MUG-1")
                .price(450)
                .stock(5),
        )
        .await
        .unwrap();
    let taken = commerce
        .create_product(NewProduct::new(ProductId(3), "Other kettle").sku("KET-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&taken, Error::SkuAlreadyExists { sku } if sku == "KET-1"),
        "{taken:?}"
    );
    for bad in [-1, 1_000_000_000_001] {
        let err = commerce
            .create_product(NewProduct::new(ProductId(4), "Bad").price(bad))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput { field: "price", .. }),
            "{err:?}"
        );
    }
    let err = commerce
        .create_product(NewProduct::new(ProductId(4), "Bad").sku("a\u{0}b"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { field: "sku", .. }),
        "{err:?}"
    );

    let product = commerce.product(ProductId(1)).await.unwrap().unwrap();
    assert_eq!(
        (product.sku.as_deref(), product.price),
        (Some("KET-1"), 3_999)
    );

    let placed = commerce
        .place_order(NewOrder::new("u").line(1, 2).line(2, 3))
        .await
        .unwrap()
        .order;
    assert_eq!(placed.lines[0].unit_price, 3_999);
    assert_eq!(placed.lines[1].unit_price, 450);
    assert_eq!(placed.total(), 2 * 3_999 + 3 * 450);
    let stored = commerce.order(placed.id).await.unwrap();
    assert_eq!(stored.total(), placed.total());
    assert_eq!(
        stored.created_at, placed.created_at,
        "the database's clock both times"
    );
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn a_users_orders_come_newest_first_page_by_page() {
    let (_db, commerce) = setup().await;
    common::product(&commerce, 1, 100).await;
    let mut placed = Vec::new();
    for _ in 0..7 {
        placed.push(
            commerce
                .place_order(NewOrder::new("alice").line(1, 1))
                .await
                .unwrap()
                .order
                .id,
        );
    }
    commerce
        .place_order(NewOrder::new("bob").line(1, 1))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = commerce
            .orders_of_user("alice", 3, after.as_ref())
            .await
            .unwrap();
        assert!(page.orders.len() <= 3);
        assert!(page
            .orders
            .iter()
            .all(|o| o.user_id == "alice" && o.lines.len() == 1));
        seen.extend(page.orders.iter().map(|o| o.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    placed.reverse();
    assert_eq!(
        seen, placed,
        "all of alice's orders, newest first, each once"
    );
    assert!(commerce
        .orders_of_user("nobody", 10, None)
        .await
        .unwrap()
        .orders
        .is_empty());
}

#[tokio::test]
async fn a_transition_inside_the_callers_transaction_commits_or_rolls_back_with_it() {
    let (db, commerce) = setup().await;
    common::product(&commerce, 1, 5).await;
    let order = commerce
        .place_order(NewOrder::new("u").line(1, 2))
        .await
        .unwrap()
        .order;

    // Rolled back: nothing changed, the stock stays taken.
    let mut tx = db.pool().begin().await.unwrap();
    let cancelled = commerce
        .cancel_order_in(&mut tx, order.id, "test")
        .await
        .unwrap();
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    tx.rollback().await.unwrap();
    assert_eq!(
        commerce.order(order.id).await.unwrap().status,
        OrderStatus::Created
    );
    assert_eq!(commerce.stock(ProductId(1)).await.unwrap().available, 3);

    // Committed with a write of the caller's own.
    let mut tx = db.pool().begin().await.unwrap();
    commerce
        .transition_order_in(&mut tx, order.id, OrderStatus::Processing, "paid")
        .await
        .unwrap();
    sqlx::query("CREATE TABLE step_done (id INT)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        commerce.order(order.id).await.unwrap().status,
        OrderStatus::Processing
    );
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn orders_stuck_in_a_status_are_found_oldest_first() {
    let (db, commerce) = setup().await;
    common::product(&commerce, 1, 10).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            commerce
                .place_order(NewOrder::new("u").line(1, 1))
                .await
                .unwrap()
                .order
                .id,
        );
    }
    commerce
        .transition_order(ids[2], OrderStatus::Processing, "paid")
        .await
        .unwrap();
    // Age the first two: one a minute ago, one two minutes ago.
    for (id, age) in [(ids[0], 60), (ids[1], 120)] {
        sqlx::query("UPDATE commerce.orders SET updated_at = now() - make_interval(secs => $2) WHERE id = $1")
            .bind(id.0)
            .bind(f64::from(age))
            .execute(db.pool())
            .await
            .unwrap();
    }
    let stuck = commerce
        .orders_stuck_in(OrderStatus::Created, std::time::Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(stuck, vec![ids[1], ids[0]]);
    let none = commerce
        .orders_stuck_in(
            OrderStatus::Created,
            std::time::Duration::from_secs(600),
            10,
        )
        .await
        .unwrap();
    assert!(none.is_empty());
}
