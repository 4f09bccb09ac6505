use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use chrono::Utc;
use parking_lot::Mutex;

use crate::ConversionId;
use crate::conversion::{Conversion, NewConversion, Status, Transition};
use crate::store::{ConversionStore, Created, ListQuery, Page, StoreError};

#[derive(Debug, Default)]
struct State {
    records: BTreeMap<ConversionId, Conversion>,
    by_key: HashMap<(String, String), ConversionId>,
    /// Records by status, kept up to date so that counting does not walk every record.
    counts: BTreeMap<Status, u64>,
}

impl State {
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
                conversion: existing.clone(),
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
        state.records.insert(record.id, record.clone());
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
            .cloned()
            .ok_or(StoreError::NotFound { id })
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let limit = query.effective_limit();
        let state = self.state.lock();
        let items: Vec<Conversion> = match query.cursor {
            Some(cur) => state.records.range(..cur).rev(),
            None => state.records.range(..).rev(),
        }
        .map(|(_, c)| c)
        .filter(|c| query.matches(c))
        .take(limit + 1)
        .cloned()
        .collect();
        Ok(Page::from_overfetch(items, limit))
    }

    async fn transition(
        &self,
        id: ConversionId,
        transition: &Transition,
    ) -> Result<Conversion, StoreError> {
        let mut state = self.state.lock();
        let record = state
            .records
            .get_mut(&id)
            .ok_or(StoreError::NotFound { id })?;
        let mut next = record.clone();
        transition.apply(&mut next, Utc::now())?;
        let before = record.status;
        *record = next.clone();
        if before != next.status {
            state.count(before, false);
            state.count(next.status, true);
        }
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
        Ok(record)
    }

    async fn count_by_status(&self) -> Result<BTreeMap<Status, u64>, StoreError> {
        Ok(self.state.lock().counts.clone())
    }
}
