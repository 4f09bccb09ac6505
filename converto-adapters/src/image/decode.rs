//! Reading an image: the header first (format, size, orientation) so the pixel limit is enforced
//! before anything is allocated, then the pixels, shrunk in the DCT domain when a JPEG is only
//! wanted smaller.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use tokio_util::sync::CancellationToken;

use super::error::ImageFailure;
use super::guard::Guarded;

/// Reads stop with `Cancelled` once the job is cancelled, wherever the decoder is.
type Reader = BufReader<Guarded<File>>;

/// Decoded 8-bit pixels, RGB or RGBA, rows top to bottom without padding.
#[derive(Debug, Clone)]
pub(crate) struct Pixels {
    pub(crate) width: u32,
    pub(crate) height: u32,
    /// RGBA if true, RGB if false.
    pub(crate) alpha: bool,
    pub(crate) data: Vec<u8>,
}

/// A decoded image: pixels as stored (not yet turned upright), possibly shrunk by the decoder.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) pixels: Pixels,
    /// How to turn the stored pixels upright.
    pub(crate) orientation: Orientation,
    /// The stored size at full resolution (before any decoder shrinking).
    pub(crate) stored_width: u32,
    pub(crate) stored_height: u32,
}

/// An image whose header was read: its format, size and orientation are known, its pixels not
/// yet decoded.
pub(crate) struct Probe {
    /// `jpeg`, `png`, ...
    pub(crate) format: &'static str,
    stored_width: u32,
    stored_height: u32,
    orientation: Orientation,
    decoder: Decoder,
}

enum Decoder {
    /// `jpeg-decoder`, which can shrink by 1/2, 1/4 or 1/8 while decoding, and (unlike the
    /// `image` crate's decoder) reports a truncated file instead of returning grey rows.
    Jpeg(Box<jpeg_decoder::Decoder<Reader>>),
    Generic(Box<dyn ImageDecoder>),
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("format", &self.format)
            .field("stored_width", &self.stored_width)
            .field("stored_height", &self.stored_height)
            .finish_non_exhaustive()
    }
}

fn format_name(format: ImageFormat) -> Option<&'static str> {
    Some(match format {
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::Png => "png",
        ImageFormat::WebP => "webp",
        ImageFormat::Gif => "gif",
        ImageFormat::Bmp => "bmp",
        ImageFormat::Tiff => "tiff",
        _ => return None,
    })
}

/// Whether an orientation swaps width and height.
pub(crate) fn swaps_axes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

fn check_pixels(width: u32, height: u32, max_pixels: u64) -> Result<(), ImageFailure> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(ImageFailure::TooManyPixels {
            width,
            height,
            pixels,
            max_pixels,
        });
    }
    if pixels == 0 {
        return Err(ImageFailure::Decode {
            format: "image",
            reason: format!("the header declares an empty {width}x{height} image"),
        });
    }
    Ok(())
}

fn jpeg_failure(err: jpeg_decoder::Error) -> ImageFailure {
    match err {
        jpeg_decoder::Error::Io(e) => ImageFailure::from_decoder_io("jpeg", e),
        other => ImageFailure::Decode {
            format: "jpeg",
            reason: other.to_string(),
        },
    }
}

impl Probe {
    /// Reads the header of the image at `path`. Fails with `TooManyPixels` for an image over
    /// `max_pixels` before any pixel buffer exists.
    pub(crate) fn open(
        path: &Path,
        max_pixels: u64,
        cancel: &CancellationToken,
    ) -> Result<Self, ImageFailure> {
        let reader = ImageReader::new(open_buffered(path, cancel)?).with_guessed_format()?;
        let format = reader.format().ok_or(ImageFailure::UnknownFormat)?;
        let name = format_name(format).ok_or(ImageFailure::UnknownFormat)?;
        if format == ImageFormat::Jpeg {
            drop(reader);
            if let Some(probe) = Self::open_jpeg(path, max_pixels, cancel)? {
                return Ok(probe);
            }
            let reader = ImageReader::with_format(open_buffered(path, cancel)?, format);
            return Self::open_generic(reader, name, max_pixels);
        }
        Self::open_generic(reader, name, max_pixels)
    }

