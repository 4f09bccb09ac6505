//! The built-in image converter: JPEG, PNG, WebP, GIF, BMP and TIFF in; JPEG, PNG and WebP out,
//! resized with SIMD (`fast_image_resize`), one artifact per requested size.
//!
//! ```no_run
//! # use converto_adapters::image::{ImageConfig, ImageConverter};
//! let converter = ImageConverter::new(ImageConfig::default().with_max_pixels(50_000_000));
//! ```
//!
//! # Options
//!
//! A JSON object (or null); unknown keys and bad values fail with `InvalidOptions`.
//!
//! | key | value | default |
//! |---|---|---|
//! | `width`, `height` | integers 1..=16384: the box to fit | the source size |
//! | `fit` | `contain` (inside the box), `cover` (fill the box, crop the centre), `fill` (stretch) | `contain` |
//! | `quality` | 1..=100, for `jpeg` and `webp` output (WebP is lossy) | 85 (JPEG), 80 (WebP) |
//! | `variants` | `"240p,720p"` or `["240p", "1280x720"]`: `Np` is N pixels high, width by aspect ratio; `WxH` is a box fitted by `fit` | one output |
//! | `upscale` | `true` lets outputs be larger than the source | `false` |
//!
//! Without variants the conversion has one artifact, `output.<ext>`; with variants, one per
//! variant, named after it (`240p.jpeg`, `1280x720.jpeg`), at most 16. `variants` cannot be
//! combined with `width`/`height`.
//!
//! **No upscaling by default**: a thumbnail service should not invent pixels. `contain` never
//! scales above 1 (a `720p` variant of a 480-pixel-high image is 480 high, still named
//! `720p.<ext>`); `cover` and `fill` clamp each side of the box to the source's side, so `cover`
//! still crops rather than distorts. `"upscale": true` lifts this.
//!
//! # Behaviour
//!
//! - The pixel count is read from the header and checked against [`ImageConfig::max_pixels`]
//!   before any pixel buffer is allocated (decompression bombs fail with `TooLarge`).
//! - The output sizes are computed from the header and the options before anything is
//!   decoded: the output pixels of all variants together, and each resize's working buffer
//!   (output width x source height, source width x output height), must stay within
//!   [`ImageConfig::max_pixels`], or the conversion fails with `TooLarge` (a 4096x1 PNG asked
//!   for `{"height": 4096, "upscale": true}` would be 16 million pixels wide). Outputs whose
//!   size the options fix on their own (an upscaled `fill` or `cover` box) are checked in
//!   `check_options` already, so such a job is refused with `InvalidOptions` when it is
//!   submitted. The encoded
//!   outputs together are bounded by [`ImageConfig::max_output_bytes`] while they are written.
//! - Cancellation (or the job's timeout) stops decoding and encoding from the inside: the
//!   input is read and the outputs written through wrappers that fail once the job's token is
//!   cancelled, and the converter waits for its blocking task to end before it returns
//!   `Cancelled`.
//!
//! # Memory
//!
//! Peak heap is bounded by the pixel limit, not by the input (a compressed image can be tiny):
//! at most **20 bytes x [`ImageConfig::max_pixels`] + 8 MiB**, whatever the file or the
//! options ask for. That is the decoded source at up to 8 bytes a pixel while it is turned
//! into 8-bit RGB(A), then the 8-bit source, one variant's resize buffer and output, and its
//! rotated copy, each within the limit. The input file is streamed through 256 KiB buffers;
//! refused requests allocate no pixel buffer at all. (libwebp's own buffers for WebP output
//! are allocated outside Rust and come on top.) The memory tests measure about 16 bytes a
//! pixel for a 16-bit RGBA PNG at the limit, and under 300 KB for refused requests.
//! - Large JPEGs that are only wanted smaller are decoded at 1/2, 1/4 or 1/8 scale in the DCT
//!   domain (`jpeg-decoder`), never below the size the largest variant needs; all variants are
//!   resized from that one decode.
//! - EXIF orientation (JPEG, WebP, TIFF) is applied: outputs are upright.
//! - Alpha is kept for PNG and WebP and composited onto white for JPEG.
//! - Animated GIF and WebP: the first frame. Metadata (EXIF, ICC) is not copied.
//! - Corrupt or truncated input fails with `InvalidInput` naming the reason; nothing panics (a
//!   panicking decoder is caught and reported as `InvalidInput` too).

