//! Turns [`Settings`] into running backends, converters and an engine.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use converto_core::blob::BlobStore;
use converto_core::memory::{
    MemoryBlobStore, MemoryConversionStore, MemoryJobQueue, MemoryProgressBus,
};
use converto_core::progress::ProgressBus;
use converto_core::queue::JobQueue;
use converto_core::store::ConversionStore;
use converto_core::webhook::{WebhookStore, Webhooks};
use converto_core::{Backends, ConverterRegistry, Engine, EngineConfig};

use crate::config::Settings;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A backend URL names a scheme this build does not support.
    #[error("{what} {url:?}: unsupported (this build supports: {supported})")]
    Unsupported {
        /// Which backend.
        what: &'static str,
        /// The URL given.
        url: String,
        /// What would work.
        supported: String,
    },
    /// A backend could not be opened.
    #[error("{what} {url:?}: {source}")]
    Backend {
        /// Which backend.
        what: &'static str,
        /// The URL (credentials removed).
        url: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A converter could not be configured.
    #[error("converter configuration: {0}")]
    Converter(Box<dyn std::error::Error + Send + Sync>),
    /// A setting is out of its range.
    #[error("settings: {0}")]
    Settings(Box<dyn std::error::Error + Send + Sync>),
    /// I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A backend URL fit for logs and messages: the password of `scheme://user:password@host` and
/// the values of secret-looking query parameters (`password`, `secret`, `token`, `key`, ...)
/// replaced with `***`.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((creds, host)) => match creds.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if is_secret_param(k) => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{}{authority}{tail}", &url[..scheme_end])
}

fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "credential",
        "auth",
    ]
    .iter()
    .any(|w| name.contains(w))
}

