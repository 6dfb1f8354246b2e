//! Invalidation bus on Redis pub/sub.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use redis::{AsyncCommands, Client};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::{BusEvent, Invalidation, InvalidationBus, Subscription};
use crate::reconnect::on_live_connection;
use crate::{Error, Result};

/// First wait before re-subscribing after a loss; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A subscriber pings this often so a half-open connection (no FIN ever arrives) is noticed.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// An [`InvalidationBus`] on Redis pub/sub: one dedicated connection per subscription, and a
/// shared lazily connecting connection for publishing.
#[derive(Clone)]
pub struct RedisBus {
    client: Client,
    publisher: ConnectionManager,
    timeout: Duration,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// A bus on `client`'s server; `timeout` bounds connecting, subscribing and heartbeats.
    ///
    /// # Errors
    /// [`Error::Backend`] when the client's settings cannot make a connection manager.
    pub fn new(client: Client, timeout: Duration) -> Result<Self> {
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100))
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None);
        let publisher =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(|source| {
                Error::Backend {
                    operation: "connect",
                    source,
                }
            })?;
        Ok(Self {
            client,
            publisher,
            timeout,
        })
    }
}

#[async_trait]
impl InvalidationBus for RedisBus {
    async fn publish(&self, channel: &str, notice: &Invalidation) -> Result<()> {
        let message = notice.encode();
        let _receivers: i64 = on_live_connection(&self.publisher, |mut connection| {
            let message = &message;
            async move { connection.publish(channel, message).await }
        })
        .await
        .map_err(|source| Error::Backend {
            operation: "publish",
            source,
        })?;
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Box<dyn Subscription> {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut subscription = RedisSubscription {
            client: self.client.clone(),
            channel: channel.to_owned(),
            timeout: self.timeout,
            connected: None,
            lost: false,
            backoff: Duration::ZERO,
            retry_at: None,
            heartbeat,
        };
        if let Err(error) = subscription.connect().await {
            subscription.on_loss(&error);
        }
        Box::new(subscription)
    }
}

enum Woke {
    Message(Option<redis::Msg>),
    Heartbeat,
}

struct Connected {
    sink: PubSubSink,
    stream: PubSubStream,
}

struct RedisSubscription {
    client: Client,
    channel: String,
    timeout: Duration,
    connected: Option<Connected>,
    /// Notices may have been missed since the last connection: report a resync on reconnect.
    lost: bool,
    backoff: Duration,
    /// When the next reconnect attempt is due. A deadline rather than a sleep started in
    /// `next()`, so a caller that drops `next()` and calls it again resumes the same wait
    /// instead of starting it over (review C1: a 1 s tick cancelling a 2 s sleep meant no
    /// reconnect ever).
    retry_at: Option<Instant>,
    heartbeat: Interval,
}

impl RedisSubscription {
    async fn connect(&mut self) -> Result<()> {
        let attempt = async {
            let (mut sink, stream) = self.client.get_async_pubsub().await?.split();
            sink.subscribe(&self.channel).await?;
            Ok::<_, redis::RedisError>(Connected { sink, stream })
        };
        let connected = tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| Error::Timeout {
                operation: "subscribe",
                timeout: self.timeout,
            })?
            .map_err(|source| Error::Backend {
                operation: "subscribe",
                source,
            })?;
        self.connected = Some(connected);
        self.backoff = Duration::ZERO;
        self.retry_at = None;
        self.heartbeat.reset();
        Ok(())
    }

    fn on_loss(&mut self, error: &dyn std::fmt::Display) {
        self.connected = None;
        // One warning per outage: the reconnect attempts that follow stay quiet.
        if !self.lost {
            tracing::warn!(
                channel = %self.channel,
                %error,
                "cache invalidation subscription lost; L1 is dropped when it is back"
            );
        }
        self.lost = true;
        self.backoff = (self.backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
        self.retry_at = Some(Instant::now() + self.backoff);
    }

    async fn heartbeat_ok(&mut self) -> bool {
        let Some(connected) = self.connected.as_mut() else {
            return false;
        };
        matches!(
            tokio::time::timeout(self.timeout, connected.sink.ping::<redis::Value>()).await,
            Ok(Ok(_))
        )
    }
}

#[async_trait]
impl Subscription for RedisSubscription {
    async fn next(&mut self) -> Option<BusEvent> {
        loop {
            let Some(connected) = self.connected.as_mut() else {
                if let Some(at) = self.retry_at {
                    tokio::time::sleep_until(at).await;
                }
                match self.connect().await {
                    Ok(()) if self.lost => {
                        self.lost = false;
                        tracing::info!(channel = %self.channel, "cache invalidation subscription restored");
                        return Some(BusEvent::Resync);
                    }
                    Ok(()) => continue,
                    Err(error) => {
                        self.on_loss(&error);
                        continue;
                    }
                }
            };
            let woke = tokio::select! {
                message = connected.stream.next() => Woke::Message(message),
                _ = self.heartbeat.tick() => Woke::Heartbeat,
            };
            match woke {
                Woke::Message(Some(message)) => {
                    let notice = message
                        .get_payload::<String>()
                        .ok()
                        .and_then(|payload| Invalidation::decode(&payload));
                    match notice {
                        Some(notice) => return Some(BusEvent::Invalidated(notice)),
                        None => {
                            tracing::debug!(channel = %self.channel, "ignoring malformed invalidation");
                        }
                    }
                }
                Woke::Message(None) => self.on_loss(&"connection closed"),
                Woke::Heartbeat => {
                    if !self.heartbeat_ok().await {
                        self.on_loss(&"heartbeat failed");
                    }
                }
            }
        }
    }
}
