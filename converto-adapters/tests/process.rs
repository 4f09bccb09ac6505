//! The `process` converter against real processes: the workspace's stub converter and small
//! `/bin/sh` scripts (run as `/bin/sh SCRIPT ...`, so a freshly written file is never exec'd).
#![cfg(feature = "process")]

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use converto_adapters::process::{
    OptionSpec, OptionSpecProblem, ProcessConfig, ProcessConfigError, ProcessConverter,
    ProcessRoute, ProgressPattern, ProgressStream, TemplateError,
};
use converto_core::converter::OutputBody;
use converto_core::{
    CancellationToken, ConversionId, ConvertContext, ConvertError, ConvertRequest, Converter,
    Format, Output, Route,
};
use parking_lot::Mutex;
use serde_json::json;

type TestResult = Result<(), Box<dyn Error>>;

/// The stub converter binary, built once per test run.
fn stub() -> &'static Path {
    static STUB: OnceLock<PathBuf> = OnceLock::new();
    STUB.get_or_init(|| {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let built = std::process::Command::new(cargo)
            .args([
                "build",
                "-p",
                "converto-stub-converter",
                "--message-format=json",
            ])
            .current_dir(manifest_dir)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("cargo runs");
        assert!(
            built.status.success(),
            "cargo build -p converto-stub-converter failed"
        );
        String::from_utf8_lossy(&built.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["target"]["name"] == "converto-stub-converter")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reports the stub's executable")
    })
}

fn fmt(s: &str) -> Format {
    Format::new(s).expect("valid format")
}

fn request(source: &str, target: &str, options: serde_json::Value) -> ConvertRequest {
    ConvertRequest {
        id: ConversionId::new(),
        attempt: 1,
        source: fmt(source),
        target: fmt(target),
        options,
    }
}

type Reports = Arc<Mutex<Vec<(u8, Option<String>)>>>;

/// A job: an input file, a work directory, a progress recorder.
struct Job {
    _dir: tempfile::TempDir,
    input: PathBuf,
    work: PathBuf,
    reports: Reports,
}

impl Job {
    fn new(input_name: &str, content: &[u8]) -> Result<Self, Box<dyn Error>> {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join(input_name);
        std::fs::write(&input, content)?;
        let work = dir.path().join("work dir");
        std::fs::create_dir(&work)?;
        Ok(Self {
            _dir: dir,
            input,
            work,
            reports: Arc::default(),
        })
    }

    fn ctx(&self) -> ConvertContext {
        let reports = Arc::clone(&self.reports);
        ConvertContext::for_file(
            self.input.clone(),
            self.work.clone(),
            Arc::new(move |p, stage| reports.lock().push((p, stage.map(str::to_owned)))),
        )
    }

    fn percents(&self) -> Vec<u8> {
        self.reports.lock().iter().map(|(p, _)| *p).collect()
    }
}

/// A route run by `/bin/sh SCRIPT` with the given script body.
fn sh_route(dir: &Path, body: &str) -> Result<ProcessRoute, Box<dyn Error>> {
    let script = dir.join("script.sh");
    std::fs::write(&script, body)?;
    Ok(ProcessRoute::new(fmt("txt"), fmt("out"), "/bin/sh").arg(script.to_string_lossy()))
}

fn converter(route: ProcessRoute) -> Result<ProcessConverter, ProcessConfigError> {
    ProcessConverter::from_config(ProcessConfig::new().name("test").route(route))
}

fn stub_route(source: &str, target: &str) -> ProcessRoute {
    ProcessRoute::new(fmt(source), fmt(target), stub())
        .args([
            "--input", "{input}", "--output", "{output}", "--format", "{target}",
        ])
        .arg_group(["--duration-ms", "{opt.duration_ms}"])
        .arg_group(["--fail-with", "{opt.fail_with}"])
        .arg("{opt.mode}")
        .option(
            "duration_ms",
            OptionSpec::integer(0, 60_000).default_value(50),
        )
        .option("fail_with", OptionSpec::integer(0, 255))
        .option(
            "mode",
            OptionSpec::one_of(["--crash", "--no-output", "--garbage-stderr"]),
        )
        .progress(
            ProgressPattern::new(r"^progress: (\d+)%")
                .stream(ProgressStream::Stdout)
                .stage("converting"),
        )
        .temporary_exit_codes([75])
}

