//! Convolution and dense layers as one linear operator.
//!
//! A dense layer on n inputs is a 1×1 convolution on an n×1×1 tensor, so one
//! loop nest serves the float evaluator, the fixed-point reference and (in
//! the protocol) the server's online evaluation.

use crate::desc::Shape;

/// Integers below this magnitude are exact in f64, and so is every sum and
/// product of them that stays below it.
const F64_EXACT: u128 = 1 << 53;

/// A linear layer's geometry (weights live elsewhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearOp {
    /// Input shape.
    pub input: Shape,
    /// Output shape.
    pub output: Shape,
    /// Square kernel size (1 for dense).
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
    /// Channel groups (1: ordinary). The operator's weights are always the
    /// full `[out][in][k][k]` ([`expand_groups`] fills the zeros); the
    /// groups say which products are zero, for packing and costs.
    pub groups: usize,
}

/// A grouped convolution's weights `[out][in / groups][k][k]` as the full
/// `[out][in][k][k]`, zero outside each output channel's group.
pub fn expand_groups<T: Copy + Default>(
    w: &[T],
    out: usize,
    cin: usize,
    groups: usize,
    kk: usize,
) -> Vec<T> {
    if groups <= 1 {
        return w.to_vec();
    }
    let (gin, gout) = (cin / groups, out / groups);
    let mut full = vec![T::default(); out * cin * kk];
    for o in 0..out {
        let g = o / gout.max(1);
        for c in 0..gin {
            let src = (o * gin + c) * kk;
            let dst = (o * cin + g * gin + c) * kk;
            if let (Some(s), Some(d)) = (w.get(src..src + kk), full.get_mut(dst..dst + kk)) {
                d.copy_from_slice(s);
            }
        }
    }
    full
}

impl LinearOp {
    /// A convolution on `input`.
    pub fn conv(
        input: Shape,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
    ) -> Self {
        let output = input.windowed(out_channels, kernel, stride, pad);
        LinearOp { input, output, kernel, stride, pad, groups: 1 }
    }

    /// The same convolution with channel groups.
    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups.max(1);
        self
    }

    /// The input channels output channel `o` reads.
    pub fn group_inputs(&self, o: usize) -> std::ops::Range<usize> {
        let g = self.groups.max(1);
        let (gin, gout) = (self.input.channels / g, (self.output.channels / g).max(1));
        let first = (o / gout) * gin;
        first..first + gin
    }

    /// A dense layer from `inputs` to `outputs` features.
    pub fn dense(inputs: usize, outputs: usize) -> Self {
        LinearOp {
            input: Shape::new(inputs, 1, 1),
            output: Shape::new(outputs, 1, 1),
            kernel: 1,
            stride: 1,
            pad: 0,
            groups: 1,
        }
    }

    /// Number of weights: out × in × k × k.
    pub fn weights(&self) -> usize {
        self.output.channels * self.input.channels * self.kernel * self.kernel
    }

    /// Multiply-accumulates per output element.
    pub fn macs_per_output(&self) -> usize {
        self.input.channels / self.groups.max(1) * self.kernel * self.kernel
    }

    /// Applies the operator: for each output element, starts from
    /// `init(out_channel)`, calls `mac(acc, weight, input)` over its window
    /// (padding contributes nothing) and finishes with `fin`.
    pub fn apply<T: Copy, W: Copy, A, O>(
        &self,
        x: &[T],
        w: &[W],
        init: impl Fn(usize) -> A,
        mac: impl Fn(&mut A, W, T),
        fin: impl Fn(A) -> O,
    ) -> Vec<O> {
        let (i, o, k) = (self.input, self.output, self.kernel);
        assert_eq!(x.len(), i.len(), "input length");
        assert_eq!(w.len(), self.weights(), "weight length");
        let mut out = Vec::with_capacity(o.len());
        for oc in 0..o.channels {
            for oy in 0..o.height {
                for ox in 0..o.width {
                    let mut acc = init(oc);
                    for ic in 0..i.channels {
                        let wbase = (oc * i.channels + ic) * k * k;
                        let xbase = ic * i.height * i.width;
                        for ky in 0..k {
                            let iy = (oy * self.stride + ky) as isize - self.pad as isize;
                            if iy < 0 || iy >= i.height as isize {
                                continue;
                            }
                            for kx in 0..k {
                                let ix = (ox * self.stride + kx) as isize - self.pad as isize;
                                if ix < 0 || ix >= i.width as isize {
                                    continue;
                                }
                                let xv = x[xbase + iy as usize * i.width + ix as usize];
                                mac(&mut acc, w[wbase + ky * k + kx], xv);
                            }
                        }
                    }
                    out.push(fin(acc));
                }
            }
        }
        out
    }
}

