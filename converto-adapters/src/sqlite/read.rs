//! Point reads of one record on the caller's thread, and list pages on threads of their own,
//! beside the sqlx pool.
//!
//! sqlx runs every SQLite connection on a thread of its own: a query is a message to that
//! thread and an answer back, two thread wake-ups that cost far more than reading one row by
//! its primary key from the page cache (a few microseconds). Status reads (`GET
//! /v1/conversions/{id}`) are the hottest query of the service, so [`PointReader`] keeps a few
//! plain connections (rusqlite, the same SQLite library) and answers them directly. List and
//! search pages go to a few page-reading threads, each with a connection of its own: one
//! message there and one answer back per page, where the pool sends one per row.
//!
//! Nothing is cached: every read is its own read transaction, so it sees every transaction
//! committed before it started, by this process or any other sharing the file (WAL mode), as
//! the sqlx path does. A point read never waits, since it runs on an async runtime's thread:
//! when every connection is in use, or SQLite reports anything at all (a busy database, a
//! schema change, an I/O error, a row that does not decode), the caller falls back to the
//! pool, which has the busy timeout and reports errors. A page-reading thread is off the
//! runtime, so it waits for a writer's lock as the pool does (the same busy timeout); whatever
//! SQLite reports after that, it hands its statement back for the pool to run.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use converto_core::conversion::Conversion;
use converto_core::{ConversionId, Format};
use parking_lot::Mutex;
use rusqlite::{OpenFlags, OptionalExtension, Row};

use super::store::{Arg, COLUMNS, Statement};
use super::{BUSY_TIMEOUT, from_nanos};

/// The most connections kept for point reads, and the most threads reading pages; fewer when
/// the machine has fewer threads to run reads on.
const MAX_READERS: usize = 8;

/// A read run on a page-reading thread.
type Job = Box<dyn FnOnce(&rusqlite::Connection) + Send>;

/// How a page-reading thread turns the rows of a statement into an answer: `None` when it
/// cannot (the pool then runs the statement and says what is wrong).
pub(super) type Read<T> = fn(&rusqlite::Connection, &Statement) -> Option<T>;

/// A statement on its way to a page-reading thread, with where its answer goes.
///
/// However the read ends, the asker hears back: with the answer, or with its statement for the
/// pool to run, when the read declines, panics, or never runs because the threads are gone
/// (the job is dropped unsent). Dropping a `PageRead` that has not answered hands the statement
/// back.
struct PageRead<T> {
    statement: Statement,
    read: Read<T>,
    answer: Option<tokio::sync::oneshot::Sender<Result<T, Statement>>>,
}

impl<T> PageRead<T> {
    fn run(mut self, conn: &rusqlite::Connection) {
        if let Some(value) = (self.read)(conn, &self.statement)
            && let Some(answer) = self.answer.take()
        {
            // The asker may have gone (a dropped request): nobody to answer then.
            let _ = answer.send(Ok(value));
        }
    }
}

impl<T> Drop for PageRead<T> {
    fn drop(&mut self) {
        if let Some(answer) = self.answer.take() {
            let _ = answer.send(Err(std::mem::take(&mut self.statement)));
        }
    }
}

/// A few connections for point reads, each used by one thread at a time.
pub(super) struct PointReader {
    connections: Vec<Mutex<rusqlite::Connection>>,
    /// Where the next read starts looking for a free connection (spreads the load).
    next: AtomicUsize,
    /// `SELECT {COLUMNS} ... WHERE id = ?`.
    by_id: String,
    /// List and search pages, read by threads of their own, each with its own connection: a
    /// page costs one message to a thread and one answer back (the pool sends one per row),
    /// and a long search never holds up the async runtime's threads. The threads end when
    /// this sender is dropped.
    pages: flume::Sender<Job>,
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
        // Point reads run on the async runtime's threads: they never wait for a lock.
        let connections = (0..count)
            .map(|_| open_one(path, Duration::ZERO).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tracing::debug!(error = %e, "no direct SQLite reads; using the pool"))
            .ok()?;
        let (pages, jobs) = flume::unbounded::<Job>();
        for _ in 0..count {
            // Off the runtime, a page may wait for a writer's lock as the pool would.
            let conn = open_one(path, BUSY_TIMEOUT)
                .map_err(|e| tracing::debug!(error = %e, "no direct SQLite reads; using the pool"))
                .ok()?;
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name("converto-sqlite-read".into())
                .spawn(move || {
                    while let Ok(job) = jobs.recv() {
                        job(&conn);
                    }
                })
                .map_err(|e| tracing::debug!(error = %e, "no page-reading thread; using the pool"))
                .ok()?;
        }
        Some(PointReader {
            connections,
            next: AtomicUsize::new(0),
            by_id: format!("SELECT {COLUMNS} FROM converto_conversions WHERE id = ?"),
            pages,
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

    /// What `read` makes of the rows of `statement`, read on a page-reading thread; the
    /// statement back when this reader cannot answer now and the pool should.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        statement: Statement,
        read: Read<T>,
    ) -> Result<T, Statement> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let request = PageRead {
            statement,
            read,
            answer: Some(answer),
        };
        // Unsent (every thread has gone), the job is dropped here and hands the statement back.
        let _ = self.pages.send(Box::new(move |conn| request.run(conn)));
        match answered.await {
            Ok(answer) => answer,
            Err(_) => unreachable!("a page read answers, or hands its statement back when dropped"),
        }
    }
}

