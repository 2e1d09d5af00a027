//! Faster convolution and average-pooling steps on Burn's flex (CPU)
//! backend, as custom autodiff operations.
//!
//! Profiling training (`cargo run --release -p delphi-train --example
//! conv_speed` times one layer at a time, Burn's operation beside these)
//! showed that Burn 0.22 differentiates a convolution with its generic
//! rules — the weight gradient as a convolution whose "channels" are the
//! batch and whose kernel is the whole output map, the input gradient as a
//! transposed convolution in scalar loops — so that a 64→64 3×3 convolution
//! on 32×32 maps (batch 64) took ~70 ms forward and ~230 ms more backward;
//! average pooling took 15 ms forward and 23 ms backward for 4 M elements
//! (bound checks per element).
//!
//! Here every product is a large matrix product (the `gemm` crate, which
//! flex itself uses) on a padded grid, with no im2col copy: the input is
//! laid out `[c][n][hp][wp]` (zero-padded; hp, wp the padded sizes), so that
//! for tap (kh, kw) the input under output position j = (n, y, x) of the
//! same grid is a plain offset, `X[:, j + kh·wp + kw]`. Then, for a
//! convolution with kernel k, stride s, padding p < k (dilation 1, one
//! group, f32):
//! * forward: `Y[:, j] = Σ_taps W_tap · X[:, j + off_tap]` over the whole
//!   grid; the output is Y at (y·s, x·s) (other grid positions, which read
//!   across row ends, are dropped); layers with few input channels (c·k² ≤
//!   32: the first layers) copy the shifted views out and run one product
//!   with c·k² terms instead of k² products with c (for the weight
//!   gradient, k² products in parallel measured faster even there);
//! * weight gradient: the output gradient G is laid on the grid at
//!   (y·s, x·s), zeros elsewhere; `dW_tap = G · X[:, · + off_tap]ᵀ`, one
//!   product per tap, taps in parallel;
//! * input gradient: `dX[:, j + off_tap] += W_tapᵀ · G[:, j]`, then dX is
//!   read back without its padding;
//! * bias gradient: a per-channel sum.
//!
//! Average pooling with kernel = stride and no padding (what the
//! descriptions use) is a direct loop both ways.
//!
//! Strided convolutions compute the whole stride-1 grid (s² times their
//! outputs' work) and measured slower than Burn's for ResNet's stride-2
//! layers, so [`conv`] leaves them to Burn (the strided steps are tested but
//! unused). Other shapes and other devices (wgpu, cuda) take Burn's own
//! operation.
//! Tests compare values and all gradients with Burn's on random layers.

use burn::tensor::module::{avg_pool2d, conv2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions};
use burn::tensor::{DType, Tensor, TensorData};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

type Ad = Autodiff<Flex>;
type AdTensor = burn_backend::tensor::FloatTensor<Ad>;

