//! Checking a [`ProcessConfig`] once, at load, into what a job needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use converto_core::{ConvertError, Route};
use regex::Regex;
use regex::bytes::Regex as BytesRegex;

use super::config::{
    ArgTemplate, OptionSpec, OptionSpecProblem, OptionType, OptionValueError, ProcessConfig,
    ProcessConfigError, ProgressStream,
};
use super::resolve::{PROGRAM_DIRS_VAR, resolve_program};
use super::template::{Template, Var};

/// The default SIGTERM-to-SIGKILL grace.
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);
/// The default longest string option.
pub(crate) const DEFAULT_MAX_LEN: usize = 256;

/// A checked configuration.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) name: String,
    pub(crate) kill_grace: Duration,
    pub(crate) families: Vec<CompiledRoute>,
    /// Each route and the family serving it, in configuration order.
    pub(crate) routes: Vec<(Route, usize)>,
}

/// One `[[route]]`, checked.
pub(crate) struct CompiledRoute {
    pub(crate) program: PathBuf,
    /// Argument groups: a group is passed whole or not at all.
    pub(crate) args: Vec<Vec<Template>>,
    pub(crate) output: Template,
    pub(crate) env: Vec<(String, Template)>,
    pub(crate) pass_env: Vec<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry_on_timeout: bool,
    pub(crate) progress: Option<ProgressMatcher>,
    pub(crate) options: BTreeMap<String, CompiledOption>,
    pub(crate) temporary_exit_codes: BTreeSet<i32>,
}

/// Written by hand: environment values (licence keys, tokens) never reach a log.
impl std::fmt::Debug for CompiledRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRoute")
            .field("program", &self.program)
            .field("args", &self.args.len())
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("pass_env", &self.pass_env)
            .field("timeout", &self.timeout)
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Reads a percentage out of an output line.
#[derive(Debug)]
pub(crate) struct ProgressMatcher {
    regex: BytesRegex,
    group: usize,
    pub(crate) stream: ProgressStream,
    pub(crate) stage: Option<String>,
}

impl ProgressMatcher {
    /// The percentage in `line`, if it matches.
    pub(crate) fn percent(&self, line: &[u8]) -> Option<u8> {
        let caps = self.regex.captures(line)?;
        let text = std::str::from_utf8(caps.get(self.group)?.as_bytes()).ok()?;
        let value: f64 = text.trim().parse().ok()?;
        // Truncated, not rounded: 99.6% is not done yet.
        value.is_finite().then(|| value.clamp(0.0, 100.0) as u8)
    }
}

/// A declared option, checked.
#[derive(Debug)]
pub(crate) struct CompiledOption {
    spec: OptionSpec,
    pattern: Option<Regex>,
    pub(crate) default: Option<String>,
}

impl CompiledOption {
    /// The declaration as written.
    pub(crate) fn spec(&self) -> &OptionSpec {
        &self.spec
    }