/// The one text or NULL `statement` selects.
pub(super) fn optional_text(
    conn: &rusqlite::Connection,
    statement: &Statement,
) -> Option<Option<String>> {
    let mut stmt = conn.prepare_cached(&statement.sql).ok()?;
    stmt.query_row(rusqlite::params_from_iter(args(statement)), |row| {
        row.get(0)
    })
    .ok()
}

/// The records `statement` selects (a list or search page).
pub(super) fn records(
    conn: &rusqlite::Connection,
    statement: &Statement,
) -> Option<Vec<Conversion>> {
    let mut stmt = conn.prepare_cached(&statement.sql).ok()?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args(statement)), |row| {
            Ok(decode(row))
        })
        .ok()?;
    // Any row that does not decode: the pool's decoder says what is wrong with it.
    rows.map(|row| row.ok().flatten()).collect()
}

/// The records a search statement with a `proved` column selects (see `newest_query` in
/// `store.rs`), or `None` inside when it could not prove them the page; a row without an id is
/// no record.
pub(super) fn proved_records(
    conn: &rusqlite::Connection,
    statement: &Statement,
) -> Option<Option<Vec<Conversion>>> {
    let mut stmt = conn.prepare_cached(&statement.sql).ok()?;
    let proved = stmt.column_index("proved").ok()?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(args(statement)))
        .ok()?;
    let mut items = Vec::new();
    while let Some(row) = rows.next().ok()? {
        if !row.get::<_, bool>(proved).ok()? {
            return Some(None);
        }
        if row.get_ref(0).ok()? != rusqlite::types::ValueRef::Null {
            items.push(decode(row)?);
        }
    }
    Some(Some(items))
}

/// The arguments of `statement`, for rusqlite.
fn args(statement: &Statement) -> impl Iterator<Item = rusqlite::types::ToSqlOutput<'_>> {
    statement.args.iter().map(|arg| match arg {
        Arg::Text(value) => rusqlite::types::ToSqlOutput::Borrowed(
            rusqlite::types::ValueRef::Text(value.as_bytes()),
        ),
        Arg::Int(value) => {
            rusqlite::types::ToSqlOutput::Owned(rusqlite::types::Value::Integer(*value))
        }
    })
}

/// How much of the database file a reading connection maps into memory (1 GiB).
const READ_MAP_BYTES: i64 = 1 << 30;

/// A read-only connection that waits up to `busy_timeout` for another connection's lock.
fn open_one(path: &Path, busy_timeout: Duration) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "query_only", true)?;
    // Pages read through a memory map instead of copied into each connection's small page
    // cache: a search that reads a few hundred records spread over the file reads them where
    // the kernel caches them (2 ms became 0.6 ms for 750 records). Address space, not memory;
    // a larger file is read through the cache past this size.
    conn.pragma_update(None, "mmap_size", READ_MAP_BYTES)?;
    // Plans that do not depend on the values bound: otherwise SQLite prepares a cached statement
    // again each time its parameters are bound, which was an eighth of a list page's CPU. The
    // list and search statements choose their plan by their shape (see `list_query`).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    // Point reads, and the list and search statements (one per shape of query).
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// The value in column `i`, owned.
fn get<T: rusqlite::types::FromSql>(row: &Row<'_>, i: usize) -> Option<T> {
    row.get(i).ok()
}

/// The text in column `i`, borrowed from the row (for values parsed, not kept).
fn str_ref<'r>(row: &'r Row<'_>, i: usize) -> Option<&'r str> {
    row.get_ref(i).ok()?.as_str().ok()
}

/// The text or NULL in column `i`, borrowed from the row.
fn opt_str_ref<'r>(row: &'r Row<'_>, i: usize) -> Option<Option<&'r str>> {
    row.get_ref(i).ok()?.as_str_or_null().ok()
}

fn number<T: TryFrom<i64>>(row: &Row<'_>, i: usize) -> Option<T> {
    get::<i64>(row, i)?.try_into().ok()
}

fn json<T: serde::de::DeserializeOwned>(row: &Row<'_>, i: usize) -> Option<T> {
    serde_json::from_str(str_ref(row, i)?).ok()
}

