//! A RabbitMQ [`JobQueue`](converto_core::JobQueue), over AMQP 0.9.1 (the `lapin` client).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use converto_adapters::rabbitmq::{RabbitConfig, RabbitJobQueue};
//! use converto_core::queue::{JobQueue, JobSpec};
//! use converto_core::ConversionId;
//!
//! let config = RabbitConfig::from_env()?.url("amqp://guest:guest@127.0.0.1:5672/%2f");
//! let queue = RabbitJobQueue::connect(config).await?;
//! queue.enqueue(JobSpec::now(ConversionId::new(), 0)).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! Under the configured prefix `P`, in the URL's vhost:
//!
//! | name | kind | holds |
//! |---|---|---|
//! | `P.jobs` | durable classic queue, `x-max-priority` 10 | one persistent message per live job: id, tenant, priority, not-before, deliveries so far |
//! | `P.dead` | durable classic queue | a copy of every dead-lettered job, with the error in its headers, for operators (converto never reads it) |
//! | `P.control` | fanout exchange | removals (cancel, delete), so the process holding a job drops it |
//!
//! # How RabbitMQ's semantics become the queue's
//!
//! RabbitMQ delivers in FIFO order per priority and cannot look up, reorder, delay or delete a
//! message in a queue. So the broker does what it is good at (durability, and giving a job
//! back when its holder dies) and each process orders what it holds:
//!
//! - **Holding.** A consuming process takes every message of `P.jobs` it is sent (up to the
//!   [prefetch](RabbitConfig::prefetch)) and keeps it *unacknowledged* while the job lives:
//!   ready, delayed, leased or retrying. The broker acknowledges it only on ack, dead-letter or
//!   remove. If the process dies or its connection drops, the broker puts every message it
//!   held back in `P.jobs` for another consumer (or this one, after it reconnects):
//!   at-least-once across crashes, with no lease bookkeeping in the broker.
//! - **Order, fairness, leases, delays.** What a process holds lives in a
//!   [`MemoryJobQueue`](converto_core::memory::MemoryJobQueue): tenants take turns, priority
//!   then not-before then arrival order within a tenant, skipped tenants, lease expiry with
//!   the next attempt number, heartbeats, delayed jobs held until their not-before (no TTL or
//!   per-delay queues), `release` in the old place. All exact over the jobs this process
//!   holds.
//! - **Retries** publish the job again with its new not-before and attempt count and
//!   acknowledge the old message, so a retry survives a crash with its delay and its count,
//!   and any process may run it.
//! - **Attempts across crashes.** The message carries the deliveries made before it was
//!   published. A message the broker marks *redelivered* (its holder died or disconnected
//!   before acknowledging it) counts one more delivery, since the broker cannot say whether
//!   the job was leased; a job that came back to the same process after a reconnect keeps its
//!   count. Leases that expired in a process that then crashed are not in the message: the
//!   job comes back with an attempt number at or below its record's, the engine refuses to
//!   start it and lets the lease expire, and each expiry counts one more, until it is newer
//!   (slower after such a crash, never two runs under one attempt number).
//! - **Cancellation.** `remove` acknowledges the held message and broadcasts the id on
//!   `P.control`, so the process that holds it drops it; a message for a removed id that
//!   arrives later (it was in flight) is dropped too (a tombstone, kept for an hour).
//! - **Dead letters** are acknowledged and copied to `P.dead` with their error; the process
//!   that dead-lettered a job keeps its id, so `stats` and `remove` see it.
//! - **Reconnects.** A supervisor task reconnects with backoff after the broker or the network
//!   drops the connection, re-declares the layout and consumes again; redelivered jobs are
//!   matched to the ones this process still knew, so their leases stay valid. While
//!   disconnected, operations that need the broker (enqueue, dead-letter) fail as temporary.
//!
//! # Several processes on one queue
//!
//! Each process sees exactly the jobs it holds: `stats` and the enqueue's "already queued"
//! answer are per process, and the fair order is kept within each process's share. `contains`
//! is exact for the jobs a process knows; for others it says whether `P.jobs` has messages no
//! consumer holds yet (the job may be one of them).
//! That is what the engine needs (its store is the shared truth, and its transitions are
//! fenced), but note:
//!
//! - An API-only process should set [`consume`](RabbitConfig::consume) to `false` (the
//!   `converto` binary does for `serve --no-workers`): it then publishes and removes, and
//!   holds nothing.
//! - With the default prefetch of 10,000, the first worker to connect takes up to that many
//!   jobs of a backlog; set a smaller prefetch (a few times each process's concurrency) to
//!   spread it, at the cost of fairness beyond each process's window.
//! - RabbitMQ closes a channel that holds an unacknowledged message longer than its
//!   `consumer_timeout` (30 min by default); the adapter reconnects and gets the jobs back,
//!   but with several processes a long-held job may move to another one. Raise
//!   `consumer_timeout` in `rabbitmq.conf` for long delays and long-running conversions.
//!
//! The sweeper of one worker process may re-enqueue a job another process holds (it cannot
//! see it); the copy is dropped if it reaches the process that holds the id, or runs once
//! more under the store's fencing (at-least-once), at most one copy per process.

