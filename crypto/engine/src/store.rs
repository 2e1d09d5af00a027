//! Offline bundles on disk, each usable once even across processes.
//!
//! A store is a directory holding one file per bundle,
//! `<id>.client.bundle` or `<id>.server.bundle` (id: 32 hex digits, shared
//! by the two halves), written atomically (temporary file, then rename) and
//! readable by the owner only. Taking a bundle renames its file away first
//! (so two processes cannot both take it), records the id in the
//! append-only ledger `used-ids`, reads it and deletes it. A bundle whose id
//! is in the ledger is refused with [`delphi_crypto::Error::BundleConsumed`],
//! even if its file was copied back.
//!
//! The files hold secrets (masks, OT keys, wire labels): keep the directory
//! as private as a key.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use delphi_net::FixedProgram;

use crate::error::{EngineError, Result};
use crate::protocol::{ClientBundle, ServerBundle};

const LEDGER: &str = "used-ids";

/// Which party's bundles a store holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client's halves.
    Client,
    /// The server's halves.
    Server,
}

impl Side {
    fn suffix(self) -> &'static str {
        match self {
            Side::Client => "client.bundle",
            Side::Server => "server.bundle",
        }
    }
}

/// A directory of single-use bundles of one party.
#[derive(Debug, Clone)]
pub struct BundleStore {
    dir: PathBuf,
    side: Side,
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut id = [0u8; 16];
    for (k, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * k..2 * k + 2)?, 16).ok()?;
    }
    Some(id)
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Store {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl BundleStore {
    /// Opens (creating if needed) the store in `dir` for `side`.
    pub fn open(dir: impl Into<PathBuf>, side: Side) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| io_err(&dir, e))?;
        }
        Ok(BundleStore { dir, side })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &[u8; 16]) -> PathBuf {
        self.dir.join(format!("{}.{}", hex(id), self.side.suffix()))
    }

    /// Ids of the stored bundles, oldest first.
    pub fn ids(&self) -> Result<Vec<[u8; 16]>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| io_err(&self.dir, e))? {
            let entry = entry.map_err(|e| io_err(&self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name.strip_suffix(&format!(".{}", self.side.suffix())) else {
                continue;
            };
            let Some(id) = parse_hex(stem) else { continue };
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .map_err(|e| io_err(&entry.path(), e))?;
            found.push((modified, id));
        }
        found.sort();
        Ok(found.into_iter().map(|(_, id)| id).collect())
    }

    /// Number of stored bundles.
    pub fn len(&self) -> Result<usize> {
        Ok(self.ids()?.len())
    }

    /// Whether the store holds no bundle.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    fn write(
        &self,
        id: &[u8; 16],
        f: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
    ) -> Result<()> {
        if self.used()?.contains(id) {
            return Err(delphi_crypto::Error::BundleConsumed.into());
        }
        let tmp = self.dir.join(format!("{}.tmp", hex(id)));
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let file = opts.open(&tmp).map_err(|e| io_err(&tmp, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let written = f(&mut w).and_then(|()| {
            let file = w.into_inner().map_err(|e| io_err(&tmp, e.error()))?;
            file.sync_all().map_err(|e| io_err(&tmp, e))
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let path = self.path(id);
        fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))
    }

    fn used(&self) -> Result<Vec<[u8; 16]>> {
        let path = self.dir.join(LEDGER);
        match fs::read_to_string(&path) {
            Ok(s) => Ok(s.lines().filter_map(|l| parse_hex(l.trim())).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    fn take<T>(&self, id: &[u8; 16], load: impl FnOnce(BufReader<File>) -> Result<T>) -> Result<T> {
        if self.used()?.contains(id) {
            return Err(delphi_crypto::Error::BundleConsumed.into());
        }
        let path = self.path(id);
        let taken = path.with_extension("taken");
        fs::rename(&path, &taken).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                io_err(
                    &path,
                    "no such bundle (already taken, or never stored here)",
                )
            } else {
                io_err(&path, e)
            }
        })?;
        let ledger = self.dir.join(LEDGER);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&ledger)
            .map_err(|e| io_err(&ledger, e))?;
        writeln!(log, "{}", hex(id)).map_err(|e| io_err(&ledger, e))?;
        log.sync_all().map_err(|e| io_err(&ledger, e))?;
        let file = File::open(&taken).map_err(|e| io_err(&taken, e))?;
        let out = load(BufReader::with_capacity(1 << 20, file));
        let _ = fs::remove_file(&taken);
        out
    }

    /// Stores a client bundle.
    pub fn put_client(&self, prog: &FixedProgram, b: &ClientBundle) -> Result<()> {
        self.expect(Side::Client)?;
        self.write(&b.id(), |w| b.store(prog, w))
    }

    /// Stores a server bundle.
    pub fn put_server(&self, prog: &FixedProgram, b: &ServerBundle) -> Result<()> {
        self.expect(Side::Server)?;
        self.write(&b.id(), |w| b.store(prog, w))
    }

    /// Takes (loads and removes, once and for all) a client bundle.
    pub fn take_client(&self, prog: &FixedProgram, id: &[u8; 16]) -> Result<ClientBundle> {
        self.expect(Side::Client)?;
        self.take(id, |r| ClientBundle::load(prog, r))
    }

    /// Takes (loads and removes, once and for all) a server bundle.
    pub fn take_server(&self, prog: &FixedProgram, id: &[u8; 16]) -> Result<ServerBundle> {
        self.expect(Side::Server)?;
        self.take(id, |r| ServerBundle::load(prog, r))
    }

    fn expect(&self, side: Side) -> Result<()> {
        if self.side != side {
            return Err(io_err(
                &self.dir,
                format!("this store holds {:?} bundles", self.side),
            ));
        }
        Ok(())
    }
}
