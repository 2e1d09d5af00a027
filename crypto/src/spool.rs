//! Preprocessed material kept on disk and streamed back, so that a client's
//! memory does not grow with the network.
//!
//! A client's offline bundle is mostly garbled material it only reads once,
//! in order, in the online phase: the garbled tables, its input labels and
//! the output conversions (1.27 GB for an all-ReLU ResNet-32). A [`Spool`]
//! is one temporary file per bundle that holds it instead of memory:
//!
//! - the file is created in a directory the caller names, owner read/write
//!   only, and unlinked at once: nothing is left behind when the process
//!   ends, however it ends, and no other process can open it by name;
//! - each piece of material ([`Stash`]) is a region of it, starting on a page
//!   boundary, written as it arrives from the peer (no copy of the whole
//!   piece is ever held);
//! - the online phase maps a region read-only ([`StashView`]), asks the
//!   kernel to read ahead and populate each chunk before it is evaluated,
//!   and drops each chunk's pages from the process once it is used. The data
//!   stays in the page cache, which the kernel may evict to disk under
//!   pressure; the process's resident memory holds one chunk at a time.
//!
//! What a spool costs: disk space equal to the material (freed when the
//! bundle is dropped) and, when the page cache has been evicted, a read from
//! disk during the online phase. What it does not do: overwrite the blocks
//! it used — the material is the client's own (the same secrets a bundle
//! store writes, `delphi_engine::store`), and a spool lives no longer than
//! its bundle. Put the directory on an encrypted disk where that matters.

use std::fs::{File, OpenOptions};
use std::marker::PhantomData;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand::RngCore;
use zeroize::Zeroize;

use crate::block::Block;
use crate::error::{Error, Result};
use crate::field::F;

/// Regions start on this boundary (a page: what `mmap` maps from).
const PAGE: u64 = 4096;

/// Bytes written to the file at a time while a stash fills from an iterator.
const WRITE_CHUNK: usize = 1 << 20;

/// Items stored as their raw little-endian bytes.
///
/// # Safety
/// Every byte pattern of `size_of::<Self>()` bytes must be a value of the
/// type (no padding, no invalid representations), and its alignment at most
/// [`PAGE`].
pub unsafe trait Raw: Copy + Default + Zeroize + Send + Sync + 'static {}

// SAFETY: Block is repr(transparent) over u128: no padding, every bit
// pattern valid, alignment 16.
unsafe impl Raw for Block {}
// SAFETY: F is repr(transparent) over u64 (its marker is zero-sized): every
// bit pattern is a u64. A value not below the modulus breaks arithmetic, not
// memory safety, and a spool only holds values this process wrote.
unsafe impl Raw for F {}

fn as_bytes<T: Raw>(xs: &[T]) -> &[u8] {
    // SAFETY: T: Raw has no padding, so its bytes are initialised; u8 has
    // alignment 1.
    unsafe { std::slice::from_raw_parts(xs.as_ptr().cast::<u8>(), std::mem::size_of_val(xs)) }
}

fn spool_err(dir: &Path, e: std::io::Error) -> Error {
    Error::Spool { dir: dir.to_path_buf(), source: e }
}

struct SpoolFile {
    file: File,
    dir: PathBuf,
}

/// One bundle's material on disk: a temporary file, unlinked as soon as it
/// is made, that regions are reserved in.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<SpoolFile>,
    /// The next free offset (page aligned).
    next: Arc<Mutex<u64>>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.inner.dir)
            .field("bytes", &self.bytes())
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// A new spool file in `dir` (which must exist).
    pub fn create(dir: &Path) -> Result<Spool> {
        let mut name = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut name);
        let path = dir.join(format!(
            ".delphi-spool-{}",
            name.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ));
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let file = opts.open(&path).map_err(|e| spool_err(dir, e))?;
        // Unlinked at once: the file lives as long as this descriptor.
        std::fs::remove_file(&path).map_err(|e| spool_err(dir, e))?;
        Ok(Spool {
            inner: Arc::new(SpoolFile { file, dir: dir.to_path_buf() }),
            next: Arc::new(Mutex::new(0)),
        })
    }

    /// Bytes reserved so far (the file's size once every region is written).
    pub fn bytes(&self) -> u64 {
        *self.next.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `bytes` at a page boundary; returns the region's offset.
    fn reserve(&self, bytes: u64) -> u64 {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let at = *next;
        *next = (at + bytes).next_multiple_of(PAGE);
        at
    }

    fn write_at(&self, bytes: &[u8], at: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.inner.file.write_all_at(bytes, at).map_err(|e| spool_err(&self.inner.dir, e))
    }
}

/// A piece of material: in memory, or a region of a [`Spool`].
pub struct Stash<T: Raw> {
    len: usize,
    at: Place<T>,
}

enum Place<T> {
    Memory(Vec<T>),
    Disk { spool: Spool, offset: u64 },
}

