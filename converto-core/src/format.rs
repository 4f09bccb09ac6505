//! File formats.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A file format: a short lowercase identifier such as `stl`, `obj`, `png` or `step`.
///
/// Valid formats are 1 to 16 characters of `a-z`, `0-9`, `-` and `_`, starting with a letter or
/// digit. Common aliases are folded (`jpg` is `jpeg`, `tif` is `tiff`, `stp` is `step`, `igs` is
/// `iges`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Format(Arc<str>);

/// A string that is not a valid format identifier.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "invalid format {input:?}: expected 1 to 16 characters of a-z, 0-9, '-' or '_' (for example \"stl\" or \"png\")"
)]
pub struct ParseFormatError {
    /// What was given (cut to 64 characters).
    pub input: String,
}

impl Format {
    /// Parses and normalises a format identifier (case-insensitive, aliases folded).
    pub fn new(s: &str) -> Result<Self, ParseFormatError> {
        let lower = s.trim().to_ascii_lowercase();
        let ok = !lower.is_empty()
            && lower.len() <= 16
            && lower
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && lower.as_bytes()[0].is_ascii_alphanumeric();
        if !ok {
            return Err(ParseFormatError {
                input: s.chars().take(64).collect(),
            });
        }
        let canonical = match lower.as_str() {
            "jpg" | "jpe" => "jpeg",
            "tif" => "tiff",
            "stp" => "step",
            "igs" => "iges",
            "htm" => "html",
            other => other,
        };
        Ok(Self(Arc::from(canonical)))
    }

    /// The identifier.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The format a file name's extension names, if it has a valid one.
    pub fn from_file_name(name: &str) -> Option<Self> {
        let ext = name.rsplit_once('.')?.1;
        Self::new(ext).ok()
    }

    /// Detects a format from a file's first bytes (magic numbers), where the content says it.
    ///
    /// Recognised: png, jpeg, gif, webp, bmp, tiff, ply, glb (`glTF`), step (`ISO-10303-21`), iges (its first
    /// 80-column record is the start section: `S` in column 73, sequence number 1), ascii stl
    /// (`solid` followed by `facet`), pdf.
    pub fn sniff(head: &[u8]) -> Option<Self> {
        let f = |s: &str| Some(Self(Arc::from(s)));
        if head.starts_with(b"\x89PNG\r\n\x1a\n") {
            return f("png");
        }
        if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
            return f("jpeg");
        }
        if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
            return f("gif");
        }
        if head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WEBP" {
            return f("webp");
        }
        if head.starts_with(b"BM") && head.len() >= 14 {
            return f("bmp");
        }
        if head.starts_with(b"II*\0") || head.starts_with(b"MM\0*") {
            return f("tiff");
        }
        if head.starts_with(b"ply\n") || head.starts_with(b"ply\r\n") {
            return f("ply");
        }
        if head.starts_with(b"ISO-10303-21") {
            return f("step");
        }
        if head.starts_with(b"glTF") {
            return f("glb");
        }
        if is_iges_start(head) {
            return f("iges");
        }
        if head.starts_with(b"%PDF-") {
            return f("pdf");
        }
        let text = String::from_utf8_lossy(&head[..head.len().min(1024)]);
        let trimmed = text.trim_start();
        if trimmed.starts_with("solid") && trimmed.contains("facet") {
            return f("stl");
        }
        None
    }

    /// Picks a format for an upload: the declared one, else the content's magic bytes, else the
    /// file name's extension.
    pub fn detect(name: Option<&str>, head: &[u8]) -> Option<Self> {
        Self::sniff(head).or_else(|| name.and_then(Self::from_file_name))
    }
}

/// An IGES file opens with its start section: 80-column records whose column 73 is `S` and
/// whose columns 74-80 are the sequence number, the first being 1 (`S0000001` or `S      1`).
fn is_iges_start(head: &[u8]) -> bool {
    let Some(record) = head.get(..80) else {
        return false;
    };
    let seq = &record[73..80];
    record[72] == b'S'
        && record[..72].iter().all(|b| b.is_ascii() && *b != b'\n')
        && seq.iter().all(|b| *b == b' ' || b.is_ascii_digit())
        && String::from_utf8_lossy(seq).trim().parse::<u32>() == Ok(1)
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Format({})", &self.0)
    }
}

impl FromStr for Format {
    type Err = ParseFormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for Format {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Format {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_validated_and_normalised() {
        assert_eq!(Format::new("JPG").expect("jpg").as_str(), "jpeg");
        assert_eq!(Format::new("stp").expect("stp").as_str(), "step");
        assert!(Format::new("").is_err());
        assert!(Format::new("../x").is_err());
        assert!(Format::new("a".repeat(17).as_str()).is_err());
        assert!(Format::new("-x").is_err());
    }

    #[test]
    fn detection_prefers_content_over_name() {
        let png = b"\x89PNG\r\n\x1a\n....";
        assert_eq!(
            Format::detect(Some("photo.jpg"), png)
                .expect("png")
                .as_str(),
            "png"
        );
        assert_eq!(
            Format::detect(Some("part.STL"), &[0u8; 84])
                .expect("stl")
                .as_str(),
            "stl"
        );
        assert_eq!(
            Format::detect(None, b"solid x\n facet normal 0 0 1")
                .expect("s")
                .as_str(),
            "stl"
        );
        assert!(Format::detect(Some("noext"), b"").is_none());
        assert_eq!(
            Format::detect(Some("model.bin"), b"glTF\x02\0\0\0")
                .expect("glb")
                .as_str(),
            "glb"
        );
        assert_eq!(
            Format::detect(Some("scene.GLB"), b"")
                .expect("glb")
                .as_str(),
            "glb"
        );
    }

    #[test]
    fn cad_formats_are_named_and_detected() {
        for (name, format) in [
            ("part.STEP", "step"),
            ("part.stp", "step"),
            ("part.iges", "iges"),
            ("part.IGS", "iges"),
        ] {
            assert_eq!(
                Format::from_file_name(name).map(|f| f.to_string()),
                Some(format.to_owned())
            );
        }
        let step = b"ISO-10303-21;\nHEADER;\nFILE_DESCRIPTION(('a part'),'2;1');";
        assert_eq!(
            Format::sniff(step).map(|f| f.to_string()),
            Some("step".into())
        );
        let iges = format!(
            "{:<72}S0000001\n{:<72}G0000001\n",
            "", ",,,13HFilename.iges,"
        );
        assert_eq!(
            Format::detect(Some("upload.bin"), iges.as_bytes()).map(|f| f.to_string()),
            Some("iges".into())
        );
        let iges_spaced = format!("{:<72}S      1\n", "a start line");
        assert_eq!(
            Format::sniff(iges_spaced.as_bytes()).map(|f| f.to_string()),
            Some("iges".into())
        );
        // Not the first record, or not a start section.
        assert!(Format::sniff(format!("{:<72}S0000002\n", "").as_bytes()).is_none());
        assert!(Format::sniff(format!("{:<72}G0000001\n", "").as_bytes()).is_none());
    }
}
