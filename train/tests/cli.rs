//! `delphi-train` refuses mistakes by name before any work.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn refused(args: &[&str]) -> String {
    let out = std::env::temp_dir().join(format!("delphi-train-cli-{}", std::process::id()));
    let o = Command::new(env!("CARGO_BIN_EXE_delphi-train"))
        .arg("train")
        .args(args)
        .arg("--out")
        .arg(&out)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!o.status.success(), "{args:?} succeeded");
    assert!(!out.exists(), "a refused run left {}", out.display());
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn negative_rates_and_missing_files_are_named() {
    let e = refused(&["--lr", "-0.1"]);
    assert!(
        e.contains("'--lr <LR>'") && e.contains("must be positive"),
        "{e}"
    );
    let e = refused(&["--momentum", "1.5"]);
    assert!(e.contains("--momentum"), "{e}");
    let e = refused(&["--init", "/nonexistent/model.json"]);
    assert!(e.contains("--init /nonexistent/model.json"), "{e}");
    let e = refused(&["--teacher", "/nonexistent/teacher.json"]);
    assert!(e.contains("--teacher"), "{e}");
}

#[test]
fn a_finished_run_says_so_and_a_changed_one_names_the_change() {
    let out = std::env::temp_dir().join(format!("delphi-train-rerun-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = |epochs: &str| {
        Command::new(env!("CARGO_BIN_EXE_delphi-train"))
            .args(["train", "--train-limit", "500", "--valid-size", "100"])
            .args([
                "--test-limit",
                "200",
                "--quiet",
                "--epochs",
                epochs,
                "--out",
            ])
            .arg(&out)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    assert!(run("1").status.success());
    let again = run("1");
    let text = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success());
    assert!(text.contains("holds a finished run"), "{text}");
    assert!(!text.contains("resuming"), "{text}");
    let changed = run("2");
    let text = String::from_utf8_lossy(&changed.stderr);
    assert!(!changed.status.success());
    assert!(text.contains("epochs: 1 then, 2 now"), "{text}");
    std::fs::remove_dir_all(&out).ok();
}
