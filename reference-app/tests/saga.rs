//! The order system through HTTP, with the payment saga, on both event transports: each
//! scenario runs once in-process (Postgres alone) and once over Kafka.

mod common;

use std::time::Duration;

use commerce_client::{
    Inbound, MovementKind, MovementsQuery, OrderStatus, PlaceOrder, Shortage, StatusCode,
};
use common::{TestApp, Transport};
use futures::StreamExt;

/// One `#[tokio::test]` per transport for each scenario.
macro_rules! on_both_transports {
    ($($scenario:ident),* $(,)?) => {
        mod in_process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Transport::InProcess).await;
                }
            )*
        }
        mod kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Transport::Kafka).await;
                }
            )*
        }
    };
}

on_both_transports!(
    an_order_is_paid_watched_live_shipped_and_delivered,
    a_declined_payment_cancels_the_order_and_restores_stock_and_ledger,
    a_gateway_that_recovers_ends_processing,
    a_gateway_that_stays_down_ends_cancelled_by_the_saga_timeout,
    cancelling_a_paid_order_refunds_it,
    a_backorder_served_later_is_paid_in_full,
);

const SAGA_DONE: Duration = Duration::from_secs(30);

async fn an_order_is_paid_watched_live_shipped_and_delivered(transport: Transport) {
    let app = TestApp::start(transport).await;
    let product = app.product("KET-1", 3_999, 10).await;
    let alice = app.customer("alice");
    // The gateway refuses every charge until the watcher has seen CREATED: the order cannot
    // leave CREATED before then, however slow the watcher is to connect.
    let gateway = app.running().stand_in_gateway().unwrap().clone();
    gateway.set_failure_rate(1.0).unwrap();

    let placed = app.order(&alice, product, 2).await.expect("placed");
    assert_eq!(placed.status, StatusCode::CREATED, "{placed:?}");
    assert_eq!(placed.order.status, OrderStatus::Created);
    assert_eq!(placed.order.total, 7_998);
    assert_eq!(placed.order.items[0].unit_price, 3_999);
    let id = placed.order.id;

    // Watch it live: the current status first, then PROCESSING once the payment is approved;
    // the stream ends after the final status.
    let mut events = alice.order_events(id).await.expect("stream opened");
    let first = commerce_testkit::within(SAGA_DONE, events.next())
        .await
        .expect("a first event")
        .expect("a status event");
    assert_eq!(first.change.status, OrderStatus::Created);
    gateway.set_failure_rate(0.0).unwrap();
    let watcher = tokio::spawn(async move {
        events
            .map(|event| event.expect("a status event").change.status)
            .collect::<Vec<_>>()
            .await
    });

    app.wait_for_status(id, OrderStatus::Processing, SAGA_DONE)
        .await;
    app.admin.ship_order(id).await.expect("shipped");
    app.admin.deliver_order(id).await.expect("delivered");
    let seen = commerce_testkit::within(Duration::from_secs(30), watcher)
        .await
        .unwrap();
    assert_eq!(
        seen,
        [
            OrderStatus::Processing,
            OrderStatus::Shipped,
            OrderStatus::Delivered
        ],
        "one event per change, in order, ending at the final status"
    );

    let order = alice.order(id).await.expect("read by its owner");
    let history: Vec<OrderStatus> = order.history.iter().map(|h| h.status).collect();
    assert_eq!(
        history,
        [
            OrderStatus::Created,
            OrderStatus::Processing,
            OrderStatus::Shipped,
            OrderStatus::Delivered
        ]
    );
    assert_eq!(order.history[1].reason, "payment approved");
    assert_eq!(alice.stock(product).await.unwrap().available, 8);
    assert_eq!(gateway.stats().charges_taken, 1);
    app.assert_audit_clean().await;
    app.stop().await;
}

async fn a_declined_payment_cancels_the_order_and_restores_stock_and_ledger(transport: Transport) {
    let app = TestApp::start(transport).await;
    // Above the stand-in gateway's decline threshold (1,000,000 minor units).
    let product = app.product("GOLD-1", 700_000, 5).await;
    let bob = app.customer("bob");
    let placed = app.order(&bob, product, 2).await.expect("placed");
    assert_eq!(placed.status, StatusCode::CREATED, "{placed:?}");
    let id = placed.order.id;

    app.wait_for_status(id, OrderStatus::Cancelled, SAGA_DONE)
        .await;
    let order = bob.order(id).await.unwrap();
    let last = order.history.last().unwrap();
    assert!(
        last.reason.starts_with("payment failed: declined"),
        "{last:?}"
    );
    assert_eq!(
        bob.stock(product).await.unwrap().available,
        5,
        "stock returned"
    );
    let ledger = app
        .admin
        .movements(product, &MovementsQuery::default())
        .await
        .unwrap();
    let kinds: Vec<(MovementKind, i64)> = ledger.items.iter().map(|m| (m.kind, m.delta)).collect();
    assert_eq!(
        kinds,
        [
            (MovementKind::Cancel, 2),
            (MovementKind::Order, -2),
            (MovementKind::Inbound, 5)
        ],
        "newest first"
    );
    assert_eq!(
        app.running()
            .stand_in_gateway()
            .unwrap()
            .stats()
            .charges_taken,
        0
    );
    app.assert_audit_clean().await;
    app.stop().await;
}