fn failed(result: Result<Vec<Output>, ConvertError>) -> (String, String, bool) {
    match result {
        Err(ConvertError::Failed {
            code,
            message,
            temporary,
        }) => (code, message, temporary),
        other => panic!("expected ConvertError::Failed, got {other:?}"),
    }
}

fn output_path(outputs: &[Output]) -> PathBuf {
    match outputs {
        [
            Output {
                body: OutputBody::File(p),
                ..
            },
        ] => p.clone(),
        other => panic!("expected one file output, got {other:?}"),
    }
}

/// Whether a process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

async fn dead_within(pid: i32, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !alive(pid)
}

async fn read_pid(path: &Path, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(s) = std::fs::read_to_string(path)
            && let Ok(pid) = s.trim().parse()
        {
            return Some(pid);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// A script that starts a grandchild `sleep`, records its pid and waits; with `ignore_term`
/// the shell and the sleep ignore SIGTERM, so only SIGKILL stops them.
fn sleeper_script(ignore_term: bool) -> String {
    let trap = if ignore_term { "trap '' TERM\n" } else { "" };
    format!(
        "{trap}/bin/sleep 1000 &\necho $! > \"$1.tmp\" && mv \"$1.tmp\" \"$1\"\necho 'progress 5%'\nwait\n"
    )
}

#[tokio::test]
async fn stub_converts_with_parsed_progress() -> TestResult {
    let conv = converter(stub_route("stl", "step"))?;
    let job = Job::new("part.stl", b"solid part\nendsolid part\n")?;
    let outputs = conv
        .convert(
            &request("stl", "step", json!({"duration_ms": 100})),
            &job.ctx(),
        )
        .await?;
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].name, "output.step");
    assert_eq!(outputs[0].format, fmt("step"));
    let text = std::fs::read_to_string(output_path(&outputs))?;
    assert!(text.starts_with("ISO-10303-21;"), "{text}");
    assert!(text.contains("input bytes: 25"), "{text}");
    let percents = job.percents();
    assert_eq!(percents, (0..=100).step_by(10).collect::<Vec<u8>>());
    assert!(
        job.reports
            .lock()
            .iter()
            .all(|(_, s)| s.as_deref() == Some("converting"))
    );
    Ok(())
}

#[tokio::test]
async fn shipped_cad_routes_load_and_convert() -> TestResult {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../routes/cad.toml");
    let mut config = ProcessConfig::from_toml_file(&file)?;
    // As shipped (no help from the test), the file finds a stub built into the workspace's
    // own target directory.
    let workspace_debug = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug");
    if stub().parent().map(std::fs::canonicalize).transpose()?
        == Some(std::fs::canonicalize(&workspace_debug)?)
    {
        ProcessConverter::from_config(config.clone())?;
    }
    // Wherever cargo put the stub (CARGO_TARGET_DIR may move it), search there first.
    let stub_dir = stub().parent().expect("stub has a directory").to_owned();
    config.program_dirs.insert(0, stub_dir);
    let conv = ProcessConverter::from_config(config)?;
    assert_eq!(conv.name(), "cad");
    let routes = conv.routes();
    for (s, t) in [
        ("stl", "step"),
        ("obj", "step"),
        ("stl", "iges"),
        ("obj", "iges"),
        ("ply", "step"),
        ("ply", "iges"),
    ] {
        assert!(routes.contains(&Route::new(fmt(s), fmt(t))), "{s} -> {t}");
    }
    let job = Job::new("cube.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")?;
    let outputs = conv
        .convert(
            &request("obj", "iges", json!({"duration_ms": 0})),
            &job.ctx(),
        )
        .await?;
    assert_eq!(outputs[0].name, "output.iges");
    let text = std::fs::read_to_string(output_path(&outputs))?;
    assert!(text.lines().all(|l| l.len() == 80), "{text}");
    assert_eq!(job.percents().last(), Some(&100));
    Ok(())
}

