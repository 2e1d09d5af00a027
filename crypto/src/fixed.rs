//! Fixed-point encoding of reals into the field.
//!
//! A real x is stored as round(x · 2^f) mod p, with f fractional bits (DELPHI
//! used f = 8). The signed range follows [`F::to_signed`]: field values at or
//! above (p − 1)/2 are negative.

use crate::error::{Error, Result};
use crate::field::{F, HALF};

/// A fixed-point format: the number of fractional bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FixedPoint {
    frac_bits: u32,
}

impl FixedPoint {
    /// DELPHI's choice: 8 fractional bits.
    pub const DEFAULT: FixedPoint = FixedPoint { frac_bits: 8 };

    /// A format with `frac_bits` fractional bits (at most 30, so that a
    /// product of two encoded values still leaves room for the integer part).
    pub fn new(frac_bits: u32) -> Result<Self> {
        if frac_bits > 30 {
            return Err(Error::InvalidArgument(format!(
                "{frac_bits} fractional bits leave no room in a 41-bit field (at most 30)"
            )));
        }
        Ok(FixedPoint { frac_bits })
    }

    /// The number of fractional bits.
    pub fn frac_bits(self) -> u32 {
        self.frac_bits
    }

    /// The scale 2^f.
    pub fn scale(self) -> f64 {
        (1u64 << self.frac_bits) as f64
    }

    /// The largest encodable magnitude (positive side).
    pub fn max_value(self) -> f64 {
        (HALF - 1) as f64 / self.scale()
    }

    /// Encodes a real, rounding to the nearest representable value.
    pub fn encode(self, x: f64) -> Result<F> {
        let v = (x * self.scale()).round();
        // Representable signed integers: [-(HALF + 1), HALF - 1].
        if !v.is_finite() || v > (HALF - 1) as f64 || v < -((HALF + 1) as f64) {
            return Err(Error::OutOfRange { value: x, frac_bits: self.frac_bits });
        }
        Ok(F::from_i64(v as i64))
    }

    /// Decodes a field element to the real it represents.
    pub fn decode(self, v: F) -> f64 {
        v.to_signed() as f64 / self.scale()
    }
}

impl Default for FixedPoint {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip_within_half_an_ulp(x in -1.0e5f64..1.0e5, f in 0u32..=20) {
            let fp = FixedPoint::new(f).unwrap();
            let back = fp.decode(fp.encode(x).unwrap());
            prop_assert!((back - x).abs() <= 0.5 / fp.scale() + 1e-9);
        }

        #[test]
        fn encoding_is_additive(a in -1.0e5f64..1.0e5, b in -1.0e5f64..1.0e5) {
            let fp = FixedPoint::DEFAULT;
            let sum = fp.encode(a).unwrap() + fp.encode(b).unwrap();
            prop_assert!((fp.decode(sum) - (a + b)).abs() <= 1.0 / fp.scale() + 1e-9);
        }
    }

    #[test]
    fn extremes_and_errors() {
        let fp = FixedPoint::DEFAULT;
        let max = fp.max_value();
        assert_eq!(fp.decode(fp.encode(max).unwrap()), max);
        assert_eq!(fp.decode(fp.encode(-max).unwrap()), -max);
        assert!(matches!(fp.encode(max * 2.0), Err(Error::OutOfRange { .. })));
        assert!(matches!(fp.encode(f64::NAN), Err(Error::OutOfRange { .. })));
        assert!(matches!(FixedPoint::new(31), Err(Error::InvalidArgument(_))));
        assert_eq!(fp.encode(-1.0).unwrap().value(), crate::field::P - 256);
    }
}
