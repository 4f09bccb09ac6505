//! The webhook stores of the SQL backends (the testkit's conformance suite) and the webhook
//! client's address checks.
//!
//! PostgreSQL is `CONVERTO_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`);
//! each run gets a fresh schema, dropped at the end. Unreachable: fails with `CI=true`, else
//! skips with a message.

#[cfg(any(feature = "sqlite", feature = "postgres"))]
use converto_core::testkit::webhooks::webhook_store;

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_webhook_store_conforms() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}/w.db", dir.path().display());
    let backend = converto_adapters::sqlite::SqliteBackend::connect(url.as_str())
        .await
        .expect("sqlite");
    webhook_store(backend.webhooks()).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_webhook_store_conforms() {
    use converto_adapters::postgres::{PostgresBackend, PostgresConfig};
    let url = std::env::var("CONVERTO_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!(
        "converto_test_{}",
        converto_core::ConversionId::new().as_uuid().simple()
    );
    let backend = match PostgresBackend::connect(PostgresConfig::new(url.clone()).schema(&schema))
        .await
    {
        Ok(b) => b,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("PostgreSQL is unreachable: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: PostgreSQL is unreachable: {e}. Set CONVERTO_TEST_POSTGRES_URL.");
            return;
        }
    };
    webhook_store(backend.webhooks()).await;
    let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    sqlx::query(sqlx::AssertSqlSafe(drop))
        .execute(backend.pool())
        .await
        .expect("drop schema");
}

#[cfg(feature = "webhooks")]
#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_before_connecting() {
    use converto_adapters::webhooks::{HttpWebhookTransport, WebhookClientConfig};
    use converto_core::webhook::{TransportError, WebhookRequest, WebhookTransport};
    let t = HttpWebhookTransport::new(&WebhookClientConfig::default()).expect("client");
    // Accepted up front (a name), refused once resolved.
    assert!(t.check_url("http://localhost:9/").is_ok());
    let answer = t
        .post(WebhookRequest {
            url: "http://localhost:9/".into(),
            headers: vec![],
            body: bytes::Bytes::from_static(b"{}"),
        })
        .await;
    match answer {
        Err(TransportError::Refused(why)) => assert!(why.contains("loopback"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
