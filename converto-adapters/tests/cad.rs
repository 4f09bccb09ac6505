//! STEP and IGES through OpenCASCADE (`occt-draw`), run by the engine as the service runs them:
//! on parts nobody here wrote (the samples of Debian's `occt-misc`) and on parts the engine
//! writes itself. Each tessellated mesh's bounding box is checked against OpenCASCADE's own
//! report on the exact shape; meshes written as STEP/IGES are read back with the same face
//! count.
//!
//! Needs `occt-draw` (Debian: `occt-draw libocct-draw-dev occt-misc`, installed by `.ci/setup`).
//! Without it the tests fail when `CI=true`, and skip with a message otherwise.
#![cfg(all(feature = "process", feature = "mesh"))]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use converto_adapters::mesh::MeshConverter;
use converto_adapters::process::occt;
use converto_core::{
    Conversion, ConverterRegistry, Engine, EngineConfig, EngineError, Format, Status, Submission,
    SubmitInput,
};
use serde_json::{Value, json};

/// The sample parts of Debian's `occt-misc`.
const SAMPLES: &str = "/usr/share/opencascade/data";

/// `occt-draw`, or `None` (after saying why) when these tests should skip.
fn engine_program() -> Option<PathBuf> {
    match occt::detect() {
        occt::Detection::Found(p) => Some(p),
        occt::Detection::Missing(why) => {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "CI=true but {why}"
            );
            eprintln!("skipping: {why} (set CI=true to make this a failure)");
            None
        }
    }
}

fn samples() -> Vec<PathBuf> {
    let files = [
        "step/screw.step",
        "step/linkrods.step",
        "iges/hammer.iges",
        "iges/bearing.iges",
    ]
    .map(|f| Path::new(SAMPLES).join(f));
    for f in &files {
        assert!(
            f.is_file(),
            "{} missing: install the Debian package occt-misc",
            f.display()
        );
    }
    files.to_vec()
}

fn engine(program: &Path) -> Engine {
    let registry = ConverterRegistry::new()
        .with(Arc::new(MeshConverter::new()))
        .with(Arc::new(occt::converter(program).expect("the routes load")));
    Engine::in_memory(
        registry,
        EngineConfig::default()
            .concurrency(1)
            .max_attempts(1)
            .job_timeout(Duration::from_secs(600)),
    )
}

async fn convert(
    engine: &Engine,
    file: &Path,
    target: &str,
    options: Value,
) -> (Conversion, Bytes) {
    let bytes = std::fs::read(file).expect("read the part");
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
    let submitted = engine
        .submit(
            Submission::new(
                Format::new(target).expect("format"),
                SubmitInput::bytes(bytes, name),
            )
            .options(options),
        )
        .await
        .expect("submit");
    let done = engine.wait(submitted.conversion.id).await.expect("wait");
    assert_eq!(
        done.status,
        Status::Succeeded,
        "{}: {done:?}",
        file.display()
    );
    // One set of artifacts: the last converter's (the mesh converter adds a preview image).
    let main: Vec<_> = done
        .artifacts
        .iter()
        .filter(|a| a.format.as_str() == target)
        .collect();
    assert_eq!(main.len(), 1, "{:?}", done.artifacts);
    assert!(
        done.artifacts
            .iter()
            .all(|a| a.name != "output.stl" || target == "stl"),
        "an intermediate was stored: {:?}",
        done.artifacts
    );
    let out = engine
        .read_artifact_bytes(done.id, &main[0].name)
        .await
        .expect("artifact");
    (done, out)
}

/// Runs a DRAW script (after `pload`) and returns what it printed.
fn draw(program: &Path, script: &str) -> String {
    let out = Command::new(program)
        .args([
            "-b",
            "-c",
            &format!("pload MODELING DATAEXCHANGE; {script}"),
        ])
        .env_clear()
        .env("LC_ALL", "C")
        .output()
        .expect("occt-draw runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn reader(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()) {
        Some("step" | "stp") => "testreadstep",
        _ => "testreadiges",
    }
}

