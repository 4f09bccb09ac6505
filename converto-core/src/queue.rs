//! The `JobQueue` trait: at-least-once delivery with leases, fair across tenants.
//!
//! # Delivery order
//!
//! Every backend delivers in the same order, so that one tenant's backlog never starves another
//! tenant's job: tenants take turns, and priority orders jobs within a tenant.
//!
//! - **Within a tenant**: highest priority first, then earliest not-before, then enqueue order.
//! - **Across tenants**: each tenant has a *turn count*. Among the tenants with a deliverable
//!   job, let `M` be the highest turn count; a tenant whose count is below `M - 1` is lifted to
//!   `M - 1` (so a tenant that was idle, or is new, joins the current round: it owes no turns
//!   and is owed none). A tenant's k-th deliverable job (from 0) is due at turn
//!   `count + k`. Deliveries go by turn; jobs due at the same turn go highest priority first,
//!   then earliest not-before, then enqueue order, whichever tenant they belong to.
//! - A reserve of `N` delivers the first `N` jobs of that order (it considers each tenant's
//!   first `N` deliverable jobs). When jobs of two or more tenants were deliverable, each tenant
//!   served ends at the turn after its last job delivered; with one tenant alone, counts do not
//!   move (nobody waits).
//!
//! So every tenant with deliverable work is served once per round, the highest-priority head
//! of the round first: with `S` reservers of one job each, a tenant's job waits at most for the
//! jobs already leased plus one per other tenant, never for another tenant's backlog. A batch
//! of `N` over `T` tenants with enough deliverable jobs takes `ceil(N / T)` from each, give or
//! take the one turn a tenant may be ahead of another. Priority crosses tenants only within a
//! round: a tenant cannot starve others by raising its priorities. With one tenant the order is
//! plain priority, then not-before, then enqueue order.
//!
//! Concurrent reservers of a shared backend (PostgreSQL) see the counts as of their statement,
//! so under contention the rounds are approximate: each reserver still serves the tenant
//! furthest behind, and skips jobs another reserver holds.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::ConversionId;
use crate::conversion::ErrorInfo;
use crate::error::BackendError;

/// A `dyn JobQueue`.
pub type DynJobQueue = dyn JobQueue;

/// The tenant of jobs enqueued without one (and of jobs stored before queues knew tenants).
pub const DEFAULT_TENANT: &str = "default";

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// The conversion to run.
    pub id: ConversionId,
    /// The conversion's tenant: deliveries are shared fairly between tenants (see the
    /// [module docs](self)).
    pub tenant: String,
    /// Higher first.
    pub priority: i32,
    /// Not delivered before this time.
    pub not_before: DateTime<Utc>,
    /// Deliveries already made (0 for a new job; the record's attempts when the sweeper
    /// re-enqueues), so attempt numbers keep rising.
    pub attempts: u32,
}

impl JobSpec {
    /// A new job of the [`DEFAULT_TENANT`], ready now.
    pub fn now(id: ConversionId, priority: i32) -> Self {
        Self {
            id,
            tenant: DEFAULT_TENANT.to_owned(),
            priority,
            not_before: Utc::now(),
            attempts: 0,
        }
    }

    /// The same job, for `tenant`.
    pub fn for_tenant(self, tenant: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            ..self
        }
    }
}

/// A reservation: the holder may work on the job until `expires_at`, and must heartbeat to keep
/// it. The token fences every later call: a lease that was lost cannot ack or retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The conversion.
    pub id: ConversionId,
    /// Which delivery this is, from 1: the attempt number used to fence store transitions.
    pub attempt: u32,
    /// The job's priority.
    pub priority: i32,
    /// Unique per delivery.
    pub token: u64,
    /// When the lease runs out unless extended.
    pub expires_at: DateTime<Utc>,
}

