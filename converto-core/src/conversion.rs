//! The conversion record, its status machine and its guarded transitions.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{ConversionId, Format};

/// Where a conversion is in its life.
///
/// `queued -> running -> succeeded | failed | cancelled`, `running -> queued` on retry, and
/// `queued -> cancelled | failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for a worker.
    Queued,
    /// A worker is converting it.
    Running,
    /// Done; the artifacts are stored.
    Succeeded,
    /// Given up; the error says why.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 5] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
    ];

    /// Whether nothing can change this conversion any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no status.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown status {0:?}: expected queued, running, succeeded, failed or cancelled")]
pub struct ParseStatusError(pub String);

impl FromStr for Status {
    type Err = ParseStatusError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ParseStatusError(s.chars().take(32).collect()))
    }
}

/// How far a running conversion has come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// 0 to 100, never decreasing within one attempt.
    pub percent: u8,
    /// What the converter is doing, if it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// When this was reported.
    pub updated_at: DateTime<Utc>,
}

impl Progress {
    /// Progress at `percent` (clamped to 100), now.
    pub fn new(percent: u8, stage: Option<String>) -> Self {
        Self {
            percent: percent.min(100),
            stage,
            updated_at: Utc::now(),
        }
    }
}

/// One output of a conversion, stored in the blob store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// The name it is downloaded by, unique within the conversion (e.g. `output.obj`, `720p.jpeg`).
    pub name: String,
    /// Its format.
    pub format: Format,
    /// Size in bytes.
    pub size: u64,
    /// `sha256:` followed by the hex digest of its bytes.
    pub checksum: String,
    /// Where it lives in the blob store.
    pub blob_key: String,
}

/// Why a conversion failed (or why its last attempt failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// A stable machine-readable code, e.g. `timeout`, `invalid_input`, `converter_failed`.
    pub code: String,
    /// A human-readable reason.
    pub message: String,
}

impl ErrorInfo {
    /// An error with this code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// A conversion record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversion {
    /// Its id.
    pub id: ConversionId,
    /// Who it belongs to; `default` when there is one tenant.
    pub tenant: String,
    /// The input's format.
    pub source_format: Format,
    /// The format wanted.
    pub target_format: Format,
    /// Converter options, as given.
    pub options: serde_json::Value,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// Higher runs first.
    pub priority: i32,
    /// Where it is.
    pub status: Status,
    /// The latest progress known to the store.
    pub progress: Option<Progress>,
    /// How many attempts have started.
    pub attempts: u32,
    /// The last error, kept after a retry and on failure.
    pub error: Option<ErrorInfo>,
    /// The outputs, once succeeded.
    pub artifacts: Vec<Artifact>,
    /// The blob key of the input.
    pub input_key: String,
    /// The uploaded file's name, sanitised, if there was one.
    pub input_name: Option<String>,
    /// Free text about the conversion, searched with the file name (see [`crate::search`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Lowercase tags, sorted and distinct, including the description's `#hashtags`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The input's size in bytes.
    pub input_size: u64,
    /// Submit-time idempotency key.
    pub idempotency_key: Option<String>,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// When the current or last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal status.
    pub finished_at: Option<DateTime<Utc>>,
    /// When the record last changed.
    pub updated_at: DateTime<Utc>,
    /// Optimistic-concurrency version, bumped by every write.
    pub version: u64,
}

/// A rejected transition: the record is not in the state the caller expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("conversion {id} is {status} (attempt {attempts}); {wanted} is not allowed")]
pub struct TransitionConflict {
    /// The conversion.
    pub id: ConversionId,
    /// Its current status.
    pub status: Status,
    /// Its current attempt count.
    pub attempts: u32,
    /// The transition asked for.
    pub wanted: &'static str,
}

