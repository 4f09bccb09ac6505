use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::Format;
use crate::converter::{ConvertContext, ConvertError, ConvertRequest, Converter, Output, Route};
use crate::registry::ConverterRegistry;

/// A converter whose behaviour the options script, for the suites: route `txt -> upper`
/// (uppercases the input) and `txt -> parts` (two outputs).
///
/// Options: `mode` is `ok` (default), `fail` (permanent), `flaky` (temporary failure on
/// attempts up to `fail_attempts`, then ok), `hang` (until cancelled, on attempts up to
/// `hang_attempts`), or `stubborn` (sleeps `sleep_ms` without looking at the token, on attempts
/// up to `stubborn_attempts`); `sleep_ms` otherwise delays before finishing (cancellable);
/// `steps` reports that many progress steps. The output ends with `attempt=N`.
#[derive(Debug, Default)]
pub struct ScriptedConverter {
    calls: AtomicU32,
}

impl ScriptedConverter {
    /// A new converter.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times `convert` was called.
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

fn fmt(s: &str) -> Format {
    Format::new(s).unwrap_or_else(|e| panic!("{e}"))
}

/// A registry holding one [`ScriptedConverter`], and the converter.
pub fn scripted_registry() -> (ConverterRegistry, Arc<ScriptedConverter>) {
    let conv = Arc::new(ScriptedConverter::new());
    let mut reg = ConverterRegistry::new();
    reg.register(conv.clone());
    (reg, conv)
}

#[async_trait]
impl Converter for ScriptedConverter {
    fn name(&self) -> &str {
        "scripted"
    }

    fn routes(&self) -> Vec<Route> {
        vec![
            Route::new(fmt("txt"), fmt("upper")),
            Route::new(fmt("txt"), fmt("parts")),
        ]
    }

    /// `mode` must be one of the scripted behaviours; anything else is refused at submit.
    fn check_options(
        &self,
        _source: &Format,
        _target: &Format,
        options: &serde_json::Value,
    ) -> Result<(), ConvertError> {
        match options.get("mode") {
            None => Ok(()),
            Some(serde_json::Value::String(m))
                if ["ok", "fail", "flaky", "hang", "stubborn"].contains(&m.as_str()) =>
            {
                Ok(())
            }
            Some(other) => Err(ConvertError::InvalidOptions(format!(
                "unknown mode {other}: expected ok, fail, flaky, hang or stubborn"
            ))),
        }
    }

    async fn convert(
        &self,
        req: &ConvertRequest,
        ctx: &ConvertContext,
    ) -> Result<Vec<Output>, ConvertError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let opt = |k: &str| req.options.get(k);
        let mode = opt("mode").and_then(|v| v.as_str()).unwrap_or("ok");
        let sleep_ms = opt("sleep_ms").and_then(|v| v.as_u64()).unwrap_or(0);
        let steps = opt("steps").and_then(|v| v.as_u64()).unwrap_or(0);
        let attempt = u64::from(req.attempt);
        let up_to = |k: &str| opt(k).and_then(|v| v.as_u64()).unwrap_or(u64::MAX);
        match mode {
            "fail" => {
                return Err(ConvertError::InvalidInput(
                    "scripted permanent failure".into(),
                ));
            }
            "flaky" if attempt <= up_to("fail_attempts") => {
                return Err(ConvertError::temporary(
                    "scripted_flaky",
                    format!("flaky on attempt {attempt}"),
                ));
            }
            "hang" if attempt <= up_to("hang_attempts") => {
                ctx.progress(10, Some("hanging"));
                ctx.cancel_token().cancelled().await;
                return Err(ConvertError::Cancelled);
            }
            "stubborn" if attempt <= up_to("stubborn_attempts") => {
                // Ignores cancellation, like a converter stuck in a blocking call.
                ctx.progress(10, Some("stubborn"));
                tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
            }
            _ => {}
        }
        let input = tokio::fs::read(ctx.input_path().await?).await?;
        for i in 1..=steps {
            ctx.progress(((i * 100) / steps.max(1)) as u8, Some("working"));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if mode != "stubborn" && sleep_ms > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
                _ = ctx.cancel_token().cancelled() => return Err(ConvertError::Cancelled),
            }
        }
        let mut upper = input.to_ascii_uppercase();
        upper.extend_from_slice(format!("\nattempt={}", req.attempt).as_bytes());
        if req.target.as_str() == "parts" {
            let dir = ctx.output_dir().await?;
            let a = dir.join("a.upper");
            tokio::fs::write(&a, &upper).await?;
            return Ok(vec![
                Output::file("a.upper", fmt("upper"), a),
                Output::bytes("b.txt", fmt("txt"), input),
            ]);
        }
        let path = ctx.output_dir().await?.join("output.upper");
        tokio::fs::write(&path, &upper).await?;
        Ok(vec![Output::file("output.upper", req.target.clone(), path)])
    }
}
