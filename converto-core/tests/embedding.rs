//! The embedding API: a builder that defaults to in-memory backends, closure converters, a
//! worker handle with graceful shutdown, `wait` and `read_artifact`.

use bytes::Bytes;
use converto_core::{
    ConvertError, Engine, EngineConfig, EngineError, Format, Route, Status, Submission,
    SubmitInput, converter_fn,
};
use futures::TryStreamExt;

fn txt(bytes: &'static str) -> SubmitInput {
    SubmitInput::bytes(Bytes::from_static(bytes.as_bytes()), Some("in.txt".into()))
}

#[tokio::test]
async fn a_closure_converter_runs_end_to_end_on_default_backends() {
    let upper = converter_fn(
        "upper",
        [Route::parse("txt", "upper").expect("route")],
        |_, b| Ok(b.to_ascii_uppercase().into()),
    );
    let engine = Engine::builder().converter(upper).build().expect("engine");
    let workers = engine.start_workers();
    let target = Format::new("upper").expect("format");
    let a = engine
        .submit(Submission::new(target.clone(), txt("abc")))
        .await
        .expect("submit");
    let done = engine.wait(a.conversion.id).await.expect("wait");
    assert_eq!(done.status, Status::Succeeded, "{done:?}");
    let streamed: Vec<Bytes> = engine
        .read_artifact(done.id, "output.upper")
        .await
        .expect("read")
        .try_collect()
        .await
        .expect("body");
    assert_eq!(streamed.concat(), b"ABC");
    assert!(matches!(
        engine.read_artifact(done.id, "nope").await,
        Err(EngineError::ArtifactNotFound { .. })
    ));
    workers.shutdown().await.expect("shutdown");
    // After the shutdown nothing runs: a new submission stays queued.
    let b = engine
        .submit(Submission::new(target, txt("def")))
        .await
        .expect("submit");
    assert_eq!(
        engine.get(b.conversion.id).await.expect("get").status,
        Status::Queued
    );
}

#[tokio::test]
async fn wait_returns_failed_and_cancelled_records_too() {
    let refuse = converter_fn(
        "refuse",
        [Route::parse("txt", "no").expect("route")],
        |_, _| Err(ConvertError::InvalidInput("never".into())),
    );
    let engine = Engine::builder()
        .converter(refuse)
        .config(EngineConfig::default().max_attempts(1))
        .build()
        .expect("engine");
    // Cancelled before any worker exists.
    let c = engine
        .submit(Submission::new(
            Format::new("no").expect("format"),
            txt("x"),
        ))
        .await
        .expect("submit");
    engine.cancel(c.conversion.id).await.expect("cancel");
    let rec = engine.wait(c.conversion.id).await.expect("wait");
    assert_eq!(rec.status, Status::Cancelled);
    let workers = engine.start_workers();
    let f = engine
        .submit(Submission::new(
            Format::new("no").expect("format"),
            txt("x"),
        ))
        .await
        .expect("submit");
    let rec = engine.wait(f.conversion.id).await.expect("wait");
    assert_eq!(rec.status, Status::Failed);
    assert_eq!(
        rec.error.as_ref().map(|e| e.code.as_str()),
        Some("invalid_input")
    );
    workers.shutdown().await.expect("shutdown");
}

#[test]
fn a_zero_lease_is_refused_at_build() {
    let mut config = EngineConfig::default();
    config.lease_duration = std::time::Duration::ZERO;
    assert!(Engine::builder().config(config).build().is_err());
}

#[tokio::test]
async fn closure_converters_pass_the_converter_suite() {
    use converto_core::testkit::converter::{ConverterCase, ConverterSuite, run_converter_suite};
    let upper = converter_fn(
        "upper",
        [Route::parse("txt", "upper").expect("route")],
        |_, b| {
            if b.starts_with(b"\xff") {
                return Err(ConvertError::InvalidInput("not text".into()));
            }
            Ok(b.to_ascii_uppercase().into())
        },
    );
    let suite = ConverterSuite {
        good: ConverterCase::new("txt", "upper", "a.txt", "hello"),
        bad: ConverterCase::new("txt", "upper", "b.txt", b"\xff\xfe".to_vec()),
    };
    run_converter_suite(upper.as_ref(), &suite).await;
}