fn flex_f32(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

fn slice(t: &FlexTensor) -> &[f32] {
    // `flex_f32` made it contiguous and the callers checked the dtype.
    t.as_slice::<f32>().unwrap_or(&[])
}

fn tensor(v: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.layout().shape();
    [s[0], s[1], s[2], s[3]]
}

/// Whether the fast convolution applies: square kernel and stride,
/// dilation 1, one group, symmetric padding below the kernel size.
fn conv_supported(w: [usize; 4], options: &ConvOptions<2>) -> bool {
    let k = w[2];
    let p = options.padding[0].0;
    w[2] == w[3]
        && options.stride[0] == options.stride[1]
        && options.dilation == [1, 1]
        && options.groups == 1
        && options.padding.iter().all(|&(a, b)| a == p && b == p)
        && p < k
}

/// A convolution (NCHW, weights `[out, in, k, k]`): the steps above on
/// flex (with or without autodiff) where supported, else Burn's `conv2d`.
pub fn conv(
    x: Tensor<4>,
    w: Tensor<4>,
    b: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    // Strided layers compute the whole stride-1 grid (s² times the work of
    // their outputs): measured slower than Burn's for ResNet's stride-2
    // layers, so they stay on Burn's path.
    if options.stride != [1, 1] {
        return conv2d(x, w, b, options);
    }
    conv_any_stride(x, w, b, options)
}

/// [`conv`] without the stride restriction (strided layers are tested here).
fn conv_any_stride(
    x: Tensor<4>,
    w: Tensor<4>,
    b: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    let [_, _, h, wd] = x.dims();
    let k = w.dims()[2];
    let p = options.padding[0].0;
    // (A kernel larger than the padded input has no output: Burn reports it.)
    if x.dtype() != DType::F32
        || !conv_supported(w.dims(), &options)
        || h + 2 * p < k
        || wd + 2 * p < k
    {
        return conv2d(x, w, b, options);
    }
    let geo = Geometry { k, p, s: options.stride[0] };
    if let (Ok(xp), Ok(wp)) =
        (x.clone().try_into_primitive::<Ad>(), w.clone().try_into_primitive::<Ad>())
    {
        if let Ok(bp) = b.clone().map(|b| b.try_into_primitive::<Ad>()).transpose() {
            return Tensor::from_primitive::<Ad>(conv_ad(xp, wp, bp, geo));
        }
    }
    if let (Ok(xp), Ok(wp)) =
        (x.clone().try_into_primitive::<Flex>(), w.clone().try_into_primitive::<Flex>())
    {
        if let Ok(bp) = b.clone().map(|b| b.try_into_primitive::<Flex>()).transpose() {
            return Tensor::from_primitive::<Flex>(conv_forward(&xp, &wp, bp.as_ref(), geo));
        }
    }
    conv2d(x, w, b, options)
}

/// Kernel size, padding and stride of a supported convolution.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    k: usize,
    p: usize,
    s: usize,
}

/// The padded grid of an input `[n, c, h, w]`.
#[derive(Clone, Copy)]
struct Grid {
    n: usize,
    h: usize,
    w: usize,
    hp: usize,
    wp: usize,
    oh: usize,
    ow: usize,
}

impl Grid {
    fn new([n, _, h, w]: [usize; 4], g: Geometry) -> Grid {
        let (hp, wp) = (h + 2 * g.p, w + 2 * g.p);
        Grid { n, h, w, hp, wp, oh: (hp - g.k) / g.s + 1, ow: (wp - g.k) / g.s + 1 }
    }

    fn plane(&self) -> usize {
        self.hp * self.wp
    }

    /// Grid positions over all images.
    fn cols(&self) -> usize {
        self.n * self.plane()
    }

    /// Zeros after a row that the largest tap offset may reach.
    fn slack(&self, k: usize) -> usize {
        (k - 1) * self.wp + k
    }
}

/// `t` ([n, c, h, w]) laid on the grid as [c][stride] rows (each row
/// [n][hp][wp], the image at offset (p, p), zeros around it).
fn to_grid(t: &[f32], c: usize, grid: Grid, p: usize, stride: usize) -> Vec<f32> {
    let (h, w, plane) = (grid.h, grid.w, grid.plane());
    let mut out = vec![0f32; c * stride];
    out.par_chunks_mut(stride.max(1)).enumerate().for_each(|(ci, dst)| {
        for ni in 0..grid.n {
            for y in 0..h {
                let src = &t[((ni * c + ci) * h + y) * w..][..w];
                dst[ni * plane + (y + p) * grid.wp + p..][..w].copy_from_slice(src);
            }
        }
    });
    out
}

/// The kernel as one [o][c] block per tap.
fn taps(w: &FlexTensor) -> Vec<f32> {
    let w = flex_f32(w);
    let [o, c, k, _] = dims4(&w);
    let wv = slice(&w);
    let mut taps = vec![0f32; k * k * o * c];
    for oi in 0..o {
        for ci in 0..c {
            for t in 0..k * k {
                taps[(t * o + oi) * c + ci] = wv[(oi * c + ci) * k * k + t];
            }
        }
    }
    taps
}

