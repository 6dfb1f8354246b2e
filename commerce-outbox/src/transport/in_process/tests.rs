//! The in-process transport alone, without a database: routing, answers, holds, timeouts.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::InProcessTransport;
use crate::error::Error;
use crate::transport::tests::message;
use crate::transport::{
    DeadLetter, Delivery, DeliveryContent, EventTransport, OutboundMessage, PublishOutcome,
    Subscription,
};

fn transport() -> Arc<InProcessTransport> {
    Arc::new(
        InProcessTransport::builder()
            .ack_timeout(Duration::from_secs(5))
            .build(),
    )
}

fn publish(
    transport: &Arc<InProcessTransport>,
    messages: Vec<OutboundMessage>,
) -> JoinHandle<Vec<PublishOutcome>> {
    let transport = Arc::clone(transport);
    tokio::spawn(async move { transport.publish(&messages).await })
}

/// (aggregate, seq) of a delivery.
fn seq_of(delivery: &Delivery) -> (String, i64) {
    let envelope = delivery.envelope().expect("an event");
    (envelope.aggregate_id.clone(), envelope.aggregate_seq)
}

/// Receives and acknowledges `count` deliveries; returns them in arrival order.
async fn take(subscription: &mut Box<dyn Subscription>, count: usize) -> Vec<(String, i64)> {
    let mut seen = Vec::new();
    for _ in 0..count {
        let delivery = tokio::time::timeout(Duration::from_secs(5), subscription.next())
            .await
            .expect("a delivery in time")
            .expect("a delivery");
        seen.push(seq_of(&delivery));
        subscription.acknowledge(&delivery).await.unwrap();
    }
    seen
}

#[tokio::test]
async fn a_topic_nobody_created_refuses_and_holds_the_aggregate_while_others_go_through() {
    let transport = transport();
    transport.ensure_topics(&["orders"]).await.unwrap();
    let outcomes = transport
        .publish(&[
            message("nowhere", "a", 1),
            message("orders", "a", 2),
            message("orders", "b", 1),
        ])
        .await;
    let PublishOutcome::Refused(error) = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert!(error.contains("topic nowhere does not exist"), "{error}");
    assert_eq!(outcomes[1], PublishOutcome::Held);
    assert_eq!(
        outcomes[2],
        PublishOutcome::Published,
        "a created topic without subscribers takes messages (for nobody)"
    );
}

#[tokio::test]
async fn every_group_gets_every_message_and_the_publish_waits_for_all_of_them() {
    let transport = transport();
    let mut billing = transport.subscribe("billing", &["orders"]).unwrap();
    let mut shipping = transport.subscribe("shipping", &["orders"]).unwrap();
    assert_eq!(
        transport.subscribers("orders"),
        vec![("billing".to_owned(), 1), ("shipping".to_owned(), 1)]
    );
    let publishing = publish(
        &transport,
        vec![message("orders", "a", 1), message("orders", "a", 2)],
    );
    assert_eq!(
        take(&mut billing, 2).await,
        [("a".into(), 1), ("a".into(), 2)]
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !publishing.is_finished(),
        "not published while shipping has not applied it"
    );
    assert_eq!(
        take(&mut shipping, 2).await,
        [("a".into(), 1), ("a".into(), 2)]
    );
    assert_eq!(
        publishing.await.unwrap(),
        vec![PublishOutcome::Published, PublishOutcome::Published]
    );
}

#[tokio::test]
async fn a_refusal_holds_the_aggregates_later_messages_in_that_group_only() {
    let transport = transport();
    let mut picky = transport.subscribe("picky", &["orders"]).unwrap();
    let mut easy = transport.subscribe("easy", &["orders"]).unwrap();
    let publishing = publish(
        &transport,
        vec![
            message("orders", "a", 1),
            message("orders", "a", 2),
            message("orders", "b", 1),
        ],
    );
    let first = picky.next().await.unwrap();
    assert_eq!(seq_of(&first), ("a".into(), 1));
    assert!(picky.can_refuse());
    picky.refuse(&first, "handler failed").await.unwrap();
    // a/2 is held without being delivered: b/1 comes next.
    assert_eq!(take(&mut picky, 1).await, [("b".into(), 1)]);
    assert_eq!(
        take(&mut easy, 3).await,
        [("a".into(), 1), ("a".into(), 2), ("b".into(), 1)],
        "the other group applies everything"
    );
    let outcomes = publishing.await.unwrap();
    assert_eq!(
        outcomes[0],
        PublishOutcome::Refused("consumer group picky: handler failed".into())
    );
    assert_eq!(outcomes[1], PublishOutcome::Held);
    assert_eq!(outcomes[2], PublishOutcome::Published);
}

