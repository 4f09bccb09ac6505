//! The `Converter` conformance suite: what the engine relies on from every converter.
//!
//! A converter's tests call [`run_converter_suite`] with a [`ConverterSuite`]: one input it
//! converts, one it must refuse. The checks drive the converter directly (no engine), through a
//! [`ConvertContext`] over scratch files, as the engine and the `converto convert` command do.

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::within;
use crate::converter::{
    ConvertContext, ConvertError, ConvertRequest, Converter, Output, OutputBody,
};
use crate::{ConversionId, Format};

/// One conversion to try: a route, options and an input file's bytes and name.
#[derive(Debug, Clone)]
pub struct ConverterCase {
    /// Input format.
    pub source: Format,
    /// Wanted format.
    pub target: Format,
    /// Options (a JSON object or null).
    pub options: serde_json::Value,
    /// The input file's name (its extension may matter to the converter).
    pub file_name: String,
    /// The input's bytes.
    pub input: Vec<u8>,
}

impl ConverterCase {
    /// A case from format names (panics on an invalid name: test input).
    pub fn new(source: &str, target: &str, file_name: &str, input: impl Into<Vec<u8>>) -> Self {
        Self {
            source: Format::new(source).expect("source format"),
            target: Format::new(target).expect("target format"),
            options: serde_json::Value::Null,
            file_name: file_name.to_owned(),
            input: input.into(),
        }
    }

    /// With options.
    pub fn options(mut self, options: serde_json::Value) -> Self {
        self.options = options;
        self
    }
}

/// What the suite needs of a converter's author.
#[derive(Debug, Clone)]
pub struct ConverterSuite {
    /// A conversion that succeeds.
    pub good: ConverterCase,
    /// A conversion whose input is corrupt: it must fail with a permanent error.
    pub bad: ConverterCase,
}

/// Runs every check.
pub async fn run_converter_suite(converter: &dyn Converter, suite: &ConverterSuite) {
    routes_are_declared(converter, suite);
    outputs_are_named_and_typed(converter, &suite.good).await;
    progress_is_monotonic_and_bounded(converter, &suite.good).await;
    bad_input_is_a_permanent_error(converter, &suite.bad).await;
    cancellation_is_honoured(converter, &suite.good).await;
}

/// The cases' routes are among the converter's declared routes, and its name is not empty.
pub fn routes_are_declared(converter: &dyn Converter, suite: &ConverterSuite) {
    assert!(!converter.name().is_empty(), "a converter needs a name");
    let routes = converter.routes();
    for case in [&suite.good, &suite.bad] {
        assert!(
            routes
                .iter()
                .any(|r| r.source == case.source && r.target == case.target),
            "{} does not declare {} -> {}",
            converter.name(),
            case.source,
            case.target
        );
    }
}

type Reports = Arc<Mutex<Vec<u8>>>;

async fn run(
    converter: &dyn Converter,
    case: &ConverterCase,
    dir: &Path,
    cancel: CancellationToken,
) -> (Result<Vec<Output>, ConvertError>, Vec<u8>) {
    let input = dir.join(&case.file_name);
    tokio::fs::write(&input, &case.input)
        .await
        .expect("write the input");
    let work = dir.join("work");
    tokio::fs::create_dir_all(&work).await.expect("work dir");
    let reports: Reports = Arc::default();
    let sink = Arc::clone(&reports);
    let ctx = ConvertContext::for_file(
        input,
        work,
        Arc::new(move |p: u8, _stage: Option<&str>| sink.lock().push(p)),
    )
    .with_cancel(cancel);
    let request = ConvertRequest {
        id: ConversionId::new(),
        attempt: 1,
        source: case.source.clone(),
        target: case.target.clone(),
        options: case.options.clone(),
    };
    let result = within(
        120,
        "a conversion of a test input",
        converter.convert(&request, &ctx),
    )
    .await;
    let reports = reports.lock().clone();
    (result, reports)
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// A successful conversion gives at least one output; every output has a unique, safe file
/// name (no separators, not hidden, not empty) and a body that exists and is not empty; the
/// first has the target format (the others, such as a preview image, may have their own).
pub async fn outputs_are_named_and_typed(converter: &dyn Converter, case: &ConverterCase) {
    let dir = tempdir();
    let (result, _) = run(converter, case, dir.path(), CancellationToken::new()).await;
    let outputs = result.unwrap_or_else(|e| panic!("{} failed: {e}", converter.name()));
    assert!(
        !outputs.is_empty(),
        "a successful conversion with no output"
    );
    let mut names = std::collections::BTreeSet::new();
    for out in &outputs {
        assert!(
            !out.name.is_empty()
                && !out.name.starts_with('.')
                && !out.name.contains(['/', '\\', '\0']),
            "unsafe artifact name {:?}",
            out.name
        );
        assert!(
            names.insert(out.name.clone()),
            "duplicate artifact {:?}",
            out.name
        );
        // The first output is the conversion's result; later ones may be side artifacts in
        // another format (a mesh conversion's `preview.png`).
        if std::ptr::eq(out, &outputs[0]) {
            assert_eq!(
                out.format, case.target,
                "the first artifact {:?} has the wrong format",
                out.name
            );
        }
        let len = match &out.body {
            OutputBody::Bytes(b) => b.len() as u64,
            OutputBody::File(p) => std::fs::metadata(p)
                .unwrap_or_else(|e| panic!("artifact {:?} at {}: {e}", out.name, p.display()))
                .len(),
        };
        assert!(len > 0, "artifact {:?} is empty", out.name);
    }
}

/// Progress reports are percentages (0 to 100) and never go backwards within a conversion.
pub async fn progress_is_monotonic_and_bounded(converter: &dyn Converter, case: &ConverterCase) {
    let dir = tempdir();
    let (result, reports) = run(converter, case, dir.path(), CancellationToken::new()).await;
    result.unwrap_or_else(|e| panic!("{} failed: {e}", converter.name()));
    assert!(reports.iter().all(|p| *p <= 100), "{reports:?}");
    assert!(
        reports.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {reports:?}"
    );
}

/// A corrupt input fails with a permanent error (retrying cannot help) that is not a
/// cancellation, and with a code.
pub async fn bad_input_is_a_permanent_error(converter: &dyn Converter, case: &ConverterCase) {
    let dir = tempdir();
    let (result, _) = run(converter, case, dir.path(), CancellationToken::new()).await;
    let err = match result {
        Ok(outputs) => panic!(
            "{} accepted a corrupt input and made {} outputs",
            converter.name(),
            outputs.len()
        ),
        Err(e) => e,
    };
    assert!(
        !err.is_temporary(),
        "a corrupt input is not temporary: {err}"
    );
    assert!(!matches!(err, ConvertError::Cancelled), "{err}");
    assert!(!err.code().is_empty());
}

/// A conversion whose token is cancelled returns [`ConvertError::Cancelled`] (within the
/// suite's bound), never outputs: the engine counts on it to free the worker slot.
pub async fn cancellation_is_honoured(converter: &dyn Converter, case: &ConverterCase) {
    let dir = tempdir();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let (result, _) = run(converter, case, dir.path(), cancel).await;
    assert!(
        matches!(result, Err(ConvertError::Cancelled)),
        "{} ignored its cancelled token: {:?}",
        converter.name(),
        result.map(|o| o.len())
    );
}
