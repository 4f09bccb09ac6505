//! [`PostgresConfig`]: where the database is and how to use it.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::PostgresError;
use crate::settings::{LoneUserInfo, redact_query_password, redact_userinfo};

/// The schema converto installs into unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "converto";
/// Pool size unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// How long a query waits for a pooled connection unless told otherwise, in seconds.
pub const DEFAULT_ACQUIRE_TIMEOUT_SECS: u64 = 10;

/// The longest schema name accepted. Notification channels are named after the schema
/// (`<schema>:jobs`), and PostgreSQL channel names must stay under 64 bytes.
const MAX_SCHEMA_LEN: usize = 50;

/// How to reach PostgreSQL and where converto keeps its tables.
///
/// Deserialisable (every field but `url` has a default), built in code with
/// [`PostgresConfig::new`] and the chained setters, or read from the environment with
/// [`PostgresConfig::from_env`]. Its `Debug` output hides the password.
///
/// ```
/// use converto_adapters::postgres::PostgresConfig;
///
/// let config = PostgresConfig::new("postgres://app:secret@db:5432/app")
///     .schema("jobs")
///     .max_connections(20);
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// A `postgres://` connection URL.
    pub url: String,
    /// The schema holding converto's tables and its migrations table; created if missing.
    /// Lowercase letters, digits and `_`, starting with a letter or `_`, at most 50 bytes.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// The most connections the pool opens (the listeners that wake reservers and deliver
    /// progress use up to two more, outside the pool).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long a query waits for a free pooled connection before failing (temporarily).
    #[serde(default = "default_acquire_timeout_secs")]
    pub acquire_timeout_secs: u64,
    /// Whether the job queue's statements wait for their WAL to reach the disk
    /// (`synchronous_commit`). `true` (the default) is PostgreSQL's own setting. `false` makes
    /// reserves, heartbeats and acks about twice as fast on one connection; a PostgreSQL crash
    /// may then forget the last fraction of a second of queue changes, and nothing is lost
    /// because of it: the conversion records stay synchronous, a forgotten enqueue is put back
    /// by the engine's sweeper, a forgotten ack or reserve re-delivers the job, and fencing
    /// keeps a re-delivered job from finishing twice.
    #[serde(default = "default_true")]
    pub queue_synchronous_commit: bool,
}

fn default_true() -> bool {
    true
}

fn default_schema() -> String {
    DEFAULT_SCHEMA.to_owned()
}

fn default_max_connections() -> u32 {
    DEFAULT_MAX_CONNECTIONS
}

fn default_acquire_timeout_secs() -> u64 {
    DEFAULT_ACQUIRE_TIMEOUT_SECS
}

