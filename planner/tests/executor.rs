//! The executors give the same search: a tiny search run in this process,
//! by two local worker processes (one of them killed mid-unit) and on a
//! Ray cluster (a worker killed there too) writes the same members.csv —
//! every evaluation's accuracy and cost equal — and the same plan, and the
//! lineage log says which units were retried.
//!
//! The Ray cluster is the one `DELPHI_TEST_RAY` names ("ADDRESS PYTHON", as
//! `.ci/ray start` prints; `.ci/run` starts one), else one this test starts
//! with `.ci/ray` (which installs Ray from PyPI into target/ray-venv).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ARGS: &str = "--dataset fashion-mnist --accuracy 0.6 --population 4 --epochs 2 \
                    --halve-at 0.25 --base-epochs 1 --intervals-per-epoch 2 --train-limit 1500 \
                    --valid-size 500 --test-limit 500 --quiet";

fn plan(out: &Path, extra: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_delphi-plan"))
        .args(ARGS.split_whitespace())
        .arg("--cost-model")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../results/cost-model.json"))
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    err
}

/// PIDs of `delphi-plan step` processes working for the run in `out`.
fn step_processes(out: &Path) -> Vec<u32> {
    let needle = out.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<String> =
            cmd.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().any(|a| a == "step") && args.iter().any(|a| a.contains(&needle)) {
            pids.push(pid);
        }
    }
    pids
}

/// Kills the first worker seen working for `out` (SIGKILL, mid-unit);
/// the returned flag says whether one was killed.
fn kill_one_worker(out: PathBuf, done: Arc<AtomicBool>) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || {
        while !done.load(Ordering::SeqCst) {
            if let Some(&pid) = step_processes(&out).first() {
                // Let it get into its training first.
                std::thread::sleep(Duration::from_millis(300));
                let ok = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    })
}

/// Runs the search with `extra` flags while a worker is killed; checks it
/// matches `reference` and says it retried.
fn matches_reference_despite_a_kill(root: &Path, name: &str, extra: &[&str], reference: &str) {
    let out = root.join(name);
    std::fs::create_dir_all(&out).unwrap();
    copy_dir(&root.join("inline/base"), &out.join("base"));
    let done = Arc::new(AtomicBool::new(false));
    let killer = kill_one_worker(out.clone(), done.clone());
    let said = plan(&out, extra);
    done.store(true, Ordering::SeqCst);
    assert!(killer.join().unwrap(), "{name}: no worker was seen to kill");
    let members = std::fs::read_to_string(out.join("members.csv")).unwrap();
    assert_eq!(members, reference, "{name}: another search than in this process");
    let lineage = std::fs::read_to_string(out.join("lineage.log")).unwrap();
    assert!(lineage.contains("\"retried\""), "{name}: {lineage}");
    assert!(said.contains("retried"), "{name}: {said}");
    assert_eq!(
        std::fs::read(out.join("plan.json")).unwrap(),
        std::fs::read(root.join("inline/plan.json")).unwrap(),
        "{name}: another plan"
    );
    // Nothing of the units is left behind.
    assert!(!out.join("units").exists(), "{name}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// A Ray cluster: `DELPHI_TEST_RAY`'s, else one started here (stopped on drop).
struct Ray {
    address: String,
    python: String,
    dir: Option<PathBuf>,
}

impl Ray {
    fn get(root: &Path) -> Ray {
        if let Ok(v) = std::env::var("DELPHI_TEST_RAY") {
            let (a, p) = v.split_once(' ').expect("DELPHI_TEST_RAY is \"ADDRESS PYTHON\"");
            return Ray { address: a.into(), python: p.into(), dir: None };
        }
        let dir = root.join("ray");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/ray");
        let o = Command::new(script).arg("start").arg(&dir).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let (a, p) = v.split_once(' ').unwrap();
        Ray { address: a.into(), python: p.into(), dir: Some(dir) }
    }
}

impl Drop for Ray {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/ray");
            let _ = Command::new(script).arg("stop").arg(d).status();
        }
    }
}

#[test]
fn every_executor_gives_the_same_search_and_survives_a_killed_worker() {
    let root = std::env::temp_dir().join(format!("delphi-exec-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let root = root.canonicalize().unwrap();

    // The reference: every unit in this process.
    plan(&root.join("inline"), &["--workers", "1"]);
    let reference = std::fs::read_to_string(root.join("inline/members.csv")).unwrap();
    // The base, 4 members for one interval, 2 survivors for 6 more.
    assert_eq!(reference.lines().count(), 1 + 1 + 4 + 2 * 6, "{reference}");

    matches_reference_despite_a_kill(&root, "local-2", &["--workers", "2"], &reference);

    let ray = Ray::get(&root);
    matches_reference_despite_a_kill(
        &root,
        "ray",
        &["--executor", "ray", "--ray-address", &ray.address, "--ray-python", &ray.python],
        &reference,
    );
    drop(ray);
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_ray_executor_without_a_cluster_is_refused_by_name() {
    let out = std::env::temp_dir().join(format!("delphi-exec-noray-{}", std::process::id()));
    let o = Command::new(env!("CARGO_BIN_EXE_delphi-plan"))
        .args(ARGS.split_whitespace())
        .args(["--executor", "ray", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--ray-address"), "{err}");
    // A Python without Ray: the driver's own error comes back.
    let o = Command::new(env!("CARGO_BIN_EXE_delphi-plan"))
        .args(ARGS.split_whitespace())
        .args(["--executor", "ray", "--ray-address", "127.0.0.1:1", "--ray-python", "/bin/false"])
        .arg("--cost-model")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../results/cost-model.json"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Ray driver"), "{err}");
    std::fs::remove_dir_all(&out).ok();
}

/// Runs `delphi-plan step --unit dir`, checks that it fails, and returns its stderr.
fn step_fails(dir: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_delphi-plan"))
        .args(["step", "--unit"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(!o.status.success());
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_unit_from_another_build_is_refused_by_name() {
    let dir = std::env::temp_dir().join(format!("delphi-unit-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("unit.json"), r#"{"format":"delphi-plan unit","version":99}"#).unwrap();
    let err = step_fails(&dir);
    assert!(err.contains("unit.json") && err.contains("version 99 (this build reads"), "{err}");
    std::fs::write(dir.join("unit.json"), "x".repeat(5 << 20)).unwrap();
    let err = step_fails(&dir);
    assert!(err.contains("larger than"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_greedy_rule_s_probes_run_as_units_with_the_same_result() {
    let root = std::env::temp_dir().join(format!("delphi-exec-greedy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let one = root.join("one");
    plan(&one, &["--strategy", "greedy", "--workers", "1"]);
    let two = root.join("two");
    std::fs::create_dir_all(&two).unwrap();
    copy_dir(&one.join("base"), &two.join("base"));
    plan(&two, &["--strategy", "greedy", "--workers", "2"]);
    let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    assert_eq!(read(&one, "members.csv"), read(&two, "members.csv"));
    // The probes were units: three of the first round, on two workers.
    let units = read(&two, "units.csv");
    let probes = units.lines().filter(|l| l.contains("round 1 probe layer")).count();
    assert_eq!(probes, 3, "{units}");
    assert!(units.contains("2 local worker processes"), "{units}");
    std::fs::remove_dir_all(&root).ok();
}
