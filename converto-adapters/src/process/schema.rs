//! A route family's declared options as JSON Schema (draft 2020-12), for `GET /v1/formats`.
//!
//! The schema describes each option's canonical JSON type; [`CompiledOption::validate`] stays
//! the authority and also takes the text forms (`"42"`, `"true"`) that form posts produce.

use serde_json::{Map, Value, json};

use super::compile::{CompiledOption, CompiledRoute, DEFAULT_MAX_LEN};
use super::config::OptionType;

impl CompiledRoute {
    /// The options object this family accepts: declared options only, each typed and bounded.
    pub(crate) fn options_schema(&self) -> Value {
        let properties: Map<String, Value> = self
            .options
            .iter()
            .map(|(name, option)| (name.clone(), option_schema(option)))
            .collect();
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": properties,
            "additionalProperties": false,
        })
    }
}

fn option_schema(option: &CompiledOption) -> Value {
    let spec = option.spec();
    let mut schema = Map::new();
    let kind = match spec.kind {
        OptionType::String => {
            schema.insert(
                "maxLength".into(),
                spec.max_len.unwrap_or(DEFAULT_MAX_LEN).into(),
            );
            // The checker matches the whole value; without a pattern a value may not look
            // like a flag.
            let pattern = match &spec.pattern {
                Some(p) => format!("^(?:{p})$"),
                None => "^(?:$|[^-])".to_owned(),
            };
            schema.insert("pattern".into(), pattern.into());
            "string"
        }
        OptionType::Integer => "integer",
        OptionType::Number => "number",
        OptionType::Bool => "boolean",
        OptionType::Enum => {
            schema.insert("enum".into(), spec.values.clone().into());
            "string"
        }
    };
    schema.insert("type".into(), kind.into());
    if matches!(spec.kind, OptionType::Integer | OptionType::Number) {
        let bound = |v: f64| match spec.kind {
            OptionType::Integer if v.fract() == 0.0 && v.abs() < 9.0e15 => json!(v as i64),
            _ => json!(v),
        };
        if let Some(min) = spec.min {
            schema.insert("minimum".into(), bound(min));
        }
        if let Some(max) = spec.max {
            schema.insert("maximum".into(), bound(max));
        }
    }
    if let Some(default) = spec.default.clone() {
        schema.insert("default".into(), default.into());
    }
    Value::Object(schema)
}
