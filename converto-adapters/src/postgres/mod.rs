//! PostgreSQL backends: a [`ConversionStore`](converto_core::ConversionStore), a
//! [`JobQueue`](converto_core::JobQueue) and a [`ProgressBus`](converto_core::ProgressBus)
//! sharing one connection pool.
//!
//! Everything lives in one schema (default `converto`), migrations table included, so converto
//! can share a database with an application without touching its tables. Every pooled
//! connection starts with `search_path` set to that schema.
//!
//! - The store keeps indexed columns for what lists filter on and JSONB for the rest;
//!   transitions are a compare-and-set on the record's version.
//! - The queue reserves with one `UPDATE … FOR UPDATE SKIP LOCKED` statement over a partial
//!   index of live jobs, and wakes idle reservers with `LISTEN/NOTIFY` plus a timer to the next
//!   due job or lease expiry.
//! - The bus keeps the latest progress in a table and carries events with `pg_notify`; each bus
//!   has one listening connection, shared by all its subscribers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), converto_adapters::postgres::PostgresError> {
//! use converto_adapters::postgres::{PostgresBackend, PostgresConfig};
//!
//! let pg = PostgresBackend::connect(PostgresConfig::from_env()?).await?;
//! let (store, queue, bus) = (pg.store(), pg.queue(), pg.bus());
//! # let _ = (store, queue, bus);
//! # Ok(())
//! # }
//! ```

mod batch;
mod config;
mod keys;
mod progress;
mod queue;
mod store;
mod tenants;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use converto_core::BlobStore;
use converto_core::engine::Backends;
use converto_core::progress::BusError;
use converto_core::queue::QueueError;
use converto_core::store::StoreError;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::task::JoinHandle;

pub use config::{
    DEFAULT_ACQUIRE_TIMEOUT_SECS, DEFAULT_MAX_CONNECTIONS, DEFAULT_SCHEMA, PostgresConfig,
};
pub use keys::PostgresKeyStore;
pub use progress::PostgresProgressBus;
pub use queue::PostgresJobQueue;
/// The `sqlx` these backends are built on, so callers can use [`PostgresBackend::pool`] without
/// depending on a matching version themselves.
pub use sqlx;
pub use store::PostgresConversionStore;
pub use tenants::PostgresTenantStore;
pub use webhooks::PostgresWebhookStore;

/// The name the backends give in errors.
const BACKEND: &str = "postgres";

/// The name of converto's migrations table (inside the configured schema).
pub const MIGRATIONS_TABLE: &str = "_converto_migrations";

/// Everything that can go wrong in the PostgreSQL backends. The trait errors
/// ([`StoreError`], [`QueueError`], [`BusError`]) carry it as their source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    /// A configuration field is not acceptable.
    #[error("invalid PostgreSQL configuration: {field} {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A required environment variable is not set.
    #[error("environment variable {variable} is not set")]
    MissingEnv {
        /// The variable.
        variable: &'static str,
    },
    /// An environment variable holds something unusable.
    #[error("environment variable {variable} has an invalid value {value:?}")]
    InvalidEnv {
        /// The variable.
        variable: &'static str,
        /// Its value (cut to 64 characters).
        value: String,
    },
    /// The connection URL could not be parsed.
    #[error("invalid PostgreSQL URL {url}: {source}")]
    InvalidUrl {
        /// The URL, password hidden.
        url: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A query or connection failed.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// The statement of a batch of concurrent calls failed (every call in it gets this error).
    #[error("a batched statement failed: {0}")]
    Batched(#[source] Arc<sqlx::Error>),
    /// Running the migrations failed.
    #[error("migrating schema {schema} failed: {source}")]
    Migrate {
        /// The schema.
        schema: String,
        /// Why.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A value does not fit the column that stores it.
    #[error("{field} value {value} does not fit in a PostgreSQL bigint")]
    OutOfRange {
        /// Which value.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// Other writers kept changing a record between our read and our compare-and-set.
    #[error("conversion {id} kept changing under {attempts} compare-and-set attempts")]
    Contended {
        /// The record.
        id: converto_core::ConversionId,
        /// How many times we tried.
        attempts: u32,
    },
}

impl PostgresError {
    /// Whether trying again may succeed: lost or refused connections, pool timeouts,
    /// serialization failures, deadlocks, lock timeouts, server shutdowns and resource limits.
    pub fn is_temporary(&self) -> bool {
        match self {
            PostgresError::Sql(e) => sql_is_temporary(e),
            PostgresError::Batched(e) => sql_is_temporary(e),
            PostgresError::Migrate {
                source: sqlx::migrate::MigrateError::Execute(e),
                ..
            } => sql_is_temporary(e),
            PostgresError::Contended { .. } => true,
            _ => false,
        }
    }
}

fn sql_is_temporary(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 40001 serialization failure; 40P01 deadlock;
            // 53: insufficient resources; 55P03 lock not available; 57P01-03 shutdown, crash,
            // cannot connect now; 57014 query cancelled (statement timeout).
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(
                    code.as_ref(),
                    "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "57014"
                )
        }),
        _ => false,
    }
}

