//! The `ConversionStore` conformance suite.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::conversion::{Artifact, Conversion, ErrorInfo, NewConversion, Status, Transition};
use crate::store::{ConversionStore, ListQuery, StoreError, TenantUsage};
use crate::{ConversionId, Format};

fn f(s: &str) -> Format {
    Format::new(s).unwrap_or_else(|e| panic!("{e}"))
}

/// A new record for `tenant`, with a few fields set to non-default values.
pub fn sample(tenant: &str) -> NewConversion {
    let id = ConversionId::new();
    NewConversion {
        id,
        tenant: tenant.into(),
        source_format: f("stl"),
        target_format: f("obj"),
        options: serde_json::json!({"binary": true, "scale": 2.5, "nested": {"a": [1, 2]}}),
        labels: BTreeMap::from([("project".to_string(), "apollo".to_string())]),
        priority: 3,
        input_key: format!("conversions/{id}/input"),
        input_name: Some("Part ünïcode.stl".into()),
        description: Some("A sample part, #Printed in ünïcode".into()),
        tags: vec!["printed".into(), "sample".into()],
        input_size: 1234,
        idempotency_key: None,
    }
}

fn tenant() -> String {
    format!("t-{}", ConversionId::new())
}

/// Runs every check, each on a fresh store from `make`.
pub async fn run_store_suite(make: impl AsyncFn() -> Arc<dyn ConversionStore>) {
    create_get_round_trip(make().await.as_ref()).await;
    idempotent_create(make().await.as_ref()).await;
    guarded_transitions(make().await.as_ref()).await;
    artifacts_and_errors_round_trip(make().await.as_ref()).await;
    concurrent_transitions_have_one_winner(make().await).await;
    list_filters_and_pages(make().await.as_ref()).await;
    delete_and_count(make().await.as_ref()).await;
    tenant_usage_follows_records(make().await.as_ref()).await;
    search_filters(make().await.as_ref()).await;
    search_sorts_and_pages(make().await.as_ref()).await;
}

/// A created record reads back field for field; unknown ids are `NotFound`.
pub async fn create_get_round_trip(store: &dyn ConversionStore) {
    let new = sample(&tenant());
    let created = store.create(new.clone()).await.expect("create");
    assert!(created.created);
    let c = created.conversion;
    assert_eq!(c.status, Status::Queued);
    assert_eq!(c.attempts, 0);
    let got = store.get(new.id).await.expect("get");
    assert_eq!(got, c, "stored record differs from the created one");
    assert_eq!(got.options, new.options);
    assert_eq!(got.labels, new.labels);
    assert_eq!(got.input_name, new.input_name);
    assert_eq!(got.description, new.description);
    assert_eq!(got.tags, new.tags);
    assert!(matches!(
        store.get(ConversionId::new()).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.create(new).await,
        Err(StoreError::AlreadyExists { .. })
    ));
}

/// The same idempotency key in the same tenant gives the first record back; another tenant's
/// key is separate.
pub async fn idempotent_create(store: &dyn ConversionStore) {
    let t = tenant();
    let mut a = sample(&t);
    a.idempotency_key = Some("order-42".into());
    let first = store.create(a.clone()).await.expect("create");
    let mut b = sample(&t);
    b.idempotency_key = Some("order-42".into());
    let second = store.create(b.clone()).await.expect("replay");
    assert!(!second.created);
    assert_eq!(second.conversion.id, first.conversion.id);
    assert!(
        matches!(store.get(b.id).await, Err(StoreError::NotFound { .. })),
        "replay must store nothing"
    );
    let mut other = sample(&tenant());
    other.idempotency_key = Some("order-42".into());
    assert!(store.create(other).await.expect("other tenant").created);
}