mod config;
mod queue;

pub use config::{DEFAULT_QUEUE_PREFIX, DEFAULT_URL, RabbitConfig};
pub use queue::RabbitJobQueue;

use converto_core::queue::QueueError;

/// The name errors carry.
const BACKEND: &str = "rabbitmq";

/// What went wrong talking to RabbitMQ.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RabbitError {
    /// A setting is invalid.
    #[error("invalid RabbitMQ configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: &'static str,
    },
    /// The URL cannot be parsed.
    #[error("invalid RabbitMQ URL: {reason}")]
    InvalidUrl {
        /// What the parser said.
        reason: String,
    },
    /// An environment variable holds a value that does not parse.
    #[error("environment variable {var} has an invalid value")]
    InvalidEnv {
        /// The variable.
        var: &'static str,
    },
    /// The broker (or the connection to it) failed.
    #[error("RabbitMQ failed: {0}")]
    Amqp(#[from] lapin::Error),
    /// Opening a connection took longer than the connect timeout.
    #[error("timed out connecting to RabbitMQ")]
    ConnectTimeout,
    /// The connection is down; the adapter is reconnecting.
    #[error("the RabbitMQ connection is down")]
    Disconnected,
    /// The broker refused to take a published message (a publisher-confirm nack).
    #[error("RabbitMQ did not accept the message")]
    Nacked,
    /// A job message could not be encoded.
    #[error("bad job message: {0}")]
    Payload(#[from] serde_json::Error),
}

impl RabbitError {
    /// Whether trying again may succeed: connection, I/O, timeout and broker resource failures
    /// are temporary; access, configuration and protocol errors are permanent.
    pub fn is_temporary(&self) -> bool {
        use lapin::ErrorKind as K;
        use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
        match self {
            RabbitError::Amqp(e) => match e.kind() {
                K::IOError(_)
                | K::RuntimeShutdownError(_)
                | K::MissingHeartbeatError
                | K::InvalidChannelState(..)
                | K::InvalidConnectionState(_)
                | K::ChannelsLimitReached => true,
                K::ProtocolError(p) => matches!(
                    p.kind(),
                    AMQPErrorKind::Hard(
                        AMQPHardError::CONNECTIONFORCED | AMQPHardError::RESOURCEERROR
                    ) | AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED)
                ),
                _ => false,
            },
            RabbitError::ConnectTimeout | RabbitError::Disconnected | RabbitError::Nacked => true,
            RabbitError::InvalidConfig { .. }
            | RabbitError::InvalidUrl { .. }
            | RabbitError::InvalidEnv { .. }
            | RabbitError::Payload(_) => false,
        }
    }
}

impl From<RabbitError> for QueueError {
    fn from(e: RabbitError) -> Self {
        QueueError::backend(BACKEND, e.is_temporary(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_whether_to_retry() {
        let io = |kind| RabbitError::Amqp(lapin::Error::from(std::io::Error::from(kind)));
        assert!(io(std::io::ErrorKind::ConnectionRefused).is_temporary());
        assert!(io(std::io::ErrorKind::ConnectionReset).is_temporary());
        assert!(RabbitError::Disconnected.is_temporary());
        assert!(RabbitError::ConnectTimeout.is_temporary());
        assert!(!RabbitError::InvalidConfig { reason: "x" }.is_temporary());
        let payload = serde_json::from_str::<u8>("x").expect_err("not a number");
        assert!(!RabbitError::Payload(payload).is_temporary());
        let q: QueueError = RabbitError::Disconnected.into();
        assert!(q.is_temporary());
    }
}