impl From<PostgresError> for StoreError {
    fn from(e: PostgresError) -> Self {
        StoreError::backend(BACKEND, e.is_temporary(), e)
    }
}

impl From<PostgresError> for QueueError {
    fn from(e: PostgresError) -> Self {
        QueueError::backend(BACKEND, e.is_temporary(), e)
    }
}

impl From<PostgresError> for BusError {
    fn from(e: PostgresError) -> Self {
        BusError::backend(BACKEND, e.is_temporary(), e)
    }
}

/// Now, at PostgreSQL's precision (microseconds), so records read back equal to what was
/// returned when they were written.
fn now_micros() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A `u64` as a bigint, or an error naming the field.
fn to_i64(field: &'static str, value: u64) -> Result<i64, PostgresError> {
    i64::try_from(value).map_err(|_| PostgresError::OutOfRange { field, value })
}

/// A duration as whole microseconds (saturating), for `$n * interval '1 microsecond'`.
fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A background task that listens for notifications; aborted when dropped, so a dropped queue
/// or bus releases its listening connection.
#[derive(Debug)]
struct ListenerTask(JoinHandle<()>);

impl Drop for ListenerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Backoff between failed reconnection attempts of a listener.
const LISTENER_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Starts listening on `channel` and returns once `LISTEN` is in place, so nothing notified
/// after this returns is missed. The task calls `handle` with each payload, and with `None`
/// when the connection was lost and notifications may have been missed; it reconnects with
/// backoff and ends when the pool is closed.
async fn start_listener<F>(
    pool: &PgPool,
    channel: String,
    mut handle: F,
) -> Result<ListenerTask, PostgresError>
where
    F: FnMut(Option<&str>) + Send + 'static,
{
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(&channel).await?;
    let task = tokio::spawn(async move {
        let (min, max) = LISTENER_BACKOFF;
        let mut backoff = min;
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    backoff = min;
                    handle(Some(n.payload()));
                }
                Ok(None) => {
                    tracing::warn!(%channel, "postgres listener lost its connection; reconnected");
                    handle(None);
                }
                Err(sqlx::Error::PoolClosed) => return,
                Err(error) => {
                    tracing::warn!(%channel, %error, ?backoff, "postgres listener failed; retrying");
                    handle(None);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(max);
                }
            }
        }
    });
    Ok(ListenerTask(task))
}

/// The connection options for `config`: its URL, with `search_path` set to the schema.
fn connect_options(config: &PostgresConfig) -> Result<PgConnectOptions, PostgresError> {
    let options: PgConnectOptions =
        config
            .url
            .parse()
            .map_err(|source| PostgresError::InvalidUrl {
                url: config::redact_url(&config.url),
                source,
            })?;
    Ok(options
        .options([("search_path", config.schema.as_str())])
        .application_name("converto"))
}

/// What the store, queue and bus share.
#[derive(Debug, Clone)]
struct Shared {
    pool: PgPool,
    /// The job queue's statements: the same pool, or one whose sessions run with
    /// `synchronous_commit = off` (see [`PostgresConfig::queue_synchronous_commit`]).
    queue_pool: PgPool,
    /// A small pool for the listening connections, so they never take the query pool's slots.
    listen_pool: PgPool,
    schema: Arc<str>,
}

impl Shared {
    fn channel(&self, what: &str) -> String {
        format!("{}:{what}", self.schema)
    }
}

/// A connection to PostgreSQL and the three backends over it.
#[derive(Debug, Clone)]
pub struct PostgresBackend {
    config: PostgresConfig,
    shared: Shared,
    store: Arc<PostgresConversionStore>,
    queue: Arc<PostgresJobQueue>,
    bus: Arc<PostgresProgressBus>,
}

