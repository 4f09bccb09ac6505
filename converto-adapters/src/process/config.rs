//! What a [`ProcessConverter`](super::ProcessConverter) runs: routes, programs, argument
//! templates, options, environment, limits. Deserialised from TOML or built in code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use converto_core::Format;
use serde::{Deserialize, Deserializer};

use super::template::TemplateError;

/// Why a route configuration cannot be loaded. Reported when the converter is built, never at
/// the first job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessConfigError {
    /// The route file cannot be read.
    #[error("cannot read route file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed, or a field has the wrong type or an unknown name.
    #[error("invalid route configuration{}: {source}", in_file(.path.as_deref()))]
    Parse {
        /// The file, when loaded from one.
        path: Option<PathBuf>,
        /// The parser's error (with line and column).
        source: Box<toml::de::Error>,
    },
    /// The converter name is empty.
    #[error("the converter name must not be empty")]
    EmptyName,
    /// No route is configured.
    #[error("no routes configured (add at least one [[route]])")]
    NoRoutes,
    /// A route lists no source or no target format.
    #[error("route #{route}: needs at least one source and one target format")]
    MissingFormats {
        /// The route's position (1-based).
        route: usize,
    },
    /// Two routes serve the same conversion.
    #[error(
        "route #{route}: {source_format} -> {target_format} is already served by an earlier route"
    )]
    DuplicateRoute {
        /// The route's position (1-based).
        route: usize,
        /// From.
        source_format: Format,
        /// To.
        target_format: Format,
    },
    /// The program is empty.
    #[error("route #{route}: the program is empty")]
    EmptyProgram {
        /// The route's position (1-based).
        route: usize,
    },
    /// The program was not found.
    #[error("route #{route}: program {program:?} not found (looked at: {})", list(.searched))]
    ProgramNotFound {
        /// The route's position (1-based).
        route: usize,
        /// The program as configured.
        program: PathBuf,
        /// Every place that was tried.
        searched: Vec<PathBuf>,
    },
    /// The program exists but is not an executable file.
    #[error("route #{route}: {path} is not an executable file")]
    ProgramNotExecutable {
        /// The route's position (1-based).
        route: usize,
        /// The file found.
        path: PathBuf,
    },
    /// An argument, environment value or output name is not a valid template.
    #[error("route #{route}: {what} {template:?}: {source}")]
    Template {
        /// The route's position (1-based).
        route: usize,
        /// Which setting (`argument`, `env FOO`, `output`).
        what: String,
        /// The template text.
        template: String,
        /// What is wrong.
        source: TemplateError,
    },
    /// The output name is not a plain file name.
    #[error(
        "route #{route}: output name {name:?} must be a plain file name (no '/', not '.' or '..')"
    )]
    InvalidOutputName {
        /// The route's position (1-based).
        route: usize,
        /// The name (after format substitution).
        name: String,
    },
    /// An environment variable name is invalid.
    #[error("route #{route}: invalid environment variable name {name:?}")]
    InvalidEnvName {
        /// The route's position (1-based).
        route: usize,
        /// The name.
        name: String,
    },
    /// The progress pattern is not a valid regular expression.
    #[error("route #{route}: invalid progress pattern {pattern:?}: {source}")]
    InvalidProgressPattern {
        /// The route's position (1-based).
        route: usize,
        /// The pattern.
        pattern: String,
        /// The regex error.
        source: Box<regex::Error>,
    },
    /// The progress pattern has no capture group for the percentage.
    #[error(
        "route #{route}: progress pattern {pattern:?} needs a capture group for the percentage, e.g. '(\\d+)%'"
    )]
    ProgressPatternWithoutGroup {
        /// The route's position (1-based).
        route: usize,
        /// The pattern.
        pattern: String,
    },
    /// An option declaration is inconsistent.
    #[error("route #{route}: option {option:?}: {problem}")]
    InvalidOption {
        /// The route's position (1-based).
        route: usize,
        /// The option.
        option: String,
        /// What is wrong.
        problem: OptionSpecProblem,
    },
}

