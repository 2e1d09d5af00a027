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
//! Every file ends with an HMAC-SHA256 tag under a key kept *outside* the
//! directory (by default the file `<dir>.key` beside it, made on first use,
//! readable by the owner only). A bundle is loaded only if its tag verifies
//! and the id inside it is the id asked for, which is also checked against
//! the ledger: a file copied under another name, or a directory copied to a
//! server with another key, is refused. Running a bundle twice would reuse
//! its garbling offset Δ and masks, which reveals the weights (server side)
//! or the input (client side).
//!
//! What the store cannot see: a backup of the directory *and its ledger*
//! restored on the same machine with the same key. Do not back the
//! directory up; bundles are cheap to make again.
//!
//! The files hold secrets (masks, OT keys, wire labels): keep the directory
//! and the key as private as a key.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use delphi_net::FixedProgram;

use crate::error::{EngineError, Result, StoreProblem};
use crate::protocol::{ClientBundle, ServerBundle};

const LEDGER: &str = "used-ids";
const TAG: usize = 32;

type Tagger = Hmac<Sha256>;

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
#[derive(Clone)]
pub struct BundleStore {
    dir: PathBuf,
    side: Side,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for BundleStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleStore")
            .field("dir", &self.dir)
            .field("side", &self.side)
            .finish_non_exhaustive()
    }
}

/// Writes what passes through it and feeds it to the MAC.
struct Tagging<W> {
    inner: W,
    mac: Tagger,
}

impl<W: Write> Write for Tagging<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.mac.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The key file of a store in `dir`, by default: `<dir>.key` beside it.
pub fn default_key_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "bundles".into());
    name.push(".key");
    match dir.parent() {
        Some(p) => p.join(name),
        None => PathBuf::from(name),
    }
}

/// Reads the store key at `path`, making a fresh one (OS randomness, owner
/// read/write only) if there is none.
fn load_or_make_key(path: &Path) -> Result<Zeroizing<[u8; 32]>> {
    let mut key = Zeroizing::new([0u8; 32]);
    match File::open(path) {
        Ok(mut f) => {
            let mut text = Zeroizing::new(String::new());
            Read::by_ref(&mut f)
                .take(200)
                .read_to_string(&mut text)
                .map_err(|e| io_err(path, e))?;
            let bytes = parse_key_hex(text.trim())
                .ok_or_else(|| io_err(path, "not a bundle-store key (64 hex digits)"))?;
            *key = bytes;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            rand::rngs::OsRng.fill_bytes(&mut key[..]);
            let mut opts = OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = match opts.open(path) {
                Ok(f) => f,
                // Another process made it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return load_or_make_key(path)
                }
                Err(e) => return Err(io_err(path, e)),
            };
            let text = Zeroizing::new(key.iter().map(|b| format!("{b:02x}")).collect::<String>());
            writeln!(f, "{}", text.as_str()).map_err(|e| io_err(path, e))?;
            f.sync_all().map_err(|e| io_err(path, e))?;
        }
        Err(e) => return Err(io_err(path, e)),
    }
    Ok(key)
}

fn parse_key_hex(s: &str) -> Option<[u8; 32]> {
    let lo = parse_hex(s.get(..32)?)?;
    let hi = parse_hex(s.get(32..)?)?;
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&lo);
    k[16..].copy_from_slice(&hi);
    Some(k)
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

fn io_err(path: &Path, e: impl Into<StoreProblem>) -> EngineError {
    EngineError::Store { path: path.to_path_buf(), problem: e.into() }
}

impl BundleStore {
    /// Opens (creating if needed) the store in `dir` for `side`, with its
    /// key in [`default_key_path`].
    pub fn open(dir: impl Into<PathBuf>, side: Side) -> Result<Self> {
        let dir = dir.into();
        let key = default_key_path(&dir);
        Self::open_with_key(dir, side, &key)
    }

