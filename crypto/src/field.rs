//! Prime fields of word size, as a backend type plus a zero-sized configuration.
//!
//! The protocol's field is [`F`] with modulus p = 2061584302081 = 15·2^37 + 1
//! (41 bits). p ≡ 1 mod 2·8192, so BFV with N = 8192 can batch over it.
//!
//! Arithmetic is branch-free: additions use masked corrections and
//! multiplications a Barrett reduction, so the running time does not depend
//! on the (possibly secret) operands.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Add, AddAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use rand::{CryptoRng, Rng, RngCore};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::DefaultIsZeroes;

/// A prime modulus below 2^62 and its Barrett constants.
pub trait FieldConfig:
    'static + Copy + Send + Sync + Default + fmt::Debug + PartialEq + Eq + std::hash::Hash
{
    /// The prime modulus; must be odd, prime, and below 2^62.
    const MODULUS: u64;
    /// Bit length of the modulus.
    const BITS: u32 = 64 - Self::MODULUS.leading_zeros();
    /// floor(2^(2·BITS) / MODULUS), for Barrett reduction.
    const MU: u128 = (1u128 << (2 * Self::BITS)) / Self::MODULUS as u128;
}

/// The DELPHI field: p = 2061584302081 = 15·2^37 + 1.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Hash)]
pub struct DelphiField;

impl FieldConfig for DelphiField {
    const MODULUS: u64 = 2_061_584_302_081;
}

/// An element of the prime field defined by `C`, always kept reduced.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Fp<C: FieldConfig>(u64, PhantomData<C>);

/// The protocol's field.
pub type F = Fp<DelphiField>;

/// The protocol's modulus p.
pub const P: u64 = DelphiField::MODULUS;

/// (p − 1) / 2: field values at or above it are read as negative.
pub const HALF: u64 = (P - 1) / 2;

/// Returns `x - m` if `x >= m`, else `x`, without a branch (x < 2m < 2^63).
#[inline(always)]
fn csub(x: u64, m: u64) -> u64 {
    let t = x.wrapping_sub(m);
    // The top bit of t is set exactly when x < m.
    let mask = ((t as i64) >> 63) as u64;
    t.wrapping_add(m & mask)
}

impl<C: FieldConfig> Fp<C> {
    /// The modulus.
    pub const MODULUS: u64 = C::MODULUS;
    /// Zero.
    pub const ZERO: Self = Fp(0, PhantomData);
    /// One.
    pub const ONE: Self = Fp(1, PhantomData);

    /// Reduces `x < MODULUS^2` in constant time (Barrett).
    #[inline(always)]
    fn reduce_wide(x: u128) -> Self {
        let k = C::BITS;
        let q = ((x >> (k - 1)) * C::MU) >> (k + 1);
        let r = (x - q * C::MODULUS as u128) as u64;
        // Barrett's estimate is short by at most two multiples of the modulus.
        Fp(csub(csub(r, C::MODULUS), C::MODULUS), PhantomData)
    }

    /// The element congruent to `x` (constant time for moduli of 32 bits
    /// or more, where any u64 is below the modulus squared).
    #[inline]
    pub fn from_u64(x: u64) -> Self {
        if 2 * C::BITS >= 64 {
            Self::reduce_wide(x as u128)
        } else {
            Fp(x % C::MODULUS, PhantomData)
        }
    }

    /// The element congruent to a 128-bit value (used to map hashes onto the field).
    #[inline]
    pub fn from_u128(x: u128) -> Self {
        const R: u128 = 1 << 64;
        let hi = Self::from_u64((x >> 64) as u64);
        let lo = Self::from_u64(x as u64);
        hi * Self::from_u64((R % C::MODULUS as u128) as u64) + lo
    }

    /// The element congruent to a signed integer.
    #[inline]
    pub fn from_i64(x: i64) -> Self {
        let m = Self::from_u64(x.unsigned_abs());
        if x < 0 {
            -m
        } else {
            m
        }
    }

    /// Wraps a value already below the modulus, or `None`.
    #[inline]
    pub fn new(x: u64) -> Option<Self> {
        (x < C::MODULUS).then_some(Fp(x, PhantomData))
    }

