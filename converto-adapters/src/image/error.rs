//! The image converter's own failures, turned into [`ConvertError`] at the trait boundary.

use std::io;

use converto_core::ConvertError;

/// What went wrong inside the image converter. Kept typed until the trait boundary, where
/// [`From`] sorts it into the engine's permanent/temporary classes.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImageFailure {
    /// The options are not a JSON object.
    #[error("options must be a JSON object, got {got}")]
    OptionsNotObject { got: &'static str },
    /// An option this converter does not know.
    #[error("unknown option {key:?} (known: {known})")]
    UnknownOption { key: String, known: &'static str },
    /// An option with a value of the wrong type or range.
    #[error("option {key:?}: expected {expected}, got {got}")]
    BadOption {
        key: &'static str,
        expected: &'static str,
        got: String,
    },
    /// Two options that cannot be used together.
    #[error("options {first:?} and {second:?} cannot be used together: {why}")]
    Conflict {
        first: &'static str,
        second: &'static str,
        why: &'static str,
    },
    /// The target format is lossless and has no quality setting.
    #[error("option \"quality\" applies to jpeg and webp output, not {target}")]
    QualityNotApplicable { target: String },
    /// The content is none of the formats this converter reads.
    #[error("not a JPEG, PNG, WebP, GIF, BMP or TIFF image")]
    UnknownFormat,
    /// The file is empty.
    #[error("the input file is empty")]
    Empty,
    /// The decoder rejected the content (corrupt, truncated, unsupported feature).
    #[error("cannot decode {format}: {reason}")]
    Decode {
        format: &'static str,
        reason: String,
    },
    /// More pixels than the configured limit (a decompression bomb or just too big).
    #[error("image is {width}x{height} ({pixels} pixels), above the limit of {max_pixels} pixels")]
    TooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        max_pixels: u64,
    },
    /// The decoder refused to allocate what the image needs.
    #[error("{format} image needs more memory than allowed: {reason}")]
    DecoderLimit {
        format: &'static str,
        reason: String,
    },
    /// The input file is larger than the configured limit.
    #[error("input is {size} bytes, above the limit of {max} bytes")]
    InputTooLarge { size: u64, max: u64 },
    /// The output format cannot hold an image this big.
    #[error(
        "{format} output is limited to {max}x{max} pixels, the result would be {width}x{height}: ask for a smaller width/height"
    )]
    OutputTooLarge {
        format: &'static str,
        max: u32,
        width: u32,
        height: u32,
    },
    /// The outputs (all variants together) or a working buffer would need more pixels than
    /// the configured limit allows; computed from the header and options before allocating.
    #[error(
        "the requested output needs {pixels} pixels ({what}), above the limit of {max_pixels} pixels: ask for a smaller width/height or fewer variants"
    )]
    OutputPixels {
        what: String,
        pixels: u64,
        max_pixels: u64,
    },
    /// The encoded outputs together grew past the configured byte limit.
    #[error("the encoded outputs exceed the limit of {max} bytes")]
    OutputBytes { max: u64 },
    /// An encoder failed on valid pixels (a bug or a resource problem).
    #[error("encoding {format}: {reason}")]
    Encode {
        format: &'static str,
        reason: String,
    },
    /// Resizing failed (a bug: the geometry is validated before).
    #[error("resizing: {0}")]
    Resize(String),
    /// Scratch-space I/O.
    #[error(transparent)]
    Io(io::Error),
    /// The conversion was cancelled between two stages.
    #[error("cancelled")]
    Cancelled,
}

impl ImageFailure {
    /// Sorts an `image` crate error: limits are "too large", content problems are "invalid
    /// input", and only genuine I/O failures stay temporary.
    pub(crate) fn from_image(format: &'static str, err: image::ImageError) -> Self {
        use image::ImageError as E;
        match err {
            E::Limits(e) => ImageFailure::DecoderLimit {
                format,
                reason: e.to_string(),
            },
            E::IoError(e) => Self::from_decoder_io(format, e),
            other => ImageFailure::Decode {
                format,
                reason: other.to_string(),
            },
        }
    }

    /// An I/O error while decoding a local file we could open is almost always the content's
    /// fault (truncated, or a decoder reporting bad data as `InvalidData`).
    pub(crate) fn from_decoder_io(format: &'static str, err: io::Error) -> Self {
        if let Some(stop) = Self::from_guard(&err) {
            return stop;
        }
        match err.kind() {
            io::ErrorKind::UnexpectedEof => ImageFailure::Decode {
                format,
                reason: "the file is truncated".into(),
            },
            io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => ImageFailure::Decode {
                format,
                reason: err.to_string(),
            },
            _ => ImageFailure::Io(err),
        }
    }
}

/// Why a [`Guarded`](super::guard::Guarded) reader or writer stopped the work: carried inside
/// an `io::Error` through the decoders and encoders, recognised again on the way out.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub(crate) enum GuardStop {
    #[error("cancelled")]
    Cancelled,
    #[error("output byte limit reached")]
    TooManyBytes { max: u64 },
}

impl ImageFailure {
    /// The failure a [`GuardStop`] inside `err` stands for, if there is one.
    fn from_guard(err: &io::Error) -> Option<Self> {
        let stop = err.get_ref()?.downcast_ref::<GuardStop>()?;
        Some(match *stop {
            GuardStop::Cancelled => ImageFailure::Cancelled,
            GuardStop::TooManyBytes { max } => ImageFailure::OutputBytes { max },
        })
    }

    /// An I/O error on the output side: a guard's stop, or a genuine (temporary) I/O failure.
    pub(crate) fn from_io(err: io::Error) -> Self {
        Self::from_guard(&err).unwrap_or(ImageFailure::Io(err))
    }
}

impl From<io::Error> for ImageFailure {
    fn from(err: io::Error) -> Self {
        Self::from_io(err)
    }
}

impl From<ImageFailure> for ConvertError {
    fn from(failure: ImageFailure) -> Self {
        match failure {
            ImageFailure::Io(e) => ConvertError::Io(e),
            ImageFailure::Cancelled => ConvertError::Cancelled,
            e @ (ImageFailure::TooManyPixels { .. }
            | ImageFailure::InputTooLarge { .. }
            | ImageFailure::DecoderLimit { .. }
            | ImageFailure::OutputPixels { .. }
            | ImageFailure::OutputBytes { .. }
            | ImageFailure::OutputTooLarge { .. }) => ConvertError::TooLarge(e.to_string()),
            e @ (ImageFailure::OptionsNotObject { .. }
            | ImageFailure::UnknownOption { .. }
            | ImageFailure::BadOption { .. }
            | ImageFailure::Conflict { .. }
            | ImageFailure::QualityNotApplicable { .. }) => {
                ConvertError::InvalidOptions(e.to_string())
            }
            e @ (ImageFailure::UnknownFormat
            | ImageFailure::Empty
            | ImageFailure::Decode { .. }) => ConvertError::InvalidInput(e.to_string()),
            e @ ImageFailure::Encode { .. } => {
                ConvertError::permanent("image_encode_failed", e.to_string())
            }
            e @ ImageFailure::Resize(_) => {
                ConvertError::permanent("image_resize_failed", e.to_string())
            }
        }
    }
}
