//! [`SqliteTenantStore`]: per-tenant limit overrides in the `converto_tenant_limits` table.

use async_trait::async_trait;
use chrono::{SubsecRound, Utc};
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use converto_core::tenants::{LimitOverrides, TenantOverride, TenantStore, TenantStoreError};

use super::{SqliteError, from_nanos, query_error, to_nanos};

/// Tenant limit overrides in a SQLite database (see
/// [`SqliteBackend::tenants`](super::SqliteBackend::tenants)); each override is its set fields
/// as a JSON object.
#[derive(Debug, Clone)]
pub struct SqliteTenantStore {
    pool: SqlitePool,
}

impl SqliteTenantStore {
    pub(super) fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

fn backend(e: SqliteError) -> TenantStoreError {
    TenantStoreError::Backend(e.into())
}

fn decode(row: &SqliteRow) -> Result<TenantOverride, TenantStoreError> {
    let corrupt = |column: &str, e: &dyn std::fmt::Display| {
        TenantStoreError::Corrupt(format!("column {column}: {e}"))
    };
    let limits: String = row.try_get("limits").map_err(|e| corrupt("limits", &e))?;
    Ok(TenantOverride {
        tenant: row.try_get("tenant").map_err(|e| corrupt("tenant", &e))?,
        limits: serde_json::from_str(&limits).map_err(|e| corrupt("limits", &e))?,
        updated_at: from_nanos(
            row.try_get("updated_at")
                .map_err(|e| corrupt("updated_at", &e))?,
        ),
    })
}

#[async_trait]
impl TenantStore for SqliteTenantStore {
    async fn put(
        &self,
        tenant: &str,
        limits: &LimitOverrides,
    ) -> Result<TenantOverride, TenantStoreError> {
        let json =
            serde_json::to_string(limits).map_err(|e| TenantStoreError::Corrupt(e.to_string()))?;
        let now = Utc::now().trunc_subsecs(6);
        sqlx::query(
            "INSERT INTO converto_tenant_limits (tenant, limits, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (tenant) DO UPDATE SET limits = excluded.limits, \
             updated_at = excluded.updated_at",
        )
        .bind(tenant)
        .bind(json)
        .bind(to_nanos(now))
        .execute(&self.pool)
        .await
        .map_err(query_error("put tenant limits"))
        .map_err(backend)?;
        Ok(TenantOverride {
            tenant: tenant.to_owned(),
            limits: *limits,
            updated_at: now,
        })
    }

    async fn get(&self, tenant: &str) -> Result<Option<TenantOverride>, TenantStoreError> {
        let row = sqlx::query(
            "SELECT tenant, limits, updated_at FROM converto_tenant_limits WHERE tenant = ?",
        )
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("get tenant limits"))
        .map_err(backend)?;
        row.as_ref().map(decode).transpose()
    }

    async fn list(&self) -> Result<Vec<TenantOverride>, TenantStoreError> {
        let rows = sqlx::query(
            "SELECT tenant, limits, updated_at FROM converto_tenant_limits ORDER BY tenant",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list tenant limits"))
        .map_err(backend)?;
        rows.iter().map(decode).collect()
    }

    async fn remove(&self, tenant: &str) -> Result<bool, TenantStoreError> {
        let done = sqlx::query("DELETE FROM converto_tenant_limits WHERE tenant = ?")
            .bind(tenant)
            .execute(&self.pool)
            .await
            .map_err(query_error("remove tenant limits"))
            .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn ping(&self) -> Result<(), TenantStoreError> {
        super::ping(&self.pool).await.map_err(backend)
    }
}
