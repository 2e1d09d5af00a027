//! A global allocator that backs large buffers with transparent huge pages.
//!
//! Preprocessed material (garbled tables, labels, masks) is large, written
//! once and read once; every byte of it lands on a freshly mapped page. With
//! 4 KiB pages each one costs a page fault, and inside a virtual machine a
//! fault is dear: on a 2-core AMD EPYC VM, touching 2 GB of fresh 4 KiB
//! pages took 1.8–3.0 s (0.84–1.40 ns/B), the same memory advised as 2 MiB
//! pages 0.18 s once the host had backed it (a C probe, `mmap` + one write
//! per page). Measured in one run there, a ResNet-32 `delphi verify` went
//! from 14.9–15.1 s offline and 0.84–0.89 s online to 14.5–14.6 s and
//! 0.75–0.77 s (SEAL's own allocations, most of the offline phase's
//! linear layers, do not pass through this allocator).
//!
//! [`HugePages`] wraps the system allocator and, for every allocation of at
//! least [`HUGE_MIN`] bytes, asks the kernel (`madvise(MADV_HUGEPAGE)`) to
//! back the 2 MiB-aligned part of it with huge pages. It changes nothing
//! else: the system allocator still owns and frees the memory, smaller
//! allocations are untouched, and where the kernel has transparent huge
//! pages off (`/sys/kernel/mm/transparent_hugepage/enabled` = `never`) or
//! the platform is not Linux, the advice is a no-op. The binaries install
//! it with
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: delphi_crypto::alloc::HugePages = delphi_crypto::alloc::HugePages;
//! ```
//!
//! A huge page commits 2 MiB at once, so an allocation's resident memory
//! can round up by at most 2 MiB at each end; allocations below
//! [`HUGE_MIN`] never do.

use std::alloc::{GlobalAlloc, Layout, System};

/// The smallest allocation advised to use huge pages (8 MiB: at least
/// three whole 2 MiB pages inside it, so rounding costs little).
pub const HUGE_MIN: usize = 8 << 20;

const HUGE_PAGE: usize = 2 << 20;

/// The system allocator, with huge pages for large allocations.
pub struct HugePages;

impl HugePages {
    /// Advises huge pages for the 2 MiB-aligned pages inside `[p, p + len)`.
    #[cfg(target_os = "linux")]
    fn advise(p: *mut u8, len: usize) {
        if p.is_null() || len < HUGE_MIN {
            return;
        }
        let start = (p as usize).next_multiple_of(HUGE_PAGE);
        let end = (p as usize + len) & !(HUGE_PAGE - 1);
        if end > start {
            // SAFETY: the range lies inside an allocation the system
            // allocator just returned to us; MADV_HUGEPAGE only changes how
            // the kernel backs it (contents are kept) and fails harmlessly
            // where huge pages are unavailable.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn advise(_p: *mut u8, _len: usize) {}
}

// SAFETY: every call is forwarded to `System` unchanged; `advise` only
// gives the kernel advice about memory `System` returned.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, passed on as is.
        let p = unsafe { System.alloc(layout) };
        Self::advise(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        Self::advise(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` through this allocator.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        Self::advise(p, new_size);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_small_allocations_keep_their_contents() {
        for len in [16, HUGE_MIN - 1, HUGE_MIN, HUGE_MIN + 12345, 3 * HUGE_MIN] {
            let layout = Layout::from_size_align(len, 64).unwrap();
            // SAFETY: the layout has a non-zero size; the memory is written
            // and read only inside it and freed with the same layout.
            unsafe {
                let p = HugePages.alloc_zeroed(layout);
                assert!(!p.is_null());
                let s = std::slice::from_raw_parts_mut(p, len);
                assert!(s.iter().all(|&b| b == 0));
                for (i, b) in s.iter_mut().enumerate() {
                    *b = i as u8;
                }
                let q = HugePages.realloc(p, layout, 2 * len);
                let s = std::slice::from_raw_parts(q, len);
                assert!(s.iter().enumerate().all(|(i, &b)| b == i as u8));
                HugePages.dealloc(q, Layout::from_size_align(2 * len, 64).unwrap());
            }
        }
    }
}
