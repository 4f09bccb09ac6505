//! Configuration: flags, then `CONVERTO_*` environment variables, then an optional TOML file,
//! then defaults (in that order of precedence).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

/// The `converto` command line.
#[derive(Debug, Parser)]
#[command(
    name = "converto",
    version,
    about = "Durable file conversion jobs: the service, its workers, and a one-shot converter."
)]
pub struct Cli {
    /// A TOML configuration file (keys as the long flags, with `_` for `-`).
    #[arg(long, short = 'c', env = "CONVERTO_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Settings shared by every command.
    #[command(flatten)]
    pub common: CommonArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
// Parsed once per process: the size of `serve`'s many flags costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the HTTP API with in-process workers.
    Serve(ServeArgs),
    /// Run workers only (no HTTP).
    Worker,
    /// Convert one file here and now, with a progress bar.
    Convert(ConvertArgs),
    /// Create or upgrade the database schema of the configured store and queue.
    Migrate,
    /// Print the supported conversions.
    Formats,
    /// Create, list and revoke API keys (kept in the `--store` database).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Set, show, list and remove per-tenant limit overrides (kept in the `--store` database;
    /// running servers pick them up within 5 seconds).
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// Run one isolated conversion (started by `serve` and `worker`; reads a job on stdin).
    #[command(name = "__child", hide = true)]
    Child,
}

/// Settings shared by every command. Each is also read from the environment and the file.
#[derive(Debug, Args, Default, Clone)]
pub struct CommonArgs {
    /// Where the embedded default keeps its database and blobs [default: ./converto-data].
    #[arg(long, env = "CONVERTO_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Conversion store: `sqlite://PATH`, `postgres://...` or `memory` [default: SQLite in the data dir].
    #[arg(long, env = "CONVERTO_STORE", global = true)]
    pub store: Option<String>,
    /// Job queue: `sqlite://PATH`, `postgres://...`, `redis://...`, `amqp://...` or `memory` [default: the store's database].
    #[arg(long, env = "CONVERTO_QUEUE", global = true)]
    pub queue: Option<String>,
    /// Progress bus: `memory`, `postgres://...` or `redis://...` [default: memory].
    #[arg(long, env = "CONVERTO_PROGRESS", global = true)]
    pub progress: Option<String>,
    /// Blob store: a directory, `file:///DIR`, `s3://BUCKET/PREFIX` or `memory` [default: DATA_DIR/blobs].
    #[arg(long, env = "CONVERTO_BLOBS", global = true)]
    pub blobs: Option<String>,
    /// External-program route files (TOML), repeatable; e.g. routes/cad.toml.
    #[arg(
        long = "routes",
        env = "CONVERTO_ROUTES",
        value_delimiter = ',',
        global = true
    )]
    pub routes: Vec<PathBuf>,
    /// Conversions run at once by this process's workers [default: number of CPUs].
    #[arg(long, env = "CONVERTO_CONCURRENCY", global = true)]
    pub concurrency: Option<usize>,
    /// Execution timeout of one attempt: seconds, or a duration such as 90s, 15m [default: 900].
    #[arg(long, env = "CONVERTO_JOB_TIMEOUT", global = true)]
    pub job_timeout: Option<DurationArg>,
    /// Queue-wait limit (seconds or e.g. 10m): conversions waiting longer fail [default: none].
    #[arg(long, env = "CONVERTO_MAX_QUEUE_WAIT", global = true)]
    pub max_queue_wait: Option<DurationArg>,
    /// Attempts before a temporarily failing conversion fails [default: 3].
    #[arg(long, env = "CONVERTO_MAX_ATTEMPTS", global = true)]
    pub max_attempts: Option<u32>,
    /// Lease of a running job (seconds or e.g. 20s); a crashed worker's jobs restart after this
    /// [default: 20].
    #[arg(long, env = "CONVERTO_LEASE", global = true)]
    pub lease: Option<DurationArg>,
    /// Largest accepted upload in bytes [default: 2147483648].
    #[arg(long, env = "CONVERTO_MAX_UPLOAD_BYTES", global = true)]
    pub max_upload_bytes: Option<u64>,
    /// S3 region (for `--blobs s3://...`) [default: AWS_REGION, else us-east-1].
    #[arg(long, env = "CONVERTO_S3_REGION", global = true)]
    pub s3_region: Option<String>,
    /// S3 endpoint of an S3-compatible server, e.g. http://127.0.0.1:9000 [default: AWS].
    #[arg(long, env = "CONVERTO_S3_ENDPOINT", global = true)]
    pub s3_endpoint: Option<String>,
    /// Allow plain-HTTP S3 endpoints.
    #[arg(long, env = "CONVERTO_S3_ALLOW_HTTP", global = true)]
    pub s3_allow_http: Option<bool>,
    /// Multipart upload part size in bytes [default: 8388608].
    #[arg(long, env = "CONVERTO_S3_PART_SIZE", global = true)]
    pub s3_part_size: Option<usize>,
    /// Multipart parts uploaded at once; memory per upload is this times the part size [default: 4].
    #[arg(long, env = "CONVERTO_S3_MAX_PARTS_IN_FLIGHT", global = true)]
    pub s3_max_parts_in_flight: Option<usize>,
    /// Where built-in converters run: `process` (a child process per conversion, with the job
    /// limits; a crash fails only that job) or `none` (in this process) [default: process].
    #[arg(long, env = "CONVERTO_ISOLATION", global = true, value_enum)]
    pub isolation: Option<crate::isolate::Isolation>,
    /// Memory one isolated conversion may use (RLIMIT_DATA), e.g. 512MiB, 2GiB; 0 for no limit
    /// [default: the machine's memory / concurrency, at least 512 MiB].
    #[arg(long, env = "CONVERTO_JOB_MEMORY_LIMIT", global = true)]
    pub job_memory_limit: Option<crate::isolate::ByteSize>,
    /// CPU time one isolated conversion may use (RLIMIT_CPU), seconds or e.g. 10m [default:
    /// none; the job timeout bounds the wall time].
    #[arg(long, env = "CONVERTO_JOB_CPU_LIMIT", global = true)]
    pub job_cpu_limit: Option<DurationArg>,
}

