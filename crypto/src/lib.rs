//! The DELPHI protocol engine's core: the prime field and fixed point,
//! additive shares, channels, oblivious transfer, half-gates garbling and the
//! ReLU layer protocol and faithful truncation.
//!
//! Security model: semi-honest two-party. The client (evaluator) learns the
//! prediction; the server (garbler) learns nothing.

pub mod aesni;
pub mod alloc;
pub mod bench;
pub mod block;
pub mod channel;
pub mod codec;
pub mod error;
pub mod field;
pub mod fixed;
pub mod garbled;
pub mod gc;
pub mod ot;
pub mod relu;
pub mod share;
pub mod spool;
pub mod trunc;

pub use error::{Error, Result};

/// Implements `len` and `is_empty` for bundles that count their items in a
/// field `n` (`$what` names the items in the docs).
macro_rules! impl_bundle_len {
    ($what:literal: $($t:ty),+) => {
        $(impl $t {
            #[doc = concat!("Number of ", $what, " in the bundle.")]
            pub fn len(&self) -> usize {
                self.n
            }

            #[doc = concat!("Whether the bundle holds no ", $what, " (never true for a built bundle).")]
            pub fn is_empty(&self) -> bool {
                self.n == 0
            }
        })+
    };
}
pub use field::F;
pub(crate) use impl_bundle_len;

/// A redacting `Debug` for types that hold secrets: the type's name and
/// the public fields listed (`shown_as: field`), then `..` for the rest.
macro_rules! redacted_debug {
    ($($t:ident { $($name:ident: $field:ident),* }),+ $(,)?) => {
        $(impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    $(.field(stringify!($name), &self.$field))*
                    .finish_non_exhaustive()
            }
        })+
    };
}
pub(crate) use redacted_debug;
