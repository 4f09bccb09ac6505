use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use chrono::Utc;
use parking_lot::Mutex;

use super::IdMap;
use crate::ConversionId;
use crate::conversion::{Conversion, NewConversion, Status, Transition};
use crate::store::{ConversionStore, Created, ListQuery, Page, StoreError, TenantUsage};

#[derive(Debug, Default)]
struct State {
    /// Boxed, so growing the map moves pointers, not records. No order is kept: `list` sorts.
    records: IdMap<Box<Conversion>>,
    by_key: HashMap<(String, String), ConversionId>,
    /// Records by status, kept up to date so that counting does not walk every record.
    counts: BTreeMap<Status, u64>,
    /// Each tenant's usage, kept up to date by every write (a tenant with no record has none).
    usage: HashMap<String, TenantUsage>,
}

impl State {
    /// Adds (`up`) or takes away the record's share of its tenant's usage.
    fn account(&mut self, c: &Conversion, up: bool) {
        // Looked up by `&str`: the tenant's name is copied only for its first record.
        if !self.usage.contains_key(c.tenant.as_str()) {
            if !up {
                // Taking away from nothing leaves nothing.
                return;
            }
            self.usage.insert(c.tenant.clone(), TenantUsage::default());
        }
        let Some(u) = self.usage.get_mut(c.tenant.as_str()) else {
            return;
        };
        let bytes = TenantUsage::bytes_of(c);
        let step = |n: &mut u64, by: u64| {
            *n = if up {
                n.saturating_add(by)
            } else {
                n.saturating_sub(by)
            }
        };
        step(&mut u.stored_bytes, bytes);
        match c.status {
            Status::Queued => step(&mut u.queued, 1),
            Status::Running => step(&mut u.running, 1),
            _ => {}
        }
        if *u == TenantUsage::default() && !up {
            self.usage.remove(c.tenant.as_str());
        }
    }

    /// Moves a record's share of its tenant's usage from what it was (`before`: status and
    /// bytes) to what `now` holds; the same as taking the old record away and adding the new.
    fn reaccount(&mut self, tenant: &str, before: (Status, u64), now: &Conversion) {
        let after = TenantUsage::bytes_of(now);
        let Some(u) = self.usage.get_mut(tenant) else {
            // A record always has its tenant's usage; should it be missing, start it afresh.
            self.account(now, true);
            return;
        };
        u.stored_bytes = u
            .stored_bytes
            .saturating_sub(before.1)
            .saturating_add(after);
        let mut step = |status: Status, up: bool| {
            let n = match status {
                Status::Queued => &mut u.queued,
                Status::Running => &mut u.running,
                _ => return,
            };
            *n = if up {
                n.saturating_add(1)
            } else {
                n.saturating_sub(1)
            };
        };
        step(before.0, false);
        step(now.status, true);
    }

    fn count(&mut self, status: Status, up: bool) {
        let n = self.counts.entry(status).or_insert(0);
        if up {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.counts.remove(&status);
            }
        }
    }
}

/// A conversion store in memory.
#[derive(Debug, Default)]
pub struct MemoryConversionStore {
    state: Mutex<State>,
}

impl MemoryConversionStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ConversionStore for MemoryConversionStore {
    async fn create(&self, new: NewConversion) -> Result<Created, StoreError> {
        let mut state = self.state.lock();
        if let Some(key) = &new.idempotency_key
            && let Some(id) = state.by_key.get(&(new.tenant.clone(), key.clone()))
            && let Some(existing) = state.records.get(id)
        {
            return Ok(Created {
                conversion: Conversion::clone(existing),
                created: false,
            });
        }
        if state.records.contains_key(&new.id) {
            return Err(StoreError::AlreadyExists { id: new.id });
        }
        let record = new.into_record(Utc::now());
        if let Some(key) = &record.idempotency_key {
            state
                .by_key
                .insert((record.tenant.clone(), key.clone()), record.id);
        }
        state.count(record.status, true);
        state.account(&record, true);
        state.records.insert(record.id, Box::new(record.clone()));
        Ok(Created {
            conversion: record,
            created: true,
        })
    }

    async fn get(&self, id: ConversionId) -> Result<Conversion, StoreError> {
        self.state
            .lock()
            .records
            .get(&id)
            .map(|c| Conversion::clone(c))
            .ok_or(StoreError::NotFound { id })
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let limit = query.effective_limit();
        let sort = query.sort;
        let state = self.state.lock();
        // `matches` leaves out records without a key in this order, so every kept one has one.
        let mut items: Vec<(_, &Conversion)> = state
            .records
            .values()
            .map(|c| &**c)
            .filter(|c| query.matches(c))
            .filter_map(|c| sort.key(c).map(|k| (k, c)))
            .collect();
        items.sort_unstable_by_key(|(key, _)| *key);
        if sort.descending() {
            items.reverse();
        }
        let items = items
            .into_iter()
            .take(limit + 1)
            .map(|(_, c)| Conversion::clone(c))
            .collect();
        Ok(Page::from_overfetch(items, limit, sort))
    }

    async fn transition(
        &self,
        id: ConversionId,
        transition: &Transition,
    ) -> Result<Conversion, StoreError> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let record = state
            .records
            .get_mut(&id)
            .ok_or(StoreError::NotFound { id })?;
        let (status, bytes) = (record.status, TenantUsage::bytes_of(record));
        // Applied in place: `apply` refuses before it changes anything, so a refused
        // transition leaves the record as it was.
        transition.apply(record, Utc::now())?;
        let next = Conversion::clone(record);
        if status != next.status {
            state.count(status, false);
            state.count(next.status, true);
        }
        state.reaccount(&next.tenant, (status, bytes), &next);
        Ok(next)
    }

    async fn delete(&self, id: ConversionId) -> Result<Conversion, StoreError> {
        let mut state = self.state.lock();
        let record = state
            .records
            .remove(&id)
            .ok_or(StoreError::NotFound { id })?;
        if let Some(key) = &record.idempotency_key {
            state.by_key.remove(&(record.tenant.clone(), key.clone()));
        }
        state.count(record.status, false);
        state.account(&record, false);
        Ok(*record)
    }

    async fn count_by_status(&self) -> Result<BTreeMap<Status, u64>, StoreError> {
        Ok(self.state.lock().counts.clone())
    }

    async fn tenant_usage(&self, tenant: &str) -> Result<TenantUsage, StoreError> {
        Ok(self
            .state
            .lock()
            .usage
            .get(tenant)
            .copied()
            .unwrap_or_default())
    }
}
