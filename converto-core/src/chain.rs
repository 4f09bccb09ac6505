//! Chained routes: one conversion run by several converters in a row.
//!
//! When no converter serves `a -> c` directly, [`ConverterRegistry::resolve`] plans a path
//! through the route graph (see [`ConverterRegistry::plan`] for how it is chosen) and hands the
//! engine a [`ChainConverter`]: to the engine it is one converter, so one conversion has one
//! progress bar, one set of artifacts (the last hop's), and its cancellation and time limit
//! cover the whole chain.
//!
//! - **Files.** The first hop reads the staged input; each hop writes into its own directory
//!   (`hop-N`) under the conversion's scratch directory, and the next hop reads that output.
//!   Intermediates are never stored as artifacts; each is removed once the next hop is done,
//!   the rest with the scratch directory.
//! - **Progress.** Hop `i` of `n` reports within `i*100/n ..= (i+1)*100/n`, its stage text
//!   prefixed with the hop (`step -> stl: tessellating`), so the bar only moves forward.
//! - **Options.** The options object is split by key: each key goes to every hop whose
//!   converter's [`check_options`](Converter::check_options) accepts that key alone for its own
//!   route; a key no hop accepts is refused at submit time. Each hop then checks its share as a
//!   whole. A hop that receives no key gets `null`.
//! - **Errors.** The first failing hop ends the conversion with that hop's own error (code,
//!   message and whether it is temporary), unchanged.
//!
//! [`ConverterRegistry::resolve`]: crate::registry::ConverterRegistry::resolve
//! [`ConverterRegistry::plan`]: crate::registry::ConverterRegistry::plan

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::Format;
use crate::converter::{
    ConvertContext, ConvertError, ConvertRequest, Converter, Output, OutputBody, ProgressFn, Route,
};

/// One step of a chain: a route and the converter that serves it.
#[derive(Debug, Clone)]
pub struct Hop {
    /// The step's route.
    pub route: Route,
    /// Its converter.
    pub converter: Arc<dyn Converter>,
}

/// Runs a planned path of converters as one converter (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct ChainConverter {
    name: String,
    hops: Vec<Hop>,
}

impl ChainConverter {
    /// A chain of `hops`, each hop's target the next hop's source. `None` for fewer than two
    /// hops or hops that do not connect.
    pub fn new(hops: Vec<Hop>) -> Option<Self> {
        if hops.len() < 2
            || hops
                .windows(2)
                .any(|w| w[0].route.target != w[1].route.source)
        {
            return None;
        }
        let name = hops
            .iter()
            .map(|h| h.converter.name())
            .collect::<Vec<_>>()
            .join("+");
        Some(Self { name, hops })
    }

    /// The hops, in order.
    pub fn hops(&self) -> &[Hop] {
        &self.hops
    }

    /// The formats between source and target.
    pub fn via(&self) -> Vec<Format> {
        self.hops[1..]
            .iter()
            .map(|h| h.route.source.clone())
            .collect()
    }

    fn describe(&self) -> String {
        let mut formats = vec![self.hops[0].route.source.to_string()];
        formats.extend(self.hops.iter().map(|h| h.route.target.to_string()));
        formats.join(" -> ")
    }

    /// Each hop's share of `options` (see the [module docs](self)).
    pub fn split_options(&self, options: &Value) -> Result<Vec<Value>, ConvertError> {
        let object = match options {
            Value::Null => return Ok(vec![Value::Null; self.hops.len()]),
            Value::Object(o) => o,
            _ => {
                return Err(ConvertError::InvalidOptions(
                    "options must be a JSON object".into(),
                ));
            }
        };
        let mut shares: Vec<Map<String, Value>> = vec![Map::new(); self.hops.len()];
        for (key, value) in object {
            let alone = Value::Object(Map::from_iter([(key.clone(), value.clone())]));
            let mut taken = false;
            for (hop, share) in self.hops.iter().zip(shares.iter_mut()) {
                if hop
                    .converter
                    .check_options(&hop.route.source, &hop.route.target, &alone)
                    .is_ok()
                {
                    share.insert(key.clone(), value.clone());
                    taken = true;
                }
            }
            if !taken {
                return Err(ConvertError::InvalidOptions(format!(
                    "option {key:?} (with this value) is accepted by no step of {}",
                    self.describe()
                )));
            }
        }
        Ok(shares
            .into_iter()
            .map(|s| {
                if s.is_empty() {
                    Value::Null
                } else {
                    Value::Object(s)
                }
            })
            .collect())
    }
}

