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
//! For a convolution with kernel k, stride s, padding p < k (dilation 1,
//! one group, f32):
//! * **forward**: the input is zero-padded image by image into a buffer of
//!   the thread's and convolved by a direct kernel (module `direct`, AVX2 +
//!   FMA, chosen at run time): for stride 1, eight output positions of a row
//!   per register, two such segments by six output channels in twelve
//!   accumulators, each step one (input channel, tap) — two input loads,
//!   six weight broadcasts, twelve multiply-adds — and vector stores; rows'
//!   last `ow mod 8` columns and strided layers take a second kernel with
//!   sixteen output channels in the registers. Nothing is copied per tap.
//!   Elsewhere (no AVX2, or c·k² < 64: the first layers, whose outputs
//!   carry too little work for the kernels' stores) the input is gathered
//!   per tile of output rows (im2col rows `[c][kh][kw]`, the tile sized to
//!   stay in L2) and multiplied by the kernel with `gemm`, the matrix
//!   library flex itself uses;
//! * **Winograd's F(2×2, 3×3)** (module `winograd`) instead, for 3×3
//!   stride-1 layers wide enough that it measured faster (64 or more
//!   channels both ways on maps at least 16 wide, or 32 on maps at least 32
//!   wide; `winograd::pays`): 16 products per 2×2 outputs and channel pair
//!   instead of 36, as 16 `gemm` products per band (an image), for the
//!   forward pass, the input gradient and the weight gradient (64→64 on
//!   32×32, batch 64: 20 ms forward against the direct kernel's 33,
//!   training step 71 ms against 120);
//! * at inference a ReLU that only reads a convolution is applied as the
//!   convolution writes its outputs ([`conv_relu`]);
//! * **input gradient**: the output gradient spread by the stride inside a
//!   border of k − 1 − p, convolved (stride 1) with the flipped kernel as
//!   `[in][out][kh][kw]`: the forward's code;
//! * **weight gradient** (where Winograd's does not run): `dWᵀ = Σ_tiles
//!   Col_tile · G_tileᵀ` over tiles of output rows (Col the gathered input;
//!   gemm packs the smaller operand transposed), summed in a fixed number of groups of tiles, each in
//!   order, then the groups in order — the same bits whatever the threads;
//! * bias gradient: a per-channel sum.
//!
//! Measured on a 2-core AMD EPYC (batch 64): the 64→64 layer on 32×32 maps
//! by the direct kernel 33 ms forward (Burn 119 ms in the same run) and
//! 150 ms with its backward pass (Burn 352 ms), by Winograd's transform
//! 20 ms and 71 ms (a later run); 16→16 on 32×32 2.2 ms (13 ms). Products over the
//! whole batch instead of cache-sized tiles streamed their accumulators
//! through memory (48–75 ms for the 64→64 layer's products alone).
//!
//! Average pooling with kernel = stride and no padding (what the
//! descriptions use) is a direct loop both ways.
//!
//! Other shapes and other devices (wgpu, cuda) take Burn's own operation.
//! Tests compare values and all gradients with Burn's on random layers,
//! through each path (Winograd, direct, matrix products).

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
    conv_with(x, w, b, options, Path::Auto)
}

/// Which of our convolution routes may run; each falls back to the next
/// where it does not apply (tests and `conv_speed` pin one to check or time
/// it against Burn).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Winograd's F(2×2, 3×3) where it measured faster (`winograd::pays`), else as
    /// `Direct` (what [`conv`] runs).
    Auto,
    /// Winograd's F(2×2, 3×3) wherever it applies (3×3, stride 1), else as
    /// `Direct`.
    Winograd,
    /// The direct kernel where the CPU has it, else as `Products`.
    Direct,
    /// Gathered tiles times the kernel (any CPU).
    Products,
}

/// [`conv`], by the given path.
pub fn conv_with(
    x: Tensor<4>,
    w: Tensor<4>,
    b: Option<Tensor<1>>,
    options: ConvOptions<2>,
    path: Path,
) -> Tensor<4> {
    conv_impl(x, w, b, options, path, false)
}

/// ReLU of a convolution: [`conv`] followed by ReLU, the ReLU applied as
/// the outputs are written where the operands are plain flex tensors
/// (inference), so that no pass over memory and no second buffer is spent
/// on it; elsewhere (autodiff, other devices) the two operations.
pub fn conv_relu(
    x: Tensor<4>,
    w: Tensor<4>,
    b: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    conv_impl(x, w, b, options, Path::Auto, true)
}

fn conv_impl(
    x: Tensor<4>,
    w: Tensor<4>,
    b: Option<Tensor<1>>,
    options: ConvOptions<2>,
    path: Path,
    relu: bool,
) -> Tensor<4> {
    let then_relu = |y: Tensor<4>| if relu { burn::tensor::activation::relu(y) } else { y };
    let [_, _, h, wd] = x.dims();
    let k = w.dims()[2];
    let p = options.padding[0].0;
    // (A kernel larger than the padded input has no output: Burn reports it.)
    if x.dtype() != DType::F32
        || !conv_supported(w.dims(), &options)
        || h + 2 * p < k
        || wd + 2 * p < k
    {
        return then_relu(conv2d(x, w, b, options));
    }
    let geo = Geometry { k, p, s: options.stride[0], path, relu: false };
    if let (Ok(xp), Ok(wp)) =
        (x.clone().try_into_primitive::<Ad>(), w.clone().try_into_primitive::<Ad>())
    {
        if let Ok(bp) = b.clone().map(|b| b.try_into_primitive::<Ad>()).transpose() {
            return then_relu(Tensor::from_primitive::<Ad>(conv_ad(xp, wp, bp, geo)));
        }
    }
    if let (Ok(xp), Ok(wp)) =
        (x.clone().try_into_primitive::<Flex>(), w.clone().try_into_primitive::<Flex>())
    {
        if let Ok(bp) = b.clone().map(|b| b.try_into_primitive::<Flex>()).transpose() {
            let geo = Geometry { relu, ..geo };
            return Tensor::from_primitive::<Flex>(conv_forward(&xp, &wp, bp.as_ref(), geo));
        }
    }
    then_relu(conv2d(x, w, b, options))
}

/// Kernel size, padding and stride of a supported convolution.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    k: usize,
    p: usize,
    s: usize,
    /// Which routes may run (tests pin one to check each on CPUs that
    /// have the faster ones).
    path: Path,
    /// Whether the forward pass applies ReLU to its outputs as it writes
    /// them (inference only: autodiff takes Burn's ReLU after the
    /// convolution).
    relu: bool,
}

/// How a source `[n][ch][h][w]` is placed in zeros of `[n][ch][hh][ww]`:
/// value (y, x) at (q + y·s, q + x·s). A convolution's input zero-padded by
/// p is (q, s) = (p, 1); its output gradient spread for the input gradient
/// is (k − 1 − p, stride).
#[derive(Clone, Copy)]
struct Spread {
    /// Source `[n, ch, h, w]`.
    dims: [usize; 4],
    q: usize,
    s: usize,
    /// Placed `[hh, ww]`.
    size: [usize; 2],
}