#[tokio::test]
async fn members_of_a_group_share_the_aggregates_and_each_keeps_its_aggregates_order() {
    let transport = transport();
    let first = transport.subscribe("group", &["orders"]).unwrap();
    let second = transport.subscribe("group", &["orders"]).unwrap();
    let mut messages = Vec::new();
    for seq in 1..=3 {
        for aggregate in 0..20 {
            messages.push(message("orders", &format!("o-{aggregate}"), seq));
        }
    }
    let publishing = publish(&transport, messages);
    let collect = |mut subscription: Box<dyn Subscription>| {
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Ok(Ok(delivery)) =
                tokio::time::timeout(Duration::from_millis(300), subscription.next()).await
            {
                seen.push(seq_of(&delivery));
                subscription.acknowledge(&delivery).await.unwrap();
            }
            seen
        })
    };
    let (first, second) = (collect(first), collect(second));
    assert!(publishing
        .await
        .unwrap()
        .iter()
        .all(|o| *o == PublishOutcome::Published));
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(first.len() + second.len(), 60, "each message to one member");
    let by_aggregate = |seen: &[(String, i64)]| {
        let mut map = std::collections::BTreeMap::<String, Vec<i64>>::new();
        for (aggregate, seq) in seen {
            map.entry(aggregate.clone()).or_default().push(*seq);
        }
        map
    };
    let (first, second) = (by_aggregate(&first), by_aggregate(&second));
    assert!(!first.is_empty() && !second.is_empty(), "both members work");
    assert!(
        first
            .keys()
            .all(|aggregate| !second.contains_key(aggregate)),
        "an aggregate stays with one member"
    );
    assert!(
        first
            .values()
            .chain(second.values())
            .all(|seqs| *seqs == [1, 2, 3]),
        "each aggregate in order"
    );
}

#[tokio::test(start_paused = true)]
async fn a_group_that_does_not_answer_makes_the_message_unavailable_and_the_rest_is_skipped() {
    let transport = Arc::new(
        InProcessTransport::builder()
            .ack_timeout(Duration::from_secs(2))
            .build(),
    );
    let mut stuck = transport.subscribe("stuck", &["orders"]).unwrap();
    let outcomes = transport
        .publish(&[message("orders", "a", 1), message("orders", "a", 2)])
        .await;
    assert!(
        outcomes.iter().all(
            |o| matches!(o, PublishOutcome::Unavailable(e) if e.contains("did not apply it within"))
        ),
        "{outcomes:?}"
    );
    // The next publish of the same rows is what the group gets; the abandoned copies are
    // skipped.
    let publishing = publish(&transport, vec![message("orders", "a", 1)]);
    tokio::task::yield_now().await;
    assert_eq!(take(&mut stuck, 1).await, [("a".into(), 1)]);
    assert_eq!(publishing.await.unwrap(), vec![PublishOutcome::Published]);
}

#[tokio::test]
async fn a_member_that_leaves_returns_its_messages_as_unavailable() {
    let transport = transport();
    let mut leaving = transport.subscribe("group", &["orders"]).unwrap();
    let publishing = publish(
        &transport,
        vec![message("orders", "a", 1), message("orders", "a", 2)],
    );
    let first = leaving.next().await.unwrap();
    leaving.close().await;
    assert!(matches!(
        leaving.next().await,
        Err(Error::SubscriptionClosed)
    ));
    let _ = first;
    let outcomes = publishing.await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, PublishOutcome::Unavailable(e) if e.contains("left"))),
        "{outcomes:?}"
    );
    assert!(
        transport.subscribers("orders").is_empty(),
        "the group is gone"
    );
}

#[tokio::test]
async fn a_full_queue_makes_the_publish_wait_for_the_consumer() {
    let transport = Arc::new(
        InProcessTransport::builder()
            .queue_capacity(2)
            .ack_timeout(Duration::from_secs(5))
            .build(),
    );
    // Messages go out in order, each to "fast" then to "slow" (groups by name). "slow" reads
    // nothing yet: once its queue holds 2, the publish waits, so "fast" gets only 3.
    let mut fast = transport.subscribe("fast", &["orders"]).unwrap();
    let mut slow = transport.subscribe("slow", &["orders"]).unwrap();
    let messages: Vec<_> = (1..=50).map(|seq| message("orders", "a", seq)).collect();
    let publishing = publish(&transport, messages);
    assert_eq!(take(&mut fast, 3).await.len(), 3);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), fast.next())
            .await
            .is_err(),
        "the publish waits for room in slow's queue"
    );
    // Both queues are bounded: each group must keep reading for the publish to go on.
    let draining = tokio::spawn(async move { take(&mut fast, 47).await.len() });
    let seen = take(&mut slow, 50).await;
    assert_eq!(
        seen,
        (1..=50).map(|s| ("a".to_owned(), s)).collect::<Vec<_>>()
    );
    assert_eq!(draining.await.unwrap(), 47);
    assert!(publishing
        .await
        .unwrap()
        .iter()
        .all(|o| *o == PublishOutcome::Published));
}

#[tokio::test]
async fn a_dead_letter_goes_to_the_dlq_subscribers_and_needs_the_dlq_topic() {
    let transport = transport();
    let poison = message("orders", "a", 1);
    let letter = DeadLetter {
        message: &poison,
        error: "handler failed",
        attempts: 3,
    };
    assert!(matches!(
        transport.publish_dead_letter(letter).await,
        Err(Error::UnknownTopic { topic }) if topic == "orders.dlq"
    ));
    transport.ensure_topics(&["orders"]).await.unwrap();
    let mut watcher = transport.subscribe("watcher", &["orders.dlq"]).unwrap();
    let sending = {
        let transport = Arc::clone(&transport);
        let poison = poison.clone();
        tokio::spawn(async move {
            transport
                .publish_dead_letter(DeadLetter {
                    message: &poison,
                    error: "handler failed",
                    attempts: 3,
                })
                .await
        })
    };
    let delivery = watcher.next().await.unwrap();
    assert_eq!(delivery.topic, "orders.dlq");
    assert_eq!(delivery.header("error"), Some("handler failed"));
    let DeliveryContent::DeadLetter(record) = &delivery.content else {
        panic!("{delivery:?}");
    };
    assert_eq!(record.envelope, poison.envelope);
    assert_eq!(record.attempts, 3);
    watcher.acknowledge(&delivery).await.unwrap();
    sending.await.unwrap().unwrap();
}