/// `converto serve`.
#[derive(Debug, Args, Default, Clone)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "CONVERTO_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Serve the API only, without in-process workers.
    #[arg(long, env = "CONVERTO_NO_WORKERS")]
    pub no_workers: bool,
    /// Redirect artifact downloads to presigned URLs (S3 blob store).
    #[arg(long, env = "CONVERTO_REDIRECT_DOWNLOADS")]
    pub redirect_downloads: bool,
    /// Public base URL of this server, used in upload URLs.
    #[arg(long, env = "CONVERTO_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Secret that signs upload tickets (at least 16 bytes) [default: a random secret kept in
    /// the blob store, shared by the API nodes that share it].
    #[arg(long, env = "CONVERTO_UPLOAD_SECRET", hide_env_values = true)]
    pub upload_secret: Option<String>,
    /// Connection limits and request size limits of the HTTP server.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Who may call the API.
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// `converto keys`.
#[derive(Debug, Subcommand, Clone)]
pub enum KeysCommand {
    /// Create a key and print it, alone, on stdout (it is shown this once).
    Create {
        /// The tenant the key acts as.
        #[arg(long)]
        tenant: String,
        /// What the key may do: read, write, admin, comma-separated [default: read,write].
        #[arg(long, default_value = "read,write")]
        scopes: String,
        /// How long the key works, e.g. 30d, 12h [default: until revoked].
        #[arg(long)]
        expires: Option<String>,
    },
    /// List the keys (never the keys themselves).
    List,
    /// Revoke a key by its id.
    Revoke {
        /// The key's id (see `converto keys list`).
        id: String,
    },
}

/// `converto tenants`.
#[derive(Debug, Subcommand, Clone)]
pub enum TenantsCommand {
    /// Override some of a tenant's limits (adding to its earlier override); the others keep
    /// their configured values.
    Set {
        /// The tenant.
        name: String,
        /// Conversions running at once, across every worker (0: unlimited).
        #[arg(long)]
        max_running: Option<u64>,
        /// Conversions waiting in the queue at once (0: unlimited).
        #[arg(long)]
        max_queued: Option<u64>,
        /// Bytes its conversions may keep stored, e.g. 10GiB, 500MB (0: unlimited).
        #[arg(long)]
        storage_bytes: Option<crate::isolate::ByteSize>,
        /// Requests per second, per API node (0: unlimited).
        #[arg(long)]
        rate: Option<f64>,
        /// Requests allowed in a burst above the rate.
        #[arg(long)]
        burst: Option<u32>,
        /// The highest priority its submissions may ask for.
        #[arg(long, allow_hyphen_values = true)]
        max_priority: Option<i32>,
    },
    /// List the tenants with an override, and what each overrides.
    List,
    /// Show a tenant's limits in force, and where each comes from.
    Show {
        /// The tenant.
        name: String,
    },
    /// Remove a tenant's override: its configured limits apply again.
    Unset {
        /// The tenant.
        name: String,
    },
}

