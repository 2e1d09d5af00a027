//! How a linear layer's input and output are laid out in the coefficients
//! of BFV polynomials (ring dimension [`N`]): coefficient encoding (Cheetah,
//! Huang et al. 2022). Pure arithmetic, shared by the protocol engine (which
//! encrypts with it) and the cost model (which counts its polynomials and
//! products without linking any homomorphic-encryption library).

use delphi_crypto::field::F;

use crate::linear::LinearOp;

/// Ring dimension of the BFV parameters.
pub const N: usize = 8192;

/// Bytes of a fresh ciphertext (the client's input, full modulus) over a
/// linear result's (switched down to the last prime): 380 kB over 131 kB as
/// calibrated on the reference machine (`results/cost-model.json`, `ct`).
/// It decides between layouts that trade input for result polynomials.
pub const FRESH_OVER_RESULT_BYTES: f64 = 2.9;

/// How a linear layer's input and output are laid out in polynomials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    /// Convolution: input blocks of `per_block` padded channel planes.
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
        let per_block = (N / (hp * wp)).min(i.channels);
        let blocks = i.channels.div_ceil(per_block);
        let conv = Packing::Conv { op: *op, hp, wp, per_block, blocks };
        // The spaced depthwise layout sends more input polynomials and
        // fewer results: taken where that is fewer bytes.
        if let Some(dw) = depthwise.filter(|d| d.bytes() < conv.bytes()) {
            return Ok(dw);
        }
        Ok(conv)
    }

    /// Ciphertext bytes offline, in result ciphertexts
    /// ([`FRESH_OVER_RESULT_BYTES`] per input polynomial).
    pub fn bytes(&self) -> f64 {
        self.input_polys() as f64 * FRESH_OVER_RESULT_BYTES + self.output_polys() as f64
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
            Packing::Conv { op, .. } => op.output.channels,
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
            Packing::Conv { op, blocks, .. } => op.output.channels * blocks,
            Packing::Depthwise { polys, .. } => *polys,
            Packing::Dense { chunks, groups, .. } => chunks * groups,
        }
    }

    /// Lays the layer's input vector (CHW) out as coefficient vectors.
    pub fn pack_input(&self, x: &[F]) -> Vec<Vec<u64>> {
        match *self {
            Packing::Conv { op, hp, wp, per_block, blocks } => {
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
            Packing::Conv { op, hp, wp, per_block, .. } => {
                let (k, cin) = (op.kernel, op.input.channels);
                let o = (per_block - 1) * hp * wp + (k - 1) * wp + (k - 1);
                for cb in 0..per_block {
                    let c = inp * per_block + cb;
                    if c >= cin {
                        break;
                    }
                    for l in 0..k {
                        for l2 in 0..k {
                            v[o - cb * hp * wp - l * wp - l2] =
                                w[((out * cin + c) * k + l) * k + l2];
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
            Packing::Conv { op, wp, per_block, hp, .. } => {
                let k = op.kernel;
                let o = (per_block - 1) * hp * wp + (k - 1) * wp + (k - 1);
                let out = op.output;
                let mut pos = Vec::with_capacity(out.len());
                for m in 0..out.channels {
                    for oy in 0..out.height {
                        for ox in 0..out.width {
                            pos.push((m, o + oy * op.stride * wp + ox * op.stride));
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
