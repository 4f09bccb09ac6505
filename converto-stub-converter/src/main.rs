//! `converto-stub-converter`: behaves like a proprietary CAD converter, for testing converto's
//! `process` converter and for demos. Reads any input, prints progress, writes a STEP or IGES
//! file that summarises the input, and can be told to fail, crash, hang or write nothing.
//!
//! Standard library only.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const HELP: &str = "\
converto-stub-converter: a stand-in for a proprietary CAD converter

USAGE:
    converto-stub-converter --input IN --output OUT --format step|iges [OPTIONS]

Reads IN (any bytes; a mesh in practice), prints progress lines `progress: N%` to stdout,
log lines to stderr, and writes OUT: an ISO-10303-21 STEP file (--format step) or a
fixed-column IGES file (--format iges) whose header records the input's name, size and
FNV-1a 64-bit hash.

OPTIONS:
    --input IN               the file to convert (required)
    --output OUT             the file to write (required; written via OUT.partial + rename)
    --format FMT             step (or stp) | iges (or igs) (required)
    --duration-ms N          how long the simulated work takes, spread over 10 progress
                             steps [default: 200]
    --fail-with CODE         exit with CODE (0-255) without writing output, after the
                             progress run (or at --fail-after-percent)
    --fail-after-percent P   stop at P% (0-100) and fail, with --fail-with's code or 1
    --crash                  abort (SIGABRT) halfway, or at --fail-after-percent
    --hang                   stop halfway and sleep forever (until killed)
    --no-output              do everything but write the output file, then exit 0
    --garbage-stderr         also write invalid UTF-8 and a 10 KB line without newline to stderr
    -h, --help               print this help
    -V, --version            print the version

EXIT CODES:
    0    success
    2    usage error
    65   the input is empty
    66   the input cannot be read
    73   the output cannot be written
    N    whatever --fail-with says

ENVIRONMENT:
    SOURCE_DATE_EPOCH        when set, the timestamp written into the output (reproducible files)
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Step,
    Iges,
}

#[derive(Debug)]
struct Args {
    input: PathBuf,
    output: PathBuf,
    format: Target,
    duration: Duration,
    fail_with: Option<u8>,
    fail_after_percent: Option<u8>,
    crash: bool,
    hang: bool,
    no_output: bool,
    garbage_stderr: bool,
}

/// A command-line mistake.
#[derive(Debug)]
enum UsageError {
    Missing(&'static str),
    NeedsValue(String),
    BadValue { flag: String, value: String },
    Unknown(String),
}

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UsageError::Missing(flag) => write!(f, "{flag} is required"),
            UsageError::NeedsValue(flag) => write!(f, "{flag} needs a value"),
            UsageError::BadValue { flag, value } => write!(f, "invalid value {value:?} for {flag}"),
            UsageError::Unknown(arg) => write!(f, "unknown argument {arg:?}"),
        }
    }
}

enum Parsed {
    Run(Args),
    Help,
    Version,
}

fn parse_args(argv: impl IntoIterator<Item = String>) -> Result<Parsed, UsageError> {
    let mut input = None;
    let mut output = None;
    let mut format = None;
    let mut duration = Duration::from_millis(200);
    let mut fail_with = None;
    let mut fail_after_percent = None;
    let (mut crash, mut hang, mut no_output, mut garbage_stderr) = (false, false, false, false);
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let value = |it: &mut dyn Iterator<Item = String>| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| UsageError::NeedsValue(flag.clone()))
        };
        let bad = |v: &str| UsageError::BadValue {
            flag: flag.clone(),
            value: v.to_owned(),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            "--input" => input = Some(PathBuf::from(value(&mut it)?)),
            "--output" => output = Some(PathBuf::from(value(&mut it)?)),
            "--format" => {
                let v = value(&mut it)?;
                format = Some(match v.to_ascii_lowercase().as_str() {
                    "step" | "stp" => Target::Step,
                    "iges" | "igs" => Target::Iges,
                    _ => return Err(bad(&v)),
                });
            }
            "--duration-ms" => {
                let v = value(&mut it)?;
                duration = Duration::from_millis(v.parse().map_err(|_| bad(&v))?);
            }
            "--fail-with" => {
                let v = value(&mut it)?;
                fail_with = Some(v.parse().map_err(|_| bad(&v))?);
            }
            "--fail-after-percent" => {
                let v = value(&mut it)?;
                let p: u8 = v.parse().map_err(|_| bad(&v))?;
                if p > 100 {
                    return Err(bad(&v));
                }
                fail_after_percent = Some(p);
            }
            "--crash" => crash = true,
            "--hang" => hang = true,
            "--no-output" => no_output = true,
            "--garbage-stderr" => garbage_stderr = true,
            _ => return Err(UsageError::Unknown(arg)),
        }
    }
    Ok(Parsed::Run(Args {
        input: input.ok_or(UsageError::Missing("--input"))?,
        output: output.ok_or(UsageError::Missing("--output"))?,
        format: format.ok_or(UsageError::Missing("--format"))?,
        duration,
        fail_with,
        fail_after_percent,
        crash,
        hang,
        no_output,
        garbage_stderr,
    }))
}

