//! How an application tests its own code with the `mock` feature: the code under test is a
//! small "report" function of the application's that reads through the engine; the mock store
//! stands in for the database and makes an outage happen on demand.
#![cfg(feature = "mock")]

use std::sync::Arc;

use converto::mock::MockConversionStore;
use converto::{ConversionId, Engine, EngineError, StoreError};

/// The application's code: a one-line status for a conversion, telling an outage apart from a
/// wrong id.
async fn status_line(engine: &Engine, id: ConversionId) -> String {
    match engine.get(id).await {
        Ok(c) => format!("{id}: {}", c.status),
        Err(EngineError::NotFound { .. }) => format!("{id}: no such conversion"),
        Err(e) if e.is_temporary() => format!("{id}: try again later"),
        Err(e) => format!("{id}: error: {e}"),
    }
}

#[tokio::test]
async fn an_outage_reads_as_try_again_and_an_unknown_id_as_missing() {
    let id = ConversionId::new();
    let mut store = MockConversionStore::new();
    let mut calls = 0;
    store.expect_get().times(2).returning(move |id| {
        calls += 1;
        if calls == 1 {
            Err(StoreError::backend(
                "mock",
                true,
                std::io::Error::other("connection reset"),
            ))
        } else {
            Err(StoreError::NotFound { id })
        }
    });
    let engine = Engine::builder()
        .store(Arc::new(store))
        .build()
        .expect("engine");
    assert_eq!(
        status_line(&engine, id).await,
        format!("{id}: try again later")
    );
    assert_eq!(
        status_line(&engine, id).await,
        format!("{id}: no such conversion")
    );
}
