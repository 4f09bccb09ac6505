//! The `ProgressBus` trait: progress and status events.

use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::ConversionId;
use crate::conversion::{Conversion, ErrorInfo, Progress, Status};
use crate::error::BackendError;

/// A `dyn ProgressBus`.
pub type DynProgressBus = dyn ProgressBus;

/// A stream of events.
pub type EventStream = BoxStream<'static, Event>;

/// Something that happened to a conversion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A running attempt made progress.
    Progress {
        /// The conversion.
        id: ConversionId,
        /// The attempt.
        attempt: u32,
        /// How far.
        progress: Progress,
    },
    /// The status changed.
    Status {
        /// The conversion.
        id: ConversionId,
        /// The new status.
        status: Status,
        /// The attempt count.
        attempt: u32,
        /// The error, for failures and retries.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorInfo>,
        /// When.
        at: DateTime<Utc>,
    },
}

impl Event {
    /// The conversion it is about.
    pub fn id(&self) -> ConversionId {
        match self {
            Event::Progress { id, .. } | Event::Status { id, .. } => *id,
        }
    }

    /// Whether it announces a terminal status.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Event::Status { status, .. } if status.is_terminal())
    }

    /// The status event describing a record.
    pub fn status_of(c: &Conversion) -> Self {
        Event::Status {
            id: c.id,
            status: c.status,
            attempt: c.attempts,
            error: c.error.clone(),
            at: c.updated_at,
        }
    }

    /// The SSE event name: `progress` or `status`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Progress { .. } => "progress",
            Event::Status { .. } => "status",
        }
    }
}

/// The errors of a [`ProgressBus`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl BusError {
    /// Whether trying again may succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(self, BusError::Backend(e) if e.is_temporary())
    }

    /// A backend error from any cause.
    pub fn backend(
        backend: &'static str,
        temporary: bool,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        BusError::Backend(BackendError::new(backend, temporary, source))
    }
}

/// Carries events from workers to watchers, and keeps each conversion's latest progress.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ProgressBus: Send + Sync + Debug + 'static {
    /// Sends an event to the conversion's subscribers; a progress event also becomes its latest.
    async fn publish(&self, event: Event) -> Result<(), BusError>;

    /// The latest progress event published for the conversion, if any.
    async fn latest(&self, id: ConversionId) -> Result<Option<Event>, BusError>;

    /// Events published for the conversion from now on. The stream may drop progress events
    /// for a slow reader, never the last event sent.
    async fn subscribe(&self, id: ConversionId) -> Result<EventStream, BusError>;

    /// Drops what the bus keeps for the conversion (its latest progress).
    async fn forget(&self, id: ConversionId) -> Result<(), BusError>;

    /// Checks that the backend answers (for readiness probes).
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}