impl<T: Raw> Zeroize for Stash<T> {
    /// Wipes the material held in memory (a spool's region is released with
    /// its file; see the module's docs).
    fn zeroize(&mut self) {
        if let Place::Memory(v) = &mut self.at {
            // Taken out first: wiped once (the owner's wipe and this
            // drop's do not both go over the capacity), then freed.
            std::mem::take(v).zeroize();
        }
    }
}

impl<T: Raw> Drop for Stash<T> {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl<T: Raw> std::fmt::Debug for Stash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stash")
            .field("len", &self.len)
            .field("on_disk", &self.on_disk())
            .finish_non_exhaustive()
    }
}

impl<T: Raw> Stash<T> {
    /// Material held in memory.
    pub fn memory(v: Vec<T>) -> Stash<T> {
        Stash { len: v.len(), at: Place::Memory(v) }
    }

    /// `v` written to `spool` (and wiped from memory), or kept as it is
    /// without one.
    pub fn keep(mut v: Vec<T>, spool: Option<&Spool>) -> Result<Stash<T>> {
        let Some(spool) = spool else { return Ok(Stash::memory(v)) };
        let len = v.len();
        let offset = spool.reserve(std::mem::size_of_val(v.as_slice()) as u64);
        let written = spool.write_at(as_bytes(&v), offset);
        v.zeroize();
        written?;
        Ok(Stash { len, at: Place::Disk { spool: spool.clone(), offset } })
    }

    /// Items in it.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether it lives in a spool.
    pub fn on_disk(&self) -> bool {
        matches!(self.at, Place::Disk { .. })
    }

    /// A view to read it through, in order.
    pub fn view(&self) -> Result<StashView<'_, T>> {
        let (spool, offset) = match &self.at {
            Place::Memory(v) => {
                return Ok(StashView { at: ViewAt::Memory(v), released: 0, _t: PhantomData })
            }
            Place::Disk { spool, offset } => (spool, offset),
        };
        if self.len == 0 {
            return Ok(StashView { at: ViewAt::Memory(&[]), released: 0, _t: PhantomData });
        }
        let bytes = self.len * std::mem::size_of::<T>();
        // SAFETY: the file is unlinked and only this process holds it; the
        // region was written in full before this view exists and is never
        // written again, so the mapped bytes do not change under the slice.
        let map = unsafe {
            memmap2::MmapOptions::new().offset(*offset).len(bytes).map(&spool.inner.file)
        }
        .map_err(|e| spool_err(&spool.inner.dir, e))?;
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(StashView { at: ViewAt::Disk(map), released: 0, _t: PhantomData })
    }

    /// Calls `f` on the material in order, a piece at a time (for writing
    /// it elsewhere without holding it).
    pub fn for_each_piece(&self, mut f: impl FnMut(&[T]) -> Result<()>) -> Result<()> {
        let mut view = self.view()?;
        let step = (WRITE_CHUNK / std::mem::size_of::<T>()).max(1);
        let mut start = 0;
        while start < self.len {
            let end = (start + step).min(self.len);
            view.prepare(start..end);
            f(view.get(start..end))?;
            view.done(end);
            start = end;
        }
        Ok(())
    }
}

/// Fills a [`Stash`] of a known length piece by piece, as material arrives.
pub struct StashBuilder<T: Raw> {
    len: usize,
    filled: usize,
    at: BuildAt<T>,
}

enum BuildAt<T> {
    Memory(Vec<T>),
    Disk { spool: Spool, offset: u64, buf: Vec<T> },
}

impl<T: Raw> StashBuilder<T> {
    /// A builder of `len` items, in `spool` if given, else in memory.
    pub fn new(len: usize, spool: Option<&Spool>) -> StashBuilder<T> {
        let at = match spool {
            None => BuildAt::Memory(Vec::with_capacity(len.min(1 << 20))),
            Some(s) => BuildAt::Disk {
                spool: s.clone(),
                offset: s.reserve((len * std::mem::size_of::<T>()) as u64),
                buf: Vec::new(),
            },
        };
        StashBuilder { len, filled: 0, at }
    }

    /// Appends `k` items that `fill` writes into the slice it is given.
    pub fn fill(&mut self, k: usize, fill: impl FnOnce(&mut [T]) -> Result<()>) -> Result<()> {
        if self.filled + k > self.len {
            return Err(Error::InvalidArgument(format!(
                "{} items into a stash of {}",
                self.filled + k,
                self.len
            )));
        }
        match &mut self.at {
            BuildAt::Memory(v) => {
                v.resize(self.filled + k, T::default());
                fill(&mut v[self.filled..])?;
            }
            BuildAt::Disk { spool, offset, buf } => {
                buf.clear();
                buf.resize(k, T::default());
                fill(buf)?;
                let at = *offset + (self.filled * std::mem::size_of::<T>()) as u64;
                spool.write_at(as_bytes(buf), at)?;
            }
        }
        self.filled += k;
        Ok(())
    }