#[allow(dead_code)] // used by the backends some builds leave out
fn backend_err(
    what: &'static str,
    url: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> StartError {
    StartError::Backend {
        what,
        url: redact(url),
        source: Box::new(e),
    }
}

/// Opened backends, shared where two roles use the same database.
#[derive(Default)]
struct Opened {
    #[cfg(feature = "sqlite")]
    sqlite: HashMap<String, converto_adapters::sqlite::SqliteBackend>,
    #[cfg(feature = "postgres")]
    postgres: HashMap<String, converto_adapters::postgres::PostgresBackend>,
    #[cfg(feature = "redis")]
    redis: HashMap<String, converto_adapters::redis::RedisBackend>,
    _unused: HashMap<String, ()>,
}

#[allow(dead_code)] // used by the backends some builds leave out
fn sqlite_path(url: &str) -> Option<&str> {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
}

#[allow(dead_code)] // used by the backends some builds leave out
fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

#[allow(dead_code)] // used by the backends some builds leave out
fn is_redis(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("rediss://")
}

/// The `--store` database: the conversions live there, and beside them the API keys, the
/// tenant overrides and the webhooks.
enum StoreDatabase {
    Memory,
    #[cfg(feature = "sqlite")]
    Sqlite(converto_adapters::sqlite::SqliteBackend),
    #[cfg(feature = "postgres")]
    Postgres(converto_adapters::postgres::PostgresBackend),
}

impl Opened {
    #[cfg(feature = "sqlite")]
    async fn sqlite(
        &mut self,
        url: &str,
        what: &'static str,
    ) -> Result<converto_adapters::sqlite::SqliteBackend, StartError> {
        if let Some(b) = self.sqlite.get(url) {
            return Ok(b.clone());
        }
        if let Some(path) = sqlite_path(url)
            && let Some(parent) = std::path::Path::new(path)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
        {
            tokio::fs::create_dir_all(parent).await?;
        }
        let b = converto_adapters::sqlite::SqliteBackend::connect(url)
            .await
            .map_err(|e| backend_err(what, url, e))?;
        self.sqlite.insert(url.to_owned(), b.clone());
        Ok(b)
    }

    #[cfg(feature = "postgres")]
    async fn postgres(
        &mut self,
        url: &str,
        what: &'static str,
    ) -> Result<converto_adapters::postgres::PostgresBackend, StartError> {
        if let Some(b) = self.postgres.get(url) {
            return Ok(b.clone());
        }
        // The URL comes from the flag; the schema and pool settings from CONVERTO_POSTGRES_*.
        let config = converto_adapters::postgres::PostgresConfig::from_env_with_url(url)
            .map_err(|e| backend_err(what, url, e))?;
        let b = converto_adapters::postgres::PostgresBackend::connect(config)
            .await
            .map_err(|e| backend_err(what, url, e))?;
        self.postgres.insert(url.to_owned(), b.clone());
        Ok(b)
    }

    #[cfg(feature = "redis")]
    async fn redis(
        &mut self,
        url: &str,
        what: &'static str,
    ) -> Result<converto_adapters::redis::RedisBackend, StartError> {
        if let Some(b) = self.redis.get(url) {
            return Ok(b.clone());
        }
        // The URL comes from the flag; the key prefix and timeouts from CONVERTO_REDIS_*.
        let config = converto_adapters::redis::RedisConfig::from_env()
            .map_err(|e| backend_err(what, url, e))?
            .url(url);
        let b = converto_adapters::redis::RedisBackend::connect(config)
            .await
            .map_err(|e| backend_err(what, url, e))?;
        self.redis.insert(url.to_owned(), b.clone());
        Ok(b)
    }

    /// Opens the `--store` database; `what` names it in a backend error.
    async fn store_database(
        &mut self,
        url: &str,
        what: &'static str,
    ) -> Result<StoreDatabase, StartError> {
        match url {
            "memory" => Ok(StoreDatabase::Memory),
            #[cfg(feature = "sqlite")]
            u if sqlite_path(u).is_some() => Ok(StoreDatabase::Sqlite(self.sqlite(u, what).await?)),
            #[cfg(feature = "postgres")]
            u if is_postgres(u) => Ok(StoreDatabase::Postgres(self.postgres(u, what).await?)),
            u => {
                let _ = what; // read by the backends some builds leave out
                Err(unsupported("store", u))
            }
        }
    }
}

/// A URL the configuration names that this build cannot open.
fn unsupported(what: &'static str, url: &str) -> StartError {
    StartError::Unsupported {
        what,
        url: redact(url),
        supported: supported(what),
    }
}

/// What this build supports, listed in "unsupported" errors: only the schemes compiled in.
fn supported(what: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let sqlite = cfg!(feature = "sqlite");
    let postgres = cfg!(feature = "postgres");
    let redis = cfg!(feature = "redis");
    let rabbitmq = cfg!(feature = "rabbitmq");
    match what {
        "store" => {
            out.extend(sqlite.then_some("sqlite://PATH"));
            out.extend(postgres.then_some("postgres://..."));
        }
        "queue" => {
            out.extend(sqlite.then_some("sqlite://PATH"));
            out.extend(postgres.then_some("postgres://..."));
            out.extend(redis.then_some("redis://..."));
            out.extend(rabbitmq.then_some("amqp://..."));
        }
        "progress" => {
            out.extend(postgres.then_some("postgres://..."));
            out.extend(redis.then_some("redis://..."));
        }
        _ => {
            out.extend(cfg!(feature = "local").then_some("a directory, file:///DIR"));
            out.extend(cfg!(feature = "s3").then_some("s3://BUCKET/PREFIX"));
        }
    }
    out.push("memory");
    out.join(", ")
}

/// A RabbitMQ queue: the URL from the flag, the prefix and prefetch from CONVERTO_RABBITMQ_*.
/// A process without workers holds no jobs (it would keep them from the workers).
#[cfg(feature = "rabbitmq")]
async fn rabbitmq_queue(url: &str, no_workers: bool) -> Result<Arc<dyn JobQueue>, StartError> {
    let config = converto_adapters::rabbitmq::RabbitConfig::from_env()
        .map_err(|e| backend_err("queue", url, e))?
        .url(url)
        .consume(!no_workers);
    let queue = converto_adapters::rabbitmq::RabbitJobQueue::connect(config)
        .await
        .map_err(|e| backend_err("queue", url, e))?;
    Ok(Arc::new(queue))
}

/// Opens the four backends the settings name.
pub async fn open_backends(s: &Settings) -> Result<Backends, StartError> {
    let mut opened = Opened::default();
    let store: Arc<dyn ConversionStore> = match opened.store_database(&s.store, "store").await? {
        StoreDatabase::Memory => Arc::new(MemoryConversionStore::new()),
        #[cfg(feature = "sqlite")]
        StoreDatabase::Sqlite(b) => b.store(),
        #[cfg(feature = "postgres")]
        StoreDatabase::Postgres(b) => b.store(),
    };
    let queue: Arc<dyn JobQueue> = match s.queue.as_str() {
        "memory" => Arc::new(MemoryJobQueue::new()),
        #[cfg(feature = "sqlite")]
        u if sqlite_path(u).is_some() => opened.sqlite(u, "queue").await?.queue(),
        #[cfg(feature = "postgres")]
        u if is_postgres(u) => opened.postgres(u, "queue").await?.queue(),
        #[cfg(feature = "redis")]
        u if is_redis(u) => opened.redis(u, "queue").await?.queue(),
        #[cfg(feature = "rabbitmq")]
        u if u.starts_with("amqp://") => rabbitmq_queue(u, s.no_workers).await?,
        u => return Err(unsupported("queue", u)),
    };
    let bus: Arc<dyn ProgressBus> = match s.progress.as_str() {
        "memory" => Arc::new(MemoryProgressBus::new()),
        #[cfg(feature = "postgres")]
        u if is_postgres(u) => opened.postgres(u, "progress").await?.bus(),
        #[cfg(feature = "redis")]
        u if is_redis(u) => opened.redis(u, "progress").await?.bus(),
        u => return Err(unsupported("progress", u)),
    };
    let blobs: Arc<dyn BlobStore> = match s.blobs.as_str() {
        "memory" => Arc::new(MemoryBlobStore::new()),
        #[cfg(feature = "s3")]
        u if u.starts_with("s3://") => {
            let cfg = s3_config(s).map_err(|source| StartError::Backend {
                what: "blobs",
                url: redact(u),
                source,
            })?;
            Arc::new(
                converto_adapters::s3::ObjectBlobStore::from_url(u, &cfg)
                    .map_err(|e| backend_err("blobs", u, e))?,
            )
        }
        #[cfg(feature = "local")]
        u if !u.contains("://") || u.starts_with("file://") => {
            let dir = u.strip_prefix("file://").unwrap_or(u);
            Arc::new(
                converto_adapters::local::LocalBlobStore::open(dir)
                    .await
                    .map_err(|e| backend_err("blobs", u, e))?,
            )
        }
        u => return Err(unsupported("blobs", u)),
    };
    Ok(Backends {
        store,
        queue,
        bus,
        blobs,
    })
}

/// The S3 configuration: flags and `CONVERTO_S3_*` variables, then the `AWS_*` variables,
/// then the file's `[s3]` table. Flags and file are tables of the adapter's own
/// [`S3Config`](converto_adapters::s3::S3Config) fields; a field is taken from one of them only
/// where it names it.
#[cfg(feature = "s3")]
fn s3_config(
    s: &Settings,
) -> Result<converto_adapters::s3::S3Config, Box<dyn std::error::Error + Send + Sync>> {
    use converto_adapters::s3::S3Config;
    let table = |t: &toml::Table| -> Result<S3Config, toml::de::Error> {
        toml::Value::Table(t.clone()).try_into()
    };
    let (flags, file) = (table(&s.s3_flags)?, table(&s.s3_file)?);
    let has = |t: &toml::Table, k: &str| t.contains_key(k);
    let mut cfg = S3Config::from_env()?;
    // Flags beat the environment; the file fills what neither names.
    macro_rules! layer {
        ($($field:ident),*) => {$(
            if has(&s.s3_flags, stringify!($field)) {
                cfg.$field = flags.$field.clone();
            } else if cfg.$field.is_none() {
                cfg.$field = file.$field.clone();
            }
        )*};
    }
    layer!(
        region,
        endpoint,
        allow_http,
        virtual_hosted_style,
        access_key_id,
        secret_access_key,
        session_token
    );
    // Part sizes have no AWS_* variable: flag or CONVERTO_S3_* variable, then the file.
    if has(&s.s3_flags, "part_size") {
        cfg.part_size = flags.part_size;
    } else if has(&s.s3_file, "part_size") {
        cfg.part_size = file.part_size;
    }
    if has(&s.s3_flags, "max_parts_in_flight") {
        cfg.max_parts_in_flight = flags.max_parts_in_flight;
    } else if has(&s.s3_file, "max_parts_in_flight") {
        cfg.max_parts_in_flight = file.max_parts_in_flight;
    }
    Ok(cfg)
}

/// Refuses the memory store for a command that keeps `what` in the `--store` database: the
/// memory store would forget them when the command ends.
pub(crate) fn require_lasting_store(s: &Settings, what: &str) -> Result<(), String> {
    if s.store == "memory" {
        return Err(format!(
            "the memory store keeps nothing after this command ends; {what} need a SQLite or \
             PostgreSQL --store"
        ));
    }
    Ok(())
}

/// The API keys kept in the `--store` database (a SQLite or PostgreSQL store; `memory` keeps
/// keys only as long as the process).
pub async fn open_key_store(
    s: &Settings,
) -> Result<Arc<dyn converto_core::keys::KeyStore>, StartError> {
    let database = Opened::default().store_database(&s.store, "store").await?;
    Ok(match database {
        StoreDatabase::Memory => Arc::new(converto_core::memory::MemoryKeyStore::new()),
        #[cfg(feature = "sqlite")]
        StoreDatabase::Sqlite(b) => b.keys(),
        #[cfg(feature = "postgres")]
        StoreDatabase::Postgres(b) => b.keys(),
    })
}

/// Opens the per-tenant limit overrides (`converto tenants set`) kept in the `--store`
/// database (in memory for the memory store: nothing survives the process there).
pub async fn open_tenant_store(
    s: &Settings,
) -> Result<Arc<dyn converto_core::tenants::TenantStore>, StartError> {
    let database = Opened::default().store_database(&s.store, "store").await?;
    Ok(match database {
        StoreDatabase::Memory => Arc::new(converto_core::memory::MemoryTenantStore::new()),
        #[cfg(feature = "sqlite")]
        StoreDatabase::Sqlite(b) => b.tenants(),
        #[cfg(feature = "postgres")]
        StoreDatabase::Postgres(b) => b.tenants(),
    })
}

/// Every tenant's limits as the service and its workers read them: the overrides in the
/// tenant store over the configuration's (`[tenants.NAME]`, then `[tenant_defaults]`, then the
/// built-in defaults), each override cached for
/// [`OVERRIDE_CACHE_TTL`](converto_core::tenants::OVERRIDE_CACHE_TTL).
pub async fn limits(
    s: &Settings,
) -> Result<Arc<dyn converto_core::tenants::LimitSource>, StartError> {
    let store = open_tenant_store(s).await?;
    Ok(Arc::new(converto_core::tenants::StoredLimits::new(
        s.limits.clone(),
        store,
    )))
}

/// Runs the migrations of every SQL backend the settings name.
pub async fn migrate(s: &Settings) -> Result<Vec<String>, StartError> {
    // Opening runs the migrations; report what was migrated.
    let _ = open_backends(s).await?;
    let mut done = vec![redact(&s.store)];
    if s.queue != s.store {
        done.push(redact(&s.queue));
    }
    Ok(done)
}

/// Every converter built into this binary, the STEP and IGES routes when OpenCASCADE's `occt-draw`
/// is installed, plus the external-program routes configured.
///
/// With [`Isolation::Process`](crate::isolate::Isolation) (the default) each built-in converter
/// is wrapped in an [`IsolatedConverter`](crate::isolate::IsolatedConverter): its conversions
/// run in a child process with the job limits. External-program routes already run a separate
/// program and are not wrapped.
pub fn registry(s: &Settings) -> Result<ConverterRegistry, StartError> {
    #[allow(unused_mut)]
    let mut reg = ConverterRegistry::new();
    let isolation = match s.isolation {
        crate::isolate::Isolation::None => None,
        crate::isolate::Isolation::Process => Some(Arc::new(
            crate::isolate::IsolationSettings::this_executable(
                crate::isolate::ChildLimits {
                    memory_bytes: s.job_memory_limit,
                    cpu_seconds: s.job_cpu_limit.map(|d| d.as_secs().max(1)),
                },
                BuiltinConfig::from_settings(s),
            )?,
        )),
    };
    for converter in builtin_converters(&BuiltinConfig::from_settings(s))? {
        match &isolation {
            Some(settings) => reg.register(Arc::new(crate::isolate::IsolatedConverter::new(
                converter,
                Arc::clone(settings),
            ))),
            None => reg.register(converter),
        };
    }
    // STEP and IGES through OpenCASCADE, when `occt-draw` is installed. Route files given with
    // `--routes` are registered after, so they take over the pairs they share.
    #[cfg(feature = "process")]
    {
        use converto_adapters::process::occt;
        match occt::detect() {
            occt::Detection::Found(program) => {
                let conv =
                    occt::converter(&program).map_err(|e| StartError::Converter(Box::new(e)))?;
                let note = format!(
                    "STEP and IGES routes on: {} (step, iges -> stl; stl -> step, iges; other mesh formats by chaining)",
                    program.display()
                );
                tracing::info!("{note}");
                reg.set_note("cad", note);
                reg.register(Arc::new(conv));
            }
            occt::Detection::Missing(why) => {
                tracing::warn!("{why}");
                reg.set_note("cad", why);
            }
        }
    }
    #[cfg(feature = "process")]
    for path in &s.routes {
        let conv = converto_adapters::process::ProcessConverter::from_toml_file(path)
            .map_err(|e| StartError::Converter(Box::new(e)))?;
        reg.register(Arc::new(conv));
    }
    #[cfg(not(feature = "process"))]
    if !s.routes.is_empty() {
        return Err(StartError::Unsupported {
            what: "routes",
            url: format!("{:?}", s.routes),
            supported: "nothing: built without the process feature".into(),
        });
    }
    Ok(reg)
}

/// The converters compiled into this binary (not the external-program routes).
///
/// `converto __child` builds them again, by name, to run one isolated conversion
/// ([`crate::isolate`]): a built-in converter must therefore be built the same way in both
/// processes. Configuration it takes from [`Settings`] has to travel in the child's
/// [`JobSpec`](crate::isolate::JobSpec).
pub fn builtin_converters(
    config: &BuiltinConfig,
) -> Result<Vec<Arc<dyn converto_core::Converter>>, StartError> {
    #[allow(unused_mut)]
    let mut converters: Vec<Arc<dyn converto_core::Converter>> = Vec::new();
    #[cfg(feature = "mesh")]
    {
        let limits: converto_adapters::mesh::MeshLimits = toml::Value::Table(config.mesh.clone())
            .try_into()
            .map_err(|e| StartError::Converter(Box::new(e)))?;
        converters.push(Arc::new(
            converto_adapters::mesh::MeshConverter::with_limits(limits),
        ));
    }
    #[cfg(feature = "image")]
    {
        let image: converto_adapters::image::ImageConfig = toml::Value::Table(config.image.clone())
            .try_into()
            .map_err(|e| StartError::Converter(Box::new(e)))?;
        converters.push(Arc::new(converto_adapters::image::ImageConverter::new(
            image,
        )));
    }
    #[cfg(feature = "crash-test-converters")]
    converters.extend(crate::crash_test::converters());
    let _ = config;
    Ok(converters)
}

/// The built-in converters' settings: the file's `[mesh]` table (the mesh adapter's
/// `MeshLimits`) and `[image]` table (the image adapter's `ImageConfig`), passed as they are to
/// the adapters, and to each isolated child so it builds the same converters.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BuiltinConfig {
    /// `MeshLimits` fields.
    #[serde(default)]
    pub mesh: toml::Table,
    /// `ImageConfig` fields.
    #[serde(default)]
    pub image: toml::Table,
}