/// What a reserve may deliver: [`JobQueue::reserve_with`]'s filter.
///
/// The engine skips the tenants at their maximum of running conversions, so that their queued
/// jobs stay queued (no attempt is counted, no lease taken) while every other tenant's jobs
/// are delivered in the usual fair order: a tenant at its cap never blocks the queue for the
/// others, however old or high-priority its jobs are.
#[derive(Debug, Clone, Default)]
pub struct ReserveOptions {
    /// Deliver no job of these tenants. Their jobs keep their place and are not counted as
    /// deliverable for the wait either: a reserve that sees only skipped tenants' jobs waits.
    pub skip_tenants: std::collections::BTreeSet<String>,
    /// Stop waiting when this is notified (after one more look, returning what it found, even
    /// nothing): the engine's signal that its skip list is out of date (a skipped tenant's
    /// job finished in this process), which no enqueue would announce.
    pub wake: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl ReserveOptions {
    /// Whether `tenant`'s jobs may be delivered.
    pub fn allows(&self, tenant: &str) -> bool {
        !self.skip_tenants.contains(tenant)
    }

    /// The skipped tenants, in order.
    pub fn skipped(&self) -> Vec<&str> {
        self.skip_tenants.iter().map(String::as_str).collect()
    }
}

/// How many jobs are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Deliverable now.
    pub ready: u64,
    /// Waiting for their not-before time.
    pub delayed: u64,
    /// Leased to a worker.
    pub leased: u64,
    /// Dead-lettered.
    pub dead: u64,
}

/// The errors of a [`JobQueue`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The lease is no longer held (expired and re-delivered, or the job was removed).
    #[error("lease on job {id} was lost")]
    LeaseLost {
        /// The job.
        id: ConversionId,
    },
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl QueueError {
    /// Whether trying again may succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(self, QueueError::Backend(e) if e.is_temporary())
    }

    /// A backend error from any cause.
    pub fn backend(
        backend: &'static str,
        temporary: bool,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        QueueError::Backend(BackendError::new(backend, temporary, source))
    }
}

/// Delivers jobs at least once, in the fair order of the [module docs](self): tenants take
/// turns; within a tenant, highest priority first, then earliest not-before, then the order they
/// were enqueued. A lease that expires is delivered again with the next attempt number.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait JobQueue: Send + Sync + Debug + 'static {
    /// Adds the job. If the queue already holds a job for the id (ready, delayed, leased or
    /// dead), nothing changes and `false` is returned.
    async fn enqueue(&self, job: JobSpec) -> Result<bool, QueueError>;

    /// Leases up to `max` deliverable jobs for `lease_for`, the next ones in the fair order.
    /// Waits up to `wait` for one to become deliverable (woken by enqueues and timers, not by
    /// polling); returns an empty list if none did.
    async fn reserve(
        &self,
        max: usize,
        lease_for: Duration,
        wait: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        self.reserve_with(max, lease_for, wait, &ReserveOptions::default())
            .await
    }

    /// [`JobQueue::reserve`], delivering only what `options` allow: the fair order over the
    /// tenants not skipped, as if the skipped tenants' jobs were not there.
    async fn reserve_with(
        &self,
        max: usize,
        lease_for: Duration,
        wait: Duration,
        options: &ReserveOptions,
    ) -> Result<Vec<Lease>, QueueError>;

    /// Gives a delivery back as if it had not been made: the job is deliverable again at
    /// once, in its old place, and its next delivery has this delivery's attempt number. For a
    /// reserver that finds it may not run the job now (its tenant reached its running limit
    /// in a race) and has not started it. [`QueueError::LeaseLost`] if the lease is not held.
    async fn release(&self, lease: &Lease) -> Result<(), QueueError>;

    /// Extends a lease to `lease_for` from now; [`QueueError::LeaseLost`] if it is not held.
    async fn heartbeat(&self, lease: &Lease, lease_for: Duration) -> Result<Lease, QueueError>;

    /// The job is done: removes it. [`QueueError::LeaseLost`] if the lease is not held.
    async fn ack(&self, lease: &Lease) -> Result<(), QueueError>;

    /// [`JobQueue::ack`] for many leases at once; returns the ids whose lease was no longer
    /// held (those jobs were left alone). Backends that can ack a batch in one round trip
    /// override this; the default acks one lease after another.
    async fn ack_many(&self, leases: &[Lease]) -> Result<Vec<ConversionId>, QueueError> {
        let mut lost = Vec::new();
        for lease in leases {
            match self.ack(lease).await {
                Ok(()) => {}
                Err(QueueError::LeaseLost { id }) => lost.push(id),
                Err(e) => return Err(e),
            }
        }
        Ok(lost)
    }

    /// Whether [`JobQueue::ack_many`] acks a batch in fewer round trips than one per lease, so
    /// that gathering acks into batches pays (the engine batches only then).
    fn batches_acks(&self) -> bool {
        false
    }

    /// Puts the job back, deliverable at `not_before`.
    async fn retry(&self, lease: &Lease, not_before: DateTime<Utc>) -> Result<(), QueueError>;

    /// Moves the job to the dead letters with the error that ended it.
    async fn dead_letter(&self, lease: &Lease, error: &ErrorInfo) -> Result<(), QueueError>;

    /// Removes any job for the id, whatever its state; true if there was one.
    async fn remove(&self, id: ConversionId) -> Result<bool, QueueError>;

    /// Whether a live (ready, delayed or leased) job exists for the id.
    async fn contains(&self, id: ConversionId) -> Result<bool, QueueError>;

    /// Counts by state.
    async fn stats(&self) -> Result<QueueStats, QueueError>;

    /// Checks that the backend answers (for readiness probes).
    async fn ping(&self) -> Result<(), QueueError> {
        Ok(())
    }
}

