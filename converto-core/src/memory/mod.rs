//! In-memory backends: for tests, embedding and single-process use. Nothing survives the process.

mod blob;
pub(crate) mod ids;
mod keys;
mod progress;
mod queue;
mod store;
mod tenants;

pub use blob::MemoryBlobStore;
pub(crate) use ids::IdMap;
pub use keys::MemoryKeyStore;
pub use progress::MemoryProgressBus;
pub use queue::MemoryJobQueue;
pub use store::MemoryConversionStore;
pub use tenants::MemoryTenantStore;