/// Average or sum pooling geometry helper: the window sums of `x`.
pub fn sum_pool<T: Copy, A: Copy>(
    x: &[T],
    s: Shape,
    kernel: usize,
    stride: usize,
    zero: A,
    add: impl Fn(A, T) -> A,
) -> (Vec<A>, Shape) {
    let out = s.windowed(s.channels, kernel, stride, 0);
    let mut v = Vec::with_capacity(out.len());
    for c in 0..s.channels {
        for oy in 0..out.height {
            for ox in 0..out.width {
                let mut acc = zero;
                for ky in 0..kernel {
                    for kx in 0..kernel {
                        let (y, xx) = (oy * stride + ky, ox * stride + kx);
                        acc = add(acc, x[(c * s.height + y) * s.width + xx]);
                    }
                }
                v.push(acc);
            }
        }
    }
    (v, out)
}

/// The windows of a pooling layer: for each output (CHW order), the input
/// positions of its window that lie inside the image (padding positions
/// are left out), and the output shape.
pub fn pool_windows(
    s: Shape,
    kernel: usize,
    stride: usize,
    pad: usize,
) -> (Vec<Vec<usize>>, Shape) {
    let out = s.windowed(s.channels, kernel, stride, pad);
    let mut windows = Vec::with_capacity(out.len());
    for c in 0..s.channels {
        for oy in 0..out.height {
            for ox in 0..out.width {
                let mut w = Vec::with_capacity(kernel * kernel);
                for ky in 0..kernel {
                    for kx in 0..kernel {
                        let (y, x) = (
                            (oy * stride + ky) as isize - pad as isize,
                            (ox * stride + kx) as isize - pad as isize,
                        );
                        if y >= 0 && x >= 0 && (y as usize) < s.height && (x as usize) < s.width {
                            w.push((c * s.height + y as usize) * s.width + x as usize);
                        }
                    }
                }
                windows.push(w);
            }
        }
    }
    (windows, out)
}

impl LinearOp {
    /// The operator on signed integers, exactly, when no partial sum can
    /// leave i64: `None` when `max|x| · Σ|w| + |b|` of some output channel
    /// could reach 2^62 (the caller then takes the general path). Loops
    /// are ordered for contiguous rows (each weight scales a row of its
    /// input into a row of the output), which the compiler vectorises.
    pub fn apply_i64(&self, x: &[i64], w: &[i64], b: &[i64]) -> Option<Vec<i64>> {
        self.apply_i64_batch(x, w, b, 1)
    }

    /// For kernel column `kx`: the output columns `lo..hi` whose input
    /// column ox·stride + kx − pad lies inside the input, and the input
    /// column `x0` under `lo`; `None` when there are none.
    fn tap_columns(&self, kx: usize) -> Option<(usize, usize, usize)> {
        let (s, pad, iw) = (self.stride, self.pad as isize, self.input.width);
        let lo = ((pad - kx as isize).max(0) as usize).div_ceil(s);
        let last = iw as isize - 1 + pad - kx as isize;
        if last < 0 {
            return None;
        }
        let hi = (last as usize / s + 1).min(self.output.width);
        (lo < hi).then(|| (lo, hi, ((lo * s + kx) as isize - pad) as usize))
    }

