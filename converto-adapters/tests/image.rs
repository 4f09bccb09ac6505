//! The image converter on real files made here with the `image` crate: every input format,
//! every fit, variants, quality, orientation, alpha, and hostile input.
#![cfg(feature = "image")]

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use converto_adapters::image::{ImageConfig, ImageConverter};
use converto_core::converter::{ConvertContext, OutputBody};
use converto_core::{
    CancellationToken, ConversionId, ConvertError, ConvertRequest, Converter, Format, Output,
};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use serde_json::{Value, json};

fn format(s: &str) -> Format {
    Format::new(s).expect("valid format")
}

/// A photo-like test card: gradients plus deterministic noise, so encoders have real work.
fn test_card(width: u32, height: u32) -> RgbImage {
    let mut state = 0x2545_f491_u32;
    RgbImage::from_fn(width, height, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state & 31) as u8;
        Rgb([
            ((x * 255 / width.max(1)) as u8).saturating_add(n),
            ((y * 255 / height.max(1)) as u8).saturating_add(n / 2),
            (((x + y) % 256) as u8) ^ n,
        ])
    })
}

fn encode(image: &DynamicImage, fmt: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, fmt).expect("encode test image");
    out.into_inner()
}

fn image_format(name: &str) -> ImageFormat {
    match name {
        "jpeg" => ImageFormat::Jpeg,
        "png" => ImageFormat::Png,
        "webp" => ImageFormat::WebP,
        "gif" => ImageFormat::Gif,
        "bmp" => ImageFormat::Bmp,
        "tiff" => ImageFormat::Tiff,
        other => panic!("no test format {other}"),
    }
}

/// A converted file: where its outputs went and the progress it reported.
struct Run {
    _dir: tempfile::TempDir,
    result: Result<Vec<Output>, ConvertError>,
    progress: Vec<(u8, Option<String>)>,
}

async fn convert_with(
    converter: &ImageConverter,
    bytes: &[u8],
    source: &str,
    target: &str,
    options: Value,
    cancel: Option<CancellationToken>,
) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join(format!("input.{source}"));
    std::fs::write(&input, bytes).expect("write input");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("work dir");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let mut ctx = ConvertContext::for_file(
        input,
        work,
        Arc::new(move |p, stage: Option<&str>| {
            sink.lock()
                .expect("progress lock")
                .push((p, stage.map(str::to_owned)));
        }),
    );
    if let Some(token) = cancel {
        ctx = ctx.with_cancel(token);
    }
    let request = ConvertRequest {
        id: ConversionId::new(),
        attempt: 1,
        source: format(source),
        target: format(target),
        options,
    };
    let result = converter.convert(&request, &ctx).await;
    let progress = seen.lock().expect("progress lock").clone();
    Run {
        _dir: dir,
        result,
        progress,
    }
}

async fn convert(bytes: &[u8], source: &str, target: &str, options: Value) -> Run {
    convert_with(
        &ImageConverter::new(ImageConfig::default()),
        bytes,
        source,
        target,
        options,
        None,
    )
    .await
}

fn path_of(output: &Output) -> PathBuf {
    match &output.body {
        OutputBody::File(p) => p.clone(),
        OutputBody::Bytes(_) => panic!("expected a file output"),
    }
}

/// Decodes an output, checking that its content is the format it claims.
fn open_output(output: &Output) -> DynamicImage {
    let bytes = std::fs::read(path_of(output)).expect("read output");
    let guessed = image::guess_format(&bytes).expect("output has a known format");
    assert_eq!(
        guessed,
        image_format(output.format.as_str()),
        "{}",
        output.name
    );
    image::load_from_memory(&bytes).expect("output decodes")
}

fn only_output(run: &Run) -> DynamicImage {
    let outputs = run.result.as_ref().expect("conversion succeeds");
    assert_eq!(outputs.len(), 1);
    open_output(&outputs[0])
}

fn dims(image: &DynamicImage) -> (u32, u32) {
    (image.width(), image.height())
}

const INPUTS: [&str; 6] = ["jpeg", "png", "webp", "gif", "bmp", "tiff"];
const OUTPUTS: [&str; 3] = ["jpeg", "png", "webp"];

