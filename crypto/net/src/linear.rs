//! Convolution and dense layers as one linear operator.
//!
//! A dense layer on n inputs is a 1×1 convolution on an n×1×1 tensor, so one
//! loop nest serves the float evaluator, the fixed-point reference and (in
//! the protocol) the server's online evaluation.

use crate::desc::Shape;

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
        let output = Shape::new(
            out_channels,
            (input.height + 2 * pad - kernel) / stride + 1,
            (input.width + 2 * pad - kernel) / stride + 1,
        );
        LinearOp {
            input,
            output,
            kernel,
            stride,
            pad,
        }
    }

    /// A dense layer from `inputs` to `outputs` features.
    pub fn dense(inputs: usize, outputs: usize) -> Self {
        LinearOp {
            input: Shape::new(inputs, 1, 1),
            output: Shape::new(outputs, 1, 1),
            kernel: 1,
            stride: 1,
            pad: 0,
        }
    }

    /// Number of weights: out × in × k × k.
    pub fn weights(&self) -> usize {
        self.output.channels * self.input.channels * self.kernel * self.kernel
    }

    /// Multiply-accumulates per output element.
    pub fn macs_per_output(&self) -> usize {
        self.input.channels * self.kernel * self.kernel
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
    let out = Shape::new(
        s.channels,
        (s.height - kernel) / stride + 1,
        (s.width - kernel) / stride + 1,
    );
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
