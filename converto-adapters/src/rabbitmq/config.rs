//! Connection settings for the RabbitMQ queue.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::RabbitError;
use crate::settings::{LoneUserInfo, millis, redact_userinfo};

/// The URL used when none is configured: the broker's default vhost `/` on localhost.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The name prefix used when none is configured.
pub const DEFAULT_QUEUE_PREFIX: &str = "converto";

/// How to reach RabbitMQ and how converto names its queues there.
///
/// Deserialisable (every field optional), built with chained setters, or read from the
/// environment with [`RabbitConfig::from_env`]. `Debug` hides any password in the URL.
///
/// ```
/// use std::time::Duration;
/// use converto_adapters::rabbitmq::RabbitConfig;
///
/// let config = RabbitConfig::new("amqp://converto:secret@mq.internal:5672/%2f")
///     .queue_prefix("converto-staging")
///     .prefetch(500)
///     .connect_timeout(Duration::from_secs(3));
/// assert!(config.validate().is_ok());
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitConfig {
    /// `amqp://[user[:password]@]host[:port][/vhost]`, the vhost percent-encoded (`%2f` is `/`).
    pub url: String,
    /// Names the queues and the exchange (`P.jobs`, `P.dead`, `P.control`), so several
    /// deployments (or test runs) can share one vhost.
    pub queue_prefix: String,
    /// Whether this process takes jobs from the broker. `false` for an API-only process: it
    /// publishes jobs and removals but holds none, so it never keeps jobs from the workers.
    pub consume: bool,
    /// Jobs the broker hands this process ahead of its workers' reserves (AMQP prefetch); 0
    /// is unlimited. Fairness, priorities and not-before times are exact over the jobs a
    /// process holds. The default, 10,000, holds a large window while bounding the memory a
    /// backlog of any size can take here; with several worker processes a smaller bound
    /// spreads a backlog between them (see the [module docs](super)).
    pub prefetch: u16,
    /// How long to wait for the connection to open, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How long an enqueue waits for its message to come back to this process's consumer
    /// before it returns anyway (the message went to another process), in milliseconds.
    pub arrival_wait_ms: u64,
}

impl Default for RabbitConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_URL.to_owned(),
            queue_prefix: DEFAULT_QUEUE_PREFIX.to_owned(),
            consume: true,
            prefetch: 10_000,
            connect_timeout_ms: 5_000,
            arrival_wait_ms: 2_000,
        }
    }
}

impl RabbitConfig {
    /// The defaults, with this URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Reads `CONVERTO_RABBITMQ_URL`, `CONVERTO_RABBITMQ_QUEUE_PREFIX`,
    /// `CONVERTO_RABBITMQ_CONSUME`, `CONVERTO_RABBITMQ_PREFETCH`,
    /// `CONVERTO_RABBITMQ_CONNECT_TIMEOUT_MS` and `CONVERTO_RABBITMQ_ARRIVAL_WAIT_MS`; unset
    /// variables keep their defaults.
    pub fn from_env() -> Result<Self, RabbitError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, RabbitError> {
        fn number<T: std::str::FromStr>(
            get: &impl Fn(&str) -> Option<String>,
            var: &'static str,
        ) -> Result<Option<T>, RabbitError> {
            get(var)
                .map(|v| {
                    v.trim()
                        .parse()
                        .map_err(|_| RabbitError::InvalidEnv { var })
                })
                .transpose()
        }
        let mut config = Self::default();
        if let Some(url) = get("CONVERTO_RABBITMQ_URL") {
            config.url = url;
        }
        if let Some(prefix) = get("CONVERTO_RABBITMQ_QUEUE_PREFIX") {
            config.queue_prefix = prefix;
        }
        if let Some(v) = get("CONVERTO_RABBITMQ_CONSUME") {
            config.consume = crate::settings::parse_switch(&v).ok_or(RabbitError::InvalidEnv {
                var: "CONVERTO_RABBITMQ_CONSUME",
            })?;
        }
        if let Some(v) = number(&get, "CONVERTO_RABBITMQ_PREFETCH")? {
            config.prefetch = v;
        }
        if let Some(v) = number(&get, "CONVERTO_RABBITMQ_CONNECT_TIMEOUT_MS")? {
            config.connect_timeout_ms = v;
        }
        if let Some(v) = number(&get, "CONVERTO_RABBITMQ_ARRIVAL_WAIT_MS")? {
            config.arrival_wait_ms = v;
        }
        config.validate()?;
        Ok(config)
    }

