//! How a linear layer's input and output are laid out in the coefficients
//! of BFV polynomials (ring dimension [`N`]): coefficient encoding (Cheetah,
//! Huang et al. 2022). Pure arithmetic, shared by the protocol engine (which
//! encrypts with it) and the cost model (which counts its polynomials and
//! products without linking any homomorphic-encryption library).

use delphi_crypto::field::F;

use crate::linear::LinearOp;

/// Ring dimension of the BFV parameters.
pub const N: usize = 8192;

/// Bits of each of the two data primes a fresh ciphertext lives under.
pub const FRESH_PRIME_BITS: u32 = 60;
/// Bytes of the seed a fresh ciphertext's c₁ is expanded from on the wire:
/// SEAL's PRNG type (one byte) and its 64-byte seed.
pub const FRESH_SEED_BYTES: usize = 1 + 64;
/// Bytes of a fresh ciphertext on the wire (the client's encryption of its
/// input masks and triple shares, no frame prefix): symmetric-key BFV, so
/// c₁ is uniform and travels as the seed it is expanded from; c₀ at both
/// data primes, bit-packed at [`FRESH_PRIME_BITS`] bits a coefficient.
pub const FRESH_CT_BYTES: usize = FRESH_SEED_BYTES + 2 * N * FRESH_PRIME_BITS as usize / 8;

/// Bits of the result level's prime (the one 60-bit prime a result keeps
/// after modulus switching).
pub const RESULT_PRIME_BITS: u32 = 60;
/// Low bits of each c₁ coefficient a result drops on the wire (rounded to
/// nearest): the client's decryption adds Σ sⱼ·eⱼ with |eⱼ| ≤ 2^6 over the
/// ternary secret, below 2^16 except with probability 2^−91 (Hoeffding),
/// against the 2^18 that decryption tolerates at t ≈ 2^41, q ≈ 2^60.
pub const RESULT_C1_DROP: u32 = 7;
/// Low bits of each c₀ coefficient dropped: adds at most 2^13.
pub const RESULT_C0_DROP: u32 = 14;
/// Bits per c₁ coefficient on the wire: ⌈(q − 1 + 2^6) / 2^7⌉ < 2^53.
pub const RESULT_C1_BITS: u32 = RESULT_PRIME_BITS - RESULT_C1_DROP;
/// Bits per kept c₀ coefficient on the wire.
pub const RESULT_C0_BITS: u32 = RESULT_PRIME_BITS - RESULT_C0_DROP;

/// A polynomial's BFV work (≈ 5 ms at one end or the other on the 2-core
/// Xeon: encryption, transforms, the mask and re-randomisation) priced as
/// the bytes a 400 Mbit/s link carries meanwhile: how [`Packing::new`]
/// weighs a layout's polynomials against its bytes.
pub const POLY_WORK_BYTES: f64 = 250_000.0;

/// Bytes of a result ciphertext on the wire (no frame prefix) that keeps
/// `kept` coefficients of c₀: all [`N`] of c₁, then the kept ones of c₀,
/// bit-packed.
pub fn result_frame_bytes(kept: usize) -> usize {
    (N * RESULT_C1_BITS as usize + kept * RESULT_C0_BITS as usize).div_ceil(8)
}

/// How a linear layer's input and output are laid out in polynomials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    /// Convolution: input blocks of `per_block` padded channel planes;
    /// `outs` output channels per result polynomial, the kernels of output
    /// channel j of a result `span` coefficients apart (see
    /// [`Packing::conv`]).
    Conv {
        /// The layer.
        op: LinearOp,
        /// Padded plane height.
        hp: usize,
        /// Padded plane width.
        wp: usize,
        /// Channels per input polynomial.
        per_block: usize,
        /// Input polynomials.
        blocks: usize,
        /// Output channels per result polynomial.
        outs: usize,
        /// Coefficients between two output channels' kernels (and results).
        span: usize,
    },
    /// Depthwise convolution (one input channel per output channel): `per`
    /// channel planes per polynomial, spaced so that channel c's products
    /// with channel c′'s kernel land in slot c′ + c·per and each channel's
    /// output in slot c·(per + 1) — one result polynomial per `per`
    /// channels instead of one per channel (per² planes ≤ [`N`]).
    Depthwise {
        /// The layer.
        op: LinearOp,
        /// Padded plane height.
        hp: usize,
        /// Padded plane width.
        wp: usize,
        /// Channels per polynomial (input and result).
        per: usize,
        /// Polynomials each way.
        polys: usize,
    },
    /// Dense: input chunks of `chunk` values, `rows` outputs per polynomial.
    Dense {
        /// The layer.
        op: LinearOp,
        /// Inputs per chunk.
        chunk: usize,
        /// Input polynomials.
        chunks: usize,
        /// Outputs per result polynomial.
        rows: usize,
        /// Result polynomials.
        groups: usize,
    },
}

