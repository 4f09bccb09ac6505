use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::IdMap;
use crate::ConversionId;
use crate::conversion::ErrorInfo;
use crate::queue::{
    JobQueue, JobSpec, Lease, Look, QueueError, QueueStats, ReserveOptions, after, new_lease_token,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    Ready,
    Delayed,
    Leased {
        token: u64,
        expires_at: DateTime<Utc>,
    },
    Dead,
}

#[derive(Debug)]
struct Entry {
    tenant: Arc<str>,
    priority: i32,
    not_before: DateTime<Utc>,
    seq: u64,
    deliveries: u32,
    state: EntryState,
}

/// A ready job's place in its tenant's order: highest priority, then earliest not-before, then
/// enqueue order.
type ReadyKey = (Reverse<i32>, DateTime<Utc>, u64, ConversionId);

#[derive(Debug, Default)]
struct State {
    entries: IdMap<Entry>,
    /// Each tenant's deliverable jobs; a tenant with none has no set.
    ready: HashMap<Arc<str>, BTreeSet<ReadyKey>>,
    /// Each tenant's turn count (see the fair order in [`crate::queue`]).
    turns: HashMap<Arc<str>, u64>,
    delayed: BTreeSet<(DateTime<Utc>, u64, ConversionId)>,
    leased: BTreeSet<(DateTime<Utc>, ConversionId)>,
    dead: u64,
    seq: u64,
}

impl State {
    /// Moves due delayed jobs and expired leases to the ready set.
    fn promote(&mut self, now: DateTime<Utc>) {
        while let Some(&(nb, seq, id)) = self.delayed.first() {
            if nb > now {
                break;
            }
            self.delayed.pop_first();
            if let Some(e) = self.entries.get_mut(&id) {
                e.state = EntryState::Ready;
                let key = (Reverse(e.priority), nb, seq, id);
                self.ready
                    .entry(Arc::clone(&e.tenant))
                    .or_default()
                    .insert(key);
            }
        }
        while let Some(&(exp, id)) = self.leased.first() {
            if exp > now {
                break;
            }
            self.leased.pop_first();
            if let Some(e) = self.entries.get_mut(&id) {
                e.state = EntryState::Ready;
                let key = (Reverse(e.priority), e.not_before, e.seq, id);
                self.ready
                    .entry(Arc::clone(&e.tenant))
                    .or_default()
                    .insert(key);
            }
        }
    }

    /// When the next delayed job or lease comes due.
    fn next_due(&self) -> Option<DateTime<Utc>> {
        let d = self.delayed.first().map(|k| k.0);
        let l = self.leased.first().map(|k| k.0);
        match (d, l) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes the entry out of whichever index holds it.
    fn unindex(&mut self, id: ConversionId) {
        let Some(e) = self.entries.get(&id) else {
            return;
        };
        match e.state {
            EntryState::Ready => {
                let key = (Reverse(e.priority), e.not_before, e.seq, id);
                if let Some(jobs) = self.ready.get_mut(&e.tenant) {
                    jobs.remove(&key);
                    if jobs.is_empty() {
                        self.ready.remove(&e.tenant);
                    }
                }
            }
            EntryState::Delayed => {
                self.delayed.remove(&(e.not_before, e.seq, id));
            }
            EntryState::Leased { expires_at, .. } => {
                self.leased.remove(&(expires_at, id));
            }
            EntryState::Dead => self.dead -= 1,
        }
    }

    fn place(&mut self, id: ConversionId, not_before: DateTime<Utc>, now: DateTime<Utc>) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(e) = self.entries.get_mut(&id) {
            e.not_before = not_before;
            e.seq = seq;
            if not_before <= now {
                e.state = EntryState::Ready;
                let key = (Reverse(e.priority), not_before, seq, id);
                self.ready
                    .entry(Arc::clone(&e.tenant))
                    .or_default()
                    .insert(key);
            } else {
                e.state = EntryState::Delayed;
                self.delayed.insert((not_before, seq, id));
            }
        }
    }

