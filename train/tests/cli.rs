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
    assert!(e.contains("'--lr <LR>'") && e.contains("must be positive"), "{e}");
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
            .args(["--test-limit", "200", "--quiet", "--epochs", epochs, "--out"])
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

#[test]
fn every_epoch_is_reported_and_checkpoints_never_straddle_an_epoch() {
    let out = std::env::temp_dir().join(format!("delphi-train-epochs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    // 640 images in batches of 64: 10 steps per epoch; a checkpoint every
    // 4 steps lands at 4, 8 and the epoch's end (10), never at 12 = 2 of
    // the next epoch, which would skip the epoch's report.
    let o = Command::new(env!("CARGO_BIN_EXE_delphi-train"))
        .args(["train", "--train-limit", "640", "--valid-size", "100"])
        .args(["--test-limit", "100", "--quiet", "--epochs", "3"])
        .args(["--checkpoint-every", "4", "--out"])
        .arg(&out)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{text}");
    for e in 1..=3 {
        assert!(text.contains(&format!("epoch {e}/3:")), "epoch {e}: {text}");
    }
    let state = std::fs::read_to_string(out.join("checkpoint/current/state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!((state["epoch"].as_u64(), state["step_in_epoch"].as_u64()), (Some(3), Some(0)));
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn bench_refuses_unknown_architectures_and_unrelated_references_before_timing() {
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_delphi-train"))
            .arg("bench")
            .args(args)
            .args(["--steps", "1", "--out"])
            .arg(std::env::temp_dir().join(format!("delphi-bench-{}.json", std::process::id())))
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = run(&["--archs", "small-cnn,nonet"]);
    assert!(e.contains("unknown architecture \"nonet\""), "{e}");
    let reference = std::env::temp_dir().join(format!("delphi-ref-{}.json", std::process::id()));
    std::fs::write(
        &reference,
        r#"{"framework": "x", "archs": [{"arch": "foo", "train_images_per_s": 1, "infer_images_per_s": 1}]}"#,
    )
    .unwrap();
    let e = run(&["--archs", "small-cnn", "--compare", reference.to_str().unwrap()]);
    assert!(e.contains("figures for none of small-cnn (it has foo)"), "{e}");
    std::fs::write(&reference, "not json").unwrap();
    let e = run(&["--compare", reference.to_str().unwrap()]);
    assert!(e.contains("is not a reference's figures"), "{e}");
    std::fs::remove_file(&reference).ok();
}