mod decode;
mod error;
mod geometry;
mod guard;
mod options;
mod render;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use async_trait::async_trait;
use converto_core::{
    ConvertContext, ConvertError, ConvertRequest, Converter, Format, Output, Route,
};

use self::decode::{Decoded, Probe};
use self::error::ImageFailure;
use self::geometry::Plan;
use self::options::ImageOptions;
use self::render::{Sink, Target};

/// The formats the converter reads.
pub const INPUT_FORMATS: [&str; 6] = ["jpeg", "png", "webp", "gif", "bmp", "tiff"];
/// The formats the converter writes.
pub const OUTPUT_FORMATS: [&str; 3] = ["jpeg", "png", "webp"];

/// Limits and defaults of an [`ImageConverter`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ImageConfig {
    /// The most pixels (width x height) an input may have, checked from the header before
    /// decoding; also the most pixels the outputs of all variants may have together, and the
    /// largest working buffer of one resize, checked from the header and options before any
    /// pixel buffer is allocated. Default 100 megapixels.
    pub max_pixels: u64,
    /// The most bytes the encoded outputs of one conversion may have together; checked while
    /// they are written. Default 1 GiB.
    pub max_output_bytes: u64,
    /// The largest input file, in bytes. Default 256 MiB.
    pub max_input_bytes: u64,
    /// JPEG quality when the options give none (1..=100). Default 85.
    pub default_jpeg_quality: u8,
    /// WebP quality when the options give none (1..=100). Default 80.
    pub default_webp_quality: u8,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            max_pixels: 100_000_000,
            max_output_bytes: 1 << 30,
            max_input_bytes: 256 << 20,
            default_jpeg_quality: 85,
            default_webp_quality: 80,
        }
    }
}

impl ImageConfig {
    /// Sets [`ImageConfig::max_pixels`].
    pub fn with_max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
    }

    /// Sets [`ImageConfig::max_output_bytes`].
    pub fn with_max_output_bytes(mut self, max_output_bytes: u64) -> Self {
        self.max_output_bytes = max_output_bytes;
        self
    }

    /// Sets [`ImageConfig::max_input_bytes`].
    pub fn with_max_input_bytes(mut self, max_input_bytes: u64) -> Self {
        self.max_input_bytes = max_input_bytes;
        self
    }

    /// Sets the default JPEG and WebP qualities (each clamped to 1..=100).
    pub fn with_default_quality(mut self, jpeg: u8, webp: u8) -> Self {
        self.default_jpeg_quality = jpeg.clamp(1, 100);
        self.default_webp_quality = webp.clamp(1, 100);
        self
    }
}

/// Converts and resizes images; see the [module documentation](self) for the options.
#[derive(Debug, Clone, Default)]
pub struct ImageConverter {
    config: Arc<ImageConfig>,
}

impl ImageConverter {
    /// A converter with these limits.
    pub fn new(config: ImageConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }
}

/// Runs blocking image work off the async threads; a panicking decoder becomes an error.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ImageFailure> + Send + 'static,
) -> Result<T, ConvertError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(ConvertError::from),
        Err(e) if e.is_panic() => Err(ConvertError::InvalidInput(
            "the image decoder or encoder crashed on this file".into(),
        )),
        Err(e) => Err(ConvertError::temporary("image_task_failed", e.to_string())),
    }
}

#[async_trait]
impl Converter for ImageConverter {
    fn name(&self) -> &str {
        "image"
    }

    fn routes(&self) -> Vec<Route> {
        let format = |s: &str| Format::new(s).ok();
        INPUT_FORMATS
            .iter()
            .filter_map(|s| format(s))
            .flat_map(|source| {
                OUTPUT_FORMATS
                    .iter()
                    .filter_map(|t| format(t))
                    .map(move |target| Route::new(source.clone(), target))
            })
            .collect()
    }

    fn check_options(
        &self,
        _source: &Format,
        target: &Format,
        options: &serde_json::Value,
    ) -> Result<(), ConvertError> {
        let Some(target) = Target::from_name(target.as_str()) else {
            return Ok(());
        };
        let options = ImageOptions::parse(options, target.name())?;
        // Some outputs have a size known without the source (an upscaled `fill` or `cover`
        // box is exactly the box): refuse those over the limit before the job is accepted.
        let known = geometry::known_output_pixels(&options);
        if known > self.config.max_pixels {
            return Err(ConvertError::InvalidOptions(format!(
                "the requested outputs are {known} pixels together, above the limit of {} pixels: ask for smaller sizes or fewer variants",
                self.config.max_pixels
            )));
        }
        Ok(())
    }

