//! Review C1, second half: an event the order service can never apply (here a payment answer
//! whose payload does not parse, sent ahead of the real answer for the same order) is set
//! aside as a consumer dead letter, not retried in front of the answers behind it, on both
//! event transports; admins list it, a replay that still fails keeps it, a discard drops it.

#[macro_use]
mod common;

use std::time::Duration;

use commerce_client::{ConsumerDeadLetterQuery, OrderStatus, StatusCode};
use commerce_outbox::{enqueue, NewEvent};
use commerce_testkit::unique_name;
use common::{expect_api_error, TestApp, Transport};
use serde_json::json;

on_both_transports!(an_answer_that_can_never_be_applied_is_set_aside_and_the_next_one_applies);

async fn an_answer_that_can_never_be_applied_is_set_aside_and_the_next_one_applies(
    transport: Transport,
) {
    let prefix = unique_name("poison");
    let app = TestApp::start_with(transport, |config| {
        config.events.prefix = prefix.clone();
    })
    .await;
    // The gateway answers after a second: time to put the bad answer in front of the real one.
    app.running()
        .stand_in_gateway()
        .unwrap()
        .set_latency(Duration::from_secs(1));
    let product = app.product("POISON-1", 500, 5).await;
    let erin = app.customer("erin");
    let placed = app.order(&erin, product, 1).await.expect("placed");
    assert_eq!(placed.status, StatusCode::CREATED, "{placed:?}");
    let id = placed.order.id;

    // A payment answer for the same order (same aggregate, so the same partition and ahead
    // of the real answer in its sequence) whose amount is not a number.
    let mut conn = app.db.pool().acquire().await.unwrap();
    enqueue(
        &mut conn,
        &NewEvent::new(
            format!("{prefix}.payments"),
            "payment.failed",
            "payment",
            id.to_string(),
            json!({ "order_id": id, "amount": "forty", "reason": "garbled" }),
        ),
    )
    .await
    .unwrap();
    drop(conn);

    // The real approval behind it applies.
    app.wait_for_status(id, OrderStatus::Processing, Duration::from_secs(20))
        .await;

    let consumer = format!("{prefix}.order-service");
    let letters = app
        .admin
        .consumer_dead_letters(&ConsumerDeadLetterQuery {
            consumer: consumer.clone(),
            limit: None,
        })
        .await
        .expect("listed");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].event_type, "payment.failed");
    let event_id = letters[0].event_id;

    // Replaying it changes nothing: it still cannot be applied, and stays.
    expect_api_error(
        app.admin
            .replay_consumer_dead_letter(&consumer, event_id)
            .await,
        StatusCode::CONFLICT,
        "replay_failed",
    );
    app.admin
        .discard_consumer_dead_letter(&consumer, event_id)
        .await
        .expect("discarded");
    expect_api_error(
        app.admin
            .discard_consumer_dead_letter(&consumer, event_id)
            .await,
        StatusCode::NOT_FOUND,
        "dead_letter_not_found",
    );
    assert_eq!(app.status(id).await, OrderStatus::Processing);
    app.assert_audit_clean().await;
    app.stop().await;
}
