//! The SQLite store and queue against the conformance suites (the engine suite with local-disk
//! blobs), plus durability across reopening and two backends sharing one file.
#![cfg(all(feature = "sqlite", feature = "local"))]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use converto_adapters::local::LocalBlobStore;
use converto_adapters::sqlite::SqliteBackend;
use converto_core::conversion::{Status, Transition};
use converto_core::engine::Backends;
use converto_core::memory::MemoryProgressBus;
use converto_core::queue::{JobQueue, JobSpec, QueueError};
use converto_core::store::{ConversionStore, ListQuery};
use converto_core::testkit::{self, within};
use converto_core::{ConversionId, blob::BlobStore, progress::ProgressBus};

/// Temporary directories that must outlive the checks using them.
#[derive(Default)]
struct Dirs(Mutex<Vec<tempfile::TempDir>>);

impl Dirs {
    fn fresh(&self) -> PathBuf {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        self.0.lock().expect("lock").push(dir);
        path
    }
}

fn db_url(dir: &Path) -> String {
    dir.join("converto.db")
        .to_str()
        .expect("utf-8 temp path")
        .to_owned()
}

async fn connect(dir: &Path) -> SqliteBackend {
    SqliteBackend::connect(&db_url(dir)).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_conformance() {
    let dirs = Dirs::default();
    testkit::store::run_store_suite(async || {
        connect(&dirs.fresh()).await.store() as Arc<dyn ConversionStore>
    })
    .await;
}

/// The same suite through the pool alone (a database in memory has no direct reader), so both
/// ways a list or search page is read pass it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_conformance_through_the_pool() {
    testkit::store::run_store_suite(async || {
        let backend = SqliteBackend::connect("sqlite::memory:")
            .await
            .expect("connect");
        assert!(
            format!("{:?}", backend.store()).contains("reader: None"),
            "no direct reader"
        );
        backend.store() as Arc<dyn ConversionStore>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_conformance() {
    let dirs = Dirs::default();
    testkit::queue::run_queue_suite(async || {
        connect(&dirs.fresh()).await.queue() as Arc<dyn JobQueue>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_conformance() {
    let dirs = Dirs::default();
    testkit::engine::run_engine_suite(async || {
        let dir = dirs.fresh();
        let backend = connect(&dir).await;
        let blobs = LocalBlobStore::open(dir.join("blobs"))
            .await
            .expect("blobs");
        Backends {
            store: backend.store(),
            queue: backend.queue(),
            bus: Arc::new(MemoryProgressBus::new()) as Arc<dyn ProgressBus>,
            blobs: Arc::new(blobs) as Arc<dyn BlobStore>,
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_reopening() {
    let dirs = Dirs::default();
    let dir = dirs.fresh();
    let lease_for = Duration::from_secs(60);

    let (record, leased, waiting, lease) = {
        let backend = connect(&dir).await;
        let store = backend.store();
        let mut new = testkit::store::sample("durable");
        new.idempotency_key = Some("once".into());
        let created = store.create(new).await.expect("create").conversion;
        let record = store
            .transition(created.id, &Transition::Start { attempt: 1 })
            .await
            .expect("start");
        let queue = backend.queue();
        let leased = ConversionId::new();
        let waiting = ConversionId::new();
        queue
            .enqueue(JobSpec::now(leased, 9))
            .await
            .expect("enqueue");
        queue
            .enqueue(JobSpec::now(waiting, 0))
            .await
            .expect("enqueue");
        let lease = queue
            .reserve(1, lease_for, Duration::ZERO)
            .await
            .expect("reserve")
            .remove(0);
        assert_eq!(lease.id, leased);
        backend.close().await;
        assert!(store.get(record.id).await.is_err(), "a closed pool answers");
        (record, leased, waiting, lease)
    };

    let backend = connect(&dir).await;
    let store = backend.store();
    assert_eq!(store.get(record.id).await.expect("get"), record);
    let mut again = testkit::store::sample("durable");
    again.idempotency_key = Some("once".into());
    let replay = store.create(again).await.expect("replay");
    assert!(!replay.created, "the idempotency key was forgotten");
    assert_eq!(replay.conversion.id, record.id);
    let page = store
        .list(&ListQuery {
            tenant: Some("durable".into()),
            statuses: vec![Status::Running],
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(page.items, vec![record.clone()]);

    let queue = backend.queue();
    assert!(queue.contains(leased).await.expect("contains"));
    assert!(queue.contains(waiting).await.expect("contains"));
    let stats = queue.stats().await.expect("stats");
    assert_eq!((stats.ready, stats.leased), (1, 1));
    let next = queue
        .reserve(5, lease_for, Duration::ZERO)
        .await
        .expect("reserve");
    assert_eq!(
        next.iter().map(|l| (l.id, l.attempt)).collect::<Vec<_>>(),
        vec![(waiting, 1)]
    );
    queue
        .heartbeat(&lease, lease_for)
        .await
        .expect("a lease taken before the restart is still held");
    queue.ack(&lease).await.expect("ack");
    queue.ack(&next[0]).await.expect("ack");
    assert_eq!(queue.stats().await.expect("stats"), Default::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backends_on_one_file_never_share_a_job() {
    const JOBS: usize = 200;
    let dirs = Dirs::default();
    let dir = dirs.fresh();
    let a = connect(&dir).await;
    let b = connect(&dir).await;
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let id = ConversionId::new();
        ids.push(id);
        let q = if i % 2 == 0 { a.queue() } else { b.queue() };
        q.enqueue(JobSpec::now(id, (i % 3) as i32))
            .await
            .expect("enqueue");
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let queue: Arc<dyn JobQueue> = if w % 2 == 0 { a.queue() } else { b.queue() };
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let leases = queue
                    .reserve(
                        1 + w % 3,
                        Duration::from_secs(30),
                        Duration::from_millis(300),
                    )
                    .await
                    .expect("reserve");
                if leases.is_empty() {
                    return got;
                }
                for l in leases {
                    queue.ack(&l).await.expect("ack");
                    got.push(l.id);
                }
            }
        }));
    }
    let mut count: HashMap<ConversionId, usize> = HashMap::new();
    for t in tasks {
        for id in within(60, "reservers on two backends", t)
            .await
            .expect("join")
        {
            *count.entry(id).or_default() += 1;
        }
    }
    assert_eq!(count.len(), JOBS, "some jobs were never delivered");
    assert!(
        count.values().all(|&n| n == 1),
        "a job was delivered by both backends"
    );

    // A reserver waiting on one backend notices a job enqueued through the other.
    let waiter = {
        let queue = b.queue();
        tokio::spawn(async move {
            let started = Instant::now();
            let got = queue
                .reserve(1, Duration::from_secs(30), Duration::from_secs(10))
                .await;
            (got, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let id = ConversionId::new();
    a.queue()
        .enqueue(JobSpec::now(id, 0))
        .await
        .expect("enqueue");
    let (got, waited) = within(20, "cross-backend wake-up", waiter)
        .await
        .expect("join");
    let got = got.expect("reserve");
    assert_eq!(got.first().map(|l| l.id), Some(id));
    assert!(
        waited < Duration::from_millis(800),
        "backends on one file in one process must wake each other at once (waited {waited:?})"
    );
    // And the lease it holds fences the first backend.
    let stale = converto_core::queue::Lease {
        token: got[0].token ^ 1,
        ..got[0].clone()
    };
    assert!(matches!(
        a.queue().ack(&stale).await,
        Err(QueueError::LeaseLost { .. })
    ));
    a.queue()
        .ack(&got[0])
        .await
        .expect("ack through the other backend");

    // Another process (here: a separate connection writing the row itself) cannot signal this
    // one; the bounded re-check notices its job.
    let waiter = {
        let queue = a.queue();
        tokio::spawn(async move {
            let started = Instant::now();
            let got = queue
                .reserve(1, Duration::from_secs(30), Duration::from_secs(10))
                .await;
            (got, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let foreign = ConversionId::new();
    let other = sqlx::SqlitePool::connect(&format!("sqlite://{}", db_url(&dir)))
        .await
        .expect("other connection");
    let now = chrono::Utc::now()
        .timestamp_nanos_opt()
        .expect("now in range");
    sqlx::query(
        "INSERT INTO converto_jobs (id, priority, not_before, seq, deliveries, state) \
         VALUES (?, 0, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM converto_jobs), 0, 'queued')",
    )
    .bind(foreign.to_string())
    .bind(now)
    .execute(&other)
    .await
    .expect("insert from another process");
    let (got, waited) = within(20, "wake-up by another process", waiter)
        .await
        .expect("join");
    let got = got.expect("reserve");
    assert_eq!(got.first().map(|l| l.id), Some(foreign));
    assert!(
        waited < Duration::from_secs(3),
        "another process's enqueue went unnoticed for {waited:?}"
    );
    other.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_paths_and_migrations() {
    let dirs = Dirs::default();
    let dir = dirs.fresh();
    // A plain path whose directory does not exist yet.
    let nested = dir.join("a/b/plain.db");
    let plain = SqliteBackend::connect(nested.to_str().expect("utf-8"))
        .await
        .expect("connect by path");
    assert!(nested.exists());
    plain.ping().await.expect("ping");
    plain.migrate().await.expect("migrating twice is a no-op");
    plain.store().ping().await.expect("store ping");
    plain.queue().ping().await.expect("queue ping");

    let url = format!("sqlite://{}", dir.join("url.db").display());
    let by_url = SqliteBackend::connect(&url).await.expect("connect by URL");
    assert!(dir.join("url.db").exists());
    by_url.ping().await.expect("ping");

    let memory = SqliteBackend::connect("sqlite::memory:")
        .await
        .expect("in memory");
    let id = ConversionId::new();
    memory
        .queue()
        .enqueue(JobSpec::now(id, 0))
        .await
        .expect("enqueue");
    assert!(memory.queue().contains(id).await.expect("contains"));

    let journal: String = sqlx_journal_mode(&plain).await;
    assert_eq!(journal, "wal");
}

async fn sqlx_journal_mode(backend: &SqliteBackend) -> String {
    use sqlx::Row;
    sqlx::query("PRAGMA journal_mode")
        .fetch_one(backend.pool())
        .await
        .expect("pragma")
        .try_get(0)
        .expect("column")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_store_conformance() {
    let dirs = Dirs::default();
    testkit::keys::run_key_store_suite(async || {
        connect(&dirs.fresh()).await.keys() as Arc<dyn converto_core::keys::KeyStore>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_store_conformance() {
    let dirs = Dirs::default();
    testkit::tenants::run_tenant_store_suite(async || {
        connect(&dirs.fresh()).await.tenants() as Arc<dyn converto_core::tenants::TenantStore>
    })
    .await;
}

/// A tenant's usage is read from the `converto_conversions_tenant_usage` index alone, never
/// by walking the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_usage_reads_an_index() {
    let dirs = Dirs::default();
    let backend = connect(&dirs.fresh()).await;
    use sqlx::Row;
    let plan: Vec<String> = sqlx::query(
        "EXPLAIN QUERY PLAN \
         SELECT COUNT(CASE WHEN status = 'queued' THEN 1 END), \
                COUNT(CASE WHEN status = 'running' THEN 1 END), \
                COALESCE(SUM(stored_bytes), 0) \
         FROM converto_conversions WHERE tenant = 'acme'",
    )
    .fetch_all(backend.pool())
    .await
    .expect("explain")
    .iter()
    .map(|r| r.try_get::<String, _>("detail").expect("detail"))
    .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("COVERING INDEX converto_conversions_tenant_usage"),
        "tenant usage does not read the covering index: {plan}"
    );
}

/// `get` on a file database reads on the caller's thread, beside the pool, and must still see
/// every committed write at once, by this backend or another one sharing the file (another
/// process, as far as SQLite can tell): after each create and transition, both backends read
/// back exactly the record the write returned, and the pool's own decoder (`list`) agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_every_committed_write_of_either_backend() {
    use converto_core::conversion::{Artifact, ErrorInfo};
    let dirs = Dirs::default();
    let dir = dirs.fresh();
    let a = connect(&dir).await;
    let b = connect(&dir).await;
    let failed = ErrorInfo {
        code: "timeout".into(),
        message: "took too long".into(),
    };
    for round in 0..20u32 {
        let (writer, other) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let created = writer
            .store()
            .create(testkit::store::sample("readers"))
            .await
            .expect("create")
            .conversion;
        let id = created.id;
        let mut written = vec![created];
        for step in [
            Transition::Start { attempt: 1 },
            Transition::Requeue {
                attempt: 1,
                error: Some(failed.clone()),
            },
            Transition::Start { attempt: 2 },
            Transition::Succeed {
                attempt: 2,
                artifacts: vec![Artifact {
                    name: "output.obj".into(),
                    format: converto_core::Format::new("obj").expect("format"),
                    size: 42,
                    checksum: "sha256:00".into(),
                    blob_key: format!("conversions/{id}/output.obj"),
                }],
            },
        ] {
            // Alternate the writer within a conversion too.
            let by = if written.len() % 2 == 0 {
                other
            } else {
                writer
            };
            written.push(by.store().transition(id, &step).await.expect("transition"));
            let last = written.last().expect("written");
            for reader in [&a, &b] {
                assert_eq!(&reader.store().get(id).await.expect("get"), last);
            }
        }
        let listed = a
            .store()
            .list(&ListQuery {
                tenant: Some("readers".into()),
                limit: 1,
                ..ListQuery::default()
            })
            .await
            .expect("list");
        assert_eq!(listed.items.first(), written.last(), "both decoders agree");
        assert!(
            matches!(
                b.store().get(ConversionId::new()).await,
                Err(converto_core::store::StoreError::NotFound { .. })
            ),
            "an unknown id is not found"
        );
    }
}

/// Tag and label filters go through the full-text index's facet words, which the migration's
/// triggers write in SQL and the store spells in Rust: both must agree for any text (accents,
/// other scripts, a tenant's name) and keep tenants apart; a label longer than FTS5 compares
/// still matches exactly; and a deleted record's words leave the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facet_words_match_the_records_they_name() {
    let dirs = Dirs::default();
    let backend = connect(&dirs.fresh()).await;
    let store = backend.store();
    let long = |end: char| format!("{}{end}", "x".repeat(20_000));
    let new = |tenant: &str, labels: &[(&str, &str)], tags: &[&str]| {
        let mut new = testkit::store::sample(tenant);
        new.labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        new.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        new
    };
    let (long_a, long_b) = (long('a'), long('b'));
    let mut ids = Vec::new();
    for n in [
        new(
            "Zürich 東京",
            &[("région", "Île-de-France"), ("long", &long_a)],
            &["printed"],
        ),
        new("Zürich 東京", &[("long", &long_b)], &["sample"]),
        new("other", &[("région", "Île-de-France")], &["printed"]),
    ] {
        ids.push(store.create(n).await.expect("create").conversion.id);
    }
    let found = async |tenant: Option<&str>, labels: &[(&str, &str)], tags: &[&str]| {
        let mut found = store
            .list(&ListQuery {
                tenant: tenant.map(str::to_owned),
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                ..ListQuery::default()
            })
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|c| c.id)
            .collect::<Vec<_>>();
        found.sort();
        found
    };
    let (one, two, three) = (ids[0], ids[1], ids[2]);
    let zurich = Some("Zürich 東京");
    let region = [("région", "Île-de-France")];
    assert_eq!(found(zurich, &region, &[]).await, vec![one]);
    assert_eq!(found(None, &region, &[]).await, vec![one, three]);
    assert_eq!(found(Some("other"), &region, &[]).await, vec![three]);
    assert_eq!(found(zurich, &[("région", "Île-de")], &[]).await, vec![]);
    assert_eq!(found(zurich, &[("long", &long_a)], &[]).await, vec![one]);
    assert_eq!(found(None, &[("long", &long_b)], &[]).await, vec![two]);
    assert_eq!(found(zurich, &[], &["printed"]).await, vec![one]);
    assert_eq!(
        found(zurich, &[], &["printed", "sample"]).await,
        vec![one, two]
    );
    assert_eq!(found(None, &[], &["printed"]).await, vec![one, three]);
    assert_eq!(found(zurich, &region, &["sample"]).await, vec![]);

    store.delete(one).await.expect("delete");
    assert_eq!(found(None, &[], &["printed"]).await, vec![three]);
    // The index itself forgets the record: no word of it matches any row.
    let word = format!(
        "t{}x{}0",
        hex::encode("Zürich 東京"),
        hex::encode("printed")
    );
    let (left,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM converto_conversions_fts WHERE converto_conversions_fts MATCH ?",
    )
    .bind(format!("facets : \"{word}\""))
    .fetch_one(backend.pool())
    .await
    .expect("count");
    assert_eq!(left, 0, "the deleted record's tag is still indexed");
}

/// A search sorted by creation time first looks among the full-text index's highest rowids,
/// which are usually the newest records but need not be (a record created a moment before
/// another may be inserted after it). Whatever the two orders, every page holds exactly the
/// records the order says, nothing skipped or repeated: records in insertion order, in reverse,
/// and with one old row made the newest, paged both ways, with a tag and with text (every
/// record holds the word "part").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_pages_follow_creation_time_not_insertion() {
    use converto_core::search::Sort;

    let dirs = Dirs::default();
    let backend = connect(&dirs.fresh()).await;
    let store = backend.store();
    let tenant = "acme";
    let mut ids = Vec::new();
    for n in 0..150 {
        let mut new = testkit::store::sample(tenant);
        new.tags = vec![if n % 3 == 0 { "rare" } else { "common" }.to_owned()];
        new.description = Some(format!("part {n}"));
        ids.push(store.create(new).await.expect("create").conversion.id);
    }
    // Creation times (seconds) by insertion position, for each arrangement.
    type Arrangement = (&'static str, fn(i64) -> i64);
    let arrangements: [Arrangement; 3] = [
        ("insertion order", |n| n),
        ("reverse", |n| 1_000 - n),
        ("one old row newest", |n| if n == 5 { 10_000 } else { n }),
    ];
    for (name, created) in arrangements {
        for (n, id) in ids.iter().enumerate() {
            let n = i64::try_from(n).expect("small");
            sqlx::query("UPDATE converto_conversions SET created_at = ? WHERE id = ?")
                .bind((1_700_000_000 + created(n)) * 1_000_000_000)
                .bind(id.to_string())
                .execute(backend.pool())
                .await
                .expect("set created_at");
        }
        let mut records = Vec::new();
        for id in &ids {
            records.push(store.get(*id).await.expect("get"));
        }
        for sort in [Sort::CreatedDesc, Sort::CreatedAsc] {
            for (tags, text) in [
                (vec!["common".to_owned()], None),
                (vec!["rare".to_owned()], None),
                (vec![], Some("part".to_owned())),
                (vec!["rare".to_owned()], Some("par".to_owned())),
            ] {
                let mut expected: Vec<_> = records
                    .iter()
                    .filter(|c| tags.iter().all(|t| c.tags.contains(t)))
                    .map(|c| (c.created_at, c.id))
                    .collect();
                expected.sort();
                if sort == Sort::CreatedDesc {
                    expected.reverse();
                }
                let expected: Vec<_> = expected.into_iter().map(|(_, id)| id).collect();
                let mut seen = Vec::new();
                let mut cursor = None;
                loop {
                    let page = store
                        .list(&ListQuery {
                            tenant: Some(tenant.to_owned()),
                            tags: tags.clone(),
                            text: text.clone(),
                            sort,
                            cursor,
                            limit: 7,
                            ..ListQuery::default()
                        })
                        .await
                        .expect("list");
                    seen.extend(page.items.iter().map(|c| c.id));
                    cursor = page.next_cursor;
                    if cursor.is_none() {
                        break;
                    }
                    assert!(seen.len() <= expected.len(), "{name}: pages do not end");
                }
                assert_eq!(
                    seen, expected,
                    "{name}, {sort:?}, tags {tags:?}, text {text:?}"
                );
            }
        }
    }
}