/// Authentication of `converto serve`.
#[derive(Debug, Args, Default, Clone)]
pub struct AuthArgs {
    /// Credentials accepted: none, keys, jwt or keys,jwt [default: none; only on loopback].
    #[arg(long, env = "CONVERTO_AUTH")]
    pub auth: Option<crate::auth::AuthMode>,
    /// Serve without authentication on a non-loopback address.
    #[arg(long, env = "CONVERTO_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    /// Serve /metrics without credentials [default: only when auth is none].
    #[arg(long, env = "CONVERTO_PUBLIC_METRICS")]
    pub public_metrics: Option<bool>,
    /// Serve /openapi.json without credentials [default: true].
    #[arg(long, env = "CONVERTO_PUBLIC_OPENAPI")]
    pub public_openapi: Option<bool>,
    /// A PEM public key (RSA, P-256 or Ed25519) JWTs may be signed with, repeatable.
    #[arg(
        long = "jwt-public-key",
        env = "CONVERTO_JWT_PUBLIC_KEY",
        value_delimiter = ','
    )]
    pub jwt_public_key: Vec<PathBuf>,
    /// The identity provider's JWKS URL.
    #[arg(long, env = "CONVERTO_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// Fetch the JWKS again when older than this [default: 300].
    #[arg(long, env = "CONVERTO_JWKS_REFRESH")]
    pub jwks_refresh: Option<DurationArg>,
    /// A token with an unknown kid fetches the JWKS again at most this often [default: 30].
    #[arg(long, env = "CONVERTO_JWKS_MIN_REFRESH")]
    pub jwks_min_refresh: Option<DurationArg>,
    /// The issuer (`iss`) JWTs must name [default: any].
    #[arg(long, env = "CONVERTO_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The audience (`aud`) JWTs must name [default: any].
    #[arg(long, env = "CONVERTO_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The JWT claim naming the tenant [default: tenant].
    #[arg(long, env = "CONVERTO_JWT_TENANT_CLAIM")]
    pub jwt_tenant_claim: Option<String>,
}

/// Limits of `converto serve`: what one client can hold or send.
#[derive(Debug, Args, Default, Clone)]
pub struct LimitArgs {
    /// Time a client has to send a request's headers (seconds or e.g. 10s) [default: 10].
    #[arg(long, env = "CONVERTO_HEADER_TIMEOUT")]
    pub header_timeout: Option<DurationArg>,
    /// A connection moving no byte for this long is closed (seconds or e.g. 30s) [default: 30].
    #[arg(long, env = "CONVERTO_IDLE_TIMEOUT")]
    pub idle_timeout: Option<DurationArg>,
    /// Connections served at once; more are answered 503 [default: 1024].
    #[arg(long, env = "CONVERTO_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Event streams (`/events`) open at once; more are answered 503 [default: 512].
    #[arg(long, env = "CONVERTO_MAX_EVENT_STREAMS")]
    pub max_event_streams: Option<usize>,
    /// Largest JSON request body in bytes [default: 65536].
    #[arg(long, env = "CONVERTO_MAX_JSON_BYTES")]
    pub max_json_bytes: Option<usize>,
    /// Largest non-file multipart field in bytes [default: 16384].
    #[arg(long, env = "CONVERTO_MAX_FIELD_BYTES")]
    pub max_field_bytes: Option<usize>,
    /// An origin allowed to call the API from a browser (CORS), repeatable
    /// [default: none, CORS off].
    #[arg(
        long = "cors-allow-origin",
        env = "CONVERTO_CORS_ALLOW_ORIGIN",
        value_delimiter = ','
    )]
    pub cors_allow_origin: Vec<String>,
}

