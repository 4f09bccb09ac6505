//! SQLite: the embedded default `ConversionStore` and `JobQueue`.
//!
//! [`SqliteBackend::connect`] opens (creating it if missing) one database file in WAL mode,
//! with a busy timeout and foreign keys on, runs the embedded migrations (their bookkeeping lives
//! in the `converto_migrations` table, and converto's tables are prefixed `converto_`, so the
//! file can be shared with an application's own tables), and hands out a
//! [`SqliteConversionStore`] and a [`SqliteJobQueue`] sharing one connection pool. For a file
//! database the store also keeps a few plain connections that answer `get` on the caller's
//! thread, without the pool's thread hop, and fall back to the pool whenever they cannot answer
//! at once, and a few threads that read list and search pages, one message per page (`read.rs`:
//! no cache, every read sees every committed write), and a task that keeps the full-text
//! index merged into few segments, a bounded amount a second (`merge.rs`).
//!
//! Several processes (or several backends in one process) may share a file: records are changed
//! with compare-and-set on their version, and jobs are reserved inside `BEGIN IMMEDIATE`
//! transactions, so no job is delivered twice. Waiting reservers are woken at once by enqueues
//! and retries made in this process, by a timer at the next due job or lease expiry, and, for
//! jobs enqueued by another process, by a re-check once a second.

mod keys;
mod merge;
mod queue;
mod read;
mod store;
mod tenants;
mod webhooks;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use keys::SqliteKeyStore;
pub use queue::SqliteJobQueue;
pub use store::SqliteConversionStore;
pub use tenants::SqliteTenantStore;
pub use webhooks::SqliteWebhookStore;

const BACKEND: &str = "sqlite";
/// How long a statement waits for another connection's write lock before failing as busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections per pool: SQLite has one writer at a time, readers run beside it in WAL mode.
const MAX_CONNECTIONS: u32 = 8;
/// The table recording applied migrations.
const MIGRATIONS_TABLE: &str = "converto_migrations";

