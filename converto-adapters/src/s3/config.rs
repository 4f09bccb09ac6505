//! [`S3Config`]: where the objects live and how to reach them.

use std::fmt;

use serde::Deserialize;

/// The smallest part S3 accepts in a multipart upload (every part but the last).
pub(super) const S3_MIN_PART_SIZE: usize = 5 * 1024 * 1024;
const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
const DEFAULT_MAX_PARTS_IN_FLIGHT: usize = 4;

/// Configuration of an [`ObjectBlobStore`](super::ObjectBlobStore).
///
/// Every field is optional. Credentials, region and endpoint left unset here are read by
/// `object_store` from the standard `AWS_*` environment variables (and the usual AWS credential
/// sources: web identity, ECS, IMDS) when the store is built.
///
/// A multipart upload holds at most `max_parts_in_flight` parts of `part_size` bytes being sent,
/// plus one part being filled, so memory per upload stays around
/// `(max_parts_in_flight + 1) * part_size` whatever the body size. S3 allows 10,000 parts, so the
/// largest object is `10_000 * part_size` (about 78 GiB at the default 8 MiB).
///
/// `Debug` never prints the secret key or the session token.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct S3Config {
    /// Where the blobs live: `s3://bucket/prefix`, or any other URL `object_store` understands
    /// (`file:///path`, `memory:///`). Used by [`ObjectBlobStore::from_config`](super::ObjectBlobStore::from_config).
    pub url: Option<String>,
    /// The AWS region (default `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// An endpoint for S3-compatible servers, e.g. `http://127.0.0.1:9000`. An `http://`
    /// endpoint allows plain HTTP unless `allow_http` says otherwise.
    pub endpoint: Option<String>,
    /// The access key id.
    pub access_key_id: Option<String>,
    /// The secret access key.
    pub secret_access_key: Option<String>,
    /// A session token for temporary credentials.
    pub session_token: Option<String>,
    /// Allow plain HTTP (default: only when `endpoint` is an `http://` URL).
    pub allow_http: Option<bool>,
    /// `https://bucket.endpoint/key` (true) rather than `https://endpoint/bucket/key` (false,
    /// the default unless the environment says otherwise).
    pub virtual_hosted_style: Option<bool>,
    /// The size of each part of a multipart upload, in bytes (default 8 MiB, at least 5 MiB for
    /// S3). Bodies shorter than one part are sent in a single request.
    pub part_size: usize,
    /// How many parts of one upload may be in flight at once (default 4).
    pub max_parts_in_flight: usize,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            url: None,
            region: None,
            endpoint: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            allow_http: None,
            virtual_hosted_style: None,
            part_size: DEFAULT_PART_SIZE,
            max_parts_in_flight: DEFAULT_MAX_PARTS_IN_FLIGHT,
        }
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |secret: &Option<String>| secret.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Config")
            .field("url", &self.url)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("part_size", &self.part_size)
            .field("max_parts_in_flight", &self.max_parts_in_flight)
            .finish()
    }
}

/// Why an [`S3Config`] cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum S3ConfigError {
    /// No URL was given.
    #[error("no object store URL configured (set `url` or CONVERTO_S3_URL)")]
    MissingUrl,
    /// The URL does not parse.
    #[error("invalid object store URL {url:?}: {source}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: url::ParseError,
    },
    /// An environment variable holds something that is not a number.
    #[error("environment variable {name} is not a number: {source}")]
    InvalidNumber {
        /// The variable.
        name: &'static str,
        /// The cause.
        #[source]
        source: std::num::ParseIntError,
    },
    /// An environment variable holds something that is not `true` or `false`.
    #[error("environment variable {name} is not a boolean: {value:?}")]
    InvalidBool {
        /// The variable.
        name: &'static str,
        /// What it holds.
        value: String,
    },
    /// The part size is below what the store accepts.
    #[error("multipart part size {part_size} is below the minimum of {minimum} bytes")]
    PartSizeTooSmall {
        /// What was configured.
        part_size: usize,
        /// The minimum.
        minimum: usize,
    },
    /// `max_parts_in_flight` is zero.
    #[error("max_parts_in_flight must be at least 1")]
    NoPartsInFlight,
    /// `object_store` refused the configuration (unknown scheme, missing bucket, ...).
    #[error("cannot build the object store: {0}")]
    Store(#[source] object_store::Error),
}