#[test]
fn routes_cover_every_input_to_every_output() {
    let routes = ImageConverter::new(ImageConfig::default()).routes();
    assert_eq!(routes.len(), INPUTS.len() * OUTPUTS.len());
    for s in INPUTS {
        for t in OUTPUTS {
            assert!(
                routes
                    .iter()
                    .any(|r| r.source == format(s) && r.target == format(t)),
                "{s} -> {t}"
            );
        }
    }
    let dynamic: Box<dyn Converter> = Box::new(ImageConverter::new(ImageConfig::default()));
    assert_eq!(dynamic.name(), "image");
    assert_eq!(ImageConfig::default().max_pixels, 100_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_input_format_converts_to_every_output_format() {
    let card = DynamicImage::ImageRgb8(test_card(300, 200));
    for source in INPUTS {
        let bytes = encode(&card, image_format(source));
        for target in OUTPUTS {
            let run = convert(&bytes, source, target, json!({"width": 150})).await;
            let out = only_output(&run);
            assert_eq!(dims(&out), (150, 100), "{source} -> {target}");
            let outputs = run.result.as_ref().expect("ok");
            assert_eq!(outputs[0].name, format!("output.{target}"));
            assert_eq!(outputs[0].format, format(target));
            let last = run.progress.last().expect("progress reported");
            assert_eq!(last.0, 100, "{source} -> {target}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_format_reencode_without_options_keeps_the_size() {
    let bytes = encode(
        &DynamicImage::ImageRgb8(test_card(320, 240)),
        ImageFormat::Jpeg,
    );
    let run = convert(&bytes, "jpeg", "jpeg", Value::Null).await;
    assert_eq!(dims(&only_output(&run)), (320, 240));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fit_modes() {
    let bytes = encode(
        &DynamicImage::ImageRgb8(test_card(400, 300)),
        ImageFormat::Png,
    );
    for (options, want) in [
        (json!({"width": 200, "height": 200}), (200, 150)),
        (
            json!({"width": 200, "height": 200, "fit": "contain"}),
            (200, 150),
        ),
        (
            json!({"width": 200, "height": 200, "fit": "cover"}),
            (200, 200),
        ),
        (
            json!({"width": 200, "height": 50, "fit": "fill"}),
            (200, 50),
        ),
        (
            json!({"width": 100, "height": 300, "fit": "cover"}),
            (100, 300),
        ),
        (json!({"height": 150}), (200, 150)),
        (json!({"width": 100}), (100, 75)),
    ] {
        for target in OUTPUTS {
            let run = convert(&bytes, "png", target, options.clone()).await;
            assert_eq!(dims(&only_output(&run)), want, "{options} -> {target}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cover_crops_the_centre() {
    // Left third red, middle green, right third blue: a square cover keeps the green middle.
    let image = RgbImage::from_fn(300, 100, |x, _| match x / 100 {
        0 => Rgb([255, 0, 0]),
        1 => Rgb([0, 255, 0]),
        _ => Rgb([0, 0, 255]),
    });
    let bytes = encode(&DynamicImage::ImageRgb8(image), ImageFormat::Png);
    let run = convert(
        &bytes,
        "png",
        "png",
        json!({"width": 50, "height": 50, "fit": "cover"}),
    )
    .await;
    let out = only_output(&run).into_rgb8();
    for x in [0, 25, 49] {
        let p = out.get_pixel(x, 25);
        assert!(p[1] > 200 && p[0] < 40 && p[2] < 40, "pixel {x}: {p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_make_one_artifact_each() {
    let bytes = encode(
        &DynamicImage::ImageRgb8(test_card(1200, 800)),
        ImageFormat::Jpeg,
    );
    let run = convert(&bytes, "jpeg", "jpeg", json!({"variants": "240p,720p"})).await;
    let outputs = run.result.as_ref().expect("converts");
    let names: Vec<_> = outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["240p.jpeg", "720p.jpeg"]);
    assert_eq!(dims(&open_output(&outputs[0])), (360, 240));
    assert_eq!(dims(&open_output(&outputs[1])), (1080, 720));
    // One progress report per stage: decoding, decoded, then one per variant.
    let stages: Vec<_> = run
        .progress
        .iter()
        .filter_map(|(_, s)| s.as_deref())
        .collect();
    assert_eq!(
        stages,
        [
            "decoding",
            "decoded",
            "encoded 240p.jpeg",
            "encoded 720p.jpeg"
        ]
    );
    assert!(run.progress.windows(2).all(|w| w[0].0 <= w[1].0));

    let run = convert(
        &bytes,
        "jpeg",
        "webp",
        json!({"variants": ["100x100", "480p"], "fit": "cover"}),
    )
    .await;
    let outputs = run.result.as_ref().expect("converts");
    assert_eq!(outputs[0].name, "100x100.webp");
    assert_eq!(dims(&open_output(&outputs[0])), (100, 100));
    assert_eq!(dims(&open_output(&outputs[1])), (720, 480));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_upscaling_unless_asked() {
    let bytes = encode(
        &DynamicImage::ImageRgb8(test_card(300, 200)),
        ImageFormat::Png,
    );
    let run = convert(&bytes, "png", "jpeg", json!({"variants": "720p"})).await;
    let outputs = run.result.as_ref().expect("converts");
    assert_eq!(outputs[0].name, "720p.jpeg");
    assert_eq!(dims(&open_output(&outputs[0])), (300, 200));
    let run = convert(
        &bytes,
        "png",
        "jpeg",
        json!({"variants": "720p", "upscale": true}),
    )
    .await;
    assert_eq!(dims(&only_output(&run)), (1080, 720));
}

fn file_size(run: &Run) -> u64 {
    let outputs = run.result.as_ref().expect("converts");
    std::fs::metadata(path_of(&outputs[0]))
        .expect("output exists")
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_changes_the_size() {
    let bytes = encode(
        &DynamicImage::ImageRgb8(test_card(640, 480)),
        ImageFormat::Png,
    );
    for target in ["jpeg", "webp"] {
        let low = file_size(&convert(&bytes, "png", target, json!({"quality": 20})).await);
        let high = file_size(&convert(&bytes, "png", target, json!({"quality": 95})).await);
        assert!(
            low * 3 / 2 < high,
            "{target}: quality 20 gave {low} bytes, 95 gave {high}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpha_is_kept_for_png_and_webp_and_flattened_on_white_for_jpeg() {
    let image = RgbaImage::from_fn(64, 64, |x, _| {
        if x < 32 {
            Rgba([0, 0, 0, 0])
        } else {
            Rgba([0, 0, 255, 255])
        }
    });
    let bytes = encode(&DynamicImage::ImageRgba8(image), ImageFormat::Png);
    let jpeg = only_output(&convert(&bytes, "png", "jpeg", Value::Null).await).into_rgb8();
    let p = jpeg.get_pixel(8, 8);
    assert!(p.0.iter().all(|&c| c > 240), "transparent became {p:?}");
    let p = jpeg.get_pixel(56, 8);
    assert!(p[2] > 200 && p[0] < 60, "blue became {p:?}");
    for target in ["png", "webp"] {
        let out = only_output(&convert(&bytes, "png", target, json!({"width": 32})).await);
        assert!(out.color().has_alpha(), "{target} lost its alpha");
        assert!(out.to_rgba8().get_pixel(2, 2)[3] < 16, "{target}");
    }
}

/// A JPEG whose EXIF says "rotate 90 degrees clockwise to display" (orientation 6).
fn jpeg_with_orientation(image: &RgbImage, orientation: u8) -> Vec<u8> {
    let plain = encode(&DynamicImage::ImageRgb8(image.clone()), ImageFormat::Jpeg);
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\0\x2a\0\0\0\x08"); // big-endian TIFF header, IFD at 8
    tiff.extend_from_slice(&[0, 1]); // one entry
    tiff.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, orientation, 0, 0]);
    tiff.extend_from_slice(&[0, 0, 0, 0]); // no next IFD
    let mut app1 = vec![0xFF, 0xE1];
    let len = (2 + 6 + tiff.len()) as u16;
    app1.extend_from_slice(&len.to_be_bytes());
    app1.extend_from_slice(b"Exif\0\0");
    app1.extend_from_slice(&tiff);
    let mut out = plain[..2].to_vec(); // SOI
    out.extend_from_slice(&app1);
    out.extend_from_slice(&plain[2..]);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exif_orientation_is_applied() {
    // Stored landscape, red on the left; orientation 6 displays it portrait, red on top.
    let stored = RgbImage::from_fn(400, 200, |x, _| {
        if x < 200 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    let bytes = jpeg_with_orientation(&stored, 6);
    // Full-size decode (the `image` crate's decoder) and a DCT-scaled one (`jpeg-decoder`).
    for (options, want) in [
        (Value::Null, (200, 400)),
        (json!({"height": 100}), (50, 100)),
        (json!({"width": 40, "height": 40, "fit": "cover"}), (40, 40)),
    ] {
        let out = only_output(&convert(&bytes, "jpeg", "png", options.clone()).await).into_rgb8();
        assert_eq!(
            dims(&DynamicImage::ImageRgb8(out.clone())),
            want,
            "{options}"
        );
        let top = out.get_pixel(want.0 / 2, 1);
        let bottom = out.get_pixel(want.0 / 2, want.1 - 2);
        assert!(top[0] > 200 && top[2] < 60, "{options}: top is {top:?}");
        assert!(
            bottom[2] > 200 && bottom[0] < 60,
            "{options}: bottom is {bottom:?}"
        );
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFF_u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid PNG header declaring a `width x height` image, with a few bytes of (bogus) data.
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]); // 8-bit RGBA
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_bombs_are_rejected_from_the_header() {
    let bomb = png_bomb(100_000, 100_000);
    let started = Instant::now();
    let run = convert(&bomb, "png", "jpeg", json!({"variants": "240p"})).await;
    assert!(
        matches!(&run.result, Err(ConvertError::TooLarge(m)) if m.contains("100000x100000")),
        "{:?}",
        run.result
    );
    // 40 GB of RGBA was never allocated: the check takes no time.
    assert!(started.elapsed() < Duration::from_secs(2));

    // The limit is configurable, and applies to JPEG headers too.
    let small = ImageConverter::new(ImageConfig::default().with_max_pixels(10_000));
    let jpeg = encode(
        &DynamicImage::ImageRgb8(test_card(200, 100)),
        ImageFormat::Jpeg,
    );
    let run = convert_with(&small, &jpeg, "jpeg", "png", Value::Null, None).await;
    assert!(
        matches!(run.result, Err(ConvertError::TooLarge(_))),
        "{:?}",
        run.result
    );

    let tiny_limit = ImageConverter::new(ImageConfig::default().with_max_input_bytes(100));
    let run = convert_with(&tiny_limit, &jpeg, "jpeg", "png", Value::Null, None).await;
    assert!(
        matches!(run.result, Err(ConvertError::TooLarge(_))),
        "{:?}",
        run.result
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_sizes_are_bounded_before_anything_is_allocated() {
    // Issue 9: a 4096x1 PNG asked for 4096 high with upscaling would be 16 777 216 x 4096.
    let thin = encode(
        &DynamicImage::ImageRgb8(test_card(4096, 1)),
        ImageFormat::Png,
    );
    let run = convert(
        &thin,
        "png",
        "png",
        json!({"height": 4096, "upscale": true}),
    )
    .await;
    assert!(
        matches!(&run.result, Err(ConvertError::TooLarge(m)) if m.contains("16777216x4096")),
        "{:?}",
        run.result
    );
    assert_eq!(
        run.result.as_ref().err().map(ConvertError::code),
        Some("input_too_large")
    );

    // Variants count together: each of these is within 1 000 000 pixels, all three are not.
    let limited = ImageConverter::new(ImageConfig::default().with_max_pixels(1_000_000));
    let card = encode(
        &DynamicImage::ImageRgb8(test_card(1000, 1000)),
        ImageFormat::Png,
    );
    let three = json!({"variants": ["600x600", "599x599", "598x598"], "fit": "fill"});
    let run = convert_with(&limited, &card, "png", "png", three, None).await;
    assert!(
        matches!(&run.result, Err(ConvertError::TooLarge(m)) if m.contains("3 outputs together")),
        "{:?}",
        run.result
    );
    let two = json!({"variants": ["600x600", "599x599"], "fit": "fill"});
    let run = convert_with(&limited, &card, "png", "png", two, None).await;
    assert_eq!(run.result.map(|o| o.len()).ok(), Some(2));

    // Sizes the options fix on their own are refused when the job is submitted.
    let huge = json!({"variants": ["16384x16384"], "fit": "fill", "upscale": true});
    let checked = limited.check_options(&format("png"), &format("png"), &huge);
    assert!(
        matches!(&checked, Err(ConvertError::InvalidOptions(m)) if m.contains("268435456 pixels")),
        "{checked:?}"
    );
    let fine = json!({"variants": ["1000x1000"], "fit": "fill", "upscale": true});
    assert!(
        limited
            .check_options(&format("png"), &format("png"), &fine)
            .is_ok()
    );

    // The encoded bytes of all outputs together are bounded too.
    let few_bytes = ImageConverter::new(ImageConfig::default().with_max_output_bytes(10_000));
    let run = convert_with(&few_bytes, &card, "png", "png", Value::Null, None).await;
    assert!(
        matches!(&run.result, Err(ConvertError::TooLarge(m)) if m.contains("10000 bytes")),
        "{:?}",
        run.result
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_corrupt_files_are_invalid_input() {
    let card = DynamicImage::ImageRgb8(test_card(256, 192));
    for source in INPUTS {
        let bytes = encode(&card, image_format(source));
        for cut in [bytes.len() / 2, 40, 8] {
            // Shrunk (a JPEG takes the DCT-scaling decoder) and at full size.
            for options in [json!({"width": 64}), Value::Null] {
                let run = convert(&bytes[..cut], source, "png", options.clone()).await;
                assert!(
                    matches!(&run.result, Err(ConvertError::InvalidInput(_))),
                    "{source} cut to {cut} of {} bytes, {options}: {:?}",
                    bytes.len(),
                    run.result.as_ref().map(|o| o.len())
                );
            }
        }
    }
    for (name, bytes) in [
        ("empty", Vec::new()),
        ("text", b"hello, this is not an image at all".to_vec()),
        ("zeros", vec![0u8; 4096]),
    ] {
        let run = convert(&bytes, "png", "jpeg", Value::Null).await;
        assert!(
            matches!(&run.result, Err(ConvertError::InvalidInput(_))),
            "{name}: {:?}",
            run.result.as_ref().map(|o| o.len())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_and_routes_are_rejected() {
    let checker = ImageConverter::new(ImageConfig::default());
    let fmt = |name: &str| Format::new(name).expect("format name");
    let bytes = encode(
        &DynamicImage::ImageRgb8(test_card(64, 64)),
        ImageFormat::Png,
    );
    for options in [
        json!({"width": 0}),
        json!({"width": 100_000}),
        json!({"height": "tall"}),
        json!({"fit": "squash"}),
        json!({"quality": 0}),
        json!({"variants": "720"}),
        json!({"variants": "720p", "height": 100}),
        json!({"colour": "red"}),
        json!("240p"),
    ] {
        let run = convert(&bytes, "png", "jpeg", options.clone()).await;
        match &run.result {
            Err(ConvertError::InvalidOptions(message)) => assert!(!message.is_empty()),
            other => panic!("{options}: {:?}", other.as_ref().map(|o| o.len())),
        }
        // The same verdict at submit time, before any input exists.
        assert!(
            matches!(
                checker.check_options(&fmt("png"), &fmt("jpeg"), &options),
                Err(ConvertError::InvalidOptions(_))
            ),
            "{options}: accepted at submit"
        );
    }
    for good in [
        Value::Null,
        json!({"variants": "240p,720p", "quality": 70}),
        json!({"width": 100, "fit": "cover"}),
    ] {
        checker
            .check_options(&fmt("png"), &fmt("jpeg"), &good)
            .unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    let run = convert(&bytes, "png", "png", json!({"quality": 50})).await;
    assert!(matches!(run.result, Err(ConvertError::InvalidOptions(m)) if m.contains("quality")));
    let run = convert(&bytes, "png", "gif", Value::Null).await;
    assert!(matches!(run.result, Err(ConvertError::Unsupported { .. })));
    let run = convert(&bytes, "stl", "png", Value::Null).await;
    assert!(matches!(run.result, Err(ConvertError::Unsupported { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_conversion_stops() {
    let bytes = encode(
        &DynamicImage::ImageRgb8(test_card(64, 64)),
        ImageFormat::Png,
    );
    let token = CancellationToken::new();
    token.cancel();
    let converter = ImageConverter::new(ImageConfig::default());
    let run = convert_with(&converter, &bytes, "png", "jpeg", Value::Null, Some(token)).await;
    assert!(matches!(run.result, Err(ConvertError::Cancelled)));
}

#[test]
fn config_deserialises_with_defaults() {
    let config: ImageConfig =
        serde_json::from_value(json!({"max_pixels": 1000})).expect("deserialises");
    assert_eq!(config.max_pixels, 1000);
    assert_eq!(config.default_jpeg_quality, 85);
}
