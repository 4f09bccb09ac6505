//! Identifiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The identifier of one conversion: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConversionId(Uuid);

impl ConversionId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps an existing UUID.
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID inside.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for ConversionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ConversionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for ConversionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConversionId({})", self.0.hyphenated())
    }
}

/// A string that is not a conversion id.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "malformed conversion id {input:?}: expected a UUID such as 0190c3e0-7b9a-7cc1-8f0e-1f2a3b4c5d6e"
)]
pub struct ParseIdError {
    /// What was given (cut to 64 characters).
    pub input: String,
}

impl FromStr for ConversionId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s).map(Self).map_err(|_| ParseIdError {
            input: s.chars().take(64).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sort_by_time() {
        let a = ConversionId::new();
        let b = ConversionId::new();
        assert!(a < b);
        let parsed: ConversionId = a.to_string().parse().expect("parse");
        assert_eq!(parsed, a);
        assert!("../etc/passwd".parse::<ConversionId>().is_err());
        assert!("".parse::<ConversionId>().is_err());
    }
}
