//! The in-memory key store runs the `KeyStore` conformance suite.

use std::sync::Arc;

use converto_core::keys::{DynKeyStore, KeyStore};
use converto_core::memory::MemoryKeyStore;
use converto_core::testkit::keys::run_key_store_suite;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_key_store_conforms() {
    run_key_store_suite(async || Arc::new(MemoryKeyStore::new()) as Arc<dyn KeyStore>).await;
}

/// The trait is usable as a trait object and generically.
#[test]
fn key_store_is_object_safe() {
    fn takes_dyn(_: &DynKeyStore) {}
    fn takes_generic<K: KeyStore>(k: &K) -> usize {
        std::mem::size_of_val(k)
    }
    let store = MemoryKeyStore::new();
    takes_dyn(&store);
    let _ = takes_generic(&store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_tenant_store_conforms() {
    use converto_core::memory::MemoryTenantStore;
    use converto_core::tenants::TenantStore;
    converto_core::testkit::tenants::run_tenant_store_suite(async || {
        Arc::new(MemoryTenantStore::new()) as Arc<dyn TenantStore>
    })
    .await;
}
