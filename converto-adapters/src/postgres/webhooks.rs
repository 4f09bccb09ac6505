//! [`PostgresWebhookStore`]: webhook endpoints, secrets, subscriptions, messages and attempts in
//! the `webhook_*` tables of converto's schema (migration `20261202070000`).

use async_trait::async_trait;

use converto_core::ConversionId;
use converto_core::webhook::{
    Attempt, Endpoint, Message, MessageState, Secrets, Subscription, WebhookError, WebhookStore,
};

use super::{BACKEND, PostgresError, Shared};
use crate::sql_rows::{WebhookRows, attempts_kept};

/// Webhook state in PostgreSQL (see
/// [`PostgresBackend::webhooks`](super::PostgresBackend::webhooks)).
#[derive(Debug, Clone)]
pub struct PostgresWebhookStore {
    shared: Shared,
}

impl PostgresWebhookStore {
    pub(super) fn new(shared: Shared) -> Self {
        Self { shared }
    }
}

/// JSON bodies and statement errors, as every SQL webhook store reads and reports them.
const ROWS: WebhookRows = WebhookRows {
    backend: BACKEND,
    sql_error,
};

fn sql_error(operation: &'static str, e: sqlx::Error) -> WebhookError {
    let e = PostgresError::Sql(e);
    let mut out = converto_core::BackendError::new(BACKEND, e.is_temporary(), e);
    out.operation = Some(operation);
    WebhookError::Backend(out)
}

#[async_trait]
impl WebhookStore for PostgresWebhookStore {
    async fn create_endpoint(&self, endpoint: &Endpoint) -> Result<(), WebhookError> {
        sqlx::query("INSERT INTO webhook_endpoints (id, tenant, body) VALUES ($1, $2, $3)")
            .bind(&endpoint.id)
            .bind(&endpoint.tenant)
            .bind(ROWS.encode(endpoint)?)
            .execute(&self.shared.pool)
            .await
            .map_err(ROWS.db("create webhook endpoint"))?;
        Ok(())
    }

    async fn endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, WebhookError> {
        let rows = sqlx::query(
            "SELECT body FROM webhook_endpoints WHERE tenant = $1 ORDER BY id LIMIT 1000",
        )
        .bind(tenant)
        .fetch_all(&self.shared.pool)
        .await
        .map_err(ROWS.db("list webhook endpoints"))?;
        ROWS.bodies(&rows)
    }

