//! Order status streams (SSE) under abuse and failure: caps per user and overall, a maximum
//! lifetime, the token's expiry, ids that let a client resume with `Last-Event-ID`, a change
//! whose notification was lost, and polling that does not need the request pool.

mod common;

use std::time::Duration;

use commerce_client::OrderStatus;
use commerce_core::{Commerce, OrderId};
use common::faults::HeldPool;
use common::sse::{EventStream, Next};
use common::{TestApp, Transport};
use reference_app::auth::Role;
use reference_app::services::order::watch::{NotifyStatusChanges, CHANNEL};
use reqwest::StatusCode;
use uuid::Uuid;

const SAGA_DONE: Duration = Duration::from_secs(30);
const EVENT: Duration = Duration::from_secs(10);

/// A PROCESSING order of `user`'s (a new product each time); returns its id.
async fn processing_order(app: &TestApp, sku: &str, user: &str) -> String {
    let product = app.product(sku, 100, 10).await;
    let placed = app.order(&app.customer(user), product, 1).await.unwrap();
    assert_eq!(placed.status, StatusCode::CREATED, "{placed:?}");
    app.wait_for_status(placed.order.id, OrderStatus::Processing, SAGA_DONE)
        .await;
    placed.order.id.to_string()
}

/// Moves `order` to `to` on the test's own connection to the app's database, like another
/// instance would; `notify` says whether the change is announced on the status channel.
async fn change_outside(app: &TestApp, order: &str, to: commerce_core::OrderStatus, notify: bool) {
    let mut commerce = Commerce::builder(app.db.pool().clone());
    if notify {
        commerce = commerce.hook(NotifyStatusChanges);
    }
    commerce
        .build()
        .transition_order(OrderId(order.parse().unwrap()), to, "changed by the test")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_caps_get_429_and_a_closed_one_frees_its_place() {
    let app = TestApp::start_with(Transport::InProcess, |config| {
        config.streams.max_per_user = 2;
        config.streams.max_total = 3;
    })
    .await;
    let (alice, bob) = (
        app.token("alice", Role::Customer),
        app.token("bob", Role::Customer),
    );
    let mine = processing_order(&app, "CAP-1", "alice").await;
    let theirs = processing_order(&app, "CAP-2", "bob").await;

    let first = EventStream::open(&app, &mine, &alice, None).await.unwrap();
    let _second = EventStream::open(&app, &mine, &alice, None).await.unwrap();
    let refused = EventStream::open(&app, &mine, &alice, None)
        .await
        .err()
        .expect("a third stream of one user is refused");
    refused.assert_error(StatusCode::TOO_MANY_REQUESTS, "too_many_streams");
    assert!(refused.headers.contains_key("retry-after"), "{refused:?}");

    // Another user has their own share, up to the overall cap.
    let _bobs = EventStream::open(&app, &theirs, &bob, None).await.unwrap();
    EventStream::open(&app, &theirs, &bob, None)
        .await
        .err()
        .expect("the fourth stream overall is refused")
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "too_many_streams");

    // A stream the client closed gives its place back.
    drop(first);
    let reopened = commerce_testkit::eventually(Duration::from_secs(20), || async {
        EventStream::open(&app, &mine, &alice, None).await.is_ok()
    })
    .await;
    assert!(reopened, "a closed stream kept its place");

    let text = app.admin.metrics().await.unwrap();
    assert!(
        text.contains("sse_streams_refused_total"),
        "refusals are not counted"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_after_its_maximum_lifetime() {
    let app = TestApp::start_with(Transport::InProcess, |config| {
        config.streams.max_lifetime = Duration::from_secs(2);
    })
    .await;
    let alice = app.token("alice", Role::Customer);
    let id = processing_order(&app, "LIFE-1", "alice").await;
    let mut stream = EventStream::open(&app, &id, &alice, None).await.unwrap();
    assert_eq!(stream.event(EVENT).await.status(), "PROCESSING");
    match stream.next(Duration::from_secs(8)).await {
        Next::Ended => {}
        other => panic!("a stream past its lifetime did not end: {other:?}"),
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_the_token_that_opened_it_expires() {
    let app = TestApp::start(Transport::InProcess).await;
    let id = processing_order(&app, "EXP-1", "alice").await;
    let short = app
        .auth
        .issue("alice", Role::Customer, Duration::from_secs(2))
        .unwrap();
    let mut stream = EventStream::open(&app, &id, &short, None).await.unwrap();
    assert_eq!(stream.event(EVENT).await.status(), "PROCESSING");
    match stream.next(Duration::from_secs(8)).await {
        Next::Ended => {}
        other => panic!("a stream outlived its token: {other:?}"),
    }
    // Reconnecting with the expired token is refused.
    EventStream::open(&app, &id, &short, None)
        .await
        .err()
        .expect("an expired token is refused")
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resuming_with_last_event_id_gets_exactly_the_changes_after_it() {
    let app = TestApp::start(Transport::InProcess).await;
    let alice = app.token("alice", Role::Customer);
    let product = app.product("RESUME-1", 100, 10).await;
    // A slow gateway keeps the order CREATED while the stream opens.
    app.running()
        .stand_in_gateway()
        .unwrap()
        .set_latency(Duration::from_millis(1_000));
    let placed = app.order(&app.customer("alice"), product, 1).await.unwrap();
    let order = placed.order.id;
    let id = order.to_string();

    let mut stream = EventStream::open(&app, &id, &alice, None).await.unwrap();
    let created = stream.event(EVENT).await;
    let processing = stream.event(SAGA_DONE).await;
    assert_eq!(
        [created.status(), processing.status()],
        ["CREATED", "PROCESSING"]
    );
    assert_eq!(
        [created.id.as_deref(), processing.id.as_deref()],
        [Some("1"), Some("2")]
    );
    drop(stream);

    // Two changes while the client is away.
    app.admin.ship_order(order).await.unwrap();
    app.admin.deliver_order(order).await.unwrap();
    let mut resumed = EventStream::open(&app, &id, &alice, processing.id.as_deref())
        .await
        .unwrap();
    let missed = resumed.until_end(EVENT).await;
    let seen: Vec<(&str, &str)> = missed
        .iter()
        .map(|e| (e.id.as_deref().unwrap_or("-"), e.status()))
        .collect();
    assert_eq!(seen, [("3", "SHIPPED"), ("4", "DELIVERED")]);

    // After the final event there is nothing more: 204 tells the client to stop
    // reconnecting.
    let done = EventStream::open(&app, &id, &alice, Some("4"))
        .await
        .err()
        .expect("nothing after the final event");
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{done:?}");
    // Ids this stream never gave out are refused.
    for bad in ["five", "-1", "5"] {
        EventStream::open(&app, &id, &alice, Some(bad))
            .await
            .err()
            .expect("a made-up Last-Event-ID is refused")
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_notification_was_lost_arrives_while_other_orders_are_notified() {
    let app = TestApp::start(Transport::InProcess).await;
    let alice = app.token("alice", Role::Customer);
    let id = processing_order(&app, "LOST-1", "alice").await;
    let mut stream = EventStream::open(&app, &id, &alice, None).await.unwrap();
    assert_eq!(stream.event(EVENT).await.status(), "PROCESSING");

    // Another order's status is announced every 300 ms, as on a busy system.
    let busy = {
        let pool = app.db.pool().clone();
        let other = Uuid::now_v7().to_string();
        tokio::spawn(async move {
            loop {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(&other)
                    .execute(&pool)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    // This order changes without a notification (as when the listener was reconnecting).
    change_outside(&app, &id, commerce_core::OrderStatus::Shipped, false).await;
    let shipped = stream.next(Duration::from_secs(5)).await;
    busy.abort();
    match shipped {
        Next::Event(event) => assert_eq!(event.status(), "SHIPPED"),
        other => panic!("the change without a notification never arrived: {other:?}"),
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_read_without_the_request_pool() {
    let app = TestApp::start_with(Transport::InProcess, |config| {
        config.database.max_connections = 1;
        config.http.request_timeout = Duration::from_secs(30);
    })
    .await;
    let alice = app.token("alice", Role::Customer);
    let id = processing_order(&app, "POOL-1", "alice").await;
    let mut stream = EventStream::open(&app, &id, &alice, None).await.unwrap();
    assert_eq!(stream.event(EVENT).await.status(), "PROCESSING");

    let busy = app.product("POOL-2", 100, 10).await;
    let held = HeldPool::hold(&app, busy).await;
    change_outside(&app, &id, commerce_core::OrderStatus::Shipped, true).await;
    let shipped = stream.next(Duration::from_secs(5)).await;
    let blocked = held.release().await;
    match shipped {
        Next::Event(event) => assert_eq!(event.status(), "SHIPPED"),
        other => panic!("the stream waited for the request pool: {other:?}"),
    }
    assert_eq!(blocked.status, StatusCode::CREATED, "{blocked:?}");
    app.stop().await;
}
