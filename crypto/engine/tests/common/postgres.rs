//! A PostgreSQL for the ledger tests: `DELPHI_TEST_POSTGRES` (connection
//! settings of a running server, as `.ci/run` exports them), else a private
//! cluster started here with `.ci/postgres` and stopped when the guard
//! drops. Without PostgreSQL installed the tests fail, saying so.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// A server to test against; stops a cluster it started.
pub struct Pg {
    pub settings: String,
    started: Option<PathBuf>,
}

fn script() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.ci/postgres"))
}

impl Pg {
    pub fn get(tag: &str) -> Pg {
        if let Ok(s) = std::env::var("DELPHI_TEST_POSTGRES") {
            return Pg { settings: s, started: None };
        }
        let dir = std::env::temp_dir().join(format!("delphi-pg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(script()).arg("start").arg(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "these tests need PostgreSQL (apt-get install postgresql, or set \
             DELPHI_TEST_POSTGRES): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let settings = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Pg { settings, started: Some(dir) }
    }

    /// Settings for a database of its own, made now.
    pub fn fresh_db(&self) -> String {
        let name = format!("t{:016x}", rand::random::<u64>());
        let mut c = postgres::Client::connect(&self.settings, postgres::NoTls).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        format!("{} dbname={name}", self.settings)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(dir) = self.started.take() {
            let _ = Command::new(script()).arg("stop").arg(&dir).status();
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
