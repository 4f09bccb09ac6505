#![doc = include_str!("../README.md")]

pub mod blob;
pub mod chain;
pub mod conversion;
pub mod converter;
pub mod engine;
pub mod error;
mod format;
mod id;
pub mod intake;
pub mod keys;
pub mod memory;
pub mod progress;
pub mod queue;
pub mod registry;
pub mod retry;
pub mod search;
pub mod store;
pub mod tenants;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod webhook;

pub use blob::{BlobError, BlobRead};
pub use blob::{BlobStore, BlobStoreExt, ByteStream};
pub use conversion::{Artifact, Conversion, ErrorInfo, Progress, Status, Transition};
pub use converter::{ConvertContext, ConvertError, ConvertRequest, Converter, Output, Route};
pub use engine::{
    Backends, BuildError, Engine, EngineBuilder, EngineConfig, EngineError, FnConverter,
    Submission, SubmitInput, SubmitWebhook, Submitted, WorkerHandle, converter_fn,
};
pub use error::{BackendError, ErrorKind};
pub use intake::TenantEngine;
pub use progress::BusError;
pub use queue::QueueError;
pub use store::{ListQuery, Page, StoreError, TenantUsage};

/// Re-exported so converters and backends written outside this crate implement the traits
/// with the same macro: `#[converto::async_trait]`.
pub use async_trait::async_trait;
pub use format::{Format, ParseFormatError};
pub use id::{ConversionId, ParseIdError};
pub use progress::{Event, ProgressBus};
pub use queue::JobQueue;
pub use registry::ConverterRegistry;
pub use store::ConversionStore;

pub use queue::DEFAULT_TENANT;

/// Re-exported so converters and callers share the same token type.
pub use tokio_util::sync::CancellationToken;
