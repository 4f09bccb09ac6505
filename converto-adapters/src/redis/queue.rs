//! The Redis `JobQueue`: every operation is one Lua script, timed by the server's clock.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use converto_core::ConversionId;
use converto_core::conversion::ErrorInfo;
use converto_core::queue::{
    JobQueue, JobSpec, Lease, Look, QueueError, QueueStats, ReserveOptions, new_lease_token,
    wait_for_jobs,
};
use redis::aio::ConnectionManager;
use redis::{FromRedisValue, Script};

use super::pubsub::PubSubHub;
use super::{Keys, RedisError};

const COMMON: &str = include_str!("lua/common.lua");

/// Leases handed out per reserve call at most (a larger `max` gets this many).
pub(crate) const MAX_RESERVE: usize = 1000;
/// How often a waiting reserver looks again while the pub/sub connection is down.
const DISCONNECTED_POLL: Duration = Duration::from_millis(500);
/// Longest lease accepted, in µs (about 100 years): keeps scores exact in Lua.
const MAX_LEASE_US: u64 = 100 * 366 * 24 * 3600 * 1_000_000;
/// Not-before times are clamped to `0..=2^53 - 1` µs since the epoch (1970 to 2255): Lua
/// numbers are doubles.
const MAX_TIME_US: i64 = (1 << 53) - 1;

struct Scripts {
    enqueue: Script,
    reserve: Script,
    heartbeat: Script,
    ack: Script,
    retry: Script,
    release: Script,
    dead_letter: Script,
    remove: Script,
    stats: Script,
    purge: Script,
}

impl Scripts {
    fn new() -> Self {
        let with_common = |body: &str| Script::new(&format!("{COMMON}\n{body}"));
        Self {
            enqueue: with_common(include_str!("lua/enqueue.lua")),
            reserve: with_common(include_str!("lua/reserve.lua")),
            heartbeat: with_common(include_str!("lua/heartbeat.lua")),
            ack: with_common(include_str!("lua/ack.lua")),
            retry: with_common(include_str!("lua/retry.lua")),
            release: with_common(include_str!("lua/release.lua")),
            dead_letter: with_common(include_str!("lua/dead_letter.lua")),
            remove: with_common(include_str!("lua/remove.lua")),
            stats: with_common(include_str!("lua/stats.lua")),
            purge: with_common(include_str!("lua/purge.lua")),
        }
    }

    fn all(&self) -> [&Script; 10] {
        [
            &self.enqueue,
            &self.reserve,
            &self.heartbeat,
            &self.ack,
            &self.retry,
            &self.release,
            &self.dead_letter,
            &self.remove,
            &self.stats,
            &self.purge,
        ]
    }
}

/// A job queue in Redis (see the [module docs](super) for the layout), delivering in the fair
/// order of [`converto_core::queue`] (tenants take turns). Reservers wait on the
/// backend's pub/sub wake-ups (published by every enqueue and retry, from any process) and on a
/// timer for the next delayed job or lease expiry, never in a polling loop.
pub struct RedisJobQueue {
    conn: ConnectionManager,
    keys: Keys,
    /// KEYS of every script: ready, delayed, leased, dead, seq, tenants, turns.
    fixed_keys: [String; 7],
    job_prefix: String,
    wake_channel: String,
    scripts: Scripts,
    hub: Arc<PubSubHub>,
}

impl std::fmt::Debug for RedisJobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisJobQueue")
            .field("keys", &self.keys)
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

/// What the reserve script answers.
struct Reserved {
    expires_us: i64,
    /// Until the next delayed job or lease comes due, by the server's clock.
    next_due: Option<Duration>,
    jobs: Vec<ReservedJob>,
}

/// id, deliveries (the attempt), priority, lease token.
type ReservedJob = (String, u32, i32, String);

impl RedisJobQueue {
    pub(crate) fn new(conn: ConnectionManager, keys: Keys, hub: Arc<PubSubHub>) -> Self {
        Self {
            conn,
            fixed_keys: [
                "ready", "delayed", "leased", "dead", "seq", "tenants", "turns",
            ]
            .map(|k| keys.queue(k)),
            job_prefix: keys.queue("job:"),
            wake_channel: keys.wake_channel(),
            keys,
            scripts: Scripts::new(),
            hub,
        }
    }