impl Spread {
    /// One image's planes (`src`: `[ch][h][w]`) placed in `dst`
    /// (`[ch][hh][ww]`).
    fn image(&self, src: &[f32], dst: &mut [f32]) {
        let [_, ch, h, w] = self.dims;
        let [hh, ww] = self.size;
        dst[..ch * hh * ww].fill(0.0);
        if h * w == 0 || hh * ww == 0 {
            return;
        }
        for (plane, out) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(hh * ww)) {
            for (y, line) in plane.chunks_exact(w).enumerate() {
                let row = &mut out[(self.q + y * self.s) * ww + self.q..];
                if self.s == 1 {
                    row[..w].copy_from_slice(line);
                } else {
                    for (x, v) in line.iter().enumerate() {
                        row[x * self.s] = *v;
                    }
                }
            }
        }
    }

    /// Row `y` of channel `ci` of image `img` placed (`src`: the whole
    /// source batch), its even columns in `even` and odd ones in `odd`,
    /// zeros elsewhere; columns past the buffers are left out, and rows past
    /// the placed height are zeros.
    #[inline(always)]
    fn row_split(&self, src: &[f32], [img, ci, y]: [usize; 3], even: &mut [f32], odd: &mut [f32]) {
        let [_, ch, h, w] = self.dims;
        even.fill(0.0);
        odd.fill(0.0);
        let Some(sy) = y.checked_sub(self.q) else { return };
        if sy % self.s != 0 || sy / self.s >= h || w == 0 {
            return;
        }
        let line = &src[((img * ch + ci) * h + sy / self.s) * w..][..w];
        if self.s == 1 {
            // Source column x lands at q + x: pairs of columns go to one
            // even and one odd slot (which first, by q's parity).
            let (first, second, at) = if self.q.is_multiple_of(2) {
                (even, odd, self.q / 2)
            } else {
                (odd, even, self.q / 2)
            };
            let second_at = if self.q.is_multiple_of(2) { at } else { at + 1 };
            let pairs = line.chunks_exact(2);
            let last = pairs.remainder().first().copied();
            let n = pairs.len();
            let fit =
                n.min(first.len().saturating_sub(at)).min(second.len().saturating_sub(second_at));
            if let (Some(f), Some(sc)) =
                (first.get_mut(at..at + fit), second.get_mut(second_at..second_at + fit))
            {
                for ((f, sc), pair) in f.iter_mut().zip(sc.iter_mut()).zip(pairs) {
                    *f = pair[0];
                    *sc = pair[1];
                }
            }
            // (Columns past the buffers are not read: the buffers hold what
            // the tiles read.)
            if let (Some(v), true) = (last, fit == n) {
                if let Some(d) = first.get_mut(at + n) {
                    *d = v;
                }
            }
            return;
        }
        for (x, v) in line.iter().enumerate() {
            let px = self.q + x * self.s;
            if let Some(d) =
                if px.is_multiple_of(2) { even.get_mut(px / 2) } else { odd.get_mut(px / 2) }
            {
                *d = *v;
            }
        }
    }

    /// The whole batch placed.
    fn all(&self, src: &[f32]) -> Vec<f32> {
        let [n, ch, h, w] = self.dims;
        let [hh, ww] = self.size;
        let mut out = vec![0f32; n * ch * hh * ww];
        if ch * hh * ww > 0 && ch * h * w > 0 {
            out.par_chunks_mut(ch * hh * ww)
                .zip(src.par_chunks(ch * h * w))
                .for_each(|(dst, img)| self.image(img, dst));
        }
        out
    }
}

/// Copies `dst.len()` floats; lengths of the small maps' rows are copied
/// inline (a library call per row of 8 floats cost more than the copy).
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    fn fixed<const N: usize>(dst: &mut [f32], src: &[f32]) -> bool {
        match (<&mut [f32; N]>::try_from(dst), src.get(..N).map(<&[f32; N]>::try_from)) {
            (Ok(d), Some(Ok(s))) => {
                *d = *s;
                true
            }
            _ => false,
        }
    }
    let done = match dst.len() {
        4 => fixed::<4>(dst, src),
        7 => fixed::<7>(dst, src),
        8 => fixed::<8>(dst, src),
        14 => fixed::<14>(dst, src),
        16 => fixed::<16>(dst, src),
        28 => fixed::<28>(dst, src),
        32 => fixed::<32>(dst, src),
        _ => false,
    };
    if !done {
        dst.copy_from_slice(&src[..dst.len()]);
    }
}

