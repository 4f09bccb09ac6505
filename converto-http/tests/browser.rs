//! The web UI in a real browser: Debian's headless Chromium driven by `playwright-core`
//! (`tests/browser/run.mjs`, nothing downloaded at test time) against the real `converto`
//! binary: one server without authentication and with the CAD stub routes, one with
//! `--auth keys` and a key made by `converto keys create`.
//!
//! Needs `node`, `/usr/bin/chromium` (or `CONVERTO_TEST_CHROMIUM`) and
//! `tests/browser/node_modules` (`npm ci` there); `.ci/setup` installs them. Without them the
//! test fails when `CI=true` and otherwise skips, saying what is missing. A failing scenario
//! leaves a screenshot in `target/browser-screenshots/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{Proc, skip_or_fail};

const TEST: &str = "browser_scenarios";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What is missing to run a browser, if anything.
fn missing_tools(chromium: &Path) -> Option<String> {
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node is not installed (apt-get install nodejs)".into());
    }
    if !chromium.exists() {
        return Some(format!(
            "{} does not exist (apt-get install chromium, or set CONVERTO_TEST_CHROMIUM)",
            chromium.display()
        ));
    }
    let module = manifest_dir().join("tests/browser/node_modules/playwright-core");
    if !module.exists() {
        return Some(format!(
            "{} is missing (npm ci in converto-http/tests/browser)",
            module.display()
        ));
    }
    None
}

/// A real STL file and a real JPEG (a 2048x1024 texture) shipped by Debian's
/// assimp-testmodels, which `.ci/setup` installs; other JPEGs found on the machine as
/// fallbacks.
fn real_inputs() -> Result<(PathBuf, PathBuf), String> {
    let stl = PathBuf::from("/usr/share/assimp/models/STL/Spider_binary.stl");
    if !stl.exists() {
        return Err(format!(
            "{} is missing (apt-get install assimp-testmodels)",
            stl.display()
        ));
    }
    let mut jpegs = vec![
        PathBuf::from("/usr/share/assimp/models/LWO/LWO2/MappingModes/earthSpherical.jpg"),
        PathBuf::from("/usr/share/doc/nodejs/full-white-stripe.jpg"),
    ];
    if let Ok(out) = Command::new("rustc").args(["--print", "sysroot"]).output() {
        let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        jpegs.push(Path::new(&sysroot).join("share/doc/rust/html/embedded-book/assets/f3.jpg"));
    }
    let jpeg = jpegs
        .iter()
        .find(|p| p.exists())
        .cloned()
        .ok_or_else(|| format!("no JPEG found at {jpegs:?}"))?;
    Ok((stl, jpeg))
}

/// The CAD stub converter, built once (the CAD routes in routes/cad.toml run it).
fn stub_dir() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(cargo)
        .args([
            "build",
            "-p",
            "converto-stub-converter",
            "--message-format=json",
        ])
        .current_dir(manifest_dir())
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
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .expect("cargo reports the stub's executable")
}

fn create_key(data_dir: &Path) -> String {
    let out = common::converto(data_dir, &["keys", "create", "--tenant", "t"]);
    assert!(
        out.status.success(),
        "keys create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

#[test]
fn browser_scenarios() {
    let chromium = std::env::var_os("CONVERTO_TEST_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if let Some(why) = missing_tools(&chromium) {
        skip_or_fail(TEST, &why);
        return;
    }
    let (stl, jpeg) = match real_inputs() {
        Ok(inputs) => inputs,
        Err(why) => {
            skip_or_fail(TEST, &why);
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cad = manifest_dir().join("../routes/cad.toml");
    let program_dirs = stub_dir().display().to_string();

    let open_data = dir.path().join("open");
    let open = Proc::serve(
        &open_data,
        &["--routes", &cad.display().to_string()],
        &[("CONVERTO_PROGRAM_DIRS", program_dirs)],
    );
    let auth_data = dir.path().join("auth");
    std::fs::create_dir_all(&auth_data).expect("auth data dir");
    let key = create_key(&auth_data);
    let with_auth = Proc::serve(&auth_data, &["--auth", "keys"], &[]);

    let screenshots = manifest_dir().join("../target/browser-screenshots");
    let started = Instant::now();
    let status = Command::new("node")
        .arg("run.mjs")
        .current_dir(manifest_dir().join("tests/browser"))
        .env("BASE_URL", open.base())
        .env("AUTH_BASE_URL", with_auth.base())
        .env("API_KEY", &key)
        .env("STL", &stl)
        .env("JPEG", &jpeg)
        .env("CHROMIUM", &chromium)
        .env("SCREENSHOTS", &screenshots)
        .status()
        .expect("run node");
    eprintln!(
        "browser scenarios took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        status.success(),
        "browser scenarios failed ({status}); screenshots in {}",
        screenshots.display()
    );
}
