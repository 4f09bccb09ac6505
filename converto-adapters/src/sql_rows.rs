//! What the SQL backends (`sqlite/`, `postgres/`) share in turning records into rows and back;
//! only their SQL differs (placeholders, table names, JSON functions, how times are stored).
//!
//! - Webhook stores keep each endpoint, subscription, message and attempt whole, as JSON text
//!   in a `body` column, beside the few columns their statements filter by ([`WebhookRows`]).
//! - Key stores read an API key from the same columns ([`api_key_columns`], [`api_key`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::{ColumnIndex, Decode, Row, Type};

use converto_core::keys::{ApiKey, KeyStoreError, Scopes};
use converto_core::webhook::{Message, MessageState, WebhookError};

/// How one backend's webhook store names itself in errors and reports a failed statement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WebhookRows {
    /// The backend's name, as errors give it.
    pub(crate) backend: &'static str,
    /// The error for a statement that failed while doing `operation`.
    pub(crate) sql_error: fn(&'static str, sqlx::Error) -> WebhookError,
}

impl WebhookRows {
    /// The mapping of a failed statement's error, for `map_err`.
    pub(crate) fn db(self, operation: &'static str) -> impl FnOnce(sqlx::Error) -> WebhookError {
        move |e| (self.sql_error)(operation, e)
    }

    /// A record as the JSON text stored for it.
    pub(crate) fn encode(self, value: &impl Serialize) -> Result<String, WebhookError> {
        serde_json::to_string(value).map_err(|e| WebhookError::backend(self.backend, false, e))
    }

    /// A record from the JSON text stored for it.
    pub(crate) fn decode<T: DeserializeOwned>(self, text: &str) -> Result<T, WebhookError> {
        serde_json::from_str(text).map_err(|e| WebhookError::backend(self.backend, false, e))
    }

    /// The text in `column` of `row`.
    pub(crate) fn text<R>(self, row: &R, column: &'static str) -> Result<String, WebhookError>
    where
        R: Row,
        &'static str: ColumnIndex<R>,
        String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    {
        row.try_get(column).map_err(self.db("decode"))
    }

    /// The records in the `body` column of `rows`.
    pub(crate) fn bodies<R, T>(self, rows: &[R]) -> Result<Vec<T>, WebhookError>
    where
        R: Row,
        &'static str: ColumnIndex<R>,
        String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
        T: DeserializeOwned,
    {
        rows.iter()
            .map(|row| self.decode(&self.text(row, "body")?))
            .collect()
    }

    /// A message state as stored.
    pub(crate) fn state(self, text: &str) -> Result<MessageState, WebhookError> {
        MessageState::parse(text)
            .ok_or_else(|| WebhookError::backend(self.backend, false, "unknown message state"))
    }

    /// The message in `row`: its `body`, with the state from its `state` column (the column is
    /// what changes; the body keeps the state the message was put with).
    pub(crate) fn message<R>(self, row: &R) -> Result<Message, WebhookError>
    where
        R: Row,
        &'static str: ColumnIndex<R>,
        String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    {
        let state = self.text(row, "state")?;
        let mut message: Message = self.decode(&self.text(row, "body")?)?;
        message.state = self.state(&state)?;
        Ok(message)
    }

    /// The error for a tenant's signing secrets missing right after they were created (only a
    /// concurrent delete can do that; trying again creates them anew).
    pub(crate) fn secrets_vanished(self) -> WebhookError {
        WebhookError::backend(self.backend, true, "signing secret vanished")
    }
}

/// How many attempts of a conversion to keep, as a row count: at least one.
pub(crate) fn attempts_kept(keep: usize) -> i64 {
    i64::try_from(keep.max(1)).unwrap_or(i64::MAX)
}

/// The columns of an API key, in the order [`api_key`] reads them by name.
macro_rules! api_key_columns {
    () => {
        "id, prefix, tenant, scopes, created_at, expires_at, revoked_at"
    };
}
pub(crate) use api_key_columns;

/// The API key in `row` ([`api_key_columns`]), whose times are stored as `T` and read with
/// `time`.
pub(crate) fn api_key<R, T>(row: &R, time: fn(T) -> DateTime<Utc>) -> Result<ApiKey, KeyStoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    Option<T>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    let corrupt = |column: &str, e: &dyn std::fmt::Display| {
        KeyStoreError::Corrupt(format!("column {column}: {e}"))
    };
    let text = |name: &'static str| -> Result<String, KeyStoreError> {
        row.try_get(name).map_err(|e| corrupt(name, &e))
    };
    let time = |name: &'static str| -> Result<Option<DateTime<Utc>>, KeyStoreError> {
        let stored: Option<T> = row.try_get(name).map_err(|e| corrupt(name, &e))?;
        Ok(stored.map(time))
    };
    let scopes: Scopes = text("scopes")?.parse().map_err(|e| corrupt("scopes", &e))?;
    Ok(ApiKey {
        id: text("id")?,
        prefix: text("prefix")?,
        tenant: text("tenant")?,
        scopes,
        created_at: time("created_at")?.ok_or_else(|| corrupt("created_at", &"NULL"))?,
        expires_at: time("expires_at")?,
        revoked_at: time("revoked_at")?,
    })
}