impl BuiltinConfig {
    /// The settings' tables.
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            mesh: s.mesh.clone(),
            image: s.image.clone(),
        }
    }
}

/// The engine configuration the settings give.
pub fn engine_config(s: &Settings) -> EngineConfig {
    let mut c = EngineConfig::default()
        .job_timeout(s.job_timeout)
        .max_queue_wait(s.max_queue_wait)
        .max_attempts(s.max_attempts)
        .lease_duration(s.lease)
        .scratch_dir(s.data_dir.join("scratch"))
        .max_input_bytes(Some(s.max_upload_bytes));
    if let Some(n) = s.concurrency {
        c = c.concurrency(n);
    }
    c
}

/// The `[webhooks]` table of the configuration file.
///
/// ```toml
/// [webhooks]
/// enabled = true                # default
/// allow = ["10.1.0.0/16"]       # private networks webhooks may reach (default: none)
/// timeout_secs = 15             # per request, connection to last byte
/// max_response_bytes = 65536    # read from an answer, then discarded
/// backoff_base_secs = 5         # the first retry's delay, doubling to 1 h, for 25 h
/// ```
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Webhooks on (submit accepts `webhook_url`, `/v1/webhooks` answers, deliveries run
    /// beside the workers).
    pub enabled: bool,
    /// CIDRs of non-public networks webhooks may reach.
    pub allow: Vec<String>,
    /// The bound on one request.
    pub timeout_secs: f64,
    /// How much of an answer is read.
    pub max_response_bytes: usize,
    /// The first retry's delay.
    pub backoff_base_secs: f64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let client = converto_adapters::webhooks::WebhookClientConfig::default();
        Self {
            enabled: true,
            allow: client.allow,
            timeout_secs: client.timeout.as_secs_f64(),
            max_response_bytes: client.max_response_bytes,
            backoff_base_secs: converto_core::webhook::WebhookConfig::default()
                .backoff_base
                .as_secs_f64(),
        }
    }
}

