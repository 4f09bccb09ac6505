//! The `preview.png` of every mesh conversion, and the mesh options with their JSON Schema.
#![cfg(feature = "mesh")]
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use converto_adapters::mesh::{MeshConverter, MeshFormat, MeshOptions};
use converto_core::converter::{Output, OutputBody};
use converto_core::{
    ConversionId, ConvertContext, ConvertError, ConvertRequest, Converter, Format,
};
use serde_json::{Value, json};

fn cube() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/cube.stl")
}

async fn convert(
    input: &Path,
    source: &str,
    target: &str,
    options: Value,
) -> (tempfile::TempDir, Result<Vec<Output>, ConvertError>) {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ConvertContext::for_file(
        input.to_path_buf(),
        dir.path().to_path_buf(),
        Arc::new(|_, _| {}),
    );
    let request = ConvertRequest {
        id: ConversionId::new(),
        attempt: 1,
        source: Format::new(source).unwrap(),
        target: Format::new(target).unwrap(),
        options,
    };
    let result = MeshConverter::new().convert(&request, &ctx).await;
    (dir, result)
}

/// A decoded PNG: its size and RGBA pixels.
struct Decoded {
    width: u32,
    height: u32,
    rgba: Vec<u8>,
}

impl Decoded {
    fn opaque(&self) -> usize {
        self.rgba.chunks_exact(4).filter(|p| p[3] != 0).count()
    }
}

/// The preview output: checks its name and format and decodes it with the `png` crate.
fn preview(outputs: &[Output]) -> Decoded {
    let [_, preview] = outputs else {
        panic!("want the mesh and its preview: {outputs:?}");
    };
    assert_eq!(preview.name, "preview.png");
    assert_eq!(preview.format.as_str(), "png");
    let OutputBody::File(path) = &preview.body else {
        panic!("a file");
    };
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut rgba = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut rgba).unwrap();
    assert_eq!(
        (info.color_type, info.bit_depth),
        (png::ColorType::Rgba, png::BitDepth::Eight)
    );
    rgba.truncate(info.buffer_size());
    Decoded {
        width: info.width,
        height: info.height,
        rgba,
    }
}

#[tokio::test]
async fn every_conversion_has_a_preview_of_the_requested_size() {
    for (target, options, size) in [
        ("obj", Value::Null, 512),
        ("ply", json!({"preview_size": 64}), 64),
        (
            "glb",
            json!({"preview_size": 2048.0, "preview": true}),
            2048,
        ),
    ] {
        let (_dir, outputs) = convert(&cube(), "stl", target, options).await;
        let outputs = outputs.unwrap();
        assert_eq!(outputs[0].name, format!("output.{target}"));
        let image = preview(&outputs);
        assert_eq!((image.width, image.height), (size, size));
        // The cube, fitted to the frame at a three-quarter angle, covers a good part of it...
        let share = image.opaque() as f64 / f64::from(size * size);
        assert!((0.3..0.85).contains(&share), "{target}: {share}");
        // ...and shows three faces, shaded differently; the background is transparent.
        let mut colours: Vec<&[u8]> = image.rgba.chunks_exact(4).filter(|p| p[3] == 255).collect();
        colours.sort_unstable();
        colours.dedup();
        assert_eq!(colours.len(), 3, "{target}: {colours:?}");
        assert_eq!(&image.rgba[..4], &[0, 0, 0, 0], "a transparent corner");
    }
}

#[tokio::test]
async fn the_preview_can_be_turned_off() {
    let (_dir, outputs) = convert(&cube(), "stl", "obj", json!({"preview": false})).await;
    let outputs = outputs.unwrap();
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].name, "output.obj");
}

/// A mesh whose triangles all have zero area converts (the file is valid) with a blank,
/// transparent preview; a file with no triangles fails as before, with no preview left.
#[tokio::test]
async fn degenerate_meshes_get_a_blank_preview_and_empty_ones_fail() {
    let dir = tempfile::tempdir().unwrap();
    let flat = dir.path().join("flat.obj");
    std::fs::write(&flat, "v 0 0 0\nv 1 1 1\nv 2 2 2\nf 1 2 3\nf 3 2 1\n").unwrap();
    let (_out, outputs) = convert(&flat, "obj", "stl", Value::Null).await;
    let image = preview(&outputs.unwrap());
    assert_eq!((image.width, image.height), (512, 512));
    assert_eq!(image.opaque(), 0, "blank");

    let empty = dir.path().join("empty.obj");
    std::fs::write(&empty, "v 0 0 0\nv 1 0 0\n").unwrap();
    let (out, result) = convert(&empty, "obj", "stl", Value::Null).await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, ConvertError::InvalidInput(m) if m.contains("no faces")),
        "{err:?}"
    );
    assert!(!out.path().join("out/preview.png").exists());
}

