//! Parsing and validating the user's options.

use serde_json::{Map, Value};

use super::error::ImageFailure;

/// The largest width or height an option may ask for.
pub(crate) const MAX_SIDE: u32 = 16_384;
/// The most variants one conversion may produce.
pub(crate) const MAX_VARIANTS: usize = 16;

const KNOWN: &str = "width, height, fit, quality, variants, upscale";

/// How an image is fitted into a box given by both a width and a height.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Fit {
    /// Scale to fit inside the box, keeping the aspect ratio (one side may be shorter).
    #[default]
    Contain,
    /// Scale to cover the box, keeping the aspect ratio, and crop the centre to the box.
    Cover,
    /// Stretch to the box exactly.
    Fill,
}

/// One output: a name (the artifact's file stem) and the box it must fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Variant {
    /// `output`, `720p` or `1280x720`.
    pub(crate) name: String,
    /// The box width, if given.
    pub(crate) width: Option<u32>,
    /// The box height, if given.
    pub(crate) height: Option<u32>,
}

/// The validated options of one conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageOptions {
    /// At least one.
    pub(crate) variants: Vec<Variant>,
    pub(crate) fit: Fit,
    /// For JPEG and WebP; `None` means the configured default.
    pub(crate) quality: Option<u8>,
    /// Whether outputs may be larger than the source.
    pub(crate) upscale: bool,
}

impl ImageOptions {
    /// Parses `options` (a JSON object or null) for a conversion to `target`.
    pub(crate) fn parse(options: &Value, target: &str) -> Result<Self, ImageFailure> {
        let empty = Map::new();
        let map = match options {
            Value::Null => &empty,
            Value::Object(map) => map,
            other => {
                return Err(ImageFailure::OptionsNotObject {
                    got: json_kind(other),
                });
            }
        };
        let mut width = None;
        let mut height = None;
        let mut fit = Fit::default();
        let mut quality = None;
        let mut variants = None;
        let mut upscale = false;
        for (key, value) in map {
            match key.as_str() {
                "width" => width = Some(side("width", value)?),
                "height" => height = Some(side("height", value)?),
                "fit" => fit = parse_fit(value)?,
                "quality" => quality = Some(parse_quality(value)?),
                "variants" => variants = Some(parse_variants(value)?),
                "upscale" => {
                    upscale = value.as_bool().ok_or_else(|| ImageFailure::BadOption {
                        key: "upscale",
                        expected: "true or false",
                        got: describe(value),
                    })?
                }
                other => {
                    return Err(ImageFailure::UnknownOption {
                        key: other.chars().take(64).collect(),
                        known: KNOWN,
                    });
                }
            }
        }
        if quality.is_some() && !matches!(target, "jpeg" | "webp") {
            return Err(ImageFailure::QualityNotApplicable {
                target: target.to_owned(),
            });
        }
        let variants = match variants {
            Some(list) => {
                if width.is_some() || height.is_some() {
                    return Err(ImageFailure::Conflict {
                        first: "variants",
                        second: if width.is_some() { "width" } else { "height" },
                        why: "each variant names its own size (\"720p\" or \"1280x720\")",
                    });
                }
                list
            }
            None => vec![Variant {
                name: "output".into(),
                width,
                height,
            }],
        };
        Ok(Self {
            variants,
            fit,
            quality,
            upscale,
        })
    }
}

/// One size in `variants`, as [`parse_variant`] reads it after trimming: `Np` or `WxH`.
const VARIANT_PATTERN: &str = r"[0-9]{1,5}[pP]|[0-9]{1,5}[xX][0-9]{1,5}";

/// The JSON Schema (draft 2020-12) of what [`ImageOptions::parse`] accepts for `target`.
/// Exact for types, keys, ranges and shapes; the parser remains the authority for what a
/// schema cannot say (a variant side above 16384, repeats spelled differently, the total
/// pixel limit).
pub(crate) fn schema(target: &str) -> Value {
    let side = |what: &str| {
        serde_json::json!({
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_SIDE,
            "description": format!("{what} in pixels; alone, the other side follows the aspect ratio"),
        })
    };
    let item = format!(r"^\s*(?:{VARIANT_PATTERN})\s*$");
    let list = format!(
        r"^\s*(?:{VARIANT_PATTERN})\s*(?:,\s*(?:{VARIANT_PATTERN})\s*){{0,{}}}$",
        MAX_VARIANTS - 1
    );
    let mut properties = serde_json::json!({
        "variants": {
            "description": "Several outputs, one per size: \"720p\" is 720 pixels high, \"1280x720\" fits a box",
            "examples": ["240p,720p"],
            "oneOf": [
                {"type": "string", "pattern": list},
                {
                    "type": "array",
                    "items": {"type": "string", "pattern": item},
                    "minItems": 1,
                    "maxItems": MAX_VARIANTS,
                    "uniqueItems": true,
                },
            ],
        },
        "width": side("Width"),
        "height": side("Height"),
        "fit": {
            "type": "string",
            "enum": ["contain", "cover", "fill"],
            "default": "contain",
            "description": "How a box given by width and height is filled",
        },
        "upscale": {
            "type": "boolean",
            "default": false,
            "description": "Allow outputs larger than the source",
        },
    });
    if matches!(target, "jpeg" | "webp")
        && let Some(map) = properties.as_object_mut()
    {
        map.insert(
            "quality".into(),
            serde_json::json!({
                "type": "integer",
                "minimum": 1,
                "maximum": 100,
                "description": "Encoder quality (1 to 100)",
            }),
        );
    }
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": properties,
        "additionalProperties": false,
        "dependentSchemas": {
            "variants": {"not": {"anyOf": [{"required": ["width"]}, {"required": ["height"]}]}},
        },
    })
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The value as the user wrote it, cut short, for error messages.
fn describe(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 64 {
        let cut: String = text.chars().take(61).collect();
        format!("{cut}...")
    } else {
        text
    }
}