    /// Takes the next `max` deliveries in the fair order (see [`crate::queue`]) out of the ready
    /// sets, and advances the turn counts of the tenants served.
    fn take_fair(&mut self, max: usize, options: &ReserveOptions) -> Vec<ConversionId> {
        // One tenant to serve (the usual case): its first `max` jobs, in its own order, and no
        // turn counted (the fair order below comes to the same without its bookkeeping).
        let mut allowed = self.ready.iter().filter(|(t, _)| options.allows(t));
        if let (Some((tenant, _)), None) = (allowed.next(), allowed.next()) {
            let tenant = Arc::clone(tenant);
            let mut picked = Vec::new();
            if let Some(jobs) = self.ready.get_mut(&tenant) {
                picked.reserve(jobs.len().min(max));
                while picked.len() < max {
                    match jobs.pop_first() {
                        Some(key) => picked.push(key.3),
                        None => break,
                    }
                }
                if jobs.is_empty() {
                    self.ready.remove(&tenant);
                }
            }
            return picked;
        }
        let turns = |t: &Arc<str>| self.turns.get(t).copied().unwrap_or(0);
        let allowed = || self.ready.iter().filter(|(t, _)| options.allows(t));
        let highest = allowed().map(|(t, _)| turns(t)).max().unwrap_or(0);
        // Each tenant's first `max` jobs, each ranked by the turn it would be delivered in.
        let mut candidates: Vec<(u64, ReadyKey, &Arc<str>)> =
            Vec::with_capacity(allowed().map(|(_, jobs)| jobs.len().min(max)).sum());
        for (tenant, jobs) in allowed() {
            let first = turns(tenant).max(highest.saturating_sub(1));
            for (k, key) in (0u64..).zip(jobs.iter().take(max)) {
                candidates.push((first + k, *key, tenant));
            }
        }
        candidates.sort_unstable_by_key(|&(turn, key, _)| (turn, key));
        candidates.truncate(max);
        let count_turns = allowed().nth(1).is_some();
        let picked: Vec<(u64, ReadyKey, Arc<str>)> = candidates
            .into_iter()
            .map(|(turn, key, tenant)| (turn, key, Arc::clone(tenant)))
            .collect();
        for (turn, key, tenant) in &picked {
            if let Some(jobs) = self.ready.get_mut(tenant) {
                jobs.remove(key);
                if jobs.is_empty() {
                    self.ready.remove(tenant);
                }
            }
            if count_turns {
                let next = self.turns.entry(Arc::clone(tenant)).or_default();
                *next = (*next).max(turn + 1);
            }
        }
        picked.into_iter().map(|(_, key, _)| key.3).collect()
    }

    fn check_lease(&self, lease: &Lease, now: DateTime<Utc>) -> Result<(), QueueError> {
        match self.entries.get(&lease.id).map(|e| e.state) {
            Some(EntryState::Leased { token, expires_at })
                if token == lease.token && expires_at > now =>
            {
                Ok(())
            }
            _ => Err(QueueError::LeaseLost { id: lease.id }),
        }
    }
}

/// A job queue in memory: ordered indexes for ready (one per tenant), delayed and leased jobs,
/// and a `Notify` plus a timer for the next due job to wake reservers. Reserves deliver in the
/// fair order described in [`crate::queue`].
#[derive(Debug, Default)]
pub struct MemoryJobQueue {
    state: Mutex<State>,
    wake: Notify,
}

impl MemoryJobQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn try_reserve(
        &self,
        max: usize,
        lease_for: Duration,
        options: &ReserveOptions,
    ) -> (Vec<Lease>, Option<DateTime<Utc>>) {
        let now = Utc::now();
        let expires_at = after(now, lease_for);
        let mut state = self.state.lock();
        state.promote(now);
        let mut out = Vec::new();
        for id in state.take_fair(max, options) {
            let token = new_lease_token();
            let Some(e) = state.entries.get_mut(&id) else {
                continue;
            };
            e.deliveries += 1;
            e.state = EntryState::Leased { token, expires_at };
            out.push(Lease {
                id,
                attempt: e.deliveries,
                priority: e.priority,
                token,
                expires_at,
            });
            state.leased.insert((expires_at, id));
        }
        let next = state.next_due();
        (out, next)
    }
}

