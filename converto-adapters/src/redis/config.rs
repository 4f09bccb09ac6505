//! Connection settings for the Redis backend.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::RedisError;
use crate::settings::{LoneUserInfo, millis, redact_query_password, redact_userinfo};

/// The URL used when none is configured.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";
/// The key prefix used when none is configured.
pub const DEFAULT_KEY_PREFIX: &str = "converto";

/// How to reach Redis and where in it converto keeps its keys.
///
/// Deserialisable (every field optional), built with chained setters, or read from the
/// environment with [`RedisConfig::from_env`]. `Debug` hides any password in the URL.
///
/// ```
/// use std::time::Duration;
/// use converto_adapters::redis::RedisConfig;
///
/// let config = RedisConfig::new("redis://:secret@localhost:6379/0")
///     .key_prefix("converto-staging")
///     .progress_ttl(Duration::from_secs(3600));
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user[:password]@]host[:port][/db]` (or `rediss://`, `redis+unix://`).
    pub url: String,
    /// Prepended to every key and channel, so several deployments (or test runs) can share one
    /// Redis. Must be non-empty and contain no braces or whitespace: the queue's keys wrap it in
    /// a `{...}` hash tag so they stay in one cluster slot.
    pub key_prefix: String,
    /// How long a conversion's latest progress is kept after its last update, in seconds.
    pub progress_ttl_secs: u64,
    /// How long to wait for a connection to open, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How long to wait for a reply to a command, in milliseconds.
    pub response_timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_URL.to_owned(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            progress_ttl_secs: 24 * 60 * 60,
            connect_timeout_ms: 5_000,
            response_timeout_ms: 10_000,
        }
    }
}

impl RedisConfig {
    /// The defaults, with this URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Reads `CONVERTO_REDIS_URL`, `CONVERTO_REDIS_KEY_PREFIX`,
    /// `CONVERTO_REDIS_PROGRESS_TTL_SECS`, `CONVERTO_REDIS_CONNECT_TIMEOUT_MS` and
    /// `CONVERTO_REDIS_RESPONSE_TIMEOUT_MS`; unset variables keep their defaults.
    pub fn from_env() -> Result<Self, RedisError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, RedisError> {
        let number = |var: &'static str| -> Result<Option<u64>, RedisError> {
            get(var)
                .map(|v| v.trim().parse().map_err(|_| RedisError::InvalidEnv { var }))
                .transpose()
        };
        let mut config = Self::default();
        if let Some(url) = get("CONVERTO_REDIS_URL") {
            config.url = url;
        }
        if let Some(prefix) = get("CONVERTO_REDIS_KEY_PREFIX") {
            config.key_prefix = prefix;
        }
        if let Some(v) = number("CONVERTO_REDIS_PROGRESS_TTL_SECS")? {
            config.progress_ttl_secs = v;
        }
        if let Some(v) = number("CONVERTO_REDIS_CONNECT_TIMEOUT_MS")? {
            config.connect_timeout_ms = v;
        }
        if let Some(v) = number("CONVERTO_REDIS_RESPONSE_TIMEOUT_MS")? {
            config.response_timeout_ms = v;
        }
        config.validate()?;
        Ok(config)
    }

    /// Sets `url`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Sets `key_prefix`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets how long the latest progress is kept (whole seconds, at least one).
    pub fn progress_ttl(mut self, ttl: Duration) -> Self {
        self.progress_ttl_secs = ttl.as_secs().max(1);
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout_ms = millis(timeout);
        self
    }

    /// Sets the response timeout.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout_ms = millis(timeout);
        self
    }

    /// Checks the settings without connecting.
    pub fn validate(&self) -> Result<(), RedisError> {
        let prefix = &self.key_prefix;
        if prefix.is_empty() {
            return Err(RedisError::InvalidConfig {
                reason: "key_prefix is empty",
            });
        }
        if prefix
            .chars()
            .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control())
        {
            return Err(RedisError::InvalidConfig {
                reason: "key_prefix contains braces, whitespace or control characters",
            });
        }
        if self.progress_ttl_secs == 0 {
            return Err(RedisError::InvalidConfig {
                reason: "progress_ttl_secs is zero",
            });
        }
        if self.connect_timeout_ms == 0 || self.response_timeout_ms == 0 {
            return Err(RedisError::InvalidConfig {
                reason: "timeouts must be positive",
            });
        }
        redis::Client::open(self.url.as_str()).map_err(RedisError::InvalidUrl)?;
        Ok(())
    }

    pub(crate) fn connect_timeout_duration(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn response_timeout_duration(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("progress_ttl_secs", &self.progress_ttl_secs)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("response_timeout_ms", &self.response_timeout_ms)
            .finish()
    }
}

/// The URL with any password (in the user-info part or a `password=` parameter) replaced by
/// `***`. redis-rs reads a lone user-info part (`redis://secret@host`) as the password.
pub(crate) fn redact_url(url: &str) -> String {
    redact_query_password(&redact_userinfo(url, LoneUserInfo::Password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_passwords() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://:pw@host:1/0", "redis://:***@host:1/0"),
            ("rediss://user:pw@host", "rediss://user:***@host"),
            ("redis://pw@host", "redis://***@host"),
            (
                "redis://host/0?password=pw&x=1",
                "redis://host/0?password=***&x=1",
            ),
        ] {
            assert_eq!(redact_url(url), shown);
            let debug = format!("{:?}", RedisConfig::new(url));
            assert!(!debug.contains("pw"), "{debug}");
        }
    }

    #[test]
    fn env_and_validation() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let c = RedisConfig::from_lookup(env(&[
            ("CONVERTO_REDIS_URL", "redis://h:7/1"),
            ("CONVERTO_REDIS_KEY_PREFIX", "p"),
            ("CONVERTO_REDIS_PROGRESS_TTL_SECS", "60"),
        ]))
        .expect("valid");
        assert_eq!(
            (c.url.as_str(), c.key_prefix.as_str(), c.progress_ttl_secs),
            ("redis://h:7/1", "p", 60)
        );
        assert!(matches!(
            RedisConfig::from_lookup(env(&[("CONVERTO_REDIS_CONNECT_TIMEOUT_MS", "soon")])),
            Err(RedisError::InvalidEnv {
                var: "CONVERTO_REDIS_CONNECT_TIMEOUT_MS"
            })
        ));
        assert!(
            RedisConfig::default()
                .key_prefix("a{b}")
                .validate()
                .is_err()
        );
        assert!(RedisConfig::default().key_prefix("").validate().is_err());
        assert!(RedisConfig::new("http://nope").validate().is_err());
        let parsed: RedisConfig =
            serde_json::from_str(r#"{"key_prefix":"x"}"#).expect("deserialise");
        assert_eq!(parsed, RedisConfig::default().key_prefix("x"));
    }
}
