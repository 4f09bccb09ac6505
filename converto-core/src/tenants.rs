//! Per-tenant limits: what they are ([`TenantLimits`]), where the engine and the service read
//! them ([`LimitSource`]), and the [`TenantStore`] that keeps operators' per-tenant overrides
//! (`converto tenants set`).
//!
//! A tenant's limits come in layers, the first that says something wins: an override in the
//! [`TenantStore`], then the configuration's `[tenants.NAME]` table, then its
//! `[tenant_defaults]`, then [`TenantLimits::default`]. [`StaticLimits`] holds the
//! configuration's layers; [`StoredLimits`] puts the store's overrides on top, read through a
//! short cache so that a change reaches running servers without a restart and without a store
//! read per request.
//!
//! The engine enforces `max_running` (its workers skip a tenant at its cap, see
//! [`crate::queue::ReserveOptions`]); the HTTP service enforces the others on its requests.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::BackendError;

/// A `dyn TenantStore`.
pub type DynTenantStore = dyn TenantStore;

/// One tenant's limits. In a configuration table every field is optional: what it does not
/// say comes from the layer below.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantLimits {
    /// Requests per second, sustained (0: unlimited). Counted per API node.
    pub requests_per_second: f64,
    /// Requests allowed in a burst above the rate.
    pub burst: u32,
    /// Conversions waiting in the queue at once (0: unlimited); more are refused with 429.
    pub max_queued: u64,
    /// Conversions running at once, across every worker (0: unlimited); the tenant's other
    /// jobs wait in the queue while other tenants' jobs run.
    pub max_running: u64,
    /// Bytes the tenant's conversions may keep stored, inputs and artifacts (0: unlimited);
    /// a submit or upload beyond it is refused with 403. See
    /// [`crate::store::TenantUsage::stored_bytes`] for what counts.
    pub storage_bytes: u64,
    /// The highest priority a submission may ask for; higher ones are refused with 403.
    pub max_priority: i32,
}

impl Default for TenantLimits {
    fn default() -> Self {
        Self {
            requests_per_second: 100.0,
            burst: 200,
            max_queued: 10_000,
            max_running: 0,
            storage_bytes: 0,
            max_priority: 10,
        }
    }
}

impl TenantLimits {
    /// These limits with the fields `overrides` sets replaced.
    pub fn with(mut self, overrides: &LimitOverrides) -> Self {
        let o = overrides;
        if let Some(v) = o.requests_per_second {
            self.requests_per_second = v;
        }
        if let Some(v) = o.burst {
            self.burst = v;
        }
        if let Some(v) = o.max_queued {
            self.max_queued = v;
        }
        if let Some(v) = o.max_running {
            self.max_running = v;
        }
        if let Some(v) = o.storage_bytes {
            self.storage_bytes = v;
        }
        if let Some(v) = o.max_priority {
            self.max_priority = v;
        }
        self
    }
}

/// Some of a tenant's limits, set by an operator: the fields that are `Some` replace the
/// configured ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitOverrides {
    /// See [`TenantLimits::requests_per_second`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// See [`TenantLimits::burst`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// See [`TenantLimits::max_queued`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u64>,
    /// See [`TenantLimits::max_running`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u64>,
    /// See [`TenantLimits::storage_bytes`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_bytes: Option<u64>,
    /// See [`TenantLimits::max_priority`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_priority: Option<i32>,
}

impl LimitOverrides {
    /// `self` with the fields `newer` sets replaced (how `converto tenants set` adds to an
    /// existing override).
    pub fn merged(self, newer: &LimitOverrides) -> Self {
        Self {
            requests_per_second: newer.requests_per_second.or(self.requests_per_second),
            burst: newer.burst.or(self.burst),
            max_queued: newer.max_queued.or(self.max_queued),
            max_running: newer.max_running.or(self.max_running),
            storage_bytes: newer.storage_bytes.or(self.storage_bytes),
            max_priority: newer.max_priority.or(self.max_priority),
        }
    }

    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A tenant's stored override.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantOverride {
    /// The tenant.
    pub tenant: String,
    /// What it overrides.
    pub limits: LimitOverrides,
    /// When it was last set (microsecond precision, as every store keeps it).
    pub updated_at: DateTime<Utc>,
}

/// The errors of a [`TenantStore`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TenantStoreError {
    /// A stored override could not be read back.
    #[error("stored tenant override is corrupt: {0}")]
    Corrupt(String),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl TenantStoreError {
    /// Whether trying again may succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(self, TenantStoreError::Backend(e) if e.is_temporary())
    }
}

