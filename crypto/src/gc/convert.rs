//! Output conversions: from a circuit's output labels to an additive share
//! of a field element, without decoding any output.
//!
//! A [`Conversion`] names the value: Σ_j w_j·out_j over *plain* outputs and
//! Σ_k w_k·(out_sel ∧ out_bit) over *products* of two outputs. A product
//! costs no AND gate: it is converted straight from the two wires' labels
//! (an arithmetic half-gates construction), with two field elements, two
//! hashes to evaluate and four to garble, where an AND gate followed by a
//! plain conversion costs two blocks and a field element, three hashes to
//! evaluate and six to garble.
//!
//! **Plain output** (wire with zero label L₀, permute bit p = lsb(L₀),
//! weight w): with h_v = H(L₀ ⊕ v·Δ, t) as field elements, the garbler sends
//! c = ±(w − h₁ + h₀) (negated when p = 1) and keeps G = h₀ + p·c; the
//! evaluator, holding the label of colour γ, computes H(label, t) + γ·c =
//! G + w·out. This is [`convert`].
//!
//! **Product** (selector a, bit b, weight w; colours γ_a = a ⊕ p_a,
//! γ_b = b ⊕ p_b): a·b = a·p_b + γ_b·a·(1 − 2p_b).
//! * The *garbler's half*, a·w·p_b, uses a bit the garbler knows: it is a
//!   plain conversion of the selector with weight Σ_k w_k·p_bk over every
//!   product with that selector (one field element per selector).
//! * The *evaluator's half*, γ_b·a·w′ with w′ = (1 − 2p_b)·w, uses a bit the
//!   evaluator knows: a plain conversion of the selector under its own tweak
//!   gives the evaluator X = G_k + w′·a (first element); the second is
//!   c₂ = ĥ₀ − ĥ₁ − G_k, where ĥ_γ hashes the bit's label of colour γ; the
//!   evaluator adds H(bit label) + γ_b·(c₂ + X) = ĥ₀ + γ_b·w′·a, and the
//!   garbler's share of it is ĥ₀.
//!
//! Every element is masked by the hash of a label the evaluator does not
//! hold, under a tweak used once (instance, hash index), as in the plain
//! conversion; the evaluator's sum is G + value for an offset G only the
//! garbler knows.

use subtle::{Choice, ConditionallySelectable};

use super::garble::{out_tweak, Evaluator, Garbler};
use crate::block::Block;
use crate::field::F;

/// One product output: `weight`·(out[`sel`] ∧ out[`bit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Product {
    /// The selector's output index.
    pub sel: usize,
    /// The bit's output index.
    pub bit: usize,
    /// The product's weight.
    pub weight: F,
}

/// How one instance's output labels combine into a field element: plain
/// outputs `0..weights.len()` and products (module documentation).
#[derive(Clone, Debug)]
pub struct Conversion {
    n_labels: usize,
    weights: Vec<F>,
    products: Vec<Product>,
    /// Distinct selectors, in order of first use, with their products.
    selectors: Vec<(usize, Vec<usize>)>,
    /// The output label each hash reads, in element order.
    hashed: Vec<usize>,
}

impl Conversion {
    /// Plain outputs `0..weights.len()` of `n_labels` output labels, and
    /// `products` of any of them.
    ///
    /// # Panics
    /// If an index is out of range or there is nothing to convert.
    pub fn new(n_labels: usize, weights: Vec<F>, products: Vec<Product>) -> Conversion {
        assert!(weights.len() <= n_labels, "more weights than outputs");
        assert!(!weights.is_empty() || !products.is_empty(), "a conversion of nothing");
        let mut selectors: Vec<(usize, Vec<usize>)> = Vec::new();
        for (k, p) in products.iter().enumerate() {
            assert!(p.sel < n_labels && p.bit < n_labels, "product of outputs out of range");
            match selectors.iter_mut().find(|(s, _)| *s == p.sel) {
                Some((_, ks)) => ks.push(k),
                None => selectors.push((p.sel, vec![k])),
            }
        }
        let mut hashed: Vec<usize> = (0..weights.len()).collect();
        hashed.extend(selectors.iter().map(|(s, _)| *s));
        for p in &products {
            hashed.extend([p.sel, p.bit]);
        }
        Conversion { n_labels, weights, products, selectors, hashed }
    }

    /// Plain outputs only: Σ_j weights_j·out_j over every output.
    pub fn plain(weights: Vec<F>) -> Conversion {
        Conversion::new(weights.len(), weights, Vec::new())
    }

    /// Output labels per instance.
    pub fn labels(&self) -> usize {
        self.n_labels
    }

    /// Field elements the garbler sends per instance (and hashes the
    /// evaluator computes): one per plain output and per selector, two
    /// per product.
    pub fn elements(&self) -> usize {
        self.hashed.len()
    }

    /// The plain outputs' weights.
    pub fn weights(&self) -> &[F] {
        &self.weights
    }

    /// The products.
    pub fn products(&self) -> &[Product] {
        &self.products
    }

    /// The value on plaintext output bits.
    pub fn value(&self, bits: &[bool]) -> F {
        assert_eq!(bits.len(), self.n_labels, "one bit per output");
        let pick = |b: bool, w: F| if b { w } else { F::ZERO };
        let plain: F = bits.iter().zip(&self.weights).map(|(&b, &w)| pick(b, w)).sum();
        plain + self.products.iter().map(|p| pick(bits[p.sel] & bits[p.bit], p.weight)).sum::<F>()
    }
}

