#![doc = include_str!("../README.md")]

pub use converto_core as core;
pub use converto_core::*;

/// Backends and converters, each behind the cargo feature of the same name.
pub use converto_adapters as adapters;

/// The HTTP service: `app(state)` is the axum router, the `converto` binary is built on it.
#[cfg(feature = "http")]
pub use converto_http as http;

/// `mockall` mocks of the five traits, for the tests of an application's own code: set the
/// expectations a test needs and hand the mock to the code under test as an `Arc<dyn Trait>`.
#[cfg(feature = "mock")]
pub mod mock {
    pub use converto_core::blob::MockBlobStore;
    pub use converto_core::converter::MockConverter;
    pub use converto_core::progress::MockProgressBus;
    pub use converto_core::queue::MockJobQueue;
    pub use converto_core::store::MockConversionStore;
}