/// A guarded change of status. `attempt` is the fence: a worker may only move a conversion that
/// is still on the attempt it started, so a stale worker cannot finish, fail or overwrite it.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// A worker starts attempt `attempt` (from `queued`, or from `running` when an earlier
    /// attempt's lease expired). Only allowed when `attempt` is newer than the stored one.
    Start {
        /// The attempt number, from the queue's lease.
        attempt: u32,
    },
    /// Attempt `attempt` succeeded with these artifacts.
    Succeed {
        /// The fence.
        attempt: u32,
        /// The outputs.
        artifacts: Vec<Artifact>,
    },
    /// Attempt `attempt` failed for good.
    Fail {
        /// The fence.
        attempt: u32,
        /// Why.
        error: ErrorInfo,
    },
    /// Attempt `attempt` failed temporarily (or was handed back) and goes back to the queue.
    Requeue {
        /// The fence.
        attempt: u32,
        /// Why, if it failed.
        error: Option<ErrorInfo>,
    },
    /// Fails a conversion that never started an attempt (e.g. it waited too long in the queue,
    /// or the worker that ran it died too often). Allowed from `queued` and `running`.
    Abandon {
        /// Why.
        error: ErrorInfo,
    },
    /// A user cancels it: allowed while queued or running.
    Cancel,
}

impl Transition {
    /// A short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Transition::Start { .. } => "start",
            Transition::Succeed { .. } => "succeed",
            Transition::Fail { .. } => "fail",
            Transition::Requeue { .. } => "requeue",
            Transition::Abandon { .. } => "abandon",
            Transition::Cancel => "cancel",
        }
    }

    /// Applies the transition to a record in place, or says why it may not.
    ///
    /// Every `ConversionStore` uses this one function, under a compare-and-set on
    /// [`Conversion::version`], so the rules live in one place.
    pub fn apply(&self, c: &mut Conversion, now: DateTime<Utc>) -> Result<(), TransitionConflict> {
        let conflict = || TransitionConflict {
            id: c.id,
            status: c.status,
            attempts: c.attempts,
            wanted: self.name(),
        };
        match self {
            Transition::Start { attempt } => {
                if c.status.is_terminal() || *attempt <= c.attempts {
                    return Err(conflict());
                }
                c.status = Status::Running;
                c.attempts = *attempt;
                c.started_at = Some(now);
                c.progress = Some(Progress {
                    percent: 0,
                    stage: None,
                    updated_at: now,
                });
            }
            Transition::Succeed { attempt, artifacts } => {
                if c.status != Status::Running || c.attempts != *attempt {
                    return Err(conflict());
                }
                c.status = Status::Succeeded;
                c.artifacts = artifacts.clone();
                c.error = None;
                c.finished_at = Some(now);
                c.progress = Some(Progress {
                    percent: 100,
                    stage: None,
                    updated_at: now,
                });
            }
            Transition::Fail { attempt, error } => {
                if c.status != Status::Running || c.attempts != *attempt {
                    return Err(conflict());
                }
                c.status = Status::Failed;
                c.error = Some(error.clone());
                c.finished_at = Some(now);
            }
            Transition::Requeue { attempt, error } => {
                if c.status != Status::Running || c.attempts != *attempt {
                    return Err(conflict());
                }
                c.status = Status::Queued;
                if let Some(e) = error {
                    c.error = Some(e.clone());
                }
                c.progress = None;
            }
            Transition::Abandon { error } => {
                if c.status.is_terminal() {
                    return Err(conflict());
                }
                c.status = Status::Failed;
                c.error = Some(error.clone());
                c.finished_at = Some(now);
            }
            Transition::Cancel => {
                if c.status.is_terminal() {
                    return Err(conflict());
                }
                c.status = Status::Cancelled;
                c.finished_at = Some(now);
            }
        }
        c.updated_at = now;
        c.version += 1;
        Ok(())
    }
}

