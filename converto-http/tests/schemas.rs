//! `GET /v1/formats` publishes each route's options as JSON Schema: for every built-in route
//! (mesh, image, and the CAD process routes of `routes/cad.toml`) the published schema accepts
//! the converter's documented examples and refuses what the converter's own check refuses, and
//! never lets through what that check refuses.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use converto_core::registry::ConverterRegistry;
use converto_core::{Backends, Engine, Format};
use converto_http::{ApiSettings, AppState, app};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

fn registry() -> ConverterRegistry {
    // The CAD routes as shipped, with a program that exists everywhere (the options are what
    // is tested, nothing runs).
    let cad = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../routes/cad.toml"))
        .expect("routes/cad.toml");
    let cad = cad.replace(
        "program = \"converto-stub-converter\"",
        "program = \"/bin/sh\"",
    );
    let process =
        converto_adapters::process::ProcessConverter::from_toml_str(&cad).expect("cad routes");
    ConverterRegistry::new()
        .with(Arc::new(converto_adapters::mesh::MeshConverter::new()))
        .with(Arc::new(converto_adapters::image::ImageConverter::new(
            converto_adapters::image::ImageConfig::default(),
        )))
        .with(Arc::new(process))
}

async fn published_routes(registry: ConverterRegistry) -> Vec<Value> {
    let engine = Engine::builder()
        .backends(Backends::in_memory())
        .registry(registry)
        .build()
        .expect("engine");
    let resp = app(AppState::new(engine, ApiSettings::default()))
        .oneshot(
            Request::get("/v1/formats")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let formats: Value = serde_json::from_slice(&body).expect("json");
    formats["routes"].as_array().expect("routes").clone()
}

/// Options every converter's documentation names, by converter; `None`: for every route.
fn examples(converter: &str, target: &str) -> Vec<Value> {
    match (converter, target) {
        ("mesh", "obj") => vec![json!({}), json!({"encoding": "ascii", "preview": false})],
        ("mesh", "glb") => vec![json!({}), json!({"preview_size": 256})],
        ("mesh", _) => vec![
            json!({"encoding": "ascii"}),
            json!({"encoding": "binary", "preview_size": 1024}),
        ],
        ("image", "jpeg" | "webp") => vec![
            json!({"variants": "240p,720p"}),
            json!({"variants": ["720p", "1280x720"], "quality": 80}),
            json!({"width": 640, "fit": "cover", "upscale": true}),
        ],
        ("image", _) => vec![json!({"variants": "240p, 720P"}), json!({"height": 100})],
        ("cad", _) => vec![json!({}), json!({"duration_ms": 2000})],
        _ => panic!("no examples for converter {converter}"),
    }
}

/// Options the converter's check refuses (a schema must refuse them too).
fn refused(converter: &str, target: &str) -> Vec<Value> {
    let mut bad = vec![json!({"no_such_option": 1}), json!([1, 2]), json!("x")];
    match converter {
        "mesh" => bad.extend([
            json!({"encoding": "utf8"}),
            json!({"preview": "yes"}),
            json!({"preview_size": 1}),
            json!({"preview_size": 100000}),
        ]),
        "image" => {
            bad.extend([
                json!({"width": 0}),
                json!({"height": 16385}),
                json!({"fit": "stretch"}),
                json!({"quality": 101}),
                json!({"variants": ""}),
                json!({"variants": "720"}),
                json!({"variants": "../x"}),
                json!({"variants": [1]}),
                json!({"variants": "720p", "width": 10}),
                json!({"upscale": 1}),
            ]);
            if target == "png" {
                bad.push(json!({"quality": 80}));
            }
        }
        "cad" => bad.extend([
            json!({"duration_ms": -1}),
            json!({"duration_ms": 60001}),
            json!({"duration_ms": 1.5}),
        ]),
        _ => {}
    }
    bad
}

#[tokio::test]
async fn every_builtin_route_publishes_a_schema_that_agrees_with_the_converter() {
    let registry = registry();
    let routes = published_routes(registry.clone()).await;
    assert!(routes.len() > 20, "{routes:?}");
    let mut checked = std::collections::BTreeSet::new();
    for route in &routes {
        let (source, target, converter) = (
            route["source"].as_str().expect("source"),
            route["target"].as_str().expect("target"),
            route["converter"].as_str().expect("converter"),
        );
        let what = format!("{converter}: {source} -> {target}");
        let schema = route
            .get("options_schema")
            .unwrap_or_else(|| panic!("{what}: no options_schema"));
        let validator = jsonschema::draft202012::new(schema)
            .unwrap_or_else(|e| panic!("{what}: not a valid JSON Schema: {e}"));
        if route
            .get("via")
            .and_then(Value::as_array)
            .is_some_and(|v| !v.is_empty())
        {
            // A chain: its hops' options together; each hop is checked as a direct route.
            assert!(validator.is_valid(&json!({})), "{what}");
            assert!(!validator.is_valid(&json!([1])), "{what}");
            continue;
        }
        let conv = registry
            .find(
                &Format::new(source).expect("format"),
                &Format::new(target).expect("format"),
            )
            .expect("converter");
        let check = |options: &Value| {
            conv.check_options(
                &Format::new(source).expect("format"),
                &Format::new(target).expect("format"),
                options,
            )
        };
        for good in examples(converter, target) {
            assert!(validator.is_valid(&good), "{what}: schema refuses {good}");
            assert!(check(&good).is_ok(), "{what}: converter refuses {good}");
        }
        for bad in refused(converter, target) {
            assert!(check(&bad).is_err(), "{what}: converter accepts {bad}");
            assert!(!validator.is_valid(&bad), "{what}: schema accepts {bad}");
        }
        checked.insert(converter.to_owned());
    }
    assert_eq!(
        checked.into_iter().collect::<Vec<_>>(),
        ["cad", "image", "mesh"]
    );
}