/// A random lease token, kept below 2^63 so SQL backends can store it as a signed 64-bit integer.
pub fn new_lease_token() -> u64 {
    fastrand::u64(1..i64::MAX as u64)
}

/// `now + d`, saturating.
pub fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `now - d`, saturating.
pub fn after_neg(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// What one look at a queue found, for [`wait_for_jobs`].
#[derive(Debug)]
pub struct Look<T> {
    /// The jobs reserved (empty if none was ready).
    pub reserved: Vec<T>,
    /// How long until the next scheduled job is due, if the queue knows one.
    pub next_due_in: Option<Duration>,
    /// Look again after at most this long even without a wake-up (a queue that cannot hear
    /// every enqueue, e.g. one written by other processes or a lost connection).
    pub recheck_in: Option<Duration>,
}

impl<T> Look<T> {
    /// Nothing ready and nothing known about what comes next.
    pub fn nothing() -> Self {
        Self {
            reserved: Vec::new(),
            next_due_in: None,
            recheck_in: None,
        }
    }
}

/// The wait loop every queue's `reserve` shares: look; if nothing is ready, sleep until a
/// wake-up (`wake`, notified on enqueue), the next job's due time, a recheck or the deadline,
/// and look again. The wake-up is registered before each look, so an enqueue between the look
/// and the sleep is never missed. Returns an empty list at the deadline.
///
/// `also` is the caller's wake-up ([`ReserveOptions::wake`]): when it fires, the loop looks
/// once more and returns what it found, even nothing, so the caller can recompute its filter.
pub async fn wait_for_jobs<T, E, F, Fut>(
    wake: &tokio::sync::Notify,
    also: Option<&tokio::sync::Notify>,
    wait: Duration,
    mut look: F,
) -> Result<Vec<T>, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Look<T>, E>>,
{
    /// Slack after a due time, so the entry is due by the queue's clock when we look again.
    const DUE_SLACK: Duration = Duration::from_millis(1);
    let start = tokio::time::Instant::now();
    // A huge wait means "until something comes": cap it rather than overflow the clock.
    let deadline = start
        .checked_add(wait)
        .unwrap_or(start + Duration::from_secs(86_400 * 365));
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let also_notified = also.map(tokio::sync::Notify::notified);
        tokio::pin!(also_notified);
        if let Some(n) = also_notified.as_mut().as_pin_mut() {
            n.enable();
        }
        let found = look().await?;
        if !found.reserved.is_empty() {
            return Ok(found.reserved);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(found.reserved);
        }
        let mut until = deadline;
        if let Some(due) = found.next_due_in {
            until = until.min(now + due + DUE_SLACK);
        }
        if let Some(recheck) = found.recheck_in {
            until = until.min(now + recheck);
        }
        let also_fired = async {
            match also_notified.as_mut().as_pin_mut() {
                Some(n) => n.await,
                None => std::future::pending().await,
            }
        };
        let mut last_look = false;
        tokio::select! {
            _ = &mut notified => {}
            _ = also_fired => last_look = true,
            _ = tokio::time::sleep_until(until) => {}
        }
        if last_look {
            // The caller's filter may be out of date: one more look, then let it decide.
            return Ok(look().await?.reserved);
        }
    }
}