#[tokio::test]
async fn arguments_are_passed_literally_without_a_shell() -> TestResult {
    let dir = tempfile::tempdir()?;
    let route = sh_route(
        dir.path(),
        "out=\"$1\"; shift\nfor a in \"$@\"; do printf '[%s]\\n' \"$a\" >> \"$out\"; done\n",
    )?
    .arg("{output}")
    .args([
        "hello world",
        "it's \"quoted\"",
        "$HOME `id` $(id)",
        "; rm -rf / &&",
        "*",
        "{{braces}}",
        "--title={opt.title}",
    ])
    .arg_group(["--unset", "{opt.missing}"])
    .option("title", OptionSpec::string().pattern(r"[\w '\x22$;]+"))
    .option("missing", OptionSpec::string());
    let conv = converter(route)?;
    let job = Job::new("in put.txt", b"x")?;
    let title = "a \"b\" 'c' $d; e";
    let outputs = conv
        .convert(
            &request("txt", "out", json!({ "title": title })),
            &job.ctx(),
        )
        .await?;
    let got = std::fs::read_to_string(output_path(&outputs))?;
    let expected = format!(
        "[hello world]\n[it's \"quoted\"]\n[$HOME `id` $(id)]\n[; rm -rf / &&]\n[*]\n[{{braces}}]\n[--title={title}]\n"
    );
    assert_eq!(got, expected);
    Ok(())
}

