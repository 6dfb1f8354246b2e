//! Enqueue an event in a business transaction, relay it to Kafka, consume it idempotently.
//!
//! Needs Postgres (`DATABASE_URL`, default the local server's `postgres` database) and a
//! Kafka-protocol broker (`KAFKA_BROKERS`, default 127.0.0.1:9092):
//!
//! ```text
//! cargo run -p commerce-examples --bin outbox-basics
//! ```

use std::time::Duration;

use async_trait::async_trait;
use commerce_outbox::{
    enqueue, ensure_topics, DomainEvent, Envelope, EventHandler, HandlerError, InboxConsumer,
    NewEvent, Relay, TopicRoutes, TopicSettings, MIGRATOR,
};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

#[derive(Debug, Serialize, Deserialize)]
struct OrderCreated {
    order_id: String,
    total_cents: i64,
}

impl DomainEvent for OrderCreated {
    const EVENT_TYPE: &'static str = "order.created";
    const AGGREGATE_TYPE: &'static str = "order";
    fn aggregate_id(&self) -> String {
        self.order_id.clone()
    }
}

/// A consumer that prints each order once, however often Kafka delivers it.
struct PrintOrder;

#[async_trait]
impl EventHandler for PrintOrder {
    async fn handle(
        &self,
        _conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        let order: OrderCreated = envelope.decode()?;
        println!(
            "consumed {} #{} for {}: {} cents",
            envelope.event_type, envelope.aggregate_seq, order.order_id, order.total_cents
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let brokers = commerce_testkit::kafka_brokers();
    let pool =
        commerce_testkit::scratch_database("commerce_example_outbox", &[&MIGRATOR], 5).await?;

    let topic = format!("example-orders-{}", std::process::id());
    ensure_topics(&brokers, &[&topic], TopicSettings::default()).await?;
    let routes = TopicRoutes::new().route("order", &topic);

    let relay = Relay::builder(pool.clone(), &brokers).build()?.spawn();
    let consumer = InboxConsumer::builder(
        pool.clone(),
        &brokers,
        format!("{topic}-printer"),
        "order-printer",
    )
    .topics([topic.as_str()])
    .build(PrintOrder)?
    .spawn();

    let order_id = format!("o-{}", uuid::Uuid::now_v7());
    // A rolled-back transaction: its event never exists.
    let mut tx = pool.begin().await?;
    let dropped = OrderCreated {
        order_id: order_id.clone(),
        total_cents: -1,
    };
    enqueue(&mut tx, &NewEvent::from_event(&routes, &dropped)?).await?;
    tx.rollback().await?;
    // A committed one: published within milliseconds of the commit.
    let mut tx = pool.begin().await?;
    let created = OrderCreated {
        order_id,
        total_cents: 1999,
    };
    let id = enqueue(&mut tx, &NewEvent::from_event(&routes, &created)?).await?;
    tx.commit().await?;
    println!("committed event {id}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while consumer.stats().applied == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("relay metrics: {:?}", relay.metrics().await?);
    consumer.shutdown().await?;
    relay.shutdown().await?;
    Ok(())
}
