//! Thumbnails of one image with the built-in image converter, timed; also makes a synthetic
//! photo to try it on. Used by `benches/converters.sh` to compare against `vipsthumbnail`.
//!
//! ```text
//! cargo run --release --features image --example image_thumbs -- generate photo.jpeg [6000x4000]
//! cargo run --release --features image --example image_thumbs -- thumbs photo.jpeg OUT_DIR [240p,720p] [QUALITY]
//! ```

#[cfg(feature = "image")]
mod run {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Instant;

    use converto::adapters::image::{ImageConfig, ImageConverter};
    use converto::core::converter::OutputBody;
    use converto::{ConversionId, ConvertContext, ConvertRequest, Converter, Format, Output};
    use serde_json::{Value, json};

    type Error = Box<dyn std::error::Error>;

    /// A photo-like RGB image (rows top to bottom): smooth gradients and waves with sensor-like
    /// noise, so JPEG coding costs what it costs on a real photo, not on a flat test card.
    pub(crate) fn synthetic_photo(width: u32, height: u32) -> Vec<u8> {
        let mut state = 0x9e37_79b9_u32;
        let mut out = Vec::with_capacity(width as usize * height as usize * 3);
        for y in 0..height {
            let fy = f64::from(y) / f64::from(height);
            for x in 0..width {
                let fx = f64::from(x) / f64::from(width);
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let noise = f64::from(state & 15) - 7.5;
                let wave = (fx * 37.0 + (fy * 23.0).sin() * 3.0).sin() * 40.0;
                let channel = |v: f64| (v + noise).clamp(0.0, 255.0) as u8;
                out.push(channel(60.0 + 150.0 * fx + wave));
                out.push(channel(40.0 + 170.0 * fy - wave * 0.5));
                out.push(channel(120.0 + 80.0 * (fx * fy * 9.0).cos() + wave * 0.3));
            }
        }
        out
    }

    /// An uncompressed 24-bit BMP (bottom-up rows, padded to 4 bytes).
    fn bmp(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
        let row = (width * 3).div_ceil(4) * 4;
        let size = 54 + row * height;
        let mut out = Vec::with_capacity(size as usize);
        out.extend_from_slice(b"BM");
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&54u32.to_le_bytes());
        out.extend_from_slice(&40u32.to_le_bytes());
        out.extend_from_slice(&width.to_le_bytes());
        out.extend_from_slice(&height.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&24u16.to_le_bytes());
        out.extend_from_slice(&[0; 24]);
        for y in (0..height as usize).rev() {
            let start = y * width as usize * 3;
            for px in rgb[start..start + width as usize * 3].chunks_exact(3) {
                out.extend_from_slice(&[px[2], px[1], px[0]]);
            }
            out.resize(out.len() + (row - width * 3) as usize, 0);
        }
        out
    }

    async fn convert(
        input: PathBuf,
        work: PathBuf,
        source: &str,
        target: &str,
        options: Value,
    ) -> Result<Vec<Output>, Error> {
        let ctx = ConvertContext::for_file(input, work, Arc::new(|_, _| {}));
        let request = ConvertRequest {
            id: ConversionId::new(),
            attempt: 1,
            source: Format::new(source)?,
            target: Format::new(target)?,
            options,
        };
        let converter = ImageConverter::new(ImageConfig::default());
        Ok(converter.convert(&request, &ctx).await?)
    }

    fn output_path(output: &Output) -> Result<&Path, Error> {
        match &output.body {
            OutputBody::File(p) => Ok(p),
            OutputBody::Bytes(_) => Err("expected a file output".into()),
        }
    }

    async fn generate(path: &Path, size: &str) -> Result<(), Error> {
        let (w, h) = size.split_once('x').ok_or("size is WxH")?;
        let (w, h): (u32, u32) = (w.parse()?, h.parse()?);
        let work = std::env::temp_dir().join(format!("image_thumbs-{}", std::process::id()));
        std::fs::create_dir_all(&work)?;
        let bmp_path = work.join("photo.bmp");
        std::fs::write(&bmp_path, bmp(w, h, &synthetic_photo(w, h)))?;
        let outputs = convert(
            bmp_path,
            work.clone(),
            "bmp",
            "jpeg",
            json!({"quality": 90}),
        )
        .await?;
        let first = outputs.first().ok_or("no output")?;
        std::fs::copy(output_path(first)?, path)?;
        std::fs::remove_dir_all(&work)?;
        println!(
            "wrote {} ({w}x{h}, {} bytes)",
            path.display(),
            std::fs::metadata(path)?.len()
        );
        Ok(())
    }

    async fn thumbs(
        input: &Path,
        out_dir: &Path,
        variants: &str,
        quality: u8,
    ) -> Result<(), Error> {
        std::fs::create_dir_all(out_dir)?;
        let started = Instant::now();
        let outputs = convert(
            input.to_path_buf(),
            out_dir.to_path_buf(),
            "jpeg",
            "jpeg",
            json!({"variants": variants, "quality": quality}),
        )
        .await?;
        let elapsed = started.elapsed();
        for output in &outputs {
            println!(
                "{} ({} bytes)",
                output_path(output)?.display(),
                std::fs::metadata(output_path(output)?)?.len()
            );
        }
        println!("converted in {:.1} ms", elapsed.as_secs_f64() * 1000.0);
        Ok(())
    }

    pub(crate) async fn main() -> Result<(), Error> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let arg = |i: usize| args.get(i).map(String::as_str);
        match (arg(0), arg(1), arg(2)) {
            (Some("generate"), Some(path), size) => {
                generate(Path::new(path), size.unwrap_or("6000x4000")).await
            }
            (Some("thumbs"), Some(input), Some(out_dir)) => {
                let quality = arg(4).map(str::parse).transpose()?.unwrap_or(85);
                thumbs(
                    Path::new(input),
                    Path::new(out_dir),
                    arg(3).unwrap_or("240p,720p"),
                    quality,
                )
                .await
            }
            _ => Err("usage: image_thumbs generate FILE [WxH] | thumbs FILE OUT_DIR [VARIANTS] [QUALITY]".into()),
        }
    }
}

#[cfg(feature = "image")]
#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run::main().await
}

#[cfg(not(feature = "image"))]
fn main() {
    eprintln!(
        "image_thumbs needs the `image` feature: cargo run --features image --example image_thumbs"
    );
}