#[tokio::test]
async fn options_are_allow_listed_and_validated() -> TestResult {
    let conv = converter(stub_route("stl", "step"))?;
    let job = Job::new("part.stl", b"solid\n")?;
    for bad in [
        json!({"shell": "rm -rf /"}),
        json!({"duration_ms": 1_000_000}),
        json!({"duration_ms": "fast"}),
        json!({"mode": "--hang"}),
        json!(["not", "an", "object"]),
    ] {
        match conv
            .convert(&request("stl", "step", bad.clone()), &job.ctx())
            .await
        {
            Err(ConvertError::InvalidOptions(msg)) => assert!(!msg.is_empty()),
            other => panic!("{bad}: expected InvalidOptions, got {other:?}"),
        }
        // The same verdict at submit time, before any input exists.
        assert!(
            matches!(
                conv.check_options(&fmt("stl"), &fmt("step"), &bad),
                Err(ConvertError::InvalidOptions(_))
            ),
            "{bad}: accepted at submit"
        );
    }
    conv.check_options(&fmt("stl"), &fmt("step"), &json!({"duration_ms": 10}))?;
    conv.check_options(&fmt("stl"), &fmt("step"), &json!(null))?;
    let dash = converter(
        stub_route("stl", "iges").option("label", OptionSpec::string().default_value("x")),
    )?;
    assert!(matches!(
        dash.convert(
            &request("stl", "iges", json!({"label": "--crash"})),
            &job.ctx()
        )
        .await,
        Err(ConvertError::InvalidOptions(_))
    ));
    assert!(matches!(
        conv.convert(&request("obj", "step", json!(null)), &job.ctx())
            .await,
        Err(ConvertError::Unsupported { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn environment_is_cleared_except_configured_vars() -> TestResult {
    let dir = tempfile::tempdir()?;
    let route = sh_route(dir.path(), "{ env; echo \"cwd=$(pwd)\"; } > \"$1\"\n")?
        .arg("{output}")
        .env("GREETING", "hello world")
        .env("WORK", "{scratch_dir}")
        .env("UNITS", "{opt.units}")
        .pass_env("PATH")
        .option("units", OptionSpec::one_of(["mm", "in"]));
    let conv = converter(route)?;
    let job = Job::new("a.txt", b"x")?;
    let outputs = conv
        .convert(&request("txt", "out", json!({})), &job.ctx())
        .await?;
    let text = std::fs::read_to_string(output_path(&outputs))?;
    let vars: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        // Set by the shell itself, not by us.
        .filter(|(k, _)| !matches!(*k, "PWD" | "OLDPWD" | "SHLVL" | "_" | "cwd"))
        .collect();
    let names: Vec<&str> = vars.keys().copied().collect();
    let expected_names: Vec<&str> = if std::env::var_os("PATH").is_some() {
        vec!["GREETING", "PATH", "WORK"]
    } else {
        vec!["GREETING", "WORK"]
    };
    assert_eq!(names, expected_names, "child environment:\n{text}");
    assert_eq!(vars["GREETING"], "hello world");
    let work = std::path::absolute(&job.work)?;
    assert_eq!(vars["WORK"], work.to_string_lossy());
    assert!(text.contains(&format!("cwd={}", work.display())), "{text}");
    Ok(())
}

#[tokio::test]
async fn non_zero_exit_maps_to_temporary_or_permanent() -> TestResult {
    let conv = converter(stub_route("stl", "step"))?;
    let job = Job::new("part.stl", b"solid\n")?;

    let result = conv
        .convert(
            &request("stl", "step", json!({"fail_with": 75})),
            &job.ctx(),
        )
        .await;
    let (code, message, temporary) = failed(result);
    assert_eq!(code, "converter_exit_75");
    assert!(temporary, "75 is configured as temporary");
    assert!(message.contains("exited with code 75"), "{message}");
    assert!(
        message.contains("simulated failure"),
        "stderr tail: {message}"
    );

    let result = conv
        .convert(&request("stl", "step", json!({"fail_with": 3})), &job.ctx())
        .await;
    let (code, message, temporary) = failed(result);
    assert_eq!(code, "converter_exit_3");
    assert!(!temporary, "unlisted codes are permanent");
    assert!(message.contains("exit code 3"), "{message}");
    Ok(())
}

#[tokio::test]
async fn stderr_tail_is_bounded_and_lossy() -> TestResult {
    let conv = converter(stub_route("stl", "step"))?;
    let job = Job::new("part.stl", b"solid\n")?;
    let result = conv
        .convert(
            &request(
                "stl",
                "step",
                json!({"mode": "--garbage-stderr", "fail_with": 4}),
            ),
            &job.ctx(),
        )
        .await;
    let (code, message, _) = failed(result);
    assert_eq!(code, "converter_exit_4");
    assert!(
        message.len() < 4096 + 200,
        "tail too long: {}",
        message.len()
    );
    assert!(message.contains("simulated failure"), "{message}");
    Ok(())
}

#[tokio::test]
async fn crash_is_a_temporary_kill() -> TestResult {
    let conv = converter(stub_route("stl", "step"))?;
    let job = Job::new("part.stl", b"solid\n")?;
    let result = conv
        .convert(
            &request("stl", "step", json!({"mode": "--crash"})),
            &job.ctx(),
        )
        .await;
    let (code, message, temporary) = failed(result);
    assert_eq!(code, "converter_killed");
    assert!(temporary);
    assert!(message.contains("SIGABRT"), "{message}");
    assert!(message.contains("simulated crash"), "{message}");
    Ok(())
}

#[tokio::test]
async fn missing_or_empty_output_is_permanent_no_output() -> TestResult {
    let conv = converter(stub_route("stl", "step"))?;
    let job = Job::new("part.stl", b"solid\n")?;
    let result = conv
        .convert(
            &request("stl", "step", json!({"mode": "--no-output"})),
            &job.ctx(),
        )
        .await;
    let (code, message, temporary) = failed(result);
    assert_eq!(code, "no_output");
    assert!(!temporary);
    assert!(
        message.contains("no output written"),
        "stderr tail: {message}"
    );

    let dir = tempfile::tempdir()?;
    let empty = converter(sh_route(dir.path(), ": > \"$1\"\n")?.arg("{output}"))?;
    let (code, _, temporary) = failed(
        empty
            .convert(&request("txt", "out", json!(null)), &job.ctx())
            .await,
    );
    assert_eq!(code, "no_output");
    assert!(!temporary);
    Ok(())
}

#[tokio::test]
async fn missing_programs_are_load_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let absent = dir.path().join("absent-tool");
    assert!(matches!(
        converter(ProcessRoute::new(fmt("a"), fmt("b"), &absent)),
        Err(ProcessConfigError::ProgramNotFound { .. })
    ));
    match converter(ProcessRoute::new(
        fmt("a"),
        fmt("b"),
        "converto-no-such-program-7f3e",
    )) {
        Err(ProcessConfigError::ProgramNotFound { searched, .. }) => {
            assert!(!searched.is_empty())
        }
        other => panic!("expected ProgramNotFound, got {other:?}"),
    }
    let plain = dir.path().join("plain.txt");
    std::fs::write(&plain, "not a program")?;
    assert!(matches!(
        converter(ProcessRoute::new(fmt("a"), fmt("b"), &plain)),
        Err(ProcessConfigError::ProgramNotExecutable { .. })
    ));
    // Relative paths resolve against the route file's directory.
    let toml_path = dir.path().join("routes.toml");
    std::fs::write(
        &toml_path,
        "[[route]]\nsource = \"a\"\ntarget = \"b\"\nprogram = \"./tool\"\n",
    )?;
    match ProcessConverter::from_toml_file(&toml_path) {
        Err(ProcessConfigError::ProgramNotFound { searched, .. }) => {
            assert_eq!(searched, vec![dir.path().join("./tool")]);
        }
        other => panic!("expected ProgramNotFound, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn program_removed_after_load_is_a_permanent_failure() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let tool = dir.path().join("tool");
    std::fs::write(&tool, "#!/bin/sh\nexit 0\n")?;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755))?;
    let conv = converter(ProcessRoute::new(fmt("txt"), fmt("out"), &tool))?;
    assert_eq!(
        conv.program_for(&Route::new(fmt("txt"), fmt("out"))),
        Some(tool.as_path())
    );
    std::fs::remove_file(&tool)?;
    let job = Job::new("a.txt", b"x")?;
    let (code, message, temporary) = failed(
        conv.convert(&request("txt", "out", json!(null)), &job.ctx())
            .await,
    );
    assert_eq!(code, "converter_missing");
    assert!(!temporary);
    assert!(message.contains("not found"), "{message}");
    Ok(())
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() -> TestResult {
    let dir = tempfile::tempdir()?;
    let route = sh_route(dir.path(), &sleeper_script(true))?
        .arg("{scratch_dir}/sleeper.pid")
        .timeout(Duration::from_millis(700))
        .progress(ProgressPattern::new(r"(\d+)%"));
    let conv = ProcessConverter::from_config(
        ProcessConfig::new()
            .kill_grace(Duration::from_millis(300))
            .route(route),
    )?;
    let job = Job::new("a.txt", b"x")?;
    let start = Instant::now();
    let (code, message, temporary) = failed(
        conv.convert(&request("txt", "out", json!(null)), &job.ctx())
            .await,
    );
    let took = start.elapsed();
    assert_eq!(code, "converter_timeout");
    assert!(!temporary, "a timeout is permanent unless retry_on_timeout");
    assert!(message.contains("time limit"), "{message}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(
        job.percents(),
        vec![5],
        "progress read from the script's output"
    );
    let pid = read_pid(&job.work.join("sleeper.pid"), Duration::from_secs(1))
        .await
        .expect("the script recorded its grandchild");
    assert!(
        dead_within(pid, Duration::from_secs(3)).await,
        "grandchild {pid} survived the timeout"
    );
    Ok(())
}

#[tokio::test]
async fn cancellation_kills_the_group_promptly() -> TestResult {
    let dir = tempfile::tempdir()?;
    let route = sh_route(dir.path(), &sleeper_script(false))?.arg("{scratch_dir}/sleeper.pid");
    let conv = converter(route)?;
    let job = Job::new("a.txt", b"x")?;
    let token = CancellationToken::new();
    let ctx = job.ctx().with_cancel(token.clone());
    let pid_file = job.work.join("sleeper.pid");
    let req = request("txt", "out", json!(null));
    let convert = conv.convert(&req, &ctx);
    let watch = async {
        let pid = read_pid(&pid_file, Duration::from_secs(10)).await;
        assert!(pid.is_some_and(alive), "grandchild running before cancel");
        token.cancel();
        (pid, Instant::now())
    };
    let (result, (pid, cancelled_at)) = tokio::join!(convert, watch);
    let took = cancelled_at.elapsed();
    assert!(matches!(result, Err(ConvertError::Cancelled)), "{result:?}");
    assert!(took < Duration::from_secs(2), "cancellation took {took:?}");
    let pid = pid.expect("pid");
    assert!(
        dead_within(pid, Duration::from_secs(3)).await,
        "grandchild {pid} survived cancellation"
    );
    Ok(())
}

#[tokio::test]
async fn dropping_the_future_kills_the_group() -> TestResult {
    let dir = tempfile::tempdir()?;
    let route = sh_route(dir.path(), &sleeper_script(true))?.arg("{scratch_dir}/sleeper.pid");
    let conv = converter(route)?;
    let job = Job::new("a.txt", b"x")?;
    let ctx = job.ctx();
    let req = request("txt", "out", json!(null));
    let pid_file = job.work.join("sleeper.pid");
    {
        let convert = conv.convert(&req, &ctx);
        tokio::pin!(convert);
        let pid = tokio::select! {
            r = &mut convert => panic!("finished early: {r:?}"),
            pid = read_pid(&pid_file, Duration::from_secs(10)) => pid,
        };
        assert!(pid.is_some_and(alive));
        // The future is dropped here, mid-run.
    }
    let pid = read_pid(&pid_file, Duration::from_secs(1))
        .await
        .expect("pid");
    assert!(
        dead_within(pid, Duration::from_secs(3)).await,
        "grandchild {pid} survived the dropped future"
    );
    Ok(())
}

fn load_err(toml_text: &str) -> ProcessConfigError {
    match ProcessConverter::from_toml_str(toml_text) {
        Ok(c) => panic!("expected an error for:\n{toml_text}\ngot {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn toml_errors_are_typed() {
    let route = |extra: &str| {
        format!("[[route]]\nsource = \"stl\"\ntarget = \"step\"\nprogram = \"/bin/sh\"\n{extra}")
    };
    assert!(matches!(
        load_err("[[route]\n"),
        ProcessConfigError::Parse { .. }
    ));
    assert!(matches!(
        load_err(&route("argz = []\n")),
        ProcessConfigError::Parse { .. }
    ));
    let bad_format =
        load_err("[[route]]\nsource = \"st l\"\ntarget = \"step\"\nprogram = \"/bin/sh\"\n");
    assert!(matches!(bad_format, ProcessConfigError::Parse { .. }));
    assert!(
        bad_format.to_string().contains("invalid format"),
        "{bad_format}"
    );
    assert!(matches!(
        load_err("name = \"x\"\n"),
        ProcessConfigError::NoRoutes
    ));
    assert!(matches!(
        load_err(&route("args = [\"{inptu}\"]\n")),
        ProcessConfigError::Template {
            source: TemplateError::UnknownPlaceholder { .. },
            ..
        }
    ));
    assert!(matches!(
        load_err(&route("args = [\"{opt.color}\"]\n")),
        ProcessConfigError::Template {
            source: TemplateError::UndeclaredOption { .. },
            ..
        }
    ));
    assert!(matches!(
        load_err(&route("args = [\"{input\"]\n")),
        ProcessConfigError::Template {
            source: TemplateError::Unclosed,
            ..
        }
    ));
    assert!(matches!(
        load_err(&route("output = \"../escape.step\"\n")),
        ProcessConfigError::InvalidOutputName { .. }
    ));
    assert!(matches!(
        load_err(&route("output = \"{input}.step\"\n")),
        ProcessConfigError::Template {
            source: TemplateError::NotAllowedHere { .. },
            ..
        }
    ));
    assert!(matches!(
        load_err(&route("progress = { pattern = '(\\d+%' }\n")),
        ProcessConfigError::InvalidProgressPattern { .. }
    ));
    assert!(matches!(
        load_err(&route("progress = { pattern = '\\d+%' }\n")),
        ProcessConfigError::ProgressPatternWithoutGroup { .. }
    ));
    assert!(matches!(
        load_err(&route("timeout_secs = -1\n")),
        ProcessConfigError::Parse { .. }
    ));
    assert!(matches!(
        load_err(&route(
            "[route.options.q]\ntype = \"integer\"\nmin = 1\nmax = 10\ndefault = 50\n"
        )),
        ProcessConfigError::InvalidOption {
            problem: OptionSpecProblem::Default(_),
            ..
        }
    ));
    assert!(matches!(
        load_err(&route("[route.options.q]\ntype = \"enum\"\n")),
        ProcessConfigError::InvalidOption {
            problem: OptionSpecProblem::EnumWithoutValues,
            ..
        }
    ));
    assert!(matches!(
        load_err(&route(
            "[route.options.q]\ntype = \"bool\"\npattern = \"x\"\n"
        )),
        ProcessConfigError::InvalidOption {
            problem: OptionSpecProblem::SettingNotApplicable { .. },
            ..
        }
    ));
    assert!(matches!(
        load_err(&format!("{}{}", route(""), route(""))),
        ProcessConfigError::DuplicateRoute { .. }
    ));
    assert!(matches!(
        load_err(&route("env = { \"A=B\" = \"x\" }\n")),
        ProcessConfigError::InvalidEnvName { .. }
    ));
}

#[test]
fn toml_routes_expand_and_name_is_configurable() -> TestResult {
    let conv = ProcessConverter::from_toml_str(
        r#"
name = "mesh-tools"
[[route]]
source = ["stl", "obj"]
target = ["step", "igs"]
program = "/bin/sh"
args = ["-c", "exit 0"]
output = "{source}-to-{target}.out"
env = { LICENSE_KEY = "hunter2" }
"#,
    )?;
    assert!(
        !format!("{conv:?}").contains("hunter2"),
        "Debug leaks env values"
    );
    assert_eq!(conv.name(), "mesh-tools");
    assert_eq!(conv.routes().len(), 4);
    assert!(conv.routes().contains(&Route::new(fmt("obj"), fmt("iges"))));
    assert_eq!(conv.with_name("renamed").name(), "renamed");
    Ok(())
}

#[tokio::test]
async fn an_output_that_is_a_symlink_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "not the job's to read\n")?;
    let body = format!("ln -s '{}' \"$1\"\n", secret.display());
    let conv = converter(sh_route(dir.path(), &body)?.arg("{output}"))?;
    let job = Job::new("in.txt", b"hello\n")?;
    let (code, message, temporary) = failed(
        conv.convert(&request("txt", "out", json!(null)), &job.ctx())
            .await,
    );
    assert_eq!(code, "invalid_output", "{message}");
    assert!(!temporary);
    assert!(message.contains("symbolic link"), "{message}");
    Ok(())
}

#[tokio::test]
async fn an_output_resolving_outside_the_scratch_directory_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let outside = tempfile::tempdir()?;
    // The output file itself is regular, but the program swapped its directory for a link to
    // somewhere else: the path leaves the job's scratch directory.
    let body = format!(
        "rm -r \"$2\" && ln -s '{}' \"$2\" && echo data > \"$1\"\n",
        outside.path().display()
    );
    let conv = converter(
        sh_route(dir.path(), &body)?
            .arg("{output}")
            .arg("{output_dir}"),
    )?;
    let job = Job::new("in.txt", b"hello\n")?;
    let (code, message, temporary) = failed(
        conv.convert(&request("txt", "out", json!(null)), &job.ctx())
            .await,
    );
    assert_eq!(code, "invalid_output", "{message}");
    assert!(!temporary);
    assert!(message.contains("outside"), "{message}");
    // The program did write there; the converter just never hands it out.
    assert_eq!(std::fs::read_dir(outside.path())?.count(), 1);
    Ok(())
}

#[tokio::test]
async fn a_fifo_output_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let conv = converter(sh_route(dir.path(), "mkfifo \"$1\"\n")?.arg("{output}"))?;
    let job = Job::new("in.txt", b"hello\n")?;
    let (code, message, _) = failed(
        conv.convert(&request("txt", "out", json!(null)), &job.ctx())
            .await,
    );
    assert_eq!(code, "invalid_output", "{message}");
    Ok(())
}
