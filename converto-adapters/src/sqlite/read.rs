//! Point reads of one record on the caller's thread, beside the sqlx pool.
//!
//! sqlx runs every SQLite connection on a thread of its own: a query is a message to that
//! thread and an answer back, two thread wake-ups that cost far more than reading one row by
//! its primary key from the page cache (a few microseconds). Status reads (`GET
//! /v1/conversions/{id}`) are the hottest query of the service, so [`PointReader`] keeps a few
//! plain connections (rusqlite, the same SQLite library) and answers them directly.
//!
//! Nothing is cached: every read is its own read transaction, so it sees every transaction
//! committed before it started, by this process or any other sharing the file (WAL mode), as
//! the sqlx path does. A read never waits: when every connection is in use, or SQLite reports
//! anything at all (a busy database, a schema change, an I/O error, a row that does not
//! decode), the caller falls back to the pool, which has the busy timeout and reports errors.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use converto_core::conversion::Conversion;
use converto_core::{ConversionId, Format};
use parking_lot::Mutex;
use rusqlite::{OpenFlags, OptionalExtension, Row};

use super::from_nanos;
use super::store::COLUMNS;

/// The most connections kept; fewer when the machine has fewer threads to run reads on.
const MAX_READERS: usize = 8;

/// A few connections for point reads, each used by one thread at a time.
pub(super) struct PointReader {
    connections: Vec<Mutex<rusqlite::Connection>>,
    /// Where the next read starts looking for a free connection (spreads the load).
    next: AtomicUsize,
    /// `SELECT {COLUMNS} ... WHERE id = ?`.
    by_id: String,
}

impl std::fmt::Debug for PointReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointReader")
            .field("connections", &self.connections.len())
            .finish_non_exhaustive()
    }
}

impl PointReader {
    /// Connections to the database file at `path` (whose schema is up to date), or `None`
    /// when it cannot be opened (reads then all go through the pool).
    pub(super) fn open(path: &Path) -> Option<PointReader> {
        let count = std::thread::available_parallelism()
            .map_or(2, usize::from)
            .clamp(2, MAX_READERS);
        let connections = (0..count)
            .map(|_| open_one(path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tracing::debug!(error = %e, "no direct SQLite reads; using the pool"))
            .ok()?;
        Some(PointReader {
            connections,
            next: AtomicUsize::new(0),
            by_id: format!("SELECT {COLUMNS} FROM converto_conversions WHERE id = ?"),
        })
    }

    /// The record with `id`: `Some(Some(record))`, `Some(None)` when there is none, or `None`
    /// when this reader cannot answer now and the pool should.
    pub(super) fn get(&self, id: ConversionId) -> Option<Option<Conversion>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.connections.len();
        let conn = (0..n).find_map(|i| self.connections.get((start + i) % n)?.try_lock())?;
        let mut stmt = conn.prepare_cached(&self.by_id).ok()?;
        // The statement is reset when the query returns: the read transaction ends with it.
        let found = stmt
            .query_row([id.to_string()], |row| Ok(decode(row)))
            .optional()
            .ok()?;
        match found {
            None => Some(None),
            Some(Some(record)) => Some(Some(record)),
            // Let the pool's decoder say what is wrong with the row.
            Some(None) => None,
        }
    }
}

fn open_one(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // Never wait for a lock on the caller's thread: the pool waits instead.
    conn.busy_timeout(Duration::ZERO)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.set_prepared_statement_cache_capacity(4);
    Ok(conn)
}

fn text(row: &Row<'_>, name: &str) -> Option<String> {
    row.get(name).ok()
}

fn opt_text(row: &Row<'_>, name: &str) -> Option<Option<String>> {
    row.get(name).ok()
}

fn int(row: &Row<'_>, name: &str) -> Option<i64> {
    row.get(name).ok()
}

fn opt_int(row: &Row<'_>, name: &str) -> Option<Option<i64>> {
    row.get(name).ok()
}

fn number<T: TryFrom<i64>>(row: &Row<'_>, name: &str) -> Option<T> {
    int(row, name)?.try_into().ok()
}

fn json<T: serde::de::DeserializeOwned>(row: &Row<'_>, name: &str) -> Option<T> {
    serde_json::from_str(&text(row, name)?).ok()
}

fn opt_json<T: serde::de::DeserializeOwned>(row: &Row<'_>, name: &str) -> Option<Option<T>> {
    match opt_text(row, name)? {
        Some(t) => serde_json::from_str(&t).ok().map(Some),
        None => Some(None),
    }
}

fn format(row: &Row<'_>, name: &str) -> Option<Format> {
    Format::new(&text(row, name)?).ok()
}

/// The record in `row` (read by the names of [`COLUMNS`], as the pool's decoder does), or
/// `None` if any column does not decode.
fn decode(row: &Row<'_>) -> Option<Conversion> {
    Some(Conversion {
        id: text(row, "id")?.parse().ok()?,
        tenant: text(row, "tenant")?,
        source_format: format(row, "source_format")?,
        target_format: format(row, "target_format")?,
        options: json(row, "options")?,
        labels: json(row, "labels")?,
        priority: number(row, "priority")?,
        status: text(row, "status")?.parse().ok()?,
        progress: opt_json(row, "progress")?,
        attempts: number(row, "attempts")?,
        error: opt_json(row, "error")?,
        artifacts: json(row, "artifacts")?,
        input_key: text(row, "input_key")?,
        input_name: opt_text(row, "input_name")?,
        input_size: number(row, "input_size")?,
        idempotency_key: opt_text(row, "idempotency_key")?,
        created_at: from_nanos(int(row, "created_at")?),
        started_at: opt_int(row, "started_at")?.map(from_nanos),
        finished_at: opt_int(row, "finished_at")?.map(from_nanos),
        updated_at: from_nanos(int(row, "updated_at")?),
        version: number(row, "version")?,
        description: opt_text(row, "description")?,
        tags: json(row, "tags")?,
    })
}

#[cfg(test)]
mod tests {
    use converto_core::store::ConversionStore;

    use super::super::SqliteBackend;

    /// The store of a file database answers `get` here (not through the pool), and stops once
    /// the pool is closed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_databases_read_directly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("converto.db");
        let backend = SqliteBackend::connect(path.to_str().expect("utf-8"))
            .await
            .expect("connect");
        let store = backend.store();
        let reader = store.reader.as_ref().expect("a point reader");
        let created = store
            .create(converto_core::testkit::store::sample("direct"))
            .await
            .expect("create")
            .conversion;
        assert_eq!(reader.get(created.id), Some(Some(created.clone())));
        assert_eq!(reader.get(converto_core::ConversionId::new()), Some(None));
        backend.close().await;
        assert!(
            store.get(created.id).await.is_err(),
            "a closed pool answers"
        );

        let memory = SqliteBackend::connect("sqlite::memory:")
            .await
            .expect("memory");
        assert!(
            memory.store().reader.is_none(),
            "memory databases use the pool"
        );
    }
}