    /// The canonical representative in `[0, MODULUS)`.
    #[inline]
    pub fn value(self) -> u64 {
        self.0
    }

    /// The signed reading used by the protocol: values at or above
    /// (p − 1)/2 are negative, so the range is [−(p+1)/2, (p−1)/2 − 1].
    #[inline]
    pub fn to_signed(self) -> i64 {
        if self.0 >= (C::MODULUS - 1) / 2 {
            self.0 as i64 - C::MODULUS as i64
        } else {
            self.0 as i64
        }
    }

    /// A uniformly random element (rejection sampling, no modular bias).
    pub fn random<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mask = (1u64 << C::BITS) - 1;
        loop {
            let x = rng.gen::<u64>() & mask;
            if x < C::MODULUS {
                return Fp(x, PhantomData);
            }
        }
    }

    /// `self^e` by square and multiply (constant time in `self`, not in `e`).
    pub fn pow(self, mut e: u64) -> Self {
        let mut base = self;
        let mut acc = Self::ONE;
        while e > 0 {
            if e & 1 == 1 {
                acc *= base;
            }
            base *= base;
            e >>= 1;
        }
        acc
    }

    /// The multiplicative inverse, or `None` for zero.
    pub fn inverse(self) -> Option<Self> {
        (self.0 != 0).then(|| self.pow(C::MODULUS - 2))
    }

    /// Bit `i` of the canonical representative.
    #[inline]
    pub fn bit(self, i: u32) -> bool {
        (self.0 >> i) & 1 == 1
    }
}

impl<C: FieldConfig> Default for Fp<C> {
    fn default() -> Self {
        Self::ZERO
    }
}

/// Redacted: field elements are shares, masks and keys as often as public
/// values, and a `{:?}` in a log or a panic message must not print them.
/// Print a public value with `Display` (`{}`) on purpose.
impl<C: FieldConfig> fmt::Debug for Fp<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fp(..)")
    }
}

impl<C: FieldConfig> fmt::Display for Fp<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<C: FieldConfig> Add for Fp<C> {
    type Output = Self;
    #[inline(always)]
    fn add(self, rhs: Self) -> Self {
        Fp(csub(self.0 + rhs.0, C::MODULUS), PhantomData)
    }
}

impl<C: FieldConfig> Sub for Fp<C> {
    type Output = Self;
    #[inline(always)]
    fn sub(self, rhs: Self) -> Self {
        Fp(csub(self.0 + C::MODULUS - rhs.0, C::MODULUS), PhantomData)
    }
}

impl<C: FieldConfig> Neg for Fp<C> {
    type Output = Self;
    #[inline(always)]
    fn neg(self) -> Self {
        Self::ZERO - self
    }
}

impl<C: FieldConfig> Mul for Fp<C> {
    type Output = Self;
    #[inline(always)]
    fn mul(self, rhs: Self) -> Self {
        Self::reduce_wide(self.0 as u128 * rhs.0 as u128)
    }
}

impl<C: FieldConfig> AddAssign for Fp<C> {
    #[inline(always)]
    fn add_assign(&mut self, rhs: Self) {
        *self = *self + rhs;
    }
}

impl<C: FieldConfig> SubAssign for Fp<C> {
    #[inline(always)]
    fn sub_assign(&mut self, rhs: Self) {
        *self = *self - rhs;
    }
}

impl<C: FieldConfig> MulAssign for Fp<C> {
    #[inline(always)]
    fn mul_assign(&mut self, rhs: Self) {
        *self = *self * rhs;
    }
}

impl<C: FieldConfig> std::iter::Sum for Fp<C> {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::ZERO, |a, b| a + b)
    }
}

impl<C: FieldConfig> ConstantTimeEq for Fp<C> {
    fn ct_eq(&self, other: &Self) -> Choice {
        self.0.ct_eq(&other.0)
    }
}

impl<C: FieldConfig> ConditionallySelectable for Fp<C> {
    fn conditional_select(a: &Self, b: &Self, choice: Choice) -> Self {
        Fp(u64::conditional_select(&a.0, &b.0, choice), PhantomData)
    }
}