    /// `None` when `jpeg-decoder` cannot take this JPEG (CMYK, 16-bit, unsupported coding):
    /// the `image` crate's decoder gets it instead.
    fn open_jpeg(
        path: &Path,
        max_pixels: u64,
        cancel: &CancellationToken,
    ) -> Result<Option<Self>, ImageFailure> {
        let mut decoder = jpeg_decoder::Decoder::new(open_buffered(path, cancel)?);
        match decoder.read_info() {
            Ok(()) => {}
            Err(jpeg_decoder::Error::Unsupported(_)) => return Ok(None),
            Err(e) => return Err(jpeg_failure(e)),
        }
        let Some(info) = decoder.info() else {
            return Err(ImageFailure::Decode {
                format: "jpeg",
                reason: "no frame header".into(),
            });
        };
        let (width, height) = (u32::from(info.width), u32::from(info.height));
        check_pixels(width, height, max_pixels)?;
        if !matches!(
            info.pixel_format,
            jpeg_decoder::PixelFormat::RGB24 | jpeg_decoder::PixelFormat::L8
        ) {
            return Ok(None);
        }
        let orientation = decoder
            .exif_data()
            .and_then(Orientation::from_exif_chunk)
            .unwrap_or(Orientation::NoTransforms);
        decoder.set_max_decoding_buffer_size(
            usize::try_from(max_pixels.saturating_mul(4)).unwrap_or(usize::MAX),
        );
        Ok(Some(Self {
            format: "jpeg",
            stored_width: width,
            stored_height: height,
            orientation,
            decoder: Decoder::Jpeg(Box::new(decoder)),
        }))
    }

    fn open_generic(
        reader: ImageReader<Reader>,
        name: &'static str,
        max_pixels: u64,
    ) -> Result<Self, ImageFailure> {
        let mut decoder = generic_decoder(reader, name, max_pixels)?;
        let (width, height) = decoder.dimensions();
        check_pixels(width, height, max_pixels)?;
        // A broken orientation tag is not worth failing the conversion for.
        let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
        Ok(Self {
            format: name,
            stored_width: width,
            stored_height: height,
            orientation,
            decoder: Decoder::Generic(decoder),
        })
    }

    /// The size of the image once turned upright.
    pub(crate) fn upright_size(&self) -> (u32, u32) {
        if swaps_axes(self.orientation) {
            (self.stored_height, self.stored_width)
        } else {
            (self.stored_width, self.stored_height)
        }
    }

    /// Decodes the pixels. `min_scale` (0 to 1) is how much smaller than full size the result
    /// may be: a JPEG is then decoded at the smallest of 1/8, 1/4, 1/2 or 1 that keeps at least
    /// that much, which skips most of the inverse DCT and memory of a large photo.
    pub(crate) fn decode(self, min_scale: f64) -> Result<Decoded, ImageFailure> {
        let (stored_width, stored_height, orientation) =
            (self.stored_width, self.stored_height, self.orientation);
        let pixels = match self.decoder {
            Decoder::Jpeg(mut decoder) => {
                let eighths = jpeg_eighths(stored_width, stored_height, min_scale);
                decode_jpeg_scaled(
                    &mut decoder,
                    (stored_width * eighths).div_ceil(8),
                    (stored_height * eighths).div_ceil(8),
                )?
            }
            Decoder::Generic(decoder) => decode_generic(decoder, self.format)?,
        };
        Ok(Decoded {
            pixels,
            orientation,
            stored_width,
            stored_height,
        })
    }
}

/// The smallest JPEG DCT scale, in eighths, whose output keeps `min_scale` of the full size.
fn jpeg_eighths(width: u32, height: u32, min_scale: f64) -> u32 {
    [1u32, 2, 4]
        .into_iter()
        .find(|&e| {
            let w = f64::from((width * e).div_ceil(8));
            let h = f64::from((height * e).div_ceil(8));
            w + 1e-6 >= f64::from(width) * min_scale && h + 1e-6 >= f64::from(height) * min_scale
        })
        .unwrap_or(8)
}