/// The gathered views of a padded source `[n][ch][hh][ww]` for output rows
/// `r0..r1` of an `oh × ow` output (row r = image r / oh, row r % oh): row
/// ci·k² + kh·k + kw of `out` (rows `len` apart, len = (r1 − r0)·ow) holds
/// `src[ni][ci][y·s + kh][x·s + kw]` at column (r − r0)·ow + x — the rows of
/// a kernel's own `[out][in][kh][kw]` layout.
#[allow(clippy::too_many_arguments)]
fn gather(
    src: &[f32],
    [ch, hh, ww]: [usize; 3],
    [k, s]: [usize; 2],
    [oh, ow]: [usize; 2],
    [r0, r1]: [usize; 2],
    out: &mut [f32],
) {
    let len = (r1 - r0) * ow;
    let kk = k * k;
    let (mut ni, mut y) = (r0 / oh.max(1), r0 % oh.max(1));
    for r in 0..r1 - r0 {
        for ci in 0..ch {
            let plane = &src[(ni * ch + ci) * hh * ww..][..hh * ww];
            for kh in 0..k {
                let line = &plane[(y * s + kh) * ww..];
                for kw in 0..k {
                    let seg = &mut out[(ci * kk + kh * k + kw) * len + r * ow..][..ow];
                    if s == 1 {
                        copy_row(seg, &line[kw..]);
                    } else {
                        for (x, v) in seg.iter_mut().enumerate() {
                            *v = line[x * s + kw];
                        }
                    }
                }
            }
        }
        y += 1;
        if y == oh {
            (ni, y) = (ni + 1, 0);
        }
    }
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

/// Groups of tiles whose weight-gradient partial sums are kept apart (a
/// fixed count, so that the sums do not depend on the threads).
const DW_GROUPS: usize = 16;

/// Output rows per tile: a tile's accumulator (`m` rows) and its gathered
/// rows (`depth`), `cols` wide each, stay in one core's L2 cache. Products
/// over the whole batch streamed the accumulator through memory (a 64→64
/// 3×3 layer on 32×32 maps, batch 64: 48–75 ms for its products, 41 ms in
/// tiles; a 16→16 layer at batch 256: 37 ms, 12 ms gathered in tiles; AMD
/// EPYC).
fn tile_rows(cols: usize, m: usize, depth: usize) -> usize {
    ((65_536 / (m + depth).max(1)).clamp(256, 4096) / cols.max(1)).max(1)
}

/// Runs `body(first row, past-last row, scratch)` on tiles of `rows` output
/// rows (of `total` rows), tiles in parallel, each thread with its own
/// `scratch` floats.
fn for_tiles(
    total: usize,
    rows: usize,
    scratch: usize,
    body: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    (0..total.div_ceil(rows)).into_par_iter().for_each_init(
        || vec![0f32; scratch],
        |buf, i| body(i * rows, ((i + 1) * rows).min(total), buf),
    );
}

/// `dst (m × n, rows n apart) [+]= lhs (m × depth) · rhs (depth × n)` on
/// the calling thread (tiles are the parallel unit); lhs and rhs given as
/// (slice, row stride, column stride), their extents checked.
fn product(
    [m, n, depth]: [usize; 3],
    dst: &mut [f32],
    accumulate: bool,
    (lhs, lrs, lcs): (&[f32], usize, usize),
    (rhs, rrs, rcs): (&[f32], usize, usize),
) {
    let dst = &mut dst[..m * n];
    if m == 0 || n == 0 || depth == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    assert!(
        (m - 1) * lrs + (depth - 1) * lcs < lhs.len()
            && (depth - 1) * rrs + (n - 1) * rcs < rhs.len(),
        "matrix product out of bounds"
    );
    // SAFETY: dst is m × n in its own buffer; the lhs and rhs extents were
    // checked just above.
    unsafe {
        matmul(
            [m, n, depth],
            (dst.as_mut_ptr(), n, 1),
            accumulate,
            (lhs.as_ptr(), lrs, lcs),
            (rhs.as_ptr(), rrs, rcs),
            gemm::Parallelism::None,
        );
    }
}

/// A buffer that tiles write through at disjoint positions.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: only used to write disjoint ranges from parallel tiles (each
// user says why its ranges are disjoint), and only while the buffer lives.
unsafe impl Send for Shared {}
// SAFETY: as for Send: the writes through it go to disjoint ranges.
unsafe impl Sync for Shared {}

impl Shared {
    /// # Safety
    /// `at..at + len` is inside the buffer and no other thread touches it
    /// while the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, at: usize, len: usize) -> &mut [f32] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}

/// The forward pass (see the module documentation).
fn conv_forward(
    x: &FlexTensor,
    w: &FlexTensor,
    bias: Option<&FlexTensor>,
    g: Geometry,
) -> FlexTensor {
    let x = flex_f32(x);
    let [n, c, h, wd] = dims4(&x);
    let w = flex_f32(w);
    let o = dims4(&w)[0];
    let (hh, ww) = (h + 2 * g.p, wd + 2 * g.p);
    let (oh, ow) = ((hh - g.k) / g.s + 1, (ww - g.k) / g.s + 1);
    let padded = Spread { dims: [n, c, h, wd], q: g.p, s: 1, size: [hh, ww] };
    let bias = bias.map(flex_f32);
    let out = valid_conv(slice(&x), padded, slice(&w), o, [g.k, g.s], bias.as_ref().map(slice), g);
    tensor(out, [n, o, oh, ow])
}

/// A convolution without padding of `src` placed as `spread` says
/// (`[n][c][hh][ww]`) by `w` (`[o][c][k][k]`) with stride s, plus `bias`:
/// Winograd's F(2×2, 3×3) or the direct kernel where allowed and
/// applicable, else per tile of output rows, the gathered views times the
/// kernel; ReLU applied to the outputs as they are written where `g.relu`
/// (`g`'s path and ReLU are read; k and s are given, since the input
/// gradient convolves with stride 1).
#[allow(clippy::too_many_arguments)]
fn valid_conv(
    src: &[f32],
    spread: Spread,
    w: &[f32],
    o: usize,
    [k, s]: [usize; 2],
    bias: Option<&[f32]>,
    g: Geometry,
) -> Vec<f32> {
    let (path, relu) = (g.path, g.relu);
    let ([n, c, _, _], [hh, ww]) = (spread.dims, spread.size);
    let (oh, ow) = ((hh - k) / s + 1, (ww - k) / s + 1);
    let winograd = match path {
        Path::Auto => winograd::pays(c, o, k, s, ow),
        Path::Winograd => k == 3 && s == 1,
        Path::Direct | Path::Products => false,
    };
    if winograd {
        return winograd::conv(src, spread, w, o, bias, relu);
    }
    if path != Path::Products {
        if let Some(out) = direct::conv(src, spread, w, o, [k, s], bias, relu) {
            return out;
        }
    }
    let xp = spread.all(src);
    let xp = &xp[..];
    let depth = c * k * k;
    let rows = tile_rows(ow, o, depth);
    let max_len = rows * ow;
    let mut out = vec![0f32; n * o * oh * ow];
    let dst = Shared(out.as_mut_ptr());
    for_tiles(n * oh, rows, (o + depth) * max_len, |r0, r1, buf| {
        let len = (r1 - r0) * ow;
        let (acc, cols) = buf.split_at_mut(o * max_len);
        gather(xp, [c, hh, ww], [k, s], [oh, ow], [r0, r1], cols);
        product([o, len, depth], acc, false, (w, depth, 1), (cols, len, 1));
        for r in r0..r1 {
            for oi in 0..o {
                let b = bias.map_or(0.0, |b| b[oi]);
                let src = &acc[oi * len + (r - r0) * ow..][..ow];
                // SAFETY: output row (r / oh, oi, r % oh) belongs to tile
                // row r alone, and tiles hold disjoint rows.
                let row = unsafe { dst.slice((((r / oh) * o + oi) * oh + r % oh) * ow, ow) };
                if relu {
                    row.iter_mut().zip(src).for_each(|(d, v)| *d = (v + b).max(0.0));
                } else {
                    row.iter_mut().zip(src).for_each(|(d, v)| *d = v + b);
                }
            }
        }
    });
    out
}

/// Winograd's minimal filtering F(2×2, 3×3) (Lavin and Gray, "Fast
/// algorithms for convolutional neural networks", 2016) for 3×3 stride-1
/// convolutions: each 2×2 block of outputs ("tile") from its 4×4 input
/// patch in 16 products per (input, output) channel pair instead of 36.
/// With V = Bᵀ d B (the patch), U = G g Gᵀ (the kernel) and M = U ⊙ V
/// summed over input channels, the outputs are Aᵀ M A; over many tiles the
/// sum is 16 matrix products `M_ξ = U_ξ · V_ξ` ([`super::product`]), one per
/// position ξ of the 4×4 transform.
///
/// Tiles are taken a band of tile rows at a time (whole rows of tiles, of
/// one or several images), the band sized so that its transformed inputs
/// and products stay in a core's L2; bands run in parallel and each sums
/// in a fixed order, so results do not depend on the threads. Rounding
/// differs from a direct sum by a few units in the last place of the
/// operands' scale (the transforms add and halve), well inside the
/// tolerance the tests hold every path to.
mod winograd {
    use super::{product, Shared, Spread};
    use rayon::prelude::*;

    /// Where the transforms pay for themselves (3×3, stride 1): 64 or more
    /// channels both ways on maps at least 16 wide, or 32 on maps at least
    /// 32 wide. Measured against the direct kernel, batch 64, on the 2-core
    /// AMD EPYC (forward, best of 20): 64→64 on 32×32 20.5 ms against 31,
    /// on 16×16 5.9 against 7.0; 128→128 on 16×16 19.6 against 28.0; 32→32
    /// on 32×32 7.0 against 8.1. Where it lost: every 8×8 map (64→64 4.5
    /// against 1.9: 20 tile slots per image make small products), 32→32 on
    /// 16×16 (2.0 against 1.9), 16→16 on 32×32 (3.0 against 2.4).
    pub(super) fn pays(c: usize, o: usize, k: usize, s: usize, ow: usize) -> bool {
        k == 3 && s == 1 && ((c >= 64 && o >= 64 && ow >= 16) || (c >= 32 && o >= 32 && ow >= 32))
    }

    /// `U_ξ = (G g Gᵀ)_ξ` of every kernel `g` (`w`: `[o][c][3][3]`), laid
    /// out `[ξ][o][c]`; G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]].
    fn kernels(w: &[f32], o: usize, c: usize) -> Vec<f32> {
        let mut u = vec![0f32; 16 * o * c];
        let g3 = |a: f32, b: f32, d: f32| [a, 0.5 * (a + b + d), 0.5 * (a - b + d), d];
        for oi in 0..o {
            for ci in 0..c {
                let g = &w[(oi * c + ci) * 9..][..9];
                // G g (4 × 3), then (G g) Gᵀ (4 × 4).
                let cols = [0, 1, 2].map(|j| g3(g[j], g[3 + j], g[6 + j]));
                for i in 0..4 {
                    let row = g3(cols[0][i], cols[1][i], cols[2][i]);
                    for (j, v) in row.into_iter().enumerate() {
                        u[((4 * i + j) * o + oi) * c + ci] = v;
                    }
                }
            }
        }
        u
    }

    /// Tile rows per band: transformed inputs (16·c per tile slot) and
    /// products (16·o) within about 4 MiB, so that a 32×32 image is one
    /// band. Smaller bands (fitting L2) measured slower: the products over
    /// fewer tiles (50–60 columns) ran far below `gemm`'s pace (64→64 on
    /// 32×32: 27 ms at 512 KiB, 24 at 1 MiB, 21 at 4 MiB; on 16×16: 7.4,
    /// 6.1, 5.9; alternating runs).
    fn band_rows(c: usize, o: usize, stride: usize) -> usize {
        ((65536 / (c + o).max(1)).max(8) / stride.max(1)).max(1)
    }

    /// The convolution [`super::valid_conv`] describes (k = 3, s = 1).
    pub(super) fn conv(
        src: &[f32],
        spread: Spread,
        w: &[f32],
        o: usize,
        bias: Option<&[f32]>,
        relu: bool,
    ) -> Vec<f32> {
        let ([n, c, h, wd], [hh, ww]) = (spread.dims, spread.size);
        assert!(hh >= 3 && ww >= 3, "Winograd: input smaller than the kernel");
        assert!(src.len() >= n * c * h * wd && w.len() >= o * c * 9, "Winograd operands");
        assert!(bias.is_none_or(|b| b.len() >= o), "bias length");
        let (oh, ow) = (hh - 2, ww - 2);
        let (tiles_y, tiles_x) = (oh.div_ceil(2), ow.div_ceil(2));
        let u = kernels(w, o, c);
        // Tiles are indexed row · (tiles_x + 1) + column: one column past
        // each row's last tile is computed and never read, so that every
        // transform below is one run along the band, not one per row.
        let stride = tiles_x + 1;
        // Bands of equal height (within one row) per image.
        let per_image = tiles_y.div_ceil(band_rows(c, o, stride).min(tiles_y));
        let rows = tiles_y.div_ceil(per_image);
        let tmax = rows * stride;
        let mut out = vec![0f32; n * o * oh * ow];
        if out.is_empty() {
            return out;
        }
        let dst = Shared(out.as_mut_ptr());
        let geo = Geo { c, o, oh, ow, tiles_x, tmax, relu };
        // Transformed inputs and products, four placed planes and eight
        // column transforms (each a run past the band by one row and one),
        // and the outputs' six runs.
        let scratch = 16 * (c + o) * tmax + 12 * (tmax + stride + 1) + 6 * tmax;
        (0..n * per_image).into_par_iter().for_each_init(
            || vec![0f32; scratch],
            |buf, band_index| {
                let (img, first) = (band_index / per_image, band_index % per_image * rows);
                let ty = [first, (first + rows).min(tiles_y)];
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: AVX2 and FMA were detected just above.
                    unsafe { band_avx2(src, &spread, &u, bias, geo, img, ty, buf, dst) };
                    return;
                }
                band(src, &spread, &u, bias, geo, img, ty, buf, dst);
            },
        );
        out
    }

    /// Sizes of one call.
    #[derive(Clone, Copy)]
    struct Geo {
        c: usize,
        o: usize,
        oh: usize,
        ow: usize,
        tiles_x: usize,
        /// Tile slots per band, rows · (tiles_x + 1): the products' row
        /// stride.
        tmax: usize,
        /// ReLU on the outputs.
        relu: bool,
    }

    /// [`band`] compiled for AVX2 and FMA (its loops vectorise 8 wide).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn band_avx2(
        src: &[f32],
        spread: &Spread,
        u: &[f32],
        bias: Option<&[f32]>,
        geo: Geo,
        img: usize,
        ty: [usize; 2],
        buf: &mut [f32],
        dst: Shared,
    ) {
        band(src, spread, u, bias, geo, img, ty, buf, dst);
    }

    /// Tile rows `ty0..ty1` of image `img`: inputs transformed, the 16
    /// products, outputs transformed and written with the bias.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn band(
        src: &[f32],
        spread: &Spread,
        u: &[f32],
        bias: Option<&[f32]>,
        Geo { c, o, oh, ow, tiles_x, tmax, relu }: Geo,
        img: usize,
        [ty0, ty1]: [usize; 2],
        buf: &mut [f32],
        dst: Shared,
    ) {
        let x = tiles_x + 1;
        // Tile slots of this band (row r, column xt at r·x + xt).
        let t = (ty1 - ty0) * x;
        let (v, rest) = buf.split_at_mut(16 * c * tmax);
        let (m, rest) = rest.split_at_mut(16 * o * tmax);
        let (scratch, rest) = rest.split_at_mut(12 * (t + x + 1));
        let ys = &mut rest[..6 * t];
        inputs(src, spread, [c, tiles_x, tmax], img, [ty0, ty1], v, scratch);
        // M_ξ (o × t, rows t apart) = U_ξ (o × c) · V_ξ (c × t).
        for xi in 0..16 {
            product(
                [o, t, c],
                &mut m[xi * o * tmax..],
                false,
                (&u[xi * o * c..], c, 1),
                (&v[xi * c * tmax..], tmax, 1),
            );
        }
        // Y = Aᵀ M A, Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]], plus the bias:
        // row a of Aᵀ M (four runs along the band), then its columns into
        // the even and odd output columns of each tile row's output row.
        let (p, ys) = ys.split_at_mut(4 * t);
        for oi in 0..o {
            let b = bias.map_or(0.0, |b| b[oi]);
            let mm: [&[f32]; 16] = std::array::from_fn(|xi| &m[xi * o * tmax + oi * t..][..t]);
            for a in 0..2 {
                for (j, pj) in p.chunks_exact_mut(t).enumerate() {
                    if a == 0 {
                        zip3(pj, mm[j], mm[4 + j], mm[8 + j], |x, y, z| x + y + z);
                    } else {
                        zip3(pj, mm[4 + j], mm[8 + j], mm[12 + j], |x, y, z| x - y - z);
                    }
                }
                let (p0, rest) = p.split_at(t);
                let (p1, rest) = rest.split_at(t);
                let (p2, p3) = rest.split_at(t);
                let (ye, yo) = ys.split_at_mut(t);
                if relu {
                    zip3(ye, p0, p1, p2, |x, y, z| (x + y + z + b).max(0.0));
                    zip3(yo, p1, p2, p3, |x, y, z| (x - y - z + b).max(0.0));
                } else {
                    zip3(ye, p0, p1, p2, |x, y, z| x + y + z + b);
                    zip3(yo, p1, p2, p3, |x, y, z| x - y - z + b);
                }
                for r in 0..ty1 - ty0 {
                    let y = 2 * (ty0 + r) + a;
                    if y >= oh {
                        break;
                    }
                    // SAFETY: output row y of (img, oi) belongs to tile row
                    // ty0 + r alone, and bands hold disjoint tile rows.
                    let line = unsafe { dst.slice(((img * o + oi) * oh + y) * ow, ow) };
                    let (ye, yo) = (&ye[r * x..][..tiles_x], &yo[r * x..][..tiles_x]);
                    let pairs = line.chunks_exact_mut(2);
                    let n = pairs.len();
                    for (pair, (e, d)) in pairs.zip(ye.iter().zip(yo)) {
                        pair[0] = *e;
                        pair[1] = *d;
                    }
                    // An odd width: the last tile's left column only.
                    if ow % 2 == 1 {
                        line[2 * n] = ye[n];
                    }
                }
            }
        }
    }

    /// The weight gradient of a 3×3 stride-1 convolution (`[o][c][3][3]`):
    /// `src` placed as `spread` says is the forward's input, `g` the output
    /// gradient `[n][o][oh][ow]`. By the transposition principle each 2×2
    /// tile h of G and its 4×4 input patch d give the 3×3 correlation
    /// `Gᵀ [(A h Aᵀ) ⊙ (Bᵀ d B)] G` with the forward's matrices (A = (Aᵀ)ᵀ),
    /// so the sum over tiles is taken in the transformed domain — 16
    /// products `M_ξ += H_ξ · V_ξᵀ` whose depth is the tiles — and
    /// transformed back once. Bands are summed in a fixed number of groups,
    /// each in order, then the groups in order: the same sums whatever the
    /// threads.
    pub(super) fn weight_grad(src: &[f32], spread: Spread, g: &[f32], o: usize) -> Vec<f32> {
        let ([n, c, h, wd], [hh, ww]) = (spread.dims, spread.size);
        assert!(hh >= 3 && ww >= 3, "Winograd: input smaller than the kernel");
        let (oh, ow) = (hh - 2, ww - 2);
        assert!(src.len() >= n * c * h * wd && g.len() >= n * o * oh * ow, "Winograd operands");
        let (tiles_y, tiles_x) = (oh.div_ceil(2), ow.div_ceil(2));
        let stride = tiles_x + 1;
        let per_image = tiles_y.div_ceil(band_rows(c, o, stride).min(tiles_y).max(1));
        let rows = tiles_y.div_ceil(per_image.max(1));
        let tmax = rows * stride;
        let bands = n * per_image;
        let per_group = bands.div_ceil(super::DW_GROUPS).max(1);
        let scratch = 16 * (c + o) * tmax + 12 * (tmax + stride + 1) + 6 * tmax;
        let groups: Vec<Vec<f32>> = (0..bands.div_ceil(per_group))
            .into_par_iter()
            .map(|gi| {
                let mut acc = vec![0f32; 16 * o * c];
                let mut buf = vec![0f32; scratch];
                for bi in gi * per_group..((gi + 1) * per_group).min(bands) {
                    let (img, first) = (bi / per_image, bi % per_image * rows);
                    let ty = [first, (first + rows).min(tiles_y)];
                    let args = (src, &spread, g, [c, o, oh, ow, tiles_x, tmax], img, ty);
                    #[cfg(target_arch = "x86_64")]
                    if std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                    {
                        // SAFETY: AVX2 and FMA were detected just above.
                        unsafe { grad_band_avx2(args, &mut buf, &mut acc) };
                        continue;
                    }
                    grad_band(args, &mut buf, &mut acc);
                }
                acc
            })
            .collect();
        let mut m = vec![0f32; 16 * o * c];
        for part in &groups {
            m.iter_mut().zip(part).for_each(|(x, y)| *x += y);
        }
        // dW[oi][ci] = Gᵀ M G, Gᵀ = [[1, ½, ½, 0], [0, ½, −½, 0],
        // [0, ½, ½, 1]].
        let back = |m0: f32, m1: f32, m2: f32, m3: f32| {
            [m0 + 0.5 * (m1 + m2), 0.5 * (m1 - m2), 0.5 * (m1 + m2) + m3]
        };
        let mut dw = vec![0f32; o * c * 9];
        for oi in 0..o {
            for ci in 0..c {
                let at = |xi: usize| m[(xi * o + oi) * c + ci];
                let cols: [[f32; 3]; 4] =
                    std::array::from_fn(|j| back(at(j), at(4 + j), at(8 + j), at(12 + j)));
                let out = &mut dw[(oi * c + ci) * 9..][..9];
                for i in 0..3 {
                    let row = back(cols[0][i], cols[1][i], cols[2][i], cols[3][i]);
                    out[3 * i..3 * i + 3].copy_from_slice(&row);
                }
            }
        }
        dw
    }

    type GradArgs<'a> = (&'a [f32], &'a Spread, &'a [f32], [usize; 6], usize, [usize; 2]);

    /// [`grad_band`] compiled for AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn grad_band_avx2(args: GradArgs<'_>, buf: &mut [f32], acc: &mut [f32]) {
        grad_band(args, buf, acc);
    }

    /// One band's terms of the weight gradient added to `acc`
    /// (`[16][o][c]`): V of its input patches, H = A h Aᵀ of its gradient
    /// tiles (zero in the spare slot past each row, so that slot adds
    /// nothing), then `M_ξ += H_ξ · V_ξᵀ`.
    #[inline(always)]
    fn grad_band(
        (src, spread, g, [c, o, oh, ow, tiles_x, tmax], img, [ty0, ty1]): GradArgs<'_>,
        buf: &mut [f32],
        acc: &mut [f32],
    ) {
        let x = tiles_x + 1;
        let t = (ty1 - ty0) * x;
        let (v, rest) = buf.split_at_mut(16 * c * tmax);
        let (hv, rest) = rest.split_at_mut(16 * o * tmax);
        let (scratch, rest) = rest.split_at_mut(12 * (t + x + 1));
        inputs(src, spread, [c, tiles_x, tmax], img, [ty0, ty1], v, scratch);
        // G's rows 2·ty and 2·ty + 1 of each tile row, even and odd
        // columns (zeros past oh, ow and in the spare slot).
        let (rows, rest) = rest.split_at_mut(4 * t);
        let [e0, o0, e1, o1] = split4(rows);
        let (re, ro) = rest[..2 * t].split_at_mut(t);
        for oi in 0..o {
            for p in [&mut *e0, &mut *o0, &mut *e1, &mut *o1] {
                p.fill(0.0);
            }
            for r in 0..ty1 - ty0 {
                for a in 0..2 {
                    let y = 2 * (ty0 + r) + a;
                    if y >= oh {
                        break;
                    }
                    let line = &g[((img * o + oi) * oh + y) * ow..][..ow];
                    let (e, od) = if a == 0 { (&mut *e0, &mut *o0) } else { (&mut *e1, &mut *o1) };
                    let (e, od) = (&mut e[r * x..][..tiles_x], &mut od[r * x..][..tiles_x]);
                    for (xt, pair) in line.chunks(2).enumerate() {
                        e[xt] = pair[0];
                        if let Some(v) = pair.get(1) {
                            od[xt] = *v;
                        }
                    }
                }
            }
            // Rows of A h: h0, h0 + h1, h0 − h1, −h1; then the same over
            // each row's two columns.
            for i in 0..4 {
                match i {
                    0 => {
                        re.copy_from_slice(e0);
                        ro.copy_from_slice(o0);
                    }
                    1 => {
                        zip2(re, e0, e1, |a, b| a + b);
                        zip2(ro, o0, o1, |a, b| a + b);
                    }
                    2 => {
                        zip2(re, e0, e1, |a, b| a - b);
                        zip2(ro, o0, o1, |a, b| a - b);
                    }
                    _ => {
                        zip2(re, e1, e1, |a, _| -a);
                        zip2(ro, o1, o1, |a, _| -a);
                    }
                }
                let step = o * tmax;
                let [h0, h1, h2, h3] = four(hv, 4 * i * step + oi * tmax, step, t);
                h0.copy_from_slice(re);
                zip2(h1, re, ro, |a, b| a + b);
                zip2(h2, re, ro, |a, b| a - b);
                zip2(h3, ro, ro, |a, _| -a);
            }
        }
        // M_ξ (o × c) += H_ξ (o × t) · V_ξᵀ (t × c).
        for xi in 0..16 {
            product(
                [o, c, t],
                &mut acc[xi * o * c..],
                true,
                (&hv[xi * o * tmax..], tmax, 1),
                (&v[xi * c * tmax..], 1, tmax),
            );
        }
    }

    /// `V_ξ[ci][slot] = (Bᵀ d B)_ξ` of every 4×4 input patch d of tile
    /// rows `ty0..ty1` of image `img` (`v`: `[16][c][tmax]`), with
    /// Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]:
    /// columns first (over the patch's rows), then each tile's four
    /// columns, each a run along the band. `scratch` holds 12 · (slots +
    /// tiles_x + 2) floats.
    #[inline(always)]
    fn inputs(
        src: &[f32],
        spread: &Spread,
        [c, tiles_x, tmax]: [usize; 3],
        img: usize,
        [ty0, ty1]: [usize; 2],
        v: &mut [f32],
        scratch: &mut [f32],
    ) {
        let x = tiles_x + 1;
        let t = (ty1 - ty0) * x;
        let plane = t + x + 1;
        // The placed input rows 2·ty0 … 2·ty1 + 1, split four ways: even
        // or odd row (E, O) by even or odd column (e, o), each plane one
        // row per tile row plus the next one, x values a row. Tile row r's
        // patch is rows r and r + 1 of the E and O planes; its columns xt
        // and xt + 1 of the e and o planes.
        let (placed, rest) = scratch.split_at_mut(4 * plane);
        let [ee, eo, oe, oo] = split4(placed);
        // (The last value of each plane is read by the slot past the last
        // row's tiles only.)
        for p in [&mut *ee, &mut *eo, &mut *oe, &mut *oo] {
            p[t + x..].fill(0.0);
        }
        // Columns' transforms t0…t3 of the patches, even and odd columns.
        let cols = &mut rest[..8 * plane];
        for ci in 0..c {
            for r in 0..=ty1 - ty0 {
                let y = 2 * (ty0 + r);
                spread.row_split(src, [img, ci, y], &mut ee[r * x..][..x], &mut eo[r * x..][..x]);
                spread.row_split(
                    src,
                    [img, ci, y + 1],
                    &mut oe[r * x..][..x],
                    &mut oo[r * x..][..x],
                );
            }
            let (d0e, d0o, d1e, d1o) = (&ee[..t + 1], &eo[..t + 1], &oe[..t + 1], &oo[..t + 1]);
            let (d2e, d2o, d3e, d3o) = (&ee[x..], &eo[x..], &oe[x..], &oo[x..]);
            let [c0e, c0o, c1e, c1o, c2e, c2o, c3e, c3o] = split8(cols, t + 1);
            zip2(c0e, d0e, d2e, |a, b| a - b);
            zip2(c0o, d0o, d2o, |a, b| a - b);
            zip2(c1e, d1e, d2e, |a, b| a + b);
            zip2(c1o, d1o, d2o, |a, b| a + b);
            zip2(c2e, d2e, d1e, |a, b| a - b);
            zip2(c2o, d2o, d1o, |a, b| a - b);
            zip2(c3e, d1e, d3e, |a, b| a - b);
            zip2(c3o, d1o, d3o, |a, b| a - b);
            for (i, (e, od)) in [(&*c0e, &*c0o), (&*c1e, &*c1o), (&*c2e, &*c2o), (&*c3e, &*c3o)]
                .into_iter()
                .enumerate()
            {
                let step = c * tmax;
                let [v0, v1, v2, v3] = four(v, 4 * i * step + ci * tmax, step, t);
                let (e0, e1, o0, o1) = (&e[..t], &e[1..], &od[..t], &od[1..]);
                zip2(v0, e0, e1, |a, b| a - b);
                zip2(v1, o0, e1, |a, b| a + b);
                zip2(v2, e1, o0, |a, b| a - b);
                zip2(v3, o0, o1, |a, b| a - b);
            }
        }
    }

    /// Eight runs of `len` from the front of `s`.
    fn split8(s: &mut [f32], len: usize) -> [&mut [f32]; 8] {
        let mut rest = s;
        std::array::from_fn(|_| {
            let (a, b) = std::mem::take(&mut rest).split_at_mut(len);
            rest = b;
            a
        })
    }

    /// The four runs of `len` at `first`, `first + step`, … (step ≥ len).
    fn four(v: &mut [f32], first: usize, step: usize, len: usize) -> [&mut [f32]; 4] {
        let (_, rest) = v.split_at_mut(first);
        let (a, rest) = rest.split_at_mut(step);
        let (b, rest) = rest.split_at_mut(step);
        let (c, d) = rest.split_at_mut(step);
        [&mut a[..len], &mut b[..len], &mut c[..len], &mut d[..len]]
    }

    /// Four equal quarters of `s`.
    fn split4(s: &mut [f32]) -> [&mut [f32]; 4] {
        let q = s.len() / 4;
        let (a, rest) = s.split_at_mut(q);
        let (b, rest) = rest.split_at_mut(q);
        let (c, d) = rest.split_at_mut(q);
        [a, b, c, &mut d[..q]]
    }

    /// `out[i] = f(a[i], b[i])` (a loop the compiler vectorises).
    #[inline(always)]
    fn zip2(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
        for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
            *o = f(*a, *b);
        }
    }

    /// `out[i] = f(a[i], b[i], c[i])` (a loop the compiler vectorises).
    #[inline(always)]
    fn zip3(out: &mut [f32], a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) {
        for (((o, a), b), c) in out.iter_mut().zip(a).zip(b).zip(c) {
            *o = f(*a, *b, *c);
        }
    }
}