impl S3Config {
    /// The defaults: nothing set, 8 MiB parts, 4 in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the configuration from the environment:
    ///
    /// | field | variables, first set wins |
    /// |---|---|
    /// | `url` | `CONVERTO_S3_URL` |
    /// | `region` | `CONVERTO_S3_REGION`, `AWS_REGION`, `AWS_DEFAULT_REGION` |
    /// | `endpoint` | `CONVERTO_S3_ENDPOINT`, `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT` |
    /// | `access_key_id` | `CONVERTO_S3_ACCESS_KEY_ID`, `AWS_ACCESS_KEY_ID` |
    /// | `secret_access_key` | `CONVERTO_S3_SECRET_ACCESS_KEY`, `AWS_SECRET_ACCESS_KEY` |
    /// | `session_token` | `CONVERTO_S3_SESSION_TOKEN`, `AWS_SESSION_TOKEN` |
    /// | `allow_http` | `CONVERTO_S3_ALLOW_HTTP`, `AWS_ALLOW_HTTP` |
    /// | `virtual_hosted_style` | `CONVERTO_S3_VIRTUAL_HOSTED_STYLE`, `AWS_VIRTUAL_HOSTED_STYLE_REQUEST` |
    /// | `part_size` | `CONVERTO_S3_PART_SIZE` (bytes) |
    /// | `max_parts_in_flight` | `CONVERTO_S3_MAX_PARTS_IN_FLIGHT` |
    pub fn from_env() -> Result<Self, S3ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration from any source of variables (see [`S3Config::from_env`]).
    pub(super) fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, S3ConfigError> {
        let first = |names: &[&str]| {
            names
                .iter()
                .find_map(|name| lookup(name).filter(|v| !v.is_empty()))
        };
        let flag = |names: &[&'static str]| -> Result<Option<bool>, S3ConfigError> {
            for &name in names {
                if let Some(value) = lookup(name).filter(|v| !v.is_empty()) {
                    return match crate::settings::parse_switch(&value) {
                        Some(on) => Ok(Some(on)),
                        None => Err(S3ConfigError::InvalidBool { name, value }),
                    };
                }
            }
            Ok(None)
        };
        let number = |name: &'static str, default: usize| -> Result<usize, S3ConfigError> {
            match lookup(name).filter(|v| !v.is_empty()) {
                None => Ok(default),
                Some(value) => value
                    .trim()
                    .parse()
                    .map_err(|source| S3ConfigError::InvalidNumber { name, source }),
            }
        };
        Ok(Self {
            url: first(&["CONVERTO_S3_URL"]),
            region: first(&["CONVERTO_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"]),
            endpoint: first(&[
                "CONVERTO_S3_ENDPOINT",
                "AWS_ENDPOINT_URL_S3",
                "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT",
            ]),
            access_key_id: first(&["CONVERTO_S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"]),
            secret_access_key: first(&["CONVERTO_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"]),
            session_token: first(&["CONVERTO_S3_SESSION_TOKEN", "AWS_SESSION_TOKEN"]),
            allow_http: flag(&["CONVERTO_S3_ALLOW_HTTP", "AWS_ALLOW_HTTP"])?,
            virtual_hosted_style: flag(&[
                "CONVERTO_S3_VIRTUAL_HOSTED_STYLE",
                "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
            ])?,
            part_size: number("CONVERTO_S3_PART_SIZE", DEFAULT_PART_SIZE)?,
            max_parts_in_flight: number(
                "CONVERTO_S3_MAX_PARTS_IN_FLIGHT",
                DEFAULT_MAX_PARTS_IN_FLIGHT,
            )?,
        })
    }

    /// With a store URL (`s3://bucket/prefix`, `file:///path`, `memory:///`).
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// With a region.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// With an endpoint for an S3-compatible server.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// With static credentials.
    pub fn with_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.access_key_id = Some(access_key_id.into());
        self.secret_access_key = Some(secret_access_key.into());
        self
    }

    /// With a session token (temporary credentials).
    pub fn with_session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(token.into());
        self
    }

    /// Allow or forbid plain HTTP.
    pub fn with_allow_http(mut self, allow: bool) -> Self {
        self.allow_http = Some(allow);
        self
    }

    /// Virtual-hosted style (`bucket.endpoint/key`) or path style (`endpoint/bucket/key`).
    pub fn with_virtual_hosted_style(mut self, virtual_hosted: bool) -> Self {
        self.virtual_hosted_style = Some(virtual_hosted);
        self
    }

    /// With a multipart part size in bytes.
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes;
        self
    }

    /// With at most `parts` parts of one upload in flight.
    pub fn with_max_parts_in_flight(mut self, parts: usize) -> Self {
        self.max_parts_in_flight = parts;
        self
    }

    /// Whether plain HTTP is allowed: as configured, else when the endpoint is `http://`.
    pub(super) fn http_allowed(&self) -> Option<bool> {
        self.allow_http.or_else(|| {
            self.endpoint
                .as_deref()
                .filter(|e| e.starts_with("http://"))
                .map(|_| true)
        })
    }

    /// Checks the upload limits; `minimum_part_size` depends on the store.
    pub(super) fn check_limits(&self, minimum_part_size: usize) -> Result<(), S3ConfigError> {
        if self.part_size < minimum_part_size.max(1) {
            return Err(S3ConfigError::PartSizeTooSmall {
                part_size: self.part_size,
                minimum: minimum_part_size.max(1),
            });
        }
        if self.max_parts_in_flight == 0 {
            return Err(S3ConfigError::NoPartsInFlight);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn debug_hides_secrets() {
        let config = S3Config::new()
            .with_credentials("AKIDEXAMPLE", "very-secret-key")
            .with_session_token("very-secret-token");
        let printed = format!("{config:?} {config:#?}");
        assert!(!printed.contains("very-secret"), "{printed}");
        assert!(printed.contains("AKIDEXAMPLE"));
        assert!(printed.contains("<redacted>"));
    }

    #[test]
    fn reads_converto_then_aws_variables() {
        let config = S3Config::from_lookup(lookup(&[
            ("CONVERTO_S3_URL", "s3://bucket/prefix"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_REGION", "eu-central-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_ACCESS_KEY_ID", "id"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("CONVERTO_S3_ALLOW_HTTP", "true"),
            ("CONVERTO_S3_PART_SIZE", "6291456"),
        ]))
        .expect("config");
        assert_eq!(config.url.as_deref(), Some("s3://bucket/prefix"));
        assert_eq!(config.region.as_deref(), Some("eu-central-1"));
        assert_eq!(config.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(config.access_key_id.as_deref(), Some("id"));
        assert_eq!(config.secret_access_key.as_deref(), Some("secret"));
        assert_eq!(config.allow_http, Some(true));
        assert_eq!(config.part_size, 6 * 1024 * 1024);
        assert_eq!(config.max_parts_in_flight, DEFAULT_MAX_PARTS_IN_FLIGHT);
    }

    #[test]
    fn bad_variables_are_typed_errors() {
        assert!(matches!(
            S3Config::from_lookup(lookup(&[("CONVERTO_S3_PART_SIZE", "8MiB")])),
            Err(S3ConfigError::InvalidNumber {
                name: "CONVERTO_S3_PART_SIZE",
                ..
            })
        ));
        assert!(matches!(
            S3Config::from_lookup(lookup(&[("AWS_ALLOW_HTTP", "maybe")])),
            Err(S3ConfigError::InvalidBool { .. })
        ));
    }

    #[test]
    fn deserialises_with_defaults() {
        let config: S3Config = serde_json::from_str(
            r#"{"url": "s3://b/p", "endpoint": "http://localhost:9000", "part_size": 5242880}"#,
        )
        .expect("json");
        assert_eq!(config.part_size, 5 * 1024 * 1024);
        assert_eq!(config.max_parts_in_flight, DEFAULT_MAX_PARTS_IN_FLIGHT);
        assert_eq!(config.http_allowed(), Some(true));
        assert!(serde_json::from_str::<S3Config>(r#"{"bucket": "x"}"#).is_err());
        assert!(matches!(
            S3Config::new()
                .with_part_size(1024)
                .check_limits(S3_MIN_PART_SIZE),
            Err(S3ConfigError::PartSizeTooSmall { .. })
        ));
    }
}
