//! Redis backends: a [`JobQueue`](converto_core::JobQueue) and a
//! [`ProgressBus`](converto_core::ProgressBus).
//!
//! ```no_run
//! # async fn run() -> Result<(), converto_adapters::redis::RedisError> {
//! use converto_adapters::redis::{RedisBackend, RedisConfig};
//!
//! let backend = RedisBackend::connect(RedisConfig::from_env()?).await?;
//! let (queue, bus) = (backend.queue(), backend.bus());
//! # let _ = (queue, bus);
//! # Ok(())
//! # }
//! ```
//!
//! Layout, under the configured prefix `P`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{P}:queue:ready:<tenant>` | sorted set | a tenant's deliverable jobs, ordered by member (priority, not-before, sequence, id) |
//! | `{P}:queue:tenants` | set | the tenants with deliverable jobs |
//! | `{P}:queue:turns` | hash | each tenant's turn count (the fair order across tenants) |
//! | `{P}:queue:ready` | sorted set | jobs made ready before queues knew tenants (moved on) |
//! | `{P}:queue:delayed` | sorted set | jobs waiting for their not-before, scored by it in µs |
//! | `{P}:queue:leased` | sorted set | leased jobs, scored by lease expiry in µs |
//! | `{P}:queue:dead` | set | dead-lettered ids |
//! | `{P}:queue:job:<id>` | hash | priority, not-before, sequence, deliveries, state, token, expiry, tenant |
//! | `{P}:queue:seq` | string | the enqueue sequence |
//! | `P:progress:<id>` | hash (with a TTL) | the latest progress and status events |
//!
//! Channels: `{P}:queue:wake` (an enqueue or retry happened) and `P:events:<id>` (one
//! conversion's events). Every queue operation is one Lua script that reads the server's clock,
//! so workers on different hosts agree on due times and lease expiry.

mod config;
mod progress;
mod pubsub;
mod queue;

use std::sync::Arc;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use config::{DEFAULT_KEY_PREFIX, DEFAULT_URL, RedisConfig};
pub use progress::RedisProgressBus;
pub use queue::RedisJobQueue;

use converto_core::progress::BusError;
use converto_core::queue::QueueError;
use pubsub::PubSubHub;

/// The name errors carry.
const BACKEND: &str = "redis";

/// What went wrong talking to Redis.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// A setting is invalid.
    #[error("invalid Redis configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: &'static str,
    },
    /// The URL cannot be parsed.
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(#[source] redis::RedisError),
    /// An environment variable holds a value that does not parse.
    #[error("environment variable {var} has an invalid value")]
    InvalidEnv {
        /// The variable.
        var: &'static str,
    },
    /// Redis (or the connection to it) failed.
    #[error("Redis failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// Opening a connection took longer than the connect timeout.
    #[error("timed out connecting to Redis")]
    ConnectTimeout,
    /// The pub/sub connection is down and did not come back in time.
    #[error("the Redis pub/sub connection is down")]
    Disconnected,
    /// A reply did not have the expected shape.
    #[error("unexpected reply from Redis to {command}")]
    UnexpectedReply {
        /// The command or script.
        command: &'static str,
    },
    /// A stored or published event could not be encoded or decoded.
    #[error("bad event payload: {0}")]
    Payload(#[from] serde_json::Error),
}

impl RedisError {
    /// Whether trying again may succeed: connection, I/O and timeout failures are temporary;
    /// script, parse and configuration errors are permanent.
    pub fn is_temporary(&self) -> bool {
        use redis::{ErrorKind, ServerErrorKind};
        match self {
            RedisError::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped()
                    || matches!(
                        e.kind(),
                        ErrorKind::Server(
                            ServerErrorKind::BusyLoading
                                | ServerErrorKind::TryAgain
                                | ServerErrorKind::ClusterDown
                                | ServerErrorKind::MasterDown
                                | ServerErrorKind::ReadOnly
                        )
                    )
            }
            RedisError::ConnectTimeout | RedisError::Disconnected => true,
            RedisError::InvalidConfig { .. }
            | RedisError::InvalidUrl(_)
            | RedisError::InvalidEnv { .. }
            | RedisError::UnexpectedReply { .. }
            | RedisError::Payload(_) => false,
        }
    }
}

