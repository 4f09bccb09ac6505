//! converto's backends and converters. Each is behind its own cargo feature, so a deployment
//! compiles only what it uses:
//!
//! | feature | provides |
//! |---|---|
//! | `local` | [`local::LocalBlobStore`]: blobs on local disk |
//! | `sqlite` | SQLite `ConversionStore` and `JobQueue` (the embedded default) |
//! | `postgres` | PostgreSQL `ConversionStore`, `JobQueue` and `ProgressBus` |
//! | `redis` | Redis `JobQueue` and `ProgressBus` |
//! | `rabbitmq` | RabbitMQ `JobQueue` (AMQP 0.9.1) |
//! | `s3` | an `object_store` `BlobStore` (S3 and S3-compatible, file, memory) |
//! | `process` | a converter that runs any external program |
//! | `mesh` | built-in STL/OBJ/PLY converter |
//! | `image` | built-in image converter (JPEG, PNG, WebP, GIF, BMP, TIFF) |
//! | `webhooks` | the webhook HTTP client (reqwest on rustls; private addresses refused after DNS) |

#[cfg(feature = "image")]
pub mod image;
#[cfg(feature = "local")]
pub mod local;
#[cfg(feature = "mesh")]
pub mod mesh;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "process")]
pub mod process;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(any(
    feature = "postgres",
    feature = "redis",
    feature = "rabbitmq",
    feature = "s3"
))]
mod settings;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql_rows;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "webhooks")]
pub mod webhooks;
