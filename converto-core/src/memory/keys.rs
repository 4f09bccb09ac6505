use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{SubsecRound, Utc};
use parking_lot::Mutex;

use crate::keys::{ApiKey, KeyHash, KeyStore, KeyStoreError, NewApiKey};

#[derive(Debug, Default)]
struct State {
    keys: Vec<ApiKey>,
    by_hash: HashMap<KeyHash, usize>,
}

/// API keys in memory (for tests and embedding: they are gone with the process).
#[derive(Debug, Default)]
pub struct MemoryKeyStore {
    state: Mutex<State>,
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl KeyStore for MemoryKeyStore {
    async fn create(&self, key: NewApiKey) -> Result<ApiKey, KeyStoreError> {
        let mut state = self.state.lock();
        if state.by_hash.contains_key(&key.hash) || state.keys.iter().any(|k| k.id == key.id) {
            return Err(KeyStoreError::AlreadyExists { id: key.id });
        }
        let record = ApiKey::from_new(&key);
        let index = state.keys.len();
        state.keys.push(record.clone());
        state.by_hash.insert(key.hash, index);
        Ok(record)
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKey>, KeyStoreError> {
        let state = self.state.lock();
        Ok(state
            .by_hash
            .get(hash)
            .and_then(|i| state.keys.get(*i))
            .cloned())
    }

    async fn list(&self) -> Result<Vec<ApiKey>, KeyStoreError> {
        let mut keys = self.state.lock().keys.clone();
        keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(keys)
    }

    async fn revoke(&self, id: &str) -> Result<ApiKey, KeyStoreError> {
        let mut state = self.state.lock();
        let key = state
            .keys
            .iter_mut()
            .find(|k| k.id == id)
            .ok_or_else(|| KeyStoreError::NotFound { id: id.to_owned() })?;
        if key.revoked_at.is_none() {
            key.revoked_at = Some(Utc::now().trunc_subsecs(6));
        }
        Ok(key.clone())
    }
}