    fn options_schema(&self, source: &Format, target: &Format) -> Option<serde_json::Value> {
        let target = Target::from_name(target.as_str())?;
        INPUT_FORMATS
            .contains(&source.as_str())
            .then(|| options::schema(target.name()))
    }

    async fn convert(
        &self,
        request: &ConvertRequest,
        ctx: &ConvertContext,
    ) -> Result<Vec<Output>, ConvertError> {
        let unsupported = || ConvertError::Unsupported {
            source_format: request.source.clone(),
            target_format: request.target.clone(),
        };
        if !INPUT_FORMATS.contains(&request.source.as_str()) {
            return Err(unsupported());
        }
        let target = Target::from_name(request.target.as_str()).ok_or_else(unsupported)?;
        let options = ImageOptions::parse(&request.options, target.name())?;
        let quality = options.quality.unwrap_or(match target {
            Target::WebP => self.config.default_webp_quality,
            _ => self.config.default_jpeg_quality,
        });

        let size = ctx.input_size().await?;
        if size > self.config.max_input_bytes {
            return Err(ImageFailure::InputTooLarge {
                size,
                max: self.config.max_input_bytes,
            }
            .into());
        }
        let input = ctx.input_path().await?.to_path_buf();
        let out_dir = ctx.output_dir().await?.to_path_buf();
        if ctx.is_cancelled() {
            return Err(ConvertError::Cancelled);
        }
        ctx.progress(5, Some("decoding"));

        // Header, plan and decode in one blocking task: the plan decides how small the decoder
        // may go, and the header alone is checked against the pixel limit first.
        let max_pixels = self.config.max_pixels;
        let cancel = ctx.cancel_token().clone();
        let decode_cancel = cancel.clone();
        let (decoded, plans) = blocking(move || {
            let cancel = decode_cancel;
            // A decoder may flatten the guard's I/O error: the token says what happened.
            let stopped = |e: ImageFailure| {
                if cancel.is_cancelled() {
                    ImageFailure::Cancelled
                } else {
                    e
                }
            };
            let probe = Probe::open(&input, max_pixels, &cancel).map_err(stopped)?;
            let (w, h) = probe.upright_size();
            let plans: Vec<Plan> = options
                .variants
                .iter()
                .map(|v| geometry::plan(w, h, v, options.fit, options.upscale))
                .collect();
            // Every buffer the plans need is sized here, before the first one is allocated.
            geometry::check_budget(w, h, &plans, max_pixels)?;
            let min_scale = plans
                .iter()
                .map(Plan::required_scale)
                .fold(0.0_f64, f64::max)
                .min(1.0);
            if cancel.is_cancelled() {
                return Err(ImageFailure::Cancelled);
            }
            Ok((Arc::new(probe.decode(min_scale).map_err(stopped)?), plans))
        })
        .await?;
        ctx.progress(40, Some("decoded"));

        let sink = Sink {
            cancel,
            written: Arc::new(AtomicU64::new(0)),
            max_bytes: self.config.max_output_bytes,
        };
        let total = plans.len();
        let mut outputs = Vec::with_capacity(total);
        for (done, plan) in plans.into_iter().enumerate() {
            if ctx.is_cancelled() {
                return Err(ConvertError::Cancelled);
            }
            let file_name = format!("{}.{}", plan.name, target.name());
            let path: PathBuf = out_dir.join(&file_name);
            let decoded: Arc<Decoded> = Arc::clone(&decoded);
            let out_path = path.clone();
            let sink = sink.clone();
            let rendered = blocking(move || {
                render::render(&decoded, &plan, target, quality, &out_path, &sink)
            })
            .await;
            if let Err(e) = rendered {
                // Leave nothing half-written behind.
                let _ = tokio::fs::remove_file(&path).await;
                return Err(e);
            }
            let percent = 40 + (60 * (done + 1) / total) as u8;
            ctx.progress(percent.min(100), Some(&format!("encoded {file_name}")));
            outputs.push(Output::file(file_name, request.target.clone(), path));
        }
        Ok(outputs)
    }
}
