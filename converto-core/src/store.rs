//! The `ConversionStore` trait: the conversion records.

use std::collections::BTreeMap;
use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::conversion::{Conversion, NewConversion, Status, Transition, TransitionConflict};
use crate::error::BackendError;
use crate::{ConversionId, Format};

/// A `dyn ConversionStore`.
pub type DynConversionStore = dyn ConversionStore;

/// The errors of a [`ConversionStore`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No conversion with that id.
    #[error("conversion {id} not found")]
    NotFound {
        /// The id.
        id: ConversionId,
    },
    /// A conversion with that id already exists (and it was not an idempotent replay).
    #[error("conversion {id} already exists")]
    AlreadyExists {
        /// The id.
        id: ConversionId,
    },
    /// The guarded transition was refused.
    #[error(transparent)]
    Conflict(#[from] TransitionConflict),
    /// A stored record could not be read back.
    #[error("stored conversion is corrupt: {0}")]
    Corrupt(String),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl StoreError {
    /// Whether trying again may succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(self, StoreError::Backend(e) if e.is_temporary())
    }

    /// A backend error from any cause.
    pub fn backend(
        backend: &'static str,
        temporary: bool,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Backend(BackendError::new(backend, temporary, source))
    }
}

/// The result of [`ConversionStore::create`].
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    /// The stored record: the new one, or the one the idempotency key already named.
    pub conversion: Conversion,
    /// False when the idempotency key matched an existing record.
    pub created: bool,
}

/// What one tenant holds in a store, read by [`ConversionStore::tenant_usage`] for the tenant's
/// limits (maximum queued, maximum running, storage bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantUsage {
    /// Records in [`Status::Queued`].
    pub queued: u64,
    /// Records in [`Status::Running`].
    pub running: u64,
    /// Bytes the tenant's records hold in the blob store: for every record, whatever its
    /// status, its input's size plus the sizes of its artifacts. An input lives as long as its
    /// record (deleting the record deletes it), so every record counts until it is deleted. An
    /// upload shared by several conversions counts once per conversion (the quota errs on the
    /// side of refusing); an upload no conversion has claimed yet is not counted (the janitor
    /// removes it).
    pub stored_bytes: u64,
}

impl TenantUsage {
    /// The bytes a record holds, as [`TenantUsage::stored_bytes`] counts them.
    pub fn bytes_of(c: &Conversion) -> u64 {
        c.artifacts
            .iter()
            .fold(c.input_size, |n, a| n.saturating_add(a.size))
    }
}

/// Filters and pagination for [`ConversionStore::list`]. Results are newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// Only this tenant's.
    pub tenant: Option<String>,
    /// Only these statuses (any of them); empty means all.
    pub statuses: Vec<Status>,
    /// Only this source format.
    pub source_format: Option<Format>,
    /// Only this target format.
    pub target_format: Option<Format>,
    /// Only those carrying this label key with this value.
    pub label: Option<(String, String)>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    pub created_before: Option<DateTime<Utc>>,
    /// Last changed before (used by the sweeper).
    pub updated_before: Option<DateTime<Utc>>,
    /// Case-insensitive substring of the input file name.
    pub text: Option<String>,
    /// At most this many (1 to 1000; 0 means 50).
    pub limit: usize,
    /// Continue after this id (the previous page's `next_cursor`).
    pub cursor: Option<ConversionId>,
}

impl ListQuery {
    /// The effective page size.
    pub fn effective_limit(&self) -> usize {
        match self.limit {
            0 => 50,
            n => n.min(1000),
        }
    }

    /// Whether a record passes every filter (cursor included). Backends that filter in memory
    /// use this; SQL backends translate the same rules.
    pub fn matches(&self, c: &Conversion) -> bool {
        self.tenant.as_ref().is_none_or(|t| &c.tenant == t)
            && (self.statuses.is_empty() || self.statuses.contains(&c.status))
            && self
                .source_format
                .as_ref()
                .is_none_or(|f| &c.source_format == f)
            && self
                .target_format
                .as_ref()
                .is_none_or(|f| &c.target_format == f)
            && self
                .label
                .as_ref()
                .is_none_or(|(k, v)| c.labels.get(k) == Some(v))
            && self.created_after.is_none_or(|t| c.created_at >= t)
            && self.created_before.is_none_or(|t| c.created_at < t)
            && self.updated_before.is_none_or(|t| c.updated_at < t)
            && self.text.as_ref().is_none_or(|text| {
                c.input_name
                    .as_ref()
                    .is_some_and(|n| n.to_lowercase().contains(&text.to_lowercase()))
            })
            && self.cursor.is_none_or(|cur| c.id < cur)
    }
}

/// One page of [`ConversionStore::list`].
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The records, newest first.
    pub items: Vec<Conversion>,
    /// Pass as `cursor` for the next page; `None` on the last page.
    pub next_cursor: Option<ConversionId>,
}

impl Page {
    /// A page from records read newest first with one more than `limit` asked for: the extra
    /// one only tells that a next page exists, and the cursor is the last record kept.
    pub fn from_overfetch(mut items: Vec<Conversion>, limit: usize) -> Self {
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|c| c.id)
        } else {
            None
        };
        Self { items, next_cursor }
    }
}

/// The compare-and-set loop stores share for [`ConversionStore::transition`]: read the record,
/// apply the transition (which may refuse), write it if the version is still the one read, and
/// start again from the winner's record when another writer got there first. `None` when every
/// one of `tries` lost the race; the store turns that into its own "contended" error.
pub async fn transition_by_cas<R, RF, W, WF>(
    transition: &Transition,
    now: impl Fn() -> chrono::DateTime<chrono::Utc>,
    tries: u32,
    mut read: R,
    mut write: W,
) -> Result<Option<Conversion>, StoreError>
where
    R: FnMut() -> RF,
    RF: std::future::Future<Output = Result<Conversion, StoreError>>,
    W: FnMut(Conversion, u64) -> WF,
    WF: std::future::Future<Output = Result<Option<Conversion>, StoreError>>,
{
    for _ in 0..tries {
        let current = read().await?;
        let mut next = current.clone();
        transition.apply(&mut next, now())?;
        if let Some(written) = write(next, current.version).await? {
            return Ok(Some(written));
        }
    }
    Ok(None)
}

/// Stores conversion records. Every status change goes through [`Transition::apply`] under a
/// compare-and-set, so concurrent writers can never both win.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ConversionStore: Send + Sync + Debug + 'static {
    /// Creates the record. If the tenant already has a record with the same idempotency key,
    /// returns that one with `created: false` and stores nothing.
    async fn create(&self, new: NewConversion) -> Result<Created, StoreError>;

    /// One record.
    async fn get(&self, id: ConversionId) -> Result<Conversion, StoreError>;

    /// Records matching the query, newest first.
    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError>;

    /// Applies a guarded transition atomically and returns the new record.
    async fn transition(
        &self,
        id: ConversionId,
        transition: &Transition,
    ) -> Result<Conversion, StoreError>;

    /// Removes the record and returns it.
    async fn delete(&self, id: ConversionId) -> Result<Conversion, StoreError>;

    /// How many records are in each status.
    async fn count_by_status(&self) -> Result<BTreeMap<Status, u64>, StoreError>;

    /// What `tenant` holds: its queued and running records and the bytes its records keep
    /// stored (see [`TenantUsage`]). Read on every submit and by workers enforcing running
    /// limits, so backends answer from an index over the tenant's own records or from kept
    /// counters, never by walking every record.
    async fn tenant_usage(&self, tenant: &str) -> Result<TenantUsage, StoreError>;

    /// Checks that the backend answers (for readiness probes).
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