/// `converto convert`.
#[derive(Debug, Args, Clone)]
pub struct ConvertArgs {
    /// The file to convert.
    pub input: PathBuf,
    /// The wanted format, e.g. `obj`.
    #[arg(long = "to", short = 't')]
    pub to: String,
    /// The input's format, if its extension or content does not say.
    #[arg(long = "from")]
    pub from: Option<String>,
    /// Where to write the result (a directory when the conversion has several outputs)
    /// [default: next to the input, with the new extension].
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Converter options as a JSON object, e.g. '{"encoding":"ascii"}'.
    #[arg(long)]
    pub options: Option<String>,
}

/// A duration given as whole seconds (`30`) or with units (`500ms`, `5s`, `2m`, `1h30m`), on
/// the command line, in the environment or in the TOML file (where a bare integer is seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationArg(pub Duration);

/// A duration that is neither whole seconds nor a duration with units.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {reason} (give seconds, e.g. 30, or a duration such as 500ms, 5s, 2m, 1h30m)"
)]
pub struct DurationArgError {
    input: String,
    reason: String,
}

impl std::str::FromStr for DurationArg {
    type Err = DurationArgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if let Ok(secs) = text.parse::<u64>() {
            return Ok(Self(Duration::from_secs(secs)));
        }
        humantime::parse_duration(text)
            .map(Self)
            .map_err(|e| DurationArgError {
                input: s.to_owned(),
                reason: e.to_string(),
            })
    }
}