/// Transitions follow the status machine and the attempt fence.
pub async fn guarded_transitions(store: &dyn ConversionStore) {
    let c = store
        .create(sample(&tenant()))
        .await
        .expect("create")
        .conversion;
    let id = c.id;
    let conflict = |r: Result<_, StoreError>| matches!(r, Err(StoreError::Conflict(_)));
    assert!(
        conflict(
            store
                .transition(
                    id,
                    &Transition::Succeed {
                        attempt: 1,
                        artifacts: vec![]
                    }
                )
                .await
        ),
        "succeed before start"
    );
    let r = store
        .transition(id, &Transition::Start { attempt: 1 })
        .await
        .expect("start");
    assert_eq!((r.status, r.attempts), (Status::Running, 1));
    assert!(r.started_at.is_some());
    assert!(r.version > c.version, "version must grow");
    assert!(
        conflict(
            store
                .transition(id, &Transition::Start { attempt: 1 })
                .await
        ),
        "same attempt twice"
    );
    let r = store
        .transition(
            id,
            &Transition::Requeue {
                attempt: 1,
                error: Some(ErrorInfo::new("flaky", "x")),
            },
        )
        .await
        .expect("requeue");
    assert_eq!(r.status, Status::Queued);
    assert_eq!(r.error.as_ref().map(|e| e.code.as_str()), Some("flaky"));
    store
        .transition(id, &Transition::Start { attempt: 2 })
        .await
        .expect("start 2");
    store
        .transition(id, &Transition::Start { attempt: 3 })
        .await
        .expect("lease expired: start 3");
    assert!(
        conflict(
            store
                .transition(
                    id,
                    &Transition::Fail {
                        attempt: 2,
                        error: ErrorInfo::new("x", "y")
                    }
                )
                .await
        ),
        "stale attempt 2 failed the job"
    );
    assert!(
        conflict(
            store
                .transition(
                    id,
                    &Transition::Succeed {
                        attempt: 2,
                        artifacts: vec![]
                    }
                )
                .await
        ),
        "stale attempt 2 finished the job"
    );
    let done = store
        .transition(
            id,
            &Transition::Succeed {
                attempt: 3,
                artifacts: vec![],
            },
        )
        .await
        .expect("succeed 3");
    assert_eq!(done.status, Status::Succeeded);
    assert!(done.finished_at.is_some());
    assert!(done.error.is_none());
    assert!(
        conflict(store.transition(id, &Transition::Cancel).await),
        "cancel after success"
    );
    assert!(
        conflict(
            store
                .transition(id, &Transition::Start { attempt: 4 })
                .await
        ),
        "start after success"
    );
    assert!(matches!(
        store
            .transition(ConversionId::new(), &Transition::Cancel)
            .await,
        Err(StoreError::NotFound { .. })
    ));

    let q = store
        .create(sample(&tenant()))
        .await
        .expect("create")
        .conversion;
    let cancelled = store
        .transition(q.id, &Transition::Cancel)
        .await
        .expect("cancel queued");
    assert_eq!(cancelled.status, Status::Cancelled);
    assert!(
        conflict(
            store
                .transition(q.id, &Transition::Start { attempt: 1 })
                .await
        ),
        "start after cancel"
    );
}

/// Artifacts and errors are stored whole.
pub async fn artifacts_and_errors_round_trip(store: &dyn ConversionStore) {
    let c = store
        .create(sample(&tenant()))
        .await
        .expect("create")
        .conversion;
    store
        .transition(c.id, &Transition::Start { attempt: 1 })
        .await
        .expect("start");
    let artifacts = vec![
        Artifact {
            name: "240p.jpeg".into(),
            format: f("jpeg"),
            size: 10,
            checksum: "sha256:00".into(),
            blob_key: "k/1".into(),
        },
        Artifact {
            name: "720p.jpeg".into(),
            format: f("jpeg"),
            size: 20,
            checksum: "sha256:11".into(),
            blob_key: "k/2".into(),
        },
    ];
    store
        .transition(
            c.id,
            &Transition::Succeed {
                attempt: 1,
                artifacts: artifacts.clone(),
            },
        )
        .await
        .expect("succeed");
    assert_eq!(store.get(c.id).await.expect("get").artifacts, artifacts);

    let d = store
        .create(sample(&tenant()))
        .await
        .expect("create")
        .conversion;
    store
        .transition(d.id, &Transition::Start { attempt: 1 })
        .await
        .expect("start");
    let err = ErrorInfo::new(
        "invalid_input",
        "facet count 10 exceeds the 84 bytes of data",
    );
    store
        .transition(
            d.id,
            &Transition::Fail {
                attempt: 1,
                error: err.clone(),
            },
        )
        .await
        .expect("fail");
    let got = store.get(d.id).await.expect("get");
    assert_eq!((got.status, got.error), (Status::Failed, Some(err)));
}

