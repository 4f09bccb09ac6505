//! Every built-in converter passes converto-core's converter conformance suite: outputs named
//! and typed, progress monotonic and bounded, corrupt input a permanent error, a cancelled
//! token honoured.

use converto_core::testkit::converter::{ConverterCase, ConverterSuite, run_converter_suite};

#[cfg(feature = "mesh")]
#[tokio::test]
async fn the_mesh_converter_passes_the_suite() {
    let cube = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/data/cube.stl"
    ))
    .expect("examples/data/cube.stl");
    let suite = ConverterSuite {
        good: ConverterCase::new("stl", "obj", "cube.stl", cube),
        bad: ConverterCase::new(
            "stl",
            "obj",
            "bad.stl",
            b"solid x\nfacet nonsense\n".to_vec(),
        ),
    };
    let converter = converto_adapters::mesh::MeshConverter::new();
    run_converter_suite(&converter, &suite).await;
}

#[cfg(feature = "image")]
#[tokio::test]
async fn the_image_converter_passes_the_suite() {
    use image::{ImageFormat, RgbImage};
    let picture = RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 128]));
    let mut png = std::io::Cursor::new(Vec::new());
    picture
        .write_to(&mut png, ImageFormat::Png)
        .expect("encode a png");
    let png = png.into_inner();
    let truncated = png[..png.len() / 2].to_vec();
    let suite = ConverterSuite {
        good: ConverterCase::new("png", "jpeg", "a.png", png)
            .options(serde_json::json!({"variants": "16p,32p"})),
        bad: ConverterCase::new("png", "jpeg", "b.png", truncated),
    };
    let converter = converto_adapters::image::ImageConverter::new(
        converto_adapters::image::ImageConfig::default(),
    );
    run_converter_suite(&converter, &suite).await;
}

#[cfg(feature = "process")]
#[tokio::test]
async fn the_process_converter_passes_the_suite() {
    use converto_adapters::process::{ProcessConfig, ProcessConverter, ProcessRoute};
    use converto_core::Format;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("upper.sh");
    // Refuses input starting with "bad" (exit 2: a permanent failure), else upper-cases it.
    std::fs::write(
        &script,
        "case \"$(head -c 3 \"$1\")\" in bad) echo corrupt >&2; exit 2;; esac\n\
         echo 50% >&2\ntr a-z A-Z < \"$1\" > \"$2\"\n",
    )
    .expect("script");
    let route = ProcessRoute::new(
        Format::new("txt").expect("format"),
        Format::new("upper").expect("format"),
        "/bin/sh",
    )
    .arg(script.to_string_lossy())
    .args(["{input}", "{output}"])
    .output("output.upper");
    let converter = ProcessConverter::from_config(ProcessConfig::new().name("upper").route(route))
        .expect("converter");
    let suite = ConverterSuite {
        good: ConverterCase::new("txt", "upper", "a.txt", "hello"),
        bad: ConverterCase::new("txt", "upper", "b.txt", "bad input"),
    };
    run_converter_suite(&converter, &suite).await;
}