impl<'de> Deserialize<'de> for DurationArg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DurationArg;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("whole seconds or a duration such as \"5s\" or \"2m\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<DurationArg, E> {
                Ok(DurationArg(Duration::from_secs(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<DurationArg, E> {
                u64::try_from(v)
                    .map(|v| DurationArg(Duration::from_secs(v)))
                    .map_err(|_| E::custom(format!("a duration cannot be negative: {v}")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DurationArg, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The optional TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    data_dir: Option<PathBuf>,
    store: Option<String>,
    queue: Option<String>,
    progress: Option<String>,
    blobs: Option<String>,
    #[serde(default)]
    routes: Vec<PathBuf>,
    concurrency: Option<usize>,
    job_timeout: Option<DurationArg>,
    max_queue_wait: Option<DurationArg>,
    max_attempts: Option<u32>,
    lease: Option<DurationArg>,
    max_upload_bytes: Option<u64>,
    listen: Option<SocketAddr>,
    no_workers: Option<bool>,
    redirect_downloads: Option<bool>,
    public_url: Option<String>,
    upload_secret: Option<Secret>,
    header_timeout: Option<DurationArg>,
    idle_timeout: Option<DurationArg>,
    max_connections: Option<usize>,
    max_event_streams: Option<usize>,
    max_json_bytes: Option<usize>,
    max_field_bytes: Option<usize>,
    #[serde(default)]
    cors_allow_origin: Vec<String>,
    isolation: Option<crate::isolate::Isolation>,
    job_memory_limit: Option<crate::isolate::ByteSize>,
    job_cpu_limit: Option<DurationArg>,
    auth: Option<crate::auth::AuthMode>,
    allow_anonymous: Option<bool>,
    public_metrics: Option<bool>,
    public_openapi: Option<bool>,
    #[serde(default)]
    jwt_public_key: Vec<PathBuf>,
    jwks_url: Option<String>,
    jwks_refresh: Option<DurationArg>,
    jwks_min_refresh: Option<DurationArg>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    jwt_tenant_claim: Option<String>,
    /// The S3 blob store's settings: the adapter's own `S3Config` shape (checked when the
    /// store is opened, see [`crate::runtime`]).
    #[serde(default)]
    s3: toml::Table,
    /// The mesh converter's limits: the adapter's `MeshLimits` shape.
    #[serde(default)]
    mesh: toml::Table,
    /// Every tenant's limits unless `[tenants.NAME]` says otherwise.
    #[serde(default)]
    tenant_defaults: Option<toml::Table>,
    /// Per-tenant limits (fields not given come from the defaults).
    #[serde(default)]
    tenants: std::collections::HashMap<String, toml::Table>,
    /// The image converter's settings: the adapter's `ImageConfig` shape.
    #[serde(default)]
    image: toml::Table,
    /// Webhook delivery: see [`crate::runtime::WebhookSettings`].
    #[serde(default)]
    webhooks: toml::Table,
}

/// A secret: its `Debug` never shows the value.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A `[tenants.NAME]` table is not valid.
    #[error("invalid limits for tenant {tenant:?}: {source}")]
    Tenant {
        /// The tenant.
        tenant: String,
        /// Why.
        source: Box<toml::de::Error>,
    },
}

/// The settings in force.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Store URL.
    pub store: String,
    /// Queue URL.
    pub queue: String,
    /// Progress URL.
    pub progress: String,
    /// Blobs URL.
    pub blobs: String,
    /// Route files.
    pub routes: Vec<PathBuf>,
    /// Worker concurrency.
    pub concurrency: Option<usize>,
    /// Execution timeout.
    pub job_timeout: Duration,
    /// Queue-wait limit.
    pub max_queue_wait: Option<Duration>,
    /// Attempts.
    pub max_attempts: u32,
    /// Lease.
    pub lease: Duration,
    /// Upload limit.
    pub max_upload_bytes: u64,
    /// Listen address.
    pub listen: SocketAddr,
    /// API only.
    pub no_workers: bool,
    /// Presigned download redirects.
    pub redirect_downloads: bool,
    /// Public URL.
    pub public_url: Option<String>,
    /// Signs upload tickets; `None`: the secret kept in the blob store.
    pub upload_secret: Option<Secret>,
    /// Time to send a request's headers.
    pub header_timeout: Duration,
    /// Idle connections are closed after this.
    pub idle_timeout: Duration,
    /// Connections at once.
    pub max_connections: usize,
    /// Event streams at once.
    pub max_event_streams: usize,
    /// Largest JSON body.
    pub max_json_bytes: usize,
    /// Largest non-file multipart field.
    pub max_field_bytes: usize,
    /// CORS origins (empty: CORS off).
    pub cors_allow_origins: Vec<String>,
    /// Where built-in converters run.
    pub isolation: crate::isolate::Isolation,
    /// Memory limit of one isolated conversion in bytes (`None`: unlimited).
    pub job_memory_limit: Option<u64>,
    /// CPU-time limit of one isolated conversion (`None`: unlimited).
    pub job_cpu_limit: Option<Duration>,
    /// S3 settings from flags and `CONVERTO_S3_*` variables, as a table of the S3 adapter's
    /// `S3Config` fields; they win over the `AWS_*` variables, which win over `s3_file`.
    pub s3_flags: toml::Table,
    /// The file's `[s3]` table (`S3Config` fields, credentials included).
    pub s3_file: toml::Table,
    /// The file's `[mesh]` table (the mesh converter's `MeshLimits` fields).
    pub mesh: toml::Table,
    /// Per-tenant limits: `[tenant_defaults]`, overridden by `[tenants.NAME]` tables.
    pub limits: crate::quota::Limits,
    /// The file's `[image]` table (the image converter's `ImageConfig` fields).
    pub image: toml::Table,
    /// The file's `[webhooks]` table ([`crate::runtime::WebhookSettings`]).
    pub webhooks: toml::Table,
    /// Who may call the API.
    pub auth: crate::auth::AuthSettings,
}

impl Settings {
    /// Merges flags/environment (already in `common`/`serve`), the file, and defaults.
    pub fn resolve(
        config: Option<&Path>,
        common: &CommonArgs,
        serve: Option<&ServeArgs>,
    ) -> Result<Self, ConfigError> {
        let file = match config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.into(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse {
                    path: path.into(),
                    source: Box::new(e),
                })?
            }
            None => FileConfig::default(),
        };
        let serve = serve.cloned().unwrap_or_default();
        let auth = auth_settings(&serve.auth, &file);
        let data_dir = common
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("converto-data"));
        let store = common
            .store
            .clone()
            .or(file.store)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("converto.db").display()));
        let queue = common
            .queue
            .clone()
            .or(file.queue)
            .unwrap_or_else(|| store.clone());
        let progress = common
            .progress
            .clone()
            .or(file.progress)
            .unwrap_or_else(|| default_progress(&queue, &store));
        let routes = if common.routes.is_empty() {
            file.routes
        } else {
            common.routes.clone()
        };
        Ok(Self {
            store,
            queue,
            progress,
            blobs: common
                .blobs
                .clone()
                .or(file.blobs)
                .unwrap_or_else(|| data_dir.join("blobs").display().to_string()),
            routes,
            concurrency: common.concurrency.or(file.concurrency),
            job_timeout: common
                .job_timeout
                .or(file.job_timeout)
                .map_or(Duration::from_secs(900), |d| d.0),
            max_queue_wait: common.max_queue_wait.or(file.max_queue_wait).map(|d| d.0),
            max_attempts: common.max_attempts.or(file.max_attempts).unwrap_or(3),
            lease: common
                .lease
                .or(file.lease)
                .map_or(Duration::from_secs(20), |d| d.0)
                .max(Duration::from_secs(1)),
            max_upload_bytes: common
                .max_upload_bytes
                .or(file.max_upload_bytes)
                .unwrap_or(2 * 1024 * 1024 * 1024),
            listen: serve
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            no_workers: serve.no_workers || file.no_workers.unwrap_or(false),
            redirect_downloads: serve.redirect_downloads
                || file.redirect_downloads.unwrap_or(false),
            public_url: serve.public_url.or(file.public_url),
            upload_secret: serve.upload_secret.map(Secret).or(file.upload_secret),
            header_timeout: serve
                .limits
                .header_timeout
                .or(file.header_timeout)
                .map_or(Duration::from_secs(10), |d| d.0),
            idle_timeout: serve
                .limits
                .idle_timeout
                .or(file.idle_timeout)
                .map_or(Duration::from_secs(30), |d| d.0),
            max_connections: serve
                .limits
                .max_connections
                .or(file.max_connections)
                .unwrap_or(1024),
            max_event_streams: serve
                .limits
                .max_event_streams
                .or(file.max_event_streams)
                .unwrap_or(512),
            max_json_bytes: serve
                .limits
                .max_json_bytes
                .or(file.max_json_bytes)
                .unwrap_or(64 * 1024),
            max_field_bytes: serve
                .limits
                .max_field_bytes
                .or(file.max_field_bytes)
                .unwrap_or(16 * 1024),
            cors_allow_origins: if serve.limits.cors_allow_origin.is_empty() {
                file.cors_allow_origin
            } else {
                serve.limits.cors_allow_origin.clone()
            },
            isolation: common.isolation.or(file.isolation).unwrap_or_default(),
            job_memory_limit: match common.job_memory_limit.or(file.job_memory_limit) {
                Some(crate::isolate::ByteSize(0)) => None,
                Some(crate::isolate::ByteSize(n)) => Some(n),
                None => Some(crate::isolate::default_memory_limit(
                    common.concurrency.or(file.concurrency).unwrap_or_else(|| {
                        std::thread::available_parallelism().map_or(1, usize::from)
                    }),
                )),
            },
            job_cpu_limit: common
                .job_cpu_limit
                .or(file.job_cpu_limit)
                .map(|d| d.0)
                .filter(|d| !d.is_zero()),
            s3_flags: {
                let mut t = toml::Table::new();
                let mut set = |k: &str, v: Option<toml::Value>| {
                    if let Some(v) = v {
                        t.insert(k.to_owned(), v);
                    }
                };
                set("region", common.s3_region.clone().map(toml::Value::String));
                set(
                    "endpoint",
                    common.s3_endpoint.clone().map(toml::Value::String),
                );
                set("allow_http", common.s3_allow_http.map(toml::Value::Boolean));
                let int = |n: usize| toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
                set("part_size", common.s3_part_size.map(int));
                set(
                    "max_parts_in_flight",
                    common.s3_max_parts_in_flight.map(int),
                );
                t
            },
            s3_file: file.s3,
            mesh: file.mesh,
            limits: tenant_limits(
                // Without a `[tenant_defaults]` table: the defaults for callers with
                // credentials; the anonymous loopback default (auth none) keeps no request rate,
                // so a developer's scripts and tests are not throttled.
                match file.tenant_defaults {
                    Some(table) => limits_table("[tenant_defaults]", table)?,
                    None => crate::quota::TenantLimits {
                        requests_per_second: if auth.mode == crate::auth::AuthMode::None {
                            0.0
                        } else {
                            crate::quota::TenantLimits::default().requests_per_second
                        },
                        ..crate::quota::TenantLimits::default()
                    },
                },
                file.tenants,
            )?,
            image: file.image,
            webhooks: file.webhooks,
            auth,
            data_dir,
        })
    }
}

