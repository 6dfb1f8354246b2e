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
/// Default wait for one heartbeat reply: well above a Redis stall of a few hundred ms.
const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
/// Heartbeats that must go unanswered in a row before the connection counts as lost. A
/// single late reply is a slow server, not a lost connection: giving it up would make every
/// node drop its L1 at the same moment (review C8).
const HEARTBEAT_STRIKES: u32 = 2;

/// An [`InvalidationBus`] on Redis pub/sub: one dedicated connection per subscription, and a
/// shared lazily connecting connection for publishing.
#[derive(Clone)]
pub struct RedisBus {
    client: Client,
    publisher: ConnectionManager,
    timeout: Duration,
    heartbeat_timeout: Duration,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("timeout", &self.timeout)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// A bus on `client`'s server; `timeout` bounds connecting and subscribing. Heartbeats
    /// have their own, longer timeout (2 s; see [`RedisBus::heartbeat_timeout`]).
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
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
        })
    }

    /// How long a subscription waits for one heartbeat reply (default 2 s). A subscription
    /// counts as lost, and is replaced with a resync, after two heartbeats in a row went
    /// unanswered this long, or at once when one fails outright. Values over 100 years count
    /// as 100 years.
    #[must_use]
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.heartbeat_timeout = crate::ttl::clamp(timeout);
        self
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
            heartbeat_timeout: self.heartbeat_timeout,
            missed_heartbeats: 0,
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

enum Heartbeat {
    Answered,
    Late,
    Failed(String),
}

struct Connected {
    sink: PubSubSink,
    stream: PubSubStream,
}

struct RedisSubscription {
    client: Client,
    channel: String,
    timeout: Duration,
    heartbeat_timeout: Duration,
    /// Heartbeats in a row that got no reply within `heartbeat_timeout`.
    missed_heartbeats: u32,
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
        self.missed_heartbeats = 0;
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

    async fn heartbeat(&mut self) -> Heartbeat {
        let Some(connected) = self.connected.as_mut() else {
            return Heartbeat::Failed("not connected".to_owned());
        };
        match tokio::time::timeout(
            self.heartbeat_timeout,
            connected.sink.ping::<redis::Value>(),
        )
        .await
        {
            Ok(Ok(_)) => Heartbeat::Answered,
            Ok(Err(error)) => Heartbeat::Failed(error.to_string()),
            Err(_) => Heartbeat::Late,
        }
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
                Woke::Heartbeat => match self.heartbeat().await {
                    Heartbeat::Answered => self.missed_heartbeats = 0,
                    Heartbeat::Late => {
                        self.missed_heartbeats += 1;
                        if self.missed_heartbeats >= HEARTBEAT_STRIKES {
                            self.on_loss(&"heartbeats unanswered");
                        } else {
                            tracing::debug!(channel = %self.channel, "cache invalidation heartbeat late");
                        }
                    }
                    Heartbeat::Failed(error) => self.on_loss(&format!("heartbeat failed: {error}")),
                },
            }
        }
    }
}
