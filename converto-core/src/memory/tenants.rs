use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{SubsecRound, Utc};
use parking_lot::Mutex;

use crate::tenants::{LimitOverrides, TenantOverride, TenantStore, TenantStoreError};

/// Tenant limit overrides in memory (for tests and embedding: they are gone with the process).
#[derive(Debug, Default)]
pub struct MemoryTenantStore {
    overrides: Mutex<BTreeMap<String, TenantOverride>>,
}

impl MemoryTenantStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl TenantStore for MemoryTenantStore {
    async fn put(
        &self,
        tenant: &str,
        limits: &LimitOverrides,
    ) -> Result<TenantOverride, TenantStoreError> {
        let record = TenantOverride {
            tenant: tenant.to_owned(),
            limits: *limits,
            updated_at: Utc::now().trunc_subsecs(6),
        };
        self.overrides
            .lock()
            .insert(tenant.to_owned(), record.clone());
        Ok(record)
    }

    async fn get(&self, tenant: &str) -> Result<Option<TenantOverride>, TenantStoreError> {
        Ok(self.overrides.lock().get(tenant).cloned())
    }

    async fn list(&self) -> Result<Vec<TenantOverride>, TenantStoreError> {
        Ok(self.overrides.lock().values().cloned().collect())
    }

    async fn remove(&self, tenant: &str) -> Result<bool, TenantStoreError> {
        Ok(self.overrides.lock().remove(tenant).is_some())
    }
}