    fn new(name: &str, spec: OptionSpec) -> Result<Self, OptionSpecProblem> {
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(OptionSpecProblem::BadName);
        }
        let kind = spec.kind;
        let not_for =
            |setting: &'static str| OptionSpecProblem::SettingNotApplicable { setting, kind };
        if kind != OptionType::Enum && !spec.values.is_empty() {
            return Err(not_for("values"));
        }
        if kind == OptionType::Enum && spec.values.is_empty() {
            return Err(OptionSpecProblem::EnumWithoutValues);
        }
        if kind != OptionType::String && spec.pattern.is_some() {
            return Err(not_for("pattern"));
        }
        if kind != OptionType::String && spec.max_len.is_some() {
            return Err(not_for("max_len"));
        }
        let numeric = matches!(kind, OptionType::Integer | OptionType::Number);
        if !numeric && spec.min.is_some() {
            return Err(not_for("min"));
        }
        if !numeric && spec.max.is_some() {
            return Err(not_for("max"));
        }
        if let (Some(min), Some(max)) = (spec.min, spec.max)
            && min > max
        {
            return Err(OptionSpecProblem::EmptyRange);
        }
        let pattern = spec
            .pattern
            .as_deref()
            .map(|p| Regex::new(&format!("^(?:{p})$")))
            .transpose()
            .map_err(|e| OptionSpecProblem::Pattern(Box::new(e)))?;
        let mut option = Self {
            spec,
            pattern,
            default: None,
        };
        if let Some(d) = option.spec.default.clone() {
            let rendered = option
                .validate(&serde_json::Value::from(d))
                .map_err(OptionSpecProblem::Default)?;
            option.default = Some(rendered);
        }
        Ok(option)
    }

    /// Checks a user's value and renders it as an argument.
    pub(crate) fn validate(&self, value: &serde_json::Value) -> Result<String, OptionValueError> {
        use serde_json::Value;
        let spec = &self.spec;
        let wrong = || OptionValueError::WrongType {
            expected: spec.kind,
        };
        let in_range = |v: f64| -> Result<(), OptionValueError> {
            let min = spec.min.unwrap_or(f64::NEG_INFINITY);
            let max = spec.max.unwrap_or(f64::INFINITY);
            if v < min || v > max {
                return Err(OptionValueError::OutOfRange { min, max });
            }
            Ok(())
        };
        match spec.kind {
            OptionType::String => {
                let Value::String(s) = value else {
                    return Err(wrong());
                };
                let max_len = spec.max_len.unwrap_or(DEFAULT_MAX_LEN);
                if s.len() > max_len {
                    return Err(OptionValueError::TooLong { max_len });
                }
                if s.chars().any(char::is_control) {
                    return Err(OptionValueError::Unsafe);
                }
                match &self.pattern {
                    Some(re) if !re.is_match(s) => Err(OptionValueError::NoMatch {
                        pattern: spec.pattern.clone().unwrap_or_default(),
                    }),
                    Some(_) => Ok(s.clone()),
                    None if s.starts_with('-') => Err(OptionValueError::Unsafe),
                    None => Ok(s.clone()),
                }
            }
            OptionType::Integer => {
                let n = match value {
                    Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                        (Some(i), _) => i,
                        (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => f as i64,
                        _ => return Err(wrong()),
                    },
                    Value::String(s) => s.parse::<i64>().map_err(|_| wrong())?,
                    _ => return Err(wrong()),
                };
                in_range(n as f64)?;
                Ok(n.to_string())
            }
            OptionType::Number => {
                let n = match value {
                    Value::Number(n) => n.as_f64().ok_or_else(wrong)?,
                    Value::String(s) => s.parse::<f64>().map_err(|_| wrong())?,
                    _ => return Err(wrong()),
                };
                if !n.is_finite() {
                    return Err(wrong());
                }
                in_range(n)?;
                Ok(n.to_string())
            }
            OptionType::Bool => match value {
                Value::Bool(b) => Ok(b.to_string()),
                Value::String(s) if s == "true" || s == "false" => Ok(s.clone()),
                _ => Err(wrong()),
            },
            OptionType::Enum => {
                let s = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(wrong()),
                };
                if spec.values.contains(&s) {
                    Ok(s)
                } else {
                    Err(OptionValueError::NotAllowed {
                        allowed: spec.values.clone(),
                    })
                }
            }
        }
    }
}

impl CompiledRoute {
    /// The rendered value of every option that is set: the request's value, else the default.
    pub(crate) fn resolve_options(
        &self,
        route: &Route,
        options: &serde_json::Value,
    ) -> Result<BTreeMap<String, String>, ConvertError> {
        let given = match options {
            serde_json::Value::Null => None,
            serde_json::Value::Object(map) => Some(map),
            _ => {
                return Err(ConvertError::InvalidOptions(
                    "options must be a JSON object".into(),
                ));
            }
        };
        let mut out = BTreeMap::new();
        if let Some(map) = given {
            for (name, value) in map {
                let Some(option) = self.options.get(name) else {
                    let allowed = if self.options.is_empty() {
                        "this route takes no options".to_owned()
                    } else {
                        let names: Vec<&str> = self.options.keys().map(String::as_str).collect();
                        format!("allowed: {}", names.join(", "))
                    };
                    return Err(ConvertError::InvalidOptions(format!(
                        "unknown option {name:?} for {} -> {} ({allowed})",
                        route.source, route.target
                    )));
                };
                if value.is_null() {
                    continue;
                }
                let rendered = option
                    .validate(value)
                    .map_err(|e| ConvertError::InvalidOptions(format!("option {name:?}: {e}")))?;
                out.insert(name.clone(), rendered);
            }
        }
        for (name, option) in &self.options {
            if let (false, Some(d)) = (out.contains_key(name), &option.default) {
                out.insert(name.clone(), d.clone());
            }
        }
        Ok(out)
    }
}

fn valid_output_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.chars().any(char::is_control)
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && !name.contains('\0')
}