    /// The finished stash; every item must have been filled.
    pub fn finish(mut self) -> Result<Stash<T>> {
        if self.filled != self.len {
            return Err(Error::InvalidArgument(format!(
                "a stash of {} items finished with {}",
                self.len, self.filled
            )));
        }
        Ok(match std::mem::replace(&mut self.at, BuildAt::Memory(Vec::new())) {
            BuildAt::Memory(v) => Stash::memory(v),
            BuildAt::Disk { spool, offset, .. } => {
                Stash { len: self.len, at: Place::Disk { spool, offset } }
            }
        })
    }
}

impl<T: Raw> Drop for StashBuilder<T> {
    fn drop(&mut self) {
        match &mut self.at {
            BuildAt::Memory(v) | BuildAt::Disk { buf: v, .. } => v.zeroize(),
        }
    }
}

/// Reads a [`Stash`] in order: a slice of memory, or a read-only mapping of
/// its region whose used pages are handed back as reading moves on.
pub struct StashView<'a, T> {
    at: ViewAt<'a, T>,
    /// Bytes at the start of a mapping already handed back.
    released: usize,
    _t: PhantomData<T>,
}

enum ViewAt<'a, T> {
    Memory(&'a [T]),
    Disk(memmap2::Mmap),
}

impl<T: Raw> StashView<'_, T> {
    /// Items `range`.
    pub fn get(&self, range: Range<usize>) -> &[T] {
        match &self.at {
            ViewAt::Memory(v) => &v[range],
            ViewAt::Disk(map) => {
                let all: &[T] = {
                    let len = map.len() / std::mem::size_of::<T>();
                    // SAFETY: the mapping starts on a page boundary (aligned
                    // for any T: Raw), holds `len` whole items written by
                    // this process, and every byte pattern is a valid T.
                    unsafe { std::slice::from_raw_parts(map.as_ptr().cast::<T>(), len) }
                };
                &all[range]
            }
        }
    }

    /// Asks the kernel to read `range` in and map it now (one call instead
    /// of a fault per page); a no-op in memory or where unsupported.
    pub fn prepare(&self, range: Range<usize>) {
        if let ViewAt::Disk(map) = &self.at {
            let size = std::mem::size_of::<T>();
            let start = (range.start * size) as u64 / PAGE * PAGE;
            let end = (range.end * size).min(map.len());
            if end as u64 > start {
                let (start, len) = (start as usize, end - start as usize);
                if map.advise_range(memmap2::Advice::PopulateRead, start, len).is_err() {
                    let _ = map.advise_range(memmap2::Advice::WillNeed, start, len);
                }
            }
        }
    }

    /// Hands back the pages of every item before `end` (they are not read
    /// again): the process's resident memory no longer counts them.
    pub fn done(&mut self, end: usize) {
        if let ViewAt::Disk(map) = &self.at {
            let upto = ((end * std::mem::size_of::<T>()) as u64 / PAGE * PAGE) as usize;
            let upto = if end * std::mem::size_of::<T>() >= map.len() { map.len() } else { upto };
            if upto > self.released {
                // SAFETY: a shared read-only file mapping: MADV_DONTNEED
                // drops the pages from this process, and a later read
                // would fault them in again from the file, unchanged. No
                // slice into the range outlives this call's caller's use.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        self.released,
                        upto - self.released,
                    )
                };
                self.released = upto;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        std::env::temp_dir()
    }

    #[test]
    fn a_spooled_stash_reads_back_what_was_written() {
        let spool = Spool::create(&dir()).unwrap();
        let n = 70_001;
        let mut b = StashBuilder::<Block>::new(n, Some(&spool));
        let mut next = 0u128;
        while next < n as u128 {
            let k = 4_099.min(n - next as usize);
            b.fill(k, |s| {
                for (j, x) in s.iter_mut().enumerate() {
                    *x = Block(next + j as u128 * 3);
                }
                Ok(())
            })
            .unwrap();
            next += k as u128;
        }
        let s = b.finish().unwrap();
        assert!(s.on_disk());
        let f = Stash::keep((0..1000u64).map(|x| F::new(x * 7).unwrap()).collect(), Some(&spool))
            .unwrap();
        assert_eq!(spool.bytes() % PAGE, 0);
        let mut v = s.view().unwrap();
        for start in (0..n).step_by(1000) {
            let end = (start + 1000).min(n);
            v.prepare(start..end);
            let got = v.get(start..end);
            assert_eq!(got[0], Block(start as u128 + (start as u128 % 4_099) * 2), "{start}");
            v.done(end);
        }
        let fv = f.view().unwrap();
        assert_eq!(fv.get(999..1000)[0], F::new(6993).unwrap());
    }
}
