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

/// Reads a yes/no setting: `true`, `1`, `yes`, `on` or `false`, `0`, `no`, `off`, in any case
/// and with surrounding blanks; anything else is `None`.
#[cfg(any(feature = "postgres", feature = "s3", feature = "rabbitmq"))]
pub(crate) fn parse_switch(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

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
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "webhooks")]
pub mod webhooks;
