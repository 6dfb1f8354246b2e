//! The backorder queue (FIFO per product) and the order state machine.

mod common;

use commerce_core::{Error, LedgerKind, NewOrder, OrderStatus, ProductId, ShortagePolicy};
use common::{assert_consistent, product, setup};

fn backorder(user: &str, lines: &[(i64, i64)]) -> NewOrder {
    lines
        .iter()
        .fold(NewOrder::new(user), |order, &(p, q)| order.line(p, q))
        .policy(ShortagePolicy::Backorder)
}

#[tokio::test]
async fn a_short_backorder_takes_what_is_there_and_queues_the_rest() {
    let (_db, commerce) = setup().await;
    let p = product(&commerce, 1, 3).await;
    let placed = commerce
        .place_order(backorder("a", &[(1, 5)]))
        .await
        .unwrap();
    assert_eq!(placed.order.status, OrderStatus::Backordered);
    assert_eq!(placed.order.lines[0].allocated, 3);
    let stock = commerce.stock(p).await.unwrap();
    assert_eq!((stock.available, stock.backordered), (0, 2));
    let queue = commerce.backorders(p).await.unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!((queue[0].order, queue[0].outstanding), (placed.order.id, 2));
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn receipts_serve_the_oldest_backorders_first() {
    let (_db, commerce) = setup().await;
    let p = product(&commerce, 1, 0).await;
    let first = commerce
        .place_order(backorder("a", &[(1, 2)]))
        .await
        .unwrap()
        .order;
    let second = commerce
        .place_order(backorder("b", &[(1, 3)]))
        .await
        .unwrap()
        .order;
    let third = commerce
        .place_order(backorder("c", &[(1, 1)]))
        .await
        .unwrap()
        .order;

    let receipt = commerce.receive_stock(p, 4, Some("PO-7")).await.unwrap();
    let served: Vec<_> = receipt
        .allocations
        .iter()
        .map(|a| (a.order, a.quantity, a.outstanding, a.order_created))
        .collect();
    assert_eq!(
        served,
        [(first.id, 2, 0, true), (second.id, 2, 1, false)],
        "the oldest is served whole, the next partly, the newest waits"
    );
    assert_eq!(
        commerce.order(first.id).await.unwrap().status,
        OrderStatus::Created
    );
    assert_eq!(
        commerce.order(second.id).await.unwrap().status,
        OrderStatus::Backordered
    );
    assert_eq!(
        commerce.order(third.id).await.unwrap().status,
        OrderStatus::Backordered
    );
    let stock = commerce.stock(p).await.unwrap();
    assert_eq!((stock.available, stock.backordered), (0, 2));

    // The inbound row, then one `order` row per allocation, in that order.
    let ledger = commerce.ledger(p, None, 10).await.unwrap().entries;
    let kinds: Vec<_> = ledger
        .iter()
        .rev()
        .map(|e| (e.kind, e.delta, e.available_after))
        .collect();
    assert_eq!(
        kinds,
        [
            (LedgerKind::Inbound, 4, 4),
            (LedgerKind::Order, -2, 2),
            (LedgerKind::Order, -2, 0)
        ]
    );

    commerce.receive_stock(p, 10, None).await.unwrap();
    assert_eq!(
        commerce.order(second.id).await.unwrap().status,
        OrderStatus::Created
    );
    assert_eq!(
        commerce.order(third.id).await.unwrap().status,
        OrderStatus::Created
    );
    assert_eq!(commerce.stock(p).await.unwrap().available, 8);
    let history = commerce.order_history(third.id).await.unwrap();
    let moves: Vec<_> = history.iter().map(|h| (h.from, h.to)).collect();
    assert_eq!(
        moves,
        [
            (None, OrderStatus::Backordered),
            (Some(OrderStatus::Backordered), OrderStatus::Created)
        ]
    );
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn a_multi_line_backorder_is_created_only_when_every_line_is_covered() {
    let (_db, commerce) = setup().await;
    let a = product(&commerce, 1, 0).await;
    let b = product(&commerce, 2, 0).await;
    let order = commerce
        .place_order(backorder("a", &[(1, 1), (2, 1)]))
        .await
        .unwrap()
        .order;
    commerce.receive_stock(a, 1, None).await.unwrap();
    assert_eq!(
        commerce.order(order.id).await.unwrap().status,
        OrderStatus::Backordered
    );
    commerce.receive_stock(b, 1, None).await.unwrap();
    assert_eq!(
        commerce.order(order.id).await.unwrap().status,
        OrderStatus::Created
    );
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn cancelling_returns_stock_and_the_returned_stock_serves_the_queue() {
    let (_db, commerce) = setup().await;
    let p = product(&commerce, 1, 5).await;
    let holder = commerce
        .place_order(NewOrder::new("a").line(1, 5))
        .await
        .unwrap()
        .order;
    let waiting = commerce
        .place_order(backorder("b", &[(1, 3)]))
        .await
        .unwrap()
        .order;
    assert_eq!(waiting.status, OrderStatus::Backordered);

    let cancelled = commerce
        .cancel_order(holder.id, "customer asked")
        .await
        .unwrap();
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert_eq!(
        commerce.order(waiting.id).await.unwrap().status,
        OrderStatus::Created
    );
    let stock = commerce.stock(p).await.unwrap();
    assert_eq!((stock.available, stock.backordered), (2, 0));
    let ledger = commerce.ledger(p, None, 2).await.unwrap().entries;
    assert_eq!((ledger[1].kind, ledger[1].delta), (LedgerKind::Cancel, 5));
    assert_eq!((ledger[0].kind, ledger[0].delta), (LedgerKind::Order, -3));
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn cancelling_a_backordered_order_leaves_the_queue_and_returns_its_part() {
    let (_db, commerce) = setup().await;
    let p = product(&commerce, 1, 2).await;
    let order = commerce
        .place_order(backorder("a", &[(1, 5)]))
        .await
        .unwrap()
        .order;
    commerce.cancel_order(order.id, "too slow").await.unwrap();
    let stock = commerce.stock(p).await.unwrap();
    assert_eq!((stock.available, stock.backordered), (2, 0));
    assert!(commerce.backorders(p).await.unwrap().is_empty());
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn orders_move_forward_one_step_at_a_time_with_history() {
    let (_db, commerce) = setup().await;
    product(&commerce, 1, 5).await;
    let order = commerce
        .place_order(NewOrder::new("a").line(1, 1))
        .await
        .unwrap()
        .order;
    for to in [
        OrderStatus::Processing,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
    ] {
        let moved = commerce
            .transition_order(order.id, to, "warehouse scan")
            .await
            .unwrap();
        assert_eq!(moved.status, to);
    }
    let history = commerce.order_history(order.id).await.unwrap();
    assert_eq!(history.len(), 4);
    assert!(history
        .windows(2)
        .all(|w| w[0].at <= w[1].at && w[1].from == Some(w[0].to)));
    assert_eq!(history[3].reason, "warehouse scan");
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn illegal_transitions_are_typed_errors_and_change_nothing() {
    let (_db, commerce) = setup().await;
    let p = product(&commerce, 1, 5).await;
    let order = commerce
        .place_order(NewOrder::new("a").line(1, 1))
        .await
        .unwrap()
        .order;
    let err = commerce
        .transition_order(order.id, OrderStatus::Shipped, "skip")
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::IllegalTransition {
            from: OrderStatus::Created,
            to: OrderStatus::Shipped,
            ..
        }
    ));
    for to in [OrderStatus::Processing, OrderStatus::Shipped] {
        commerce
            .transition_order(order.id, to, "step")
            .await
            .unwrap();
    }
    let err = commerce
        .cancel_order(order.id, "too late")
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::IllegalTransition {
            from: OrderStatus::Shipped,
            ..
        }
    ));
    assert_eq!(
        commerce.stock(p).await.unwrap().available,
        4,
        "shipped stock stays out"
    );

    let waiting = commerce
        .place_order(backorder("b", &[(1, 10)]))
        .await
        .unwrap()
        .order;
    let err = commerce
        .transition_order(waiting.id, OrderStatus::Created, "force")
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::IllegalTransition {
            from: OrderStatus::Backordered,
            ..
        }
    ));
    let missing = commerce_core::OrderId::new();
    assert!(matches!(
        commerce
            .transition_order(missing, OrderStatus::Processing, "x")
            .await,
        Err(Error::OrderNotFound { .. })
    ));
    assert!(matches!(
        commerce
            .transition_order(order.id, OrderStatus::Delivered, " ")
            .await,
        Err(Error::InvalidInput {
            field: "reason",
            ..
        })
    ));
    assert_consistent(&commerce).await;
}

