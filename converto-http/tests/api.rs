//! The HTTP API through `oneshot`, on in-memory backends with the testkit's scripted converter.

mod common;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use common::{json_of, problem};
use converto_core::Backends;
use converto_core::testkit::engine::{Workers, engine_with, fast_config};
use converto_http::{ApiSettings, AppState, app};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Api {
    router: Router,
    backends: Backends,
    _workers: Workers,
}

fn api_with(settings: ApiSettings) -> Api {
    let backends = Backends::in_memory();
    let (engine, _) = engine_with(&backends, fast_config().max_input_bytes(Some(10_000)));
    let workers = Workers::start(&engine);
    Api {
        router: app(AppState::new(engine, settings)),
        backends,
        _workers: workers,
    }
}

fn api() -> Api {
    api_with(ApiSettings::default())
}

const BOUNDARY: &str = "----convertotestboundary";

/// A multipart body from (name, file name, bytes) parts.
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file, data) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

impl Api {
    async fn call(&self, req: Request<Body>) -> Response<Body> {
        self.router.clone().oneshot(req).await.expect("infallible")
    }

    async fn submit(&self, parts: &[(&str, Option<&str>, &[u8])]) -> Response<Body> {
        let req = Request::post("/v1/conversions")
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(Body::from(multipart(parts)))
            .expect("request");
        self.call(req).await
    }

    async fn get(&self, uri: &str) -> Response<Body> {
        self.call(Request::get(uri).body(Body::empty()).expect("request"))
            .await
    }

    async fn post(&self, uri: &str) -> Response<Body> {
        self.call(Request::post(uri).body(Body::empty()).expect("request"))
            .await
    }

    async fn delete(&self, uri: &str) -> Response<Body> {
        self.call(Request::delete(uri).body(Body::empty()).expect("request"))
            .await
    }

    /// Follows the SSE stream to its end and returns the event names in order.
    async fn follow(&self, id: &str) -> Vec<String> {
        let resp = self.get(&format!("/v1/conversions/{id}/events")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
            .await
            .expect("events end")
            .expect("body");
        let text = String::from_utf8(body.to_bytes().to_vec()).expect("utf8");
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_owned)
            .collect()
    }

