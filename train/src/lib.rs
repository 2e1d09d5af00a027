//! Training for DELPHI plans: Burn models built from the shared network
//! description with ReLU or learnable quadratic activations, datasets,
//! float and fixed-point evaluation, export to the description the protocol
//! engine runs.

pub mod arch;
pub mod batch;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod disk;
pub mod error;
pub mod evaluate;
pub mod fast;
pub mod model;
pub mod progress;
pub mod train;

pub use config::TrainConfig;
pub use error::{Result, TrainError};
pub use train::Trainer;

/// Keeps training's large, short-lived tensors on the heap.
///
/// Every training step allocates and frees buffers of megabytes; glibc
/// serves those above its mmap threshold (128 KiB, adapting upward only on
/// frees) with fresh mappings, so each step paid page faults and TLB
/// shootdowns across the cores (14 % of a small-cnn profile in the kernel's
/// `native_write_msr` alone). Raising the threshold to glibc's maximum
/// (32 MiB) and keeping freed memory instead of trimming it removes that;
/// the binaries call this first. Elsewhere it does nothing.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any
    // thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
