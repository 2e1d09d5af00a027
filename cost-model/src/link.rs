//! A network link as people write it: a bandwidth and a round-trip time.
//!
//! One parser for the command line and for files ([`delphi_net::serde_as_str`]):
//!
//! | written | means |
//! |---|---|
//! | `100Mbit`, `100Mbit/s`, `100Mbps`, `100Mb/s`, `1Gbit`, `1Gbps`, `64kbit` | bits per second |
//! | `12.5MB/s`, `12.5MBps`, `500MB/s`, `1GB/s`, `3byte/s` | bytes per second |
//! | `20ms`, `0.5ms`, `500us`, `500µs`, `1s`, `0.02s` | a round-trip time |
//!
//! A lower-case `b` is a bit and an upper-case `B` a byte. Refused as
//! ambiguous rather than guessed: a rate with no unit (`100`, `100M`), a
//! size with no "per second" (`100MB`, `100Mb`: `bit` spelled out counts as
//! a rate, as in `tc`), a lower-case `m` before `bps`, `b/s`, `B` or `Bps`
//! (`tc` reads `100mbps` as megabytes, most people as megabits), and an RTT
//! with no unit.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{CostError, Result};

/// A link's bandwidth, one direction.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Bandwidth {
    bits_per_s: f64,
}

impl Bandwidth {
    /// A bandwidth of `bytes` bytes per second.
    pub fn bytes_per_s(bytes: f64) -> Bandwidth {
        Bandwidth { bits_per_s: bytes * 8.0 }
    }

    /// Bytes per second.
    pub fn as_bytes_per_s(self) -> f64 {
        self.bits_per_s / 8.0
    }

    /// Bits per second.
    pub fn as_bits_per_s(self) -> f64 {
        self.bits_per_s
    }
}

/// What a bandwidth's unit means, after its decimal prefix.
enum RateUnit {
    Bits,
    Bytes,
}

fn bandwidth_error(s: &str, why: &str) -> CostError {
    CostError::Invalid(format!(
        "bandwidth {s:?}: {why} (write bits as 100Mbit, 100Mbps or 1Gbit/s, bytes as 12.5MB/s \
         or 12.5MBps)"
    ))
}

impl FromStr for Bandwidth {
    type Err = CostError;
    fn from_str(text: &str) -> Result<Bandwidth> {
        let s = text.trim();
        let split =
            s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_')).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let value: f64 =
            num.replace('_', "").parse().map_err(|_| bandwidth_error(text, "no number"))?;
        let unit = unit.trim();
        if unit.is_empty() {
            return Err(bandwidth_error(text, "no unit"));
        }
        let (prefix, rest) = match unit.chars().next() {
            Some(c @ ('k' | 'K' | 'm' | 'M' | 'g' | 'G' | 't' | 'T')) => (Some(c), &unit[1..]),
            _ => (None, unit),
        };
        let (kind, spelled_out) = match rest {
            "bit" | "bits" | "bit/s" | "bits/s" => (RateUnit::Bits, true),
            "bps" | "b/s" => (RateUnit::Bits, false),
            "Bps" | "B/s" => (RateUnit::Bytes, false),
            "byte/s" | "bytes/s" => (RateUnit::Bytes, true),
            "b" | "B" | "byte" | "bytes" => {
                return Err(bandwidth_error(text, "a size, not a rate: add /s, or spell out bit"))
            }
            _ => return Err(bandwidth_error(text, "unknown unit")),
        };
        let scale = match prefix {
            None => 1.0,
            Some('k' | 'K') => 1e3,
            // `m` is milli in SI and mega in tc: only where the unit is
            // spelled out (`mbit`) can it mean nothing but mega.
            Some('m') if !spelled_out => {
                return Err(bandwidth_error(text, "a lower-case m is ambiguous here: write M"))
            }
            Some('m' | 'M') => 1e6,
            Some('g' | 'G') => 1e9,
            Some(_) => 1e12,
        };
        let bits = match kind {
            RateUnit::Bits => value * scale,
            RateUnit::Bytes => value * scale * 8.0,
        };
        if !(bits.is_finite() && bits > 0.0) {
            return Err(bandwidth_error(text, "must be positive"));
        }
        Ok(Bandwidth { bits_per_s: bits })
    }
}

impl fmt::Display for Bandwidth {
    /// Bits per second with the largest prefix that divides them exactly
    /// (`100Mbit`), so that parsing the text gives the same value back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bits_per_s;
        for (scale, name) in [(1e12, "Tbit"), (1e9, "Gbit"), (1e6, "Mbit"), (1e3, "kbit")] {
            if b >= scale && (b / scale).fract() == 0.0 && (b / scale) * scale == b {
                return write!(f, "{}{name}", b / scale);
            }
        }
        write!(f, "{b}bit/s")
    }
}

delphi_net::serde_as_str!(Bandwidth);

/// A round-trip time, held exactly in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rtt {
    nanos: u64,
}

impl Rtt {
    /// The RTT in seconds.
    pub fn as_secs_f64(self) -> f64 {
        self.nanos as f64 / 1e9
    }

    /// An RTT of `s` seconds (rounded to the nanosecond; negative: zero).
    pub fn from_secs_f64(s: f64) -> Rtt {
        Rtt { nanos: (s.max(0.0) * 1e9).round() as u64 }
    }
}