#[tokio::test]
async fn the_ledger_pages_newest_first() {
    let (_db, commerce) = setup().await;
    let p = product(&commerce, 1, 1).await;
    for i in 0..24 {
        commerce
            .receive_stock(p, 1, Some(&format!("r{i}")))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = commerce.ledger(p, before, 10).await.unwrap();
        seen.extend(page.entries.iter().map(|e| e.id));
        match page.next_before {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "strictly newest first: {seen:?}"
    );
    let newest = commerce.ledger(p, None, 1).await.unwrap();
    assert_eq!(newest.entries[0].reference.as_deref(), Some("r23"));
    assert!(commerce
        .ledger(ProductId(404), None, 10)
        .await
        .unwrap()
        .entries
        .is_empty());
}

#[tokio::test]
async fn adjustments_are_ledgered_and_can_serve_backorders() {
    let (_db, commerce) = setup().await;
    let p = product(&commerce, 1, 4).await;
    commerce.adjust_stock(p, -3, "damaged").await.unwrap();
    let waiting = commerce
        .place_order(backorder("a", &[(1, 2)]))
        .await
        .unwrap()
        .order;
    commerce.adjust_stock(p, 5, "recount").await.unwrap();
    assert_eq!(
        commerce.order(waiting.id).await.unwrap().status,
        OrderStatus::Created
    );
    assert_eq!(commerce.stock(p).await.unwrap().available, 4);
    assert_consistent(&commerce).await;
}