    /// Loads every script, so a script error shows at connect time and the first calls need
    /// no second round trip. (A server that lost them, say after a restart, gets them again
    /// transparently on the next call.)
    pub(crate) async fn load_scripts(&self) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        for script in self.scripts.all() {
            script.prepare_invoke().load_async(&mut conn).await?;
        }
        Ok(())
    }

    /// Runs a queue script with the shared KEYS and ARGV prefix, then `args`.
    async fn run<T: FromRedisValue>(
        &self,
        script: &Script,
        args: impl FnOnce(&mut redis::ScriptInvocation<'_>),
    ) -> Result<T, RedisError> {
        let mut invocation = script.prepare_invoke();
        for key in &self.fixed_keys {
            invocation.key(key);
        }
        invocation.arg(&self.job_prefix).arg(&self.wake_channel);
        args(&mut invocation);
        let mut conn = self.conn.clone();
        Ok(invocation.invoke_async(&mut conn).await?)
    }

    async fn try_reserve(
        &self,
        max: usize,
        lease_us: u64,
        skip: &[&str],
    ) -> Result<Reserved, RedisError> {
        let tokens: Vec<String> = (0..max).map(|_| new_lease_token().to_string()).collect();
        let (_now, expires_us, next_due, jobs): (i64, i64, i64, Vec<ReservedJob>) = self
            .run(&self.scripts.reserve, |inv| {
                inv.arg(lease_us).arg(skip.len());
                for tenant in skip {
                    inv.arg(*tenant);
                }
                for token in &tokens {
                    inv.arg(token);
                }
            })
            .await?;
        Ok(Reserved {
            expires_us,
            next_due: u64::try_from(next_due).ok().map(Duration::from_micros),
            jobs,
        })
    }

    /// Acks many leases in one round trip; returns the ids whose leases were no longer held
    /// (those jobs are left alone, as [`JobQueue::ack`] would).
    pub async fn ack_many(&self, leases: &[Lease]) -> Result<Vec<ConversionId>, QueueError> {
        let mut lost = Vec::new();
        // Chunked: a script unpacks its arguments onto Lua's stack, which holds about 8000.
        for chunk in leases.chunks(MAX_RESERVE) {
            let acked: Vec<i64> = self
                .run(&self.scripts.ack, |inv| {
                    for lease in chunk {
                        inv.arg(lease.id.to_string()).arg(lease.token.to_string());
                    }
                })
                .await?;
            if acked.len() != chunk.len() {
                return Err(RedisError::UnexpectedReply { command: "ack" }.into());
            }
            lost.extend(
                chunk
                    .iter()
                    .zip(acked)
                    .filter(|(_, ok)| *ok == 0)
                    .map(|(l, _)| l.id),
            );
        }
        Ok(lost)
    }
}

impl RedisJobQueue {
    /// Deletes every job under this prefix, in every state (dead letters too), and returns how
    /// many there were. For tests, benchmarks and operators resetting a queue; it runs as one
    /// script, so on a very large queue it holds the server for a while.
    pub async fn purge(&self) -> Result<u64, QueueError> {
        Ok(self.run(&self.scripts.purge, |_| {}).await?)
    }
}

fn lease_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .min(MAX_LEASE_US)
}

/// Microseconds since the epoch, rounded up so a job is never due before its not-before, and
/// clamped to what the scripts hold exactly.
fn ceil_us(t: DateTime<Utc>) -> i64 {
    let us = t.timestamp_micros();
    let us = if t.timestamp_subsec_nanos().is_multiple_of(1_000) {
        us
    } else {
        us.saturating_add(1)
    };
    us.clamp(0, MAX_TIME_US)
}

fn from_us(us: i64) -> Result<DateTime<Utc>, RedisError> {
    DateTime::from_timestamp_micros(us).ok_or(RedisError::UnexpectedReply { command: "time" })
}

fn lease_lost(id: ConversionId) -> QueueError {
    QueueError::LeaseLost { id }
}

#[async_trait]
impl JobQueue for RedisJobQueue {
    async fn enqueue(&self, job: JobSpec) -> Result<bool, QueueError> {
        let added: i64 = self
            .run(&self.scripts.enqueue, |inv| {
                inv.arg(job.id.to_string())
                    .arg(job.priority)
                    .arg(ceil_us(job.not_before))
                    .arg(job.attempts)
                    .arg(&job.tenant);
            })
            .await?;
        Ok(added == 1)
    }