/// Direct convolution kernels for AVX2 with FMA, nothing copied per tap
/// (the matrix-product path gathers every input value k² times, as much
/// work as the products when a layer has 16 channels): `segments` (stride
/// 1, the whole 8-column segments of each row: positions in the lanes, two
/// segments × six output channels, vector stores) and `plane` (the rest,
/// and strided layers: 16 output channels in two registers × up to 6
/// positions, scattered stores). Chosen at run time; other CPUs take the
/// matrix-product path.
mod direct {
    use rayon::prelude::*;

    /// Output positions per step (with 2 × 6 accumulators, the weights and
    /// a broadcast: 15 of the 16 registers).
    const NX: usize = 6;
    /// Output channels per block (two registers).
    const LANES: usize = 16;

    /// `[o][c][k][k]` rearranged as `[o / g][c][k][k][g]`, zeros past o.
    fn pack(w: &[f32], o: usize, c: usize, kk: usize, g: usize) -> Vec<f32> {
        let mut out = vec![0f32; o.div_ceil(g) * c * kk * g];
        for oi in 0..o {
            for ci in 0..c {
                for t in 0..kk {
                    out[(((oi / g) * c + ci) * kk + t) * g + oi % g] = w[(oi * c + ci) * kk + t];
                }
            }
        }
        out
    }