/// What is wrong with an option declaration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OptionSpecProblem {
    /// The name is not `[A-Za-z0-9_-]+`.
    #[error("option names are 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'")]
    BadName,
    /// `type = "enum"` without `values`.
    #[error("type \"enum\" needs a non-empty `values` list")]
    EnumWithoutValues,
    /// A setting that does not apply to the option's type.
    #[error("`{setting}` does not apply to type \"{kind}\"")]
    SettingNotApplicable {
        /// The setting.
        setting: &'static str,
        /// The option's type.
        kind: OptionType,
    },
    /// `min` is greater than `max`.
    #[error("min is greater than max")]
    EmptyRange,
    /// The pattern is not a valid regular expression.
    #[error("invalid pattern: {0}")]
    Pattern(Box<regex::Error>),
    /// The default value does not pass the option's own validation.
    #[error("invalid default: {0}")]
    Default(OptionValueError),
}

/// Why an option value is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionValueError {
    /// The value has the wrong JSON type.
    #[error("expected {expected}")]
    WrongType {
        /// What was expected.
        expected: OptionType,
    },
    /// Outside `min..=max`.
    #[error("must be between {min} and {max}")]
    OutOfRange {
        /// Lower bound (or -inf).
        min: f64,
        /// Upper bound (or inf).
        max: f64,
    },
    /// Not one of the allowed values.
    #[error("must be one of {}", .allowed.join(", "))]
    NotAllowed {
        /// The allowed values.
        allowed: Vec<String>,
    },
    /// Does not match the option's pattern.
    #[error("does not match the pattern {pattern:?}")]
    NoMatch {
        /// The pattern.
        pattern: String,
    },
    /// Too long.
    #[error("longer than {max_len} bytes")]
    TooLong {
        /// The limit.
        max_len: usize,
    },
    /// Contains control characters, or (without a pattern) starts with '-', which a program
    /// would read as a flag.
    #[error("must not contain control characters or start with '-'")]
    Unsafe,
}

fn in_file(path: Option<&Path>) -> String {
    path.map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

fn list(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nowhere: no search directories".into();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A converter's configuration: a name and its routes.
///
/// ```toml
/// name = "cad"
/// program_dirs = ["../target/release"]   # relative to the route file
///
/// [[route]]
/// source = ["stl", "obj"]
/// target = "step"
/// program = "my-cad-tool"
/// args = ["--in", "{input}", "--out", "{output}", ["--units", "{opt.units}"]]
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ProcessConfig {
    /// The converter's name (default `process`).
    #[serde(default)]
    pub name: Option<String>,
    /// Directories searched for bare program names before `PATH`. Relative entries are resolved
    /// against [`ProcessConfig::base_dir`]. Directories listed in the environment variable
    /// `CONVERTO_PROGRAM_DIRS` (`:`-separated) are searched before these.
    #[serde(default)]
    pub program_dirs: Vec<PathBuf>,
    /// How long a program gets between SIGTERM and SIGKILL when it is cancelled or times out
    /// (TOML: `kill_grace_secs`; default 2 seconds).
    #[serde(default, rename = "kill_grace_secs", deserialize_with = "opt_secs")]
    pub kill_grace: Option<Duration>,
    /// The directory relative paths (programs, `program_dirs`) are resolved against: the route
    /// file's directory when loaded from a file, else the current directory. Not read from TOML.
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
    /// The routes (TOML: `[[route]]`).
    #[serde(default, rename = "route")]
    pub routes: Vec<ProcessRoute>,
}

impl ProcessConfig {
    /// An empty configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses TOML; relative paths resolve against the current directory.
    pub fn from_toml_str(toml_text: &str) -> Result<Self, ProcessConfigError> {
        toml::from_str(toml_text).map_err(|e| ProcessConfigError::Parse {
            path: None,
            source: Box::new(e),
        })
    }

    /// Reads a TOML route file; relative paths resolve against the file's directory.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, ProcessConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ProcessConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Self = toml::from_str(&text).map_err(|e| ProcessConfigError::Parse {
            path: Some(path.to_owned()),
            source: Box::new(e),
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        config.base_dir = Some(dir);
        Ok(config)
    }

    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Adds a directory to search for bare program names.
    pub fn program_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.program_dirs.push(dir.into());
        self
    }

    /// Sets the base directory for relative paths.
    pub fn base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base_dir = Some(dir.into());
        self
    }

    /// Sets the SIGTERM-to-SIGKILL grace.
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = Some(grace);
        self
    }

    /// Adds a route.
    pub fn route(mut self, route: ProcessRoute) -> Self {
        self.routes.push(route);
        self
    }
}