/// FNV-1a, 64 bits: a dependency-free fingerprint of the input.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Seconds since the epoch as (year, month, day, hour, minute, second), UTC.
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

fn now_secs() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        })
}

/// What the output records about the input.
struct Summary {
    name: String,
    size: usize,
    hash: u64,
    lines: usize,
    secs: u64,
}

/// Text safe inside a STEP string: printable ASCII, quotes doubled, backslashes escaped.
fn step_string(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out
}

fn step_file(s: &Summary, output_name: &str) -> String {
    let (y, mo, d, h, mi, se) = civil(s.secs);
    let stamp = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{se:02}");
    let name = step_string(&s.name);
    let out = step_string(output_name);
    let version = env!("CARGO_PKG_VERSION");
    // Placeholder geometry: a bounding block whose size is derived from the input, so different
    // inputs give visibly different files.
    let edge = 1.0 + (s.hash % 10_000) as f64 / 100.0;
    let mut t = String::new();
    let _ = writeln!(t, "ISO-10303-21;");
    let _ = writeln!(t, "HEADER;");
    let _ = writeln!(
        t,
        "FILE_DESCRIPTION(('converto stub conversion of {name}','input bytes: {}','input lines: {}','input fnv1a64: {:016x}'),'2;1');",
        s.size, s.lines, s.hash
    );
    let _ = writeln!(
        t,
        "FILE_NAME('{out}','{stamp}',('converto'),('converto'),'converto-stub-converter {version}','converto-stub-converter','');"
    );
    let _ = writeln!(
        t,
        "FILE_SCHEMA(('AUTOMOTIVE_DESIGN {{ 1 0 10303 214 1 1 1 1 }}'));"
    );
    let _ = writeln!(t, "ENDSEC;");
    let _ = writeln!(t, "DATA;");
    let lines = [
        "#1=APPLICATION_CONTEXT('automotive design');".to_owned(),
        "#2=APPLICATION_PROTOCOL_DEFINITION('international standard','automotive_design',2000,#1);".to_owned(),
        "#3=PRODUCT_CONTEXT('',#1,'mechanical');".to_owned(),
        format!("#4=PRODUCT('{name}','{name}','converted by converto-stub-converter',(#3));"),
        "#5=PRODUCT_DEFINITION_FORMATION('','',#4);".to_owned(),
        "#6=PRODUCT_DEFINITION_CONTEXT('part definition',#1,'design');".to_owned(),
        "#7=PRODUCT_DEFINITION('design','',#5,#6);".to_owned(),
        "#8=PRODUCT_DEFINITION_SHAPE('','',#7);".to_owned(),
        "#9=CARTESIAN_POINT('origin',(0.,0.,0.));".to_owned(),
        "#10=DIRECTION('z',(0.,0.,1.));".to_owned(),
        "#11=DIRECTION('x',(1.,0.,0.));".to_owned(),
        "#12=AXIS2_PLACEMENT_3D('',#9,#10,#11);".to_owned(),
        format!("#13=BLOCK('bounding block',#12,{edge:.2},{edge:.2},{edge:.2});"),
        "#14=(LENGTH_UNIT()NAMED_UNIT(*)SI_UNIT(.MILLI.,.METRE.));".to_owned(),
        "#15=(GEOMETRIC_REPRESENTATION_CONTEXT(3)GLOBAL_UNIT_ASSIGNED_CONTEXT((#14))REPRESENTATION_CONTEXT('',''));".to_owned(),
        "#16=CSG_SHAPE_REPRESENTATION('',(#12,#13),#15);".to_owned(),
        "#17=SHAPE_DEFINITION_REPRESENTATION(#8,#16);".to_owned(),
    ];
    for l in lines {
        let _ = writeln!(t, "{l}");
    }
    let _ = writeln!(t, "ENDSEC;");
    let _ = writeln!(t, "END-ISO-10303-21;");
    t
}

