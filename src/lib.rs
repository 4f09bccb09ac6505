//! Durable file conversion jobs: submit "turn this file into that format", and converto stores
//! the input, queues the work, runs the converter with retries, timeouts, leases and
//! cancellation, reports progress, and keeps the artifacts.
//!
//! ```
//! use converto::{Engine, Format, Route, Submission, SubmitInput, converter_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let upper = converter_fn("upper", [Route::parse("txt", "upper")?], |_request, input| {
//!     Ok(input.to_ascii_uppercase().into())
//! });
//! let engine = Engine::builder().converter(upper).build()?; // every backend in memory
//! let workers = engine.start_workers();
//! let input = SubmitInput::bytes("hello", Some("hello.txt".into()));
//! let submitted = engine.submit(Submission::new(Format::new("upper")?, input)).await?;
//! let done = engine.wait(submitted.conversion.id).await?;
//! assert_eq!(&engine.read_artifact_bytes(done.id, "output.upper").await?[..], b"HELLO");
//! workers.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! The rest of this page is the project's README.
//!
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
