//! The in-memory backends run every conformance suite.

use std::sync::Arc;

use converto_core::blob::BlobStore;
use converto_core::engine::Backends;
use converto_core::memory::{
    MemoryBlobStore, MemoryConversionStore, MemoryJobQueue, MemoryProgressBus,
};
use converto_core::progress::ProgressBus;
use converto_core::queue::JobQueue;
use converto_core::store::ConversionStore;
use converto_core::testkit::{blob, engine, progress, queue, store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_blob_store_conforms() {
    blob::run_blob_suite(async || Arc::new(MemoryBlobStore::new()) as Arc<dyn BlobStore>).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_conversion_store_conforms() {
    store::run_store_suite(async || {
        Arc::new(MemoryConversionStore::new()) as Arc<dyn ConversionStore>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_job_queue_conforms() {
    queue::run_queue_suite(async || Arc::new(MemoryJobQueue::new()) as Arc<dyn JobQueue>).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_progress_bus_conforms() {
    progress::run_progress_suite(async || {
        Arc::new(MemoryProgressBus::new()) as Arc<dyn ProgressBus>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_suite_on_memory_backends() {
    engine::run_engine_suite(async || Backends::in_memory()).await;
}

/// The traits are usable as trait objects and generically.
#[test]
fn traits_are_object_safe() {
    fn takes_dyn(
        _: &dyn BlobStore,
        _: &dyn ConversionStore,
        _: &dyn JobQueue,
        _: &dyn ProgressBus,
    ) {
    }
    fn takes_generic<B: BlobStore, S: ConversionStore>(b: &B, s: &S) -> usize {
        std::mem::size_of_val(b) + std::mem::size_of_val(s)
    }
    takes_dyn(
        &MemoryBlobStore::new(),
        &MemoryConversionStore::new(),
        &MemoryJobQueue::new(),
        &MemoryProgressBus::new(),
    );
    assert!(takes_generic(&MemoryBlobStore::new(), &MemoryConversionStore::new()) > 0);
}
