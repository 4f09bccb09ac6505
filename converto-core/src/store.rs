//! The `ConversionStore` trait: the conversion records.

use std::collections::BTreeMap;
use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::conversion::{Conversion, NewConversion, Status, Transition, TransitionConflict};
use crate::error::BackendError;
use crate::search::{Cursor, Sort};
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

/// Filters, order and pagination for [`ConversionStore::list`]: every filter given must hold
/// (AND); within `statuses` and within `tags` any one is enough (OR). Results are newest created
/// first unless `sort` says otherwise.
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
    /// Only those carrying every one of these labels (key with value).
    pub labels: Vec<(String, String)>,
    /// Only those carrying at least one of these tags (lowercase, as stored); empty means all.
    pub tags: Vec<String>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    pub created_before: Option<DateTime<Utc>>,
    /// Finished at or after (records not finished never match).
    pub finished_after: Option<DateTime<Utc>>,
    /// Finished before (records not finished never match).
    pub finished_before: Option<DateTime<Utc>>,
    /// Last changed before (used by the sweeper).
    pub updated_before: Option<DateTime<Utc>>,
    /// Full text over the input file name and the description: every word must start a word's
    /// stem there (see [`crate::search`]). A text without words filters nothing.
    pub text: Option<String>,
    /// The order; sorting by finish time leaves out records that have not finished.
    pub sort: Sort,
    /// At most this many (1 to 1000; 0 means 50).
    pub limit: usize,
    /// Continue after this record (the previous page's `next_cursor`, with the same `sort`).
    pub cursor: Option<Cursor>,
}

impl ListQuery {
    /// The effective page size.
    pub fn effective_limit(&self) -> usize {
        match self.limit {
            0 => 50,
            n => n.min(1000),
        }
    }

    /// The query with its tags normalised (lowercase, distinct) and its limits checked: the
    /// full text's length and words, the number of tags. The engine lists with this.
    pub fn checked(&self) -> Result<ListQuery, crate::search::QueryError> {
        use crate::search::{MAX_TAG_FILTERS, QueryError, normalize_tag, parse_query};
        if let Some(text) = &self.text {
            parse_query(text)?;
        }
        if self.tags.len() > MAX_TAG_FILTERS {
            return Err(QueryError::TooManyTags);
        }
        let mut tags = self
            .tags
            .iter()
            .map(|t| normalize_tag(t))
            .collect::<Result<Vec<_>, _>>()?;
        tags.sort_unstable();
        tags.dedup();
        Ok(ListQuery {
            tags,
            ..self.clone()
        })
    }

    /// The words of the full-text filter (empty: no text filter).
    pub fn text_terms(&self) -> Vec<String> {
        self.text
            .as_deref()
            .map(crate::search::query_terms)
            .unwrap_or_default()
    }

    /// Whether a record passes every filter (cursor and the finished-sort rule included).
    /// Backends that filter in memory use this; SQL backends translate the same rules.
    pub fn matches(&self, c: &Conversion) -> bool {
        let finished = |t: DateTime<Utc>, after: bool| {
            c.finished_at
                .is_some_and(|f| if after { f >= t } else { f < t })
        };
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
            && self.labels.iter().all(|(k, v)| c.labels.get(k) == Some(v))
            && (self.tags.is_empty() || self.tags.iter().any(|t| c.tags.contains(t)))
            && self.created_after.is_none_or(|t| c.created_at >= t)
            && self.created_before.is_none_or(|t| c.created_at < t)
            && self.finished_after.is_none_or(|t| finished(t, true))
            && self.finished_before.is_none_or(|t| finished(t, false))
            && self.updated_before.is_none_or(|t| c.updated_at < t)
            && crate::search::text_matches(
                &self.text_terms(),
                c.input_name.as_deref(),
                c.description.as_deref(),
            )
            && match self.sort.key(c) {
                None => false,
                Some(key) => self.cursor.is_none_or(|cur| cur.precedes(key, self.sort)),
            }
    }
}

/// One page of [`ConversionStore::list`].
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The records, in the query's order.
    pub items: Vec<Conversion>,
    /// Pass as `cursor` for the next page; `None` on the last page.
    pub next_cursor: Option<Cursor>,
}