/// One argument: a template, or a group of templates that is passed only when every option it
/// refers to is set (TOML: a string, or an array of strings).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ArgTemplate {
    /// One argument, dropped when it refers to an unset option.
    Single(String),
    /// Several arguments, all dropped when any of them refers to an unset option
    /// (e.g. `["--units", "{opt.units}"]`).
    Group(Vec<String>),
}

impl From<&str> for ArgTemplate {
    fn from(s: &str) -> Self {
        ArgTemplate::Single(s.to_owned())
    }
}

impl From<String> for ArgTemplate {
    fn from(s: String) -> Self {
        ArgTemplate::Single(s)
    }
}

/// One route, or a family of routes: every listed source to every listed target, served by one
/// program.
///
/// Argument, environment and output templates may use `{input}`, `{output}`, `{output_dir}`,
/// `{scratch_dir}`, `{source}`, `{target}` and `{opt.NAME}` for declared options (the output
/// name only `{source}` and `{target}`); `{{` and `}}` are literal braces.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ProcessRoute {
    /// Source formats (TOML: `source`, a string or a list).
    #[serde(rename = "source", deserialize_with = "one_or_many")]
    pub sources: Vec<Format>,
    /// Target formats (TOML: `target`, a string or a list).
    #[serde(rename = "target", deserialize_with = "one_or_many")]
    pub targets: Vec<Format>,
    /// The program: an absolute path, a path relative to the base directory, or a bare name
    /// looked up in the program directories and `PATH` when the routes are loaded.
    pub program: PathBuf,
    /// The argument templates.
    #[serde(default)]
    pub args: Vec<ArgTemplate>,
    /// The output file's name, written by the program into `{output_dir}` (default
    /// `output.{target}`).
    #[serde(default)]
    pub output: Option<String>,
    /// Environment variables for the program (values are templates). The program's environment
    /// is otherwise empty.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Variables passed through from converto's own environment, e.g. `["PATH"]`.
    #[serde(default)]
    pub pass_env: Vec<String>,
    /// A time limit for one run, on top of the engine's (TOML: `timeout_secs`).
    #[serde(default, rename = "timeout_secs", deserialize_with = "opt_secs")]
    pub timeout: Option<Duration>,
    /// Whether hitting `timeout` is a temporary failure (default: permanent, like the engine's
    /// own timeout).
    #[serde(default)]
    pub retry_on_timeout: bool,
    /// How to read progress from the program's output.
    #[serde(default)]
    pub progress: Option<ProgressPattern>,
    /// The options users may set, by name. Anything else in a request's options is refused.
    #[serde(default)]
    pub options: BTreeMap<String, OptionSpec>,
    /// Exit codes that mean "try again later" (e.g. 75, `EX_TEMPFAIL`). Every other non-zero
    /// code is a permanent failure.
    #[serde(default)]
    pub temporary_exit_codes: Vec<i32>,
}

/// Written by hand: environment values (licence keys, tokens) never reach a log.
impl std::fmt::Debug for ProcessRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessRoute")
            .field("sources", &self.sources)
            .field("targets", &self.targets)
            .field("program", &self.program)
            .field("args", &self.args)
            .field("output", &self.output)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("pass_env", &self.pass_env)
            .field("timeout", &self.timeout)
            .field("retry_on_timeout", &self.retry_on_timeout)
            .field("progress", &self.progress)
            .field("options", &self.options)
            .field("temporary_exit_codes", &self.temporary_exit_codes)
            .finish()
    }
}