/// Keeps operators' per-tenant limit overrides (`converto tenants set|unset|list|show`).
#[async_trait]
pub trait TenantStore: Send + Sync + Debug + 'static {
    /// Stores `limits` as the tenant's whole override (replacing any earlier one) and returns
    /// it.
    async fn put(
        &self,
        tenant: &str,
        limits: &LimitOverrides,
    ) -> Result<TenantOverride, TenantStoreError>;

    /// The tenant's override, if it has one.
    async fn get(&self, tenant: &str) -> Result<Option<TenantOverride>, TenantStoreError>;

    /// Every override, by tenant name.
    async fn list(&self) -> Result<Vec<TenantOverride>, TenantStoreError>;

    /// Removes the tenant's override; false if it had none.
    async fn remove(&self, tenant: &str) -> Result<bool, TenantStoreError>;

    /// Checks that the backend answers.
    async fn ping(&self) -> Result<(), TenantStoreError> {
        Ok(())
    }
}

/// Where the engine and the service read a tenant's limits.
#[async_trait]
pub trait LimitSource: Send + Sync + Debug + 'static {
    /// The tenant's limits now. Never fails: a source that cannot reach its store answers
    /// from what it knew (and logs why).
    async fn limits(&self, tenant: &str) -> TenantLimits;

    /// Whether some tenant may have a running limit. When false the engine's workers skip
    /// the per-job check (a read of the record before it starts) altogether.
    fn may_limit_running(&self) -> bool {
        true
    }
}

/// The limits of the configuration: the defaults, and whole limits per tenant (the
/// `[tenants.NAME]` tables, already merged over the defaults).
#[derive(Debug, Clone, Default)]
pub struct StaticLimits {
    /// For tenants without their own.
    pub defaults: TenantLimits,
    /// Per tenant.
    pub tenants: HashMap<String, TenantLimits>,
}

impl StaticLimits {
    /// A tenant's limits.
    pub fn of(&self, tenant: &str) -> TenantLimits {
        self.tenants.get(tenant).copied().unwrap_or(self.defaults)
    }
}

#[async_trait]
impl LimitSource for StaticLimits {
    async fn limits(&self, tenant: &str) -> TenantLimits {
        self.of(tenant)
    }

    fn may_limit_running(&self) -> bool {
        self.defaults.max_running > 0 || self.tenants.values().any(|l| l.max_running > 0)
    }
}

/// How long [`StoredLimits`] trusts what it read from the store: `converto tenants set`
/// reaches every running server within this time.
pub const OVERRIDE_CACHE_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
struct Cached {
    read_at: Instant,
    overrides: Option<LimitOverrides>,
}

/// The configuration's limits with the [`TenantStore`]'s overrides on top, each tenant's
/// override cached for a `ttl` ([`OVERRIDE_CACHE_TTL`] by default). When the store cannot be
/// read, the last override read (or none) is used and the failure logged.
#[derive(Debug)]
pub struct StoredLimits {
    base: StaticLimits,
    store: Arc<dyn TenantStore>,
    ttl: Duration,
    cache: Mutex<HashMap<String, Cached>>,
}

impl StoredLimits {
    /// Overrides from `store` over `base`.
    pub fn new(base: StaticLimits, store: Arc<dyn TenantStore>) -> Self {
        Self {
            base,
            store,
            ttl: OVERRIDE_CACHE_TTL,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The same with another cache lifetime (zero: read the store every time).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The configuration's layers.
    pub fn base(&self) -> &StaticLimits {
        &self.base
    }

    async fn overrides(&self, tenant: &str) -> Option<LimitOverrides> {
        let now = Instant::now();
        let known = self.cache.lock().get(tenant).copied();
        if let Some(c) = known
            && now.saturating_duration_since(c.read_at) < self.ttl
        {
            return c.overrides;
        }
        let overrides = match self.store.get(tenant).await {
            Ok(found) => found.map(|o| o.limits),
            Err(e) => {
                tracing::warn!(tenant, error = %e, "cannot read the tenant's limit override; using the last known");
                known.and_then(|c| c.overrides)
            }
        };
        let mut cache = self.cache.lock();
        // Bounded by the tenants that present credentials; forget stale entries now and then.
        if cache.len() > 10_000 {
            let ttl = self.ttl;
            cache.retain(|_, c| now.saturating_duration_since(c.read_at) < ttl);
        }
        cache.insert(
            tenant.to_owned(),
            Cached {
                read_at: now,
                overrides,
            },
        );
        overrides
    }
}

#[async_trait]
impl LimitSource for StoredLimits {
    async fn limits(&self, tenant: &str) -> TenantLimits {
        let base = self.base.of(tenant);
        match self.overrides(tenant).await {
            Some(o) => base.with(&o),
            None => base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_only_what_they_set() {
        let base = TenantLimits::default();
        let o = LimitOverrides {
            max_running: Some(2),
            ..LimitOverrides::default()
        };
        let l = base.with(&o);
        assert_eq!(l.max_running, 2);
        assert_eq!(l.max_queued, base.max_queued);
        let more = o.merged(&LimitOverrides {
            max_queued: Some(1),
            ..LimitOverrides::default()
        });
        assert_eq!((more.max_running, more.max_queued), (Some(2), Some(1)));
        assert!(LimitOverrides::default().is_empty());
    }
}