fn secs(field: &str, v: f64) -> Result<Duration, StartError> {
    Duration::try_from_secs_f64(v)
        .map_err(|e| StartError::Settings(format!("[webhooks] {field}: {e}").into()))
}

/// The webhook service, kept where the store is: its tables in the store's database, and its
/// delivery queue a second queue of the same kind beside it (a `<file>.webhooks` SQLite file,
/// or the `<schema>_wh` PostgreSQL schema, see [`webhook_schema`]), never the conversions' queue. With the
/// `memory` store both are in memory.
pub async fn webhooks(s: &Settings) -> Result<Option<Arc<Webhooks>>, StartError> {
    let ws: WebhookSettings = s
        .webhooks
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| StartError::Settings(Box::new(e)))?;
    if !ws.enabled {
        return Ok(None);
    }
    let client = converto_adapters::webhooks::WebhookClientConfig {
        allow: ws.allow.clone(),
        timeout: secs("timeout_secs", ws.timeout_secs)?,
        max_response_bytes: ws.max_response_bytes,
    };
    let transport = converto_adapters::webhooks::HttpWebhookTransport::new(&client)
        .map_err(|e| StartError::Settings(Box::new(e)))?;
    let config = converto_core::webhook::WebhookConfig {
        backoff_base: secs("backoff_base_secs", ws.backoff_base_secs)?,
        lease: client
            .timeout
            .saturating_mul(2)
            .max(Duration::from_secs(30)),
        ..Default::default()
    };
    let mut opened = Opened::default();
    let database = opened.store_database(&s.store, "webhook store").await?;
    let (store, queue): (Arc<dyn WebhookStore>, Arc<dyn JobQueue>) = match database {
        StoreDatabase::Memory => (
            Arc::new(converto_core::webhook::MemoryWebhookStore::new()),
            Arc::new(converto_core::memory::MemoryJobQueue::new()),
        ),
        #[cfg(feature = "sqlite")]
        StoreDatabase::Sqlite(b) => {
            let queue: Arc<dyn JobQueue> = match sqlite_path(&s.store) {
                Some(p) if !p.contains(":memory:") && !p.starts_with("memory") => {
                    let q = format!("sqlite://{}.webhooks", p.split('?').next().unwrap_or(p));
                    opened.sqlite(&q, "webhook queue").await?.queue()
                }
                _ => Arc::new(converto_core::memory::MemoryJobQueue::new()),
            };
            (b.webhooks(), queue)
        }
        #[cfg(feature = "postgres")]
        StoreDatabase::Postgres(b) => {
            let u = s.store.as_str();
            let config = converto_adapters::postgres::PostgresConfig::from_env_with_url(u)
                .map_err(|e| backend_err("webhook queue", u, e))?;
            let schema = webhook_schema(&config.schema);
            let queue =
                converto_adapters::postgres::PostgresBackend::connect(config.schema(schema))
                    .await
                    .map_err(|e| backend_err("webhook queue", u, e))?;
            (b.webhooks(), queue.queue())
        }
    };
    let render: converto_core::webhook::Renderer = Arc::new(|c| {
        serde_json::to_value(crate::api::views::ConversionView::from(c))
            .unwrap_or(serde_json::Value::Null)
    });
    Ok(Some(Arc::new(
        Webhooks::new(store, queue, Arc::new(transport), config).with_renderer(render),
    )))
}

