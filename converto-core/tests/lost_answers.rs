//! A store whose answer is lost after it committed (a dropped connection): the engine retries
//! the call, meets its own verdict as a conflict, and must keep the result it just recorded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use converto_core::ConversionId;
use converto_core::blob::BlobStoreExt;
use converto_core::conversion::{Conversion, NewConversion, Status, Transition};
use converto_core::engine::Backends;
use converto_core::memory::MemoryConversionStore;
use converto_core::store::{ConversionStore, Created, ListQuery, Page, StoreError};
use converto_core::testkit::engine::{Workers, engine_with, fast_config, follow, submit};
use converto_core::testkit::within;
use serde_json::json;

/// Commits the first transition `loses` picks, then answers with a temporary error as if the
/// connection had dropped before the answer arrived.
#[derive(Debug)]
struct LosesFirstAnswer {
    inner: MemoryConversionStore,
    loses: fn(&Transition) -> bool,
    lost: AtomicBool,
}

impl LosesFirstAnswer {
    fn backends(loses: fn(&Transition) -> bool) -> (Arc<Self>, Backends) {
        let store = Arc::new(Self {
            inner: MemoryConversionStore::new(),
            loses,
            lost: AtomicBool::new(false),
        });
        let mut backends = Backends::in_memory();
        backends.store = store.clone();
        (store, backends)
    }
}

#[async_trait]
impl ConversionStore for LosesFirstAnswer {
    async fn create(&self, new: NewConversion) -> Result<Created, StoreError> {
        self.inner.create(new).await
    }
    async fn get(&self, id: ConversionId) -> Result<Conversion, StoreError> {
        self.inner.get(id).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        self.inner.list(query).await
    }
    async fn transition(
        &self,
        id: ConversionId,
        transition: &Transition,
    ) -> Result<Conversion, StoreError> {
        let result = self.inner.transition(id, transition).await;
        if (self.loses)(transition) && result.is_ok() && !self.lost.swap(true, Ordering::SeqCst) {
            return Err(StoreError::backend(
                "lossy",
                true,
                "connection reset after commit",
            ));
        }
        result
    }
    async fn delete(&self, id: ConversionId) -> Result<Conversion, StoreError> {
        self.inner.delete(id).await
    }
    async fn tenant_usage(
        &self,
        tenant: &str,
    ) -> Result<converto_core::store::TenantUsage, StoreError> {
        self.inner.tenant_usage(tenant).await
    }
    async fn count_by_status(&self) -> Result<BTreeMap<Status, u64>, StoreError> {
        self.inner.count_by_status().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_a_recorded_success_keeps_the_artifacts() {
    let (store, backends) = LosesFirstAnswer::backends(|t| matches!(t, Transition::Succeed { .. }));
    let (engine, _) = engine_with(&backends, fast_config());
    let workers = Workers::start(&engine);
    let c = submit(&engine, "upper", json!({})).await;
    let (_, done) = follow(&engine, c.id).await;
    assert!(
        store.lost.load(Ordering::SeqCst),
        "the answer was never lost"
    );
    assert_eq!(done.status, Status::Succeeded);
    assert_eq!(done.attempts, 1);
    assert_eq!(done.artifacts.len(), 1);
    let content = backends
        .blobs
        .get_bytes(&done.artifacts[0].blob_key)
        .await
        .expect("the recorded artifact must still be there");
    assert!(String::from_utf8_lossy(&content).ends_with("attempt=1"));
    workers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_a_recorded_failure_still_ends_the_watch() {
    let (store, backends) = LosesFirstAnswer::backends(|t| matches!(t, Transition::Fail { .. }));
    let (engine, _) = engine_with(&backends, fast_config());
    let workers = Workers::start(&engine);
    let c = submit(&engine, "upper", json!({"mode": "fail"})).await;
    let (_, done) = follow(&engine, c.id).await;
    assert!(
        store.lost.load(Ordering::SeqCst),
        "the answer was never lost"
    );
    assert_eq!(done.status, Status::Failed);
    assert_eq!(done.attempts, 1);
    // Acks are batched: the job leaves the queue just after its verdict is recorded.
    within(30, "the failed job to leave the queue", async {
        while backends.queue.contains(c.id).await.expect("contains") {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    workers.stop().await;
}
