//! The Redis lock: `SET NX PX` with an owner token, compare-and-delete release, watchdog
//! renewal, fencing tokens, and waits woken by pub/sub release notices.

mod notices;
mod scripts;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{self, Attempt, Backend, ReleaseWatch};
use crate::{DistributedLock, Error, FencingToken, LockGuard, LockOptions, Result};
use notices::{with_timeout, ReleaseNotices};
use scripts::Scripts;

/// Connection and response limits: an unreachable Redis becomes an error within these,
/// never a hang.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) response: Duration,
}

/// A [`DistributedLock`] on one Redis server (or a primary).
///
/// Keys live under a namespace: `<ns>:lock:<key>` holds the owner token with the lease as
/// TTL, `<ns>:fence:<key>` the newest fencing token handed out (no TTL; see
/// [`fencing`](crate::fencing) for why it must not be evictable), and `<ns>:released:<key>`
/// is the pub/sub channel on which releases are announced. Cheap to clone; clones share the
/// connections and background tasks. Call [`RedisLock::shutdown`] for a clean stop.
#[derive(Clone)]
pub struct RedisLock {
    store: Arc<RedisStore>,
}

struct RedisStore {
    connection: ConnectionManager,
    namespace: String,
    scripts: Scripts,
    notices: ReleaseNotices,
    timeouts: Timeouts,
    max_recheck: Duration,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// Settings for [`RedisLock`]; every knob has a documented default.
#[derive(Debug, Clone)]
pub struct RedisLockBuilder {
    url: String,
    namespace: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    max_recheck: Duration,
}

impl RedisLockBuilder {
    /// Key namespace (default `commerce-lock`); lets several applications share a server.
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Limit on opening a connection (default 1 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Limit on one command's reply (default 1 s).
    #[must_use]
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Longest sleep of a waiter between two checks (default 2 s). Waiters are woken by
    /// release notices and by the end of the blocking lease; this bound only matters if a
    /// notice is lost (e.g. the subscriber connection dropped).
    #[must_use]
    pub fn max_recheck(mut self, interval: Duration) -> Self {
        self.max_recheck = interval.max(Duration::from_millis(1));
        self
    }

    /// Opens the command connection and the release-notice subscriber.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad URL, [`Error::Unavailable`] if Redis cannot be reached
    /// within the connect timeout.
    pub async fn connect(self) -> Result<RedisLock> {
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| Error::invalid(format!("redis URL {:?}: {e}", self.url)))?;
        let timeouts = Timeouts {
            connect: self.connect_timeout,
            response: self.response_timeout,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeouts.connect))
            .set_response_timeout(Some(timeouts.response))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let connection = with_timeout(
            timeouts.connect.saturating_add(timeouts.response),
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|e| Error::from_redis("connect", e))?;
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let notices = ReleaseNotices::start(client, timeouts, &tasks, shutdown.clone()).await?;
        Ok(RedisLock {
            store: Arc::new(RedisStore {
                connection,
                namespace: self.namespace,
                scripts: Scripts::new(),
                notices,
                timeouts,
                max_recheck: self.max_recheck,
                tasks,
                shutdown,
            }),
        })
    }
}

impl RedisLock {
    /// Settings for a lock on the Redis at `url` (e.g. `redis://127.0.0.1:6379`).
    #[must_use]
    pub fn builder(url: impl Into<String>) -> RedisLockBuilder {
        RedisLockBuilder {
            url: url.into(),
            namespace: "commerce-lock".to_owned(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            max_recheck: Duration::from_secs(2),
        }
    }

    /// Connects with the default settings.
    ///
    /// # Errors
    /// See [`RedisLockBuilder::connect`].
    pub async fn connect(url: impl Into<String>) -> Result<Self> {
        Self::builder(url).connect().await
    }

    /// The Redis key holding `key`'s owner token (useful for inspection and tests).
    #[must_use]
    pub fn redis_key(&self, key: &str) -> String {
        self.store.lock_key(key)
    }

    /// Writes `value` to the Redis key `resource` only if `token` is not older than the newest
    /// token that already wrote it (kept in `<resource>:fence`), in one script.
    ///
    /// # Errors
    /// [`Error::StaleFencingToken`] if a newer holder has written; [`Error::Unavailable`] if
    /// Redis cannot be reached.
    pub async fn write_fenced(
        &self,
        resource: &str,
        value: &str,
        token: FencingToken,
    ) -> Result<()> {
        let (written, newest): (i64, u64) = self
            .store
            .run(
                "fenced write",
                self.store
                    .scripts
                    .write_fenced
                    .key(resource)
                    .key(format!("{resource}:fence"))
                    .arg(value)
                    .arg(token.get()),
            )
            .await?;
        if written == 1 {
            Ok(())
        } else {
            Err(Error::StaleFencingToken {
                resource: resource.to_owned(),
                token: token.get(),
                newest,
            })
        }
    }

    /// Stops every watchdog (their guards see [`LockGuard::lost`]) and the notice subscriber,
    /// refuses new acquires, and waits for background releases to finish.
    pub async fn shutdown(&self) {
        self.store.shutdown.cancel();
        self.store.tasks.close();
        self.store.tasks.wait().await;
    }
}

impl fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLock")
            .field("namespace", &self.store.namespace)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl DistributedLock for RedisLock {
    async fn acquire_many(&self, keys: &[&str], options: LockOptions) -> Result<LockGuard> {
        backend::acquire(self.store.clone(), keys, options).await
    }
}

impl RedisStore {
    fn lock_key(&self, key: &str) -> String {
        format!("{}:lock:{key}", self.namespace)
    }

