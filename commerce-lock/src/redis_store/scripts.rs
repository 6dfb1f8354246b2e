//! The Lua scripts: each check-and-change runs atomically on the server.

use redis::Script;

/// KEYS: n lock keys, then their n fence keys. ARGV: owner token, lease ms, n.
/// Returns `{1, fence...}` when every key was free (all taken), else `{0, index, pttl}` for
/// the first held key. The fence keys never expire, so tokens stay monotonic per key.
const ACQUIRE: &str = r"
local n = tonumber(ARGV[3])
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    return {0, i, redis.call('PTTL', KEYS[i])}
  end
end
local out = {1}
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
  out[#out + 1] = redis.call('INCR', KEYS[n + i])
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