impl<C: FieldConfig> DefaultIsZeroes for Fp<C> {}

/// The field axioms as a reusable property-test suite.
///
/// `field_axioms!(module_name, FieldType)` expands to a test module checking
/// associativity, commutativity, identities, inverses, distributivity and the
/// agreement of the reduction with a plain `%` reference.
#[macro_export]
macro_rules! field_axioms {
    ($name:ident, $field:ty) => {
        mod $name {
            use super::*;
            use proptest::prelude::*;
            type T = $field;
            const M: u64 = <T>::MODULUS;

            fn el() -> impl Strategy<Value = T> {
                prop_oneof![
                    (0..M).prop_map(|x| T::new(x).unwrap()),
                    prop::sample::select(vec![0, 1, 2, M - 1, M - 2, M / 2, M / 2 + 1])
                        .prop_map(|x| T::new(x).unwrap()),
                ]
            }

            proptest! {
                #[test]
                fn add_assoc_comm(a in el(), b in el(), c in el()) {
                    prop_assert_eq!((a + b) + c, a + (b + c));
                    prop_assert_eq!(a + b, b + a);
                }
                #[test]
                fn mul_assoc_comm(a in el(), b in el(), c in el()) {
                    prop_assert_eq!((a * b) * c, a * (b * c));
                    prop_assert_eq!(a * b, b * a);
                }
                #[test]
                fn identities(a in el()) {
                    prop_assert_eq!(a + T::ZERO, a);
                    prop_assert_eq!(a * T::ONE, a);
                    prop_assert_eq!(a * T::ZERO, T::ZERO);
                }
                #[test]
                fn inverses(a in el()) {
                    prop_assert_eq!(a + (-a), T::ZERO);
                    prop_assert_eq!(a - a, T::ZERO);
                    if a != T::ZERO {
                        prop_assert_eq!(a * a.inverse().unwrap(), T::ONE);
                    } else {
                        prop_assert!(a.inverse().is_none());
                    }
                }
                #[test]
                fn distributive(a in el(), b in el(), c in el()) {
                    prop_assert_eq!(a * (b + c), a * b + a * c);
                }
                #[test]
                fn matches_reference(a in el(), b in el(), x in any::<u64>(), w in any::<u128>()) {
                    let m = M as u128;
                    prop_assert_eq!((a * b).value() as u128, a.value() as u128 * b.value() as u128 % m);
                    prop_assert_eq!((a + b).value() as u128, (a.value() as u128 + b.value() as u128) % m);
                    prop_assert_eq!(T::from_u64(x).value() as u128, x as u128 % m);
                    prop_assert_eq!(T::from_u128(w).value() as u128, w % m);
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_does_not_print_the_value() {
        let x = F::from_u64(1_234_567);
        assert!(!format!("{x:?}").contains("1234567"));
        assert!(!format!("{:?}", vec![x]).contains("1234567"));
        assert_eq!(x.to_string(), "1234567");
    }

    use super::*;

    /// A second configuration, to show the suite is generic.
    #[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Hash)]
    struct Fermat4;
    impl FieldConfig for Fermat4 {
        const MODULUS: u64 = 65537;
    }

    crate::field_axioms!(delphi_field, F);
    crate::field_axioms!(fermat_field, Fp<Fermat4>);

    #[test]
    fn modulus_has_the_promised_shape() {
        assert_eq!(P, 15 * (1 << 37) + 1);
        assert_eq!(DelphiField::BITS, 41);
        assert_eq!((P - 1) % (2 * 8192), 0);
        // p is prime: a Fermat witness check for several bases.
        for g in [2u64, 3, 5, 7, 11, 13] {
            assert_eq!(F::from_u64(g).pow(P - 1), F::ONE);
        }
    }

    #[test]
    fn signed_reading_follows_the_protocol_convention() {
        assert_eq!(F::from_u64(HALF - 1).to_signed(), HALF as i64 - 1);
        assert_eq!(F::from_u64(HALF).to_signed(), HALF as i64 - P as i64);
        assert_eq!(F::from_i64(-5).to_signed(), -5);
        assert_eq!(F::from_i64(-5).value(), P - 5);
    }
}