impl Packing {
    /// Chooses the packing of a linear layer, or says why it cannot be packed.
    pub fn new(op: &LinearOp) -> std::result::Result<Packing, String> {
        let i = op.input;
        if i.height == 1 && i.width == 1 && op.kernel == 1 && op.pad == 0 {
            let chunk = i.channels.min(N);
            let chunks = i.channels.div_ceil(chunk);
            let rows = (N / chunk).max(1);
            let groups = op.output.channels.div_ceil(rows);
            return Ok(Packing::Dense { op: *op, chunk, chunks, rows, groups });
        }
        let (hp, wp) = (i.height + 2 * op.pad, i.width + 2 * op.pad);
        if hp * wp > N {
            return Err(format!(
                "a padded input plane of {hp}×{wp} does not fit one ciphertext of {N}"
            ));
        }
        let depthwise =
            op.groups > 1 && op.groups == i.channels && op.output.channels == i.channels;
        // Channels per polynomial for the spaced depthwise layout: per² planes fit.
        let per = ((N / (hp * wp)) as f64).sqrt().floor() as usize;
        let depthwise = (depthwise && per >= 2).then(|| {
            let per = per.min(i.channels);
            let polys = i.channels.div_ceil(per);
            Packing::Depthwise { op: *op, hp, wp, per, polys }
        });
        let conv = Packing::conv(op, hp, wp);
        // The spaced depthwise layout sends more input polynomials and
        // fewer results: taken where that costs less.
        if let Some(dw) = depthwise.filter(|d| d.cost() < conv.cost()) {
            return Ok(dw);
        }
        Ok(conv)
    }

    /// The convolution layout that costs least ([`Packing::cost`]). With
    /// `c` input channels per block (T, degree < c·P for padded planes of
    /// P = hp·wp coefficients) and output channel j's kernel K_j laid out
    /// reversed to end at o = (c − 1)·P + (k − 1)·(wp + 1), the product
    /// T·K_j holds j's outputs at o + y·wp + x and garbage elsewhere in
    /// [0, L), L = c·P + o. One output channel per result (the layout of
    /// Cheetah) takes any c with c·P ≤ N: the negacyclic wrap of the
    /// garbage lands below o. Several, j = 0, 1, …, m − 1, as Σ X^(j·D)·K_j
    /// with D = o + P, keep each channel's outputs clear of the others'
    /// garbage (the next one starts past them, the previous one ends at
    /// them) and need no wrap: (m − 1)·D + L ≤ N. Deep layers with small
    /// planes and many channels (8×8 planes of 64 channels: one input
    /// polynomial and 64 results, or 8 and 8) return far fewer results.
    /// Grouped convolutions keep one output channel per result.
    fn conv(op: &LinearOp, hp: usize, wp: usize) -> Packing {
        let (cin, cout) = (op.input.channels, op.output.channels);
        let plane = hp * wp;
        let top = (N / plane).min(cin);
        let layout = |per_block: usize, outs: usize| {
            let o = (per_block - 1) * plane + (op.kernel - 1) * (wp + 1);
            Packing::Conv {
                op: *op,
                hp,
                wp,
                per_block,
                blocks: cin.div_ceil(per_block),
                outs,
                span: o + plane,
            }
        };
        let mut best = layout(top, 1);
        if op.groups > 1 {
            return best;
        }
        for per_block in 1..=top {
            let o = (per_block - 1) * plane + (op.kernel - 1) * (wp + 1);
            let (span, len) = (o + plane, per_block * plane + o);
            if len > N {
                continue;
            }
            let outs = ((N - len) / span + 1).min(cout);
            // As few results, with as few output channels per result.
            let outs = cout.div_ceil(cout.div_ceil(outs));
            let p = layout(per_block, outs);
            if outs > 1 && p.cost() < best.cost() {
                best = p;
            }
        }
        best
    }