impl PostgresConfig {
    /// A configuration for this URL, with the defaults for everything else.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: default_schema(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            acquire_timeout_secs: DEFAULT_ACQUIRE_TIMEOUT_SECS,
            queue_synchronous_commit: true,
        }
    }

    /// Reads the configuration from the environment:
    ///
    /// | variable | field | default |
    /// |---|---|---|
    /// | `CONVERTO_POSTGRES_URL` (else `DATABASE_URL`) | `url` | required |
    /// | `CONVERTO_POSTGRES_SCHEMA` | `schema` | `converto` |
    /// | `CONVERTO_POSTGRES_MAX_CONNECTIONS` | `max_connections` | 10 |
    /// | `CONVERTO_POSTGRES_ACQUIRE_TIMEOUT_SECS` | `acquire_timeout_secs` | 10 |
    /// | `CONVERTO_POSTGRES_QUEUE_SYNCHRONOUS_COMMIT` (`on`/`off`) | `queue_synchronous_commit` | `on` |
    pub fn from_env() -> Result<Self, PostgresError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`PostgresConfig::from_env`] with the URL given here instead of in the environment (the
    /// binary takes it from `--store`/`--queue`/`--progress`).
    pub fn from_env_with_url(url: &str) -> Result<Self, PostgresError> {
        Self::from_lookup(|name| match name {
            "CONVERTO_POSTGRES_URL" => Some(url.to_owned()),
            _ => std::env::var(name).ok(),
        })
    }

    /// [`PostgresConfig::from_env`] over any source of variables.
    pub(crate) fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, PostgresError> {
        let url = lookup("CONVERTO_POSTGRES_URL")
            .or_else(|| lookup("DATABASE_URL"))
            .ok_or(PostgresError::MissingEnv {
                variable: "CONVERTO_POSTGRES_URL",
            })?;
        let mut config = Self::new(url);
        if let Some(schema) = lookup("CONVERTO_POSTGRES_SCHEMA") {
            config.schema = schema;
        }
        if let Some(n) = lookup("CONVERTO_POSTGRES_MAX_CONNECTIONS") {
            config.max_connections = parse_env("CONVERTO_POSTGRES_MAX_CONNECTIONS", &n)?;
        }
        if let Some(n) = lookup("CONVERTO_POSTGRES_ACQUIRE_TIMEOUT_SECS") {
            config.acquire_timeout_secs = parse_env("CONVERTO_POSTGRES_ACQUIRE_TIMEOUT_SECS", &n)?;
        }
        if let Some(v) = lookup("CONVERTO_POSTGRES_QUEUE_SYNCHRONOUS_COMMIT") {
            config.queue_synchronous_commit =
                crate::settings::parse_switch(&v).ok_or_else(|| PostgresError::InvalidEnv {
                    variable: "CONVERTO_POSTGRES_QUEUE_SYNCHRONOUS_COMMIT",
                    value: v.chars().take(64).collect(),
                })?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Sets the connection URL.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Sets the schema converto's tables live in.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets [`PostgresConfig::queue_synchronous_commit`].
    pub fn queue_synchronous_commit(mut self, on: bool) -> Self {
        self.queue_synchronous_commit = on;
        self
    }

    /// Sets the pool size.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets how long a query waits for a pooled connection.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout_secs = timeout.as_secs().max(1);
        self
    }

    /// The acquire timeout as a duration.
    pub fn acquire_timeout_duration(&self) -> Duration {
        Duration::from_secs(self.acquire_timeout_secs.max(1))
    }

    /// Checks the fields that can be checked without connecting.
    pub fn validate(&self) -> Result<(), PostgresError> {
        validate_schema(&self.schema)?;
        if self.max_connections == 0 {
            return Err(PostgresError::InvalidConfig {
                field: "max_connections",
                reason: "must be at least 1",
            });
        }
        if self.url.trim().is_empty() {
            return Err(PostgresError::InvalidConfig {
                field: "url",
                reason: "must not be empty",
            });
        }
        Ok(())
    }
}

fn parse_env<T: std::str::FromStr>(
    variable: &'static str,
    value: &str,
) -> Result<T, PostgresError> {
    value.trim().parse().map_err(|_| PostgresError::InvalidEnv {
        variable,
        value: value.chars().take(64).collect(),
    })
}

/// Schema names are interpolated into DDL and channel names, so only plain lowercase
/// identifiers are accepted: nothing there needs quoting or case folding.
fn validate_schema(schema: &str) -> Result<(), PostgresError> {
    let bytes = schema.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_SCHEMA_LEN
        && (bytes[0].is_ascii_lowercase() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
        && !schema.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(PostgresError::InvalidConfig {
            field: "schema",
            reason: "expected 1 to 50 characters of a-z, 0-9 and '_', starting with a letter or '_' (and not 'pg_')",
        })
    }
}

/// The URL with its password (in the user-info part or a `password=` parameter) replaced.
pub(crate) fn redact_url(url: &str) -> String {
    redact_query_password(&redact_userinfo(url, LoneUserInfo::User))
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout_secs", &self.acquire_timeout_secs)
            .field("queue_synchronous_commit", &self.queue_synchronous_commit)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_passwords() {
        for url in [
            "postgres://app:s3cret@db:5432/app",
            "postgres://app:s3cret@db/app?sslmode=require",
            "postgres://db/app?user=app&password=s3cret",
            "postgresql://app:s3c@ret@db/app",
        ] {
            let shown = format!("{:?}", PostgresConfig::new(url));
            assert!(!shown.contains("s3c"), "{shown}");
            assert!(shown.contains("db"), "{shown}");
        }
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/test"),
            "postgres://postgres@127.0.0.1:5432/test"
        );
    }

    #[test]
    fn schema_names_are_checked() {
        for good in ["converto", "_x", "converto_test_0123abcd"] {
            assert!(validate_schema(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Converto",
            "1abc",
            "a-b",
            "a\"b",
            "pg_temp",
            &"a".repeat(51),
        ] {
            assert!(validate_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_from_env_and_serde() {
        let env = |name: &str| match name {
            "CONVERTO_POSTGRES_URL" => Some("postgres://u:p@h/d".to_owned()),
            "CONVERTO_POSTGRES_SCHEMA" => Some("mine".to_owned()),
            "CONVERTO_POSTGRES_MAX_CONNECTIONS" => Some("3".to_owned()),
            _ => None,
        };
        let c = PostgresConfig::from_lookup(env).expect("config");
        assert_eq!((c.schema.as_str(), c.max_connections), ("mine", 3));
        assert!(matches!(
            PostgresConfig::from_lookup(|_| None),
            Err(PostgresError::MissingEnv { .. })
        ));
        let bad = |name: &str| match name {
            "CONVERTO_POSTGRES_URL" => Some("postgres://h/d".to_owned()),
            "CONVERTO_POSTGRES_MAX_CONNECTIONS" => Some("many".to_owned()),
            _ => None,
        };
        assert!(matches!(
            PostgresConfig::from_lookup(bad),
            Err(PostgresError::InvalidEnv { .. })
        ));
        let c: PostgresConfig =
            serde_json::from_str(r#"{"url": "postgres://h/d"}"#).expect("deserialise");
        assert_eq!(c, PostgresConfig::new("postgres://h/d"));
    }
}