/// Checks everything that can be checked before a job runs.
pub(crate) fn compile(config: ProcessConfig) -> Result<Compiled, ProcessConfigError> {
    let name = config.name.unwrap_or_else(|| "process".into());
    if name.trim().is_empty() {
        return Err(ProcessConfigError::EmptyName);
    }
    if config.routes.is_empty() {
        return Err(ProcessConfigError::NoRoutes);
    }
    let base_dir = config.base_dir.unwrap_or_else(|| PathBuf::from("."));
    let base_dir = std::path::absolute(&base_dir).unwrap_or(base_dir);
    let env_dirs = std::env::var_os(PROGRAM_DIRS_VAR);
    let path_var = std::env::var_os("PATH");

    let mut families = Vec::new();
    let mut routes: Vec<(Route, usize)> = Vec::new();
    let mut seen = BTreeSet::new();
    for (index, spec) in config.routes.into_iter().enumerate() {
        let n = index + 1;
        if spec.sources.is_empty() || spec.targets.is_empty() {
            return Err(ProcessConfigError::MissingFormats { route: n });
        }
        let program = resolve_program(
            n,
            &spec.program,
            &base_dir,
            &config.program_dirs,
            env_dirs.clone(),
            path_var.clone(),
        )?;

        let mut options = BTreeMap::new();
        for (opt_name, opt_spec) in spec.options {
            let compiled = CompiledOption::new(&opt_name, opt_spec).map_err(|problem| {
                ProcessConfigError::InvalidOption {
                    route: n,
                    option: opt_name.clone(),
                    problem,
                }
            })?;
            options.insert(opt_name, compiled);
        }
        let is_option = |o: &str| options.contains_key(o);
        let template = |what: String, text: &str| {
            Template::parse(text, &is_option).map_err(|source| ProcessConfigError::Template {
                route: n,
                what,
                template: text.to_owned(),
                source,
            })
        };

        let mut args = Vec::new();
        for arg in &spec.args {
            let group = match arg {
                ArgTemplate::Single(t) => vec![template("argument".into(), t)?],
                ArgTemplate::Group(ts) => ts
                    .iter()
                    .map(|t| template("argument".into(), t))
                    .collect::<Result<Vec<_>, _>>()?,
            };
            args.push(group);
        }
        let mut env = Vec::new();
        for (var, value) in &spec.env {
            if !valid_env_name(var) {
                return Err(ProcessConfigError::InvalidEnvName {
                    route: n,
                    name: var.clone(),
                });
            }
            env.push((var.clone(), template(format!("env {var}"), value)?));
        }
        for var in &spec.pass_env {
            if !valid_env_name(var) {
                return Err(ProcessConfigError::InvalidEnvName {
                    route: n,
                    name: var.clone(),
                });
            }
        }
        let output_text = spec.output.as_deref().unwrap_or("output.{target}");
        let output = template("output".into(), output_text)?
            .only(&[Var::Source, Var::Target])
            .map_err(|source| ProcessConfigError::Template {
                route: n,
                what: "output".into(),
                template: output_text.to_owned(),
                source,
            })?;

        let progress = match spec.progress {
            None => None,
            Some(p) => {
                let regex = BytesRegex::new(&p.pattern).map_err(|e| {
                    ProcessConfigError::InvalidProgressPattern {
                        route: n,
                        pattern: p.pattern.clone(),
                        source: Box::new(e),
                    }
                })?;
                let named = regex.capture_names().position(|c| c == Some("percent"));
                let group = match named {
                    Some(i) => i,
                    None if regex.captures_len() > 1 => 1,
                    None => {
                        return Err(ProcessConfigError::ProgressPatternWithoutGroup {
                            route: n,
                            pattern: p.pattern,
                        });
                    }
                };
                Some(ProgressMatcher {
                    regex,
                    group,
                    stream: p.stream,
                    stage: p.stage,
                })
            }
        };

        for source in &spec.sources {
            for target in &spec.targets {
                let route = Route::new(source.clone(), target.clone());
                if !seen.insert(route.clone()) {
                    return Err(ProcessConfigError::DuplicateRoute {
                        route: n,
                        source_format: source.clone(),
                        target_format: target.clone(),
                    });
                }
                let out_name = output.render_formats(source.as_str(), target.as_str());
                if !valid_output_name(&out_name) {
                    return Err(ProcessConfigError::InvalidOutputName {
                        route: n,
                        name: out_name,
                    });
                }
                routes.push((route, families.len()));
            }
        }
        families.push(CompiledRoute {
            program,
            args,
            output,
            env,
            pass_env: spec.pass_env,
            timeout: spec.timeout,
            retry_on_timeout: spec.retry_on_timeout,
            progress,
            options,
            temporary_exit_codes: spec.temporary_exit_codes.into_iter().collect(),
        });
    }
    Ok(Compiled {
        name,
        kill_grace: config.kill_grace.unwrap_or(DEFAULT_KILL_GRACE),
        families,
        routes,
    })
}