/// Options tried against both the parser (at submit, through `check_options`) and the
/// published schema: they must agree on every one.
fn option_cases() -> Vec<Value> {
    vec![
        Value::Null,
        json!({}),
        json!({"encoding": "binary"}),
        json!({"encoding": "ascii"}),
        json!({"encoding": "utf8"}),
        json!({"encoding": null}),
        json!({"encoding": 1}),
        json!({"preview": true}),
        json!({"preview": false}),
        json!({"preview": "yes"}),
        json!({"preview": null}),
        json!({"preview": 1}),
        json!({"preview_size": 64}),
        json!({"preview_size": 2048}),
        json!({"preview_size": 512.0}),
        json!({"preview_size": 1e3}),
        json!({"preview_size": 63}),
        json!({"preview_size": 2049}),
        json!({"preview_size": 0}),
        json!({"preview_size": -512}),
        json!({"preview_size": 512.5}),
        json!({"preview_size": "512"}),
        json!({"preview_size": null}),
        json!({"preview_size": 18446744073709551615u64}),
        json!({"encoding": "ascii", "preview": false, "preview_size": 300}),
        json!({"encodng": "ascii"}),
        json!({"preview_size": 512, "colour": "red"}),
        json!("ascii"),
        json!([]),
        json!(3),
    ]
}

#[test]
fn check_options_and_the_schema_accept_exactly_the_same_options() {
    let converter = MeshConverter::new();
    let format = |f: MeshFormat| f.format();
    let mut compared = 0;
    for source in MeshFormat::ALL {
        for target in MeshFormat::ALL.into_iter().filter(|t| *t != source) {
            let schema = converter
                .options_schema(&format(source), &format(target))
                .unwrap_or_else(|| panic!("{source} -> {target}: no schema"));
            assert_eq!(schema, MeshOptions::schema(target));
            let validator = jsonschema::draft202012::new(&schema)
                .unwrap_or_else(|e| panic!("{target}: not a valid 2020-12 schema: {e}"));
            for options in option_cases() {
                let parsed = converter.check_options(&format(source), &format(target), &options);
                // `null` stands for "no options" at the API: the schema is of the object.
                let valid = options.is_null() || validator.is_valid(&options);
                assert_eq!(
                    parsed.is_ok(),
                    valid,
                    "{source} -> {target} {options}: check_options says {parsed:?}, the schema {valid}"
                );
                if let Err(e) = parsed {
                    assert!(matches!(e, ConvertError::InvalidOptions(_)), "{e:?}");
                }
                compared += 1;
            }
        }
    }
    assert!(compared >= 12 * 30, "{compared}");
    // Text OBJ and binary GLB only take their own encoding.
    let obj = MeshOptions::schema(MeshFormat::Obj);
    assert_eq!(obj["properties"]["encoding"]["enum"], json!(["ascii"]));
    let glb = MeshOptions::schema(MeshFormat::Glb);
    assert_eq!(glb["properties"]["encoding"]["enum"], json!(["binary"]));
    assert_eq!(glb["properties"]["preview_size"]["default"], 512);
    // Routes the converter does not serve publish nothing.
    let png = Format::new("png").unwrap();
    assert!(
        converter
            .options_schema(&png, &format(MeshFormat::Stl))
            .is_none()
    );
    assert!(
        converter
            .options_schema(&format(MeshFormat::Stl), &png)
            .is_none()
    );
}

#[tokio::test]
async fn invalid_preview_options_are_refused_when_converting_too() {
    let (_dir, result) = convert(&cube(), "stl", "obj", json!({"preview_size": 4096})).await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, ConvertError::InvalidOptions(m) if m.contains("preview_size")),
        "{err:?}"
    );
    let (_dir, result) = convert(&cube(), "stl", "glb", json!({"encoding": "ascii"})).await;
    assert!(matches!(result, Err(ConvertError::InvalidOptions(_))));
}
