//! Watching a conversion that cannot change (unknown, finished) or going away from a watch
//! leaves nothing on the bus (issue 9: 3,000 `/events` on random ids grew the service by 23 MiB).

use std::sync::Arc;

use converto_core::engine::{Backends, EngineError};
use converto_core::memory::{
    MemoryBlobStore, MemoryConversionStore, MemoryJobQueue, MemoryProgressBus,
};
use converto_core::progress::ProgressBus;
use converto_core::testkit::engine::{Workers, engine_with, fast_config, follow, submit};
use converto_core::testkit::within;
use converto_core::{ConversionId, Status};
use futures::StreamExt;
use serde_json::json;

fn backends(bus: &Arc<MemoryProgressBus>) -> Backends {
    Backends {
        store: Arc::new(MemoryConversionStore::new()),
        queue: Arc::new(MemoryJobQueue::new()),
        bus: Arc::clone(bus) as Arc<dyn ProgressBus>,
        blobs: Arc::new(MemoryBlobStore::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_unknown_ids_leaves_no_topic() {
    let bus = Arc::new(MemoryProgressBus::new());
    let (engine, _) = engine_with(&backends(&bus), fast_config());
    for _ in 0..3000 {
        let err = engine
            .watch(ConversionId::new())
            .await
            .err()
            .expect("an unknown id is not found");
        assert!(matches!(err, EngineError::NotFound { .. }), "{err}");
    }
    assert_eq!(bus.topic_count(), 0, "the bus kept topics for unknown ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_finished_conversions_and_leaving_watches_leave_no_topic() {
    let bus = Arc::new(MemoryProgressBus::new());
    let b = backends(&bus);
    let (engine, _) = engine_with(&b, fast_config());
    let workers = Workers::start(&engine);
    let c = submit(&engine, "upper", json!({})).await;
    let (_, done) = follow(&engine, c.id).await;
    assert_eq!(done.status, Status::Succeeded);
    // What the bus keeps for a finished conversion (its latest progress) goes with `forget`,
    // which deleting does; until then the count may be one.
    let kept = bus.topic_count();
    for _ in 0..100 {
        let events: Vec<_> = within(
            10,
            "the finished stream",
            engine.watch(c.id).await.expect("watch").collect(),
        )
        .await;
        assert_eq!(events.len(), 1, "one status event: {events:?}");
    }
    assert_eq!(
        bus.topic_count(),
        kept,
        "watching a finished conversion added topics"
    );
    engine.delete(c.id).await.expect("delete");
    assert_eq!(bus.topic_count(), 0);

    // A watcher of a live conversion that goes away takes its channel with it.
    let queued = submit(&engine, "upper", json!({"sleep_ms": 60_000})).await;
    let watch = engine.watch(queued.id).await.expect("watch");
    drop(watch);
    engine.cancel(queued.id).await.expect("cancel");
    engine.delete(queued.id).await.expect("delete");
    assert_eq!(
        bus.topic_count(),
        0,
        "a dropped watch left its topic behind"
    );
    workers.stop().await;
}

#[tokio::test]
async fn a_dropped_subscription_releases_its_topic() {
    let bus = MemoryProgressBus::new();
    let id = ConversionId::new();
    let a = bus.subscribe(id).await.expect("subscribe");
    let b = bus.subscribe(id).await.expect("subscribe");
    assert_eq!(bus.topic_count(), 1);
    drop(a);
    assert_eq!(bus.topic_count(), 1, "b still listens");
    drop(b);
    assert_eq!(bus.topic_count(), 0);
}