    fn fence_key(&self, key: &str) -> String {
        format!("{}:fence:{key}", self.namespace)
    }

    fn channel(&self, key: &str) -> String {
        format!("{}:released:{key}", self.namespace)
    }

    /// Runs a script invocation with a hard time limit on top of the connection's own.
    async fn run<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: &mut redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut connection = self.connection.clone();
        // The manager may first have to reconnect: allow one connect and one reply.
        let limit = self.timeouts.connect.saturating_add(self.timeouts.response);
        with_timeout(limit, invocation.invoke_async(&mut connection))
            .await
            .map_err(|e| Error::from_redis(operation, e))
    }
}

/// The longest lease stored in Redis: 100 years. Redis refuses an expiry it cannot add to its
/// clock (`Duration::MAX` would be "invalid expire time"), and a longer lease means nothing
/// more than "until released".
const MAX_LEASE_MILLIS: u64 = 100 * 365 * 24 * 60 * 60 * 1000;

fn lease_millis(lease: Duration) -> u64 {
    u64::try_from(lease.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_LEASE_MILLIS)
}

#[async_trait]
impl Backend for RedisStore {
    async fn try_acquire(&self, keys: &[String], token: &str, lease: Duration) -> Result<Attempt> {
        let mut invocation = self.scripts.acquire.prepare_invoke();
        for key in keys {
            invocation.key(self.lock_key(key));
        }
        for key in keys {
            invocation.key(self.fence_key(key));
        }
        invocation
            .arg(token)
            .arg(lease_millis(lease))
            .arg(keys.len());
        let reply: Vec<i64> = self.run("acquire", &mut invocation).await?;
        match reply.as_slice() {
            [1, fences @ ..] if fences.len() == keys.len() => Ok(Attempt::Acquired(
                fences
                    .iter()
                    .map(|f| FencingToken::new(u64::try_from(*f).unwrap_or(0)))
                    .collect(),
            )),
            [0, index, pttl] => {
                let key = usize::try_from(*index - 1)
                    .ok()
                    .and_then(|i| keys.get(i))
                    .cloned()
                    .unwrap_or_default();
                // -2: expired in between (retry now); -1: no TTL (someone else's key).
                let expires_in = match *pttl {
                    -2 => Some(Duration::ZERO),
                    ms if ms >= 0 => Some(Duration::from_millis(ms.unsigned_abs())),
                    _ => None,
                };
                Ok(Attempt::Held { key, expires_in })
            }
            other => Err(Error::Redis {
                operation: "acquire",
                source: (
                    redis::ErrorKind::Client,
                    "unexpected acquire script reply",
                    format!("{other:?}"),
                )
                    .into(),
            }),
        }
    }

    async fn watch(&self, keys: &[String]) -> Result<ReleaseWatch> {
        let channels = keys.iter().map(|k| self.channel(k)).collect();
        self.notices.watch(channels).await
    }

    async fn renew(&self, keys: &[String], token: &str, lease: Duration) -> Result<bool> {
        let mut invocation = self.scripts.renew.prepare_invoke();
        for key in keys {
            invocation.key(self.lock_key(key));
        }
        invocation.arg(token).arg(lease_millis(lease));
        let renewed: i64 = self.run("renew", &mut invocation).await?;
        Ok(renewed == 1)
    }

    async fn release(&self, keys: &[String], token: &str) -> Result<bool> {
        let mut invocation = self.scripts.release.prepare_invoke();
        for key in keys {
            invocation.key(self.lock_key(key));
        }
        invocation.arg(token);
        for key in keys {
            invocation.arg(self.channel(key));
        }
        let released: usize = self.run("release", &mut invocation).await?;
        Ok(released == keys.len())
    }

    fn max_recheck(&self) -> Duration {
        self.max_recheck
    }

    fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
}
