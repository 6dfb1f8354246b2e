//! Settings: typed, with documented defaults, read from the environment once at start-up.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// A value that must never reach a log line or a response (the JWT secret).
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// How orders take stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockStrategyKind {
    /// One transaction per order, the row lock of a conditional `UPDATE` (the default).
    ConditionalUpdate,
    /// A distributed lock per product around the transaction: Redis when `REDIS_URL` is set,
    /// in-process otherwise.
    Lock,
    /// Group commit per product (commerce-core's `Batching`): the concurrent orders of a
    /// product share a transaction; the flash-sale setting.
    Batching,
}

/// Everything the system is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    /// `BIND` (default `127.0.0.1`) and `PORT` (default `8080`; `0` picks a free port).
    pub listen: SocketAddr,
    /// `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/commerce`); the database is
    /// created and migrated at start-up.
    pub database_url: String,
    /// `DB_MAX_CONNECTIONS` (default 20): the requests' pool.
    pub max_connections: u32,
    /// `DB_BACKGROUND_CONNECTIONS` (default 10): the pool of the relay, the consumers and the
    /// payment worker.
    pub background_connections: u32,
    /// `REDIS_URL`: when set, the product cache's L2 and invalidations go through Redis;
    /// unset or empty, both stay in-process.
    pub redis_url: Option<String>,
    /// `KAFKA_BROKERS`: when set, events go through Kafka; unset or empty, through the
    /// in-process transport (Postgres alone).
    pub kafka_brokers: Option<String>,
    /// `COMMERCE_JWT_SECRET`: the HS256 key of the bearer tokens (required, 16 bytes or more).
    pub jwt_secret: Secret,
    /// `PAYMENT_GATEWAY_URL`: the external payment gateway; unset, the all-in-one process
    /// starts the stand-in gateway itself (on `FAKE_PG_PORT`, default a free port).
    pub payment_gateway_url: Option<String>,
    /// `FAKE_PG_PORT` (default 0, a free port): where the embedded stand-in gateway listens.
    pub fake_pg_port: u16,
    /// `SAGA_TIMEOUT_SECS` (default 30): an order still CREATED this long after it became
    /// CREATED, without a payment answer, is cancelled (the saga's compensation).
    pub saga_timeout: Duration,
    /// `REQUEST_TIMEOUT_SECS` (default 10): a request taking longer gets 503.
    pub request_timeout: Duration,
    /// `BODY_LIMIT_BYTES` (default 65536): larger request bodies get 413.
    pub body_limit: usize,
    /// `SHUTDOWN_GRACE_SECS` (default 20): how long in-flight work may take to finish on
    /// Ctrl-C / SIGTERM.
    pub shutdown_grace: Duration,
    /// `CURRENCY` (default `EUR`): the currency of all prices.
    pub currency: String,
    /// `EVENT_PREFIX` (default `commerce`): the prefix of the topics and consumer groups, so
    /// several systems can share one broker.
    pub event_prefix: String,
    /// `MAX_IN_FLIGHT` (default 10000): requests in flight beyond this get 429 at once.
    pub max_in_flight: usize,
    /// `STOCK_STRATEGY` (`conditional-update`, the default, or `lock`).
    pub stock_strategy: StockStrategyKind,
}

/// A setting that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?}: {reason}")]
pub struct ConfigError {
    name: &'static str,
    value: String,
    reason: String,
}