async fn a_gateway_that_recovers_ends_processing(transport: Transport) {
    let app = TestApp::start(transport).await;
    let product = app.product("MUG-1", 450, 5).await;
    // Two whole calls (three attempts each) fail: the charge is parked twice, then taken.
    app.running().stand_in_gateway().unwrap().fail_next(6);
    let carol = app.customer("carol");
    let placed = app.order(&carol, product, 1).await.expect("placed");
    app.wait_for_status(placed.order.id, OrderStatus::Processing, SAGA_DONE)
        .await;
    let stats = app.running().stand_in_gateway().unwrap().stats();
    assert_eq!(
        stats.charges_taken, 1,
        "taken once whatever the retries: {stats:?}"
    );
    assert!(stats.injected_failures >= 6, "{stats:?}");
    app.assert_audit_clean().await;
    app.stop().await;
}

async fn a_gateway_that_stays_down_ends_cancelled_by_the_saga_timeout(transport: Transport) {
    let app = TestApp::start_with(transport, |config| {
        common::short_saga(config, Duration::from_secs(3));
    })
    .await;
    let gateway = app.running().stand_in_gateway().unwrap().clone();
    gateway.set_failure_rate(1.0).unwrap();
    let product = app.product("MUG-2", 450, 5).await;
    let dave = app.customer("dave");
    let id = app.order(&dave, product, 1).await.expect("placed").order.id;
    app.wait_for_status(id, OrderStatus::Cancelled, SAGA_DONE)
        .await;
    let order = dave.order(id).await.unwrap();
    let last = order.history.last().unwrap();
    assert!(last.reason.starts_with("payment timed out"), "{last:?}");
    // The gateway comes back. Whether a call may have reached it before the cancel decides
    // what follows (decision 0011): a payment no call can have charged was voided and is never
    // charged; one whose call was cut by its deadline under load is asked again with its key,
    // and what the gateway approves is refunded. Either way no money is kept.
    gateway.set_failure_rate(0.0).unwrap();
    let settled = commerce_testkit::eventually(SAGA_DONE, || {
        let gateway = gateway.clone();
        async move {
            let stats = gateway.stats();
            stats.charges_taken == stats.refunds
        }
    })
    .await;
    assert!(
        settled,
        "money kept for a cancelled order: {:?}",
        gateway.stats()
    );
    // Nothing more happens after that (no event announces the absence of a charge).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = gateway.stats();
    assert_eq!(stats.charges_taken, stats.refunds, "{stats:?}");
    assert_eq!(app.status(id).await, OrderStatus::Cancelled);
    assert_eq!(dave.stock(product).await.unwrap().available, 5);
    app.assert_audit_clean().await;
    app.stop().await;
}

async fn cancelling_a_paid_order_refunds_it(transport: Transport) {
    let app = TestApp::start(transport).await;
    let product = app.product("JUG-1", 1_990, 5).await;
    let erin = app.customer("erin");
    let id = app.order(&erin, product, 1).await.expect("placed").order.id;
    app.wait_for_status(id, OrderStatus::Processing, SAGA_DONE)
        .await;
    let cancelled = erin.cancel_order(id).await.expect("cancelled");
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    let gateway = app.running().stand_in_gateway().unwrap().clone();
    let refunded = commerce_testkit::eventually(SAGA_DONE, || {
        let gateway = gateway.clone();
        async move { gateway.stats().refunds == 1 }
    })
    .await;
    assert!(
        refunded,
        "the charge was not refunded: {:?}",
        gateway.stats()
    );
    app.assert_audit_clean().await;
    app.stop().await;
}

/// An order placed CREATED starts the saga with its placement event (decision 0018); one
/// placed BACKORDERED starts it with `order.created` when a receipt serves its last unit, and
/// is charged its whole amount at the price it was placed at (not only the units served by the
/// receipt).
async fn a_backorder_served_later_is_paid_in_full(transport: Transport) {
    let app = TestApp::start(transport).await;
    let product = app.product("BACK-1", 250, 1).await;
    let alice = app.customer("alice");
    let waiting = alice
        .place_order(&PlaceOrder::one(product, 3).on_shortage(Shortage::Backorder))
        .await
        .expect("placed");
    assert_eq!(waiting.status, StatusCode::ACCEPTED, "{waiting:?}");
    let id = waiting.order.id;
    let receipt = app
        .admin
        .receive_stock(
            product,
            &Inbound {
                quantity: 2,
                note: None,
            },
        )
        .await
        .expect("received");
    assert_eq!(receipt.allocated_order_ids, [id]);
    app.wait_for_status(id, OrderStatus::Processing, SAGA_DONE)
        .await;
    let (amount,): (i64,) =
        sqlx::query_as("SELECT amount FROM payment.payments WHERE order_id = $1")
            .bind(id)
            .fetch_one(app.db.pool())
            .await
            .expect("one payment");
    assert_eq!(amount, 750);
    let starts: Vec<(String,)> = sqlx::query_as(
        "SELECT event_type FROM commerce_outbox.event \
         WHERE aggregate_id = $1 AND event_type IN ('order.placed', 'order.created') \
         ORDER BY aggregate_seq",
    )
    .bind(id.to_string())
    .fetch_all(app.db.pool())
    .await
    .unwrap();
    let starts: Vec<&str> = starts.iter().map(|(kind,)| kind.as_str()).collect();
    assert_eq!(starts, ["order.placed", "order.created"]);
    app.assert_audit_clean().await;
    app.stop().await;
}
