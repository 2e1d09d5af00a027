//! Additive secret sharing over the field: x = x_c + x_s mod p.

use std::fmt;

use rand::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::field::F;

/// One party's additive share of a field element.
///
/// A share on its own is uniformly random and reveals nothing; it is still
/// treated as a secret: no printing `Debug`, zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Share(F);

impl Share {
    /// Wraps a field element as a share.
    pub fn new(v: F) -> Self {
        Share(v)
    }

    /// The share's value (the caller takes responsibility for its secrecy).
    pub fn value(&self) -> F {
        self.0
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share").finish_non_exhaustive()
    }
}

/// Splits `x` into two uniformly random shares `(client, server)`.
pub fn share<R: RngCore + CryptoRng + ?Sized>(x: F, rng: &mut R) -> (Share, Share) {
    let r = F::random(rng);
    (Share(x - r), Share(r))
}

/// Recombines two shares.
pub fn reconstruct(a: &Share, b: &Share) -> F {
    a.0 + b.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn shares_recombine_and_do_not_print() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        for _ in 0..1000 {
            let x = F::random(&mut rng);
            let (a, b) = share(x, &mut rng);
            assert_eq!(reconstruct(&a, &b), x);
            assert!(!format!("{a:?}").contains(&a.value().to_string()));
        }
    }
}
