//! The in-memory [`WebhookStore`].

use std::collections::{BTreeMap, HashMap, VecDeque};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    Attempt, Endpoint, Message, MessageState, Secrets, Subscription, WebhookError, WebhookStore,
};
use crate::ConversionId;

#[derive(Debug, Default)]
struct State {
    /// By id; ids are time-ordered, so this is creation order.
    endpoints: BTreeMap<String, Endpoint>,
    tenant_secrets: HashMap<String, Secrets>,
    subscriptions: HashMap<ConversionId, Subscription>,
    messages: HashMap<ConversionId, Message>,
    attempts: HashMap<ConversionId, VecDeque<Attempt>>,
}

/// Webhook state in memory, for one process (tests, embedding).
#[derive(Debug, Default)]
pub struct MemoryWebhookStore {
    state: Mutex<State>,
}

impl MemoryWebhookStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl WebhookStore for MemoryWebhookStore {
    async fn create_endpoint(&self, endpoint: &Endpoint) -> Result<(), WebhookError> {
        self.state
            .lock()
            .endpoints
            .insert(endpoint.id.clone(), endpoint.clone());
        Ok(())
    }

    async fn endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, WebhookError> {
        Ok(self
            .state
            .lock()
            .endpoints
            .values()
            .filter(|e| e.tenant == tenant)
            .cloned()
            .collect())
    }

    async fn endpoint(&self, tenant: &str, id: &str) -> Result<Option<Endpoint>, WebhookError> {
        Ok(self
            .state
            .lock()
            .endpoints
            .get(id)
            .filter(|e| e.tenant == tenant)
            .cloned())
    }

    async fn delete_endpoint(&self, tenant: &str, id: &str) -> Result<bool, WebhookError> {
        let mut s = self.state.lock();
        if s.endpoints.get(id).is_some_and(|e| e.tenant == tenant) {
            s.endpoints.remove(id);
            return Ok(true);
        }
        Ok(false)
    }

    async fn set_endpoint_secrets(
        &self,
        tenant: &str,
        id: &str,
        secrets: &Secrets,
    ) -> Result<bool, WebhookError> {
        let mut s = self.state.lock();
        match s.endpoints.get_mut(id).filter(|e| e.tenant == tenant) {
            Some(e) => {
                e.secrets = secrets.clone();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn disable_endpoint(
        &self,
        tenant: &str,
        id: &str,
        reason: &str,
    ) -> Result<(), WebhookError> {
        let mut s = self.state.lock();
        if let Some(e) = s.endpoints.get_mut(id).filter(|e| e.tenant == tenant) {
            e.enabled = false;
            e.disabled_reason = Some(reason.to_owned());
        }
        Ok(())
    }

    async fn tenant_secrets(&self, tenant: &str) -> Result<Option<Secrets>, WebhookError> {
        Ok(self.state.lock().tenant_secrets.get(tenant).cloned())
    }

    async fn init_tenant_secrets(
        &self,
        tenant: &str,
        secrets: &Secrets,
    ) -> Result<Secrets, WebhookError> {
        Ok(self
            .state
            .lock()
            .tenant_secrets
            .entry(tenant.to_owned())
            .or_insert_with(|| secrets.clone())
            .clone())
    }

    async fn set_tenant_secrets(
        &self,
        tenant: &str,
        secrets: &Secrets,
    ) -> Result<(), WebhookError> {
        self.state
            .lock()
            .tenant_secrets
            .insert(tenant.to_owned(), secrets.clone());
        Ok(())
    }

    async fn subscribe(&self, sub: &Subscription) -> Result<(), WebhookError> {
        self.state
            .lock()
            .subscriptions
            .insert(sub.conversion, sub.clone());
        Ok(())
    }

    async fn subscription(&self, id: ConversionId) -> Result<Option<Subscription>, WebhookError> {
        Ok(self.state.lock().subscriptions.get(&id).cloned())
    }

    async fn put_message(&self, message: &Message) -> Result<MessageState, WebhookError> {
        Ok(self
            .state
            .lock()
            .messages
            .entry(message.id)
            .or_insert_with(|| message.clone())
            .state)
    }

    async fn message(&self, id: ConversionId) -> Result<Option<Message>, WebhookError> {
        Ok(self.state.lock().messages.get(&id).cloned())
    }

    async fn set_message_state(
        &self,
        id: ConversionId,
        state: MessageState,
    ) -> Result<(), WebhookError> {
        if let Some(m) = self.state.lock().messages.get_mut(&id) {
            m.state = state;
        }
        Ok(())
    }

    async fn record_attempt(&self, attempt: &Attempt, keep: usize) -> Result<(), WebhookError> {
        let mut s = self.state.lock();
        let list = s.attempts.entry(attempt.conversion).or_default();
        list.push_back(attempt.clone());
        while list.len() > keep.max(1) {
            list.pop_front();
        }
        Ok(())
    }

    async fn attempts(
        &self,
        tenant: &str,
        conversion: ConversionId,
    ) -> Result<Vec<Attempt>, WebhookError> {
        Ok(self
            .state
            .lock()
            .attempts
            .get(&conversion)
            .map(|l| l.iter().filter(|a| a.tenant == tenant).cloned().collect())
            .unwrap_or_default())
    }

    async fn forget_conversion(&self, id: ConversionId) -> Result<(), WebhookError> {
        let mut s = self.state.lock();
        s.subscriptions.remove(&id);
        s.attempts.remove(&id);
        s.messages
            .retain(|_, m| m.conversion != id || m.state == MessageState::Pending);
        Ok(())
    }
}
