#![doc = include_str!("../README.md")]

pub mod blob;
pub mod conversion;
pub mod converter;
pub mod engine;
mod format;
mod id;
pub mod memory;
pub mod progress;
pub mod queue;
pub mod registry;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use blob::{BlobStore, BlobStoreExt, ByteStream};
pub use conversion::{Artifact, Conversion, ErrorInfo, Progress, Status, Transition};
pub use converter::{ConvertContext, ConvertError, ConvertRequest, Converter, Output, Route};
pub use engine::{Backends, Engine, EngineConfig, EngineError, Submission, SubmitInput, Submitted};
pub use format::{Format, ParseFormatError};
pub use id::{ConversionId, ParseIdError};
pub use progress::{Event, ProgressBus};
pub use queue::JobQueue;
pub use registry::ConverterRegistry;
pub use store::ConversionStore;

/// Re-exported so converters and callers share the same token type.
pub use tokio_util::sync::CancellationToken;
