//! JSON shapes of the API (kept apart from the domain types so the wire format is stable).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use converto_core::{Artifact, Conversion};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A conversion as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConversionView {
    /// Its id (a UUIDv7).
    pub id: String,
    /// queued, running, succeeded, failed or cancelled.
    pub status: String,
    /// The input's format.
    pub source_format: String,
    /// The wanted format.
    pub target_format: String,
    /// Converter options.
    #[schema(value_type = Object)]
    pub options: serde_json::Value,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Free text given on submit.
    pub description: Option<String>,
    /// Lowercase tags, sorted: those given and the description's `#hashtags`.
    pub tags: Vec<String>,
    /// Higher runs first.
    pub priority: i32,
    /// Progress of the current attempt.
    pub progress: Option<ProgressView>,
    /// Attempts started.
    pub attempts: u32,
    /// The last error.
    pub error: Option<ErrorView>,
    /// Outputs, with download links.
    pub artifacts: Vec<ArtifactView>,
    /// The input.
    pub input: InputView,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// When the last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Related URLs.
    pub links: LinksView,
}

/// Progress.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProgressView {
    /// 0 to 100.
    pub percent: u8,
    /// What the converter is doing.
    pub stage: Option<String>,
    /// When reported.
    pub updated_at: DateTime<Utc>,
}

/// An error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorView {
    /// Stable code, e.g. `invalid_input`, `timeout`.
    pub code: String,
    /// What happened.
    pub message: String,
}

/// An artifact.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ArtifactView {
    /// Name, unique within the conversion.
    pub name: String,
    /// Format.
    pub format: String,
    /// Bytes.
    pub size: u64,
    /// `sha256:<hex>`.
    pub checksum: String,
    /// Download URL.
    pub url: String,
    /// A download URL that works without credentials until it expires (for a browser or an
    /// `<img>`), for this one artifact; given by `GET /v1/conversions/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_url: Option<String>,
}

/// The input.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InputView {
    /// The uploaded file's (sanitised) name.
    pub name: Option<String>,
    /// Bytes.
    pub size: u64,
}

/// Related URLs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LinksView {
    /// This record.
    #[serde(rename = "self")]
    pub this: String,
    /// Server-Sent Events.
    pub events: String,
    /// Cancel.
    pub cancel: String,
}

/// The download path of an artifact.
pub fn artifact_url(id: &str, a: &Artifact) -> String {
    format!(
        "/v1/conversions/{id}/artifacts/{}",
        percent_encode_segment(&a.name)
    )
}

/// Percent-encodes one path segment (everything but unreserved characters).
pub fn percent_encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl From<&Conversion> for ConversionView {
    fn from(c: &Conversion) -> Self {
        let id = c.id.to_string();
        Self {
            status: c.status.to_string(),
            source_format: c.source_format.to_string(),
            target_format: c.target_format.to_string(),
            options: c.options.clone(),
            labels: c.labels.clone(),
            description: c.description.clone(),
            tags: c.tags.clone(),
            priority: c.priority,
            progress: c.progress.as_ref().map(|p| ProgressView {
                percent: p.percent,
                stage: p.stage.clone(),
                updated_at: p.updated_at,
            }),
            attempts: c.attempts,
            error: c.error.as_ref().map(|e| ErrorView {
                code: e.code.clone(),
                message: e.message.clone(),
            }),
            artifacts: c
                .artifacts
                .iter()
                .map(|a| ArtifactView {
                    name: a.name.clone(),
                    format: a.format.to_string(),
                    size: a.size,
                    checksum: a.checksum.clone(),
                    url: artifact_url(&id, a),
                    signed_url: None,
                })
                .collect(),
            input: InputView {
                name: c.input_name.clone(),
                size: c.input_size,
            },
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            updated_at: c.updated_at,
            links: LinksView {
                this: format!("/v1/conversions/{id}"),
                events: format!("/v1/conversions/{id}/events"),
                cancel: format!("/v1/conversions/{id}/cancel"),
            },
            id,
        }
    }
}

/// A page of conversions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ListView {
    /// In the order asked for (newest first by default).
    pub items: Vec<ConversionView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Where and how to upload a file before converting it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UploadTicket {
    /// Pass as `upload_id` to `POST /v1/conversions`.
    pub upload_id: String,
    /// Always `PUT`.
    pub method: String,
    /// Where to PUT the bytes: a presigned object-storage URL, or this server's own endpoint.
    pub url: String,
    /// Whether `url` is a presigned object-storage URL.
    pub presigned: bool,
    /// When the URL stops working.
    pub expires_at: DateTime<Utc>,
    /// The largest file the URL accepts, in bytes.
    pub max_bytes: u64,
}

/// A finished upload.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UploadView {
    /// Its id.
    pub upload_id: String,
    /// Bytes stored.
    pub size: u64,
}
