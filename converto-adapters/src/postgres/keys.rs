//! [`PostgresKeyStore`]: API keys in the `api_keys` table.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;

use converto_core::keys::{ApiKey, KeyHash, KeyStore, KeyStoreError, NewApiKey};

use super::{BACKEND, PostgresError, Shared, now_micros};
use crate::sql_rows::{api_key, api_key_columns};

const INSERT: &str = "INSERT INTO api_keys \
    (id, key_hash, prefix, tenant, scopes, created_at, expires_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7)";
const FIND: &str = concat!(
    "SELECT ",
    api_key_columns!(),
    " FROM api_keys WHERE key_hash = $1"
);
const LIST: &str = concat!(
    "SELECT ",
    api_key_columns!(),
    " FROM api_keys ORDER BY created_at, id"
);
const REVOKE: &str = concat!(
    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 RETURNING ",
    api_key_columns!()
);

/// API keys in PostgreSQL (see [`PostgresBackend::keys`](super::PostgresBackend::keys)).
#[derive(Debug, Clone)]
pub struct PostgresKeyStore {
    shared: Shared,
}

impl PostgresKeyStore {
    pub(super) fn new(shared: Shared) -> Self {
        Self { shared }
    }
}

fn sql(e: sqlx::Error) -> KeyStoreError {
    let e = PostgresError::Sql(e);
    KeyStoreError::Backend(converto_core::BackendError::new(
        BACKEND,
        e.is_temporary(),
        e,
    ))
}

fn decode(row: &PgRow) -> Result<ApiKey, KeyStoreError> {
    api_key(row, |t: DateTime<Utc>| t)
}

#[async_trait]
impl KeyStore for PostgresKeyStore {
    async fn create(&self, key: NewApiKey) -> Result<ApiKey, KeyStoreError> {
        let inserted = sqlx::query(INSERT)
            .bind(&key.id)
            .bind(key.hash.as_str())
            .bind(&key.prefix)
            .bind(&key.tenant)
            .bind(key.scopes.to_string())
            .bind(key.created_at)
            .bind(key.expires_at)
            .execute(&self.shared.pool)
            .await;
        match inserted {
            Ok(_) => Ok(ApiKey::from_new(&key)),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Err(KeyStoreError::AlreadyExists { id: key.id })
            }
            Err(e) => Err(sql(e)),
        }
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKey>, KeyStoreError> {
        let row = sqlx::query(FIND)
            .bind(hash.as_str())
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(sql)?;
        row.as_ref().map(decode).transpose()
    }

    async fn list(&self) -> Result<Vec<ApiKey>, KeyStoreError> {
        let rows = sqlx::query(LIST)
            .fetch_all(&self.shared.pool)
            .await
            .map_err(sql)?;
        rows.iter().map(decode).collect()
    }

    async fn revoke(&self, id: &str) -> Result<ApiKey, KeyStoreError> {
        let row = sqlx::query(REVOKE)
            .bind(now_micros())
            .bind(id)
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(sql)?;
        match row {
            Some(row) => decode(&row),
            None => Err(KeyStoreError::NotFound { id: id.to_owned() }),
        }
    }

    async fn ping(&self) -> Result<(), KeyStoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.shared.pool)
            .await
            .map(|_| ())
            .map_err(sql)
    }
}
