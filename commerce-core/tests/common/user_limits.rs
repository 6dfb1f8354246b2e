//! The per-user limit scenarios, shared by every stock strategy's tests: each path that
//! places orders must refuse what would take a user past a limit, write nothing for it, and
//! hold the limit under concurrent placements.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use commerce_core::{
    Commerce, Error, NewOrder, OrderId, OrderLimits, OrderStatus, PlacedOrder, ProductId,
    ShortagePolicy, UserLimit,
};
use tokio::sync::Barrier;

use super::{assert_consistent, product};

/// The backordered-units limit of [`backordered_units`].
pub const MAX_UNITS: i64 = 5;
/// The open-orders limit of [`open_orders`].
pub const MAX_OPEN: i64 = 2;

/// At most [`MAX_UNITS`] units waiting for stock per user.
pub fn backordered_units() -> OrderLimits {
    OrderLimits {
        max_backordered_units_per_user: Some(MAX_UNITS),
        ..OrderLimits::default()
    }
}

/// At most [`MAX_OPEN`] orders BACKORDERED or CREATED per user.
pub fn open_orders() -> OrderLimits {
    OrderLimits {
        max_open_orders_per_user: Some(MAX_OPEN),
        ..OrderLimits::default()
    }
}

fn backorder(user: &str, lines: &[(i64, i64)]) -> NewOrder {
    lines
        .iter()
        .fold(NewOrder::new(user), |order, &(p, q)| order.line(p, q))
        .policy(ShortagePolicy::Backorder)
}

/// Rows of every table a placement writes: a refused one must leave them as they were.
async fn footprint(commerce: &Commerce) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "orders",
        "order_lines",
        "order_status_history",
        "stock_ledger",
        "backorders",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM commerce.{table}"))
            .fetch_one(commerce.pool())
            .await
            .unwrap();
        counts.push(n);
    }
    counts
}

/// Places `order`, which must be refused for `limit` with these figures, writing nothing.
async fn refused(
    commerce: &Commerce,
    order: NewOrder,
    limit: UserLimit,
    (current, requested, max): (i64, i64, i64),
) {
    let before = footprint(commerce).await;
    let stock_before = commerce.stock_of(&products(&order)).await.unwrap();
    let user = order.user_id.clone();
    let err = commerce.place_order(order).await.unwrap_err();
    match &err {
        Error::UserLimitExceeded {
            user: u,
            limit: l,
            current: c,
            requested: r,
            max: m,
        } => assert_eq!(
            (u.as_str(), *l, *c, *r, *m),
            (user.as_str(), limit, current, requested, max),
            "{err}"
        ),
        other => panic!("expected {limit} to be exceeded, got {other:?}"),
    }
    assert!(!err.is_retryable());
    assert_eq!(
        footprint(commerce).await,
        before,
        "a refused order wrote rows"
    );
    assert_eq!(
        commerce
            .stock_of(&stock_before.iter().map(|s| s.product).collect::<Vec<_>>())
            .await
            .unwrap(),
        stock_before
    );
}

fn products(order: &NewOrder) -> Vec<ProductId> {
    let mut products: Vec<ProductId> = order.lines.iter().map(|l| l.product).collect();
    products.sort_unstable();
    products
}

async fn placed(commerce: &Commerce, order: NewOrder) -> PlacedOrder {
    commerce.place_order(order).await.unwrap()
}

/// Under [`backordered_units`]: units waiting for stock count per user, the new order's
/// shortfall included; an order without shortfall is not limited by it.
pub async fn backordered_units_are_capped(commerce: &Commerce) {
    product(commerce, 1, 1).await;
    product(commerce, 2, 0).await;
    product(commerce, 3, 5).await;
    product(commerce, 4, 0).await;
    let first = placed(commerce, backorder("u", &[(1, 3)])).await.order;
    assert_eq!(first.status, OrderStatus::Backordered); // waits for 2
    placed(commerce, backorder("u", &[(2, 3)])).await; // 5 waiting: at the limit
    let units = UserLimit::BackorderedUnits;
    refused(commerce, backorder("u", &[(2, 1)]), units, (5, 1, 5)).await;
    // Of several lines only the shortfall counts; the line in stock is not taken either.
    refused(
        commerce,
        backorder("u", &[(3, 1), (4, 1)]),
        units,
        (5, 1, 5),
    )
    .await;
    // Another user has a limit of their own.
    placed(commerce, backorder("v", &[(2, 4)])).await;
    // Orders that wait for nothing add nothing.
    let in_stock = placed(commerce, backorder("u", &[(3, 2)])).await.order;
    assert_eq!(in_stock.status, OrderStatus::Created);
    placed(commerce, NewOrder::new("u").line(3, 1)).await;
    // Stock that arrives serves the first order: 3 waiting, room for 2 more.
    commerce.receive_stock(ProductId(1), 2, None).await.unwrap();
    assert_eq!(
        commerce.order(first.id).await.unwrap().status,
        OrderStatus::Created
    );
    placed(commerce, backorder("u", &[(2, 1), (4, 1)])).await;
    refused(commerce, backorder("u", &[(4, 1)]), units, (5, 1, 5)).await;
    assert_consistent(commerce).await;
}

