//! The consumer side on both transports (each scenario runs as `<scenario>::kafka` and
//! `<scenario>::in_process`): inbox consumers in a group, and a choreographed saga step.

mod common;

use std::time::Duration;

use async_trait::async_trait;
use commerce_outbox::saga::{record_saga_step, saga_log, Saga, SagaStatus, SagaStep, StepError};
use commerce_outbox::{
    enqueue, DomainEvent, Envelope, InboxConsumer, NewEvent, Relay, TopicRoutes, MIGRATOR,
};
use commerce_testkit::{unique_name, TestDb};
use common::{commit_event, eventually, Kind, RecordEffect, Transports};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

on_both_transports!(
    two_group_members_share_the_work_and_apply_each_event_once,
    a_saga_step_commits_with_its_events_and_a_failed_step_emits_its_compensation,
);

async fn two_group_members_share_the_work_and_apply_each_event_once(kind: Kind) {
    const EVENTS: usize = 40;
    let db = TestDb::new(&[&MIGRATOR]).await;
    let transports = Transports::new(kind);
    let topic = transports.new_topic("outbox-group").await;
    sqlx::query("CREATE TABLE effects (event_id uuid NOT NULL)")
        .execute(db.pool())
        .await
        .unwrap();
    let group = unique_name("group");
    let member = || {
        InboxConsumer::with_transport(
            db.pool().clone(),
            transports.shared.clone(),
            &group,
            "effects",
        )
        .topics([topic.as_str()])
        .build(RecordEffect)
        .unwrap()
        .spawn()
    };
    let (first, second) = (member(), member());
    let relay = Relay::with_transport(db.pool().clone(), transports.for_relay())
        .build()
        .unwrap()
        .spawn();
    for n in 0..EVENTS {
        commit_event(db.pool(), &topic, &format!("order-{n}"), n as i64).await;
    }
    eventually(Duration::from_secs(45), "every event applied", || {
        let total = first.stats().applied + second.stats().applied;
        async move { total >= EVENTS as u64 }
    })
    .await;
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM effects")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!((rows, distinct), (EVENTS as i64, EVENTS as i64));
    println!("member stats: {:?} / {:?}", first.stats(), second.stats());
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    relay.shutdown().await.unwrap();
}

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: String,
    product: String,
    quantity: i32,
}

