//! The backend failure every trait error shares: what kind, whether to retry, and where.
//!
//! Each trait keeps its own `#[non_exhaustive]` error with the variants its callers match on
//! (`NotFound`, `LeaseLost`, ...); whatever a backend itself fails with is one
//! [`BackendError`] inside it, so the engine's retry policy, logs and metrics read the same
//! fields (kind, temporary, backend, operation, key) whichever trait and adapter failed.

use std::fmt;

/// What kind of backend failure it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The backend could not be reached, or the connection broke or timed out.
    Unavailable,
    /// The backend refused for lack of capacity or because of a limit (pool exhausted,
    /// rate limited, contended past the retries).
    Busy,
    /// The backend refused the credentials or the operation.
    PermissionDenied,
    /// The backend answered something this adapter cannot read.
    Unexpected,
    /// Anything else.
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Busy => "busy",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Unexpected => "unexpected answer",
            ErrorKind::Other => "failed",
        })
    }
}

/// A backend failed.
#[derive(Debug, thiserror::Error)]
pub struct BackendError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// Whether trying again may work.
    pub temporary: bool,
    /// Which backend (`postgres`, `redis`, `s3`, ...).
    pub backend: &'static str,
    /// The operation that failed (`reserve`, `get`, `put`, ...), when the adapter named it.
    pub operation: Option<&'static str>,
    /// The key or id it was about, when there is one.
    pub key: Option<String>,
    /// The cause.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.backend)?;
        if let Some(op) = self.operation {
            write!(f, " {op}")?;
        }
        if let Some(key) = &self.key {
            write!(f, " of {key:?}")?;
        }
        write!(f, ": {}", self.source)
    }
}

impl BackendError {
    /// A failure of `backend`; its kind follows `temporary` (`Unavailable` or `Other`) until
    /// [`kind`](BackendError::kind) says better.
    pub fn new(
        backend: &'static str,
        temporary: bool,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            kind: if temporary {
                ErrorKind::Unavailable
            } else {
                ErrorKind::Other
            },
            temporary,
            backend,
            operation: None,
            key: None,
            source: source.into(),
        }
    }

    /// Names the kind.
    pub fn kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// Names the operation.
    pub fn operation(mut self, operation: &'static str) -> Self {
        self.operation = Some(operation);
        self
    }

    /// Names the key or id.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Whether trying again may succeed.
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_reads_in_the_message() {
        let e = BackendError::new("s3", true, std::io::Error::other("reset"))
            .operation("get")
            .key("conversions/x/input");
        assert_eq!(e.to_string(), "s3 get of \"conversions/x/input\": reset");
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.is_temporary());
    }
}
