//! Batches: images of a split (normalised, optionally augmented) and their
//! labels, assembled in host memory and moved to a device.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use delphi_net::Normalization;

use crate::data::Split;

/// Converts host images (normalised with `norm`) and labels into a batch on `device`.
pub fn batch(
    split: &Split,
    idx: &[usize],
    augment: Option<u64>,
    device: &Device,
    norm: &Normalization,
) -> (Tensor<4>, Tensor<1, Int>) {
    HostBatch::new(split, idx, augment, norm).to_device(device)
}

/// A batch's pixels (normalised, optionally augmented) and labels in host
/// memory: what the prefetching thread of [`crate::train::Trainer::train_steps`] prepares
/// while the device runs the previous step.
pub struct HostBatch {
    pixels: Vec<f32>,
    labels: Vec<i64>,
    shape: [usize; 4],
}

impl HostBatch {
    /// The images at `idx` (augmented with the seed `augment`, if given).
    pub fn new(split: &Split, idx: &[usize], augment: Option<u64>, norm: &Normalization) -> Self {
        let [c, h, w] = split.kind.shape();
        let mut rng = augment.map(ChaCha8Rng::seed_from_u64);
        let mut pixels = Vec::with_capacity(idx.len() * c * h * w);
        for &i in idx {
            let img = match rng.as_mut() {
                Some(r) => split.image(i, Some(r), norm),
                None => split.image(i, None, norm),
            };
            pixels.extend(img);
        }
        HostBatch {
            pixels,
            labels: idx.iter().map(|&i| split.labels[i] as i64).collect(),
            shape: [idx.len(), c, h, w],
        }
    }

    /// The batch as tensors on `device`.
    pub fn to_device(self, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let n = self.labels.len();
        (
            Tensor::from_data(TensorData::new(self.pixels, self.shape), device),
            Tensor::from_data(TensorData::new(self.labels, [n]), device),
        )
    }
}
