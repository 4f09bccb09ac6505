//! One variant: crop and resize (SIMD, `fast_image_resize`), turn upright, flatten alpha for
//! JPEG, encode to a file.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use fast_image_resize as fir;
use image::metadata::Orientation;
use image::{DynamicImage, ExtendedColorType, ImageBuffer, ImageEncoder};
use tokio_util::sync::CancellationToken;

use super::decode::{Decoded, Pixels, swaps_axes};
use super::error::ImageFailure;
use super::geometry::Plan;
use super::guard::Guarded;

/// Where encoded bytes go: stopped by cancellation, and counted against the byte limit shared
/// by all the conversion's outputs.
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    pub(crate) cancel: CancellationToken,
    pub(crate) written: Arc<AtomicU64>,
    pub(crate) max_bytes: u64,
}

impl Sink {
    /// Why the guarded writer stopped an encoder, if it did. Read from the shared state rather
    /// than from the error, because some encoders flatten the I/O errors they pass on.
    pub(crate) fn stopped(&self) -> Option<ImageFailure> {
        if self.cancel.is_cancelled() {
            Some(ImageFailure::Cancelled)
        } else if self.written.load(std::sync::atomic::Ordering::Relaxed) > self.max_bytes {
            Some(ImageFailure::OutputBytes {
                max: self.max_bytes,
            })
        } else {
            None
        }
    }
}

/// An output format this converter writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Jpeg,
    Png,
    WebP,
}

impl Target {
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name {
            "jpeg" => Some(Target::Jpeg),
            "png" => Some(Target::Png),
            "webp" => Some(Target::WebP),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Jpeg => "jpeg",
            Target::Png => "png",
            Target::WebP => "webp",
        }
    }

    /// The longest side the format can store.
    fn max_side(self) -> u32 {
        match self {
            Target::Jpeg => 65_535,
            Target::Png => u32::MAX,
            Target::WebP => 16_383,
        }
    }
}

/// Renders `plan` from `decoded` and writes it to `path`.
pub(crate) fn render(
    decoded: &Decoded,
    plan: &Plan,
    target: Target,
    quality: u8,
    path: &Path,
    sink: &Sink,
) -> Result<(), ImageFailure> {
    let max = target.max_side();
    if plan.width > max || plan.height > max {
        return Err(ImageFailure::OutputTooLarge {
            format: target.name(),
            max,
            width: plan.width,
            height: plan.height,
        });
    }
    let resized = resize(decoded, plan)?;
    let upright = orient(resized, decoded.orientation)?;
    let flat = if target == Target::Jpeg && upright.alpha {
        Cow::Owned(flatten_on_white(&upright))
    } else {
        Cow::Borrowed(&upright)
    };
    if sink.cancel.is_cancelled() {
        return Err(ImageFailure::Cancelled);
    }
    encode(&flat, target, quality, path, sink).map_err(|e| sink.stopped().unwrap_or(e))
}

/// Crops and scales the stored (not yet upright) pixels to the plan's size, turned as stored.
///
/// Plans crop the centre (or nothing), so the crop maps to stored coordinates by swapping its
/// sides when the orientation swaps axes; flips do not move a centred crop.
fn resize<'a>(decoded: &'a Decoded, plan: &Plan) -> Result<Cow<'a, Pixels>, ImageFailure> {
    let src = &decoded.pixels;
    let swap = swaps_axes(decoded.orientation);
    let (out_w, out_h) = if swap {
        (plan.height, plan.width)
    } else {
        (plan.width, plan.height)
    };
    let (crop_w, crop_h) = if swap {
        (plan.crop.height, plan.crop.width)
    } else {
        (plan.crop.width, plan.crop.height)
    };
    // From full-resolution stored pixels to what the decoder actually produced.
    let sx = f64::from(src.width) / f64::from(decoded.stored_width);
    let sy = f64::from(src.height) / f64::from(decoded.stored_height);
    let (cw, ch) = (
        (crop_w * sx).min(f64::from(src.width)),
        (crop_h * sy).min(f64::from(src.height)),
    );
    let (left, top) = (
        (f64::from(src.width) - cw) / 2.0,
        (f64::from(src.height) - ch) / 2.0,
    );
    let whole = cw >= f64::from(src.width) && ch >= f64::from(src.height);
    if whole && out_w == src.width && out_h == src.height {
        return Ok(Cow::Borrowed(src));
    }
    let pixel_type = if src.alpha {
        fir::PixelType::U8x4
    } else {
        fir::PixelType::U8x3
    };
    let resize_err = |e: &dyn std::fmt::Display| ImageFailure::Resize(e.to_string());
    let src_view = fir::images::ImageRef::new(src.width, src.height, &src.data, pixel_type)
        .map_err(|e| resize_err(&e))?;
    let mut dst = fir::images::Image::new(out_w, out_h, pixel_type);
    let options = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Lanczos3))
        .crop(left, top, cw, ch);
    fir::Resizer::new()
        .resize(&src_view, &mut dst, &options)
        .map_err(|e| resize_err(&e))?;
    Ok(Cow::Owned(Pixels {
        width: out_w,
        height: out_h,
        alpha: src.alpha,
        data: dst.into_vec(),
    }))
}