/// OpenCASCADE's own bounding box of the exact shape (not of a triangulation).
fn engine_bbox(program: &Path, file: &Path) -> [f64; 6] {
    let printed = draw(
        program,
        &format!(
            "{} {{{}}} s; puts \"BBOX [bounding s -optimal -noTriangulation]\"",
            reader(file),
            file.display()
        ),
    );
    let line = printed
        .lines()
        .find_map(|l| l.strip_prefix("BBOX "))
        .unwrap_or_else(|| panic!("no bounding box for {}: {printed}", file.display()));
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse().expect("a number"))
        .collect();
    v.try_into().expect("six numbers")
}

/// The face count OpenCASCADE reads from a file.
fn engine_faces(program: &Path, file: &Path) -> usize {
    let printed = draw(
        program,
        &format!(
            "{} {{{}}} s; puts [nbshapes s]",
            reader(file),
            file.display()
        ),
    );
    printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("FACE"))
        .and_then(|rest| rest.trim_start_matches([' ', ':']).trim().parse().ok())
        .unwrap_or_else(|| panic!("no face count for {}: {printed}", file.display()))
}

/// A binary STL's triangle count and the bounding box of its vertices.
fn stl_bbox(stl: &[u8]) -> (usize, [f64; 6]) {
    assert!(stl.len() >= 84, "not a binary STL");
    let count = u32::from_le_bytes([stl[80], stl[81], stl[82], stl[83]]) as usize;
    assert_eq!(stl.len(), 84 + count * 50, "binary STL size");
    let mut b = [f64::MAX, f64::MAX, f64::MAX, f64::MIN, f64::MIN, f64::MIN];
    for t in 0..count {
        let tri = &stl[84 + t * 50..84 + t * 50 + 50];
        for v in 0..3 {
            for axis in 0..3 {
                let at = 12 + v * 12 + axis * 4;
                let x = f64::from(f32::from_le_bytes([
                    tri[at],
                    tri[at + 1],
                    tri[at + 2],
                    tri[at + 3],
                ]));
                b[axis] = b[axis].min(x);
                b[axis + 3] = b[axis + 3].max(x);
            }
        }
    }
    (count, b)
}

fn diagonal(b: &[f64; 6]) -> f64 {
    ((b[3] - b[0]).powi(2) + (b[4] - b[1]).powi(2) + (b[5] - b[2]).powi(2)).sqrt()
}

/// Mesh vertices lie on the surface, and no point of the surface is farther than the linear
/// deflection from the mesh: each side of the boxes agrees within the deflection, plus the
/// float32 rounding of STL coordinates.
fn assert_bbox_matches(file: &Path, mesh: &[f64; 6], exact: &[f64; 6], deflection: f64) {
    let tolerance = deflection + 1e-6 * diagonal(exact);
    for i in 0..6 {
        assert!(
            (mesh[i] - exact[i]).abs() <= tolerance,
            "{}: side {i} of the mesh's box is {} where OpenCASCADE says {} (tolerance {tolerance}); mesh {mesh:?}, exact {exact:?}",
            file.display(),
            mesh[i],
            exact[i]
        );
    }
}