/// The plain conversion of one wire: (element, garbler's offset) from the
/// hashes of its zero and one labels, its permute bit and the weight.
#[inline(always)]
fn convert(h0: F, h1: F, p: Choice, w: F) -> (F, F) {
    let c = w - h1 + h0;
    let c = F::conditional_select(&c, &-c, p);
    (c, h0 + F::conditional_select(&F::ZERO, &c, p))
}

#[inline(always)]
fn colour(label: &Block) -> Choice {
    Choice::from(label.lsb() as u8)
}

impl Garbler<'_> {
    /// Converts instances `first .. first + k` (`zero` holds k × labels
    /// output zero labels, instance by instance): writes k × elements field
    /// elements to `cts` (sent to the evaluator) and appends each
    /// instance's offset G to `offsets` — the evaluator obtains G + value,
    /// so −G is the garbler's share. One pipelined hash call per batch.
    pub fn arith_outputs_batch(
        &mut self,
        first: u64,
        zero: &[Block],
        conv: &Conversion,
        cts: &mut [F],
        offsets: &mut Vec<F>,
    ) {
        let (nl, ne) = (conv.n_labels, conv.elements());
        assert!(zero.len().is_multiple_of(nl), "whole instances of output labels");
        let k = zero.len() / nl;
        assert_eq!(cts.len(), k * ne, "elements for {k} instances");
        let delta = self.delta;
        let x = self.hash_with(2 * ne * k, |x, tweaks| {
            for i in 0..k {
                for (h, &l) in conv.hashed.iter().enumerate() {
                    let e = 2 * (i * ne + h);
                    let t = out_tweak(first + i as u64, ne, h);
                    x[e] = zero[i * nl + l];
                    x[e + 1] = zero[i * nl + l] ^ delta;
                    tweaks[e] = t;
                    tweaks[e + 1] = t;
                }
            }
        });
        for i in 0..k {
            let z = &zero[i * nl..(i + 1) * nl];
            let hv = |h: usize, v: usize| F::from_u128(x[2 * (i * ne + h) + v].0);
            let c = &mut cts[i * ne..(i + 1) * ne];
            let mut offset = F::ZERO;
            let mut h = 0;
            for (j, &w) in conv.weights.iter().enumerate() {
                let (ct, off) = convert(hv(h, 0), hv(h, 1), colour(&z[j]), w);
                (c[h], offset, h) = (ct, offset + off, h + 1);
            }
            for (sel, ks) in &conv.selectors {
                let w: F = ks
                    .iter()
                    .map(|&kk| {
                        let p = &conv.products[kk];
                        F::conditional_select(&F::ZERO, &p.weight, colour(&z[p.bit]))
                    })
                    .sum();
                let (ct, off) = convert(hv(h, 0), hv(h, 1), colour(&z[*sel]), w);
                (c[h], offset, h) = (ct, offset + off, h + 1);
            }
            for p in &conv.products {
                let pb = colour(&z[p.bit]);
                let w = F::conditional_select(&p.weight, &-p.weight, pb);
                let (ct1, g) = convert(hv(h, 0), hv(h, 1), colour(&z[p.sel]), w);
                // The bit's label of colour 0 carries the value p_b.
                let hb0 = F::conditional_select(&hv(h + 1, 0), &hv(h + 1, 1), pb);
                let hb1 = F::conditional_select(&hv(h + 1, 1), &hv(h + 1, 0), pb);
                c[h] = ct1;
                c[h + 1] = hb0 - hb1 - g;
                offset += hb0;
                h += 2;
            }
            offsets.push(offset);
        }
    }
}

impl Evaluator<'_> {
    /// The evaluator's half of [`Garbler::arith_outputs_batch`]: `labels`
    /// holds k × labels active output labels, `cts` the garbler's
    /// elements; appends G + value for each instance to `out`.
    pub fn arith_outputs_batch(
        &mut self,
        first: u64,
        labels: &[Block],
        conv: &Conversion,
        cts: &[F],
        out: &mut Vec<F>,
    ) {
        let (nl, ne) = (conv.n_labels, conv.elements());
        assert!(labels.len().is_multiple_of(nl), "whole instances of output labels");
        let k = labels.len() / nl;
        assert_eq!(cts.len(), k * ne, "elements for {k} instances");
        let x = self.hash_with(ne * k, |x, tweaks| {
            for i in 0..k {
                for (h, &l) in conv.hashed.iter().enumerate() {
                    x[i * ne + h] = labels[i * nl + l];
                    tweaks[i * ne + h] = out_tweak(first + i as u64, ne, h);
                }
            }
        });
        for i in 0..k {
            let l = &labels[i * nl..(i + 1) * nl];
            let c = &cts[i * ne..(i + 1) * ne];
            let hv = |h: usize| F::from_u128(x[i * ne + h].0);
            let plain = conv.weights.len() + conv.selectors.len();
            let mut acc = F::ZERO;
            for (h, &lab) in conv.hashed[..plain].iter().enumerate() {
                acc += hv(h) + F::conditional_select(&F::ZERO, &c[h], colour(&l[lab]));
            }
            for (kk, p) in conv.products.iter().enumerate() {
                let h = plain + 2 * kk;
                let x = hv(h) + F::conditional_select(&F::ZERO, &c[h], colour(&l[p.sel]));
                acc +=
                    hv(h + 1) + F::conditional_select(&F::ZERO, &(c[h + 1] + x), colour(&l[p.bit]));
            }
            out.push(acc);
        }
    }
}
