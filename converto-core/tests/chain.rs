//! Chained routes through the engine: the planned path runs as one conversion, with one
//! progress bar, one set of artifacts, one cancellation and the failing hop's own error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use converto_core::{
    ConvertContext, ConvertError, ConvertRequest, Converter, ConverterRegistry, Engine,
    EngineConfig, EngineError, Event, Format, Output, Route, Status, Submission, SubmitInput,
    converter_fn,
};
use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Appends `|source>target` to the input, reporting progress in steps.
    Append,
    /// Waits until cancelled.
    Hang,
    /// Fails permanently with the code `middle_broke`.
    Fail,
}

/// A test hop: one route, an option it accepts (if any), a behaviour, and what it saw.
#[derive(Debug)]
struct Step {
    name: &'static str,
    route: Route,
    accepts: Option<&'static str>,
    behaviour: Behaviour,
    runs: AtomicUsize,
    options_seen: Mutex<Vec<Value>>,
    saw_cancel: AtomicBool,
}

impl Step {
    fn new(name: &'static str, s: &str, t: &str, behaviour: Behaviour) -> Arc<Self> {
        Self::accepting(name, s, t, behaviour, None)
    }

    fn accepting(
        name: &'static str,
        s: &str,
        t: &str,
        behaviour: Behaviour,
        accepts: Option<&'static str>,
    ) -> Arc<Self> {
        Arc::new(Self {
            name,
            route: Route::parse(s, t).expect("route"),
            accepts,
            behaviour,
            runs: AtomicUsize::new(0),
            options_seen: Mutex::new(Vec::new()),
            saw_cancel: AtomicBool::new(false),
        })
    }
}

#[async_trait]
impl Converter for Step {
    fn name(&self) -> &str {
        self.name
    }

    fn routes(&self) -> Vec<Route> {
        vec![self.route.clone()]
    }

    fn check_options(&self, _: &Format, _: &Format, options: &Value) -> Result<(), ConvertError> {
        let Some(object) = options.as_object() else {
            return Ok(());
        };
        match object.keys().find(|k| Some(k.as_str()) != self.accepts) {
            Some(k) => Err(ConvertError::InvalidOptions(format!("unknown option {k}"))),
            None => Ok(()),
        }
    }

    async fn convert(
        &self,
        request: &ConvertRequest,
        ctx: &ConvertContext,
    ) -> Result<Vec<Output>, ConvertError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.options_seen.lock().push(request.options.clone());
        match self.behaviour {
            Behaviour::Append => {
                for p in [10u8, 40, 70, 100] {
                    ctx.progress(p, Some("working"));
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                let mut bytes = tokio::fs::read(ctx.input_path().await?).await?;
                bytes.extend_from_slice(
                    format!("|{}>{}", request.source, request.target).as_bytes(),
                );
                let out = ctx
                    .output_dir()
                    .await?
                    .join(format!("output.{}", request.target));
                tokio::fs::write(&out, bytes).await?;
                Ok(vec![Output::file(
                    format!("output.{}", request.target),
                    request.target.clone(),
                    out,
                )])
            }
            Behaviour::Hang => {
                ctx.progress(5, Some("hanging"));
                ctx.cancel_token().cancelled().await;
                self.saw_cancel.store(true, Ordering::SeqCst);
                Err(ConvertError::Cancelled)
            }
            Behaviour::Fail => Err(ConvertError::permanent(
                "middle_broke",
                "boom in the middle",
            )),
        }
    }
}

fn input(text: &'static str, name: &str) -> SubmitInput {
    SubmitInput::bytes(Bytes::from_static(text.as_bytes()), Some(name.into()))
}

fn engine(converters: Vec<Arc<dyn Converter>>) -> Engine {
    let mut registry = ConverterRegistry::new();
    for c in converters {
        registry.register(c);
    }
    Engine::in_memory(
        registry,
        EngineConfig::default()
            .max_attempts(1)
            .progress_interval(Duration::from_millis(1)),
    )
}

fn format(s: &str) -> Format {
    Format::new(s).expect("format")
}