/// Applies the EXIF orientation (on the small, resized image, where it is cheap).
fn orient(pixels: Cow<'_, Pixels>, orientation: Orientation) -> Result<Pixels, ImageFailure> {
    let pixels = pixels.into_owned();
    if orientation == Orientation::NoTransforms {
        return Ok(pixels);
    }
    let bad = || ImageFailure::Resize("pixel buffer does not match its size".into());
    let (width, height) = (pixels.width, pixels.height);
    let mut image = if pixels.alpha {
        DynamicImage::ImageRgba8(ImageBuffer::from_raw(width, height, pixels.data).ok_or_else(bad)?)
    } else {
        DynamicImage::ImageRgb8(ImageBuffer::from_raw(width, height, pixels.data).ok_or_else(bad)?)
    };
    image.apply_orientation(orientation);
    let (width, height) = (image.width(), image.height());
    Ok(Pixels {
        width,
        height,
        alpha: pixels.alpha,
        data: image.into_bytes(),
    })
}

/// JPEG has no alpha: composite onto white, as a browser shows a transparent image on a page.
fn flatten_on_white(pixels: &Pixels) -> Pixels {
    let data = pixels
        .data
        .chunks_exact(4)
        .flat_map(|p| {
            let a = u32::from(p[3]);
            let over = |c: u8| ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
            [over(p[0]), over(p[1]), over(p[2])]
        })
        .collect();
    Pixels {
        width: pixels.width,
        height: pixels.height,
        alpha: false,
        data,
    }
}

fn encode(
    pixels: &Pixels,
    target: Target,
    quality: u8,
    path: &Path,
    sink: &Sink,
) -> Result<(), ImageFailure> {
    let color = if pixels.alpha {
        ExtendedColorType::Rgba8
    } else {
        ExtendedColorType::Rgb8
    };
    let encode_err = |reason: String| ImageFailure::Encode {
        format: target.name(),
        reason,
    };
    let image_err = |e: image::ImageError| match e {
        image::ImageError::IoError(e) => ImageFailure::from_io(e),
        other => encode_err(other.to_string()),
    };
    let file = Guarded::new(File::create(path)?, sink.cancel.clone())
        .with_byte_limit(Arc::clone(&sink.written), sink.max_bytes);
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    match target {
        Target::Jpeg => {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
                .write_image(&pixels.data, pixels.width, pixels.height, color)
                .map_err(image_err)?;
        }
        Target::Png => {
            image::codecs::png::PngEncoder::new(&mut out)
                .write_image(&pixels.data, pixels.width, pixels.height, color)
                .map_err(image_err)?;
        }
        Target::WebP => {
            let encoder = if pixels.alpha {
                webp::Encoder::from_rgba(&pixels.data, pixels.width, pixels.height)
            } else {
                webp::Encoder::from_rgb(&pixels.data, pixels.width, pixels.height)
            };
            let memory = encoder
                .encode_simple(false, f32::from(quality))
                .map_err(|e| encode_err(format!("{e:?}")))?;
            out.write_all(&memory)?;
        }
    }
    // Scratch files: flushed, not synced; the engine copies them to the blob store.
    out.flush()?;
    Ok(())
}
