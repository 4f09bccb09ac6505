//! Keeps the full-text index merged into few segments, a bounded amount at a time.
//!
//! FTS5 writes the words of each transaction as a new segment (a b-tree of its own) and merges
//! segments only once several of about the same size pile up (its `automerge`), so an index
//! written a record at a time holds a dozen segments or more, and every search term reads a
//! list from each of them and merges them. Over 100,000 records in 13 segments (as a bulk load
//! leaves them), the search bench's mix spent 10% more instructions than over one segment, and
//! a prefix word 45% more (`42*`: 120 against 66 µs).
//!
//! FTS5's `optimize` merges everything at once, holding the write lock meanwhile (0.7 s over
//! 100,000 records), so the task here asks for `merge` instead: at most [`MERGE_PAGES`] pages
//! written per statement, each its own short write transaction, a few statements a second at
//! most, and one a second once nothing is left to merge (it writes nothing then, and stops the
//! round). A negative page count merges segments of any size, down to one. The work is bounded per second whatever the write load: under steady
//! writes the index keeps a few young segments beside one large one.

use std::time::Duration;

use sqlx::SqlitePool;
use tokio::task::JoinHandle;

/// Pages (FTS5's, 4,000 bytes by default) written at most by one merge statement.
const MERGE_PAGES: i64 = 32;

/// Merge statements run at most per round.
const STEPS_PER_ROUND: usize = 8;

/// The pause between rounds.
const ROUND_EVERY: Duration = Duration::from_secs(1);

/// The merging task of a database; aborted when dropped.
#[derive(Debug)]
pub(super) struct IndexMerger(JoinHandle<()>);

impl Drop for IndexMerger {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl IndexMerger {
    /// Starts merging the index of the database behind `pool`, a round a second, until the
    /// merger is dropped or the pool closed.
    pub(super) fn start(pool: SqlitePool) -> IndexMerger {
        IndexMerger(tokio::spawn(async move {
            loop {
                tokio::time::sleep(ROUND_EVERY).await;
                if pool.is_closed() {
                    return;
                }
                for _ in 0..STEPS_PER_ROUND {
                    match merge_step(&pool).await {
                        Ok(true) => {}
                        Ok(false) => break,
                        // A busy or closing database: the next round tries again.
                        Err(e) => {
                            tracing::debug!(error = %e, "full-text index merge skipped");
                            break;
                        }
                    }
                }
            }
        }))
    }
}

/// One bounded merge of the full-text index: whether it merged anything (when not, nothing is
/// left to merge until the index is written again).
pub(super) async fn merge_step(pool: &SqlitePool) -> Result<bool, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    // FTS5's documented test: the statement did work if it changed two rows or more.
    let changes = "SELECT total_changes()";
    let before: i64 = sqlx::query_scalar(changes).fetch_one(&mut *conn).await?;
    sqlx::query(
        "INSERT INTO converto_conversions_fts (converto_conversions_fts, rank) VALUES ('merge', ?)",
    )
    .bind(-MERGE_PAGES)
    .execute(&mut *conn)
    .await?;
    let after: i64 = sqlx::query_scalar(changes).fetch_one(&mut *conn).await?;
    Ok(after.saturating_sub(before) >= 2)
}

#[cfg(test)]
mod tests {
    use converto_core::store::{ConversionStore, ListQuery};
    use converto_core::testkit::store::sample;

    use super::super::SqliteBackend;
    use super::*;

    /// How many segments the full-text index holds: each has at least one row in `_idx`.
    async fn segments(pool: &SqlitePool) -> i64 {
        sqlx::query_scalar("SELECT count(DISTINCT segid) FROM converto_conversions_fts_idx")
            .fetch_one(pool)
            .await
            .expect("segments")
    }

    /// A search's record ids, first page to last.
    async fn search(store: &dyn ConversionStore, query: &ListQuery) -> Vec<String> {
        let mut query = query.clone();
        let mut ids = Vec::new();
        loop {
            let page = store.list(&query).await.expect("list");
            ids.extend(page.items.iter().map(|c| c.id.to_string()));
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => return ids,
            }
        }
    }

    /// Records written one transaction each leave several segments; merge steps, each
    /// bounded, leave one, then report that nothing is left, and every search answers as
    /// before. The store's own task merges a new file database's index by itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn merging_leaves_one_segment_and_the_same_answers() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Without the store's task: the steps are counted here.
        let backend = SqliteBackend::connect("sqlite::memory:")
            .await
            .expect("connect");
        let store = backend.store();
        for i in 0..150 {
            let mut new = sample("merge");
            new.description = Some(format!("widget {i} of batch {}", i % 7));
            new.tags = vec![format!("t{}", i % 5)];
            store.create(new).await.expect("create");
        }
        let pool = backend.pool();
        assert!(segments(pool).await > 1, "one segment per few writes");
        let queries = [
            ListQuery {
                text: Some("widget 1".into()),
                limit: 7,
                ..Default::default()
            },
            ListQuery {
                text: Some("batch 3".into()),
                tags: vec!["t2".into()],
                limit: 3,
                ..Default::default()
            },
            ListQuery {
                tenant: Some("merge".into()),
                tags: vec!["t4".into()],
                ..Default::default()
            },
        ];
        let mut before = Vec::new();
        for query in &queries {
            before.push(search(store.as_ref(), query).await);
        }
        assert!(before.iter().all(|ids| !ids.is_empty()));
        let mut steps = 0;
        while merge_step(pool).await.expect("merge") {
            steps += 1;
            assert!(steps < 1000, "merging ends");
        }
        assert!(steps > 0);
        assert_eq!(segments(pool).await, 1);
        assert!(!merge_step(pool).await.expect("merge"), "nothing left");
        for (query, ids) in queries.iter().zip(&before) {
            assert_eq!(&search(store.as_ref(), query).await, ids);
        }

        // A file database's store merges its index by itself, a round a second.
        let file = SqliteBackend::connect(dir.path().join("c.db").to_str().expect("utf-8"))
            .await
            .expect("connect");
        let store = file.store();
        for i in 0..40 {
            let mut new = sample("merge");
            new.description = Some(format!("gadget {i}"));
            store.create(new).await.expect("create");
        }
        let mut rounds = 0;
        while segments(file.pool()).await > 1 {
            rounds += 1;
            assert!(rounds < 600, "the index is merged within a minute");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let query = ListQuery {
            text: Some("gadget".into()),
            limit: 100,
            ..Default::default()
        };
        assert_eq!(search(store.as_ref(), &query).await.len(), 40);
    }
}
