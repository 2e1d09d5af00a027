//! A tiny search end to end through `delphi-plan`, killed after its first
//! interval and resumed by rerunning the same command.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

fn plan_cmd(out: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_delphi-plan"));
    c.args([
        "--dataset",
        "fashion-mnist",
        "--accuracy",
        "0.6",
        "--population",
        "2",
        "--epochs",
        "2",
        "--base-epochs",
        "1",
        "--intervals-per-epoch",
        "2",
        "--train-limit",
        "1500",
        "--valid-size",
        "500",
        "--test-limit",
        "500",
        "--quiet",
        "--out",
    ])
    .arg(out)
    // The model calibrated on this project's reference machine (a real
    // measurement; calibration itself is tested in delphi-cost-calibrate).
    .arg("--cost-model")
    .arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../results/cost-model.json"
    ));
    c
}

#[test]
fn a_tiny_search_survives_a_kill_and_produces_a_plan() {
    let out = std::env::temp_dir().join(format!("delphi-plan-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);

    // Start, wait for the first saved interval, kill.
    let mut child = plan_cmd(&out)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = out.join("state.json");
    let t = Instant::now();
    while !state.is_file() {
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "no interval finished in 10 minutes"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("delphi-plan ended before it could be killed: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let lineage_before = std::fs::read_to_string(out.join("lineage.log")).unwrap_or_default();

    // Rerun the same command: it resumes and finishes.
    let done = plan_cmd(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    assert!(stderr.contains("resuming after interval"), "{stderr}");

    for f in [
        "plan.json",
        "members.csv",
        "pareto.csv",
        "pareto.parquet",
        "pareto.svg",
        "lineage.log",
        "summary.md",
        "summary.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // Every evaluation is a row: 2 members × 4 intervals.
    let members = std::fs::read_to_string(out.join("members.csv")).unwrap();
    assert_eq!(members.lines().count(), 1 + 2 * 4, "{members}");
    // The lineage is append-only: what was there before the kill is still there.
    let lineage = std::fs::read_to_string(out.join("lineage.log")).unwrap();
    assert!(lineage.starts_with(&lineage_before));
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("resumed from a saved state"), "{summary}");

    // The plan is a valid description the protocol runs: `delphi verify`
    // (built by `cargo test --workspace`) checks it against the reference.
    let delphi = std::path::Path::new(env!("CARGO_BIN_EXE_delphi-plan")).with_file_name("delphi");
    assert!(
        delphi.is_file(),
        "build the `delphi` binary (cargo test --workspace)"
    );
    let v = Command::new(&delphi)
        .args(["verify", "--json", "--plan"])
        .arg(out.join("plan.json"))
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let v: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(v["same_class"], 1, "{v}");
    std::fs::remove_dir_all(&out).ok();
}