    /// [`LinearOp::apply_i64_batch`] as one matrix product in f64, exact
    /// because the caller checked that every partial sum (and so every
    /// product, input and weight) is below 2^53 in magnitude, where f64
    /// holds integers exactly and fused or separate multiply-adds round to
    /// nothing: the output `[o][oh·ow·batch]` is `W [o × c·k²]` times the
    /// inputs gathered under each kernel tap (`[c·k²][oh·ow·batch]`; for a
    /// dense layer the input itself).
    fn apply_f64_exact(&self, x: &[i64], w: &[i64], b: &[i64], nb: usize) -> Vec<i64> {
        let (i, o, k) = (self.input, self.output, self.kernel);
        let (oh, ow) = (o.height, o.width);
        let rows = i.channels * k * k;
        let cols = oh * ow * nb;
        let xf: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let wf: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        let mut out = Vec::with_capacity(o.channels * cols);
        for oc in 0..o.channels {
            let bias = b.get(oc).copied().unwrap_or(0) as f64;
            out.extend(std::iter::repeat_n(bias, cols));
        }
        let product = |out: &mut [f64], col: &[f64], first: usize, width: usize| {
            // SAFETY: out is o × cols (row stride cols), read from column
            // `first` for `width` columns; wf is o × rows (row stride rows);
            // col is rows × width (row stride width); all in bounds.
            unsafe {
                gemm::gemm(
                    o.channels,
                    width,
                    rows,
                    out.as_mut_ptr().add(first),
                    1,
                    cols as isize,
                    true,
                    wf.as_ptr(),
                    1,
                    rows as isize,
                    col.as_ptr(),
                    1,
                    width as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        };
        if k == 1 && self.pad == 0 && self.stride == 1 {
            product(&mut out, &xf, 0, cols);
        } else {
            // The gathered inputs of a band of output rows at a time (at most
            // ~1 M values, so that large maps and batches stay in cache).
            let band = ((1 << 20) / (rows * ow * nb).max(1)).clamp(1, oh.max(1));
            let mut col = Vec::new();
            for y0 in (0..oh).step_by(band) {
                let y1 = (y0 + band).min(oh);
                let width = (y1 - y0) * ow * nb;
                // `gather` writes every element: no clearing between bands.
                col.resize(rows * width, 0f64);
                self.gather(&xf, nb, y0..y1, &mut col);
                product(&mut out, &col, y0 * ow * nb, width);
            }
        }
        out.into_iter().map(|v| v as i64).collect()
    }

    /// The inputs under every kernel tap for output rows `ys`, batch
    /// innermost: `col[(ic, ky, kx)][(oy − ys.start, ox, n)]` (zeros where the
    /// tap falls in the padding).
    fn gather(&self, xf: &[f64], nb: usize, ys: std::ops::Range<usize>, col: &mut [f64]) {
        let (i, o, k, s) = (self.input, self.output, self.kernel, self.stride);
        let (ow, pad, iw) = (o.width, self.pad as isize, i.width);
        let width = ys.len() * ow * nb;
        // Every element of `col` is written (values or padding zeros), so
        // the caller need not clear it between bands.
        for ic in 0..i.channels {
            let xplane = &xf[ic * i.height * iw * nb..][..i.height * iw * nb];
            for ky in 0..k {
                for kx in 0..k {
                    let r = (ic * k + ky) * k + kx;
                    let dst = &mut col[r * width..][..width];
                    let Some((lo, hi, x0)) = self.tap_columns(kx) else {
                        dst.fill(0.0);
                        continue;
                    };
                    for (t, oy) in ys.clone().enumerate() {
                        let iy = (oy * s + ky) as isize - pad;
                        let drow = &mut dst[t * ow * nb..][..ow * nb];
                        if iy < 0 || iy >= i.height as isize {
                            drow.fill(0.0);
                            continue;
                        }
                        drow[..lo * nb].fill(0.0);
                        drow[hi * nb..].fill(0.0);
                        let xrow = &xplane[iy as usize * iw * nb..][..iw * nb];
                        if s == 1 {
                            let len = (hi - lo) * nb;
                            drow[lo * nb..][..len].copy_from_slice(&xrow[x0 * nb..][..len]);
                        } else {
                            for j in 0..hi - lo {
                                drow[(lo + j) * nb..][..nb]
                                    .copy_from_slice(&xrow[(x0 + j * s) * nb..][..nb]);
                            }
                        }
                    }
                }
            }
        }
    }

    /// [`LinearOp::apply_i64`] on `batch` inputs interleaved element by
    /// element (`x[e·batch + n]` is element e of input n; the output is laid
    /// out the same way), so that the innermost loops run over the batch.
    pub fn apply_i64_batch(
        &self,
        x: &[i64],
        w: &[i64],
        b: &[i64],
        batch: usize,
    ) -> Option<Vec<i64>> {
        let (i, o, k) = (self.input, self.output, self.kernel);
        if batch == 0 || x.len() != i.len() * batch || w.len() != self.weights() {
            return None;
        }
        let max_x = x.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0) as u128;
        let per = i.channels * k * k;
        for oc in 0..o.channels {
            let norm: u128 =
                w[oc * per..(oc + 1) * per].iter().map(|v| v.unsigned_abs() as u128).sum();
            let bias = b.get(oc).map_or(0, |v| v.unsigned_abs() as u128);
            if max_x * norm + bias >= 1u128 << 62 {
                return None;
            }
        }
        if (0..o.channels).all(|oc| {
            let norm: u128 =
                w[oc * per..(oc + 1) * per].iter().map(|v| v.unsigned_abs() as u128).sum();
            max_x * norm + b.get(oc).map_or(0, |v| v.unsigned_abs() as u128) < F64_EXACT
        }) {
            return Some(self.apply_f64_exact(x, w, b, batch));
        }
        if i.height == 1 && i.width == 1 && k == 1 && self.pad == 0 && batch == 1 {
            // Dense on one input: one dot product per output.
            return Some(
                (0..o.channels)
                    .map(|oc| {
                        let row = &w[oc * per..(oc + 1) * per];
                        let dot: i64 = row.iter().zip(x).map(|(w, x)| w * x).sum();
                        dot + b.get(oc).copied().unwrap_or(0)
                    })
                    .collect(),
            );
        }
        let (oh, ow, s, pad) = (o.height, o.width, self.stride, self.pad as isize);
        let (iw, nb) = (i.width, batch);
        let mut out = vec![0i64; o.len() * nb];
        for oc in 0..o.channels {
            let plane = &mut out[oc * oh * ow * nb..(oc + 1) * oh * ow * nb];
            plane.fill(b.get(oc).copied().unwrap_or(0));
            for ic in 0..i.channels {
                let xplane = &x[ic * i.height * iw * nb..(ic + 1) * i.height * iw * nb];
                for ky in 0..k {
                    for kx in 0..k {
                        let wv = w[((oc * i.channels + ic) * k + ky) * k + kx];
                        if wv == 0 {
                            continue;
                        }
                        let Some((lo, hi, x0)) = self.tap_columns(kx) else {
                            continue;
                        };
                        for oy in 0..oh {
                            let iy = (oy * s + ky) as isize - pad;
                            if iy < 0 || iy >= i.height as isize {
                                continue;
                            }
                            let xrow = &xplane[iy as usize * iw * nb..(iy as usize + 1) * iw * nb];
                            let orow = &mut plane[oy * ow * nb..(oy + 1) * ow * nb];
                            if s == 1 {
                                let len = (hi - lo) * nb;
                                let src = &xrow[x0 * nb..x0 * nb + len];
                                for (d, &v) in orow[lo * nb..lo * nb + len].iter_mut().zip(src) {
                                    *d += wv * v;
                                }
                            } else {
                                for j in 0..hi - lo {
                                    let src = &xrow[(x0 + j * s) * nb..(x0 + j * s + 1) * nb];
                                    let dst = &mut orow[(lo + j) * nb..(lo + j + 1) * nb];
                                    for (d, &v) in dst.iter_mut().zip(src) {
                                        *d += wv * v;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::LinearOp;
    use crate::desc::Shape;
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_integer_path_equals_the_general_one() {
        // Small values (the f64 product), values near 2^53 in partial sums
        // (still f64) and values past it (the i64 loops).
        for (xmax, wmax) in [(5000i64, 900i64), (1 << 25, 1 << 20), (1 << 32, 1 << 22)] {
            integer_paths_equal_the_general_one(xmax, wmax);
        }
        // Sums that could leave i64 take the general path.
        let op = LinearOp::dense(2, 1);
        assert!(op.apply_i64(&[1 << 40, 1], &[1 << 30, 1], &[0]).is_none());
    }

    fn integer_paths_equal_the_general_one(xmax: i64, wmax: i64) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        for (input, out, k, stride, pad) in [
            (Shape::new(3, 9, 7), 4, 3, 1, 1),
            (Shape::new(2, 8, 8), 3, 3, 2, 0),
            (Shape::new(2, 9, 9), 2, 5, 2, 2),
            (Shape::new(1, 5, 5), 2, 1, 1, 0),
            (Shape::new(3, 6, 6), 2, 3, 3, 4),
            (Shape::new(2, 4, 4), 2, 4, 1, 0),
        ] {
            let op = LinearOp::conv(input, out, k, stride, pad);
            for dense in [false, true] {
                let op = if dense { LinearOp::dense(input.len(), out) } else { op };
                let x: Vec<i64> = (0..input.len()).map(|_| rng.gen_range(-xmax..xmax)).collect();
                let w: Vec<i64> = (0..op.weights()).map(|_| rng.gen_range(-wmax..wmax)).collect();
                let b: Vec<i64> = (0..out).map(|_| rng.gen_range(-99..99)).collect();
                let want = op.apply(&x, &w, |oc| b[oc], |a, w, x| *a += w * x, |a| a);
                assert_eq!(op.apply_i64(&x, &w, &b).unwrap(), want, "{op:?}");
                // Three inputs interleaved give the three results interleaved.
                let xs: Vec<Vec<i64>> = (0..3)
                    .map(|_| (0..input.len()).map(|_| rng.gen_range(-xmax..xmax)).collect())
                    .collect();
                let inter: Vec<i64> =
                    (0..input.len()).flat_map(|e| xs.iter().map(move |x| x[e])).collect();
                let got = op.apply_i64_batch(&inter, &w, &b, 3).unwrap();
                for (n, x) in xs.iter().enumerate() {
                    let want = op.apply(x, &w, |oc| b[oc], |a, w, x| *a += w * x, |a| a);
                    let mine: Vec<i64> = got.iter().skip(n).step_by(3).copied().collect();
                    assert_eq!(mine, want, "{op:?} input {n}");
                }
            }
        }
    }
}
