//! Cancelling a built-in converter mid-way stops its blocking work, and `convert` returns only
//! once that work has ended. Asserted by state (is the input still open? were outputs left?),
//! never by timing.
#![cfg(all(feature = "mesh", feature = "image", target_os = "linux"))]

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use converto_adapters::image::{ImageConfig, ImageConverter};
use converto_adapters::mesh::MeshConverter;
use converto_core::{
    CancellationToken, ConversionId, ConvertContext, ConvertError, ConvertRequest, Converter,
    Format,
};

/// `O_NONBLOCK` on Linux.
const O_NONBLOCK: i32 = 0o4000;
/// `ENXIO`: opening a FIFO for writing without blocking while no process has it open for
/// reading.
const ENXIO: i32 = 6;

fn request(source: &str, target: &str) -> ConvertRequest {
    ConvertRequest {
        id: ConversionId::new(),
        attempt: 1,
        source: Format::new(source).expect("format"),
        target: Format::new(target).expect("format"),
        options: serde_json::Value::Null,
    }
}

/// Whether some process has the FIFO at `path` open for reading.
fn has_reader(path: &Path) -> bool {
    match OpenOptions::new()
        .write(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
    {
        Ok(_) => true,
        Err(e) => {
            assert_eq!(e.raw_os_error(), Some(ENXIO), "unexpected error {e}");
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_mesh_conversion_stops_reading_before_convert_returns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("input.obj");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo failed");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("work dir");
    let token = CancellationToken::new();

    // Feeds an endless OBJ (capped at 64 MiB, so a converter that ignored cancellation would
    // finish and fail the assertion instead of hanging) and cancels the job after 1 MiB.
    let writer = std::thread::spawn({
        let fifo = fifo.clone();
        let token = token.clone();
        move || -> (u64, ErrorKind) {
            let mut file = match OpenOptions::new().write(true).open(&fifo) {
                Ok(f) => f,
                Err(e) => return (0, e.kind()),
            };
            let chunk = "f 1 2 3\n".repeat(8192);
            let mut sent = 0u64;
            if let Err(e) = file.write_all(b"v 0 0 0\nv 1 0 0\nv 0 1 0\n") {
                return (sent, e.kind());
            }
            while sent < 1024 {
                if let Err(e) = file.write_all(chunk.as_bytes()) {
                    return (sent, e.kind());
                }
                sent += 1;
                if sent == 16 {
                    token.cancel();
                }
            }
            (sent, ErrorKind::Other)
        }
    });

    let ctx = ConvertContext::for_file(fifo.clone(), work.clone(), Arc::new(|_, _| {}))
        .with_cancel(token.clone());
    let result = MeshConverter::new()
        .convert(&request("obj", "stl"), &ctx)
        .await;
    assert!(matches!(result, Err(ConvertError::Cancelled)), "{result:?}");
    // The blocking reader closed its end before `convert` returned.
    assert!(
        !has_reader(&fifo),
        "the mesh reader still has the input open"
    );
    let (sent, end) = writer.join().expect("writer thread");
    assert_eq!(
        end,
        ErrorKind::BrokenPipe,
        "writer stopped after {sent} chunks"
    );
    assert!(sent < 1024, "the whole input was read despite cancellation");
    let left: Vec<_> = std::fs::read_dir(&work)
        .expect("work dir")
        .flatten()
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "half-written outputs left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_image_conversion_stops_decoding_and_leaves_no_output() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("big.png");
    let image = image::RgbImage::from_fn(2000, 2000, |x, y| image::Rgb([x as u8, y as u8, 7]));
    image
        .save_with_format(&input, image::ImageFormat::Png)
        .expect("write input");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("work dir");
    let token = CancellationToken::new();
    // Cancel as the converter announces decoding: the decode task is about to start and must
    // stop at its first read.
    let cancel_at_decode = {
        let token = token.clone();
        Arc::new(move |_p: u8, stage: Option<&str>| {
            if stage == Some("decoding") {
                token.cancel();
            }
        })
    };
    let ctx =
        ConvertContext::for_file(input, work.clone(), cancel_at_decode).with_cancel(token.clone());
    let result = ImageConverter::new(ImageConfig::default())
        .convert(&request("png", "webp"), &ctx)
        .await;
    assert!(matches!(result, Err(ConvertError::Cancelled)), "{result:?}");
    let outputs: Vec<_> = std::fs::read_dir(work.join("out"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(outputs.is_empty(), "outputs left: {outputs:?}");
}