    /// Opens (creating if needed) the store in `dir` for `side`, with its
    /// MAC key in the file `key` (made if absent), which must not be inside
    /// `dir`.
    pub fn open_with_key(dir: impl Into<PathBuf>, side: Side, key: &Path) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let canon_dir = fs::canonicalize(&dir).map_err(|e| io_err(&dir, e))?;
        let key_parent =
            key.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let canon_key = fs::canonicalize(key_parent).map_err(|e| io_err(key, e))?;
        if canon_key.starts_with(&canon_dir) {
            return Err(io_err(key, "the key must be kept outside the bundle directory"));
        }
        let key = load_or_make_key(key)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| io_err(&dir, e))?;
        }
        Ok(BundleStore { dir, side, key })
    }

    /// Bytes the stored bundles take on disk.
    pub fn disk_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for entry in fs::read_dir(&self.dir).map_err(|e| io_err(&self.dir, e))? {
            let entry = entry.map_err(|e| io_err(&self.dir, e))?;
            total += entry.metadata().map_err(|e| io_err(&entry.path(), e))?.len();
        }
        Ok(total)
    }

    fn tagger(&self) -> Tagger {
        // HMAC takes keys of any length; 32 bytes never fails.
        <Tagger as Mac>::new_from_slice(&self.key[..]).unwrap_or_else(|_| unreachable!())
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
        f: impl FnOnce(&mut Tagging<BufWriter<File>>) -> Result<()>,
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
        let mut w = Tagging { inner: BufWriter::with_capacity(1 << 20, file), mac: self.tagger() };
        let written = f(&mut w).and_then(|()| {
            let tag = w.mac.finalize().into_bytes();
            let mut inner = w.inner;
            inner.write_all(&tag).map_err(|e| io_err(&tmp, e))?;
            let file = inner.into_inner().map_err(|e| io_err(&tmp, e.into_error()))?;
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

    /// Checks the tag of the file at `path` (streaming, without holding it);
    /// returns the length of the bundle before the tag.
    fn verify(&self, path: &Path) -> Result<u64> {
        let mut file = File::open(path).map_err(|e| io_err(path, e))?;
        let len = file.metadata().map_err(|e| io_err(path, e))?.len();
        let body = len.checked_sub(TAG as u64).ok_or_else(|| io_err(path, StoreProblem::Forged))?;
        let mut mac = self.tagger();
        let mut buf = vec![0u8; 1 << 20];
        let mut left = body;
        while left > 0 {
            let n = (left.min(buf.len() as u64)) as usize;
            file.read_exact(&mut buf[..n]).map_err(|e| io_err(path, e))?;
            mac.update(&buf[..n]);
            left -= n as u64;
        }
        let mut tag = [0u8; TAG];
        file.read_exact(&mut tag).map_err(|e| io_err(path, e))?;
        mac.verify_slice(&tag).map_err(|_| io_err(path, StoreProblem::Forged))?;
        Ok(body)
    }

    fn take<T>(
        &self,
        id: &[u8; 16],
        load: impl FnOnce(std::io::Take<BufReader<File>>) -> Result<T>,
        inner_id: impl FnOnce(&T) -> [u8; 16],
    ) -> Result<T> {
        if self.used()?.contains(id) {
            return Err(delphi_crypto::Error::BundleConsumed.into());
        }
        let path = self.path(id);
        let taken = path.with_extension("taken");
        fs::rename(&path, &taken).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                io_err(&path, "no such bundle (already taken, or never stored here)")
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
        let out = self.verify(&taken).and_then(|body| {
            let file = File::open(&taken).map_err(|e| io_err(&taken, e))?;
            let b = load(BufReader::with_capacity(1 << 20, file).take(body))?;
            if inner_id(&b) != *id {
                return Err(io_err(&path, StoreProblem::WrongId));
            }
            Ok(b)
        });
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
        self.take(id, |r| ClientBundle::load(prog, r), ClientBundle::id)
    }

    /// Takes (loads and removes, once and for all) a server bundle.
    pub fn take_server(&self, prog: &FixedProgram, id: &[u8; 16]) -> Result<ServerBundle> {
        self.expect(Side::Server)?;
        self.take(id, |r| ServerBundle::load(prog, r), ServerBundle::id)
    }

    fn expect(&self, side: Side) -> Result<()> {
        if self.side != side {
            return Err(io_err(&self.dir, format!("this store holds {:?} bundles", self.side)));
        }
        Ok(())
    }
}
