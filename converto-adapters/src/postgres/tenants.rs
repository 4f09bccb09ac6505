//! [`PostgresTenantStore`]: per-tenant limit overrides in the `tenant_limits` table.

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::types::Json;

use converto_core::tenants::{LimitOverrides, TenantOverride, TenantStore, TenantStoreError};

use super::{BACKEND, PostgresError, Shared};

const PUT: &str = "INSERT INTO tenant_limits (tenant, limits, updated_at) VALUES ($1, $2, $3) \
     ON CONFLICT (tenant) DO UPDATE SET limits = EXCLUDED.limits, updated_at = EXCLUDED.updated_at";
const GET: &str = "SELECT tenant, limits, updated_at FROM tenant_limits WHERE tenant = $1";
const LIST: &str = "SELECT tenant, limits, updated_at FROM tenant_limits ORDER BY tenant";
const REMOVE: &str = "DELETE FROM tenant_limits WHERE tenant = $1";

/// Tenant limit overrides in PostgreSQL (see
/// [`PostgresBackend::tenants`](super::PostgresBackend::tenants)); each override is its set
/// fields as a JSON object.
#[derive(Debug, Clone)]
pub struct PostgresTenantStore {
    shared: Shared,
}

impl PostgresTenantStore {
    pub(super) fn new(shared: Shared) -> Self {
        Self { shared }
    }
}

fn sql(e: sqlx::Error) -> TenantStoreError {
    let e = PostgresError::Sql(e);
    TenantStoreError::Backend(converto_core::BackendError::new(
        BACKEND,
        e.is_temporary(),
        e,
    ))
}

fn decode(row: &PgRow) -> Result<TenantOverride, TenantStoreError> {
    let corrupt = |column: &str, e: &dyn std::fmt::Display| {
        TenantStoreError::Corrupt(format!("column {column}: {e}"))
    };
    let limits: Json<LimitOverrides> = row.try_get("limits").map_err(|e| corrupt("limits", &e))?;
    let updated_at: DateTime<Utc> = row
        .try_get("updated_at")
        .map_err(|e| corrupt("updated_at", &e))?;
    Ok(TenantOverride {
        tenant: row.try_get("tenant").map_err(|e| corrupt("tenant", &e))?,
        limits: limits.0,
        updated_at,
    })
}

#[async_trait]
impl TenantStore for PostgresTenantStore {
    async fn put(
        &self,
        tenant: &str,
        limits: &LimitOverrides,
    ) -> Result<TenantOverride, TenantStoreError> {
        let now = Utc::now().trunc_subsecs(6);
        sqlx::query(PUT)
            .bind(tenant)
            .bind(Json(limits))
            .bind(now)
            .execute(&self.shared.pool)
            .await
            .map_err(sql)?;
        Ok(TenantOverride {
            tenant: tenant.to_owned(),
            limits: *limits,
            updated_at: now,
        })
    }

    async fn get(&self, tenant: &str) -> Result<Option<TenantOverride>, TenantStoreError> {
        let row = sqlx::query(GET)
            .bind(tenant)
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(sql)?;
        row.as_ref().map(decode).transpose()
    }

    async fn list(&self) -> Result<Vec<TenantOverride>, TenantStoreError> {
        let rows = sqlx::query(LIST)
            .fetch_all(&self.shared.pool)
            .await
            .map_err(sql)?;
        rows.iter().map(decode).collect()
    }

    async fn remove(&self, tenant: &str) -> Result<bool, TenantStoreError> {
        let done = sqlx::query(REMOVE)
            .bind(tenant)
            .execute(&self.shared.pool)
            .await
            .map_err(sql)?;
        Ok(done.rows_affected() > 0)
    }

    async fn ping(&self) -> Result<(), TenantStoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.shared.pool)
            .await
            .map(|_| ())
            .map_err(sql)
    }
}