/// Flags and environment first, then the file, then the defaults.
fn auth_settings(a: &AuthArgs, f: &FileConfig) -> crate::auth::AuthSettings {
    let defaults = crate::auth::jwt::JwtSettings::default();
    crate::auth::AuthSettings {
        mode: a.auth.or(f.auth).unwrap_or_default(),
        allow_anonymous: a.allow_anonymous || f.allow_anonymous.unwrap_or(false),
        public_metrics: a.public_metrics.or(f.public_metrics),
        public_openapi: a.public_openapi.or(f.public_openapi),
        jwt: crate::auth::jwt::JwtSettings {
            public_keys: if a.jwt_public_key.is_empty() {
                f.jwt_public_key.clone()
            } else {
                a.jwt_public_key.clone()
            },
            jwks_url: a.jwks_url.clone().or_else(|| f.jwks_url.clone()),
            jwks_refresh: a
                .jwks_refresh
                .or(f.jwks_refresh)
                .map_or(defaults.jwks_refresh, |d| d.0),
            jwks_min_refresh: a
                .jwks_min_refresh
                .or(f.jwks_min_refresh)
                .map_or(defaults.jwks_min_refresh, |d| d.0),
            issuer: a.jwt_issuer.clone().or_else(|| f.jwt_issuer.clone()),
            audience: a.jwt_audience.clone().or_else(|| f.jwt_audience.clone()),
            tenant_claim: a
                .jwt_tenant_claim
                .clone()
                .or_else(|| f.jwt_tenant_claim.clone())
                .unwrap_or(defaults.tenant_claim),
        },
    }
}