impl Config {
    /// Reads the settings from the environment, with the documented defaults.
    ///
    /// # Errors
    /// A setting that does not parse, or a missing / too short `COMMERCE_JWT_SECRET`.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (the environment, or a map in tests).
    ///
    /// # Errors
    /// As [`Config::from_env`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let parse = |name: &'static str, default: &str| -> Result<String, ConfigError> {
            Ok(get(name).unwrap_or_else(|| default.to_owned()))
        };
        let number = |name: &'static str, default: u64| -> Result<u64, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(value) => value.trim().parse().map_err(|e| ConfigError {
                    name,
                    reason: format!("{e}"),
                    value,
                }),
            }
        };
        let bind: IpAddr = {
            let value = parse("BIND", "127.0.0.1")?;
            value.parse().map_err(|e| ConfigError {
                name: "BIND",
                reason: format!("{e}"),
                value,
            })?
        };
        let port = u16::try_from(number("PORT", 8080)?).map_err(|e| ConfigError {
            name: "PORT",
            value: get("PORT").unwrap_or_default(),
            reason: format!("{e}"),
        })?;
        let secret = get("COMMERCE_JWT_SECRET").ok_or_else(|| ConfigError {
            name: "COMMERCE_JWT_SECRET",
            value: String::new(),
            reason: "required: the HS256 key for bearer tokens (scripts/run.sh sets one)".into(),
        })?;
        if secret.len() < 16 {
            return Err(ConfigError {
                name: "COMMERCE_JWT_SECRET",
                value: "(hidden)".into(),
                reason: "must be at least 16 bytes".into(),
            });
        }
        let fake_pg_port = u16::try_from(number("FAKE_PG_PORT", 0)?).map_err(|e| ConfigError {
            name: "FAKE_PG_PORT",
            value: get("FAKE_PG_PORT").unwrap_or_default(),
            reason: format!("{e}"),
        })?;
        Ok(Self {
            listen: SocketAddr::new(bind, port),
            database_url: parse(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/commerce",
            )?,
            max_connections: u32::try_from(number("DB_MAX_CONNECTIONS", 20)?).unwrap_or(20),
            background_connections: u32::try_from(number("DB_BACKGROUND_CONNECTIONS", 10)?)
                .unwrap_or(10)
                .max(4),
            redis_url: get("REDIS_URL"),
            kafka_brokers: get("KAFKA_BROKERS"),
            jwt_secret: Secret::new(secret),
            payment_gateway_url: get("PAYMENT_GATEWAY_URL"),
            fake_pg_port,
            saga_timeout: Duration::from_secs(number("SAGA_TIMEOUT_SECS", 30)?),
            request_timeout: Duration::from_secs(number("REQUEST_TIMEOUT_SECS", 10)?),
            body_limit: usize::try_from(number("BODY_LIMIT_BYTES", 64 * 1024)?)
                .unwrap_or(64 * 1024),
            shutdown_grace: Duration::from_secs(number("SHUTDOWN_GRACE_SECS", 20)?),
            currency: parse("CURRENCY", "EUR")?,
            event_prefix: parse("EVENT_PREFIX", "commerce")?,
            max_in_flight: usize::try_from(number("MAX_IN_FLIGHT", 10_000)?)
                .unwrap_or(10_000)
                .max(1),
            stock_strategy: match get("STOCK_STRATEGY").as_deref() {
                None | Some("conditional-update") => StockStrategyKind::ConditionalUpdate,
                Some("lock") => StockStrategyKind::Lock,
                Some("batching") => StockStrategyKind::Batching,
                Some(other) => {
                    return Err(ConfigError {
                        name: "STOCK_STRATEGY",
                        value: other.to_owned(),
                        reason: "must be `conditional-update`, `lock` or `batching`".into(),
                    })
                }
            },
        })
    }

    /// Settings for a test or an embedding: `database_url`, a free port on localhost, the
    /// given secret, everything else at its default (in-process transport and cache, the
    /// embedded stand-in payment gateway).
    #[must_use]
    pub fn local(database_url: impl Into<String>, jwt_secret: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            database_url: database_url.into(),
            max_connections: 20,
            background_connections: 10,
            redis_url: None,
            kafka_brokers: None,
            jwt_secret: Secret::new(jwt_secret),
            payment_gateway_url: None,
            fake_pg_port: 0,
            saga_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            body_limit: 64 * 1024,
            shutdown_grace: Duration::from_secs(20),
            currency: "EUR".into(),
            event_prefix: "commerce".into(),
            max_in_flight: 10_000,
            stock_strategy: StockStrategyKind::ConditionalUpdate,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_apply_and_empty_values_count_as_unset() {
        let c = config(&[
            ("COMMERCE_JWT_SECRET", "0123456789abcdef"),
            ("KAFKA_BROKERS", ""),
            ("REDIS_URL", "  "),
        ])
        .unwrap();
        assert_eq!(c.listen.port(), 8080);
        assert!(c.kafka_brokers.is_none() && c.redis_url.is_none());
        assert_eq!(c.saga_timeout, Duration::from_secs(30));
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "secret in Debug"
        );
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err =
            config(&[("COMMERCE_JWT_SECRET", "0123456789abcdef"), ("PORT", "80x")]).unwrap_err();
        assert!(err.to_string().starts_with("PORT=\"80x\""), "{err}");
        let err = config(&[]).unwrap_err();
        assert!(err.to_string().contains("COMMERCE_JWT_SECRET"), "{err}");
        let err = config(&[("COMMERCE_JWT_SECRET", "short")]).unwrap_err();
        assert!(err.to_string().contains("at least 16"), "{err}");
    }
}
