//! Release notices over Redis pub/sub: one dedicated subscriber connection per client, a
//! channel per lock key, subscribed while someone in this process waits for that key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Timeouts;
use crate::signal::{ReleaseSignal, ReleaseWatch};
use crate::{Error, Result};

/// A channel nobody waits on stays subscribed this long, so a key contended in bursts does not
/// pay a SUBSCRIBE round trip per wait.
const LINGER: Duration = Duration::from_secs(30);
/// How often idle channels are dropped and a lost subscriber connection is re-established.
const MAINTENANCE: Duration = Duration::from_secs(1);

/// Handle on the subscriber task.
pub(crate) struct ReleaseNotices {
    commands: mpsc::UnboundedSender<Command>,
}

enum Command {
    Watch {
        channels: Vec<String>,
        reply: oneshot::Sender<Result<Vec<Arc<ReleaseSignal>>>>,
    },
    Unwatch {
        channels: Vec<String>,
    },
}

/// Ends a waiter's interest in its channels when the waiter's watch is dropped.
struct Registration {
    channels: Vec<String>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // The subscriber may already be gone (shutdown): nothing left to unregister then.
        let _ = self.commands.send(Command::Unwatch {
            channels: std::mem::take(&mut self.channels),
        });
    }
}

impl ReleaseNotices {
    /// Connects the subscriber (failing fast if Redis is unreachable) and spawns its task.
    pub(crate) async fn start(
        client: redis::Client,
        timeouts: Timeouts,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let (sink, stream) = connect(&client, timeouts).await?;
        let (commands, receiver) = mpsc::unbounded_channel();
        let subscriber = Subscriber {
            client,
            timeouts,
            sink: Some(sink),
            channels: HashMap::new(),
        };
        tasks.spawn(subscriber.run(stream, receiver, shutdown));
        Ok(Self { commands })
    }

    /// Subscribes to `channels` (if not already) and returns once Redis confirmed it.
    pub(crate) async fn watch(&self, channels: Vec<String>) -> Result<ReleaseWatch> {
        // Made before asking, so the counts stay balanced even if this future is dropped
        // while waiting for the reply.
        let registration = Registration {
            channels: channels.clone(),
            commands: self.commands.clone(),
        };
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Watch { channels, reply })
            .map_err(|_| Error::ShutDown)?;
        let signals = answer.await.map_err(|_| Error::ShutDown)??;
        Ok(ReleaseWatch::new(signals, Some(Box::new(registration))))
    }
}

struct Channel {
    signal: Arc<ReleaseSignal>,
    watchers: usize,
    subscribed: bool,
    idle_since: Option<Instant>,
}

struct Subscriber {
    client: redis::Client,
    timeouts: Timeouts,
    sink: Option<PubSubSink>,
    channels: HashMap<String, Channel>,
}