/// `dst (m × n) = [dst +] lhs (m × k) · rhs (k × n)`, strides given as
/// (row, column).
///
/// # Safety
/// Every element addressed through the pointers and strides must be inside
/// its allocation, and `dst` must not overlap `lhs` or `rhs`, nor itself for
/// distinct (row, column).
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    [m, n, k]: [usize; 3],
    dst: (*mut f32, usize, usize),
    accumulate: bool,
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    threads: gemm::Parallelism,
) {
    // SAFETY: the caller's contract (above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2 as isize,
            dst.1 as isize,
            accumulate,
            lhs.0,
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0,
            rhs.2 as isize,
            rhs.1 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            threads,
        );
    }
}

/// Whether a layer has so few input channels that one product over all
/// taps at once (after copying the shifted views, c·k² rows) beats one
/// product per tap (each with only c terms): the first layers (c = 1, 3).
fn few_rows(c: usize, k: usize) -> bool {
    c * k * k <= 32
}

/// The shifted views of the grid input `xt` (rows of `stride`) copied out:
/// row ci·k² + t is channel ci under tap t, `cols` wide — the rows of the
/// kernel's own `[o][c][kh][kw]` layout.
fn gathered(xt: &[f32], c: usize, k: usize, grid: Grid, stride: usize) -> Vec<f32> {
    let cols = grid.cols();
    let mut col = vec![0f32; c * k * k * cols];
    col.par_chunks_mut(cols.max(1)).enumerate().for_each(|(r, dst)| {
        let (ci, t) = (r / (k * k), r % (k * k));
        let off = (t / k) * grid.wp + t % k;
        dst.copy_from_slice(&xt[ci * stride + off..][..cols]);
    });
    col
}

/// The forward pass (see the module documentation).
fn conv_forward(
    x: &FlexTensor,
    w: &FlexTensor,
    bias: Option<&FlexTensor>,
    g: Geometry,
) -> FlexTensor {
    let x = flex_f32(x);
    let [_, c, _, _] = dims4(&x);
    let o = dims4(w)[0];
    let grid = Grid::new(dims4(&x), g);
    let cols = grid.cols();
    let stride = cols + grid.slack(g.k);
    let xt = to_grid(slice(&x), c, grid, g.p, stride);
    let mut y = vec![0f32; o * cols];
    if few_rows(c, g.k) {
        let col = gathered(&xt, c, g.k, grid, stride);
        let w = flex_f32(w);
        // SAFETY: y is o × cols; w is o × c·k² (its own layout); col is
        // c·k² × cols.
        unsafe {
            matmul(
                [o, cols, c * g.k * g.k],
                (y.as_mut_ptr(), cols, 1),
                false,
                (slice(&w).as_ptr(), c * g.k * g.k, 1),
                (col.as_ptr(), cols, 1),
                gemm::Parallelism::Rayon(0),
            );
        }
    }
    let taps = taps(w);
    for t in (0..g.k * g.k).filter(|_| !few_rows(c, g.k)) {
        let off = (t / g.k) * grid.wp + t % g.k;
        // SAFETY: y is o × cols; the tap block o × c; xt rows have stride
        // cols + slack and off + j < cols + slack for j < cols.
        unsafe {
            matmul(
                [o, cols, c],
                (y.as_mut_ptr(), cols, 1),
                t > 0,
                (taps.as_ptr().add(t * o * c), c, 1),
                (xt.as_ptr().add(off), cols + grid.slack(g.k), 1),
                gemm::Parallelism::Rayon(0),
            );
        }
    }
    let bias = bias.map(flex_f32);
    let bv = bias.as_ref().map(slice);
    let (oh, ow, plane, wp, s) = (grid.oh, grid.ow, grid.plane(), grid.wp, g.s);
    let mut out = vec![0f32; grid.n * o * oh * ow];
    out.par_chunks_mut((oh * ow).max(1)).enumerate().for_each(|(idx, dst)| {
        let (ni, oi) = (idx / o, idx % o);
        let b = bv.map_or(0.0, |b| b[oi]);
        for yy in 0..oh {
            let row = &y[oi * cols + ni * plane + yy * s * wp..];
            for (xx, d) in dst[yy * ow..][..ow].iter_mut().enumerate() {
                *d = row[xx * s] + b;
            }
        }
    });
    tensor(out, [grid.n, o, oh, ow])
}

