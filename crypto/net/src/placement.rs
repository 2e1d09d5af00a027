//! Which activation layers are ReLU and which are quadratic: one type for
//! the planner, the trainer, the engine's tools and the result tables.
//!
//! Written as one letter per activation layer in order (`RQQR`: `R` keeps
//! ReLU, `Q` is quadratic), or as a comma-separated list of `relu`/`quad`
//! (`relu, quad, quad, relu`). Letters and words are case-insensitive and
//! surrounding spaces are ignored; anything else is an error that names the
//! offending entry. [`Placement`] always prints the letter form.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::desc::{Activation, Network, Op};
use crate::error::{NetError, Result};

/// Per activation layer, in order: `true` when it is quadratic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Placement(Vec<bool>);

impl Placement {
    /// A placement from per-layer choices (`true`: quadratic).
    pub fn new(quad: Vec<bool>) -> Self {
        Placement(quad)
    }

    /// `layers` activation layers, all ReLU.
    pub fn all_relu(layers: usize) -> Self {
        Placement(vec![false; layers])
    }

    /// `layers` activation layers, all quadratic.
    pub fn all_quad(layers: usize) -> Self {
        Placement(vec![true; layers])
    }

    /// The placement a network has now (any quadratic counts as `Q`, and
    /// so does a mixed layer with at least one quadratic channel).
    pub fn of(net: &Network) -> Self {
        Placement(
            net.activation_layers()
                .iter()
                .map(|&i| match &net.layers[i].op {
                    Op::Activation(Activation::Mixed { relu, .. }) => relu.iter().any(|r| !r),
                    op => !matches!(op, Op::Activation(Activation::Relu)),
                })
                .collect(),
        )
    }

    /// Per-layer choices (`true`: quadratic).
    pub fn quads(&self) -> &[bool] {
        &self.0
    }

    /// Number of activation layers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no activation layers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of quadratic layers.
    pub fn quad_count(&self) -> usize {
        self.0.iter().filter(|&&q| q).count()
    }

    /// Whether activation layer `k` is quadratic.
    pub fn is_quad(&self, k: usize) -> bool {
        self.0.get(k).copied().unwrap_or(false)
    }

    /// Makes activation layer `k` quadratic (`true`) or ReLU.
    pub fn set(&mut self, k: usize, quad: bool) {
        if let Some(q) = self.0.get_mut(k) {
            *q = quad;
        }
    }

    /// Indices of the layers that are still ReLU.
    pub fn relu_layers(&self) -> Vec<usize> {
        (0..self.0.len()).filter(|&k| !self.0[k]).collect()
    }

    /// Sets every activation layer of `net`: quadratic layers that are
    /// already quadratic (or mixed, see [`Placement::of`]) stay as they
    /// are, new ones get [`Activation::DEFAULT_QUAD`]. The length must match.
    pub fn apply(&self, net: &mut Network) -> Result<()> {
        let acts = net.activation_layers();
        if acts.len() != self.0.len() {
            return Err(NetError::Invalid(format!(
                "placement {self} has {} entries but the network has {} activation layers",
                self.0.len(),
                acts.len()
            )));
        }
        for (&i, &quad) in acts.iter().zip(&self.0) {
            let op = &mut net.layers[i].op;
            *op = match (quad, &*op) {
                (true, Op::Activation(q @ Activation::Quad { .. })) => Op::Activation(q.clone()),
                (true, Op::Activation(m @ Activation::Mixed { relu, .. }))
                    if relu.iter().any(|r| !r) =>
                {
                    Op::Activation(m.clone())
                }
                (true, _) => Op::Activation(Activation::DEFAULT_QUAD),
                (false, _) => Op::Activation(Activation::Relu),
            };
        }
        Ok(())
    }

    /// Makes the last `count` layers quadratic, the others ReLU.
    pub fn last_quad(layers: usize, count: usize) -> Result<Self> {
        if count > layers {
            return Err(NetError::Invalid(format!(
                "{count} quadratic layers requested but the network has {layers} activation layers"
            )));
        }
        Ok(Placement((0..layers).map(|k| k >= layers - count).collect()))
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &q in &self.0 {
            f.write_str(if q { "Q" } else { "R" })?;
        }
        Ok(())
    }
}

impl FromStr for Placement {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let word = |w: &str| match w.trim().to_ascii_lowercase().as_str() {
            "relu" | "r" => Ok(false),
            "quad" | "q" => Ok(true),
            other => Err(NetError::Invalid(format!(
                "placement entry {other:?} is neither relu nor quad (write RQR… or relu,quad,…)"
            ))),
        };
        let quad = if s.contains(',')
            || s.eq_ignore_ascii_case("relu")
            || s.eq_ignore_ascii_case("quad")
        {
            s.split(',').map(word).collect::<Result<Vec<bool>>>()?
        } else {
            s.chars()
                .filter(|c| !c.is_whitespace())
                .map(|c| match c.to_ascii_uppercase() {
                    'R' => Ok(false),
                    'Q' => Ok(true),
                    other => Err(NetError::Invalid(format!(
                        "placement letter {other:?} is neither R nor Q"
                    ))),
                })
                .collect::<Result<Vec<bool>>>()?
        };
        if quad.is_empty() {
            return Err(NetError::Invalid("empty placement".into()));
        }
        Ok(Placement(quad))
    }
}

impl Serialize for Placement {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Placement {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_grammars_parse_to_one_form() {
        let p: Placement = "RQr".parse().unwrap();
        assert_eq!(p.quads(), &[false, true, false]);
        assert_eq!(p.to_string(), "RQR");
        let w: Placement = " relu, QUAD ,relu ".parse().unwrap();
        assert_eq!(w, p);
        let one: Placement = "quad".parse().unwrap();
        assert_eq!(one.to_string(), "Q");
        let single_r: Placement = "R".parse().unwrap();
        assert_eq!(single_r.quads(), &[false]);
    }

    #[test]
    fn bad_entries_are_named() {
        let e = "RXR".parse::<Placement>().unwrap_err().to_string();
        assert!(e.contains("'X'"), "{e}");
        let e = "relu,sigmoid".parse::<Placement>().unwrap_err().to_string();
        assert!(e.contains("sigmoid"), "{e}");
        assert!("".parse::<Placement>().is_err());
        assert!("relu,,quad".parse::<Placement>().is_err());
    }

    #[test]
    fn serde_round_trip_and_counts() {
        let p = Placement::last_quad(5, 2).unwrap();
        assert_eq!(p.to_string(), "RRRQQ");
        assert_eq!(p.quad_count(), 2);
        assert_eq!(p.relu_layers(), vec![0, 1, 2]);
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(j, "\"RRRQQ\"");
        let back: Placement = serde_json::from_str(&j).unwrap();
        assert_eq!(back, p);
        assert!(Placement::last_quad(2, 3).is_err());
    }
}