    /// The convolution [`super::valid_conv`] describes, or `None` where
    /// this CPU lacks AVX2 and FMA.
    pub(super) fn conv(
        src: &[f32],
        spread: super::Spread,
        w: &[f32],
        o: usize,
        [k, s]: [usize; 2],
        bias: Option<&[f32]>,
        relu: bool,
    ) -> Option<Vec<f32>> {
        let ([n, c, h, wd], [hh, ww]) = (spread.dims, spread.size);
        // Layers with few input channels (the first: c = 1, 3) do too
        // little per output for the kernel's scattered stores; the matrix
        // products measured faster there.
        #[cfg(target_arch = "x86_64")]
        if c * k * k >= 64
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            let (oh, ow) = ((hh - k) / s + 1, (ww - k) / s + 1);
            assert!(
                src.len() >= n * c * h * wd && w.len() >= o * c * k * k,
                "convolution operands"
            );
            assert!(bias.is_none_or(|b| b.len() >= o), "bias length");
            let packed = pack(w, o, c, k * k, LANES);
            let by_six = pack(w, o, c, k * k, avx2::OC);
            let plane = oh * ow;
            let mut out = vec![0f32; n * o * plane];
            if out.is_empty() {
                return Some(out);
            }
            // One task per image: its planes placed in a buffer of the
            // thread's (in cache), then every block of output channels.
            out.par_chunks_mut(o * plane).zip(src.par_chunks(c * h * wd).take(n)).for_each_init(
                || vec![0f32; c * hh * ww],
                |x, (image, img)| {
                    spread.image(img, x);
                    // Stride 1: whole 8-column segments with positions in
                    // the lanes (vector stores); the rest channels in the
                    // lanes (kernel `plane`).
                    let x_from = if s == 1 { ow / 8 * 8 } else { 0 };
                    if x_from > 0 {
                        // SAFETY: AVX2 and FMA were detected above.
                        unsafe {
                            avx2::segments(x, [c, hh, ww], &by_six, k, [oh, ow], bias, image)
                        };
                    }
                    if x_from < ow {
                        for (ob, dst) in image.chunks_mut(LANES * plane).enumerate() {
                            let lanes = dst.len() / plane;
                            let wb = &packed[ob * c * k * k * LANES..][..c * k * k * LANES];
                            let b = bias.map(|b| &b[ob * LANES..][..lanes]);
                            // SAFETY: AVX2 and FMA were detected above.
                            unsafe {
                                avx2::plane(
                                    x,
                                    [c, hh, ww],
                                    wb,
                                    [k, s],
                                    [oh, ow, x_from],
                                    lanes,
                                    b,
                                    dst,
                                )
                            };
                        }
                    }
                    // The image's planes are still in cache.
                    if relu {
                        image.iter_mut().for_each(|v| *v = v.max(0.0));
                    }
                },
            );
            return Some(out);
        }
        let _ = (src, n, c, h, wd, hh, ww, w, o, k, s, bias, relu);
        None
    }

    #[cfg(target_arch = "x86_64")]
    mod avx2 {
        use super::{LANES, NX};
        use std::arch::x86_64::*;

        /// Output channels per step of [`segments`] (with two 8-position
        /// segments: 12 accumulators, two inputs and a broadcast).
        pub(super) const OC: usize = 6;

        /// One image's output (`out`: `[o][oh][ow]`, o = bias's or the
        /// packed weights' channel count) at the whole 8-column segments of
        /// every row (columns below ow / 8 · 8), stride 1: positions in the
        /// lanes, two segments and six output channels per step, each step
        /// one (channel, tap) — two input loads, six weight broadcasts,
        /// twelve multiply-adds — and vector stores into the planes.
        /// `by_six` is the kernel as `[o / 6][c][k][k][6]`.
        ///
        /// # Safety
        /// The CPU has AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        pub(super) unsafe fn segments(
            x: &[f32],
            [c, hh, ww]: [usize; 3],
            by_six: &[f32],
            k: usize,
            [oh, ow]: [usize; 2],
            bias: Option<&[f32]>,
            out: &mut [f32],
        ) {
            let plane = oh * ow;
            let o = out.len() / plane.max(1);
            let offs: Vec<usize> = (0..c * k * k)
                .map(|i| (i / (k * k)) * hh * ww + (i % (k * k) / k) * ww + i % k)
                .collect();
            // Segment starts: (input offset, output offset) of each.
            let segs: Vec<(usize, usize)> = (0..oh)
                .flat_map(|y| (0..ow / 8).map(move |j| (y * ww + 8 * j, y * ow + 8 * j)))
                .collect();
            assert!(
                by_six.len() >= o.div_ceil(OC) * c * k * k * OC
                    && x.len() >= c * hh * ww
                    && (k - 1) * ww + k - 1 + (oh - 1) * ww + ow <= hh * ww,
                "segment kernel operands"
            );
            for g in 0..o.div_ceil(OC) {
                let chans = (o - g * OC).min(OC);
                let mut b6 = [0f32; OC];
                if let Some(b) = bias {
                    b6[..chans].copy_from_slice(&b[g * OC..][..chans]);
                }
                let wg = by_six[g * c * k * k * OC..].as_ptr();
                for pair in segs.chunks(2) {
                    let (a, b) = (pair[0], pair[pair.len() - 1]);
                    let xin = [x[a.0..].as_ptr(), x[b.0..].as_ptr()];
                    let outs = [
                        out[g * OC * plane + a.1..].as_mut_ptr(),
                        out[g * OC * plane + b.1..].as_mut_ptr(),
                    ];
                    let args = (xin, &offs[..], wg, &b6, outs, plane);
                    // SAFETY: each segment's taps read 8 values from
                    // offset start + offs[i] ≤ (oh − 1)·ww + ow − 8 + (c −
                    // 1)·hh·ww + (k − 1)·ww + k − 1 < c·hh·ww (checked
                    // above); its stores write 8 values of the first
                    // `chans` planes of group g inside `out`; AVX2 and FMA
                    // are present (the caller's contract).
                    unsafe {
                        match (pair.len(), chans) {
                            (2, 6) => seg::<2, 6>(args),
                            (2, 5) => seg::<2, 5>(args),
                            (2, 4) => seg::<2, 4>(args),
                            (2, 3) => seg::<2, 3>(args),
                            (2, 2) => seg::<2, 2>(args),
                            (2, _) => seg::<2, 1>(args),
                            (_, 6) => seg::<1, 6>(args),
                            (_, 5) => seg::<1, 5>(args),
                            (_, 4) => seg::<1, 4>(args),
                            (_, 3) => seg::<1, 3>(args),
                            (_, 2) => seg::<1, 2>(args),
                            (_, _) => seg::<1, 1>(args),
                        }
                    }
                }
            }
        }

        type SegArgs<'a> =
            ([*const f32; 2], &'a [usize], *const f32, &'a [f32; OC], [*mut f32; 2], usize);

        /// `V` segments (≤ 2) of 8 positions, `C` output channels (≤ 6):
        /// bias + Σ_i weight[i][oc] · input[start + offs[i] ..][..8],
        /// stored at `out[v] + oc·plane`.
        ///
        /// # Safety
        /// As [`segments`] says.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn seg<const V: usize, const C: usize>(
            (xin, offs, wg, bias, out, plane): SegArgs<'_>,
        ) {
            // SAFETY: the caller's contract.
            unsafe {
                let mut acc = [[_mm256_setzero_ps(); V]; C];
                for (oc, row) in acc.iter_mut().enumerate() {
                    *row = [_mm256_set1_ps(bias[oc]); V];
                }
                for (i, &off) in offs.iter().enumerate() {
                    let mut xv = [_mm256_setzero_ps(); V];
                    for v in 0..V {
                        xv[v] = _mm256_loadu_ps(xin[v].add(off));
                    }
                    for (oc, row) in acc.iter_mut().enumerate() {
                        let wv = _mm256_broadcast_ss(&*wg.add(i * OC + oc));
                        for v in 0..V {
                            row[v] = _mm256_fmadd_ps(xv[v], wv, row[v]);
                        }
                    }
                }
                for (oc, row) in acc.iter().enumerate() {
                    for v in 0..V {
                        _mm256_storeu_ps(out[v].add(oc * plane), row[v]);
                    }
                }
            }
        }

        /// One image's output planes for one block of `lanes` channels
        /// (`out`: `[lanes][oh][ow]`), columns `x_from..ow` of each row.
        ///
        /// # Safety
        /// The CPU has AVX2 and FMA.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = "avx2,fma")]
        pub(super) unsafe fn plane(
            x: &[f32],
            [c, hh, ww]: [usize; 3],
            wb: &[f32],
            [k, s]: [usize; 2],
            [oh, ow, x_from]: [usize; 3],
            lanes: usize,
            bias: Option<&[f32]>,
            out: &mut [f32],
        ) {
            // Where each (channel, tap) reads, from a position's first tap.
            let offs: Vec<usize> = (0..c * k * k)
                .map(|i| (i / (k * k)) * hh * ww + (i % (k * k) / k) * ww + i % k)
                .collect();
            let mut b16 = [0f32; LANES];
            if let Some(b) = bias {
                b16[..lanes].copy_from_slice(&b[..lanes]);
            }
            let mut acc = [[0f32; LANES]; NX];
            for y in 0..oh {
                let mut x0 = x_from;
                while x0 < ow {
                    let nx = (ow - x0).min(NX);
                    // SAFETY: the taps of positions x0..x0 + nx of row y
                    // read rows y·s .. y·s + k − 1 < hh and columns up to
                    // (x0 + nx − 1)·s + k − 1 < ww of each of the c planes,
                    // which `offs` addresses; wb holds c·k² taps of LANES
                    // weights; AVX2 and FMA are present (the caller's
                    // contract).
                    unsafe {
                        let xr = x.as_ptr().add(y * s * ww + x0 * s);
                        let args = (xr, &offs[..], s, wb.as_ptr(), &b16, &mut acc);
                        match nx {
                            6 => block::<6>(args),
                            5 => block::<5>(args),
                            4 => block::<4>(args),
                            3 => block::<3>(args),
                            2 => block::<2>(args),
                            _ => block::<1>(args),
                        }
                    }
                    for (l, plane) in out.chunks_exact_mut(oh * ow).take(lanes).enumerate() {
                        let row = &mut plane[y * ow + x0..][..nx];
                        for (j, v) in row.iter_mut().enumerate() {
                            *v = acc[j][l];
                        }
                    }
                    x0 += nx;
                }
            }
        }

        type Args<'a> = (
            *const f32,
            &'a [usize],
            usize,
            *const f32,
            &'a [f32; LANES],
            &'a mut [[f32; LANES]; NX],
        );

        /// `N` positions (≤ NX, `s` apart from `xr`) of a row, 16 output
        /// channels: `acc[j]` = bias + Σ over (channel, tap) i of weights
        /// `wb[16·i..]` times the input at `xr + offs[i] + j·s`.
        ///
        /// # Safety
        /// As [`plane`]'s loop says: every tap of the N positions is
        /// inside the planes, and the CPU has AVX2 and FMA.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn block<const N: usize>((xr, offs, s, wb, bias, acc): Args<'_>) {
            // SAFETY: the caller's contract.
            unsafe {
                let mut lo = [_mm256_loadu_ps(bias.as_ptr()); N];
                let mut hi = [_mm256_loadu_ps(bias.as_ptr().add(8)); N];
                for (i, &off) in offs.iter().enumerate() {
                    let w0 = _mm256_loadu_ps(wb.add(i * LANES));
                    let w1 = _mm256_loadu_ps(wb.add(i * LANES + 8));
                    let row = xr.add(off);
                    for j in 0..N {
                        let v = _mm256_broadcast_ss(&*row.add(j * s));
                        lo[j] = _mm256_fmadd_ps(w0, v, lo[j]);
                        hi[j] = _mm256_fmadd_ps(w1, v, hi[j]);
                    }
                }
                for j in 0..N {
                    _mm256_storeu_ps(acc[j].as_mut_ptr(), lo[j]);
                    _mm256_storeu_ps(acc[j].as_mut_ptr().add(8), hi[j]);
                }
            }
        }
    }
}