#[derive(Debug)]
struct ConvStep;
#[derive(Debug)]
struct ConvStepNoBias;

/// The state kept for the backward pass: input, weights, geometry.
type ConvState = (FlexTensor, FlexTensor, Geometry);

fn conv_backward(
    parents: [Option<burn_autodiff::NodeId>; 3],
    g: FlexTensor,
    (x, w, geo): ConvState,
    grads: &mut Gradients,
) {
    let [node_x, node_w, node_b] = parents;
    let g = flex_f32(&g);
    let x = flex_f32(&x);
    let [o, c, k, _] = dims4(&w);
    let grid = Grid::new(dims4(&x), geo);
    let cols = grid.cols();
    // The output gradient on the grid, at (y·s, x·s).
    let gv = slice(&g);
    let (oh, ow, plane, wp, s) = (grid.oh, grid.ow, grid.plane(), grid.wp, geo.s);
    let mut gt = vec![0f32; o * cols];
    gt.par_chunks_mut(cols.max(1)).enumerate().for_each(|(oi, dst)| {
        for ni in 0..grid.n {
            for yy in 0..oh {
                let src = &gv[((ni * o + oi) * oh + yy) * ow..][..ow];
                let row = &mut dst[ni * plane + yy * s * wp..];
                for (xx, v) in src.iter().enumerate() {
                    row[xx * s] = *v;
                }
            }
        }
    });
    let stride = cols + grid.slack(k);
    if let Some(node) = node_x {
        let taps = taps(&w);
        let mut dxt = vec![0f32; c * stride];
        for t in 0..k * k {
            let off = (t / k) * wp + t % k;
            // SAFETY: dst rows (stride cols + slack) hold off + j < stride
            // for j < cols, so distinct (ci, j) never meet; the tap block
            // read transposed (c × o); gt is o × cols.
            unsafe {
                matmul(
                    [c, cols, o],
                    (dxt.as_mut_ptr().add(off), stride, 1),
                    true,
                    (taps.as_ptr().add(t * o * c), 1, c),
                    (gt.as_ptr(), cols, 1),
                    gemm::Parallelism::Rayon(0),
                );
            }
        }
        let (h, wd, p) = (grid.h, grid.w, geo.p);
        let mut dx = vec![0f32; grid.n * c * h * wd];
        dx.par_chunks_mut((h * wd).max(1)).enumerate().for_each(|(idx, dst)| {
            let (ni, ci) = (idx / c, idx % c);
            for y in 0..h {
                let src = &dxt[ci * stride + ni * plane + (y + p) * wp + p..][..wd];
                dst[y * wd..][..wd].copy_from_slice(src);
            }
        });
        grads.register::<Flex>(node, tensor(dx, [grid.n, c, h, wd]));
    }
    if let Some(node) = node_w {
        let xt = to_grid(slice(&x), c, grid, geo.p, stride);
        // One o × c product per tap; taps in parallel (each product on one
        // thread) when there are enough of them, else one on all cores.
        let many = k * k >= 2 * rayon::current_num_threads();
        let threads = if many { gemm::Parallelism::None } else { gemm::Parallelism::Rayon(0) };
        let per_tap: Vec<Vec<f32>> = (0..k * k)
            .into_par_iter()
            .with_max_len(1)
            .map(|t| {
                let mut dst = vec![0f32; o * c];
                let off = (t / k) * wp + t % k;
                // SAFETY: dst is o × c; gt is o × cols; the shifted input
                // read transposed (cols × c), off + j < stride for j < cols.
                unsafe {
                    matmul(
                        [o, c, cols],
                        (dst.as_mut_ptr(), c, 1),
                        false,
                        (gt.as_ptr(), cols, 1),
                        (xt.as_ptr().add(off), 1, stride),
                        threads,
                    );
                }
                dst
            })
            .collect();
        let mut dw = vec![0f32; o * c * k * k];
        for (t, block) in per_tap.iter().enumerate() {
            for oi in 0..o {
                for ci in 0..c {
                    dw[(oi * c + ci) * k * k + t] = block[oi * c + ci];
                }
            }
        }
        grads.register::<Flex>(node, tensor(dw, [o, c, k, k]));
    }
    if let Some(node) = node_b {
        grads.register::<Flex>(node, bias_grad(&g));
    }
}

