//! The outbox with Postgres alone: events relayed in-process to two consumer groups, each
//! applying every event once, in order per order; a rolled-back event never delivered.
//!
//! Needs only Postgres (`DATABASE_URL`, default the local server's `postgres` database):
//!
//! ```text
//! cargo run -p commerce-examples --bin outbox-in-process
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use commerce_outbox::{
    enqueue, DomainEvent, Envelope, EventHandler, EventTransport, HandlerError, InProcessTransport,
    InboxConsumer, NewEvent, Relay, TopicRoutes, MIGRATOR,
};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

#[derive(Debug, Serialize, Deserialize)]
struct OrderEvent {
    order_id: String,
    step: String,
}

impl DomainEvent for OrderEvent {
    const EVENT_TYPE: &'static str = "order.progressed";
    const AGGREGATE_TYPE: &'static str = "order";
    fn aggregate_id(&self) -> String {
        self.order_id.clone()
    }
}

/// Prints each event once per consumer group, however often it is delivered.
struct PrintStep {
    group: &'static str,
}

#[async_trait]
impl EventHandler for PrintStep {
    async fn handle(
        &self,
        _conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        let event: OrderEvent = envelope.decode()?;
        println!(
            "{:<8} applied {} #{}: {}",
            self.group, event.order_id, envelope.aggregate_seq, event.step
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pool =
        commerce_testkit::scratch_database("commerce_example_outbox_in_process", &[&MIGRATOR], 5)
            .await?;
    let events: Arc<dyn EventTransport> = Arc::new(InProcessTransport::new());
    events.ensure_topics(&["orders"]).await?;
    let routes = TopicRoutes::new().route("order", "orders");

    // Consumers first: a message reaches the groups subscribed when it is published.
    let consumers = [("billing", "billing"), ("shipping", "shipping")].map(|(group, inbox)| {
        InboxConsumer::with_transport(pool.clone(), Arc::clone(&events), group, inbox)
            .topics(["orders"])
            .build(PrintStep { group })
            .map(InboxConsumer::spawn)
    });
    let [billing, shipping] = consumers;
    let (billing, shipping) = (billing?, shipping?);
    let relay = Relay::with_transport(pool.clone(), Arc::clone(&events))
        .build()?
        .spawn();

    // A rolled-back transaction: its event never exists, so no group ever sees it.
    let mut tx = pool.begin().await?;
    let dropped = OrderEvent {
        order_id: "o-0".into(),
        step: "never happened".into(),
    };
    enqueue(&mut tx, &NewEvent::from_event(&routes, &dropped)?).await?;
    tx.rollback().await?;

    // Two orders, three steps each, one transaction per step.
    for step in ["placed", "paid", "shipped"] {
        for order_id in ["o-1", "o-2"] {
            let event = OrderEvent {
                order_id: order_id.into(),
                step: step.into(),
            };
            let mut tx = pool.begin().await?;
            enqueue(&mut tx, &NewEvent::from_event(&routes, &event)?).await?;
            tx.commit().await?;
        }
    }

    // The relay counts an event published only once both groups applied it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while relay.published_total() < 6 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("billing:  {:?}", billing.stats());
    println!("shipping: {:?}", shipping.stats());
    println!("relay:    {:?}", relay.metrics().await?);
    // Consumers first, so the relay has nobody left to wait for.
    billing.shutdown().await?;
    shipping.shutdown().await?;
    relay.shutdown().await?;
    Ok(())
}