#[async_trait]
impl JobQueue for MemoryJobQueue {
    async fn enqueue(&self, job: JobSpec) -> Result<bool, QueueError> {
        let now = Utc::now();
        {
            let mut state = self.state.lock();
            if state.entries.contains_key(&job.id) {
                return Ok(false);
            }
            // The tenant's name is shared with its ready set when it has one.
            let tenant = match state.ready.get_key_value(job.tenant.as_str()) {
                Some((t, _)) => Arc::clone(t),
                None => job.tenant.into(),
            };
            state.entries.insert(
                job.id,
                Entry {
                    tenant,
                    priority: job.priority,
                    not_before: job.not_before,
                    seq: 0,
                    deliveries: job.attempts,
                    state: EntryState::Ready,
                },
            );
            state.place(job.id, job.not_before, now);
        }
        self.wake.notify_waiters();
        Ok(true)
    }

    async fn reserve_with(
        &self,
        max: usize,
        lease_for: Duration,
        wait: Duration,
        options: &ReserveOptions,
    ) -> Result<Vec<Lease>, QueueError> {
        let also = options.wake.as_deref();
        crate::queue::wait_for_jobs(&self.wake, also, wait, move || async move {
            let (reserved, next_due) = self.try_reserve(max.max(1), lease_for, options);
            Ok(Look {
                reserved,
                next_due_in: next_due.map(|due| (due - Utc::now()).to_std().unwrap_or_default()),
                recheck_in: None,
            })
        })
        .await
    }

    async fn heartbeat(&self, lease: &Lease, lease_for: Duration) -> Result<Lease, QueueError> {
        let now = Utc::now();
        let mut state = self.state.lock();
        state.check_lease(lease, now)?;
        let expires_at = after(now, lease_for);
        state.unindex(lease.id);
        if let Some(e) = state.entries.get_mut(&lease.id) {
            e.state = EntryState::Leased {
                token: lease.token,
                expires_at,
            };
        }
        state.leased.insert((expires_at, lease.id));
        Ok(Lease {
            expires_at,
            ..lease.clone()
        })
    }

    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        let mut state = self.state.lock();
        state.check_lease(lease, Utc::now())?;
        state.unindex(lease.id);
        state.entries.remove(&lease.id);
        Ok(())
    }

    async fn retry(&self, lease: &Lease, not_before: DateTime<Utc>) -> Result<(), QueueError> {
        let now = Utc::now();
        {
            let mut state = self.state.lock();
            state.check_lease(lease, now)?;
            state.unindex(lease.id);
            state.place(lease.id, not_before, now);
        }
        self.wake.notify_waiters();
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> Result<(), QueueError> {
        {
            let mut state = self.state.lock();
            state.check_lease(lease, Utc::now())?;
            state.unindex(lease.id);
            // Back in its old place (its priority, not-before and sequence number are kept),
            // and the delivery is not counted.
            if let Some(e) = state.entries.get_mut(&lease.id) {
                e.deliveries = e.deliveries.saturating_sub(1);
                e.state = EntryState::Ready;
                let key = (Reverse(e.priority), e.not_before, e.seq, lease.id);
                let tenant = Arc::clone(&e.tenant);
                state.ready.entry(tenant).or_default().insert(key);
            }
        }
        self.wake.notify_waiters();
        Ok(())
    }

    async fn dead_letter(&self, lease: &Lease, _error: &ErrorInfo) -> Result<(), QueueError> {
        let mut state = self.state.lock();
        state.check_lease(lease, Utc::now())?;
        state.unindex(lease.id);
        if let Some(e) = state.entries.get_mut(&lease.id) {
            e.state = EntryState::Dead;
        }
        state.dead += 1;
        Ok(())
    }

    async fn remove(&self, id: ConversionId) -> Result<bool, QueueError> {
        let mut state = self.state.lock();
        state.unindex(id);
        Ok(state.entries.remove(&id).is_some())
    }

    async fn contains(&self, id: ConversionId) -> Result<bool, QueueError> {
        Ok(self
            .state
            .lock()
            .entries
            .get(&id)
            .is_some_and(|e| e.state != EntryState::Dead))
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let now = Utc::now();
        let mut state = self.state.lock();
        state.promote(now);
        Ok(QueueStats {
            ready: state.ready.values().map(|jobs| jobs.len() as u64).sum(),
            delayed: state.delayed.len() as u64,
            leased: state.leased.len() as u64,
            dead: state.dead,
        })
    }
}
