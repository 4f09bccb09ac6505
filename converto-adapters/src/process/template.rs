//! Argument templates: `--out={output}`, `{opt.units}`, `{{literal braces}}`.
//!
//! Templates are parsed when the routes are loaded, so a typo in a placeholder is a load error,
//! not a failed job. Rendering produces an `OsString` per argument: the program gets them as
//! argv, never through a shell, so spaces and quotes in values stay literal.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::Path;

/// What is wrong with a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// A `{` without its `}`.
    #[error("unclosed '{{' (write '{{{{' for a literal brace)")]
    Unclosed,
    /// A `}` without a `{`.
    #[error("unmatched '}}' (write '}}}}' for a literal brace)")]
    UnmatchedClose,
    /// A placeholder that does not exist.
    #[error(
        "unknown placeholder {{{name}}}: expected one of {{input}}, {{output}}, {{output_dir}}, {{scratch_dir}}, {{source}}, {{target}} or {{opt.NAME}}"
    )]
    UnknownPlaceholder {
        /// The text between the braces.
        name: String,
    },
    /// `{opt.NAME}` for an option the route does not declare.
    #[error("{{opt.{name}}} names an option the route does not declare in [route.options]")]
    UndeclaredOption {
        /// The option's name.
        name: String,
    },
    /// A placeholder that has no value where it is used (e.g. `{input}` in the output name).
    #[error("placeholder {{{name}}} cannot be used here")]
    NotAllowedHere {
        /// The placeholder.
        name: String,
    },
}

/// A value a template can refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Var {
    Input,
    Output,
    OutputDir,
    ScratchDir,
    Source,
    Target,
    Opt(String),
}

impl Var {
    fn name(&self) -> String {
        match self {
            Var::Input => "input".into(),
            Var::Output => "output".into(),
            Var::OutputDir => "output_dir".into(),
            Var::ScratchDir => "scratch_dir".into(),
            Var::Source => "source".into(),
            Var::Target => "target".into(),
            Var::Opt(n) => format!("opt.{n}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Var(Var),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    segments: Vec<Segment>,
}

/// The values a template is rendered with.
#[derive(Debug)]
pub(crate) struct Values<'a> {
    pub(crate) input: &'a Path,
    pub(crate) output: &'a Path,
    pub(crate) output_dir: &'a Path,
    pub(crate) scratch_dir: &'a Path,
    pub(crate) source: &'a str,
    pub(crate) target: &'a str,
    /// The rendered value of every option that is set.
    pub(crate) options: &'a BTreeMap<String, String>,
}

impl Template {
    /// Parses a template; `is_option` says which option names are declared.
    pub(crate) fn parse(
        text: &str,
        is_option: &dyn Fn(&str) -> bool,
    ) -> Result<Self, TemplateError> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(TemplateError::UnmatchedClose),
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(TemplateError::Unclosed);
                    }
                    let var = match name.trim() {
                        "input" => Var::Input,
                        "output" => Var::Output,
                        "output_dir" => Var::OutputDir,
                        "scratch_dir" => Var::ScratchDir,
                        "source" => Var::Source,
                        "target" => Var::Target,
                        other => match other.strip_prefix("opt.") {
                            Some(opt) if is_option(opt) => Var::Opt(opt.to_owned()),
                            Some(opt) => {
                                return Err(TemplateError::UndeclaredOption { name: opt.into() });
                            }
                            None => return Err(TemplateError::UnknownPlaceholder { name }),
                        },
                    };
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(Segment::Var(var));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Self { segments })
    }

    /// Fails if the template uses a placeholder outside `allowed`.
    pub(crate) fn only(self, allowed: &[Var]) -> Result<Self, TemplateError> {
        for s in &self.segments {
            if let Segment::Var(v) = s {
                let ok = match v {
                    Var::Opt(_) => allowed.iter().any(|a| matches!(a, Var::Opt(_))),
                    v => allowed.contains(v),
                };
                if !ok {
                    return Err(TemplateError::NotAllowedHere { name: v.name() });
                }
            }
        }
        Ok(self)
    }

    /// Renders the template; `None` when it refers to an option that is unset.
    pub(crate) fn render(&self, values: &Values<'_>) -> Option<OsString> {
        let mut out = OsString::new();
        for s in &self.segments {
            match s {
                Segment::Literal(l) => out.push(l),
                Segment::Var(v) => match v {
                    Var::Input => out.push(values.input),
                    Var::Output => out.push(values.output),
                    Var::OutputDir => out.push(values.output_dir),
                    Var::ScratchDir => out.push(values.scratch_dir),
                    Var::Source => out.push(values.source),
                    Var::Target => out.push(values.target),
                    Var::Opt(n) => out.push(OsStr::new(values.options.get(n)?)),
                },
            }
        }
        Some(out)
    }

    /// Renders a template that only uses `{source}` and `{target}`.
    pub(crate) fn render_formats(&self, source: &str, target: &str) -> String {
        let mut out = String::new();
        for s in &self.segments {
            match s {
                Segment::Literal(l) => out.push_str(l),
                Segment::Var(Var::Source) => out.push_str(source),
                Segment::Var(Var::Target) => out.push_str(target),
                // Excluded by `only` at load time.
                Segment::Var(_) => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Template, TemplateError> {
        Template::parse(t, &|n| n == "units")
    }

    #[test]
    fn parses_and_renders() -> Result<(), TemplateError> {
        let t = parse("--out={output} {{x}} {opt.units}")?;
        let none = BTreeMap::new();
        let some = BTreeMap::from([("units".to_owned(), "mm".to_owned())]);
        let mut v = Values {
            input: Path::new("/in"),
            output: Path::new("/o/out.step"),
            output_dir: Path::new("/o"),
            scratch_dir: Path::new("/s"),
            source: "stl",
            target: "step",
            options: &none,
        };
        assert_eq!(t.render(&v), None);
        v.options = &some;
        assert_eq!(
            t.render(&v),
            Some(OsString::from("--out=/o/out.step {x} mm"))
        );
        Ok(())
    }

    #[test]
    fn rejects_bad_templates() {
        assert_eq!(parse("{input"), Err(TemplateError::Unclosed));
        assert_eq!(parse("a}b"), Err(TemplateError::UnmatchedClose));
        assert!(matches!(
            parse("{inptu}"),
            Err(TemplateError::UnknownPlaceholder { .. })
        ));
        assert!(matches!(
            parse("{opt.color}"),
            Err(TemplateError::UndeclaredOption { .. })
        ));
        assert!(matches!(
            parse("{input}.x").and_then(|t| t.only(&[Var::Target])),
            Err(TemplateError::NotAllowedHere { .. })
        ));
    }
}
