//! The Lua scripts: each check-and-change runs atomically on the server.

use redis::Script;

/// KEYS: n lock keys, then their n fence keys. ARGV: owner token, lease ms, n.
/// Returns `{1, fence...}` when every key was free (all taken), else `{0, index, pttl}` for
/// the first held key.
///
/// Each fencing token is `max(previous token, server time in µs) + 1`: it grows per key, and
/// keeps growing when the fence key is lost or comes back older (restart without persistence,
/// failover to a lagging replica, eviction), unless the server clock also went back. The
/// time is built as a decimal string (seconds and zero-padded µs) so Redis stores an exact
/// integer; Lua compares it as a double, exact below 2^53 µs (year 2255).
const ACQUIRE: &str = r"
local n = tonumber(ARGV[3])
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    return {0, i, redis.call('PTTL', KEYS[i])}
  end
end
local time = redis.call('TIME')
local micros = time[1] .. string.format('%06d', tonumber(time[2]))
local out = {1}
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
  local fence = KEYS[n + i]
  if (tonumber(redis.call('GET', fence)) or 0) < tonumber(micros) then
    redis.call('SET', fence, micros)
  end
  out[#out + 1] = redis.call('INCR', fence)
end
return out
";

/// KEYS: lock keys. ARGV: owner token, lease ms. Extends every lease only if the token owns
/// every key; never creates a key, so a late renewal cannot resurrect a released lock.
const RENEW: &str = r"
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) ~= ARGV[1] then
    return 0
  end
end
for i = 1, #KEYS do
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return 1
";

/// KEYS: lock keys. ARGV: owner token, then one release channel per key. Deletes the keys the
/// token owns, publishing a notice for each; returns how many it deleted.
const RELEASE: &str = r"
local released = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
    redis.call('PUBLISH', ARGV[i + 1], '')
    released = released + 1
  end
end
return released
";

/// KEYS: data key, its fence key. ARGV: value, fencing token. Writes only if no newer token
/// has written; returns `{1, token}` or `{0, newest}`.
const WRITE_FENCED: &str = r"
local newest = tonumber(redis.call('GET', KEYS[2]) or '0')
local token = tonumber(ARGV[2])
if token < newest then
  return {0, newest}
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1])
return {1, token}
";

/// The scripts, hashed once per client (`EVALSHA`, loaded on first `NOSCRIPT`).
pub(crate) struct Scripts {
    pub(crate) acquire: Script,
    pub(crate) renew: Script,
    pub(crate) release: Script,
    pub(crate) write_fenced: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
            write_fenced: Script::new(WRITE_FENCED),
        }
    }
}