/// Everything needed to create a conversion record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewConversion {
    /// The id to give it.
    pub id: ConversionId,
    /// The tenant.
    pub tenant: String,
    /// Input format.
    pub source_format: Format,
    /// Wanted format.
    pub target_format: Format,
    /// Converter options.
    pub options: serde_json::Value,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Priority (higher first).
    pub priority: i32,
    /// The input's blob key.
    pub input_key: String,
    /// The input's file name.
    pub input_name: Option<String>,
    /// Free text, already checked (see [`crate::search::metadata`]).
    pub description: Option<String>,
    /// Tags, already normalised (see [`crate::search::metadata`]).
    pub tags: Vec<String>,
    /// The input's size.
    pub input_size: u64,
    /// Idempotency key, unique per tenant.
    pub idempotency_key: Option<String>,
}

impl NewConversion {
    /// The record as first stored: queued, version 1.
    pub fn into_record(self, now: DateTime<Utc>) -> Conversion {
        Conversion {
            id: self.id,
            tenant: self.tenant,
            source_format: self.source_format,
            target_format: self.target_format,
            options: self.options,
            labels: self.labels,
            priority: self.priority,
            status: Status::Queued,
            progress: None,
            attempts: 0,
            error: None,
            artifacts: Vec::new(),
            input_key: self.input_key,
            input_name: self.input_name,
            description: self.description,
            tags: self.tags,
            input_size: self.input_size,
            idempotency_key: self.idempotency_key,
            created_at: now,
            started_at: None,
            finished_at: None,
            updated_at: now,
            version: 1,
        }
    }
}

/// Sanitises a user-supplied file name to a safe base name: no directories, no control
/// characters, no leading dots, at most 200 bytes. Returns `None` if nothing usable is left.
pub fn sanitize_file_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| {
            if matches!(c, '"' | ':' | '*' | '?' | '<' | '>' | '|') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    if cleaned.is_empty() {
        return None;
    }
    let mut out = String::new();
    for c in cleaned.chars() {
        if out.len() + c.len_utf8() > 200 {
            break;
        }
        out.push(c);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Conversion {
        NewConversion {
            id: ConversionId::new(),
            tenant: "default".into(),
            source_format: Format::new("stl").expect("f"),
            target_format: Format::new("obj").expect("f"),
            options: serde_json::Value::Null,
            labels: BTreeMap::new(),
            priority: 0,
            input_key: "k".into(),
            input_name: None,
            description: None,
            tags: Vec::new(),
            input_size: 1,
            idempotency_key: None,
        }
        .into_record(Utc::now())
    }

    #[test]
    fn fencing_rejects_stale_attempts() {
        let mut c = record();
        let now = Utc::now();
        Transition::Start { attempt: 1 }
            .apply(&mut c, now)
            .expect("start 1");
        // lease expired, attempt 2 takes over
        Transition::Start { attempt: 2 }
            .apply(&mut c, now)
            .expect("start 2");
        let stale = Transition::Succeed {
            attempt: 1,
            artifacts: vec![],
        };
        assert!(stale.apply(&mut c, now).is_err());
        assert!(Transition::Start { attempt: 2 }.apply(&mut c, now).is_err());
        Transition::Succeed {
            attempt: 2,
            artifacts: vec![],
        }
        .apply(&mut c, now)
        .expect("ok");
        assert_eq!(c.status, Status::Succeeded);
        assert!(Transition::Cancel.apply(&mut c, now).is_err());
        assert_eq!(c.version, 4);
    }

    #[test]
    fn file_names_are_sanitised() {
        assert_eq!(
            sanitize_file_name("../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(sanitize_file_name("C:\\x\\a.stl").as_deref(), Some("a.stl"));
        assert_eq!(sanitize_file_name("..").as_deref(), None);
        assert_eq!(
            sanitize_file_name("a\u{0}b\nc\".png").as_deref(),
            Some("abc_.png")
        );
        assert!(sanitize_file_name(&"é".repeat(300)).expect("x").len() <= 200);
    }
}
