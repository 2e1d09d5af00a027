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
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use delphi_net::FixedProgram;

use crate::error::{EngineError, Result, StoreProblem};
use crate::ledger::{Claim, Ledger};
use crate::protocol::{ClientBundle, Material, ServerBundle};

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
    /// The shared ledger of replicas (a server's, with `--ledger`).
    ledger: Option<Arc<Ledger>>,
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
            // Written whole under a name of its own, then linked into
            // place: another process sees no key or the whole key, never
            // a half-written one; if it made one first, theirs is used.
            rand::rngs::OsRng.fill_bytes(&mut key[..]);
            let tmp = unique_name(path, "tmp");
            let mut opts = OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).map_err(|e| io_err(&tmp, e))?;
            let text = Zeroizing::new(key.iter().map(|b| format!("{b:02x}")).collect::<String>());
            let written = writeln!(f, "{}", text.as_str()).and_then(|()| f.sync_all());
            let linked = written.and_then(|()| fs::hard_link(&tmp, path));
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return load_or_make_key(path)
                }
                Err(e) => return Err(io_err(path, e)),
            }
        }
        Err(e) => return Err(io_err(path, e)),
    }
    Ok(key)
}

/// `<path>.<16 random hex digits>.<ext>`: a name no other writer or taker
/// shares.
fn unique_name(path: &Path, ext: &str) -> PathBuf {
    let mut r = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut r);
    let tag: String = r.iter().map(|b| format!("{b:02x}")).collect();
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{tag}.{ext}"));
    path.with_file_name(name)
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
        Ok(BundleStore { dir, side, key, ledger: None })
    }

    /// Keeps the ledger of this (server) store in PostgreSQL, shared by
    /// the replicas whose `dir` is this one ([`crate::ledger`]): limits,
    /// quotas and expiry count every replica's bundles, and each bundle is
    /// claimed by one replica only.
    pub fn with_ledger(mut self, ledger: Arc<Ledger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// The shared ledger, if any.
    pub fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_deref()
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

    /// The file names of stored bundles: `<id>.<side>.bundle`, or on a
    /// server `<id>.<owner>.server.bundle` (owner: 16 hex digits).
    fn entries(&self) -> Result<Vec<Entry>> {
        let mut found = Vec::new();
        let suffix = format!(".{}", self.side.suffix());
        for entry in fs::read_dir(&self.dir).map_err(|e| io_err(&self.dir, e))? {
            let entry = entry.map_err(|e| io_err(&self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name.strip_suffix(&suffix) else { continue };
            let (id, owner) = match stem.split_once('.') {
                Some((id, owner))
                    if owner.len() == 16 && owner.bytes().all(|c| c.is_ascii_hexdigit()) =>
                {
                    (id, Some(owner.to_string()))
                }
                Some(_) => continue,
                None => (stem, None),
            };
            let Some(id) = parse_hex(id) else { continue };
            let meta = match entry.metadata() {
                Ok(m) => m,
                // Taken by another worker or process meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&entry.path(), e)),
            };
            let modified = meta.modified().map_err(|e| io_err(&entry.path(), e))?;
            found.push(Entry { id, owner, path: entry.path(), modified, bytes: meta.len() });
        }
        found.sort_by(|a, b| a.modified.cmp(&b.modified).then(a.id.cmp(&b.id)));
        Ok(found)
    }

    /// Ids of the stored bundles, oldest first.
    pub fn ids(&self) -> Result<Vec<[u8; 16]>> {
        Ok(self.entries()?.into_iter().map(|e| e.id).collect())
    }

    /// Number of stored bundles.
    pub fn len(&self) -> Result<usize> {
        Ok(self.entries()?.len())
    }

    /// Whether the store holds no bundle.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Deletes the bundles stored longer than `ttl` (a server's: their
    /// client has not come back for them) and reservations older than
    /// `stale` (a worker that died mid-phase); returns how many bundles
    /// went.
    pub fn evict(&self, ttl: Duration, stale: Duration) -> Result<usize> {
        let now = SystemTime::now();
        let old = |t: SystemTime, age: Duration| now.duration_since(t).is_ok_and(|a| a > age);
        let mut gone = 0;
        match &self.ledger {
            // The ledger says what expired (every replica's clock is the
            // database's).
            Some(l) => {
                let expired = l.expire()?;
                for e in self.entries()?.into_iter().filter(|e| expired.contains(&e.id)) {
                    if remove_if_there(&e.path)? {
                        gone += 1;
                    }
                }
            }
            None => {
                for e in self.entries()? {
                    if old(e.modified, ttl) && remove_if_there(&e.path)? {
                        gone += 1;
                    }
                }
            }
        }
        for r in self.reservations()? {
            if old(r.modified, stale) {
                remove_if_there(&r.path)?;
            }
        }
        Ok(gone)
    }

    fn reservations(&self) -> Result<Vec<Entry>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| io_err(&self.dir, e))? {
            let entry = entry.map_err(|e| io_err(&self.dir, e))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".reserved")) else {
                continue;
            };
            // r.<random>.<owner>.<bytes>
            let mut parts = stem.rsplitn(3, '.');
            let (Some(bytes), Some(owner)) = (parts.next(), parts.next()) else { continue };
            let (owner, bytes) = (owner.to_string(), bytes.parse::<u64>().unwrap_or(0));
            let modified = match entry.metadata().and_then(|m| m.modified()) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&entry.path(), e)),
            };
            found.push(Entry {
                id: [0; 16],
                owner: Some(owner),
                path: entry.path(),
                modified,
                bytes,
            });
        }
        Ok(found)
    }

    /// Reserves room for one server bundle of `owner` (a client's
    /// address; expected to take what the largest stored bundle takes on
    /// disk), before its offline phase
    /// runs: under the store's lock (one at a time across workers and
    /// processes), expired bundles are evicted and the limits checked
    /// counting every stored bundle *and* every reservation in flight, so
    /// concurrent workers cannot overshoot them. The reservation ends when
    /// the bundle is stored with it or when it is dropped.
    pub fn reserve(&self, owner: &str, limits: &StoreLimits) -> Result<Reservation> {
        // With a ledger the database's lock serialises reservations (a
        // file lock on shared storage may not hold across machines).
        let _lock = if self.ledger.is_none() { Some(self.lock()?) } else { None };
        self.evict(limits.ttl, limits.stale_reservation)?;
        let owner = owner_tag(owner);
        let (stored, reserved) = (self.entries()?, self.reservations()?);
        // A bundle is expected to take what the largest stored one takes.
        let bytes = stored.iter().map(|e| e.bytes).max().unwrap_or(0);
        if let Some(l) = &self.ledger {
            let mut id = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut id);
            let caps = (limits.bundles, limits.bytes, limits.per_owner);
            l.reserve(&id, &owner, bytes, caps, limits.ttl, limits.stale_reservation)?
                .map_err(EngineError::Refused)?;
            return Ok(Reservation {
                path: None,
                owner,
                ttl: limits.ttl,
                shared: Some((l.clone(), id)),
            });
        }
        let count = stored.len() + reserved.len();
        let held =
            stored.iter().map(|e| e.bytes).chain(reserved.iter().map(|r| r.bytes)).sum::<u64>();
        let mine =
            stored.iter().chain(&reserved).filter(|e| e.owner.as_deref() == Some(&owner)).count();
        if mine >= limits.per_owner {
            return Err(EngineError::Refused(format!(
                "this client holds {mine} unused bundles on the server, its quota \
                 (--max-bundles-per-client {}); use them first",
                limits.per_owner
            )));
        }
        if count >= limits.bundles || held.saturating_add(bytes) > limits.bytes {
            return Err(EngineError::Refused(format!(
                "the bundle store is full (at most {} bundles, {} MB; unused bundles expire \
                 after {} s)",
                limits.bundles,
                limits.bytes >> 20,
                limits.ttl.as_secs()
            )));
        }
        let path = unique_name(&self.dir.join("r"), &format!("{owner}.{bytes}.reserved"));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        Ok(Reservation { path: Some(path), owner, ttl: limits.ttl, shared: None })
    }

    /// Holds the store's lock (an exclusive `flock` on `<dir>/.lock`) while
    /// the guard lives.
    fn lock(&self) -> Result<StoreLock> {
        let path = self.dir.join(".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a descriptor this function owns; released by
            // close when the guard drops.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(io_err(&path, std::io::Error::last_os_error()));
            }
        }
        Ok(StoreLock { _file: f })
    }

    fn write(
        &self,
        name: &str,
        id: &[u8; 16],
        f: impl FnOnce(&mut Tagging<BufWriter<File>>) -> Result<()>,
    ) -> Result<()> {
        if self.used()?.contains(id) {
            return Err(delphi_crypto::Error::BundleConsumed.into());
        }
        let path = self.dir.join(name);
        // A name of its own: concurrent writers never share a temporary file.
        let tmp = unique_name(&path, "tmp");
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

    /// Checks the tag of `file` (streaming, from its start, without
    /// holding it); returns the length of the bundle before the tag.
    fn verify(&self, file: &mut File, path: &Path) -> Result<u64> {
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
        if let Some(l) = &self.ledger {
            // One replica claims it; the others find it consumed.
            match l.claim(id)? {
                Claim::Won => {}
                Claim::Consumed => return Err(delphi_crypto::Error::BundleConsumed.into()),
                Claim::Missing => {
                    return Err(io_err(
                        &self.dir.join(format!("{}.{}", hex(id), self.side.suffix())),
                        StoreProblem::Missing,
                    ))
                }
            }
        }
        let missing = || {
            io_err(
                &self.dir.join(format!("{}.{}", hex(id), self.side.suffix())),
                StoreProblem::Missing,
            )
        };
        let path = self.entries()?.into_iter().find(|e| e.id == *id).ok_or_else(missing)?.path;
        // A name of its own: two takers of one id never share it, and only
        // one of them wins the rename.
        let taken = unique_name(&path, "taken");
        fs::rename(&path, &taken).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                missing()
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
        // Verified and loaded through one descriptor: what is loaded is
        // what was verified, whatever happens to the name meanwhile.
        let out = File::open(&taken).map_err(|e| io_err(&taken, e)).and_then(|mut file| {
            let body = self.verify(&mut file, &taken)?;
            file.seek(SeekFrom::Start(0)).map_err(|e| io_err(&taken, e))?;
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
        let name = format!("{}.{}", hex(&b.id()), self.side.suffix());
        self.write(&name, &b.id(), |w| b.store(prog, w))
    }

    /// Stores a server bundle in the room `r` reserved for it (its owner's).
    pub fn put_server(
        &self,
        prog: &FixedProgram,
        b: &ServerBundle,
        mut r: Reservation,
    ) -> Result<()> {
        self.expect(Side::Server)?;
        let name = format!("{}.{}.{}", hex(&b.id()), r.owner, self.side.suffix());
        // The bundle is renamed into place before the reservation ends, so
        // the two are never both absent from the count.
        self.write(&name, &b.id(), |w| b.store(prog, w))?;
        if let Some((l, res)) = r.shared.take() {
            let bytes = fs::metadata(self.dir.join(&name)).map(|m| m.len()).unwrap_or(0);
            if let Err(e) = l.ready(&res, &b.id(), bytes, r.ttl) {
                let _ = fs::remove_file(self.dir.join(&name));
                let _ = l.release(&res);
                return Err(e);
            }
        }
        drop(r);
        Ok(())
    }

    /// Takes (loads and removes, once and for all) a client bundle.
    pub fn take_client(&self, prog: &FixedProgram, id: &[u8; 16]) -> Result<ClientBundle> {
        self.take_client_to(prog, id, &Material::Memory)
    }

    /// [`BundleStore::take_client`] keeping the garbled material where
    /// `material` says (read from the file a piece at a time).
    pub fn take_client_to(
        &self,
        prog: &FixedProgram,
        id: &[u8; 16],
        material: &Material,
    ) -> Result<ClientBundle> {
        self.expect(Side::Client)?;
        self.take(id, |r| ClientBundle::load_to(prog, r, material), ClientBundle::id)
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

/// What a server's bundle store allows.
#[derive(Clone, Debug)]
pub struct StoreLimits {
    /// Bundles held, reservations in flight included.
    pub bundles: usize,
    /// Bytes held on disk (reservations count what they expect).
    pub bytes: u64,
    /// Bundles one client (by address) may hold.
    pub per_owner: usize,
    /// How long an unused bundle is kept.
    pub ttl: Duration,
    /// How old a reservation is taken to be abandoned (its worker died).
    pub stale_reservation: Duration,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            bundles: 1000,
            bytes: 20 << 30,
            per_owner: 100,
            ttl: Duration::from_secs(24 * 3600),
            stale_reservation: Duration::from_secs(3600),
        }
    }
}

/// Room for one bundle, held from before an offline phase until the bundle
/// is stored ([`BundleStore::put_server`]) or the phase fails (dropped).
#[derive(Debug)]
pub struct Reservation {
    path: Option<PathBuf>,
    owner: String,
    ttl: Duration,
    /// With a shared ledger: it and the reservation's row.
    shared: Option<(Arc<Ledger>, [u8; 16])>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = fs::remove_file(p);
        }
        if let Some((l, id)) = self.shared.take() {
            let _ = l.release(&id);
        }
    }
}

struct StoreLock {
    _file: File,
}

/// A stored bundle (or a reservation) as the directory lists it.
struct Entry {
    id: [u8; 16],
    owner: Option<String>,
    path: PathBuf,
    modified: SystemTime,
    bytes: u64,
}

/// 16 hex digits naming an owner (a client's address) in file names.
fn owner_tag(owner: &str) -> String {
    use sha2::Digest;
    let d = Sha256::digest(owner.as_bytes());
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn remove_if_there(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path, e)),
    }
}