    /// What [`Packing::new`] minimises: offline bytes plus
    /// [`POLY_WORK_BYTES`] per polynomial each way.
    pub fn cost(&self) -> f64 {
        self.bytes() + POLY_WORK_BYTES * (self.input_polys() + self.output_polys()) as f64
    }

    /// Ciphertext bytes offline (fresh ones at [`FRESH_CT_BYTES`]).
    pub fn bytes(&self) -> f64 {
        // All results but perhaps the last keep as many coefficients.
        let (total, per) = self.kept_split();
        let results = (total / per) * result_frame_bytes(per)
            + if total % per > 0 { result_frame_bytes(total % per) } else { 0 };
        (self.input_polys() * FRESH_CT_BYTES + results) as f64
    }

    /// Per result polynomial, how many coefficients hold outputs
    /// ([`Packing::kept`]'s lengths, without listing them: the cost model
    /// prices thousands of layouts a second).
    pub fn kept_counts(&self) -> impl Iterator<Item = usize> {
        let (total, per) = self.kept_split();
        (0..self.output_polys()).map(move |k| per.min(total.saturating_sub(k * per)))
    }

    /// Outputs in all, and per result polynomial (the last may hold fewer).
    fn kept_split(&self) -> (usize, usize) {
        let plane = |op: LinearOp| op.output.height * op.output.width;
        let (total, per) = match *self {
            Packing::Conv { op, outs, .. } => (op.output.len(), outs * plane(op)),
            Packing::Depthwise { op, per, .. } => (op.output.len(), per * plane(op)),
            Packing::Dense { op, rows, .. } => (op.output.channels, rows),
        };
        (total, per.max(1))
    }

    /// Per result polynomial, the coefficients that hold outputs (in
    /// ascending order): the only ones of c₀ a result sends.
    pub fn kept(&self) -> Vec<Vec<u32>> {
        let mut kept = vec![Vec::new(); self.output_polys()];
        for (p, c) in self.output_positions() {
            kept[p].push(c as u32);
        }
        for k in &mut kept {
            k.sort_unstable();
            k.dedup();
        }
        kept
    }

    /// Input polynomials (ciphertexts the client sends).
    pub fn input_polys(&self) -> usize {
        match self {
            Packing::Conv { blocks, .. } => *blocks,
            Packing::Depthwise { polys, .. } => *polys,
            Packing::Dense { chunks, .. } => *chunks,
        }
    }

    /// Result polynomials (ciphertexts the server returns).
    pub fn output_polys(&self) -> usize {
        match self {
            Packing::Conv { op, outs, .. } => op.output.channels.div_ceil(*outs),
            Packing::Depthwise { polys, .. } => *polys,
            Packing::Dense { groups, .. } => *groups,
        }
    }

    /// Plaintext–ciphertext products the server computes: per result
    /// polynomial, the input polynomials holding a channel it reads (all of
    /// them for an ordinary conv; a grouped one's weight polynomials are
    /// zero elsewhere, and the server skips zero products).
    pub fn products(&self) -> usize {
        match self {
            Packing::Conv { op, blocks, per_block, .. } if op.groups > 1 => (0..op.output.channels)
                .map(|o| {
                    let r = op.group_inputs(o);
                    let (first, last) = (r.start / per_block, (r.end - 1) / per_block);
                    (last - first + 1).min(*blocks)
                })
                .sum(),
            Packing::Conv { op, blocks, outs, .. } => op.output.channels.div_ceil(*outs) * blocks,
            Packing::Depthwise { polys, .. } => *polys,
            Packing::Dense { chunks, groups, .. } => chunks * groups,
        }
    }