/// Hollerith string, IGES style: `5HHELLO`.
fn hollerith(s: &str) -> String {
    let ascii: String = s
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    format!("{}H{ascii}", ascii.len())
}

/// Cuts free text into 72-column records of one section.
fn iges_records(section: char, text: &str, out: &mut Vec<String>) -> usize {
    let chars: Vec<char> = text.chars().collect();
    let mut count = 0;
    for chunk in chars.chunks(72) {
        count += 1;
        let body: String = chunk.iter().collect();
        out.push(format!("{body:<72}{section}{count:>7}"));
    }
    count
}

fn iges_file(s: &Summary, output_name: &str) -> String {
    let (y, mo, d, h, mi, se) = civil(s.secs);
    let stamp = format!("{y:04}{mo:02}{d:02}.{h:02}{mi:02}{se:02}");
    let mut lines = Vec::new();
    let start = format!(
        "converto stub conversion of {}: {} bytes, {} lines, fnv1a64 {:016x}.",
        s.name, s.size, s.lines, s.hash
    );
    let n_start = iges_records('S', &start, &mut lines);
    let global = [
        "1H,".to_owned(),
        "1H;".to_owned(),
        hollerith(&s.name),
        hollerith(output_name),
        hollerith("converto-stub-converter"),
        hollerith(env!("CARGO_PKG_VERSION")),
        "32".into(),
        "38".into(),
        "6".into(),
        "308".into(),
        "15".into(),
        hollerith(&s.name),
        "1.0".into(),
        "2".into(),
        "2HMM".into(),
        "1".into(),
        "0.0".into(),
        hollerith(&stamp),
        "1.0E-06".into(),
        "1000.0".into(),
        hollerith("converto"),
        hollerith("converto"),
        "11".into(),
        "0".into(),
        hollerith(&stamp),
    ]
    .join(",")
        + ";";
    let n_global = iges_records('G', &global, &mut lines);
    // One point entity (type 116) at a position derived from the input.
    let x = (s.hash % 1000) as f64 / 10.0;
    let y_ = (s.hash / 1000 % 1000) as f64 / 10.0;
    let z = (s.size % 1000) as f64 / 10.0;
    let fields1 = [116, 1, 0, 1, 0, 0, 0, 0];
    let mut de1: String = fields1.iter().map(|f| format!("{f:>8}")).collect();
    de1.push_str("00000000");
    lines.push(format!("{de1:<72}D{:>7}", 1));
    let fields2 = ["116", "0", "0", "1", "0", "", "", "POINT", "0"];
    let de2: String = fields2.iter().map(|f| format!("{f:>8}")).collect();
    lines.push(format!("{de2:<72}D{:>7}", 2));
    let param = format!("116,{x:.1},{y_:.1},{z:.1},0;");
    lines.push(format!("{param:<64}{:>8}P{:>7}", 1, 1));
    let term = format!("S{n_start:>7}G{n_global:>7}D{:>7}P{:>7}", 2, 1);
    lines.push(format!("{term:<72}T{:>7}", 1));
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn log(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "converto-stub-converter: {line}");
    let _ = err.flush();
}