/// Hop `index` of `count`'s reports, scaled into its share of the bar and labelled.
fn scaled_progress(parent: ProgressFn, index: usize, count: usize, label: String) -> ProgressFn {
    let low = (index * 100 / count) as u32;
    let high = ((index + 1) * 100 / count) as u32;
    Arc::new(move |percent: u8, stage: Option<&str>| {
        let scaled = low + u32::from(percent.min(100)) * (high - low) / 100;
        let text = match stage {
            Some(s) => format!("{label}: {s}"),
            None => label.clone(),
        };
        parent(u8::try_from(scaled).unwrap_or(100), Some(&text));
    })
}

#[async_trait]
impl Converter for ChainConverter {
    fn name(&self) -> &str {
        &self.name
    }

    fn routes(&self) -> Vec<Route> {
        vec![Route::new(
            self.hops[0].route.source.clone(),
            self.hops[self.hops.len() - 1].route.target.clone(),
        )]
    }

    fn check_options(
        &self,
        _source: &Format,
        _target: &Format,
        options: &Value,
    ) -> Result<(), ConvertError> {
        let shares = self.split_options(options)?;
        for (hop, share) in self.hops.iter().zip(&shares) {
            hop.converter
                .check_options(&hop.route.source, &hop.route.target, share)?;
        }
        Ok(())
    }

    /// The hops' option properties side by side, when every hop publishes a schema.
    fn options_schema(&self, _source: &Format, _target: &Format) -> Option<Value> {
        let mut properties = Map::new();
        for hop in &self.hops {
            let schema = hop
                .converter
                .options_schema(&hop.route.source, &hop.route.target)?;
            if let Some(p) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in p {
                    properties.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        Some(serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": properties,
            "additionalProperties": false,
        }))
    }

    async fn convert(
        &self,
        request: &ConvertRequest,
        ctx: &ConvertContext,
    ) -> Result<Vec<Output>, ConvertError> {
        let shares = self.split_options(&request.options)?;
        let scratch = ctx.scratch_dir().await?.to_path_buf();
        let mut current: PathBuf = ctx.input_path().await?.to_path_buf();
        let mut previous_dir: Option<PathBuf> = None;
        let count = self.hops.len();
        for (index, (hop, options)) in self.hops.iter().zip(shares).enumerate() {
            if ctx.is_cancelled() {
                return Err(ConvertError::Cancelled);
            }
            let label = format!("{} -> {}", hop.route.source, hop.route.target);
            let progress = scaled_progress(ctx.progress_fn(), index, count, label);
            progress(0, None);
            let dir = scratch.join(format!("hop-{}", index + 1));
            tokio::fs::create_dir_all(&dir).await?;
            let hop_ctx = ConvertContext::for_file(current.clone(), dir.clone(), progress)
                .with_cancel(ctx.cancel_token().clone());
            let hop_request = ConvertRequest {
                id: request.id,
                attempt: request.attempt,
                source: hop.route.source.clone(),
                target: hop.route.target.clone(),
                options,
            };
            let outputs = hop.converter.convert(&hop_request, &hop_ctx).await?;
            if let Some(done) = previous_dir.take() {
                // The intermediate this hop read: no longer needed.
                let _ = tokio::fs::remove_dir_all(done).await;
            }
            if index + 1 == count {
                return Ok(outputs);
            }
            let wanted = &hop.route.target;
            let Some(next) = outputs
                .iter()
                .position(|o| &o.format == wanted)
                .or(if outputs.is_empty() { None } else { Some(0) })
            else {
                return Err(ConvertError::permanent(
                    "converter_failed",
                    format!(
                        "{} wrote no {wanted} output for the next step",
                        hop.converter.name()
                    ),
                ));
            };
            let mut outputs = outputs;
            current = match outputs.swap_remove(next).body {
                OutputBody::File(path) => path,
                OutputBody::Bytes(bytes) => {
                    let path = dir.join(format!("intermediate.{wanted}"));
                    tokio::fs::write(&path, &bytes).await?;
                    path
                }
            };
            previous_dir = Some(dir);
        }
        Err(ConvertError::permanent(
            "converter_failed",
            "an empty chain converts nothing",
        ))
    }
}