fn side(key: &'static str, value: &Value) -> Result<u32, ImageFailure> {
    value
        .as_u64()
        .filter(|n| (1..=u64::from(MAX_SIDE)).contains(n))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| ImageFailure::BadOption {
            key,
            expected: "an integer from 1 to 16384",
            got: describe(value),
        })
}

fn parse_fit(value: &Value) -> Result<Fit, ImageFailure> {
    match value.as_str() {
        Some("contain") => Ok(Fit::Contain),
        Some("cover") => Ok(Fit::Cover),
        Some("fill") => Ok(Fit::Fill),
        _ => Err(ImageFailure::BadOption {
            key: "fit",
            expected: "\"contain\", \"cover\" or \"fill\"",
            got: describe(value),
        }),
    }
}

fn parse_quality(value: &Value) -> Result<u8, ImageFailure> {
    value
        .as_u64()
        .filter(|n| (1..=100).contains(n))
        .and_then(|n| u8::try_from(n).ok())
        .ok_or_else(|| ImageFailure::BadOption {
            key: "quality",
            expected: "an integer from 1 to 100",
            got: describe(value),
        })
}

const VARIANTS_EXPECTED: &str = "a list of sizes such as \"240p,720p\" or [\"720p\", \"1280x720\"] (Np = N pixels high; WxH = a box; sides 1 to 16384; at most 16, no repeats)";

fn parse_variants(value: &Value) -> Result<Vec<Variant>, ImageFailure> {
    let bad = || ImageFailure::BadOption {
        key: "variants",
        expected: VARIANTS_EXPECTED,
        got: describe(value),
    };
    let items: Vec<&str> = match value {
        Value::String(s) => s.split(',').map(str::trim).collect(),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::trim).ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        _ => return Err(bad()),
    };
    if items.is_empty() || items.len() > MAX_VARIANTS {
        return Err(bad());
    }
    let mut out: Vec<Variant> = Vec::with_capacity(items.len());
    for item in items {
        let variant = parse_variant(item).ok_or_else(|| ImageFailure::BadOption {
            key: "variants",
            expected: VARIANTS_EXPECTED,
            got: describe(&Value::String(item.to_owned())),
        })?;
        if out.iter().any(|v| v.name == variant.name) {
            return Err(bad());
        }
        out.push(variant);
    }
    Ok(out)
}

/// `720p` (720 high) or `1280x720`; the name is rebuilt from the numbers, so it is always a
/// safe file stem.
fn parse_variant(item: &str) -> Option<Variant> {
    let lower = item.to_ascii_lowercase();
    let number = |s: &str| -> Option<u32> {
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u32>().ok().filter(|n| (1..=MAX_SIDE).contains(n))
    };
    if let Some(h) = lower.strip_suffix('p') {
        let h = number(h)?;
        return Some(Variant {
            name: format!("{h}p"),
            width: None,
            height: Some(h),
        });
    }
    let (w, h) = lower.split_once('x')?;
    let (w, h) = (number(w)?, number(h)?);
    Some(Variant {
        name: format!("{w}x{h}"),
        width: Some(w),
        height: Some(h),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn defaults_give_one_output_at_source_size() {
        let o = ImageOptions::parse(&Value::Null, "jpeg").expect("null is fine");
        assert_eq!(o.variants.len(), 1);
        assert_eq!(o.variants[0].name, "output");
        assert_eq!(o.fit, Fit::Contain);
        assert!(!o.upscale);
    }

    #[test]
    fn variants_parse_from_a_string_or_an_array() {
        let o = ImageOptions::parse(&json!({"variants": "240p, 720P,1280x720"}), "jpeg")
            .expect("valid");
        let names: Vec<_> = o.variants.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["240p", "720p", "1280x720"]);
        assert_eq!(o.variants[2].width, Some(1280));
        let o = ImageOptions::parse(&json!({"variants": ["240p"]}), "webp").expect("valid");
        assert_eq!(o.variants[0].height, Some(240));
    }

    #[test]
    fn bad_values_are_rejected_with_the_key() {
        for bad in [
            json!({"width": 0}),
            json!({"width": 16385}),
            json!({"height": -1}),
            json!({"height": "720"}),
            json!({"fit": "stretch"}),
            json!({"quality": 0}),
            json!({"quality": 101}),
            json!({"variants": ""}),
            json!({"variants": "720p,720p"}),
            json!({"variants": "720"}),
            json!({"variants": "../x"}),
            json!({"variants": [1]}),
            json!({"variants": "720p", "width": 10}),
            json!({"colour": "red"}),
            json!({"upscale": 1}),
            json!([1, 2]),
        ] {
            assert!(
                ImageOptions::parse(&bad, "jpeg").is_err(),
                "{bad} should be rejected"
            );
        }
        assert!(ImageOptions::parse(&json!({"quality": 80}), "png").is_err());
    }
}
