//! Review C1, second half: an event the order service can never apply (here a payment answer
//! whose payload does not parse, sent ahead of the real answer for the same order) is set
//! aside as a consumer dead letter, not retried in front of the answers behind it, on both
//! event transports; admins list it, a replay that still fails keeps it, a discard drops it.

#[macro_use]
mod common;

use std::time::Duration;

use commerce_outbox::{enqueue, NewEvent};
use commerce_testkit::unique_name;
use common::{TestApp, Transport};
use reqwest::{Method, StatusCode};
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
    let placed = app.order(&erin, product, 1).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{placed:?}");
    let id = placed.body["id"].as_str().unwrap().to_owned();

    // A payment answer for the same order (same aggregate, so the same partition and ahead
    // of the real answer in its sequence) whose amount is not a number.
    let mut conn = app.db.pool().acquire().await.unwrap();
    enqueue(
        &mut conn,
        &NewEvent::new(
            format!("{prefix}.payments"),
            "payment.failed",
            "payment",
            id.clone(),
            json!({ "order_id": id, "amount": "forty", "reason": "garbled" }),
        ),
    )
    .await
    .unwrap();
    drop(conn);

    // The real approval behind it applies.
    app.wait_for_status(&id, "PROCESSING", Duration::from_secs(20))
        .await;

    let consumer = format!("{prefix}.order-service");
    let listed = app
        .get(
            &format!("/api/v1/admin/consumer-dead-letters?consumer={consumer}"),
            &app.admin,
        )
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{listed:?}");
    let letters = listed.body.as_array().expect("a list");
    assert_eq!(letters.len(), 1, "{listed:?}");
    assert_eq!(letters[0]["event_type"], "payment.failed");
    let event_id = letters[0]["event_id"].as_str().unwrap().to_owned();

    // Replaying it changes nothing: it still cannot be applied, and stays.
    let path = format!("/api/v1/admin/consumer-dead-letters/{consumer}/{event_id}");
    let replayed = app
        .request(
            Method::POST,
            &format!("{path}/replay"),
            &app.admin,
            None,
            &[],
        )
        .await;
    replayed.assert_error(StatusCode::CONFLICT, "replay_failed");
    let discarded = app
        .request(Method::DELETE, &path, &app.admin, None, &[])
        .await;
    assert_eq!(discarded.status, StatusCode::NO_CONTENT, "{discarded:?}");
    let again = app
        .request(Method::DELETE, &path, &app.admin, None, &[])
        .await;
    again.assert_error(StatusCode::NOT_FOUND, "dead_letter_not_found");
    assert_eq!(app.status(&id).await, "PROCESSING");
    app.assert_audit_clean().await;
    app.stop().await;
}
