//! Transactional outbox for commerce-rs: no event lost, none published for a rolled-back
//! transaction, each aggregate's events in commit order.
//!
//! ```no_run
//! use commerce_outbox::{enqueue, ensure_topics, NewEvent, Relay, TopicSettings};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/shop").await?;
//! commerce_outbox::MIGRATOR.run(&pool).await?;
//! ensure_topics("127.0.0.1:9092", &["orders"], TopicSettings::default()).await?;
//!
//! // The event is written in the business transaction and exists only if it commits.
//! let mut tx = pool.begin().await?;
//! // ... insert the order on &mut *tx ...
//! let event = NewEvent::new("orders", "order.created", "order", "o-42", serde_json::json!({"total_cents": 1999}));
//! enqueue(&mut tx, &event).await?;
//! tx.commit().await?;
//!
//! // The relay publishes it (woken by NOTIFY at commit) with key "o-42".
//! let relay = Relay::builder(pool.clone(), "127.0.0.1:9092").build()?.spawn();
//! // ...
//! relay.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! The pieces:
//! - [`enqueue`] writes an [`NewEvent`] in the caller's transaction ([`MIGRATOR`] creates the
//!   `commerce_outbox` schema).
//! - [`Relay`] publishes committed rows through an [`EventTransport`], several relays side by
//!   side, per-aggregate order kept, outages waited out with backoff, refused events
//!   dead-lettered to `<topic>.dlq` ([`dead_letter`] lists and replays them, one by one or a
//!   whole topic at once; so does the `commerce-outbox` command-line tool, built with the
//!   `cli` feature).
//! - [`EventTransport`] is the seam: [`KafkaTransport`] (an idempotent `acks=all` producer
//!   and consumer groups) for services in several processes, [`InProcessTransport`] (bounded
//!   queues; a row is marked published only once every subscribed group applied it) for one
//!   process with Postgres alone. The relay, the consumer and the sagas are the same on both.
//! - [`InboxConsumer`] and [`inbox`] make consumers idempotent; [`saga`] builds
//!   choreographed sagas on top, with a persisted saga log. A handler that returns an
//!   [`UnprocessableEvent`] (a payload that does not decode: [`Envelope::decode_payload`])
//!   has the event set aside as a consumer dead letter instead of retried, so the events
//!   behind it go on; [`dead_letter`] lists, replays (through a handler) and discards them.
//!
//! See `docs/outbox.md` for the envelope, failure behaviour and benchmark figures.

mod backoff;
mod consumer;
pub mod dead_letter;
mod enqueue;
mod error;
mod event;
pub mod inbox;
mod metrics;
mod migrate;
mod relay;
mod retention;
pub mod saga;
mod shutdown;
pub mod trace;
pub mod transport;
mod unprocessable;

pub use backoff::Backoff;
pub use consumer::{
    ConsumerHandle, ConsumerStats, EventHandler, HandlerError, InboxConsumer, InboxConsumerBuilder,
};
pub use enqueue::{enqueue, enqueue_all, NOTIFY_CHANNEL};
pub use error::{Error, Result};
pub use event::{DomainEvent, Envelope, EventId, NewEvent, TopicRoutes};
pub use metrics::{outbox_stats, OutboxStats, RelayMetrics};
pub use migrate::MIGRATOR;
pub use relay::{Relay, RelayBuilder, RelayHandle};
pub use retention::{prune_settled, PruneReport};
pub use transport::{
    decode_envelope, dlq_topic, ensure_topics, DeadLetter, DeadLetterRecord, Delivery,
    DeliveryContent, DeliveryPosition, EventTransport, InProcessTransport,
    InProcessTransportBuilder, KafkaTransport, KafkaTransportBuilder, OutboundMessage,
    PublishOutcome, Subscription, TopicSettings,
};
pub use unprocessable::{UnprocessableEvent, UnprocessableExt};

/// The README's example, compiled as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
