//! Per-tenant running limits ([`crate::tenants::TenantLimits::max_running`]) in the workers.
//!
//! Why here and how: the limit counts a tenant's running conversions across every worker
//! process, which only the store knows ([`crate::store::ConversionStore::tenant_usage`]). The
//! queue cannot refuse one tenant's jobs and still deliver the others' unless it is told which
//! tenants to leave alone, so before each reserve the workers compute the tenants at their cap
//! and pass them as [`ReserveOptions::skip_tenants`]: those tenants' jobs stay queued (no
//! lease, no attempt counted) while every other tenant's jobs flow in the fair order. No
//! head-of-line blocking, and no busy loop of reserving and handing back.
//!
//! The skip list is computed from what this engine runs and the tenants it found at their cap;
//! it cannot know about a tenant that another process is filling. So each delivery is checked
//! again before it starts (serialised in this engine, so two jobs of one tenant never pass on
//! the same count): a job whose tenant is at its cap is handed back with
//! [`crate::queue::JobQueue::release`], which does not count an attempt, and the tenant joins
//! the skip list until the store says it has room. Two processes checking the same tenant in
//! the same instant can still both start a job (the check and the start are two writes); the
//! cap is exact within one process and holds across processes but for that window.
//!
//! A waiting reserve is woken when a job of a limited tenant ends here (the skip list is then
//! out of date); one ending in another process is noticed at the next reserve, within the
//! workers' reserve wait (5 s).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::Inner;
use crate::conversion::Status;
use crate::queue::{Lease, ReserveOptions};
use crate::store::StoreError;

#[derive(Debug, Default)]
struct Here {
    /// Admitted, not started yet (so not counted by the store).
    starting: u64,
    /// Admitted and not finished.
    admitted: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Jobs of limited tenants admitted by this engine, per tenant.
    here: HashMap<String, Here>,
    /// Tenants found at their cap, looked at again before each reserve.
    capped: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    freed: Arc<Notify>,
}

/// The engine's running-limit bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    /// Serialises admission checks (a read of the store and a count here).
    gate: tokio::sync::Mutex<()>,
    shared: Arc<Shared>,
}

/// What [`Admission::admit`] decided for one delivery.
#[derive(Debug)]
pub(crate) enum Admit {
    /// Run it. The ticket, if any, is held until the job ends; call
    /// [`Ticket::started`] once the record says running.
    Go(Option<Ticket>),
    /// The tenant is at its cap: the delivery was handed back.
    HandedBack,
}

/// A job of a limited tenant admitted here; dropping it ends the job's share.
#[derive(Debug)]
pub(crate) struct Ticket {
    shared: Arc<Shared>,
    tenant: String,
    started: bool,
}

impl Ticket {
    /// The record is running now: the store counts the job from here on.
    pub(crate) fn started(&mut self) {
        if !self.started {
            self.started = true;
            let mut state = self.shared.state.lock();
            if let Some(h) = state.here.get_mut(&self.tenant) {
                h.starting = h.starting.saturating_sub(1);
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        {
            let mut state = self.shared.state.lock();
            if let Some(h) = state.here.get_mut(&self.tenant) {
                if !self.started {
                    h.starting = h.starting.saturating_sub(1);
                }
                h.admitted = h.admitted.saturating_sub(1);
                if h.admitted == 0 {
                    state.here.remove(&self.tenant);
                }
            }
        }
        // The tenant may have room now: a reserve waiting with it skipped looks again.
        self.shared.freed.notify_one();
    }
}

impl Admission {
    /// What the next reserve may deliver: every tenant but those at their running cap.
    pub(crate) async fn reserve_options(&self, inner: &Inner) -> ReserveOptions {
        if !inner.limits.may_limit_running() {
            return ReserveOptions::default();
        }
        let candidates: Vec<String> = {
            let state = self.shared.state.lock();
            state
                .capped
                .iter()
                .chain(state.here.keys())
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        let mut skip = BTreeSet::new();
        for tenant in candidates {
            let cap = inner.limits.limits(&tenant).await.max_running;
            let at_cap = if cap == 0 {
                false
            } else {
                match inner.backends.store.tenant_usage(&tenant).await {
                    Ok(usage) => usage.running.saturating_add(self.starting(&tenant)) >= cap,
                    Err(e) => {
                        // Unknown: keep skipping a tenant found at its cap before.
                        tracing::warn!(tenant, error = %e, "cannot read the tenant's running conversions");
                        self.shared.state.lock().capped.contains(&tenant)
                    }
                }
            };
            let mut state = self.shared.state.lock();
            if at_cap {
                state.capped.insert(tenant.clone());
                skip.insert(tenant);
            } else {
                state.capped.remove(&tenant);
            }
        }
        let wake = (!skip.is_empty()).then(|| Arc::clone(&self.shared.freed));
        ReserveOptions {
            skip_tenants: skip,
            wake,
        }
    }

    fn starting(&self, tenant: &str) -> u64 {
        self.shared
            .state
            .lock()
            .here
            .get(tenant)
            .map_or(0, |h| h.starting)
    }

    /// Checks a delivery against its tenant's running cap before it starts; hands it back
    /// (uncounted) if the tenant has no room.
    pub(crate) async fn admit(&self, inner: &Inner, lease: &Lease) -> Admit {
        if !inner.limits.may_limit_running() {
            return Admit::Go(None);
        }
        let record = match inner.backends.store.get(lease.id).await {
            Ok(r) => r,
            // Gone, or the store is down: starting the job will find out and say so.
            Err(StoreError::NotFound { .. }) | Err(_) => return Admit::Go(None),
        };
        if record.status.is_terminal() {
            return Admit::Go(None);
        }
        let cap = inner.limits.limits(&record.tenant).await.max_running;
        if cap == 0 {
            return Admit::Go(None);
        }
        let _serial = self.gate.lock().await;
        let running = match inner.backends.store.tenant_usage(&record.tenant).await {
            // A redelivery of a job whose worker died is still counted as running: not
            // against itself.
            Ok(u) if record.status == Status::Running => u.running.saturating_sub(1),
            Ok(u) => u.running,
            Err(e) => {
                tracing::warn!(id = %lease.id, error = %e, "cannot read the tenant's running conversions; starting anyway");
                0
            }
        };
        let room = {
            let mut state = self.shared.state.lock();
            let here = state.here.entry(record.tenant.clone()).or_default();
            if running.saturating_add(here.starting) >= cap {
                if here.admitted == 0 {
                    state.here.remove(&record.tenant);
                }
                state.capped.insert(record.tenant.clone());
                false
            } else {
                here.starting += 1;
                here.admitted += 1;
                true
            }
        };
        if !room {
            tracing::debug!(id = %lease.id, tenant = %record.tenant, cap, "tenant at its running limit; handing the job back");
            if let Err(e) = inner.backends.queue.release(lease).await {
                tracing::info!(id = %lease.id, error = %e, "could not hand the job back; its lease will expire");
            }
            return Admit::HandedBack;
        }
        Admit::Go(Some(Ticket {
            shared: Arc::clone(&self.shared),
            tenant: record.tenant,
            started: false,
        }))
    }
}