/// Parts the engine writes itself: a cylinder and a box-with-a-hole, as STEP and IGES.
fn engine_written_parts(program: &Path, dir: &Path) -> Vec<PathBuf> {
    let cylinder = dir.join("cylinder.step");
    let holed = dir.join("holed-box.iges");
    draw(
        program,
        &format!(
            "pcylinder c 12.5 40; stepwrite a c {{{}}}; box b -20 -15 0 40 30 10; pcylinder h 6 10; bcut hb b h; brepiges hb {{{}}}",
            cylinder.display(),
            holed.display()
        ),
    );
    for f in [&cylinder, &holed] {
        assert!(f.is_file(), "occt-draw did not write {}", f.display());
    }
    vec![cylinder, holed]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_and_iges_parts_tessellate_to_the_engines_bounding_box() {
    let Some(program) = engine_program() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(&program);
    let workers = engine.start_workers();
    let mut parts = samples();
    parts.extend(engine_written_parts(&program, dir.path()));
    for part in &parts {
        let exact = engine_bbox(&program, part);
        let deflection = diagonal(&exact) * 0.002;
        let (_, stl) = convert(
            &engine,
            part,
            "stl",
            json!({"linear_deflection": deflection, "angular_deflection": 15}),
        )
        .await;
        let (triangles, mesh) = stl_bbox(&stl);
        assert!(triangles > 10, "{}: {triangles} triangles", part.display());
        assert_bbox_matches(part, &mesh, &exact, deflection);
        // With the defaults (no options) too.
        let (_, stl) = convert(&engine, part, "stl", Value::Null).await;
        let (_, mesh) = stl_bbox(&stl);
        assert_bbox_matches(part, &mesh, &exact, diagonal(&exact) * 0.001);
    }
    workers.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finer_deflection_gives_more_triangles() {
    let Some(program) = engine_program() else {
        return;
    };
    let engine = engine(&program);
    let workers = engine.start_workers();
    let part = Path::new(SAMPLES).join("step/screw.step");
    let (_, coarse) = convert(
        &engine,
        &part,
        "stl",
        json!({"linear_deflection": 1.0, "angular_deflection": 45}),
    )
    .await;
    let (_, fine) = convert(
        &engine,
        &part,
        "stl",
        json!({"linear_deflection": 0.01, "angular_deflection": 5}),
    )
    .await;
    let (coarse, _) = stl_bbox(&coarse);
    let (fine, _) = stl_bbox(&fine);
    assert!(fine > coarse * 2, "fine {fine} vs coarse {coarse}");
    workers.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshes_become_faceted_step_and_iges_with_one_face_per_triangle() {
    let Some(program) = engine_program() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(&program);
    let workers = engine.start_workers();
    let part = Path::new(SAMPLES).join("step/screw.step");
    let (_, stl) = convert(
        &engine,
        &part,
        "stl",
        json!({"linear_deflection": 0.2, "angular_deflection": 30}),
    )
    .await;
    let (triangles, _) = stl_bbox(&stl);
    let stl_path = dir.path().join("screw.stl");
    std::fs::write(&stl_path, &stl).expect("write");
    for target in ["step", "iges"] {
        let (_, written) = convert(&engine, &stl_path, target, Value::Null).await;
        let back = dir.path().join(format!("faceted.{target}"));
        std::fs::write(&back, &written).expect("write");
        assert_eq!(
            engine_faces(&program, &back),
            triangles,
            "{target}: faces read back"
        );
    }
    // A written STEP file is detected as STEP by its content.
    let (_, step) = convert(&engine, &stl_path, "step", Value::Null).await;
    assert_eq!(
        Format::sniff(&step[..step.len().min(64)]).map(|f| f.to_string()),
        Some("step".into())
    );
    workers.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_to_obj_chains_through_stl_with_one_artifact() {
    let Some(program) = engine_program() else {
        return;
    };
    let engine = engine(&program);
    let workers = engine.start_workers();
    let part = Path::new(SAMPLES).join("iges/hammer.iges");
    let exact = engine_bbox(&program, &part);
    let deflection = diagonal(&exact) * 0.002;
    let (_, obj) = convert(
        &engine,
        &part,
        "obj",
        json!({"linear_deflection": deflection}),
    )
    .await;
    let text = String::from_utf8_lossy(&obj);
    let mut b = [f64::MAX, f64::MAX, f64::MAX, f64::MIN, f64::MIN, f64::MIN];
    let mut vertices = 0;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("v") {
            continue;
        }
        vertices += 1;
        for (axis, w) in words.take(3).enumerate() {
            let x: f64 = w.parse().expect("a coordinate");
            b[axis] = b[axis].min(x);
            b[axis + 3] = b[axis + 3].max(x);
        }
    }
    assert!(vertices > 10, "{vertices} vertices");
    assert_bbox_matches(&part, &b, &exact, deflection);
    workers.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_and_iges_translate_into_each_other_exactly() {
    let Some(program) = engine_program() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(&program);
    let workers = engine.start_workers();
    for (part, target) in [
        (Path::new(SAMPLES).join("step/screw.step"), "iges"),
        (Path::new(SAMPLES).join("iges/hammer.iges"), "step"),
    ] {
        let (_, written) = convert(&engine, &part, target, Value::Null).await;
        let back = dir.path().join(format!("translated.{target}"));
        std::fs::write(&back, &written).expect("write");
        assert_eq!(
            engine_faces(&program, &back),
            engine_faces(&program, &part),
            "{}",
            part.display()
        );
    }
    workers.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_and_bad_files_are_refused_clearly() {
    let Some(program) = engine_program() else {
        return;
    };
    let engine = engine(&program);
    let workers = engine.start_workers();
    let part = || {
        SubmitInput::bytes(
            Bytes::from_static(b"ISO-10303-21;\nHEADER;\nthis is no STEP file\n"),
            Some("broken.step".into()),
        )
    };
    for options in [
        json!({"linear_deflection": 0}),
        json!({"linear_deflection": "fine"}),
        json!({"angular_deflection": 120}),
        json!({"quality": "high"}),
    ] {
        let refused = engine
            .submit(
                Submission::new(Format::new("stl").expect("f"), part()).options(options.clone()),
            )
            .await;
        assert!(
            matches!(refused, Err(EngineError::InvalidOptions(_))),
            "{options}: {refused:?}"
        );
    }
    let submitted = engine
        .submit(Submission::new(Format::new("stl").expect("f"), part()))
        .await
        .expect("submit");
    let done = engine.wait(submitted.conversion.id).await.expect("wait");
    assert_eq!(done.status, Status::Failed);
    let error = done.error.expect("error");
    assert_eq!(error.code, "no_output", "{error:?}");
    assert!(error.message.contains("error"), "{error:?}");
    assert!(done.artifacts.is_empty());

    // A deflection far below the part's size would ask for an unbounded mesh: refused by the
    // route with the smallest it accepts, before any tessellation.
    let screw = samples()
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "screw.step"))
        .expect("occt-misc's screw.step");
    let submitted = engine
        .submit(
            Submission::new(
                Format::new("stl").expect("f"),
                SubmitInput::bytes(
                    std::fs::read(&screw).expect("read"),
                    Some("screw.step".into()),
                ),
            )
            .options(json!({"linear_deflection": 0.000001})),
        )
        .await
        .expect("submit");
    let done = engine.wait(submitted.conversion.id).await.expect("wait");
    assert_eq!(done.status, Status::Failed);
    let error = done.error.expect("error");
    assert!(error.message.contains("too fine"), "{error:?}");
    workers.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_long_cad_conversion_stops_it_promptly() {
    use futures::StreamExt;
    let Some(program) = engine_program() else {
        return;
    };
    let engine = engine(&program);
    let workers = engine.start_workers();
    // About 26,000 triangles, each to become a face: far longer than the test waits.
    let big = std::fs::read(Path::new(SAMPLES).join("stl/bearing.stl")).expect("sample mesh");
    let submitted = engine
        .submit(Submission::new(
            Format::new("step").expect("f"),
            SubmitInput::bytes(big, Some("bearing.stl".into())),
        ))
        .await
        .expect("submit");
    let id = submitted.conversion.id;
    let mut events = engine.watch(id).await.expect("watch");
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(e) = events.next().await {
            if matches!(e, converto_core::Event::Progress { .. }) {
                return;
            }
        }
    })
    .await
    .expect("occt-draw reported progress");
    let started = std::time::Instant::now();
    engine.cancel(id).await.expect("cancel");
    let done = engine.wait(id).await.expect("wait");
    assert_eq!(done.status, Status::Cancelled);
    // With one worker slot, the next conversion runs only once occt-draw is killed and the
    // converter has returned.
    let next = engine
        .submit(Submission::new(
            Format::new("stl").expect("f"),
            SubmitInput::bytes(
                std::fs::read(Path::new(SAMPLES).join("step/screw.step")).expect("part"),
                Some("screw.step".into()),
            ),
        ))
        .await
        .expect("submit");
    let after = engine.wait(next.conversion.id).await.expect("wait");
    assert_eq!(after.status, Status::Succeeded, "{after:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "cancelling took {:?}",
        started.elapsed()
    );
    workers.shutdown().await.expect("shutdown");
}