/// The errors of the SQLite backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    /// The URL or path could not be understood.
    #[error("invalid SQLite database URL {url:?}: {source}")]
    InvalidUrl {
        /// What was given.
        url: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// The directory for the database file could not be created.
    #[error("cannot create the directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error("cannot open the SQLite database: {0}")]
    Connect(#[source] sqlx::Error),
    /// The migrations failed.
    #[error("SQLite migrations failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A statement failed.
    #[error("SQLite {operation} failed: {source}")]
    Query {
        /// What was being done.
        operation: &'static str,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A value does not fit the column that stores it.
    #[error("{field} is out of range for SQLite")]
    OutOfRange {
        /// Which value.
        field: &'static str,
    },
    /// A compare-and-set kept losing to concurrent writers.
    #[error("conversion {id} kept changing under {tries} attempts to update it")]
    Contended {
        /// The record.
        id: String,
        /// How many tries were made.
        tries: u32,
    },
}

impl SqliteError {
    /// Whether trying again may succeed: a busy or locked database, a pool timeout, an I/O
    /// failure, a contended record.
    pub fn is_temporary(&self) -> bool {
        match self {
            SqliteError::Connect(e) | SqliteError::Query { source: e, .. } => is_temporary(e),
            SqliteError::Migrate(
                sqlx::migrate::MigrateError::Execute(e)
                | sqlx::migrate::MigrateError::ExecuteMigration(e, _),
            ) => is_temporary(e),
            SqliteError::CreateDir { .. }
            | SqliteError::InvalidUrl { .. }
            | SqliteError::Migrate(_)
            | SqliteError::OutOfRange { .. } => false,
            SqliteError::Contended { .. } => true,
        }
    }
}

impl From<SqliteError> for converto_core::BackendError {
    /// The shared backend error, with the statement's operation and a kind: a contended record
    /// or a busy database is `Busy`, another passing failure `Unavailable`.
    fn from(e: SqliteError) -> Self {
        use converto_core::ErrorKind;
        let temporary = e.is_temporary();
        let kind = match &e {
            SqliteError::Contended { .. } => ErrorKind::Busy,
            SqliteError::Query {
                source: sqlx::Error::Database(_),
                ..
            } if temporary => ErrorKind::Busy,
            _ if temporary => ErrorKind::Unavailable,
            _ => ErrorKind::Other,
        };
        let operation = match &e {
            SqliteError::Query { operation, .. } => Some(*operation),
            SqliteError::Connect(_) => Some("connect"),
            SqliteError::Migrate(_) => Some("migrate"),
            SqliteError::Contended { .. } => Some("transition"),
            _ => None,
        };
        let key = match &e {
            SqliteError::Contended { id, .. } => Some(id.clone()),
            _ => None,
        };
        let mut out = converto_core::BackendError::new(BACKEND, temporary, e).kind(kind);
        out.operation = operation;
        out.key = key;
        out
    }
}

/// SQLite primary result codes that name a passing condition.
const SQLITE_NOMEM: i64 = 7;
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_IOERR: i64 = 10;
const SQLITE_FULL: i64 = 13;
const SQLITE_PROTOCOL: i64 = 15;

fn is_temporary(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            // Extended codes carry the primary code in their low byte.
            .map(|c| c & 0xff)
            .is_some_and(|c| {
                matches!(
                    c,
                    SQLITE_BUSY
                        | SQLITE_LOCKED
                        | SQLITE_IOERR
                        | SQLITE_FULL
                        | SQLITE_NOMEM
                        | SQLITE_PROTOCOL
                )
            }),
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

fn query_error(operation: &'static str) -> impl FnOnce(sqlx::Error) -> SqliteError {
    move |source| SqliteError::Query { operation, source }
}

/// A timestamp as stored: nanoseconds since the Unix epoch, saturating outside 1677..2262.
fn to_nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn from_nanos(n: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_nanos(n)
}

/// Configuration of a [`SqliteBackend`]: the database's URL or path. `"data/converto.db"` and
/// `SqliteConfig::from("sqlite://data/converto.db")` are the same; `sqlite::memory:` is a
/// private in-memory database.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// A file path or a `sqlite://` URL.
    pub url: String,
}

impl From<&str> for SqliteConfig {
    fn from(url: &str) -> Self {
        Self {
            url: url.to_owned(),
        }
    }
}

impl From<&String> for SqliteConfig {
    fn from(url: &String) -> Self {
        Self { url: url.clone() }
    }
}

impl From<String> for SqliteConfig {
    fn from(url: String) -> Self {
        Self { url }
    }
}

/// One SQLite database holding conversion records and the job queue.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    pool: SqlitePool,
    store: Arc<SqliteConversionStore>,
    queue: Arc<SqliteJobQueue>,
}

impl SqliteBackend {
    /// Opens the database at `url`, a file path or a `sqlite://` URL (`sqlite::memory:` for a
    /// private in-memory database), creating the file and its directory if missing, and brings
    /// its schema up to date.
    pub async fn connect(config: impl Into<SqliteConfig>) -> Result<SqliteBackend, SqliteError> {
        let config = config.into();
        let url = config.url.as_str();
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = if url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url).map_err(|source| SqliteError::InvalidUrl {
                url: url.to_owned(),
                source,
            })?
        } else {
            SqliteConnectOptions::new().filename(url)
        };
        if !in_memory
            && let Some(dir) = options.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| SqliteError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let filename = options.get_filename().to_path_buf();
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Every commit reaches the disk before it is acknowledged: jobs are durable.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let mut pool_options = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A connection to a local file does not drop like a network one; pinging it
            // before every use would double the cost of each query (a round trip to the
            // connection's thread).
            .test_before_acquire(false);
        if in_memory {
            // An in-memory database lives as long as one connection to it does.
            pool_options = pool_options
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool_options
            .connect_with(options)
            .await
            .map_err(SqliteError::Connect)?;
        // The pool has created the file by now; its canonical path names it for wake-ups.
        let database = if in_memory {
            None
        } else {
            tokio::fs::canonicalize(&filename).await.ok()
        };
        let reader_path = database.clone();
        let mut backend = SqliteBackend {
            store: Arc::new(SqliteConversionStore::new(pool.clone())),
            queue: Arc::new(SqliteJobQueue::new(pool.clone(), database)),
            pool,
        };
        backend.migrate().await?;
        // Opened after the migrations, so their statements are prepared against the schema.
        if let Some(path) = reader_path {
            let reader = tokio::task::spawn_blocking(move || read::PointReader::open(&path))
                .await
                .ok()
                .flatten();
            backend.store = Arc::new(
                SqliteConversionStore::new(backend.pool.clone())
                    .with_reader(reader)
                    .with_merger(),
            );
        }
        Ok(backend)
    }

    /// Applies any migration not yet applied (done by [`connect`](Self::connect) already).
    ///
    /// Two processes opening a new file at once may race to apply the same migration; the loser
    /// fails, so this tries a few times, and the later tries find the migration applied.
    pub async fn migrate(&self) -> Result<(), SqliteError> {
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
        const TRIES: u32 = 3;
        let mut attempt = 1;
        loop {
            match migrator.run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= TRIES => return Err(SqliteError::Migrate(e)),
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "SQLite migration failed; trying again");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    attempt += 1;
                }
            }
        }
    }

    /// The conversion store on this database.
    pub fn store(&self) -> Arc<SqliteConversionStore> {
        Arc::clone(&self.store)
    }

    /// The job queue on this database.
    pub fn queue(&self) -> Arc<SqliteJobQueue> {
        Arc::clone(&self.queue)
    }

    /// The API keys kept in this database (for the HTTP service's authentication).
    pub fn keys(&self) -> Arc<SqliteKeyStore> {
        Arc::new(SqliteKeyStore::new(self.pool.clone()))
    }

    /// The per-tenant limit overrides kept in this database (`converto tenants set`).
    pub fn tenants(&self) -> Arc<SqliteTenantStore> {
        Arc::new(SqliteTenantStore::new(self.pool.clone()))
    }

    /// The webhook endpoints, secrets, messages and attempts kept in this database.
    pub fn webhooks(&self) -> Arc<SqliteWebhookStore> {
        Arc::new(SqliteWebhookStore::new(self.pool.clone()))
    }

    /// The connection pool, for an application that keeps its own tables in the same file.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection; later calls on the store or queue fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), SqliteError> {
        ping(&self.pool).await
    }
}

async fn ping(pool: &SqlitePool) -> Result<(), SqliteError> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(query_error("ping"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passing_failures_are_temporary() {
        let query = |source| SqliteError::Query {
            operation: "test",
            source,
        };
        assert!(query(sqlx::Error::PoolTimedOut).is_temporary());
        assert!(query(sqlx::Error::Io(std::io::Error::other("disk"))).is_temporary());
        assert!(!query(sqlx::Error::RowNotFound).is_temporary());
        assert!(!query(sqlx::Error::PoolClosed).is_temporary());
        assert!(
            SqliteError::Contended {
                id: "x".into(),
                tries: 1
            }
            .is_temporary()
        );
        assert!(!SqliteError::OutOfRange { field: "x" }.is_temporary());
    }

    #[test]
    fn timestamps_round_trip_and_saturate() {
        let now = Utc::now();
        assert_eq!(from_nanos(to_nanos(now)), now);
        assert_eq!(to_nanos(DateTime::<Utc>::MAX_UTC), i64::MAX);
        assert_eq!(to_nanos(DateTime::<Utc>::MIN_UTC), i64::MIN);
    }
}