impl Subscriber {
    async fn run(
        mut self,
        stream: PubSubStream,
        mut commands: mpsc::UnboundedReceiver<Command>,
        shutdown: CancellationToken,
    ) {
        let mut stream = Some(stream);
        let mut maintenance = tokio::time::interval(MAINTENANCE);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Watch { channels, reply }) => {
                        let signals = self.watch(&channels);
                        let subscribed = self.subscribe(&channels, &mut stream).await;
                        // A waiter that gave up meanwhile has already sent its `Unwatch`.
                        let _ = reply.send(subscribed.map(|()| signals));
                    }
                    Some(Command::Unwatch { channels }) => self.unwatch(&channels),
                },
                message = next_message(&mut stream) => match message {
                    Some(message) => {
                        if let Some(channel) = self.channels.get(message.get_channel_name()) {
                            channel.signal.notify();
                        }
                    }
                    None => self.disconnected(&mut stream),
                },
                _ = maintenance.tick() => self.maintain(&mut stream).await,
            }
        }
    }

    fn watch(&mut self, channels: &[String]) -> Vec<Arc<ReleaseSignal>> {
        channels
            .iter()
            .map(|name| {
                let channel = self
                    .channels
                    .entry(name.clone())
                    .or_insert_with(|| Channel {
                        signal: Arc::default(),
                        watchers: 0,
                        subscribed: false,
                        idle_since: None,
                    });
                channel.watchers += 1;
                channel.idle_since = None;
                Arc::clone(&channel.signal)
            })
            .collect()
    }

    fn unwatch(&mut self, channels: &[String]) {
        let now = Instant::now();
        for name in channels {
            if let Some(channel) = self.channels.get_mut(name) {
                channel.watchers = channel.watchers.saturating_sub(1);
                if channel.watchers == 0 {
                    channel.idle_since = Some(now);
                }
            }
        }
    }

    /// Subscribes the given channels that are not yet, reconnecting first if needed.
    async fn subscribe(
        &mut self,
        names: &[String],
        stream: &mut Option<PubSubStream>,
    ) -> Result<()> {
        if self.sink.is_none() {
            self.reconnect(stream).await?;
        }
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| self.channels.get(*n).is_some_and(|c| !c.subscribed))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let Some(sink) = self.sink.as_mut() else {
            return Err(Error::ShutDown);
        };
        match with_timeout(self.timeouts.response, sink.subscribe(&missing)).await {
            Ok(()) => {
                for name in missing {
                    if let Some(channel) = self.channels.get_mut(name) {
                        channel.subscribed = true;
                    }
                }
                Ok(())
            }
            Err(source) => {
                self.disconnected(stream);
                Err(Error::from_redis("subscribe to release notices", source))
            }
        }
    }

    /// Opens a new subscriber connection and subscribes every channel someone waits on.
    async fn reconnect(&mut self, stream: &mut Option<PubSubStream>) -> Result<()> {
        let (mut sink, new_stream) = connect(&self.client, self.timeouts).await?;
        let wanted: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, c)| c.watchers > 0)
            .map(|(name, _)| name.clone())
            .collect();
        if !wanted.is_empty() {
            with_timeout(self.timeouts.response, sink.subscribe(&wanted))
                .await
                .map_err(|e| Error::from_redis("resubscribe to release notices", e))?;
        }
        for name in &wanted {
            if let Some(channel) = self.channels.get_mut(name) {
                channel.subscribed = true;
            }
        }
        self.sink = Some(sink);
        *stream = Some(new_stream);
        // Releases published while disconnected were missed: everyone re-checks.
        for channel in self.channels.values() {
            channel.signal.notify_everyone();
        }
        Ok(())
    }

    fn disconnected(&mut self, stream: &mut Option<PubSubStream>) {
        self.sink = None;
        *stream = None;
        for channel in self.channels.values_mut() {
            channel.subscribed = false;
            // Waiters fall back to their re-check timers until the next reconnect.
            channel.signal.notify_everyone();
        }
    }

    async fn maintain(&mut self, stream: &mut Option<PubSubStream>) {
        let now = Instant::now();
        let idle: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, c)| c.idle_since.is_some_and(|t| now - t >= LINGER))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &idle {
            self.channels.remove(name);
        }
        if let (Some(sink), false) = (self.sink.as_mut(), idle.is_empty()) {
            if let Err(error) = with_timeout(self.timeouts.response, sink.unsubscribe(&idle)).await
            {
                tracing::debug!(%error, "unsubscribe from idle release channels failed");
                self.disconnected(stream);
            }
        }
        let waiting = self.channels.values().any(|c| c.watchers > 0);
        if self.sink.is_none() && waiting {
            if let Err(error) = self.reconnect(stream).await {
                tracing::debug!(%error, "release notice subscriber still disconnected");
            }
        }
    }
}

/// The next pub/sub message; pending forever while disconnected.
async fn next_message(stream: &mut Option<PubSubStream>) -> Option<redis::Msg> {
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

async fn connect(client: &redis::Client, timeouts: Timeouts) -> Result<(PubSubSink, PubSubStream)> {
    let pubsub = with_timeout(timeouts.connect, client.get_async_pubsub())
        .await
        .map_err(|e| Error::from_redis("connect release notice subscriber", e))?;
    Ok(pubsub.split())
}

/// Bounds a pub/sub call, which has no response timeout of its own.
pub(crate) async fn with_timeout<T>(
    limit: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => {
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "redis call timed out").into())
        }
    }
}