fn opt_json<T: serde::de::DeserializeOwned>(row: &Row<'_>, i: usize) -> Option<Option<T>> {
    match opt_str_ref(row, i)? {
        Some(t) => serde_json::from_str(t).ok().map(Some),
        None => Some(None),
    }
}

fn format(row: &Row<'_>, i: usize) -> Option<Format> {
    Format::new(str_ref(row, i)?).ok()
}

/// The record in `row` (read by position: the columns are [`COLUMNS`], in order), or `None`
/// if any column does not decode.
fn decode(row: &Row<'_>) -> Option<Conversion> {
    Some(Conversion {
        id: str_ref(row, 0)?.parse().ok()?,
        tenant: get(row, 1)?,
        source_format: format(row, 2)?,
        target_format: format(row, 3)?,
        options: json(row, 4)?,
        labels: json(row, 5)?,
        priority: number(row, 6)?,
        status: str_ref(row, 7)?.parse().ok()?,
        progress: opt_json(row, 8)?,
        attempts: number(row, 9)?,
        error: opt_json(row, 10)?,
        artifacts: json(row, 11)?,
        input_key: get(row, 12)?,
        input_name: get(row, 13)?,
        input_size: number(row, 14)?,
        idempotency_key: get(row, 15)?,
        created_at: from_nanos(get(row, 16)?),
        started_at: get::<Option<i64>>(row, 17)?.map(from_nanos),
        finished_at: get::<Option<i64>>(row, 18)?.map(from_nanos),
        updated_at: from_nanos(get(row, 19)?),
        version: number(row, 20)?,
        description: get(row, 21)?,
        tags: json(row, 22)?,
    })
}

#[cfg(test)]
mod tests {
    use converto_core::store::ConversionStore;

    use super::super::SqliteBackend;