impl ProcessRoute {
    /// A route `source -> target` served by `program`.
    pub fn new(source: Format, target: Format, program: impl Into<PathBuf>) -> Self {
        Self {
            sources: vec![source],
            targets: vec![target],
            program: program.into(),
            args: Vec::new(),
            output: None,
            env: BTreeMap::new(),
            pass_env: Vec::new(),
            timeout: None,
            retry_on_timeout: false,
            progress: None,
            options: BTreeMap::new(),
            temporary_exit_codes: Vec::new(),
        }
    }

    /// Adds a source format.
    pub fn also_from(mut self, source: Format) -> Self {
        self.sources.push(source);
        self
    }

    /// Adds a target format.
    pub fn also_to(mut self, target: Format) -> Self {
        self.targets.push(target);
        self
    }

    /// Adds one argument template.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(ArgTemplate::Single(arg.into()));
        self
    }

    /// Adds argument templates.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args
            .extend(args.into_iter().map(|a| ArgTemplate::Single(a.into())));
        self
    }

    /// Adds a group of arguments, passed only when every option it refers to is set.
    pub fn arg_group<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.push(ArgTemplate::Group(
            args.into_iter().map(Into::into).collect(),
        ));
        self
    }

    /// Sets the output file name.
    pub fn output(mut self, name: impl Into<String>) -> Self {
        self.output = Some(name.into());
        self
    }

    /// Sets an environment variable (the value is a template).
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// Passes a variable through from converto's environment.
    pub fn pass_env(mut self, name: impl Into<String>) -> Self {
        self.pass_env.push(name.into());
        self
    }

    /// Sets the time limit.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Makes a timeout a temporary failure.
    pub fn retry_on_timeout(mut self, retry: bool) -> Self {
        self.retry_on_timeout = retry;
        self
    }

    /// Sets how progress is read.
    pub fn progress(mut self, progress: ProgressPattern) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Declares an option.
    pub fn option(mut self, name: impl Into<String>, spec: OptionSpec) -> Self {
        self.options.insert(name.into(), spec);
        self
    }

    /// Sets the exit codes that are temporary failures.
    pub fn temporary_exit_codes(mut self, codes: impl IntoIterator<Item = i32>) -> Self {
        self.temporary_exit_codes = codes.into_iter().collect();
        self
    }
}

/// Which output stream progress is read from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ProgressStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Both.
    #[default]
    Both,
}

/// Reads progress from the program's output lines (split at `\n` or `\r`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ProgressPattern {
    /// A regular expression whose capture group (the one named `percent`, else the first) is
    /// the percentage, e.g. `(\d+(?:\.\d+)?)%`.
    pub pattern: String,
    /// Where to look (default both streams).
    #[serde(default)]
    pub stream: ProgressStream,
    /// The stage text reported with the percentage.
    #[serde(default)]
    pub stage: Option<String>,
}

impl ProgressPattern {
    /// A pattern applied to both streams.
    pub fn new(pattern: impl Into<String>) -> Self {
        Self {
            pattern: pattern.into(),
            stream: ProgressStream::Both,
            stage: None,
        }
    }

    /// Restricts it to one stream.
    pub fn stream(mut self, stream: ProgressStream) -> Self {
        self.stream = stream;
        self
    }

    /// Sets the stage text.
    pub fn stage(mut self, stage: impl Into<String>) -> Self {
        self.stage = Some(stage.into());
        self
    }
}

/// An option's type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum OptionType {
    /// Text, checked against `pattern` (full match) and `max_len`.
    #[default]
    String,
    /// A whole number within `min..=max`.
    Integer,
    /// A number within `min..=max`.
    Number,
    /// `true` or `false`.
    Bool,
    /// One of `values`.
    Enum,
}