fn decode_jpeg_scaled(
    decoder: &mut jpeg_decoder::Decoder<Reader>,
    want_w: u32,
    want_h: u32,
) -> Result<Pixels, ImageFailure> {
    let too_big = || ImageFailure::Decode {
        format: "jpeg",
        reason: "scaled size out of range".into(),
    };
    let (w, h) = decoder
        .scale(
            u16::try_from(want_w).map_err(|_| too_big())?,
            u16::try_from(want_h).map_err(|_| too_big())?,
        )
        .map_err(jpeg_failure)?;
    let data = decoder.decode().map_err(jpeg_failure)?;
    let info = decoder.info().ok_or_else(|| ImageFailure::Decode {
        format: "jpeg",
        reason: "no frame header".into(),
    })?;
    let (width, height) = (u32::from(w), u32::from(h));
    let pixels = width as usize * height as usize;
    let data = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 if data.len() == pixels * 3 => data,
        jpeg_decoder::PixelFormat::L8 if data.len() == pixels => {
            data.iter().flat_map(|&l| [l, l, l]).collect()
        }
        _ => {
            return Err(ImageFailure::Decode {
                format: "jpeg",
                reason: "the decoded data does not match the declared size".into(),
            });
        }
    };
    Ok(Pixels {
        width,
        height,
        alpha: false,
        data,
    })
}

fn open_buffered(path: &Path, cancel: &CancellationToken) -> Result<Reader, ImageFailure> {
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Err(ImageFailure::Empty);
    }
    Ok(BufReader::with_capacity(
        256 * 1024,
        Guarded::new(file, cancel.clone()),
    ))
}

fn generic_decoder(
    mut reader: ImageReader<Reader>,
    name: &'static str,
    max_pixels: u64,
) -> Result<Box<dyn ImageDecoder>, ImageFailure> {
    let mut limits = Limits::default();
    // Room for the largest allowed image at 16 bits per channel with alpha.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let decoder = reader
        .into_decoder()
        .map_err(|e| ImageFailure::from_image(name, e))?;
    Ok(Box::new(decoder))
}

fn decode_generic(
    decoder: Box<dyn ImageDecoder>,
    format: &'static str,
) -> Result<Pixels, ImageFailure> {
    let image =
        DynamicImage::from_decoder(decoder).map_err(|e| ImageFailure::from_image(format, e))?;
    let (width, height) = (image.width(), image.height());
    Ok(if image.color().has_alpha() {
        Pixels {
            width,
            height,
            alpha: true,
            data: image.into_rgba8().into_raw(),
        }
    } else {
        Pixels {
            width,
            height,
            alpha: false,
            data: image.into_rgb8().into_raw(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PNG of noise (incompressible), well over the 256 KiB read buffer.
    fn noise_png(path: &Path) {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let image = image::RgbImage::from_fn(700, 700, |_, _| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let [a, b, c, ..] = state.to_le_bytes();
            image::Rgb([a, b, c])
        });
        image
            .save_with_format(path, ImageFormat::Png)
            .expect("write test image");
    }

    #[test]
    fn cancelling_between_header_and_pixels_stops_the_decoder() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("noise.png");
        noise_png(&path);
        assert!(std::fs::metadata(&path).expect("written").len() > 1 << 20);
        let cancel = CancellationToken::new();
        let probe = Probe::open(&path, 100_000_000, &cancel).expect("header reads");
        // Mid-way: the header is read, the pixels (most of the file) are not.
        cancel.cancel();
        match probe.decode(1.0) {
            Err(ImageFailure::Cancelled) => {}
            other => panic!("expected Cancelled, got {other:?}"),
        }
    }

    #[test]
    fn the_same_file_decodes_when_not_cancelled() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("noise.png");
        noise_png(&path);
        let cancel = CancellationToken::new();
        let probe = Probe::open(&path, 100_000_000, &cancel).expect("header reads");
        let decoded = probe.decode(1.0).expect("decodes");
        assert_eq!((decoded.pixels.width, decoded.pixels.height), (700, 700));
    }
}