    /// A backend on a new database file, which lives as long as the directory.
    async fn file_backend() -> (tempfile::TempDir, SqliteBackend) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("converto.db");
        let backend = SqliteBackend::connect(path.to_str().expect("utf-8"))
            .await
            .expect("connect");
        (dir, backend)
    }

    /// The store of a file database answers `get` here (not through the pool), and stops once
    /// the pool is closed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_databases_read_directly() {
        let (_dir, backend) = file_backend().await;
        let store = backend.store();
        let reader = store.reader.as_ref().expect("a point reader");
        let created = store
            .create(converto_core::testkit::store::sample("direct"))
            .await
            .expect("create")
            .conversion;
        assert_eq!(reader.get(created.id), Some(Some(created.clone())));
        assert_eq!(reader.get(converto_core::ConversionId::new()), Some(None));
        // A list page read here is the page the pool reads.
        let query = converto_core::store::ListQuery {
            tenant: Some(created.tenant.clone()),
            ..Default::default()
        };
        let statement =
            super::super::store::list_query(&query, "", super::super::store::Matches::Every)
                .expect("statement");
        let direct = reader
            .read(statement, super::records)
            .await
            .expect("a direct read");
        assert_eq!(direct, vec![created.clone()]);
        assert_eq!(store.list(&query).await.expect("list").items, direct);
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

    /// A search by creation time takes its page from the full-text index's newest matches
    /// when their rowids follow creation time, and declines (`None`, so `list` goes on to the
    /// other ways) when a record outside the rowids it read sorts into the page.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn newest_matches_make_the_page_only_when_proved() {
        use super::super::store::{Matches, list_query};
        use converto_core::store::{ConversionStore, ListQuery};

        let (_dir, backend) = file_backend().await;
        let store = backend.store();
        let reader = store.reader.as_ref().expect("a point reader");
        let mut ids = Vec::new();
        for _ in 0..30 {
            let mut new = converto_core::testkit::store::sample("acme");
            new.tags = vec!["t".into()];
            ids.push(store.create(new).await.expect("create").conversion.id);
        }
        let query = ListQuery {
            tenant: Some("acme".into()),
            tags: vec!["t".into()],
            limit: 5,
            ..Default::default()
        };
        let newest = async || {
            let statement = list_query(&query, "", Matches::Newest).expect("statement");
            reader
                .read(statement, super::proved_records)
                .await
                .expect("a direct read")
        };
        let page = newest().await.expect("a proved page");
        let expected: Vec<_> = ids.iter().rev().take(6).copied().collect();
        assert_eq!(page.iter().map(|c| c.id).collect::<Vec<_>>(), expected);
        assert_eq!(store.list(&query).await.expect("list").items, page[..5]);
        // No match at all is a proved page too: an empty one.
        let nothing = ListQuery {
            tags: vec!["none".into()],
            ..query.clone()
        };
        let statement = list_query(&nothing, "", Matches::Newest).expect("statement");
        assert_eq!(
            reader.read(statement, super::proved_records).await.ok(),
            Some(Some(Vec::new()))
        );

        // The first record, inserted first, becomes the newest: the index's newest rowids no
        // longer hold the page, and the statement says so.
        sqlx::query(
            "UPDATE converto_conversions SET created_at = created_at + 3600000000000 WHERE id = ?",
        )
        .bind(ids[0].to_string())
        .execute(backend.pool())
        .await
        .expect("update");
        assert_eq!(newest().await, None, "a page that misses the newest record");
        let listed = store.list(&query).await.expect("list").items;
        assert_eq!(listed.first().map(|c| c.id), Some(ids[0]));
        assert_eq!(listed.len(), 5);
    }

    /// A window's page, whether its rows are checked against the index's matches in the
    /// window's rowid range or against gathered rowids, is the page `list` gives, when the
    /// window holds one (a full page and one more row): in every order, past a cursor too,
    /// with finish times in another order than creation.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn window_pages_are_the_list_pages() {
        use super::super::store::{Matches, list_query};
        use converto_core::search::{Cursor, Sort};
        use converto_core::store::{ConversionStore, ListQuery};

        let (_dir, backend) = file_backend().await;
        let store = backend.store();
        let reader = store.reader.as_ref().expect("a point reader");
        for n in 0..40_i64 {
            let mut new = converto_core::testkit::store::sample("acme");
            new.tags = vec![if n % 3 == 0 { "a" } else { "b" }.into()];
            let id = store.create(new).await.expect("create").conversion.id;
            sqlx::query("UPDATE converto_conversions SET finished_at = ? WHERE id = ?")
                .bind(1_800_000_000_000_000_000 + (n * 7 % 40) * 1_000_000_000)
                .bind(id.to_string())
                .execute(backend.pool())
                .await
                .expect("finish");
        }
        let (gathered,): (String,) = sqlx::query_as(
            "SELECT json_group_array(rowid) FROM converto_conversions_fts WHERE converto_conversions_fts MATCH ?",
        )
        .bind(format!(
            "facets : \"{}\"",
            super::super::store::tag_word(Some("acme"), "a")
        ))
        .fetch_one(backend.pool())
        .await
        .expect("gather");
        let mut windows_that_answered = 0;
        for sort in [
            Sort::CreatedDesc,
            Sort::CreatedAsc,
            Sort::FinishedDesc,
            Sort::FinishedAsc,
        ] {
            let mut query = ListQuery {
                tenant: Some("acme".into()),
                tags: vec!["a".into()],
                sort,
                limit: 2,
                ..Default::default()
            };
            let all = store
                .list(&ListQuery {
                    limit: 100,
                    ..query.clone()
                })
                .await
                .expect("list")
                .items;
            assert_eq!(all.len(), 14);
            for start in [0_usize, 5] {
                query.cursor = start
                    .checked_sub(1)
                    .and_then(|i| Cursor::after(&all[i], sort));
                let expected = &all[start..start + 3];
                for set in [None, Some(gathered.as_str())] {
                    for window in [4, 12, 40] {
                        let statement = list_query(&query, "", Matches::Window(window, set))
                            .expect("statement");
                        let page = reader.read(statement, super::records).await.expect("read");
                        if page.len() == 3 {
                            windows_that_answered += 1;
                            assert_eq!(
                                page, expected,
                                "{sort:?}, from {start}, window {window}, {set:?}"
                            );
                        }
                    }
                }
            }
        }
        assert!(
            windows_that_answered >= 16,
            "{windows_that_answered} windows answered"
        );
    }

    /// A page read that cannot answer hands its statement back for the pool, and so does one
    /// dropped before it ran (no thread left to run it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn declined_reads_hand_the_statement_back() {
        let (_dir, backend) = file_backend().await;
        let store = backend.store();
        let reader = store.reader.as_ref().expect("a point reader");
        let statement = |sql: &str| super::Statement {
            sql: sql.to_owned(),
            args: Vec::new(),
        };
        let sql = "SELECT 'n' || count(*) AS j FROM converto_conversions";
        assert_eq!(
            reader.read(statement(sql), super::optional_text).await.ok(),
            Some(Some("n0".to_owned()))
        );

        let bad = "SELECT no_such_column AS j FROM converto_conversions";
        let back = reader
            .read(statement(bad), super::optional_text)
            .await
            .expect_err("an unknown column declines");
        assert_eq!(back.sql, bad);

        let (answer, answered) = tokio::sync::oneshot::channel();
        drop(super::PageRead {
            statement: statement(sql),
            read: super::optional_text,
            answer: Some(answer),
        });
        let back = answered.await.expect("an answer").expect_err("no read ran");
        assert_eq!(back.sql, sql);
    }
}
