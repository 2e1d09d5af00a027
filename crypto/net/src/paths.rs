//! Where the toolkit's default files live, resolved in one place so that
//! the binaries work from any directory.
//!
//! The results folder (the committed cost model `cost-model.json`, run
//! folders under `plan/` and `plan-bench/`, benchmark figures under
//! `bench/`) is, in order:
//! 1. `$DELPHI_RESULTS`, when set;
//! 2. `results/` of the checkout the running binary belongs to (a binary at
//!    `<checkout>/target/<profile>/delphi` finds `<checkout>/results`);
//! 3. `results/` in the current directory.
//!
//! A path given on the command line or in a file is used as written
//! (relative to the current directory); only defaults come from here.

use std::path::{Path, PathBuf};

/// The environment variable that names the results folder.
pub const RESULTS_ENV: &str = "DELPHI_RESULTS";

/// The results folder (see the module docs for the order).
pub fn results_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(RESULTS_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| checkout_of(&exe))
        .map(|c| c.join("results"))
        .unwrap_or_else(|| PathBuf::from("results"))
}

/// The checkout holding a binary: the nearest ancestor (at most four levels
/// up, which covers `target/<triple>/<profile>/deps`) with both a
/// `Cargo.toml` and a `results/` folder.
fn checkout_of(exe: &Path) -> Option<PathBuf> {
    exe.ancestors()
        .skip(1)
        .take(5)
        .find(|d| d.join("Cargo.toml").is_file() && d.join("results").is_dir())
        .map(Path::to_path_buf)
}

/// A file or folder inside the results folder.
pub fn results_path(rel: impl AsRef<Path>) -> PathBuf {
    results_dir().join(rel)
}

/// The default cost model: `<results>/cost-model.json`.
pub fn default_cost_model() -> PathBuf {
    results_path("cost-model.json")
}

/// The environment variable that makes the binaries parse their command
/// line and stop (exit 0 when it parses): how `.ci/doc-commands` checks
/// that every documented command still matches the binaries.
pub const CHECK_ARGS_ENV: &str = "DELPHI_CHECK_ARGS";

/// Whether [`CHECK_ARGS_ENV`] is set (to anything but empty or `0`).
pub fn check_args_only() -> bool {
    std::env::var_os(CHECK_ARGS_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_in_a_checkout_finds_its_results() {
        let root = std::env::temp_dir().join(format!("delphi-paths-{}", std::process::id()));
        let bin = root.join("target/release");
        std::fs::create_dir_all(&bin).expect("folders");
        std::fs::create_dir_all(root.join("results")).expect("folders");
        std::fs::write(root.join("Cargo.toml"), "").expect("file");
        assert_eq!(checkout_of(&bin.join("delphi")), Some(root.clone()));
        assert_eq!(checkout_of(&std::env::temp_dir().join("x/delphi")), None);
        std::fs::remove_dir_all(&root).ok();
    }
}