    async fn reserve_with(
        &self,
        max: usize,
        lease_for: Duration,
        wait: Duration,
        options: &ReserveOptions,
    ) -> Result<Vec<Lease>, QueueError> {
        let lease_us = lease_us(lease_for);
        let skip = options.skipped();
        let skip = skip.as_slice();
        // The skipped tenants and the tokens share the script's arguments (Lua's stack).
        let max = max.clamp(1, MAX_RESERVE.saturating_sub(skip.len()).max(1));
        let also = options.wake.as_deref();
        wait_for_jobs(self.hub.wake(), also, wait, move || async move {
            let reserved = self.try_reserve(max, lease_us, skip).await?;
            let leases = if reserved.jobs.is_empty() {
                Vec::new()
            } else {
                let expires_at = from_us(reserved.expires_us)?;
                reserved
                    .jobs
                    .into_iter()
                    .map(|(id, attempt, priority, token)| {
                        Ok(Lease {
                            id: id
                                .parse()
                                .map_err(|_| RedisError::UnexpectedReply { command: "reserve" })?,
                            attempt,
                            priority,
                            token: token
                                .parse()
                                .map_err(|_| RedisError::UnexpectedReply { command: "reserve" })?,
                            expires_at,
                        })
                    })
                    .collect::<Result<Vec<_>, RedisError>>()?
            };
            Ok::<_, QueueError>(Look {
                reserved: leases,
                next_due_in: reserved.next_due,
                // Without the wake-up connection, enqueues by others go unheard: poll.
                recheck_in: (!self.hub.is_connected()).then_some(DISCONNECTED_POLL),
            })
        })
        .await
    }

    async fn heartbeat(&self, lease: &Lease, lease_for: Duration) -> Result<Lease, QueueError> {
        let expires_us: i64 = self
            .run(&self.scripts.heartbeat, |inv| {
                inv.arg(lease.id.to_string())
                    .arg(lease.token.to_string())
                    .arg(lease_us(lease_for));
            })
            .await?;
        if expires_us == 0 {
            return Err(lease_lost(lease.id));
        }
        Ok(Lease {
            expires_at: from_us(expires_us)?,
            ..lease.clone()
        })
    }

    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        match self.ack_many(std::slice::from_ref(lease)).await?.is_empty() {
            true => Ok(()),
            false => Err(lease_lost(lease.id)),
        }
    }

    async fn ack_many(&self, leases: &[Lease]) -> Result<Vec<ConversionId>, QueueError> {
        // The inherent method: one round trip for the whole batch.
        Self::ack_many(self, leases).await
    }

    fn batches_acks(&self) -> bool {
        true
    }

    async fn retry(&self, lease: &Lease, not_before: DateTime<Utc>) -> Result<(), QueueError> {
        let done: i64 = self
            .run(&self.scripts.retry, |inv| {
                inv.arg(lease.id.to_string())
                    .arg(lease.token.to_string())
                    .arg(ceil_us(not_before));
            })
            .await?;
        match done {
            1 => Ok(()),
            _ => Err(lease_lost(lease.id)),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), QueueError> {
        let done: i64 = self
            .run(&self.scripts.release, |inv| {
                inv.arg(lease.id.to_string()).arg(lease.token.to_string());
            })
            .await?;
        if done == 1 {
            Ok(())
        } else {
            Err(lease_lost(lease.id))
        }
    }

    async fn dead_letter(&self, lease: &Lease, error: &ErrorInfo) -> Result<(), QueueError> {
        let done: i64 = self
            .run(&self.scripts.dead_letter, |inv| {
                inv.arg(lease.id.to_string())
                    .arg(lease.token.to_string())
                    .arg(&error.code)
                    .arg(&error.message);
            })
            .await?;
        match done {
            1 => Ok(()),
            _ => Err(lease_lost(lease.id)),
        }
    }

    async fn remove(&self, id: ConversionId) -> Result<bool, QueueError> {
        let removed: i64 = self
            .run(&self.scripts.remove, |inv| {
                inv.arg(id.to_string());
            })
            .await?;
        Ok(removed == 1)
    }

    async fn contains(&self, id: ConversionId) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let state: Option<String> = redis::cmd("HGET")
            .arg(format!("{}{id}", self.job_prefix))
            .arg("state")
            .query_async(&mut conn)
            .await
            .map_err(RedisError::from)?;
        Ok(state.is_some_and(|s| s != "x"))
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let (ready, delayed, leased, dead): (u64, u64, u64, u64) =
            self.run(&self.scripts.stats, |_| {}).await?;
        Ok(QueueStats {
            ready,
            delayed,
            leased,
            dead,
        })
    }

    async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(RedisError::from)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn not_before_rounds_up_to_the_microsecond_and_clamps() {
        let at = |s, ns| Utc.timestamp_opt(s, ns).single().expect("time");
        assert_eq!(ceil_us(at(1_700_000_000, 1_500)), 1_700_000_000_000_002);
        assert_eq!(ceil_us(at(1_700_000_000, 2_000)), 1_700_000_000_000_002);
        assert_eq!(ceil_us(at(-5, 0)), 0);
        assert_eq!(ceil_us(DateTime::<Utc>::MIN_UTC), 0);
        assert_eq!(ceil_us(DateTime::<Utc>::MAX_UTC), MAX_TIME_US);
    }
}