    /// Sets `url`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Sets `queue_prefix`.
    pub fn queue_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.queue_prefix = prefix.into();
        self
    }

    /// Sets `consume`.
    pub fn consume(mut self, consume: bool) -> Self {
        self.consume = consume;
        self
    }

    /// Sets `prefetch` (0: unlimited).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout_ms = millis(timeout);
        self
    }

    /// Sets how long an enqueue waits for its message to arrive here.
    pub fn arrival_wait(mut self, wait: Duration) -> Self {
        self.arrival_wait_ms = millis(wait);
        self
    }

    /// Checks the settings without connecting.
    pub fn validate(&self) -> Result<(), RabbitError> {
        let prefix = &self.queue_prefix;
        if prefix.is_empty() || prefix.len() > 200 {
            return Err(RabbitError::InvalidConfig {
                reason: "queue_prefix must be 1 to 200 bytes",
            });
        }
        if prefix.starts_with("amq.") {
            return Err(RabbitError::InvalidConfig {
                reason: "queue_prefix may not start with `amq.` (reserved by the broker)",
            });
        }
        if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(RabbitError::InvalidConfig {
                reason: "queue_prefix contains whitespace or control characters",
            });
        }
        if self.connect_timeout_ms == 0 {
            return Err(RabbitError::InvalidConfig {
                reason: "connect_timeout_ms must be positive",
            });
        }
        self.url
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|reason| RabbitError::InvalidUrl { reason })?;
        Ok(())
    }

    pub(crate) fn connect_timeout_duration(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn arrival_wait_duration(&self) -> Duration {
        Duration::from_millis(self.arrival_wait_ms)
    }
}

impl fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("url", &redact_url(&self.url))
            .field("queue_prefix", &self.queue_prefix)
            .field("consume", &self.consume)
            .field("prefetch", &self.prefetch)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("arrival_wait_ms", &self.arrival_wait_ms)
            .finish()
    }
}

/// The URL with any password replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    redact_userinfo(url, LoneUserInfo::User)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_defaults() {
        let env = |name: &str| match name {
            "CONVERTO_RABBITMQ_URL" => Some("amqp://u:p@h:5673/v".to_owned()),
            "CONVERTO_RABBITMQ_QUEUE_PREFIX" => Some("staging".to_owned()),
            "CONVERTO_RABBITMQ_CONSUME" => Some("off".to_owned()),
            "CONVERTO_RABBITMQ_PREFETCH" => Some(" 64 ".to_owned()),
            _ => None,
        };
        let c = RabbitConfig::from_lookup(env).expect("valid");
        assert_eq!(c.url, "amqp://u:p@h:5673/v");
        assert_eq!(c.queue_prefix, "staging");
        assert!(!c.consume);
        assert_eq!(c.prefetch, 64);
        assert_eq!(c.arrival_wait_ms, RabbitConfig::default().arrival_wait_ms);
        let bad = |name: &str| (name == "CONVERTO_RABBITMQ_PREFETCH").then(|| "many".to_owned());
        assert!(matches!(
            RabbitConfig::from_lookup(bad),
            Err(RabbitError::InvalidEnv { .. })
        ));
    }

    #[test]
    fn validation_and_redaction() {
        assert!(RabbitConfig::default().validate().is_ok());
        assert!(RabbitConfig::default().queue_prefix("").validate().is_err());
        assert!(
            RabbitConfig::default()
                .queue_prefix("amq.x")
                .validate()
                .is_err()
        );
        assert!(
            RabbitConfig::default()
                .queue_prefix("a b")
                .validate()
                .is_err()
        );
        assert!(RabbitConfig::new("http://nope").validate().is_err());
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://h/%2f"), "amqp://h/%2f");
    }
}