impl Backward<Flex, 3> for ConvStep {
    type State = ConvState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<Flex>(&ops.node);
        let [a, b, c] = ops.parents.map(|p| p.map(|n| n.id));
        conv_backward([a, b, c], g, ops.state, grads);
    }
}

impl Backward<Flex, 2> for ConvStepNoBias {
    type State = ConvState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<Flex>(&ops.node);
        let [a, b] = ops.parents.map(|p| p.map(|n| n.id));
        conv_backward([a, b, None], g, ops.state, grads);
    }
}

fn conv_ad(x: AdTensor, w: AdTensor, b: Option<AdTensor>, geo: Geometry) -> AdTensor {
    let (xp, xn) = x.into_parts();
    let (wp, wn) = w.into_parts();
    match b {
        Some(b) => {
            let (bp, bn) = b.into_parts();
            let out = conv_forward(&xp, &wp, Some(&bp), geo);
            match ConvStep.prepare::<NoCheckpointing>([xn, wn, bn]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => prep.finish((xp, wp, geo), out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            }
        }
        None => {
            let out = conv_forward(&xp, &wp, None, geo);
            match ConvStepNoBias.prepare::<NoCheckpointing>([xn, wn]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => prep.finish((xp, wp, geo), out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            }
        }
    }
}

fn bias_grad(g: &FlexTensor) -> FlexTensor {
    let [n, o, oh, ow] = dims4(g);
    let gv = slice(g);
    let sums: Vec<f32> = (0..o)
        .into_par_iter()
        .map(|oi| {
            (0..n)
                .map(|ni| {
                    gv[(ni * o + oi) * oh * ow..][..oh * ow].iter().map(|&v| v as f64).sum::<f64>()
                })
                .sum::<f64>() as f32
        })
        .collect();
    FlexTensor::from_data(TensorData::new(sums, [o]))
}

/// Average pooling with a `k × k` window and stride `k`, no padding (output
/// ⌊h/k⌋ × ⌊w/k⌋): the custom step on flex (with or without autodiff), else
/// Burn's `avg_pool2d`.
pub fn avg_pool(x: Tensor<4>, k: usize, stride: usize) -> Tensor<4> {
    if k == stride && x.dtype() == DType::F32 {
        if let Ok(xp) = x.clone().try_into_primitive::<Ad>() {
            return Tensor::from_primitive::<Ad>(pool_ad(xp, k));
        }
        if let Ok(xp) = x.clone().try_into_primitive::<Flex>() {
            return Tensor::from_primitive::<Flex>(pool_forward(&xp, k));
        }
    }
    avg_pool2d(x, AvgPoolOptions::new([k, k]).with_stride([stride, stride]))
}

fn pool_forward(x: &FlexTensor, k: usize) -> FlexTensor {
    let x = flex_f32(x);
    let [n, c, h, w] = dims4(&x);
    let (oh, ow) = (h / k, w / k);
    let xv = slice(&x);
    let scale = 1.0 / (k * k) as f32;
    let mut out = vec![0f32; n * c * oh * ow];
    if oh * ow > 0 {
        out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, dst)| {
            let src = &xv[plane * h * w..][..h * w];
            for y in 0..oh {
                let row = &mut dst[y * ow..][..ow];
                for dy in 0..k {
                    let s = &src[(y * k + dy) * w..][..ow * k];
                    for (o, win) in row.iter_mut().zip(s.chunks_exact(k)) {
                        *o += win.iter().sum::<f32>();
                    }
                }
                row.iter_mut().for_each(|v| *v *= scale);
            }
        });
    }
    tensor(out, [n, c, oh, ow])
}