/// Under [`open_orders`]: BACKORDERED and CREATED orders count per user, whatever the
/// policy; one moving on (paid, cancelled) makes room.
pub async fn open_orders_are_capped(commerce: &Commerce) {
    product(commerce, 1, 10).await;
    product(commerce, 2, 0).await;
    let created = placed(commerce, NewOrder::new("u").line(1, 1)).await.order;
    let waiting = placed(commerce, backorder("u", &[(2, 1)])).await.order;
    let open = UserLimit::OpenOrders;
    refused(commerce, NewOrder::new("u").line(1, 1), open, (2, 1, 2)).await;
    refused(commerce, backorder("u", &[(1, 1), (2, 1)]), open, (2, 1, 2)).await;
    placed(commerce, NewOrder::new("v").line(1, 1)).await;
    commerce
        .transition_order(created.id, OrderStatus::Processing, "paid")
        .await
        .unwrap();
    placed(commerce, NewOrder::new("u").line(1, 1)).await;
    refused(commerce, NewOrder::new("u").line(1, 1), open, (2, 1, 2)).await;
    commerce.cancel_order(waiting.id, "expired").await.unwrap();
    placed(commerce, backorder("u", &[(1, 1)])).await;
    assert_consistent(commerce).await;
}

/// Starts every order at once behind one barrier; returns each outcome.
async fn at_once(
    commerce: &Commerce,
    orders: Vec<NewOrder>,
) -> Vec<commerce_core::Result<PlacedOrder>> {
    let start = Arc::new(Barrier::new(orders.len()));
    let tasks: Vec<_> = orders
        .into_iter()
        .map(|order| {
            let (commerce, start) = (commerce.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                commerce.place_order(order).await
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.expect("order task panicked"));
    }
    outcomes
}

/// Counts the placed orders of `outcomes`; every other outcome must be `limit` exceeded at
/// `max` with the limit reached.
fn count_placed(
    outcomes: Vec<commerce_core::Result<PlacedOrder>>,
    limit: UserLimit,
    max: i64,
) -> usize {
    let mut placed = 0;
    for outcome in outcomes {
        match outcome {
            Ok(_) => placed += 1,
            Err(Error::UserLimitExceeded {
                limit: l,
                current,
                requested: 1,
                max: m,
                ..
            }) if l == limit && m == max && current == max => {}
            Err(other) => panic!("unexpected outcome: {other:?}"),
        }
    }
    placed
}

/// Under [`backordered_units`]: two users each send 20 one-unit backorders for a sold-out
/// product at once; each ends with exactly [`MAX_UNITS`] waiting.
pub async fn concurrent_backorders_stay_within_the_limit(commerce: &Commerce) {
    let p = product(commerce, 1, 0).await;
    let orders = (0..40)
        .map(|i| backorder(if i % 2 == 0 { "u" } else { "v" }, &[(1, 1)]))
        .collect();
    let outcomes = at_once(commerce, orders).await;
    let placed = count_placed(outcomes, UserLimit::BackorderedUnits, MAX_UNITS);
    assert_eq!(placed, 2 * MAX_UNITS as usize);
    let waiting: Vec<(String, i64)> = sqlx::query_as(
        "SELECT o.user_id, sum(b.outstanding)::bigint FROM commerce.backorders b \
         JOIN commerce.orders o ON o.id = b.order_id GROUP BY o.user_id ORDER BY o.user_id",
    )
    .fetch_all(commerce.pool())
    .await
    .unwrap();
    assert_eq!(
        waiting,
        [("u".to_owned(), MAX_UNITS), ("v".to_owned(), MAX_UNITS)]
    );
    assert_eq!(commerce.stock(p).await.unwrap().backordered, 2 * MAX_UNITS);
    assert_consistent(commerce).await;
}

/// Under [`open_orders`]: 20 orders of one user at once, stock for all; exactly
/// [`MAX_OPEN`] are placed.
pub async fn concurrent_orders_stay_within_the_open_limit(commerce: &Commerce) {
    let p = product(commerce, 1, 100).await;
    let orders = (0..20).map(|_| NewOrder::new("u").line(1, 1)).collect();
    let outcomes = at_once(commerce, orders).await;
    let placed = count_placed(outcomes, UserLimit::OpenOrders, MAX_OPEN);
    assert_eq!(placed, MAX_OPEN as usize);
    assert_eq!(commerce.stock(p).await.unwrap().available, 100 - MAX_OPEN);
    assert_consistent(commerce).await;
}

/// Under [`open_orders`]: copies of one keyed request sent at once by a user one order
/// below the limit all get the one order it placed, not a refusal.
pub async fn repeats_of_a_keyed_request_at_the_limit_get_the_first_order(commerce: &Commerce) {
    product(commerce, 1, 100).await;
    placed(commerce, NewOrder::new("u").line(1, 1)).await;
    let request = NewOrder::new("u").line(1, 2).idempotency_key("cart-7");
    let outcomes = at_once(commerce, vec![request; 10]).await;
    let mut ids: Vec<OrderId> = outcomes
        .into_iter()
        .map(|outcome| outcome.expect("a repeat of the placed request").order.id)
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 1, "one order for one key");
    assert_eq!(commerce.stock(ProductId(1)).await.unwrap().available, 97);
    assert_consistent(commerce).await;
}