impl FromStr for Rtt {
    type Err = CostError;
    fn from_str(text: &str) -> Result<Rtt> {
        let s = text.trim();
        let bad = |why: &str| {
            CostError::Invalid(format!("RTT {text:?}: {why} (write 20ms, 0.5ms, 500us or 0.02s)"))
        };
        let (num, scale) = if let Some(v) = s.strip_suffix("ms") {
            (v, 1e6)
        } else if let Some(v) = s.strip_suffix("us").or_else(|| s.strip_suffix("µs")) {
            (v, 1e3)
        } else if let Some(v) = s.strip_suffix("ns") {
            (v, 1.0)
        } else if let Some(v) = s.strip_suffix('s') {
            (v, 1e9)
        } else {
            return Err(bad("no unit"));
        };
        let v: f64 = num.trim().parse().map_err(|_| bad("no number"))?;
        if !(v.is_finite() && v >= 0.0) {
            return Err(bad("must be zero or more"));
        }
        Ok(Rtt { nanos: (v * scale).round() as u64 })
    }
}

impl fmt::Display for Rtt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.nanos;
        if n == 0 {
            write!(f, "0ms")
        } else if n.is_multiple_of(1_000_000) {
            write!(f, "{}ms", n / 1_000_000)
        } else if n.is_multiple_of(1_000) {
            write!(f, "{}us", n / 1_000)
        } else {
            write!(f, "{n}ns")
        }
    }
}

delphi_net::serde_as_str!(Rtt);

/// A network link.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// Bytes per second (one direction).
    pub bytes_per_s: f64,
    /// Round-trip time, seconds.
    pub rtt_s: f64,
}

impl Link {
    /// The link of a bandwidth and an RTT.
    pub fn new(bandwidth: Bandwidth, rtt: Rtt) -> Link {
        Link { bytes_per_s: bandwidth.as_bytes_per_s(), rtt_s: rtt.as_secs_f64() }
    }

    /// Parses a bandwidth and an RTT as [`Bandwidth`] and [`Rtt`] read them.
    pub fn parse(bandwidth: &str, rtt: &str) -> Result<Link> {
        Ok(Link::new(bandwidth.parse()?, rtt.parse()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> f64 {
        s.parse::<Bandwidth>().unwrap_or_else(|e| panic!("{s}: {e}")).as_bytes_per_s()
    }

    #[test]
    fn bits_are_bits_and_bytes_are_bytes() {
        for s in ["100Mbit", "100Mbit/s", "100Mbps", "100Mb/s", "100mbit", "100 Mbit"] {
            assert_eq!(bytes(s), 12.5e6, "{s}");
        }
        for s in ["1Gbit", "1Gbps", "1gbit", "1Gb/s"] {
            assert_eq!(bytes(s), 125e6, "{s}");
        }
        for s in ["12.5MB/s", "12.5MBps", "12.5Mbyte/s"] {
            assert_eq!(bytes(s), 12.5e6, "{s}");
        }
        assert_eq!(bytes("500MB/s"), 500e6);
        assert_eq!(bytes("64kbit"), 8e3);
    }

    #[test]
    fn ambiguous_bandwidths_are_refused_by_name() {
        for s in ["100", "100M", "100MB", "100Mb", "100mbps", "100mB/s", "fast", "Mbit", "0Mbit"] {
            let e = s.parse::<Bandwidth>().unwrap_err().to_string();
            assert!(e.contains(&format!("{s:?}")), "{s}: {e}");
        }
        let e = "100MB".parse::<Bandwidth>().unwrap_err().to_string();
        assert!(e.contains("not a rate"), "{e}");
        let e = "100mbps".parse::<Bandwidth>().unwrap_err().to_string();
        assert!(e.contains("ambiguous"), "{e}");
    }

    #[test]
    fn rtts_take_units_and_refuse_bare_numbers() {
        let ms = |s: &str| s.parse::<Rtt>().expect("parses").as_secs_f64() * 1e3;
        assert_eq!(ms("20ms"), 20.0);
        assert_eq!(ms("0.5ms"), 0.5);
        assert_eq!(ms("500us"), 0.5);
        assert_eq!(ms("500µs"), 0.5);
        assert_eq!(ms("0.02s"), 20.0);
        let e = "20".parse::<Rtt>().unwrap_err().to_string();
        assert!(e.contains("no unit"), "{e}");
        assert!("soon".parse::<Rtt>().is_err());
        assert!("-1ms".parse::<Rtt>().is_err());
    }

    #[test]
    fn text_round_trips_exactly() {
        for s in ["100Mbit", "12.5MB/s", "1.5Mbit", "1Gbps", "3byte/s", "123.456kbit"] {
            let b: Bandwidth = s.parse().expect("parses");
            let back: Bandwidth = b.to_string().parse().expect("its text parses");
            assert_eq!(b, back, "{s} -> {b}");
        }
        assert_eq!("12.5MB/s".parse::<Bandwidth>().expect("parses").to_string(), "100Mbit");
        for s in ["20ms", "0.5ms", "1s", "123ns", "0ms"] {
            let r: Rtt = s.parse().expect("parses");
            assert_eq!(r, r.to_string().parse::<Rtt>().expect("its text parses"), "{s}");
        }
        let json = serde_json::to_string(&"1Gbps".parse::<Bandwidth>().expect("parses"))
            .expect("serialises");
        assert_eq!(json, "\"1Gbit\"");
        assert!(serde_json::from_str::<Bandwidth>("\"100Mbps\"").is_ok());
        assert!(serde_json::from_str::<Bandwidth>("\"100\"").is_err());
    }

    #[test]
    fn a_link_is_the_pair() {
        let l = Link::parse("100Mbps", "20ms").expect("parses");
        assert_eq!((l.bytes_per_s, l.rtt_s), (12.5e6, 0.02));
    }
}