#[derive(Debug)]
struct PoolStep;

impl Backward<Flex, 1> for PoolStep {
    /// Input shape and window.
    type State = ([usize; 4], usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let g = grads.consume::<Flex>(&ops.node);
        let ([n, c, h, w], k) = ops.state;
        let Some(node) = node else { return };
        let g = flex_f32(&g);
        let [_, _, oh, ow] = dims4(&g);
        let gv = slice(&g);
        let scale = 1.0 / (k * k) as f32;
        let mut dx = vec![0f32; n * c * h * w];
        dx.par_chunks_mut(h * w).enumerate().for_each(|(plane, dst)| {
            let src = &gv[plane * oh * ow..][..oh * ow];
            for y in 0..oh * k {
                let row = &mut dst[y * w..][..ow * k];
                let g_row = &src[(y / k) * ow..][..ow];
                for (win, &gval) in row.chunks_exact_mut(k).zip(g_row) {
                    win.iter_mut().for_each(|v| *v = gval * scale);
                }
            }
        });
        grads.register::<Flex>(node.id, tensor(dx, [n, c, h, w]));
    }
}

fn pool_ad(x: AdTensor, k: usize) -> AdTensor {
    let (xp, xn) = x.into_parts();
    let shape = dims4(&xp);
    let out = pool_forward(&xp, k);
    match PoolStep.prepare::<NoCheckpointing>([xn]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((shape, k), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn close(a: Tensor<4>, b: Tensor<4>, what: &str) {
        let (a, b) = (
            a.into_data().try_to_vec::<f32>().unwrap(),
            b.into_data().try_to_vec::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * scale, "{what}[{i}]: {x} vs {y}");
        }
    }

    type Grads = (Tensor<4>, Tensor<4>, Tensor<4>, Option<Tensor<1>>);

    fn run(
        x: &Tensor<4>,
        wt: &Tensor<4>,
        b: &Tensor<1>,
        bias: bool,
        m: &Tensor<4>,
        opts: &ConvOptions<2>,
        fast: bool,
    ) -> Grads {
        let (x, wt, b) =
            (x.clone().require_grad(), wt.clone().require_grad(), b.clone().require_grad());
        let bias_t = bias.then(|| b.clone());
        let y = if fast {
            conv_any_stride(x.clone(), wt.clone(), bias_t, opts.clone())
        } else {
            conv2d(x.clone(), wt.clone(), bias_t, opts.clone())
        };
        // A non-uniform upstream gradient.
        let grads = (y.clone() * m.clone()).sum().backward();
        (
            y.inner(),
            x.grad(&grads).expect("x grad"),
            wt.grad(&grads).expect("w grad"),
            if bias { b.grad(&grads) } else { None },
        )
    }

    #[test]
    fn conv_values_and_gradients_equal_burns() {
        for (n, c, o, h, w, k, p, bias) in [
            (3, 2, 4, 7, 5, 3, 1, true),
            (2, 5, 3, 6, 6, 3, 0, false),
            (2, 3, 2, 8, 9, 1, 0, true),
            (1, 2, 3, 5, 5, 5, 2, true),
            (2, 4, 4, 4, 4, 3, 2, true),
        ] {
            check_conv(n, c, o, h, w, k, p, 1, bias);
        }
        // Strided: ResNet's downsampling 3×3 and 1×1 projections, odd sizes.
        for (n, c, o, h, w, k, p, s, bias) in [
            (2, 3, 4, 8, 8, 3, 1, 2, false),
            (2, 3, 4, 7, 9, 3, 1, 2, true),
            (2, 4, 6, 8, 8, 1, 0, 2, false),
            (1, 2, 3, 9, 9, 3, 0, 3, true),
        ] {
            check_conv(n, c, o, h, w, k, p, s, bias);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_conv(
        n: usize,
        c: usize,
        o: usize,
        h: usize,
        w: usize,
        k: usize,
        p: usize,
        s: usize,
        bias: bool,
    ) {
        let device = Device::flex().autodiff();
        {
            let x = Tensor::<4>::random([n, c, h, w], Distribution::Default, &device);
            let wt = Tensor::<4>::random([o, c, k, k], Distribution::Default, &device);
            let b = Tensor::<1>::random([o], Distribution::Default, &device);
            let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
            let m = Tensor::<4>::random([n, o, oh, ow], Distribution::Default, &device);
            let opts = ConvOptions::new([s, s], [p, p], [1, 1], 1);
            let what = format!("n{n} c{c} o{o} {h}x{w} k{k} p{p} s{s}");
            // The fast path must be the one taken on this device.
            assert!(x.clone().try_into_primitive::<Ad>().is_ok());
            let (yf, gxf, gwf, gbf) = run(&x, &wt, &b, bias, &m, &opts, true);
            let (ys, gxs, gws, gbs) = run(&x, &wt, &b, bias, &m, &opts, false);
            close(yf, ys, &format!("{what} output"));
            close(gxf, gxs, &format!("{what} dx"));
            close(gwf, gws, &format!("{what} dW"));
            match (gbf, gbs) {
                (Some(f), Some(s)) => {
                    close(f.reshape([1, o, 1, 1]), s.reshape([1, o, 1, 1]), &format!("{what} db"))
                }
                (None, None) => assert!(!bias),
                _ => panic!("{what}: bias gradient on one side only"),
            }
            // Inference (no autodiff) takes the same forward.
            let (xi, wi, bi) = (x.clone().inner(), wt.clone().inner(), b.clone().inner());
            let bi = bias.then_some(bi);
            close(
                conv_any_stride(xi.clone(), wi.clone(), bi.clone(), opts.clone()),
                conv2d(xi, wi, bi, opts.clone()),
                &format!("{what} inference"),
            );
        }
    }

    #[test]
    fn pooling_values_and_gradients_equal_burns() {
        let device = Device::flex().autodiff();
        for (n, c, h, w, k) in [(2, 3, 8, 8, 2), (1, 2, 7, 7, 2), (2, 2, 6, 9, 3), (1, 1, 4, 4, 4)]
        {
            let x = Tensor::<4>::random([n, c, h, w], Distribution::Default, &device);
            let m = Tensor::<4>::random([n, c, h / k, w / k], Distribution::Default, &device);
            let go = |fast: bool| {
                let x = x.clone().require_grad();
                let y = if fast {
                    avg_pool(x.clone(), k, k)
                } else {
                    avg_pool2d(x.clone(), AvgPoolOptions::new([k, k]).with_stride([k, k]))
                };
                let grads = (y.clone() * m.clone()).sum().backward();
                (y.inner(), x.grad(&grads).expect("x grad"))
            };
            let ((yf, gf), (ys, gs)) = (go(true), go(false));
            close(yf, ys, &format!("pool {h}x{w} k{k}"));
            close(gf, gs, &format!("pool {h}x{w} k{k} dx"));
            // Inference (no autodiff) takes the same forward.
            let xi = x.clone().inner();
            close(
                avg_pool(xi.clone(), k, k),
                avg_pool2d(xi, AvgPoolOptions::new([k, k]).with_stride([k, k])),
                "pool inference",
            );
        }
    }
}