impl Page {
    /// A page from records read in `sort` order with one more than `limit` asked for: the extra
    /// one only tells that a next page exists, and the cursor is the last record kept.
    pub fn from_overfetch(mut items: Vec<Conversion>, limit: usize, sort: Sort) -> Self {
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().and_then(|c| Cursor::after(c, sort))
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

/// The records a store wrote last, kept as the starting point of the next transition of the
/// same record: a worker starts a record it just created, and finishes one it just started, and
/// each of those transitions can then skip its read.
///
/// Safe by construction: a kept record is only ever the *read* of [`transition_by_cas`], never
/// an answer. If another writer changed the record meanwhile, the compare-and-set fails on its
/// version and the loop reads the stored record, as it would have anyway; a transition the kept
/// record refuses is tried again from the stored one ([`RecentRecords::transition`]). Holds at
/// most `capacity` records (it forgets them all when full: a cache miss only costs a read), and
/// only records of at most [`RecentRecords::MAX_RECORD_BYTES`] (counting their text and
/// options): the memory it may hold is bounded whatever the records carry.
#[derive(Debug)]
pub struct RecentRecords {
    records: parking_lot::Mutex<crate::memory::ids::IdMap<Conversion>>,
    capacity: usize,
}

impl RecentRecords {
    /// The largest record kept, in bytes of text and options (larger ones are read as usual).
    pub const MAX_RECORD_BYTES: usize = 16 * 1024;

    /// A cache of at most `capacity` records.
    pub fn new(capacity: usize) -> Self {
        Self {
            records: parking_lot::Mutex::new(Default::default()),
            capacity,
        }
    }

    /// Keeps `record` (the one just written) for its next transition.
    pub fn keep(&self, record: &Conversion) {
        if !within(record, Self::MAX_RECORD_BYTES) {
            self.forget(record.id);
            return;
        }
        let mut records = self.records.lock();
        if records.len() >= self.capacity && !records.contains_key(&record.id) {
            records.clear();
        }
        records.insert(record.id, record.clone());
    }

    /// How many records are kept.
    pub fn len(&self) -> usize {
        self.records.lock().len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.records.lock().is_empty()
    }

    /// Forgets the record of `id` (deleted).
    pub fn forget(&self, id: ConversionId) {
        self.records.lock().remove(&id);
    }

    /// [`transition_by_cas`], starting from the kept record when there is one (and from `read`
    /// otherwise, and for every retry); the record written is kept.
    pub async fn transition<R, RF, W, WF>(
        &self,
        id: ConversionId,
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
        let kept = self.records.lock().remove(&id);
        let written = match kept {
            Some(kept) => {
                let mut kept = Some(kept);
                let first = transition_by_cas(
                    transition,
                    &now,
                    tries,
                    || {
                        let kept = kept.take();
                        let read = kept.is_none().then(&mut read);
                        async move {
                            match (kept, read) {
                                (Some(k), _) => Ok(k),
                                (None, Some(r)) => r.await,
                                (None, None) => Err(StoreError::NotFound { id }),
                            }
                        }
                    },
                    &mut write,
                )
                .await;
                match first {
                    // Refused by what may be an old copy: ask the stored record.
                    Err(StoreError::Conflict(_)) => {
                        transition_by_cas(transition, &now, tries, read, write).await
                    }
                    other => other,
                }
            }
            None => transition_by_cas(transition, &now, tries, read, write).await,
        };
        if let Ok(Some(record)) = &written {
            self.keep(record);
        }
        written
    }
}

/// Whether the record's text and options come to at most `budget` bytes (counted until the
/// budget runs out, so a huge record costs no more to look at than a small one).
fn within(c: &Conversion, budget: usize) -> bool {
    fn value(v: &serde_json::Value, left: &mut usize) -> bool {
        let take = |n: usize, left: &mut usize| match left.checked_sub(n) {
            Some(l) => {
                *left = l;
                true
            }
            None => false,
        };
        match v {
            serde_json::Value::String(s) => take(s.len() + 8, left),
            serde_json::Value::Array(a) => take(16, left) && a.iter().all(|v| value(v, left)),
            serde_json::Value::Object(o) => {
                take(16, left)
                    && o.iter()
                        .all(|(k, v)| take(k.len() + 8, left) && value(v, left))
            }
            _ => take(16, left),
        }
    }
    let text = [
        Some(c.tenant.as_str()),
        Some(c.input_key.as_str()),
        c.input_name.as_deref(),
        c.description.as_deref(),
        c.idempotency_key.as_deref(),
    ]
    .into_iter()
    .flatten()
    .map(str::len)
    .chain(c.tags.iter().map(String::len))
    .chain(c.labels.iter().map(|(k, v)| k.len() + v.len()))
    .chain(
        c.artifacts
            .iter()
            .map(|a| a.name.len() + a.blob_key.len() + a.checksum.len() + 64),
    )
    .chain(c.error.iter().map(|e| e.code.len() + e.message.len()))
    .try_fold(0usize, |sum, n| sum.checked_add(n))
    .unwrap_or(usize::MAX);
    let Some(mut left) = budget.checked_sub(text) else {
        return false;
    };
    value(&c.options, &mut left)
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

    /// Records matching the query, in its order (newest created first by default), one page
    /// at a time; every backend serves the filters, orders and cursors from indexes.
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