/// The per-tenant limits of the file: each `[tenants.NAME]` table over the defaults.
fn tenant_limits(
    defaults: crate::quota::TenantLimits,
    tenants: std::collections::HashMap<String, toml::Table>,
) -> Result<crate::quota::Limits, ConfigError> {
    let mut limits = crate::quota::Limits {
        defaults,
        tenants: std::collections::HashMap::new(),
    };
    let base = toml::Value::try_from(defaults).ok();
    for (name, table) in tenants {
        // The defaults' fields, then the tenant's over them.
        let mut merged = match &base {
            Some(toml::Value::Table(t)) => t.clone(),
            _ => toml::Table::new(),
        };
        merged.extend(table);
        let one = limits_table(&name, merged)?;
        limits.tenants.insert(name, one);
    }
    Ok(limits)
}

/// One table of limits (`[tenant_defaults]` or a tenant's, merged), with `storage_bytes`
/// also accepted as a size with a unit (`"10GiB"`).
fn limits_table(
    tenant: &str,
    mut table: toml::Table,
) -> Result<crate::quota::TenantLimits, ConfigError> {
    let invalid = |e: toml::de::Error| ConfigError::Tenant {
        tenant: tenant.to_owned(),
        source: Box::new(e),
    };
    if let Some(toml::Value::String(text)) = table.get("storage_bytes") {
        let crate::isolate::ByteSize(n) = text
            .parse()
            .map_err(|e| invalid(serde::de::Error::custom(format!("storage_bytes: {e}"))))?;
        let n = i64::try_from(n).map_err(|_| {
            invalid(serde::de::Error::custom(
                "storage_bytes: larger than 2^63 - 1 bytes",
            ))
        })?;
        table.insert("storage_bytes".into(), toml::Value::Integer(n));
    }
    toml::Value::Table(table).try_into().map_err(invalid)
}

