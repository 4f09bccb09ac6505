//! [`SqliteKeyStore`]: API keys in the `converto_api_keys` table.

use async_trait::async_trait;
use chrono::{SubsecRound, Utc};
use sqlx::error::ErrorKind;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use converto_core::keys::{ApiKey, KeyHash, KeyStore, KeyStoreError, NewApiKey};

use super::{SqliteError, from_nanos, query_error, to_nanos};
use crate::sql_rows::{api_key, api_key_columns};

const FIND: &str = concat!(
    "SELECT ",
    api_key_columns!(),
    " FROM converto_api_keys WHERE key_hash = ?"
);
const LIST: &str = concat!(
    "SELECT ",
    api_key_columns!(),
    " FROM converto_api_keys ORDER BY created_at, id"
);
const REVOKE: &str = concat!(
    "UPDATE converto_api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? RETURNING ",
    api_key_columns!()
);

/// API keys in a SQLite database (see [`SqliteBackend::keys`](super::SqliteBackend::keys)).
#[derive(Debug, Clone)]
pub struct SqliteKeyStore {
    pool: SqlitePool,
}

impl SqliteKeyStore {
    pub(super) fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

fn backend(e: SqliteError) -> KeyStoreError {
    KeyStoreError::Backend(e.into())
}

fn decode(row: &SqliteRow) -> Result<ApiKey, KeyStoreError> {
    api_key(row, from_nanos)
}

#[async_trait]
impl KeyStore for SqliteKeyStore {
    async fn create(&self, key: NewApiKey) -> Result<ApiKey, KeyStoreError> {
        let inserted = sqlx::query(
            "INSERT INTO converto_api_keys \
             (id, key_hash, prefix, tenant, scopes, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.id)
        .bind(key.hash.as_str())
        .bind(&key.prefix)
        .bind(&key.tenant)
        .bind(key.scopes.to_string())
        .bind(to_nanos(key.created_at))
        .bind(key.expires_at.map(to_nanos))
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(ApiKey::from_new(&key)),
            Err(sqlx::Error::Database(db)) if db.kind() == ErrorKind::UniqueViolation => {
                Err(KeyStoreError::AlreadyExists { id: key.id })
            }
            Err(e) => Err(backend(query_error("create key")(e))),
        }
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKey>, KeyStoreError> {
        let row = sqlx::query(FIND)
            .bind(hash.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| backend(query_error("find key")(e)))?;
        row.as_ref().map(decode).transpose()
    }

    async fn list(&self) -> Result<Vec<ApiKey>, KeyStoreError> {
        let rows = sqlx::query(LIST)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| backend(query_error("list keys")(e)))?;
        rows.iter().map(decode).collect()
    }

    async fn revoke(&self, id: &str) -> Result<ApiKey, KeyStoreError> {
        let now = to_nanos(Utc::now().trunc_subsecs(6));
        let row = sqlx::query(REVOKE)
            .bind(now)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| backend(query_error("revoke key")(e)))?;
        match row {
            Some(row) => decode(&row),
            None => Err(KeyStoreError::NotFound { id: id.to_owned() }),
        }
    }

    async fn ping(&self) -> Result<(), KeyStoreError> {
        super::ping(&self.pool).await.map_err(backend)
    }
}