fn run(args: Args) -> ExitCode {
    let bytes = match std::fs::read(&args.input) {
        Ok(b) => b,
        Err(e) => {
            log(&format!("error: cannot read {}: {e}", args.input.display()));
            return ExitCode::from(66);
        }
    };
    if bytes.is_empty() {
        log(&format!("error: {} is empty", args.input.display()));
        return ExitCode::from(65);
    }
    let summary = Summary {
        name: args
            .input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "input".into()),
        size: bytes.len(),
        hash: fnv1a64(&bytes),
        lines: bytes.iter().filter(|&&b| b == b'\n').count(),
        secs: now_secs(),
    };
    log(&format!(
        "read {} ({} bytes, fnv1a64 {:016x})",
        args.input.display(),
        summary.size,
        summary.hash
    ));
    if args.garbage_stderr {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(b"\xff\xfe garbage \xc3\x28 not utf-8 \x80\x81\n");
        let _ = err.write_all(&[b'x'; 10_000]);
        let _ = err.flush();
    }

    // Where something goes wrong on purpose, if anywhere.
    let stop_at = args
        .fail_after_percent
        .or((args.crash || args.hang).then_some(50));
    let step = args.duration / 10;
    for i in 0..=10u8 {
        let percent = i * 10;
        if let Some(stop) = stop_at
            && percent >= stop
        {
            if args.crash {
                log(&format!("fatal: simulated crash at {percent}%"));
                std::process::abort();
            }
            if args.hang {
                log(&format!("simulated hang at {percent}%"));
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            let code = args.fail_with.unwrap_or(1);
            log(&format!(
                "error: simulated failure at {percent}% (exit code {code})"
            ));
            return ExitCode::from(code);
        }
        say(&format!("progress: {percent}%"));
        if i < 10 {
            std::thread::sleep(step);
        }
    }
    if let Some(code) = args.fail_with {
        log(&format!("error: simulated failure (exit code {code})"));
        return ExitCode::from(code);
    }
    if args.no_output {
        log("done (no output written, as asked)");
        return ExitCode::SUCCESS;
    }

    let output_name = args
        .output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let text = match args.format {
        Target::Step => step_file(&summary, &output_name),
        Target::Iges => iges_file(&summary, &output_name),
    };
    let mut partial = args.output.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let written = std::fs::write(&partial, text.as_bytes())
        .and_then(|()| std::fs::rename(&partial, &args.output));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        log(&format!(
            "error: cannot write {}: {e}",
            args.output.display()
        ));
        return ExitCode::from(73);
    }
    log(&format!(
        "wrote {} ({} bytes)",
        args.output.display(),
        text.len()
    ));
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Help) => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Ok(Parsed::Version) => {
            println!("converto-stub-converter {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Parsed::Run(args)) => run(args),
        Err(e) => {
            log(&format!("error: {e}"));
            log("try --help");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            name: "part's.stl".into(),
            size: 1234,
            hash: fnv1a64(b"solid x"),
            lines: 3,
            secs: 1_795_910_400,
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(1_795_910_400 + 3_661), (2026, 11, 29, 1, 1, 1));
    }

    #[test]
    fn step_is_well_formed() {
        let t = step_file(&summary(), "output.step");
        assert!(t.starts_with("ISO-10303-21;\nHEADER;"));
        assert!(t.trim_end().ends_with("END-ISO-10303-21;"));
        assert!(t.contains("part''s.stl"));
        assert!(t.contains("input bytes: 1234"));
    }

    #[test]
    fn iges_is_fixed_column() {
        let t = iges_file(&summary(), "output.iges");
        for line in t.lines() {
            assert_eq!(line.len(), 80, "{line:?}");
        }
        let last = t.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("S      ") && last.ends_with("T      1"),
            "{last:?}"
        );
    }

    #[test]
    fn parses_flags() {
        let argv = ["--input", "a b", "--output=o", "--format", "IGS", "--crash"];
        let Ok(Parsed::Run(a)) = parse_args(argv.map(String::from)) else {
            panic!("expected a run");
        };
        assert_eq!(a.input, PathBuf::from("a b"));
        assert_eq!(a.format, Target::Iges);
        assert!(a.crash);
        assert!(matches!(
            parse_args(["--input".to_owned()]),
            Err(UsageError::NeedsValue(_))
        ));
        assert!(matches!(
            parse_args(["--bogus".to_owned()]),
            Err(UsageError::Unknown(_))
        ));
    }
}