impl From<RedisError> for QueueError {
    fn from(e: RedisError) -> Self {
        QueueError::backend(BACKEND, e.is_temporary(), e)
    }
}

impl From<RedisError> for BusError {
    fn from(e: RedisError) -> Self {
        BusError::backend(BACKEND, e.is_temporary(), e)
    }
}

/// Key and channel names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    queue: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            // The hash tag keeps every key a queue script touches in one cluster slot.
            queue: format!("{{{prefix}}}:queue:"),
        }
    }

    pub(crate) fn queue(&self, name: &str) -> String {
        format!("{}{name}", self.queue)
    }

    pub(crate) fn wake_channel(&self) -> String {
        self.queue("wake")
    }

    pub(crate) fn progress(&self, id: &impl std::fmt::Display) -> String {
        format!("{}:progress:{id}", self.prefix)
    }

    pub(crate) fn events_channel(&self, id: &impl std::fmt::Display) -> String {
        format!("{}:events:{id}", self.prefix)
    }

    /// The progress key for an events channel, for the pub/sub hub's resync after a reconnect.
    pub(crate) fn progress_of_channel(&self, channel: &str) -> Option<String> {
        let id = channel.strip_prefix(&format!("{}:events:", self.prefix))?;
        Some(self.progress(&id))
    }
}

/// One Redis deployment: a multiplexed command connection (reconnecting on failure) and one
/// pub/sub connection, shared by the queue and the bus it hands out.
#[derive(Debug, Clone)]
pub struct RedisBackend {
    queue: Arc<RedisJobQueue>,
    bus: Arc<RedisProgressBus>,
}

impl RedisBackend {
    /// Connects (failing fast if Redis cannot be reached) and loads the queue's scripts.
    pub async fn connect(config: RedisConfig) -> Result<Self, RedisError> {
        config.validate()?;
        let client = redis::Client::open(config.url.as_str()).map_err(RedisError::InvalidUrl)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout_duration()))
            .set_response_timeout(Some(config.response_timeout_duration()));
        let conn = tokio::time::timeout(
            config.connect_timeout_duration(),
            ConnectionManager::new_with_config(client.clone(), manager_config),
        )
        .await
        .map_err(|_| RedisError::ConnectTimeout)??;
        let keys = Keys::new(&config.key_prefix);
        let hub = PubSubHub::start(client, conn.clone(), keys.clone(), &config).await?;
        let queue = RedisJobQueue::new(conn.clone(), keys.clone(), Arc::clone(&hub));
        queue.load_scripts().await?;
        let bus = RedisProgressBus::new(conn, keys, hub, config.progress_ttl_secs);
        Ok(Self {
            queue: Arc::new(queue),
            bus: Arc::new(bus),
        })
    }

    /// The job queue.
    pub fn queue(&self) -> Arc<RedisJobQueue> {
        Arc::clone(&self.queue)
    }

    /// The progress bus.
    pub fn bus(&self) -> Arc<RedisProgressBus> {
        Arc::clone(&self.bus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{ErrorKind, ServerErrorKind};

    #[test]
    fn errors_say_whether_to_retry() {
        let redis = |kind| RedisError::Redis(redis::RedisError::from((kind, "test")));
        let io = |kind| RedisError::Redis(std::io::Error::from(kind).into());
        assert!(io(std::io::ErrorKind::ConnectionRefused).is_temporary());
        assert!(io(std::io::ErrorKind::TimedOut).is_temporary());
        assert!(io(std::io::ErrorKind::ConnectionReset).is_temporary());
        assert!(redis(ErrorKind::Server(ServerErrorKind::BusyLoading)).is_temporary());
        assert!(RedisError::Disconnected.is_temporary());
        assert!(!redis(ErrorKind::Server(ServerErrorKind::ResponseError)).is_temporary());
        assert!(!redis(ErrorKind::Parse).is_temporary());
        assert!(!redis(ErrorKind::UnexpectedReturnType).is_temporary());
        assert!(!RedisError::UnexpectedReply { command: "reserve" }.is_temporary());
        let q: QueueError = io(std::io::ErrorKind::ConnectionRefused).into();
        assert!(q.is_temporary());
        let b: BusError = redis(ErrorKind::Parse).into();
        assert!(!b.is_temporary());
    }
}
