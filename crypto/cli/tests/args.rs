//! `DELPHI_CHECK_ARGS=1` (what `.ci/doc-commands` uses to check the
//! documented commands): the command line is parsed, nothing runs, and a
//! command that does not parse still fails.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn check(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_delphi"))
        .args(args)
        .env("DELPHI_CHECK_ARGS", "1")
        .output()
        .unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn a_parsed_command_stops_before_it_runs_and_a_bad_one_fails() {
    let out = std::env::temp_dir().join(format!("delphi-args-{}.json", std::process::id()));
    let (ok, err) = check(&["export", "--arch", "small-cnn", "--out", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(!out.exists(), "the export ran");
    let (ok, err) = check(&["verify", "--plan", "p.json", "--bogus"]);
    assert!(!ok);
    assert!(err.contains("--bogus"), "{err}");
    let (ok, err) =
        check(&["cost", "predict", "--plan", "p.json", "--bandwidth", "100", "--rtt", "1ms"]);
    assert!(!ok);
    assert!(err.contains("no unit"), "{err}");
}
