//! L2 in Redis: one hash per key (`ver`, and `val` or `neg`), every operation one Lua script.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use super::{FillOutcome, L2Backend, L2Entry, Stored};
use crate::reconnect::on_live_connection;
use crate::{ttl, Error, Result};

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

/// Checks a TTL argument (whole ms, at least 1, at most [`crate::ttl::MAX_TTL`], whose value is
/// appended where the script is built) before a script changes anything: a script that fails
/// halfway is not rolled back, and a `PEXPIRE` refused after `DEL` and `HSET` used to leave
/// the key with no expiry at all (review C10).
const CHECK_TTL: &str = r"
local function check_ttl(raw)
  local ttl = tonumber(raw)
  if ttl == nil or ttl < 1 or ttl > MAX_TTL_MS or ttl ~= math.floor(ttl) then
    return redis.error_reply('ERR commerce-cache: invalid ttl ' .. tostring(raw))
  end
  return nil
end
";

const READ: &str = r"
local found = redis.call('HMGET', KEYS[1], 'ver', 'val', 'neg')
return {found[1] or '0', found[2] or false, found[3] or false, redis.call('PTTL', KEYS[1])}
";

/// ARGV: expected version, kind (`v` value / `n` negative), payload, ttl ms.
const FILL: &str = r"
local invalid = check_ttl(ARGV[4])
if invalid then return invalid end
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
local invalid = check_ttl(ARGV[3])
if invalid then return invalid end
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
local invalid = check_ttl(ARGV[1])
if invalid then return invalid end
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
        let prelude = format!(
            "local MAX_TTL_MS = {}\n{CHECK_TTL}{NEXT_VERSION}",
            ttl::max_ttl_ms()
        );
        Ok(Self {
            connection,
            read: Script::new(READ),
            fill: Script::new(&format!("{prelude}{FILL}")),
            write: Script::new(&format!("{prelude}{WRITE}")),
            delete: Script::new(&format!("{prelude}{DELETE}")),
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
    // Clamped, since Redis refuses an expiry beyond its 64-bit millisecond clock.
    u64::try_from(ttl::clamp(ttl).as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// PEXPIRE refuses this (the expiry time would overflow a 64-bit millisecond clock).
    const REFUSED_TTL: &str = "9223372036854775807";

    async fn scratch() -> (RedisBackend, redis::aio::MultiplexedConnection, String) {
        let client = Client::open(commerce_testkit::redis_url()).expect("REDIS_URL");
        let backend = RedisBackend::new(client.clone(), Duration::from_secs(1)).expect("backend");
        let connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let key = format!("{}:k", commerce_testkit::unique_name("cache-script"));
        (backend, connection, key)
    }

    // Review C10: a script that ran DEL and HSET before PEXPIRE failed left the key without
    // any expiry. Every script must check its TTL before it changes anything.
    #[tokio::test]
    async fn a_script_given_a_ttl_redis_refuses_leaves_the_key_as_it_was() {
        let (backend, mut connection, key) = scratch().await;
        let old = Stored::Value(b"\"old\"".to_vec());
        let version = backend
            .write(&key, &old, Duration::from_secs(60))
            .await
            .expect("write");
        for ttl in [REFUSED_TTL, "0", "-5", "soon"] {
            let attempts: [(&str, redis::RedisResult<redis::Value>); 3] = [
                (
                    "write",
                    backend
                        .write
                        .key(&key)
                        .arg("v")
                        .arg("\"new\"")
                        .arg(ttl)
                        .invoke_async(&mut connection)
                        .await,
                ),
                (
                    "fill",
                    backend
                        .fill
                        .key(&key)
                        .arg(version.to_string())
                        .arg("v")
                        .arg("\"new\"")
                        .arg(ttl)
                        .invoke_async(&mut connection)
                        .await,
                ),
                (
                    "delete",
                    backend
                        .delete
                        .key(&key)
                        .arg(ttl)
                        .invoke_async(&mut connection)
                        .await,
                ),
            ];
            for (script, result) in attempts {
                let refused = result
                    .as_ref()
                    .is_err_and(|error| error.to_string().contains("invalid ttl"));
                assert!(
                    refused,
                    "{script} with ttl {ttl} was not refused by the check: {result:?}"
                );
                let entry = backend.read(&key).await.expect("read");
                assert_eq!(
                    (entry.version, entry.stored.as_ref()),
                    (version, Some(&old)),
                    "{script} with ttl {ttl} changed the key"
                );
                assert!(
                    entry.ttl_left.is_some(),
                    "{script} with ttl {ttl} left the key without expiry"
                );
            }
        }
    }

    #[test]
    fn ttls_are_sent_in_whole_milliseconds_within_what_the_scripts_accept() {
        assert_eq!(ttl_ms(Duration::from_micros(10)), 1, "never 0 (delete now)");
        assert_eq!(ttl_ms(Duration::from_secs(2)), 2000);
        assert_eq!(ttl_ms(Duration::MAX), ttl::max_ttl_ms());
    }
}