#[derive(Debug)]
struct ConvStep;
#[derive(Debug)]
struct ConvStepNoBias;

/// The state kept for the backward pass: input, weights, geometry.
type ConvState = (FlexTensor, FlexTensor, Geometry);

/// Whether the weight gradient goes through Winograd's transform: as the
/// forward pass decides for this layer (`wd` its input width).
fn winograd_dw(geo: Geometry, c: usize, o: usize, wd: usize) -> bool {
    let ow = (wd + 2 * geo.p).saturating_sub(geo.k) / geo.s + 1;
    match geo.path {
        Path::Auto => winograd::pays(c, o, geo.k, geo.s, ow),
        Path::Winograd => geo.k == 3 && geo.s == 1,
        Path::Direct | Path::Products => false,
    }
}

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
    let [n, _, h, wd] = dims4(&x);
    let [_, _, oh, ow] = dims4(&g);
    let kk = k * k;
    if let Some(node) = node_x {
        // dX[ci][iy][ix] = Σ W[oi][ci][kh][kw] · G[oi][oy][ox] over the
        // output positions with oy·s + kh − p = iy (and the same across):
        // the kernel as [in][out][kh][kw], flipped.
        let wv = flex_f32(&w);
        let wv = slice(&wv);
        let mut wt = vec![0f32; c * o * kk];
        for ci in 0..c {
            for oi in 0..o {
                let (dst, src) =
                    (&mut wt[(ci * o + oi) * kk..][..kk], &wv[(oi * c + ci) * kk..][..kk]);
                dst.iter_mut().zip(src.iter().rev()).for_each(|(d, v)| *d = *v);
            }
        }
        // G spread by the stride inside a border of k − 1 − p: a valid
        // stride-1 convolution of it with the flipped kernel is dX.
        let q = k - 1 - geo.p;
        let (hh, ww) = (h + k - 1, wd + k - 1);
        let spread = Spread { dims: [n, o, oh, ow], q, s: geo.s, size: [hh, ww] };
        let dx =
            valid_conv(slice(&g), spread, &wt, c, [k, 1], None, Geometry { relu: false, ..geo });
        grads.register::<Flex>(node, tensor(dx, [n, c, h, wd]));
    }
    if let Some(node) = node_w.filter(|_| winograd_dw(geo, c, o, wd)) {
        let (hh, ww) = (h + 2 * geo.p, wd + 2 * geo.p);
        let padded = Spread { dims: [n, c, h, wd], q: geo.p, s: 1, size: [hh, ww] };
        let dw = winograd::weight_grad(slice(&x), padded, slice(&g), o);
        grads.register::<Flex>(node, tensor(dw, [o, c, k, k]));
    } else if let Some(node) = node_w {
        // dW = Σ_tiles G_tile · Col_tileᵀ (Col the forward's gathered
        // views), summed into per-thread partial sums; the result is in the
        // kernel's own layout.
        let (hh, ww) = (h + 2 * geo.p, wd + 2 * geo.p);
        let xp = Spread { dims: [n, c, h, wd], q: geo.p, s: 1, size: [hh, ww] }.all(slice(&x));
        let depth = c * kk;
        let rows = tile_rows(ow, o, depth);
        let max_len = rows * ow;
        let total = n * oh;
        let gv = slice(&g);
        // A fixed number of groups of consecutive tiles, each summed in
        // order on one thread, then the groups in order: the same sums
        // whatever the thread count or scheduling (training runs must
        // reproduce bit for bit: resumed runs, executors).
        let tiles = total.div_ceil(rows);
        let per_group = tiles.div_ceil(DW_GROUPS).max(1);
        let groups: Vec<Vec<f32>> = (0..tiles.div_ceil(per_group))
            .into_par_iter()
            .map(|gi| {
                let mut acc = vec![0f32; o * depth];
                let mut buf = vec![0f32; (o + depth) * max_len];
                for i in gi * per_group..((gi + 1) * per_group).min(tiles) {
                    let (r0, r1) = (i * rows, ((i + 1) * rows).min(total));
                    let len = (r1 - r0) * ow;
                    let (gt, cols) = buf.split_at_mut(o * max_len);
                    gather(&xp, [c, hh, ww], [k, geo.s], [oh, ow], [r0, r1], cols);
                    for r in r0..r1 {
                        for oi in 0..o {
                            gt[oi * len + (r - r0) * ow..][..ow].copy_from_slice(
                                &gv[(((r / oh) * o + oi) * oh + r % oh) * ow..][..ow],
                            );
                        }
                    }
                    // dWᵀ (depth × o) += Col · G_tileᵀ: gemm packs the
                    // smaller operand transposed.
                    product([depth, o, len], &mut acc, true, (cols, len, 1), (gt, 1, len));
                }
                acc
            })
            .collect();
        let mut dwt = vec![0f32; depth * o];
        for part in &groups {
            dwt.iter_mut().zip(part).for_each(|(x, y)| *x += y);
        }
        let mut dw = vec![0f32; o * depth];
        for (d, row) in dwt.chunks_exact(o.max(1)).enumerate() {
            for (oi, v) in row.iter().enumerate() {
                dw[oi * depth + d] = *v;
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
        fast: Option<Path>,
    ) -> Grads {
        let (x, wt, b) =
            (x.clone().require_grad(), wt.clone().require_grad(), b.clone().require_grad());
        let bias_t = bias.then(|| b.clone());
        // Some(path): ours, by that path; None: Burn's.
        let y = match fast {
            Some(path) => conv_with(x.clone(), wt.clone(), bias_t, opts.clone(), path),
            None => conv2d(x.clone(), wt.clone(), bias_t, opts.clone()),
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
            // Wide enough for several tiles (the last one short).
            (9, 24, 40, 6, 7, 3, 1, true),
            // The direct kernel's 8-column segments (an odd count per
            // image), a 3-column tail, channel groups of 6, 6, 1.
            (3, 8, 13, 7, 27, 3, 1, true),
            // Winograd's bands: five of eight tile rows (11 tiles each),
            // an odd width; with p = 0 and 2 the gradient's border is 2
            // and 0 (both parities of the placed columns).
            (4, 40, 48, 20, 21, 3, 1, true),
            (2, 5, 6, 9, 8, 3, 0, true),
            (2, 5, 6, 6, 7, 3, 2, false),
        ] {
            check_conv(n, c, o, h, w, k, p, 1, bias);
        }
        // Strided: ResNet's downsampling 3×3 and 1×1 projections, odd sizes.
        for (n, c, o, h, w, k, p, s, bias) in [
            (2, 3, 4, 8, 8, 3, 1, 2, false),
            (2, 3, 4, 7, 9, 3, 1, 2, true),
            (2, 4, 6, 8, 8, 1, 0, 2, false),
            (1, 2, 3, 9, 9, 3, 0, 3, true),
            (20, 24, 40, 7, 7, 3, 1, 2, true),
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
            let (ys, gxs, gws, gbs) = run(&x, &wt, &b, bias, &m, &opts, None);
            // Each of our paths (the direct kernel runs where the CPU has
            // it; Winograd's on 3×3 layers: their forward where stride 1,
            // the input gradient, a stride-1 convolution, always).
            let paths = if k == 3 {
                vec![Path::Winograd, Path::Direct, Path::Products]
            } else {
                vec![Path::Direct, Path::Products]
            };
            for path in paths {
                let what = format!("{what} {path:?}");
                let (yf, gxf, gwf, gbf) = run(&x, &wt, &b, bias, &m, &opts, Some(path));
                close(yf, ys.clone(), &format!("{what} output"));
                close(gxf, gxs.clone(), &format!("{what} dx"));
                close(gwf, gws.clone(), &format!("{what} dW"));
                match (gbf, gbs.clone()) {
                    (Some(f), Some(s)) => close(
                        f.reshape([1, o, 1, 1]),
                        s.reshape([1, o, 1, 1]),
                        &format!("{what} db"),
                    ),
                    (None, None) => assert!(!bias),
                    _ => panic!("{what}: bias gradient on one side only"),
                }
            }
            // Inference (no autodiff) takes the same forward, and with
            // ReLU applied as the outputs are written, by every path.
            let (xi, wi, bi) = (x.clone().inner(), wt.clone().inner(), b.clone().inner());
            let bi = bias.then_some(bi);
            close(
                conv(xi.clone(), wi.clone(), bi.clone(), opts.clone()),
                conv2d(xi.clone(), wi.clone(), bi.clone(), opts.clone()),
                &format!("{what} inference"),
            );
            // (Weights and biases of both signs, so that ReLU zeroes some
            // outputs.)
            let (wi, wt) = (wi.sub_scalar(0.5), wt.sub_scalar(0.5));
            let bi = bi.map(|b| b.sub_scalar(0.5));
            let b = b.sub_scalar(0.5);
            let relu = burn::tensor::activation::relu(conv2d(
                xi.clone(),
                wi.clone(),
                bi.clone(),
                opts.clone(),
            ));
            let zeros: i64 = relu.clone().equal_elem(0.0).int().sum().into_scalar();
            assert!(zeros > 0, "{what}: no output below zero");
            for path in [Path::Auto, Path::Winograd, Path::Direct, Path::Products] {
                let fused = conv_impl(xi.clone(), wi.clone(), bi.clone(), opts.clone(), path, true);
                close(fused, relu.clone(), &format!("{what} inference + ReLU, {path:?}"));
            }
            // Under autodiff, ReLU after the convolution.
            close(
                conv_relu(x.clone(), wt, bias.then(|| b.clone()), opts.clone()).inner(),
                relu,
                &format!("{what} autodiff + ReLU"),
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
