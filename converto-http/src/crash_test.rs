//! Converters that misbehave on purpose, to test crash isolation against the real binary.
//!
//! Compiled only with the `crash-test-converters` feature and registered only when
//! `CONVERTO_TEST_CONVERTERS=1` is set too, so no build or deployment serves them by accident.
//! Each serves one route to `x-out`:
//!
//! | route | does |
//! |---|---|
//! | `x-alloc -> x-out` | allocates and touches memory in 16 MiB steps until it is stopped (a safety cap of [`ALLOC_SAFETY_CAP`] ends it with an error, so a missing limit fails a test instead of the machine) |
//! | `x-abort -> x-out` | calls `std::process::abort` |
//! | `x-panic -> x-out` | panics |
//! | `x-hang -> x-out` | never finishes, ignoring cancellation (only a kill ends it) |
//! | `x-spin -> x-out` | burns CPU until it is stopped (or for 10 minutes) |

use std::sync::Arc;

use async_trait::async_trait;
use converto_core::{
    ConvertContext, ConvertError, ConvertRequest, Converter, Format, Output, Route,
};

/// The variable that must be `1` for the test converters to be registered.
pub const ENABLE_VAR: &str = "CONVERTO_TEST_CONVERTERS";

/// `x-alloc` gives up (with an error, not a crash) after this much memory.
pub const ALLOC_SAFETY_CAP: usize = 2 << 30;

/// The test converters, when [`ENABLE_VAR`] is `1`; none otherwise.
pub fn converters() -> Vec<Arc<dyn Converter>> {
    if std::env::var(ENABLE_VAR).is_ok_and(|v| v == "1") {
        vec![Arc::new(Misbehave)]
    } else {
        Vec::new()
    }
}

/// The misbehaving converter: what it does depends on the source format.
#[derive(Debug)]
struct Misbehave;

fn format(name: &str) -> Result<Format, ConvertError> {
    Format::new(name).map_err(|e| ConvertError::permanent("converter_failed", e.to_string()))
}

#[async_trait]
impl Converter for Misbehave {
    fn name(&self) -> &str {
        "x-misbehave"
    }

    fn routes(&self) -> Vec<Route> {
        ["x-alloc", "x-abort", "x-panic", "x-hang", "x-spin"]
            .into_iter()
            .filter_map(|s| Some(Route::new(Format::new(s).ok()?, Format::new("x-out").ok()?)))
            .collect()
    }

    async fn convert(
        &self,
        request: &ConvertRequest,
        ctx: &ConvertContext,
    ) -> Result<Vec<Output>, ConvertError> {
        ctx.progress(1, Some("misbehaving"));
        match request.source.as_str() {
            "x-alloc" => {
                const STEP: usize = 16 << 20;
                let mut held: Vec<Vec<u8>> = Vec::new();
                while held.len() * STEP < ALLOC_SAFETY_CAP {
                    // vec![1; n] writes every byte: the pages are really used.
                    held.push(vec![1u8; STEP]);
                    ctx.progress(
                        u8::try_from(held.len() * STEP * 100 / ALLOC_SAFETY_CAP).unwrap_or(99),
                        Some("allocating"),
                    );
                }
                Err(ConvertError::permanent(
                    "converter_failed",
                    format!(
                        "x-alloc held {} MiB and was not stopped",
                        (held.len() * STEP) >> 20
                    ),
                ))
            }
            "x-abort" => std::process::abort(),
            "x-panic" => panic!("x-panic: a converter bug"),
            "x-spin" => {
                let start = std::time::Instant::now();
                let mut n = 0u64;
                while start.elapsed() < std::time::Duration::from_secs(600) {
                    n = std::hint::black_box(n.wrapping_mul(31).wrapping_add(7));
                }
                Err(ConvertError::permanent(
                    "converter_failed",
                    format!("x-spin ran for 10 minutes and was not stopped ({n})"),
                ))
            }
            "x-hang" => loop {
                // Blocks its thread, as a converter stuck in a loop would.
                std::thread::sleep(std::time::Duration::from_secs(3600));
            },
            _ => Err(ConvertError::Unsupported {
                source_format: request.source.clone(),
                target_format: format("x-out")?,
            }),
        }
    }
}