impl std::fmt::Display for OptionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptionType::String => "string",
            OptionType::Integer => "integer",
            OptionType::Number => "number",
            OptionType::Bool => "bool",
            OptionType::Enum => "enum",
        })
    }
}

/// A literal option value (a default).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OptionValue {
    /// A boolean.
    Bool(bool),
    /// A whole number.
    Integer(i64),
    /// A number.
    Number(f64),
    /// Text.
    String(String),
}

impl From<bool> for OptionValue {
    fn from(v: bool) -> Self {
        OptionValue::Bool(v)
    }
}

impl From<i64> for OptionValue {
    fn from(v: i64) -> Self {
        OptionValue::Integer(v)
    }
}

impl From<f64> for OptionValue {
    fn from(v: f64) -> Self {
        OptionValue::Number(v)
    }
}

impl From<&str> for OptionValue {
    fn from(v: &str) -> Self {
        OptionValue::String(v.to_owned())
    }
}

impl From<OptionValue> for serde_json::Value {
    fn from(v: OptionValue) -> Self {
        match v {
            OptionValue::Bool(b) => b.into(),
            OptionValue::Integer(i) => i.into(),
            OptionValue::Number(n) => n.into(),
            OptionValue::String(s) => s.into(),
        }
    }
}

/// An option users may set in a conversion's `options`, and how its value is checked.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct OptionSpec {
    /// The type (TOML: `type`; default `string`).
    #[serde(default, rename = "type")]
    pub kind: OptionType,
    /// The value used when the request does not set it. Without one, arguments that refer to
    /// the option are dropped.
    #[serde(default)]
    pub default: Option<OptionValue>,
    /// For `enum`: the allowed values.
    #[serde(default)]
    pub values: Vec<String>,
    /// For `string`: a regular expression the whole value must match. Without one, values may
    /// not start with '-'.
    #[serde(default)]
    pub pattern: Option<String>,
    /// For `string`: the longest value in bytes (default 256).
    #[serde(default)]
    pub max_len: Option<usize>,
    /// For `integer` and `number`: the smallest value.
    #[serde(default)]
    pub min: Option<f64>,
    /// For `integer` and `number`: the largest value.
    #[serde(default)]
    pub max: Option<f64>,
}

impl OptionSpec {
    /// A text option.
    pub fn string() -> Self {
        Self::default()
    }

    /// A whole-number option within `min..=max`.
    pub fn integer(min: i64, max: i64) -> Self {
        Self {
            kind: OptionType::Integer,
            // Bounds are compared as f64; i64 values beyond 2^53 are not meaningful limits here.
            min: Some(min as f64),
            max: Some(max as f64),
            ..Self::default()
        }
    }

    /// A number option within `min..=max`.
    pub fn number(min: f64, max: f64) -> Self {
        Self {
            kind: OptionType::Number,
            min: Some(min),
            max: Some(max),
            ..Self::default()
        }
    }

    /// A boolean option (rendered as `true` or `false`).
    pub fn boolean() -> Self {
        Self {
            kind: OptionType::Bool,
            ..Self::default()
        }
    }

    /// An option with a fixed set of values.
    pub fn one_of<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            kind: OptionType::Enum,
            values: values.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Sets the default.
    pub fn default_value(mut self, value: impl Into<OptionValue>) -> Self {
        self.default = Some(value.into());
        self
    }

    /// Sets the pattern (strings).
    pub fn pattern(mut self, pattern: impl Into<String>) -> Self {
        self.pattern = Some(pattern.into());
        self
    }

    /// Sets the longest value (strings).
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = Some(max_len);
        self
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Format>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let names = match OneOrMany::deserialize(d)? {
        OneOrMany::One(f) => vec![f],
        OneOrMany::Many(v) => v,
    };
    names
        .iter()
        .map(|n| Format::new(n).map_err(serde::de::Error::custom))
        .collect()
}

fn opt_secs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let secs = f64::deserialize(d)?;
    Duration::try_from_secs_f64(secs)
        .map(Some)
        .map_err(|_| serde::de::Error::custom("expected a non-negative number of seconds"))
}