    /// Asserts nothing was left behind by a refused request.
    async fn assert_nothing_stored(&self) {
        // Only the service's own secret (made when a link was first signed) may be there.
        let blobs: Vec<_> = self
            .backends
            .blobs
            .list("")
            .await
            .expect("list")
            .into_iter()
            .filter(|b| !b.key.starts_with("system/"))
            .collect();
        assert!(blobs.is_empty(), "blobs left behind: {blobs:?}");
        let resp = self.get("/v1/conversions").await;
        assert_eq!(json_of(resp).await["items"], json!([]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_follow_download() {
    let api = api();
    let resp = api
        .submit(&[
            ("target_format", None, b"upper"),
            ("options", None, br#"{"steps": 5}"#),
            ("labels", None, b"project=apollo"),
            ("file", Some("notes.txt"), b"hello over http"),
        ])
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()[header::LOCATION]
        .to_str()
        .expect("location")
        .to_owned();
    let body = json_of(resp).await;
    let id = body["id"].as_str().expect("id").to_owned();
    assert_eq!(location, format!("/v1/conversions/{id}"));
    assert_eq!(body["source_format"], "txt");
    assert_eq!(body["labels"]["project"], "apollo");

    let events = api.follow(&id).await;
    assert!(
        events.last().is_some_and(|e| e.contains("\"succeeded\"")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.contains("\"progress\"")),
        "no progress events: {events:?}"
    );

    let rec = json_of(api.get(&location).await).await;
    assert_eq!(rec["status"], "succeeded");
    assert_eq!(rec["progress"]["percent"], 100);
    let url = rec["artifacts"][0]["url"].as_str().expect("url").to_owned();
    let size = rec["artifacts"][0]["size"].as_u64().expect("size");

    let resp = api.get(&url).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let etag = resp.headers()[header::ETAG]
        .to_str()
        .expect("etag")
        .to_owned();
    assert_eq!(resp.headers()[header::ACCEPT_RANGES], "bytes");
    let cd = resp.headers()[header::CONTENT_DISPOSITION]
        .to_str()
        .expect("cd")
        .to_owned();
    assert!(cd.contains("filename=\"notes.upper\""), "{cd}");
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&bytes[..], b"HELLO OVER HTTP\nattempt=1");
    assert_eq!(bytes.len() as u64, size);

    let ranged = api
        .call(
            Request::get(&url)
                .header(header::RANGE, "bytes=6-9")
                .body(Body::empty())
                .expect("r"),
        )
        .await;
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        ranged.headers()[header::CONTENT_RANGE],
        format!("bytes 6-9/{size}").as_str()
    );
    assert_eq!(
        &ranged.into_body().collect().await.expect("b").to_bytes()[..],
        b"OVER"
    );
    let suffix = api
        .call(
            Request::get(&url)
                .header(header::RANGE, "bytes=-9")
                .body(Body::empty())
                .expect("r"),
        )
        .await;
    assert_eq!(
        &suffix.into_body().collect().await.expect("b").to_bytes()[..],
        b"attempt=1"
    );
    let bad = api
        .call(
            Request::get(&url)
                .header(header::RANGE, format!("bytes={size}-"))
                .body(Body::empty())
                .expect("r"),
        )
        .await;
    assert_eq!(bad.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let cached = api
        .call(
            Request::get(&url)
                .header(header::IF_NONE_MATCH, &etag)
                .body(Body::empty())
                .expect("r"),
        )
        .await;
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);

    // A finished conversion cannot be cancelled; it can be deleted.
    problem(
        api.post(&format!("/v1/conversions/{id}/cancel")).await,
        StatusCode::CONFLICT,
    )
    .await;
    let del = api.delete(&location).await;
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    problem(api.get(&location).await, StatusCode::NOT_FOUND).await;
    api.assert_nothing_stored().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_leaves_nothing() {
    let api = api();
    let p = problem(
        api.submit(&[("target_format", None, b"upper")]).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(
        p["detail"].as_str().is_some_and(|d| d.contains("file")),
        "{p}"
    );
    let p = problem(
        api.submit(&[("file", Some("a.txt"), b"abc")]).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("target_format")),
        "{p}"
    );
    // Unsupported route: the supported ones are listed.
    let p = problem(
        api.submit(&[
            ("target_format", None, b"step"),
            ("file", Some("a.txt"), b"abc"),
        ])
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(
        p["supported_routes"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "{p}"
    );
    assert!(
        p["supported_targets"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("upper"))),
        "{p}"
    );
    // Options the converter refuses: refused at submit, before the upload is stored.
    let p = problem(
        api.submit(&[
            ("target_format", None, b"upper"),
            ("options", None, br#"{"mode":"explode"}"#),
            ("file", Some("a.txt"), b"abc"),
        ])
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(
        p["type"],
        json!("urn:converto:problem:invalid-options"),
        "{p}"
    );
    assert!(
        p["detail"].as_str().is_some_and(|d| d.contains("explode")),
        "{p}"
    );
    type Form<'a> = &'a [(&'a str, Option<&'a str>, &'a [u8])];
    let refused: [(&str, Form<'_>, StatusCode); 9] = [
        (
            "the route decided by the file name after upload",
            &[
                ("file", Some("a.txt"), b"abc"),
                ("target_format", None, b"step"),
            ],
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "an empty file",
            &[
                ("target_format", None, b"upper"),
                ("file", Some("empty.txt"), b""),
            ],
            StatusCode::BAD_REQUEST,
        ),
        (
            "a file above the limit",
            &[
                ("target_format", None, b"upper"),
                ("file", Some("big.txt"), &[b'a'; 20_000]),
            ],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "options that are not JSON",
            &[
                ("target_format", None, b"upper"),
                ("options", None, b"{not json"),
                ("file", Some("a.txt"), b"abc"),
            ],
            StatusCode::BAD_REQUEST,
        ),
        (
            "options that are not an object",
            &[
                ("target_format", None, b"upper"),
                ("file", Some("a.txt"), b"abc"),
                ("options", None, b"[1,2]"),
            ],
            StatusCode::BAD_REQUEST,
        ),
        (
            "a target format that is a path",
            &[
                ("target_format", None, b"../etc"),
                ("file", Some("a.txt"), b"abc"),
            ],
            StatusCode::BAD_REQUEST,
        ),
        (
            "a file of no known format",
            &[
                ("target_format", None, b"upper"),
                ("file", Some("noext"), b"\x00\x01\x02"),
            ],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "an unknown field",
            &[
                ("target_format", None, b"upper"),
                ("surprise", None, b"x"),
                ("file", Some("a.txt"), b"abc"),
            ],
            StatusCode::BAD_REQUEST,
        ),
        (
            "a priority that is not a number",
            &[
                ("target_format", None, b"upper"),
                ("priority", None, b"high"),
                ("file", Some("a.txt"), b"abc"),
            ],
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (what, form, status) in refused {
        let resp = api.submit(form).await;
        assert_eq!(resp.status(), status, "{what}");
        problem(resp, status).await;
    }
    let plain = Request::post("/v1/conversions")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("hi"))
        .expect("r");
    problem(api.call(plain).await, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let broken = Request::post("/v1/conversions")
        .header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(Body::from(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\nabc")))
        .expect("r");
    problem(api.call(broken).await, StatusCode::BAD_REQUEST).await;
    let declared_huge = Request::post("/v1/conversions")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .header(header::CONTENT_LENGTH, "50000000000")
        .body(Body::empty())
        .expect("r");
    let resp = api.call(declared_huge).await;
    assert_eq!(resp.headers()[header::CONNECTION], "close");
    problem(resp, StatusCode::PAYLOAD_TOO_LARGE).await;
    api.assert_nothing_stored().await;

    for (uri, status) in [
        ("/v1/conversions/not-an-id", StatusCode::BAD_REQUEST),
        (
            "/v1/conversions/..%2F..%2Fetc%2Fpasswd",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/conversions/0190c3e0-7b9a-7cc1-8f0e-1f2a3b4c5d6e",
            StatusCode::NOT_FOUND,
        ),
        (
            "/v1/conversions/0190c3e0-7b9a-7cc1-8f0e-1f2a3b4c5d6e/artifacts/x",
            StatusCode::NOT_FOUND,
        ),
        ("/v1/conversions?limit=0", StatusCode::BAD_REQUEST),
        ("/v1/conversions?status=exploded", StatusCode::BAD_REQUEST),
        ("/v1/conversions?cursor=abc", StatusCode::BAD_REQUEST),
        ("/v1/nothing-here", StatusCode::NOT_FOUND),
    ] {
        let resp = api.get(uri).await;
        assert_eq!(resp.status(), status, "GET {uri}");
        problem(resp, status).await;
    }
    problem(
        api.post("/v1/conversions/0190c3e0-7b9a-7cc1-8f0e-1f2a3b4c5d6e/cancel")
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_file_names_are_sanitised() {
    let api = api();
    let resp = api
        .submit(&[
            ("target_format", None, b"upper"),
            ("file", Some("../../etc/passwd.txt"), b"abc"),
        ])
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body = json_of(resp).await;
    assert_eq!(body["input"]["name"], "passwd.txt");
    let id = body["id"].as_str().expect("id");
    for b in api.backends.blobs.list("").await.expect("list") {
        assert!(
            b.key.starts_with("tenants/default/uploads/")
                || b.key
                    .starts_with(&format!("tenants/default/conversions/{id}/"))
                || b.key.starts_with("system/"),
            "unexpected key {}",
            b.key
        );
        assert!(!b.key.contains(".."));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_first_then_convert() {
    let api = api();
    let resp = api.post("/v1/uploads").await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let ticket = json_of(resp).await;
    assert_eq!(ticket["presigned"], false);
    let url = ticket["url"].as_str().expect("url").to_owned();
    let upload_id = ticket["upload_id"].as_str().expect("id").to_owned();
    let put = api
        .call(
            Request::put(&url)
                .body(Body::from("uploaded first"))
                .expect("r"),
        )
        .await;
    assert_eq!(put.status(), StatusCode::CREATED);
    assert_eq!(json_of(put).await["size"], 14);
    let submit = |body: Value| {
        Request::post("/v1/conversions")
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", "k1")
            .body(Body::from(body.to_string()))
            .expect("r")
    };
    let resp = api
        .call(submit(
            json!({"upload_id": upload_id, "target_format": "upper", "file_name": "first.txt"}),
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let id = json_of(resp).await["id"].as_str().expect("id").to_owned();
    let replay = api
        .call(submit(
            json!({"upload_id": upload_id, "target_format": "upper", "file_name": "first.txt"}),
        ))
        .await;
    assert_eq!(
        replay.status(),
        StatusCode::OK,
        "an idempotent replay answers 200 with the first conversion"
    );
    assert_eq!(json_of(replay).await["id"], id.as_str());
    let events = api.follow(&id).await;
    assert!(events.last().is_some_and(|e| e.contains("succeeded")));
    problem(
        api.call(submit(
            json!({"upload_id": "0190c3e0-7b9a-7cc1-8f0e-1f2a3b4c5d6e", "target_format": "upper"}),
        ))
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        api.call(submit(
            json!({"upload_id": "../x", "target_format": "upper"}),
        ))
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        api.call(submit(
            json!({"upload_id": upload_id, "target_format": "upper", "bogus": 1}),
        ))
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        api.call(
            Request::put("/v1/uploads/nope")
                .body(Body::from("x"))
                .expect("r"),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    // Uploads are written once: the conversion above reads this one.
    problem(
        api.call(Request::put(&url).body(Body::from("other")).expect("r"))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    let fresh = json_of(api.post("/v1/uploads").await).await["url"]
        .as_str()
        .expect("url")
        .to_owned();
    problem(
        api.call(Request::put(&fresh).body(Body::empty()).expect("r"))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
}

/// Uploads nobody converts are removed once old enough; an upload a conversion uses is kept,
/// and survives the deletion of one of two conversions made from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclaimed_uploads_are_removed_claimed_ones_kept() {
    let api = api();
    let mut uploads = Vec::new();
    for body in ["converted twice", "never converted"] {
        let ticket = json_of(api.post("/v1/uploads").await).await;
        let url = ticket["url"].as_str().expect("url").to_owned();
        let put = api
            .call(Request::put(&url).body(Body::from(body)).expect("r"))
            .await;
        assert_eq!(put.status(), StatusCode::CREATED);
        uploads.push(ticket["upload_id"].as_str().expect("id").to_owned());
    }
    let mut ids = Vec::new();
    for _ in 0..2 {
        let resp = api
            .call(
                Request::post("/v1/conversions")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(
                        json!({"upload_id": uploads[0], "target_format": "upper", "file_name": "a.txt"})
                            .to_string(),
                    ))
                    .expect("r"),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        ids.push(json_of(resp).await["id"].as_str().expect("id").to_owned());
    }
    let blobs = &api.backends.blobs;
    // The janitor as the engine runs it: the API's engine keeps uploads for their ticket's
    // life and an hour; one over the same backends with no grace removes what nobody claims.
    let (patient, _) = engine_with(&api.backends, fast_config());
    let young = patient.remove_unclaimed_uploads().await.expect("janitor");
    assert_eq!(young, 0, "uploads younger than the limit are kept");
    let (eager, _) = engine_with(
        &api.backends,
        fast_config()
            .upload_ttl(Duration::ZERO)
            .janitor(Duration::ZERO, Duration::ZERO),
    );
    let removed = eager.remove_unclaimed_uploads().await.expect("janitor");
    assert_eq!(removed, 1);
    let key = |i: usize| format!("tenants/default/uploads/{}", uploads[i]);
    assert!(
        blobs.head(&key(0)).await.is_ok(),
        "a claimed upload was removed"
    );
    assert!(
        blobs.head(&key(1)).await.is_err(),
        "the unclaimed upload is still there"
    );

    let deleted = api.delete(&format!("/v1/conversions/{}", ids[0])).await;
    assert!(deleted.status().is_success(), "{}", deleted.status());
    assert!(
        blobs.head(&key(0)).await.is_ok(),
        "deleting one conversion removed the upload the other one converts"
    );
    let events = api.follow(&ids[1]).await;
    assert!(
        events.last().is_some_and(|e| e.contains("succeeded")),
        "{events:?}"
    );
    let deleted = api.delete(&format!("/v1/conversions/{}", ids[1])).await;
    assert!(deleted.status().is_success());
    let left = blobs.list("tenants/default/uploads/").await.expect("list");
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_running_conversion() {
    let api = api();
    let resp = api
        .submit(&[
            ("target_format", None, b"upper"),
            ("options", None, br#"{"mode":"hang"}"#),
            ("file", Some("a.txt"), b"abc"),
        ])
        .await;
    let id = json_of(resp).await["id"].as_str().expect("id").to_owned();
    for _ in 0..200 {
        if json_of(api.get(&format!("/v1/conversions/{id}")).await).await["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resp = api.post(&format!("/v1/conversions/{id}/cancel")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_of(resp).await["status"], "cancelled");
    let events = api.follow(&id).await;
    assert_eq!(
        events.len(),
        1,
        "a finished conversion's stream is its final status: {events:?}"
    );
    assert!(events[0].contains("cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_pages() {
    let api = api();
    for i in 0..5 {
        let label = format!("batch={}", if i % 2 == 0 { "even" } else { "odd" });
        let resp = api
            .submit(&[
                ("target_format", None, b"upper"),
                ("labels", None, label.as_bytes()),
                ("file", Some(&format!("f{i}.txt")), b"abc"),
            ])
            .await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
    }
    let page = json_of(api.get("/v1/conversions?limit=2").await).await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    let cursor = page["next_cursor"].as_str().expect("cursor").to_owned();
    let next = json_of(
        api.get(&format!("/v1/conversions?limit=2&cursor={cursor}"))
            .await,
    )
    .await;
    assert_ne!(next["items"][0]["id"], page["items"][0]["id"]);
    let even = json_of(api.get("/v1/conversions?label=batch=even").await).await;
    assert_eq!(even["items"].as_array().map(Vec::len), Some(3));
    let named = json_of(api.get("/v1/conversions?q=f3").await).await;
    assert_eq!(named["items"].as_array().map(Vec::len), Some(1));
    let none = json_of(api.get("/v1/conversions?target_format=obj").await).await;
    assert_eq!(none["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_by_tags_text_and_order() {
    let api = api();
    let mut ids = Vec::new();
    for (file, description, tags) in [
        ("gear.txt", "Rendering a #Gear", "Red, photo"),
        ("bracket.txt", "", "blue"),
        ("plate.txt", "renders fine", "red"),
    ] {
        let resp = api
            .submit(&[
                ("target_format", None, b"upper"),
                ("description", None, description.as_bytes()),
                ("tags", None, tags.as_bytes()),
                ("file", Some(file), b"abc"),
            ])
            .await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let view = json_of(resp).await;
        ids.push(view["id"].as_str().expect("id").to_owned());
    }
    let first = json_of(api.get(&format!("/v1/conversions/{}", ids[0])).await).await;
    assert_eq!(first["tags"], json!(["gear", "photo", "red"]));
    assert_eq!(first["description"], "Rendering a #Gear");
    let count = async |query: &str| {
        let page = json_of(api.get(&format!("/v1/conversions?{query}")).await).await;
        page["items"].as_array().map(Vec::len).unwrap_or(usize::MAX)
    };
    assert_eq!(count("tag=red").await, 2);
    assert_eq!(count("tag=RED&tag=blue").await, 3);
    assert_eq!(count("q=rendered").await, 2);
    assert_eq!(count("q=rend&tag=gear").await, 1);
    assert_eq!(count("q=brack").await, 1);
    assert_eq!(count("q=%22%27%20OR%201%3D1%20--%20*").await, 0);
    // Oldest first, one a page, each once.
    let mut seen = Vec::new();
    let mut uri = "/v1/conversions?sort=created&limit=1".to_owned();
    for _ in 0..5 {
        let page = json_of(api.get(&uri).await).await;
        seen.extend(
            page["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|c| c["id"].as_str().expect("id").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/conversions?sort=created&limit=1&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    for bad in [
        "tag=no%20spaces",
        "sort=size",
        "cursor=12_x",
        "status=queued&status=failed",
        &format!("q={}", "a".repeat(257)),
    ] {
        let resp = api.get(&format!("/v1/conversions?{bad}")).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let resp = api
        .submit(&[
            ("target_format", None, b"upper"),
            ("tags", None, b"not/a/tag"),
            ("file", Some("x.txt"), b"abc"),
        ])
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = api
        .submit(&[
            ("target_format", None, b"upper"),
            ("description", None, "x".repeat(4001).as_bytes()),
            ("file", Some("x.txt"), b"abc"),
        ])
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_endpoints() {
    let api = api();
    let formats = json_of(api.get("/v1/formats").await).await;
    assert!(formats["routes"].as_array().is_some_and(|r| {
        r.iter()
            .any(|r| r["source"] == "txt" && r["target"] == "upper")
    }));
    assert_eq!(json_of(api.get("/healthz").await).await["status"], "ok");
    let ready = api.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(json_of(ready).await["checks"]["store"], "ok");
    let _ = api.get("/v1/formats").await;
    let metrics = api.get("/metrics").await;
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = String::from_utf8(
        metrics
            .into_body()
            .collect()
            .await
            .expect("b")
            .to_bytes()
            .to_vec(),
    )
    .expect("utf8");
    for name in [
        "converto_http_requests_total",
        "converto_conversions",
        "converto_queue_jobs",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    let spec = json_of(api.get("/openapi.json").await).await;
    for path in [
        "/v1/conversions",
        "/v1/conversions/{id}",
        "/v1/conversions/{id}/events",
        "/v1/conversions/{id}/artifacts/{name}",
        "/v1/uploads",
        "/v1/uploads/{id}",
        "/v1/formats",
        "/readyz",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the OpenAPI spec"
        );
    }
}
