//! The web UI: a page at `/` and its scripts and styles under `/ui/{version}/`, embedded in the
//! binary at compile time (no build step, no network).
//!
//! Caching: the page names its assets under a version (a hash of every asset), so the assets
//! may be cached for a year; the page itself is revalidated on every load (`no-cache` +
//! `ETag`), so a new binary's page is seen at once. Every answer has a strong `ETag` (a content
//! hash) and answers `If-None-Match` with 304. Each asset is gzip-compressed once, on first use,
//! and sent compressed to clients that accept it.
//!
//! The UI is public (it holds no data; the API calls it makes carry the user's key), outside
//! the OpenAPI description, and served with its own Content-Security-Policy: scripts, styles
//! and connections from this origin only, images also from `blob:` and `data:` (previews made
//! in the page), no framing.

use std::io::Write;
use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The page's Content-Security-Policy.
pub const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' blob: data:; connect-src 'self'; font-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Where the versioned assets live.
const ASSET_PREFIX: &str = "/ui/";

/// The placeholder in `index.html` replaced by `/ui/{version}/`.
const VERSION_PLACEHOLDER: &str = "/ui/@version/";

/// One embedded file, ready to send.
#[derive(Debug)]
struct Asset {
    name: &'static str,
    content_type: &'static str,
    raw: Vec<u8>,
    gzip: Option<Vec<u8>>,
    etag: String,
}

impl Asset {
    fn new(name: &'static str, content_type: &'static str, raw: Vec<u8>) -> Self {
        let hash = short_hash(&[&raw]);
        let gzip = gzip(&raw).filter(|z| z.len() < raw.len());
        Self {
            name,
            content_type,
            raw,
            gzip,
            etag: hash,
        }
    }
}

/// The assets, in the order the page loads them.
const SOURCES: [(&str, &str, &[u8]); 5] = [
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../ui/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/api.js"),
    ),
    (
        "form.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/form.js"),
    ),
    (
        "viewer.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/viewer.js"),
    ),
];

const INDEX_HTML: &str = include_str!("../ui/index.html");

#[derive(Debug)]
struct Bundle {
    version: String,
    index: Asset,
    assets: Vec<Asset>,
}

fn bundle() -> &'static Bundle {
    static BUNDLE: OnceLock<Bundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let parts: Vec<&[u8]> = SOURCES.iter().map(|(_, _, bytes)| *bytes).collect();
        let version = short_hash(&parts);
        let index = INDEX_HTML.replace(VERSION_PLACEHOLDER, &format!("{ASSET_PREFIX}{version}/"));
        Bundle {
            index: Asset::new("index.html", "text/html; charset=utf-8", index.into_bytes()),
            assets: SOURCES
                .iter()
                .map(|(name, kind, bytes)| Asset::new(name, kind, bytes.to_vec()))
                .collect(),
            version,
        }
    })
}

fn short_hash(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hex::encode(&hasher.finalize()[..10])
}

fn gzip(raw: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(raw).ok()?;
    encoder.finish().ok()
}

/// Page weight: every file the page loads, as (name, bytes, gzip bytes).
pub fn page_weight() -> Vec<(&'static str, usize, usize)> {
    let b = bundle();
    std::iter::once(&b.index)
        .chain(&b.assets)
        .map(|a| {
            (
                a.name,
                a.raw.len(),
                a.gzip.as_ref().map_or(a.raw.len(), Vec::len),
            )
        })
        .collect()
}

/// Whether `path` is one of the UI's (public) paths.
pub fn is_ui_path(path: &str) -> bool {
    path == "/" || path == "/index.html" || path.starts_with(ASSET_PREFIX)
}

/// The UI's routes, to merge into the application outside the API description.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", axum::routing::get(index))
        .route("/index.html", axum::routing::get(index))
        .route("/ui/{version}/{name}", axum::routing::get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    send(&bundle().index, &headers, "no-cache")
}

async fn asset(Path((version, name)): Path<(String, String)>, headers: HeaderMap) -> Response {
    let b = bundle();
    let Some(asset) = b.assets.iter().find(|a| a.name == name) else {
        return crate::error::ApiError::NotFound {
            detail: "no such file in the web UI".into(),
        }
        .into_response();
    };
    // A page from an older binary asks for an older version: it gets today's file, but one
    // that must not be cached under that version.
    let cache = if version == b.version {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    send(asset, &headers, cache)
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

fn send(asset: &Asset, headers: &HeaderMap, cache: &'static str) -> Response {
    let gzip = asset.gzip.as_ref().filter(|_| accepts_gzip(headers));
    // Each representation has its own tag (RFC 9110 8.8.3).
    let etag = match gzip {
        Some(_) => format!("\"{}-gz\"", asset.etag),
        None => format!("\"{}\"", asset.etag),
    };
    let mut out_headers = HeaderMap::new();
    let etag_value = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"-\""));
    out_headers.insert(header::ETAG, etag_value);
    out_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    out_headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    out_headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    out_headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if matches_etag(headers, &etag) {
        return (StatusCode::NOT_MODIFIED, out_headers).into_response();
    }
    out_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    let body = match gzip {
        Some(z) => {
            out_headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            z.clone()
        }
        None => asset.raw.clone(),
    };
    (out_headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: header::HeaderName, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn gzip_is_chosen_by_accept_encoding() {
        assert!(accepts_gzip(&with(header::ACCEPT_ENCODING, "gzip, br")));
        assert!(accepts_gzip(&with(
            header::ACCEPT_ENCODING,
            "br;q=1, GZIP;q=0.5"
        )));
        assert!(!accepts_gzip(&with(header::ACCEPT_ENCODING, "gzip;q=0")));
        assert!(!accepts_gzip(&with(header::ACCEPT_ENCODING, "identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn etags_match_lists_and_weak_tags() {
        assert!(matches_etag(
            &with(header::IF_NONE_MATCH, "\"a\", W/\"b\""),
            "\"b\""
        ));
        assert!(!matches_etag(
            &with(header::IF_NONE_MATCH, "\"a\""),
            "\"b\""
        ));
    }

    #[test]
    fn the_page_names_its_assets_by_version() {
        let b = bundle();
        let page = String::from_utf8_lossy(&b.index.raw);
        assert!(!page.contains(VERSION_PLACEHOLDER));
        assert!(page.contains(&format!("/ui/{}/app.js", b.version)));
        assert!(page_weight().iter().all(|(_, raw, gz)| gz <= raw));
    }
}