/// Builds the engine.
pub async fn engine(s: &Settings) -> Result<Engine, StartError> {
    let backends = open_backends(s).await?;
    let registry = registry(s)?;
    let mut builder = Engine::builder()
        .backends(backends)
        .registry(registry)
        .config(engine_config(s))
        .limits(limits(s).await?);
    if let Some(w) = webhooks(s).await? {
        builder = builder.webhooks(w);
    }
    // Without a configured secret, the engine keeps a generated one in the blob store.
    if let Some(secret) = &s.upload_secret {
        let signer = converto_core::intake::UploadSigner::new(secret.expose().as_bytes())
            .map_err(|e| StartError::Settings(Box::new(e)))?;
        builder = builder.upload_signer(signer);
    }
    builder
        .build()
        .map_err(|e| StartError::Settings(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("postgres://u@h/db?sslmode=require&password=hunter2"),
            "postgres://u@h/db?sslmode=require&password=***"
        );
        assert_eq!(redact("redis://:p%40ss@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("s3://bucket/a@b"), "s3://bucket/a@b");
        assert_eq!(redact("/var/lib/converto"), "/var/lib/converto");
    }
}

/// The PostgreSQL schema of the webhook delivery queue beside the store's `schema`: `<schema>_wh`,
/// or, when that would pass the 50 characters a schema may have, the first 38 characters, an
/// underscore, 8 hex digits of the schema's SHA-256 and `_wh` (so two long names that share
/// their first 38 characters still get different queues). What to drop beside the store's
/// schema when removing a deployment.
#[cfg(feature = "postgres")]
pub fn webhook_schema(schema: &str) -> String {
    const MAX: usize = 50;
    if schema.len() + 3 <= MAX {
        return format!("{schema}_wh");
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(schema.as_bytes());
    // Schema names are ASCII (checked by the config), so byte 38 is a character boundary.
    let head = schema.get(..38).unwrap_or(schema);
    format!("{head}_{}_wh", hex::encode(&digest[..4]))
}

#[cfg(all(test, feature = "postgres"))]
mod webhook_schema_tests {
    use super::webhook_schema;

    #[test]
    fn every_store_schema_gets_a_valid_distinct_queue_schema() {
        assert_eq!(webhook_schema("converto"), "converto_wh");
        let long_a = format!("{}a", "s".repeat(49));
        let long_b = format!("{}b", "s".repeat(49));
        let (a, b) = (webhook_schema(&long_a), webhook_schema(&long_b));
        assert_eq!(a.len(), 50);
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        );
    }
}
