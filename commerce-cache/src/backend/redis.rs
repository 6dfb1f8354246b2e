//! L2 in Redis: one hash per key (`ver`, and `val` or `neg`), every operation one Lua script.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use super::{FillOutcome, L2Backend, L2Entry, Stored};
use crate::reconnect::on_live_connection;
use crate::{Error, Result};

/// Versions are `max(previous + 1, server time in microseconds)`: they keep growing after a key
/// expired (the tombstone and its version are gone then) without a counter key that would
/// break Redis Cluster slot rules. Lua numbers are doubles, exact up to 2^53 (year 2255 in µs).
const NEXT_VERSION: &str = r"
local function next_version(key)
  local current = tonumber(redis.call('HGET', key, 'ver') or '0')
  local now = redis.call('TIME')
  local micros = tonumber(now[1]) * 1000000 + tonumber(now[2])
  return string.format('%.0f', math.max(current + 1, micros))
end
";

const READ: &str = r"
local found = redis.call('HMGET', KEYS[1], 'ver', 'val', 'neg')
return {found[1] or '0', found[2] or false, found[3] or false, redis.call('PTTL', KEYS[1])}
";

/// ARGV: expected version, kind (`v` value / `n` negative), payload, ttl ms.
const FILL: &str = r"
local current = redis.call('HGET', KEYS[1], 'ver') or '0'
if current ~= ARGV[1] then return {0, current} end
if current == '0' then current = next_version(KEYS[1]) end
redis.call('DEL', KEYS[1])
if ARGV[2] == 'v' then
  redis.call('HSET', KEYS[1], 'ver', current, 'val', ARGV[3])
else
  redis.call('HSET', KEYS[1], 'ver', current, 'neg', '1')
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, current}
";

/// ARGV: kind, payload, ttl ms.
const WRITE: &str = r"
local version = next_version(KEYS[1])
redis.call('DEL', KEYS[1])
if ARGV[1] == 'v' then
  redis.call('HSET', KEYS[1], 'ver', version, 'val', ARGV[2])
else
  redis.call('HSET', KEYS[1], 'ver', version, 'neg', '1')
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return version
";

/// ARGV: tombstone ttl ms.
const DELETE: &str = r"
local version = next_version(KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'ver', version)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return version
";

/// An [`L2Backend`] on Redis, shared by every node pointing at the same server.
///
/// Uses one multiplexed [`ConnectionManager`] that connects lazily and reconnects by itself, so
/// a cache can be built while Redis is down; a command that finds the connection dead (Redis
/// restarted while it was idle) runs once more on the new one. Clone it freely: clones share
/// the connection.
#[derive(Clone)]
pub struct RedisBackend {
    connection: ConnectionManager,
    read: Script,
    fill: Script,
    write: Script,
    delete: Script,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend").finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// A backend on `client`'s server; no connection is made until the first operation.
    ///
    /// `connect_timeout` bounds each connection attempt; keep it near the cache's L2 timeout so
    /// a dead server is noticed quickly.
    ///
    /// # Errors
    /// [`Error::Backend`] when the client's settings cannot make a connection manager.
    pub fn new(client: Client, connect_timeout: Duration) -> Result<Self> {
        // One quick retry: the cache has its own circuit breaker and would rather fall back to
        // the loader than wait through a long reconnect backoff.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100))
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(None);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|source| backend("connect", source))?;
        Ok(Self {
            connection,
            read: Script::new(READ),
            fill: Script::new(&format!("{NEXT_VERSION}{FILL}")),
            write: Script::new(&format!("{NEXT_VERSION}{WRITE}")),
            delete: Script::new(&format!("{NEXT_VERSION}{DELETE}")),
        })
    }
}

fn backend(operation: &'static str, source: redis::RedisError) -> Error {
    Error::Backend { operation, source }
}

fn parse_version(key: &str, raw: &str) -> Result<u64> {
    raw.parse().map_err(|_| Error::UnexpectedReply {
        key: key.to_owned(),
        detail: format!("version {raw:?} is not a number"),
    })
}

fn ttl_ms(ttl: Duration) -> u64 {
    // PEXPIRE 0 deletes the key at once; a 1 ms floor keeps a tiny TTL meaning "very short".
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn kind_and_payload(stored: &Stored) -> (&'static str, &[u8]) {
    match stored {
        Stored::Value(bytes) => ("v", bytes.as_slice()),
        Stored::Negative => ("n", &[]),
    }
}

#[async_trait]
impl L2Backend for RedisBackend {
    async fn read(&self, key: &str) -> Result<L2Entry> {
        let (version, value, negative, pttl): (String, Option<Vec<u8>>, Option<String>, i64) =
            on_live_connection(&self.connection, |mut connection| async move {
                self.read.key(key).invoke_async(&mut connection).await
            })
            .await
            .map_err(|source| backend("read", source))?;
        let stored = match (value, negative) {
            (Some(bytes), _) => Some(Stored::Value(bytes)),
            (None, Some(_)) => Some(Stored::Negative),
            (None, None) => None,
        };
        // PTTL: -2 absent, -1 no expiry.
        let ttl_left = u64::try_from(pttl).ok().map(Duration::from_millis);
        Ok(L2Entry {
            version: parse_version(key, &version)?,
            stored,
            ttl_left,
        })
    }

    async fn fill(
        &self,
        key: &str,
        expected_version: u64,
        stored: &Stored,
        ttl: Duration,
    ) -> Result<FillOutcome> {
        let (kind, payload) = kind_and_payload(stored);
        let (filled, version): (i64, String) =
            on_live_connection(&self.connection, |mut connection| async move {
                self.fill
                    .key(key)
                    .arg(expected_version.to_string())
                    .arg(kind)
                    .arg(payload)
                    .arg(ttl_ms(ttl))
                    .invoke_async(&mut connection)
                    .await
            })
            .await
            .map_err(|source| backend("fill", source))?;
        let version = parse_version(key, &version)?;
        Ok(if filled == 1 {
            FillOutcome::Filled { version }
        } else {
            FillOutcome::Conflict { current: version }
        })
    }

    async fn write(&self, key: &str, stored: &Stored, ttl: Duration) -> Result<u64> {
        let (kind, payload) = kind_and_payload(stored);
        let version: String = on_live_connection(&self.connection, |mut connection| async move {
            self.write
                .key(key)
                .arg(kind)
                .arg(payload)
                .arg(ttl_ms(ttl))
                .invoke_async(&mut connection)
                .await
        })
        .await
        .map_err(|source| backend("write", source))?;
        parse_version(key, &version)
    }

    async fn delete(&self, key: &str, tombstone_ttl: Duration) -> Result<u64> {
        let version: String = on_live_connection(&self.connection, |mut connection| async move {
            self.delete
                .key(key)
                .arg(ttl_ms(tombstone_ttl))
                .invoke_async(&mut connection)
                .await
        })
        .await
        .map_err(|source| backend("delete", source))?;
        parse_version(key, &version)
    }
}