/// The progress bus when none is configured: the queue's backend, else the store's, when that
/// is a server other processes share (PostgreSQL or Redis), so an API node hears the progress
/// of conversions run by worker processes; in-process memory otherwise (SQLite and memory
/// deployments run their workers in the serving process).
fn default_progress(queue: &str, store: &str) -> String {
    let shared = |u: &str| {
        ["postgres://", "postgresql://", "redis://", "rediss://"]
            .iter()
            .any(|p| u.starts_with(p))
    };
    [queue, store]
        .into_iter()
        .find(|u| shared(u))
        .map_or_else(|| "memory".to_owned(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn durations_take_seconds_or_units_from_flags_and_the_file() {
        let cli = Cli::try_parse_from([
            "converto",
            "--lease",
            "5s",
            "--job-timeout",
            "90",
            "--max-queue-wait",
            "1h30m",
            "worker",
        ])
        .expect("flags");
        let s = Settings::resolve(None, &cli.common, None).expect("settings");
        assert_eq!(s.lease, Duration::from_secs(5));
        assert_eq!(s.job_timeout, Duration::from_secs(90));
        assert_eq!(s.max_queue_wait, Some(Duration::from_secs(5400)));

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("converto.toml");
        std::fs::write(
            &file,
            "lease = 7\njob_timeout = \"20m\"\nmax_queue_wait = \"500ms\"\n",
        )
        .expect("write");
        let cli = Cli::try_parse_from(["converto", "worker"]).expect("flags");
        let s = Settings::resolve(Some(&file), &cli.common, None).expect("settings");
        assert_eq!(s.lease, Duration::from_secs(7));
        assert_eq!(s.job_timeout, Duration::from_secs(1200));
        assert_eq!(s.max_queue_wait, Some(Duration::from_millis(500)));

        let err = Cli::try_parse_from(["converto", "--lease", "5 parsecs", "worker"])
            .expect_err("a bad duration");
        assert!(err.to_string().contains("invalid duration"), "{err}");
        std::fs::write(&file, "lease = -3\n").expect("write");
        assert!(Settings::resolve(Some(&file), &cli.common, None).is_err());
    }

    #[test]
    fn the_progress_bus_follows_a_shared_queue_or_store() {
        let pg = "postgres://u@db/app";
        let redis = "redis://cache:6379";
        let sqlite = "sqlite://data/converto.db";
        assert_eq!(default_progress(redis, pg), redis);
        assert_eq!(default_progress(pg, pg), pg);
        assert_eq!(default_progress("memory", pg), pg);
        assert_eq!(default_progress(sqlite, sqlite), "memory");
        assert_eq!(default_progress("memory", "memory"), "memory");
    }

    #[test]
    fn tenants_with_credentials_get_a_request_rate_by_default() {
        let resolve = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).expect("flags");
            let serve = match &cli.command {
                Command::Serve(a) => Some(a.clone()),
                _ => None,
            };
            Settings::resolve(None, &cli.common, serve.as_ref()).expect("settings")
        };
        let anonymous = resolve(&["converto", "serve"]);
        assert_eq!(anonymous.limits.of("default").requests_per_second, 0.0);
        let keyed = resolve(&["converto", "serve", "--auth", "keys"]);
        assert_eq!(keyed.limits.of("acme").requests_per_second, 100.0);
        assert_eq!(keyed.limits.of("acme").max_queued, 10_000);

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("converto.toml");
        std::fs::write(
            &file,
            "[tenant_defaults]\nrequests_per_second = 5\n[tenants.acme]\nmax_priority = 50\n",
        )
        .expect("write");
        let cli = Cli::try_parse_from(["converto", "worker"]).expect("flags");
        let s = Settings::resolve(Some(&file), &cli.common, None).expect("settings");
        assert_eq!(s.limits.of("globex").requests_per_second, 5.0);
        let acme = s.limits.of("acme");
        assert_eq!((acme.requests_per_second, acme.max_priority), (5.0, 50));
        std::fs::write(&file, "[tenants.acme]\nmax_prio = 50\n").expect("write");
        assert!(Settings::resolve(Some(&file), &cli.common, None).is_err());

        // Storage quotas as sizes with units; running limits per tenant.
        std::fs::write(
            &file,
            "[tenant_defaults]\nstorage_bytes = \"10GiB\"\n\
             [tenants.acme]\nmax_running = 2\nstorage_bytes = 1000\n",
        )
        .expect("write");
        let s = Settings::resolve(Some(&file), &cli.common, None).expect("settings");
        assert_eq!(s.limits.of("globex").storage_bytes, 10 << 30);
        let acme = s.limits.of("acme");
        assert_eq!((acme.max_running, acme.storage_bytes), (2, 1000));
        std::fs::write(&file, "[tenants.acme]\nstorage_bytes = \"lots\"\n").expect("write");
        assert!(Settings::resolve(Some(&file), &cli.common, None).is_err());
    }
}