impl DomainEvent for OrderPlaced {
    const EVENT_TYPE: &'static str = "order.placed";
    const AGGREGATE_TYPE: &'static str = "order";
    fn aggregate_id(&self) -> String {
        self.order_id.clone()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct StockReserved {
    order_id: String,
}

impl DomainEvent for StockReserved {
    const EVENT_TYPE: &'static str = "stock.reserved";
    const AGGREGATE_TYPE: &'static str = "order";
    fn aggregate_id(&self) -> String {
        self.order_id.clone()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct OrderRejected {
    order_id: String,
    reason: String,
}

impl DomainEvent for OrderRejected {
    const EVENT_TYPE: &'static str = "order.rejected";
    const AGGREGATE_TYPE: &'static str = "order";
    fn aggregate_id(&self) -> String {
        self.order_id.clone()
    }
}

struct ReserveStock {
    routes: TopicRoutes,
}

#[async_trait]
impl SagaStep for ReserveStock {
    type Trigger = OrderPlaced;

    fn name(&self) -> &'static str {
        "reserve-stock"
    }

    async fn run(
        &self,
        conn: &mut PgConnection,
        order: &OrderPlaced,
        _envelope: &Envelope,
    ) -> Result<Vec<NewEvent>, StepError> {
        // Written before the check on purpose: a failed step must leave no trace.
        sqlx::query("INSERT INTO reservations (order_id, quantity) VALUES ($1, $2)")
            .bind(&order.order_id)
            .bind(order.quantity)
            .execute(&mut *conn)
            .await?;
        let reserved = sqlx::query(
            "UPDATE stock SET available = available - $2 WHERE product = $1 AND available >= $2",
        )
        .bind(&order.product)
        .bind(order.quantity)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if reserved == 0 {
            return Err(StepError::Failed("out of stock".into()));
        }
        let reserved = StockReserved {
            order_id: order.order_id.clone(),
        };
        Ok(vec![NewEvent::from_event(&self.routes, &reserved)
            .map_err(|e| StepError::Retry(Box::new(e)))?])
    }

    fn compensate(
        &self,
        order: &OrderPlaced,
        _envelope: &Envelope,
        reason: &str,
    ) -> commerce_outbox::Result<Vec<NewEvent>> {
        let rejected = OrderRejected {
            order_id: order.order_id.clone(),
            reason: reason.to_owned(),
        };
        Ok(vec![NewEvent::from_event(&self.routes, &rejected)?])
    }
}

async fn a_saga_step_commits_with_its_events_and_a_failed_step_emits_its_compensation(kind: Kind) {
    let db = TestDb::new(&[&MIGRATOR]).await;
    let transports = Transports::new(kind);
    let topic = transports.new_topic("outbox-saga").await;
    let routes = TopicRoutes::new().route("order", &topic);
    for sql in [
        "CREATE TABLE stock (product text PRIMARY KEY, available int NOT NULL)",
        "CREATE TABLE reservations (order_id text NOT NULL, quantity int NOT NULL)",
        "INSERT INTO stock VALUES ('sku-1', 5)",
    ] {
        sqlx::query(sql).execute(db.pool()).await.unwrap();
    }
    let saga = Saga::new("order-fulfilment").on(ReserveStock {
        routes: routes.clone(),
    });
    assert_eq!(saga.event_types(), vec!["order.placed"]);
    let consumer = InboxConsumer::with_transport(
        db.pool().clone(),
        transports.shared.clone(),
        unique_name("stock"),
        "stock-service",
    )
    .topics([topic.as_str()])
    .build(saga)
    .unwrap()
    .spawn();
    let relay = Relay::with_transport(db.pool().clone(), transports.for_relay())
        .build()
        .unwrap()
        .spawn();

    let pool = db.pool().clone();
    // o-1 and o-2 are different aggregates, so they may land on different partitions (or
    // members), which a consumer reads in no particular order: o-2 is placed only once o-1
    // took its step, so that o-1 is the one that gets the stock.
    for (order_id, quantity) in [("o-1", 3), ("o-2", 3)] {
        let mut tx = db.pool().begin().await.unwrap();
        let placed = OrderPlaced {
            order_id: order_id.into(),
            product: "sku-1".into(),
            quantity,
        };
        let event = NewEvent::from_event(&routes, &placed).unwrap();
        enqueue(&mut tx, &event).await.unwrap();
        record_saga_step(
            &mut tx,
            "order-fulfilment",
            order_id,
            "place-order",
            SagaStatus::Started,
            Some(event.id),
            None,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        eventually(Duration::from_secs(45), "the saga to take its step", || {
            let pool = pool.clone();
            async move { saga_log(&pool, order_id).await.unwrap().len() == 2 }
        })
        .await;
    }

    let statuses = |log: Vec<commerce_outbox::saga::SagaLogEntry>| {
        log.into_iter()
            .map(|e| (e.step, e.status, e.detail))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        statuses(saga_log(db.pool(), "o-1").await.unwrap()),
        vec![
            ("place-order".into(), "started".into(), None),
            ("reserve-stock".into(), "completed".into(), None)
        ]
    );
    assert_eq!(
        statuses(saga_log(db.pool(), "o-2").await.unwrap()),
        vec![
            ("place-order".into(), "started".into(), None),
            (
                "reserve-stock".into(),
                "compensated".into(),
                Some("out of stock".into())
            )
        ]
    );
    let available: i32 = sqlx::query_scalar("SELECT available FROM stock")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(available, 2);
    let reservations: Vec<String> = sqlx::query_scalar("SELECT order_id FROM reservations")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(
        reservations,
        vec!["o-1".to_owned()],
        "the failed step's writes rolled back"
    );
    let emitted: Vec<(String, String)> = sqlx::query_as(
        "SELECT aggregate_id, event_type FROM commerce_outbox.event
         WHERE event_type <> 'order.placed' ORDER BY aggregate_id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(
        emitted,
        vec![
            ("o-1".into(), "stock.reserved".into()),
            ("o-2".into(), "order.rejected".into())
        ]
    );
    consumer.shutdown().await.unwrap();
    relay.shutdown().await.unwrap();
}