    /// Lays the layer's input vector (CHW) out as coefficient vectors.
    pub fn pack_input(&self, x: &[F]) -> Vec<Vec<u64>> {
        match *self {
            Packing::Conv { op, hp, wp, per_block, blocks, .. } => {
                let i = op.input;
                (0..blocks)
                    .map(|b| {
                        let mut v = vec![0u64; N];
                        for cb in 0..per_block {
                            let c = b * per_block + cb;
                            if c >= i.channels {
                                break;
                            }
                            for y in 0..i.height {
                                for xx in 0..i.width {
                                    v[cb * hp * wp + (y + op.pad) * wp + xx + op.pad] =
                                        x[(c * i.height + y) * i.width + xx].value();
                                }
                            }
                        }
                        v
                    })
                    .collect()
            }
            Packing::Depthwise { op, hp, wp, per, polys } => {
                let i = op.input;
                (0..polys)
                    .map(|q| {
                        let mut v = vec![0u64; N];
                        for cb in 0..per.min(i.channels - q * per) {
                            let c = q * per + cb;
                            for y in 0..i.height {
                                for xx in 0..i.width {
                                    v[cb * hp * wp + (y + op.pad) * wp + xx + op.pad] =
                                        x[(c * i.height + y) * i.width + xx].value();
                                }
                            }
                        }
                        v
                    })
                    .collect()
            }
            Packing::Dense { op, chunk, chunks, .. } => (0..chunks)
                .map(|q| {
                    let mut v = vec![0u64; N];
                    for j in 0..chunk.min(op.input.channels - q * chunk) {
                        v[j] = x[q * chunk + j].value();
                    }
                    v
                })
                .collect(),
        }
    }

    /// The weight polynomial multiplying input polynomial `inp` to produce
    /// result polynomial `out`, as signed coefficients.
    pub fn weight_poly(&self, w: &[i64], out: usize, inp: usize) -> Vec<i64> {
        let mut v = vec![0i64; N];
        match *self {
            Packing::Conv { op, hp, wp, per_block, outs, span, .. } => {
                let (k, cin) = (op.kernel, op.input.channels);
                let o = (per_block - 1) * hp * wp + (k - 1) * wp + (k - 1);
                for j in 0..outs {
                    let m = out * outs + j;
                    if m >= op.output.channels {
                        break;
                    }
                    for cb in 0..per_block {
                        let c = inp * per_block + cb;
                        if c >= cin {
                            break;
                        }
                        for l in 0..k {
                            for l2 in 0..k {
                                v[j * span + o - cb * hp * wp - l * wp - l2] =
                                    w[((m * cin + c) * k + l) * k + l2];
                            }
                        }
                    }
                }
            }
            Packing::Depthwise { op, hp, wp, per, .. } => {
                // Result polynomial `out` reads input polynomial `out` only.
                if out != inp {
                    return v;
                }
                let (k, cin) = (op.kernel, op.input.channels);
                let o = (k - 1) * wp + (k - 1);
                for cb in 0..per.min(cin - inp * per) {
                    let c = inp * per + cb;
                    for l in 0..k {
                        for l2 in 0..k {
                            // The full weights' diagonal: [c][c][l][l2].
                            v[cb * per * hp * wp + o - l * wp - l2] =
                                w[((c * cin + c) * k + l) * k + l2];
                        }
                    }
                }
            }
            Packing::Dense { op, chunk, rows, .. } => {
                let nin = op.input.channels;
                for r in 0..rows {
                    let row = out * rows + r;
                    if row >= op.output.channels {
                        break;
                    }
                    for j in 0..chunk.min(nin - inp * chunk) {
                        v[r * chunk + chunk - 1 - j] = w[row * nin + inp * chunk + j];
                    }
                }
            }
        }
        v
    }

    /// Where each layer output sits: (result polynomial, coefficient), in CHW order.
    pub fn output_positions(&self) -> Vec<(usize, usize)> {
        match *self {
            Packing::Conv { op, wp, per_block, hp, outs, span, .. } => {
                let k = op.kernel;
                let o = (per_block - 1) * hp * wp + (k - 1) * wp + (k - 1);
                let out = op.output;
                let mut pos = Vec::with_capacity(out.len());
                for m in 0..out.channels {
                    let at = (m % outs) * span + o;
                    for oy in 0..out.height {
                        for ox in 0..out.width {
                            pos.push((m / outs, at + oy * op.stride * wp + ox * op.stride));
                        }
                    }
                }
                pos
            }
            Packing::Depthwise { op, hp, wp, per, .. } => {
                let k = op.kernel;
                let o = (k - 1) * wp + (k - 1);
                let out = op.output;
                let mut pos = Vec::with_capacity(out.len());
                for m in 0..out.channels {
                    let slot = (m % per) * (per + 1) * hp * wp;
                    for oy in 0..out.height {
                        for ox in 0..out.width {
                            pos.push((m / per, slot + o + oy * op.stride * wp + ox * op.stride));
                        }
                    }
                }
                pos
            }
            Packing::Dense { op, chunk, rows, .. } => (0..op.output.channels)
                .map(|row| (row / rows, (row % rows) * chunk + chunk - 1))
                .collect(),
        }
    }
}