/// Many writers race to start the same attempt: exactly one wins.
pub async fn concurrent_transitions_have_one_winner(store: Arc<dyn ConversionStore>) {
    let c = store
        .create(sample(&tenant()))
        .await
        .expect("create")
        .conversion;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .transition(c.id, &Transition::Start { attempt: 1 })
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(_) => wins += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(wins, 1, "exactly one concurrent start may win");
    assert_eq!(store.get(c.id).await.expect("get").version, c.version + 1);
}

/// Filters narrow the list; pages are newest first, disjoint, and cover everything.
pub async fn list_filters_and_pages(store: &dyn ConversionStore) {
    let t = tenant();
    let mut ids = Vec::new();
    for i in 0..25 {
        let mut n = sample(&t);
        if i % 5 == 0 {
            n.target_format = f("ply");
            n.labels.insert("batch".into(), "five".into());
            n.input_name = Some(format!("Bracket-{i}.STL"));
        }
        ids.push(n.id);
        store.create(n).await.expect("create");
    }
    let started = ids[3];
    store
        .transition(started, &Transition::Start { attempt: 1 })
        .await
        .expect("start");

    let mut seen = Vec::new();
    let mut q = ListQuery {
        tenant: Some(t.clone()),
        limit: 10,
        ..ListQuery::default()
    };
    let mut pages = 0;
    loop {
        let page = store.list(&q).await.expect("list");
        pages += 1;
        assert!(page.items.len() <= 10);
        seen.extend(page.items.iter().map(|c| c.id));
        match page.next_cursor {
            Some(cur) => q.cursor = Some(cur),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    let mut want = ids.clone();
    want.reverse();
    assert_eq!(seen, want, "pages must list newest first, each record once");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 25);

    let by = |q: ListQuery| async move { store.list(&q).await.expect("list").items };
    let base = ListQuery {
        tenant: Some(t.clone()),
        limit: 100,
        ..ListQuery::default()
    };
    assert_eq!(
        by(ListQuery {
            target_format: Some(f("ply")),
            ..base.clone()
        })
        .await
        .len(),
        5
    );
    assert_eq!(
        by(ListQuery {
            labels: vec![("batch".into(), "five".into())],
            ..base.clone()
        })
        .await
        .len(),
        5
    );
    assert_eq!(
        by(ListQuery {
            labels: vec![("batch".into(), "six".into())],
            ..base.clone()
        })
        .await
        .len(),
        0
    );
    assert_eq!(
        by(ListQuery {
            text: Some("bracket".into()),
            ..base.clone()
        })
        .await
        .len(),
        5
    );
    let running = by(ListQuery {
        statuses: vec![Status::Running],
        ..base.clone()
    })
    .await;
    assert_eq!(
        running.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![started]
    );
    assert_eq!(
        by(ListQuery {
            statuses: vec![Status::Queued, Status::Running],
            ..base.clone()
        })
        .await
        .len(),
        25
    );
    assert_eq!(
        by(ListQuery {
            source_format: Some(f("obj")),
            ..base.clone()
        })
        .await
        .len(),
        0
    );
    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    assert_eq!(
        by(ListQuery {
            created_after: Some(future),
            ..base.clone()
        })
        .await
        .len(),
        0
    );
    assert_eq!(
        by(ListQuery {
            created_before: Some(future),
            ..base.clone()
        })
        .await
        .len(),
        25
    );
    assert_eq!(
        by(ListQuery {
            updated_before: Some(future),
            ..base.clone()
        })
        .await
        .len(),
        25
    );
    assert_eq!(
        by(ListQuery {
            tenant: Some(tenant()),
            ..base
        })
        .await
        .len(),
        0
    );
}

/// Delete removes the record; counts follow statuses.
pub async fn delete_and_count(store: &dyn ConversionStore) {
    let before = store.count_by_status().await.expect("count");
    let a = store
        .create(sample(&tenant()))
        .await
        .expect("create")
        .conversion;
    let b = store
        .create(sample(&tenant()))
        .await
        .expect("create")
        .conversion;
    store
        .transition(b.id, &Transition::Cancel)
        .await
        .expect("cancel");
    let after = store.count_by_status().await.expect("count");
    let n = |m: &BTreeMap<Status, u64>, s| m.get(&s).copied().unwrap_or(0);
    assert_eq!(n(&after, Status::Queued), n(&before, Status::Queued) + 1);
    assert_eq!(
        n(&after, Status::Cancelled),
        n(&before, Status::Cancelled) + 1
    );
    let gone = store.delete(a.id).await.expect("delete");
    assert_eq!(gone.id, a.id);
    assert!(matches!(
        store.get(a.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete(a.id).await,
        Err(StoreError::NotFound { .. })
    ));
    let deleted = store.count_by_status().await.expect("count");
    assert_eq!(
        n(&deleted, Status::Queued),
        n(&before, Status::Queued),
        "a deleted record is no longer counted"
    );
    let mut again = sample(&tenant());
    again.idempotency_key = Some("reuse".into());
    let t = again.tenant.clone();
    let first = store
        .create(again.clone())
        .await
        .expect("create")
        .conversion;
    store.delete(first.id).await.expect("delete");
    let mut reuse = sample(&t);
    reuse.idempotency_key = Some("reuse".into());
    assert!(
        store.create(reuse).await.expect("create").created,
        "a deleted record's key is free again"
    );
}

/// A tenant's usage counts its queued and running records and the bytes its records hold
/// (inputs of every record, plus artifacts), follows transitions and deletes, and never
/// includes another tenant's records.
pub async fn tenant_usage_follows_records(store: &dyn ConversionStore) {
    let acme = tenant();
    let globex = tenant();
    let usage = async |t: &str| store.tenant_usage(t).await.expect("usage");
    assert_eq!(
        usage(&acme).await,
        TenantUsage::default(),
        "a tenant with no record"
    );
    let mut ids = Vec::new();
    for size in [100, 200, 300] {
        let mut new = sample(&acme);
        new.input_size = size;
        ids.push(store.create(new).await.expect("create").conversion.id);
    }
    // Another tenant's records never count.
    let mut other = sample(&globex);
    other.input_size = 5000;
    let other = store.create(other).await.expect("create").conversion;
    assert_eq!(
        usage(&acme).await,
        TenantUsage {
            queued: 3,
            running: 0,
            stored_bytes: 600
        }
    );
    store
        .transition(ids[0], &Transition::Start { attempt: 1 })
        .await
        .expect("start");
    store
        .transition(ids[1], &Transition::Start { attempt: 1 })
        .await
        .expect("start");
    assert_eq!(
        usage(&acme).await,
        TenantUsage {
            queued: 1,
            running: 2,
            stored_bytes: 600
        }
    );
    let artifact = |name: &str, size| Artifact {
        name: name.into(),
        format: f("obj"),
        size,
        checksum: "sha256:00".into(),
        blob_key: format!("k/{name}"),
    };
    store
        .transition(
            ids[0],
            &Transition::Succeed {
                attempt: 1,
                artifacts: vec![artifact("a.obj", 40), artifact("b.obj", 2)],
            },
        )
        .await
        .expect("succeed");
    store
        .transition(
            ids[1],
            &Transition::Requeue {
                attempt: 1,
                error: None,
            },
        )
        .await
        .expect("requeue");
    assert_eq!(
        usage(&acme).await,
        TenantUsage {
            queued: 2,
            running: 0,
            stored_bytes: 642
        },
        "a finished record keeps its input and adds its artifacts"
    );
    store
        .transition(ids[2], &Transition::Cancel)
        .await
        .expect("cancel");
    store.delete(ids[0]).await.expect("delete");
    assert_eq!(
        usage(&acme).await,
        TenantUsage {
            queued: 1,
            running: 0,
            stored_bytes: 500
        },
        "a deleted record frees its bytes; a cancelled one still holds its input"
    );
    assert_eq!(
        usage(&globex).await,
        TenantUsage {
            queued: 1,
            running: 0,
            stored_bytes: 5000
        }
    );
    store.delete(other.id).await.expect("delete");
    assert_eq!(usage(&globex).await, TenantUsage::default());
}

/// A record for the search cases.
fn findable(
    tenant: &str,
    name: Option<&str>,
    description: Option<&str>,
    tags: &[&str],
    labels: &[(&str, &str)],
) -> NewConversion {
    let (description, tags) =
        crate::search::metadata(description.map(Into::into), tags).expect("valid metadata");
    NewConversion {
        input_name: name.map(Into::into),
        description,
        tags,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..sample(tenant)
    }
}

/// Tags are OR-ed, every other filter AND-ed; full text finds stems and word prefixes in the
/// file name and description; hostile text is only text; tenants never see each other's.
pub async fn search_filters(store: &dyn ConversionStore) {
    let t = tenant();
    let other = tenant();
    let mut ids = Vec::new();
    for new in [
        findable(
            &t,
            Some("gear.stl"),
            Some("Rendering of a gear housing"),
            &["Red", "photo"],
            &[("project", "apollo"), ("team", "a")],
        ),
        findable(
            &t,
            Some("Bracket-2.STL"),
            Some("Converted bracket for the #lunar rover"),
            &["blue"],
            &[("project", "apollo"), ("team", "b")],
        ),
        findable(
            &t,
            Some("plate.obj"),
            Some("renders fine"),
            &["red"],
            &[("project", "gemini"), ("team", "a")],
        ),
        findable(&t, None, None, &[], &[]),
    ] {
        ids.push(store.create(new).await.expect("create").conversion);
    }
    store
        .create(findable(
            &other,
            Some("gear.stl"),
            Some("Rendering of a gear"),
            &["red"],
            &[("project", "apollo")],
        ))
        .await
        .expect("create");
    let r0 = ids[0].clone();
    let [a, b, c, d] = [ids[0].id, ids[1].id, ids[2].id, ids[3].id];
    store
        .transition(c, &Transition::Start { attempt: 1 })
        .await
        .expect("start");
    let done = store
        .transition(
            c,
            &Transition::Succeed {
                attempt: 1,
                artifacts: vec![],
            },
        )
        .await
        .expect("succeed");
    let finished = done.finished_at.expect("finished");

    let base = ListQuery {
        tenant: Some(t.clone()),
        limit: 100,
        ..ListQuery::default()
    };
    let found = async |q: ListQuery| -> Vec<ConversionId> {
        let mut ids: Vec<_> = store
            .list(&q)
            .await
            .unwrap_or_else(|e| panic!("{q:?}: {e}"))
            .items
            .into_iter()
            .map(|c| c.id)
            .collect();
        ids.sort();
        ids
    };
    let set = |mut v: Vec<ConversionId>| {
        v.sort();
        v
    };
    let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let text = |s: &str| Some(s.to_string());
    let label = |k: &str, v: &str| (k.to_string(), v.to_string());

    let cases: Vec<(&str, ListQuery, Vec<ConversionId>)> = vec![
        (
            "one tag",
            ListQuery {
                tags: tags(&["red"]),
                ..base.clone()
            },
            vec![a, c],
        ),
        (
            "tags OR",
            ListQuery {
                tags: tags(&["red", "blue"]),
                ..base.clone()
            },
            vec![a, b, c],
        ),
        (
            "hashtag",
            ListQuery {
                tags: tags(&["lunar"]),
                ..base.clone()
            },
            vec![b],
        ),
        (
            "unknown tag",
            ListQuery {
                tags: tags(&["green"]),
                ..base.clone()
            },
            vec![],
        ),
        (
            "tag AND status",
            ListQuery {
                tags: tags(&["red"]),
                statuses: vec![Status::Succeeded],
                ..base.clone()
            },
            vec![c],
        ),
        (
            "tags AND label",
            ListQuery {
                tags: tags(&["red", "blue"]),
                labels: vec![label("project", "apollo")],
                ..base.clone()
            },
            vec![a, b],
        ),
        (
            "labels all match",
            ListQuery {
                labels: vec![label("project", "apollo"), label("team", "a")],
                ..base.clone()
            },
            vec![a],
        ),
        (
            "label AND tag, none",
            ListQuery {
                tags: tags(&["blue"]),
                labels: vec![label("team", "a")],
                ..base.clone()
            },
            vec![],
        ),
        (
            "stem",
            ListQuery {
                text: text("rendered"),
                ..base.clone()
            },
            vec![a, c],
        ),
        (
            "stem of verb",
            ListQuery {
                text: text("converting"),
                ..base.clone()
            },
            vec![b],
        ),
        (
            "prefix",
            ListQuery {
                text: text("rend"),
                ..base.clone()
            },
            vec![a, c],
        ),
        (
            "file name prefix",
            ListQuery {
                text: text("BRACK"),
                ..base.clone()
            },
            vec![b],
        ),
        (
            "file name word",
            ListQuery {
                text: text("stl"),
                ..base.clone()
            },
            vec![a, b],
        ),
        (
            "words AND",
            ListQuery {
                text: text("gear rendering"),
                ..base.clone()
            },
            vec![a],
        ),
        (
            "not a word start",
            ListQuery {
                text: text("ear"),
                ..base.clone()
            },
            vec![],
        ),
        (
            "text AND tag AND status",
            ListQuery {
                text: text("render"),
                tags: tags(&["red"]),
                statuses: vec![Status::Queued],
                ..base.clone()
            },
            vec![a],
        ),
        (
            "hostile text",
            ListQuery {
                text: text("\"' OR 1=1 -- *:& | ! ( ) \\ NEAR( {x} ^ AND NOT"),
                ..base.clone()
            },
            vec![],
        ),
        (
            "no words",
            ListQuery {
                text: text(" !!! \"*"),
                ..base.clone()
            },
            vec![a, b, c, d],
        ),
        (
            "finished from",
            ListQuery {
                finished_after: Some(finished),
                ..base.clone()
            },
            vec![c],
        ),
        (
            "finished before",
            ListQuery {
                finished_before: Some(finished),
                ..base.clone()
            },
            vec![],
        ),
        (
            "finished range AND tag",
            ListQuery {
                finished_before: Some(finished + chrono::Duration::seconds(1)),
                tags: tags(&["red"]),
                ..base.clone()
            },
            vec![c],
        ),
        (
            "created range AND tag",
            ListQuery {
                created_after: Some(r0.created_at),
                created_before: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
                tags: tags(&["red"]),
                ..base.clone()
            },
            vec![a, c],
        ),
        (
            "created range AND text",
            ListQuery {
                created_after: Some(r0.created_at),
                created_before: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
                text: text("rend"),
                ..base.clone()
            },
            vec![a, c],
        ),
        (
            "created range AND label",
            ListQuery {
                created_after: Some(r0.created_at),
                created_before: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
                labels: vec![label("project", "apollo")],
                ..base.clone()
            },
            vec![a, b],
        ),
        (
            "finished range AND text",
            ListQuery {
                finished_after: Some(finished),
                text: text("render"),
                ..base.clone()
            },
            vec![c],
        ),
        (
            "empty range AND tag",
            ListQuery {
                created_before: Some(r0.created_at),
                tags: tags(&["red"]),
                ..base.clone()
            },
            vec![],
        ),
        (
            "created before the first",
            ListQuery {
                created_before: Some(r0.created_at),
                ..base.clone()
            },
            vec![],
        ),
    ];
    for (what, q, want) in cases {
        assert_eq!(found(q.clone()).await, set(want), "{what}: {q:?}");
    }
    // Another tenant's records never show, whatever matches.
    let theirs = ListQuery {
        tenant: Some(other.clone()),
        ..base.clone()
    };
    let mine = found(ListQuery {
        tags: tags(&["red"]),
        text: text("gear"),
        ..base.clone()
    })
    .await;
    assert_eq!(mine, vec![a], "tenant isolation");
    let got = found(ListQuery {
        tags: tags(&["red"]),
        text: text("gear"),
        ..theirs
    })
    .await;
    assert_eq!(got.len(), 1, "tenant isolation");
    assert!(!got.contains(&a));
}

/// Every order pages through its records once each, in order, with cursors that survive being
/// printed and parsed; sorting by finish time leaves out unfinished records.
pub async fn search_sorts_and_pages(store: &dyn ConversionStore) {
    use crate::search::{Cursor, Sort};
    let t = tenant();
    let mut ids = Vec::new();
    for i in 0..13 {
        let tags: &[&str] = if i % 2 == 0 { &["even"] } else { &["odd"] };
        let new = findable(&t, Some(&format!("part-{i}.stl")), None, tags, &[]);
        ids.push(store.create(new).await.expect("create").conversion.id);
    }
    // Finish some, in an order unlike their creation order.
    for i in [7, 2, 11, 0, 5, 8] {
        store
            .transition(ids[i], &Transition::Cancel)
            .await
            .expect("cancel");
    }
    let mut records = Vec::new();
    for id in &ids {
        records.push(store.get(*id).await.expect("get"));
    }
    // Time ranges, each bounded on both sides: created from the third record to the eleventh,
    // finished from the second cancelled to the fifth.
    let created = (records[2].created_at, records[10].created_at);
    let finished = |i: usize| records[i].finished_at.expect("cancelled");
    let finished = (finished(2), finished(5));
    let ranges = [None, Some((true, created)), Some((false, finished))];
    for sort in Sort::ALL {
        for ((filter, limit), range) in [(vec![], 3), (vec!["even".to_string()], 2)]
            .into_iter()
            .flat_map(|f| ranges.map(|r| (f.clone(), r)))
        {
            let in_range = |c: &Conversion| match range {
                None => true,
                Some((true, (from, to))) => c.created_at >= from && c.created_at < to,
                Some((false, (from, to))) => c.finished_at.is_some_and(|f| f >= from && f < to),
            };
            let mut want: Vec<_> = records
                .iter()
                .filter(|c| filter.is_empty() || c.tags.iter().any(|t| filter.contains(t)))
                .filter(|c| in_range(c))
                .filter_map(|c| sort.key(c))
                .collect();
            want.sort();
            if sort.descending() {
                want.reverse();
            }
            let want: Vec<ConversionId> = want.into_iter().map(|(_, id)| id).collect();
            let mut q = ListQuery {
                tenant: Some(t.clone()),
                tags: filter.clone(),
                sort,
                limit,
                ..ListQuery::default()
            };
            match range {
                None => {}
                Some((true, (from, to))) => {
                    (q.created_after, q.created_before) = (Some(from), Some(to))
                }
                Some((false, (from, to))) => {
                    (q.finished_after, q.finished_before) = (Some(from), Some(to));
                }
            }
            let mut seen = Vec::new();
            for _ in 0..20 {
                let page = store.list(&q).await.expect("list");
                assert!(page.items.len() <= limit);
                seen.extend(page.items.iter().map(|c| c.id));
                match page.next_cursor {
                    Some(cur) => {
                        let printed: Cursor = cur.to_string().parse().expect("cursor parses");
                        q.cursor = Some(printed);
                    }
                    None => break,
                }
            }
            assert_eq!(seen, want, "sort {sort} with tags {filter:?} in {range:?}");
        }
    }
}
