//! The `mock` feature's mockall mocks, used where a failure is hard to cause for real.
#![cfg(feature = "mock")]

use std::sync::Arc;

use bytes::Bytes;
use converto_core::memory::{MemoryBlobStore, MemoryJobQueue, MemoryProgressBus};
use converto_core::store::{MockConversionStore, StoreError};
use converto_core::testkit::scripted_registry;
use converto_core::{BlobStore, Engine, EngineError, Format, Submission, SubmitInput};

/// A store outage during submit is reported as temporary and leaves no input blob behind.
#[tokio::test]
async fn store_outage_during_submit_leaves_nothing() {
    let mut store = MockConversionStore::new();
    store.expect_create().times(1).returning(|_| {
        Err(StoreError::backend(
            "mock",
            true,
            std::io::Error::other("connection reset"),
        ))
    });
    let blobs = Arc::new(MemoryBlobStore::new());
    let (registry, _) = scripted_registry();
    let engine = Engine::builder()
        .store(Arc::new(store))
        .queue(Arc::new(MemoryJobQueue::new()))
        .bus(Arc::new(MemoryProgressBus::new()))
        .blobs(blobs.clone())
        .registry(registry)
        .build()
        .expect("engine");
    let input = SubmitInput::bytes(Bytes::from_static(b"abc"), Some("a.txt".into()));
    let err = engine
        .submit(Submission::new(
            Format::new("upper").expect("format"),
            input,
        ))
        .await
        .expect_err("the store is down");
    assert!(matches!(err, EngineError::Store(_)), "{err:?}");
    assert!(err.is_temporary());
    assert!(
        blobs.list("").await.expect("list").is_empty(),
        "the input blob was left behind"
    );
}