    async fn endpoint(&self, tenant: &str, id: &str) -> Result<Option<Endpoint>, WebhookError> {
        let rows = sqlx::query("SELECT body FROM webhook_endpoints WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_all(&self.shared.pool)
            .await
            .map_err(ROWS.db("get webhook endpoint"))?;
        Ok(ROWS.bodies(&rows)?.pop())
    }

    async fn delete_endpoint(&self, tenant: &str, id: &str) -> Result<bool, WebhookError> {
        let done = sqlx::query("DELETE FROM webhook_endpoints WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&self.shared.pool)
            .await
            .map_err(ROWS.db("delete webhook endpoint"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_endpoint_secrets(
        &self,
        tenant: &str,
        id: &str,
        secrets: &Secrets,
    ) -> Result<bool, WebhookError> {
        let done = sqlx::query(
            "UPDATE webhook_endpoints SET body = jsonb_set(body::jsonb, '{secrets}', $1::jsonb)::text \
             WHERE tenant = $2 AND id = $3",
        )
        .bind(ROWS.encode(secrets)?)
        .bind(tenant)
        .bind(id)
        .execute(&self.shared.pool)
        .await
        .map_err(ROWS.db("rotate webhook endpoint"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn disable_endpoint(
        &self,
        tenant: &str,
        id: &str,
        reason: &str,
    ) -> Result<(), WebhookError> {
        sqlx::query(
            "UPDATE webhook_endpoints \
             SET body = jsonb_set(jsonb_set(body::jsonb, '{enabled}', 'false'), '{disabled_reason}', to_jsonb($1::text))::text \
             WHERE tenant = $2 AND id = $3",
        )
        .bind(reason)
        .bind(tenant)
        .bind(id)
        .execute(&self.shared.pool)
        .await
        .map_err(ROWS.db("disable webhook endpoint"))?;
        Ok(())
    }

    async fn tenant_secrets(&self, tenant: &str) -> Result<Option<Secrets>, WebhookError> {
        let row = sqlx::query("SELECT secrets FROM webhook_tenant_secrets WHERE tenant = $1")
            .bind(tenant)
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(ROWS.db("get webhook signing secret"))?;
        row.map(|row| ROWS.decode(&ROWS.text(&row, "secrets")?))
            .transpose()
    }

    async fn init_tenant_secrets(
        &self,
        tenant: &str,
        secrets: &Secrets,
    ) -> Result<Secrets, WebhookError> {
        sqlx::query(
            "INSERT INTO webhook_tenant_secrets (tenant, secrets) VALUES ($1, $2) \
             ON CONFLICT (tenant) DO NOTHING",
        )
        .bind(tenant)
        .bind(ROWS.encode(secrets)?)
        .execute(&self.shared.pool)
        .await
        .map_err(ROWS.db("create webhook signing secret"))?;
        self.tenant_secrets(tenant)
            .await?
            .ok_or_else(|| ROWS.secrets_vanished())
    }

    async fn set_tenant_secrets(
        &self,
        tenant: &str,
        secrets: &Secrets,
    ) -> Result<(), WebhookError> {
        sqlx::query(
            "INSERT INTO webhook_tenant_secrets (tenant, secrets) VALUES ($1, $2) \
             ON CONFLICT (tenant) DO UPDATE SET secrets = EXCLUDED.secrets",
        )
        .bind(tenant)
        .bind(ROWS.encode(secrets)?)
        .execute(&self.shared.pool)
        .await
        .map_err(ROWS.db("rotate webhook signing secret"))?;
        Ok(())
    }

    async fn subscribe(&self, sub: &Subscription) -> Result<(), WebhookError> {
        sqlx::query(
            "INSERT INTO webhook_subscriptions (conversion_id, body) VALUES ($1, $2) \
             ON CONFLICT (conversion_id) DO UPDATE SET body = EXCLUDED.body",
        )
        .bind(sub.conversion.to_string())
        .bind(ROWS.encode(sub)?)
        .execute(&self.shared.pool)
        .await
        .map_err(ROWS.db("subscribe webhook"))?;
        Ok(())
    }

    async fn subscription(&self, id: ConversionId) -> Result<Option<Subscription>, WebhookError> {
        let rows = sqlx::query("SELECT body FROM webhook_subscriptions WHERE conversion_id = $1")
            .bind(id.to_string())
            .fetch_all(&self.shared.pool)
            .await
            .map_err(ROWS.db("get webhook subscription"))?;
        Ok(ROWS.bodies(&rows)?.pop())
    }

    async fn put_message(&self, message: &Message) -> Result<MessageState, WebhookError> {
        sqlx::query(
            "INSERT INTO webhook_messages (id, conversion_id, state, body) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        )
        .bind(message.id.to_string())
        .bind(message.conversion.to_string())
        .bind(message.state.as_str())
        .bind(ROWS.encode(message)?)
        .execute(&self.shared.pool)
        .await
        .map_err(ROWS.db("put webhook message"))?;
        let state: String = sqlx::query_scalar("SELECT state FROM webhook_messages WHERE id = $1")
            .bind(message.id.to_string())
            .fetch_one(&self.shared.pool)
            .await
            .map_err(ROWS.db("put webhook message"))?;
        ROWS.state(&state)
    }

    async fn message(&self, id: ConversionId) -> Result<Option<Message>, WebhookError> {
        let row = sqlx::query("SELECT state, body FROM webhook_messages WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(ROWS.db("get webhook message"))?;
        row.as_ref().map(|row| ROWS.message(row)).transpose()
    }

    async fn set_message_state(
        &self,
        id: ConversionId,
        state: MessageState,
    ) -> Result<(), WebhookError> {
        sqlx::query("UPDATE webhook_messages SET state = $1 WHERE id = $2")
            .bind(state.as_str())
            .bind(id.to_string())
            .execute(&self.shared.pool)
            .await
            .map_err(ROWS.db("set webhook message state"))?;
        Ok(())
    }

    async fn record_attempt(&self, attempt: &Attempt, keep: usize) -> Result<(), WebhookError> {
        let id = attempt.conversion.to_string();
        let keep = attempts_kept(keep);
        let mut tx = self
            .shared
            .pool
            .begin()
            .await
            .map_err(ROWS.db("record webhook attempt"))?;
        sqlx::query(
            "INSERT INTO webhook_attempts (conversion_id, tenant, body) VALUES ($1, $2, $3)",
        )
        .bind(&id)
        .bind(&attempt.tenant)
        .bind(ROWS.encode(attempt)?)
        .execute(&mut *tx)
        .await
        .map_err(ROWS.db("record webhook attempt"))?;
        sqlx::query(
            "DELETE FROM webhook_attempts WHERE conversion_id = $1 AND seq <= ( \
               SELECT seq FROM webhook_attempts WHERE conversion_id = $1 \
               ORDER BY seq DESC LIMIT 1 OFFSET $2)",
        )
        .bind(&id)
        .bind(keep)
        .execute(&mut *tx)
        .await
        .map_err(ROWS.db("record webhook attempt"))?;
        tx.commit()
            .await
            .map_err(ROWS.db("record webhook attempt"))?;
        Ok(())
    }

    async fn attempts(
        &self,
        tenant: &str,
        conversion: ConversionId,
    ) -> Result<Vec<Attempt>, WebhookError> {
        let rows = sqlx::query(
            "SELECT body FROM webhook_attempts WHERE conversion_id = $1 AND tenant = $2 \
             ORDER BY seq",
        )
        .bind(conversion.to_string())
        .bind(tenant)
        .fetch_all(&self.shared.pool)
        .await
        .map_err(ROWS.db("list webhook attempts"))?;
        ROWS.bodies(&rows)
    }

    async fn forget_conversion(&self, id: ConversionId) -> Result<(), WebhookError> {
        let id = id.to_string();
        for sql in [
            "DELETE FROM webhook_subscriptions WHERE conversion_id = $1",
            "DELETE FROM webhook_attempts WHERE conversion_id = $1",
            "DELETE FROM webhook_messages WHERE conversion_id = $1 AND state <> 'pending'",
        ] {
            sqlx::query(sql)
                .bind(&id)
                .execute(&self.shared.pool)
                .await
                .map_err(ROWS.db("forget webhook conversion"))?;
        }
        Ok(())
    }
}