impl PostgresBackend {
    /// Connects, creates the schema if needed and runs the migrations.
    pub async fn connect(config: PostgresConfig) -> Result<Self, PostgresError> {
        let backend = Self::connect_without_migrating(config).await?;
        backend.migrate().await?;
        Ok(backend)
    }

    /// Connects without touching the schema (for deployments that run [`Self::migrate`] as a
    /// separate step).
    pub async fn connect_without_migrating(config: PostgresConfig) -> Result<Self, PostgresError> {
        config.validate()?;
        let options = connect_options(&config)?;
        let query_pool = || {
            PgPoolOptions::new()
                .max_connections(config.max_connections)
                .acquire_timeout(config.acquire_timeout_duration())
                // No ping before every use: it doubles the round trips of every call. A
                // connection that died is found by the call that uses it, whose error is
                // temporary, so the engine retries it on a fresh connection (see the
                // connection-loss test).
                .test_before_acquire(false)
        };
        let pool = query_pool().connect_with(options.clone()).await?;
        let listen_pool = PgPoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .acquire_timeout(config.acquire_timeout_duration())
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(options.clone());
        let queue_pool = if config.queue_synchronous_commit {
            pool.clone()
        } else {
            query_pool().connect_lazy_with(options.clone().options([("synchronous_commit", "off")]))
        };
        let shared = Shared {
            pool,
            queue_pool,
            listen_pool,
            schema: Arc::from(config.schema.as_str()),
        };
        Ok(Self {
            store: Arc::new(PostgresConversionStore::new(shared.clone())),
            queue: Arc::new(PostgresJobQueue::new(shared.clone())),
            bus: Arc::new(PostgresProgressBus::new(shared.clone())),
            config,
            shared,
        })
    }

    /// Creates the schema if needed and applies the migrations that are not applied yet,
    /// recording them in `<schema>._converto_migrations`. Safe to run concurrently.
    pub async fn migrate(&self) -> Result<(), PostgresError> {
        let schema = &self.config.schema;
        let mut migrator = sqlx::migrate!("migrations/postgres");
        // The schema name was validated as a plain lowercase identifier; quoting keeps it exact.
        migrator.create_schema(format!("\"{schema}\""));
        migrator.dangerous_set_table_name(format!("\"{schema}\".\"{MIGRATIONS_TABLE}\""));
        migrator
            .run(&self.shared.pool)
            .await
            .map_err(|source| PostgresError::Migrate {
                schema: schema.clone(),
                source,
            })
    }

    /// The conversion store.
    pub fn store(&self) -> Arc<PostgresConversionStore> {
        Arc::clone(&self.store)
    }

    /// The job queue.
    pub fn queue(&self) -> Arc<PostgresJobQueue> {
        Arc::clone(&self.queue)
    }

    /// The progress bus.
    pub fn bus(&self) -> Arc<PostgresProgressBus> {
        Arc::clone(&self.bus)
    }

    /// The API keys kept in this database (for the HTTP service's authentication).
    pub fn keys(&self) -> Arc<PostgresKeyStore> {
        Arc::new(PostgresKeyStore::new(self.shared.clone()))
    }

    /// The per-tenant limit overrides kept in this database (`converto tenants set`).
    pub fn tenants(&self) -> Arc<PostgresTenantStore> {
        Arc::new(PostgresTenantStore::new(self.shared.clone()))
    }

    /// The webhook endpoints, secrets, messages and attempts kept in this database.
    pub fn webhooks(&self) -> Arc<PostgresWebhookStore> {
        Arc::new(PostgresWebhookStore::new(self.shared.clone()))
    }

    /// The engine's backends: these three and the given blob store.
    pub fn backends(&self, blobs: Arc<dyn BlobStore>) -> Backends {
        Backends {
            store: self.store(),
            queue: self.queue(),
            bus: self.bus(),
            blobs,
        }
    }

    /// The query pool (its connections use converto's schema as `search_path`).
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    /// The pool the job queue's statements run on (the same as [`Self::pool`] unless
    /// [`PostgresConfig::queue_synchronous_commit`] is off).
    pub fn queue_pool(&self) -> &PgPool {
        &self.shared.queue_pool
    }

    /// The configuration.
    pub fn config(&self) -> &PostgresConfig {
        &self.config
    }

    /// Closes the pools; later calls fail.
    pub async fn close(&self) {
        self.shared.listen_pool.close().await;
        self.shared.queue_pool.close().await;
        self.shared.pool.close().await;
    }
}