#[tokio::test]
async fn the_shortest_path_runs_as_one_conversion_with_one_artifact() {
    let ab = Step::new("ab", "a", "b", Behaviour::Append);
    let bc = Step::new("bc", "b", "c", Behaviour::Append);
    // An equally short path through x: b comes first alphabetically, so x is never used.
    let ax = Step::new("ax", "a", "x", Behaviour::Append);
    let xc = Step::new("xc", "x", "c", Behaviour::Append);
    let engine = engine(vec![ab.clone(), bc.clone(), ax.clone(), xc.clone()]);
    let workers = engine.start_workers();
    let submitted = engine
        .submit(Submission::new(format("c"), input("in", "in.a")))
        .await
        .expect("a chained pair is accepted");
    let done = engine.wait(submitted.conversion.id).await.expect("wait");
    assert_eq!(done.status, Status::Succeeded, "{done:?}");
    assert_eq!(done.artifacts.len(), 1, "{:?}", done.artifacts);
    assert_eq!(done.artifacts[0].name, "output.c");
    let bytes = engine
        .read_artifact_bytes(done.id, "output.c")
        .await
        .expect("artifact");
    assert_eq!(&bytes[..], b"in|a>b|b>c");
    assert_eq!(
        ax.runs.load(Ordering::SeqCst) + xc.runs.load(Ordering::SeqCst),
        0
    );
    // Only the input and the one artifact are stored: no intermediate.
    let stored = engine.backends().blobs.list("").await.expect("list");
    let of_this: Vec<_> = stored
        .iter()
        .filter(|b| b.key.contains(&done.id.to_string()))
        .collect();
    assert_eq!(of_this.len(), 2, "{of_this:?}");
    assert!(
        of_this.iter().any(|b| b.key.ends_with("/input")),
        "{of_this:?}"
    );
    assert!(
        of_this.iter().any(|b| b.key.ends_with("/output.c")),
        "{of_this:?}"
    );
    workers.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn progress_only_moves_forward_across_hops() {
    let engine = engine(vec![
        Step::new("ab", "a", "b", Behaviour::Append),
        Step::new("bc", "b", "c", Behaviour::Append),
        Step::new("cd", "c", "d", Behaviour::Append),
    ]);
    let submitted = engine
        .submit(Submission::new(format("d"), input("in", "in.a")))
        .await
        .expect("submit");
    let id = submitted.conversion.id;
    let events = engine.watch(id).await.expect("watch");
    let workers = engine.start_workers();
    let collected: Vec<Event> = events
        .take_while(|e| {
            let terminal = matches!(e, Event::Status { status, .. } if status.is_terminal());
            futures::future::ready(!terminal)
        })
        .collect()
        .await;
    let reports: Vec<(u8, String)> = collected
        .iter()
        .filter_map(|e| match e {
            Event::Progress { progress, .. } => {
                Some((progress.percent, progress.stage.clone().unwrap_or_default()))
            }
            _ => None,
        })
        .collect();
    assert!(
        reports.windows(2).all(|w| w[0].0 <= w[1].0),
        "not monotonic: {reports:?}"
    );
    for hop in ["a -> b", "b -> c", "c -> d"] {
        assert!(
            reports.iter().any(|(_, s)| s.starts_with(hop)),
            "no report from {hop}: {reports:?}"
        );
    }
    // The first hop stays within its third of the bar, the last ends it.
    assert!(
        reports
            .iter()
            .filter(|(_, s)| s.starts_with("a -> b"))
            .all(|(p, _)| *p <= 33),
        "{reports:?}"
    );
    assert_eq!(reports.last().map(|r| r.0), Some(100), "{reports:?}");
    let done = engine.wait(id).await.expect("wait");
    assert_eq!(done.status, Status::Succeeded);
    workers.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn cancelling_mid_chain_stops_the_running_hop() {
    let hang = Step::new("bc", "b", "c", Behaviour::Hang);
    let engine = engine(vec![
        Step::new("ab", "a", "b", Behaviour::Append),
        hang.clone(),
    ]);
    let submitted = engine
        .submit(Submission::new(format("c"), input("in", "in.a")))
        .await
        .expect("submit");
    let id = submitted.conversion.id;
    let mut events = engine.watch(id).await.expect("watch");
    let workers = engine.start_workers();
    // Wait until the second hop runs.
    let reached = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = events.next().await {
            if let Event::Progress { progress, .. } = e
                && progress
                    .stage
                    .as_deref()
                    .is_some_and(|s| s.starts_with("b -> c"))
            {
                return true;
            }
        }
        false
    })
    .await
    .expect("the second hop started in time");
    assert!(reached);
    engine.cancel(id).await.expect("cancel");
    let done = engine.wait(id).await.expect("wait");
    assert_eq!(done.status, Status::Cancelled);
    tokio::time::timeout(Duration::from_secs(5), async {
        while !hang.saw_cancel.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the running hop saw the cancellation");
    assert!(done.artifacts.is_empty());
    workers.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_failing_middle_hop_fails_the_conversion_with_its_error() {
    let last = Step::new("cd", "c", "d", Behaviour::Append);
    let engine = engine(vec![
        Step::new("ab", "a", "b", Behaviour::Append),
        Step::new("bc", "b", "c", Behaviour::Fail),
        last.clone(),
    ]);
    let workers = engine.start_workers();
    let submitted = engine
        .submit(Submission::new(format("d"), input("in", "in.a")))
        .await
        .expect("submit");
    let done = engine.wait(submitted.conversion.id).await.expect("wait");
    assert_eq!(done.status, Status::Failed);
    let error = done.error.expect("an error");
    assert_eq!(error.code, "middle_broke");
    assert_eq!(error.message, "boom in the middle");
    assert_eq!(last.runs.load(Ordering::SeqCst), 0);
    assert!(done.artifacts.is_empty());
    workers.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn options_go_to_the_hops_that_accept_them() {
    let ab = Step::accepting("ab", "a", "b", Behaviour::Append, Some("quality"));
    let bc = Step::accepting("bc", "b", "c", Behaviour::Append, Some("units"));
    let engine = engine(vec![ab.clone(), bc.clone()]);
    let refused = engine
        .submit(Submission::new(format("c"), input("in", "in.a")).options(json!({"colour": "red"})))
        .await;
    assert!(
        matches!(&refused, Err(EngineError::InvalidOptions(m)) if m.contains("colour")),
        "{refused:?}"
    );
    let workers = engine.start_workers();
    let submitted = engine
        .submit(
            Submission::new(format("c"), input("in", "in.a"))
                .options(json!({"quality": 3, "units": "mm"})),
        )
        .await
        .expect("submit");
    let done = engine.wait(submitted.conversion.id).await.expect("wait");
    assert_eq!(done.status, Status::Succeeded, "{done:?}");
    assert_eq!(*ab.options_seen.lock(), vec![json!({"quality": 3})]);
    assert_eq!(*bc.options_seen.lock(), vec![json!({"units": "mm"})]);
    workers.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn closure_converters_chain_too_and_unreachable_pairs_are_refused() {
    let up = converter_fn("up", [Route::parse("txt", "upper").expect("r")], |_, b| {
        Ok(b.to_ascii_uppercase().into())
    });
    let rev = converter_fn("rev", [Route::parse("upper", "rev").expect("r")], |_, b| {
        Ok(b.iter().rev().copied().collect::<Vec<u8>>().into())
    });
    let engine = Engine::builder()
        .converter(up)
        .converter(rev)
        .build()
        .expect("engine");
    let reachable = engine.registry().reachable();
    assert!(reachable.iter().any(|r| r.source.as_str() == "txt"
        && r.target.as_str() == "rev"
        && r.via == vec![format("upper")]
        && r.converter == "up+rev"));
    let refused = engine
        .submit(Submission::new(format("txt"), input("abc", "in.rev")))
        .await;
    assert!(
        matches!(refused, Err(EngineError::UnsupportedRoute { .. })),
        "{refused:?}"
    );
    let workers = engine.start_workers();
    let submitted = engine
        .submit(Submission::new(format("rev"), input("abc", "in.txt")))
        .await
        .expect("submit");
    let done = engine.wait(submitted.conversion.id).await.expect("wait");
    assert_eq!(done.status, Status::Succeeded, "{done:?}");
    let bytes = engine
        .read_artifact_bytes(done.id, "output.rev")
        .await
        .expect("artifact");
    assert_eq!(&bytes[..], b"CBA");
    workers.shutdown().await.expect("shutdown");
}
