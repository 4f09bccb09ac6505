//! Conformance suites: one per trait, plus the engine's whole lifecycle over any set of
//! backends. Every adapter runs them; the in-memory backends run them in this crate's tests.
//!
//! Each check is a plain `pub async fn` that panics on a violation, like object_store's
//! `integration` module. The `run_*` functions call every check of a suite with a fresh backend
//! from the factory, so an adapter cannot skip one silently; checks that depend on a capability
//! assert the opposite behaviour (e.g. `NotSupported`) when the capability is absent.

pub mod blob;
pub mod converter;
pub mod engine;
pub mod keys;
pub mod progress;
pub mod queue;
pub mod store;
pub mod tenants;
pub mod webhooks;

mod scripted;

pub use scripted::{ScriptedConverter, scripted_registry};

use std::future::Future;
use std::time::Duration;

/// Awaits `fut`, panicking with `what` if it takes longer than `secs` seconds: a suite must
/// fail, not hang, when a backend misbehaves.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s: {what}"),
    }
}
