//! Datasets: Fashion-MNIST (IDX, gzip), CIFAR-10/100 (binary version), and
//! a provider's own images or NumPy arrays ([`crate::disk`]).
//!
//! Nothing is downloaded. Files are looked for in the `--data-dir` given,
//! then `$DELPHI_DATA`, then (Fashion-MNIST) Debian's
//! `/usr/share/datasets/fashion-mnist/` from the package
//! `dataset-fashion-mnist`. Every file is checked as it is read: a wrong
//! magic number, a short file or a label out of range is a [`DataError`]
//! naming the file.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use flate2::read::GzDecoder;

use crate::disk::DiskData;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// What can go wrong reading a dataset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// No directory holds the dataset's files.
    #[error("{dataset}: {file} not found (looked in {looked}); {hint}")]
    Missing {
        /// The dataset.
        dataset: String,
        /// The file looked for.
        file: String,
        /// The directories tried.
        looked: String,
        /// How to get it.
        hint: &'static str,
    },
    /// The file could not be read.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file's header is not what the format requires.
    #[error("{path}: bad magic number {found:#010x} (expected {expected:#010x})")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// What it starts with.
        found: u32,
        /// What the format says.
        expected: u32,
    },
    /// The file ends before its last record.
    #[error("{path}: truncated record ({got} bytes where {expected} were expected)")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the header or format promises.
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// A label is not a valid class.
    #[error("{path}: label {label} of record {index} out of range (classes 0..{classes})")]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// The record.
        index: usize,
        /// The label read.
        label: i64,
        /// The number of classes.
        classes: usize,
    },
    /// Two files that belong together disagree.
    #[error("{0}")]
    Inconsistent(String),
    /// An image that does not decode.
    #[error("{path}: not a readable image: {reason}")]
    Image {
        /// The file.
        path: PathBuf,
        /// The decoder's complaint.
        reason: String,
    },
    /// A NumPy array that is missing, malformed or not images/labels.
    #[error("{file}: {reason}")]
    Numpy {
        /// The file (`archive.npz:array` inside an archive).
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// An unknown dataset name.
    #[error(
        "unknown dataset {0:?}: not a built-in (fashion-mnist, fashion-mnist-32, cifar10, \
         cifar100) and no such file or folder (a folder of class folders of images, a .npz \
         file, or a folder of .npy files; PATH:HxW resizes, PATH:CxHxW also sets the channels)"
    )]
    Unknown(String),
}

/// Result alias for data loading.
pub type Result<T> = std::result::Result<T, DataError>;

/// The datasets the toolkit reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    /// Fashion-MNIST, 28×28 grey, 10 classes.
    FashionMnist,
    /// Fashion-MNIST zero-padded to 32×32 and repeated over three channels:
    /// the same files, shaped for CIFAR networks (ResNet-32).
    FashionMnist32,
    /// CIFAR-10, 32×32 RGB, 10 classes.
    Cifar10,
    /// CIFAR-100 (fine labels), 32×32 RGB, 100 classes.
    Cifar100,
    /// A provider's own images or arrays, read from disk ([`crate::disk`]).
    Disk(Arc<DiskData>),
}

impl std::str::FromStr for DatasetKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "fashion-mnist" | "fashionmnist" | "fmnist" => Ok(DatasetKind::FashionMnist),
            "fashion-mnist-32" | "fashion-mnist32" | "fmnist32" => Ok(DatasetKind::FashionMnist32),
            "cifar10" | "cifar-10" => Ok(DatasetKind::Cifar10),
            "cifar100" | "cifar-100" => Ok(DatasetKind::Cifar100),
            _ if crate::disk::is_disk_spec(s) => Ok(DatasetKind::Disk(crate::disk::open(s)?)),
            _ => Err(DataError::Unknown(s.into())),
        }
    }
}

/// Files store the name the command line takes (a path for data on disk).
impl serde::Serialize for DatasetKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.spec())
    }
}

/// Files (TOML experiments, checkpoints) accept the command line's spellings.
impl<'de> serde::Deserialize<'de> for DatasetKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl DatasetKind {
    /// A short name for logs, folder names and the description's metadata
    /// (a built-in's name; the file or folder name of data on disk).
    pub fn name(&self) -> &str {
        match self {
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::FashionMnist32 => "fashion-mnist-32",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Disk(d) => d.name(),
        }
    }

    /// The name as the command line takes it (the path, with its `:HxW`,
    /// for data on disk).
    pub fn spec(&self) -> &str {
        match self {
            DatasetKind::Disk(d) => d.spec(),
            _ => self.name(),
        }
    }

    /// Channels, height, width.
    pub fn shape(&self) -> [usize; 3] {
        match self {
            DatasetKind::FashionMnist => [1, 28, 28],
            DatasetKind::Disk(d) => d.shape,
            _ => [3, 32, 32],
        }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        match self {
            DatasetKind::Cifar100 => 100,
            DatasetKind::Disk(d) => d.classes(),
            _ => 10,
        }
    }

    /// Per-channel mean and standard deviation of the training set (pixels
    /// in [0, 1]; measured on the training images for data on disk).
    pub fn normalization(&self) -> (Vec<f32>, Vec<f32>) {
        match self {
            DatasetKind::Disk(d) => d.mean_std.clone(),
            DatasetKind::FashionMnist => (vec![0.2860], vec![0.3530]),
            // Padding zeros around 784 of 1024 pixels: the same moments, diluted.
            DatasetKind::FashionMnist32 => (vec![0.2190; 3], vec![0.3316; 3]),
            DatasetKind::Cifar10 => (vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616]),
            DatasetKind::Cifar100 => (vec![0.5071, 0.4865, 0.4409], vec![0.2673, 0.2564, 0.2762]),
        }
    }

    /// [`DatasetKind::normalization`] as the description records it.
    pub fn default_normalization(&self) -> delphi_net::Normalization {
        let (mean, std) = self.normalization();
        let pixels = match self {
            DatasetKind::Disk(d) => match d.fit.size {
                Some([h, w]) => {
                    format!("u8 / 255, CHW, resized to {h}×{w} (shorter side scaled, centre crop)")
                }
                None => "u8 / 255, CHW".into(),
            },
            _ => "u8 / 255, CHW".into(),
        };
        delphi_net::Normalization { mean, std, pixels: Some(pixels) }
    }

    /// The architecture a plan uses by default (for data on disk: small-cnn
    /// for grey images, minionn for colour; a network of another input size
    /// is named with --arch, or the data resized with PATH:HxW).
    pub fn default_arch(&self) -> &'static str {
        match self {
            DatasetKind::FashionMnist => "small-cnn",
            DatasetKind::FashionMnist32 => "resnet32",
            DatasetKind::Cifar10 => "minionn",
            DatasetKind::Cifar100 => "resnet32",
            DatasetKind::Disk(d) if d.shape[0] == 1 => "small-cnn",
            DatasetKind::Disk(_) => "minionn",
        }
    }

    /// Whether training uses random crops and flips (CIFAR only: a flip
    /// changes the meaning of digits, text and many provider images).
    pub fn augment(&self) -> bool {
        matches!(self, DatasetKind::Cifar10 | DatasetKind::Cifar100)
    }
}

/// Images (u8 pixels, CHW) and labels.
#[derive(Clone, Debug)]
pub struct Split {
    /// Which dataset.
    pub kind: DatasetKind,
    /// Pixels, `len × C × H × W`.
    pub pixels: Vec<u8>,
    /// Labels.
    pub labels: Vec<u8>,
}

impl Split {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn image_len(&self) -> usize {
        self.kind.shape().iter().product()
    }

    /// The first `n` images (or all).
    pub fn take(mut self, n: usize) -> Split {
        let n = n.min(self.len());
        self.pixels.truncate(n * self.image_len());
        self.labels.truncate(n);
        self
    }

    /// The images at `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Split {
        let l = self.image_len();
        let mut pixels = Vec::with_capacity(idx.len() * l);
        for &i in idx {
            pixels.extend_from_slice(&self.pixels[i * l..(i + 1) * l]);
        }
        Split {
            kind: self.kind.clone(),
            pixels,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// One image as floats (CHW) normalised with `norm` (pixels / 255,
    /// then per channel (x − mean) / std), optionally augmented.
    pub fn image(
        &self,
        i: usize,
        augment: Option<&mut dyn rand::RngCore>,
        norm: &delphi_net::Normalization,
    ) -> Vec<f32> {
        let [c, h, w] = self.kind.shape();
        let l = c * h * w;
        let px = &self.pixels[i * l..(i + 1) * l];
        let (mean, std): (Vec<f32>, Vec<f32>) = (0..c).map(|ch| norm.channel(ch)).unzip();
        let (dy, dx, flip) = match augment {
            // Random crop with padding 4 (zero padding in normalised space
            // would be −mean/std; padding the raw image with black is the
            // usual choice) and a horizontal flip with probability ½.
            Some(rng) => (rng.gen_range(-4i32..=4), rng.gen_range(-4i32..=4), rng.gen_bool(0.5)),
            None => (0, 0, false),
        };
        let mut out = vec![0f32; l];
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let sx = if flip { w - 1 - x } else { x } as i32 + dx;
                    let sy = y as i32 + dy;
                    let v = if sx < 0 || sy < 0 || sx >= w as i32 || sy >= h as i32 {
                        0.0
                    } else {
                        px[ch * h * w + sy as usize * w + sx as usize] as f32 / 255.0
                    };
                    out[ch * h * w + y * w + x] = (v - mean[ch]) / std[ch];
                }
            }
        }
        out
    }
}

/// Training, validation and test splits.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Training images (the validation images removed).
    pub train: Split,
    /// Validation images, carved from the training set.
    pub valid: Split,
    /// Test images (for the final report only).
    pub test: Split,
}

/// Where to look for a dataset's files.
pub fn search_dirs(kind: &DatasetKind, data_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = data_dir {
        dirs.push(d.to_path_buf());
        dirs.push(d.join(kind.name()));
    }
    if let Some(d) = std::env::var_os("DELPHI_DATA") {
        let d = PathBuf::from(d);
        dirs.push(d.join(kind.name()));
        dirs.push(d);
    }
    match kind {
        DatasetKind::FashionMnist | DatasetKind::FashionMnist32 => {
            dirs.push("/usr/share/datasets/fashion-mnist".into())
        }
        DatasetKind::Cifar10 => dirs.push("cifar-10-batches-bin".into()),
        DatasetKind::Cifar100 => dirs.push("cifar-100-binary".into()),
        DatasetKind::Disk(d) => dirs.push(d.path.clone()),
    }
    dirs
}

fn find(kind: &DatasetKind, data_dir: Option<&Path>, file: &str) -> Result<PathBuf> {
    let dirs = search_dirs(kind, data_dir);
    for d in &dirs {
        for sub in ["", "cifar-10-batches-bin", "cifar-100-binary"] {
            let p = d.join(sub).join(file);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(DataError::Missing {
        dataset: kind.name().to_string(),
        file: file.into(),
        looked: dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
        hint: match kind {
            DatasetKind::FashionMnist => {
                "install Debian's dataset-fashion-mnist or pass --data-dir"
            }
            _ => "put the CIFAR \"binary version\" files in --data-dir or $DELPHI_DATA",
        },
    })
}

fn read_all(path: &Path) -> Result<Vec<u8>> {
    let io = |source| DataError::Io { path: path.to_path_buf(), source };
    let mut f = File::open(path).map_err(io)?;
    let mut buf = Vec::new();
    if path.extension().is_some_and(|e| e == "gz") {
        GzDecoder::new(f).read_to_end(&mut buf).map_err(io)?;
    } else {
        f.read_to_end(&mut buf).map_err(io)?;
    }
    Ok(buf)
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(w)
}

/// Reads an IDX file: checks the magic for `dims` dimensions of unsigned
/// bytes and returns (dimensions, data).
pub fn read_idx(path: &Path, dims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let buf = read_all(path)?;
    let header = 4 + 4 * dims;
    if buf.len() < header {
        return Err(DataError::Truncated { path: path.into(), expected: header, got: buf.len() });
    }
    let expected = 0x0800 | dims as u32;
    let magic = be32(&buf, 0);
    if magic != expected {
        return Err(DataError::BadMagic { path: path.into(), found: magic, expected });
    }
    let shape: Vec<usize> = (0..dims).map(|i| be32(&buf, 4 + 4 * i) as usize).collect();
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let n = n.ok_or_else(|| DataError::Truncated {
        path: path.into(),
        expected: usize::MAX,
        got: buf.len() - header,
    })?;
    if buf.len() - header < n {
        return Err(DataError::Truncated {
            path: path.into(),
            expected: n,
            got: buf.len() - header,
        });
    }
    Ok((shape, buf[header..header + n].to_vec()))
}

fn check_labels(path: &Path, labels: &[u8], classes: usize) -> Result<()> {
    match labels.iter().position(|&l| l as usize >= classes) {
        Some(index) => Err(DataError::LabelOutOfRange {
            path: path.into(),
            index,
            label: labels[index] as i64,
            classes,
        }),
        None => Ok(()),
    }
}

fn fashion_split(data_dir: Option<&Path>, prefix: &str) -> Result<Split> {
    let kind = DatasetKind::FashionMnist;
    let ip = find(&kind, data_dir, &format!("{prefix}-images-idx3-ubyte.gz"))?;
    let lp = find(&kind, data_dir, &format!("{prefix}-labels-idx1-ubyte.gz"))?;
    let (ishape, pixels) = read_idx(&ip, 3)?;
    let (lshape, labels) = read_idx(&lp, 1)?;
    if ishape[1..] != [28, 28] || ishape[0] != lshape[0] {
        return Err(DataError::Inconsistent(format!(
            "{} holds {:?} images but {} {} labels (images must be 28×28)",
            ip.display(),
            ishape,
            lp.display(),
            lshape[0]
        )));
    }
    check_labels(&lp, &labels, 10)?;
    Ok(Split { kind, pixels, labels })
}

/// Reads CIFAR binary files (10: one label byte per record; 100: coarse
/// then fine label, the fine one kept).
pub fn read_cifar(kind: DatasetKind, paths: &[PathBuf]) -> Result<Split> {
    let label_bytes = if kind == DatasetKind::Cifar100 { 2 } else { 1 };
    let rec = label_bytes + 3072;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for p in paths {
        let buf = read_all(p)?;
        if buf.is_empty() || buf.len() % rec != 0 {
            return Err(DataError::Truncated {
                path: p.clone(),
                expected: (buf.len() / rec + 1) * rec,
                got: buf.len(),
            });
        }
        let first = labels.len();
        for r in buf.chunks_exact(rec) {
            labels.push(r[label_bytes - 1]);
            pixels.extend_from_slice(&r[label_bytes..]);
        }
        check_labels(p, &labels[first..], kind.classes())?;
    }
    Ok(Split { kind, pixels, labels })
}

/// [`load`], then keeps only the first `train_limit` training and
/// `test_limit` test images (the validation split is carved first).
pub fn load_limited(
    kind: DatasetKind,
    data_dir: Option<&Path>,
    valid: usize,
    seed: u64,
    train_limit: Option<usize>,
    test_limit: Option<usize>,
) -> Result<Dataset> {
    let mut d = load(kind, data_dir, valid, seed)?;
    if let Some(n) = train_limit {
        d.train = d.train.take(n);
    }
    if let Some(n) = test_limit {
        d.test = d.test.take(n);
    }
    Ok(d)
}

/// Loads a dataset, carving `valid` images (a seeded random choice) out of
/// the training set.
pub fn load(
    kind: DatasetKind,
    data_dir: Option<&Path>,
    valid: usize,
    seed: u64,
) -> Result<Dataset> {
    let (train, test) = match &kind {
        DatasetKind::FashionMnist => {
            (fashion_split(data_dir, "train")?, fashion_split(data_dir, "t10k")?)
        }
        DatasetKind::FashionMnist32 => (
            pad_to_32(fashion_split(data_dir, "train")?),
            pad_to_32(fashion_split(data_dir, "t10k")?),
        ),
        DatasetKind::Cifar10 => {
            let train = (1..=5)
                .map(|i| find(&kind, data_dir, &format!("data_batch_{i}.bin")))
                .collect::<Result<Vec<_>>>()?;
            let test = find(&kind, data_dir, "test_batch.bin")?;
            (read_cifar(kind.clone(), &train)?, read_cifar(kind.clone(), &[test])?)
        }
        DatasetKind::Cifar100 => (
            read_cifar(kind.clone(), &[find(&kind, data_dir, "train.bin")?])?,
            read_cifar(kind.clone(), &[find(&kind, data_dir, "test.bin")?])?,
        ),
        DatasetKind::Disk(d) => {
            if let Some(dir) = data_dir {
                return Err(DataError::Inconsistent(format!(
                    "--data-dir {} is where built-in datasets are looked for; --dataset {} \
                     names its data itself (drop one of them)",
                    dir.display(),
                    d.spec()
                )));
            }
            let ((tp, tl), (sp, sl)) = d.take()?;
            (
                Split { kind: kind.clone(), pixels: tp, labels: tl },
                Split { kind: kind.clone(), pixels: sp, labels: sl },
            )
        }
    };
    Ok(split_valid(train, test, valid, seed))
}

/// Fashion-MNIST images zero-padded by two pixels on every side and
/// repeated over three channels ([`DatasetKind::FashionMnist32`]).
fn pad_to_32(s: Split) -> Split {
    let n = s.len();
    let mut pixels = vec![0u8; n * 3 * 32 * 32];
    for (i, img) in s.pixels.chunks_exact(28 * 28).enumerate() {
        for c in 0..3 {
            for (y, row) in img.chunks_exact(28).enumerate() {
                let o = ((i * 3 + c) * 32 + y + 2) * 32 + 2;
                pixels[o..o + 28].copy_from_slice(row);
            }
        }
    }
    Split { kind: DatasetKind::FashionMnist32, pixels, labels: s.labels }
}

/// Splits `valid` images off `train` (seeded), keeping `test` as is.
///
/// Only the validation images are copied: the training images are
/// compacted in place, so the data is never held twice.
pub fn split_valid(mut train: Split, test: Split, valid: usize, seed: u64) -> Dataset {
    let mut idx: Vec<usize> = (0..train.len()).collect();
    idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_da7a));
    let valid = valid.min(train.len() / 2);
    let mut v = idx[..valid].to_vec();
    v.sort_unstable();
    let valid_split = train.select(&v);
    // Keep the others, in order, moving each image forward over the gaps.
    let l = train.image_len();
    let mut taken = vec![false; train.len()];
    for &i in &v {
        taken[i] = true;
    }
    let mut kept = 0;
    for (i, &t) in taken.iter().enumerate() {
        if t {
            continue;
        }
        if kept != i {
            train.pixels.copy_within(i * l..(i + 1) * l, kept * l);
            train.labels[kept] = train.labels[i];
        }
        kept += 1;
    }
    train.pixels.truncate(kept * l);
    train.pixels.shrink_to_fit();
    train.labels.truncate(kept);
    Dataset { valid: valid_split, train, test }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("delphi-data-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap_or_default();
        d
    }

    #[test]
    fn fashion_mnist_32_pads_and_repeats_every_image() {
        let s = Split {
            kind: DatasetKind::FashionMnist,
            pixels: (0..2 * 784).map(|i| (i % 253 + 1) as u8).collect(),
            labels: vec![4, 7],
        };
        let p = pad_to_32(s.clone());
        assert_eq!((p.len(), p.labels.clone()), (2, vec![4, 7]));
        assert_eq!(p.pixels.len(), 2 * 3 * 32 * 32);
        for i in 0..2 {
            for c in 0..3 {
                for y in 0..32 {
                    for x in 0..32 {
                        let got = p.pixels[((i * 3 + c) * 32 + y) * 32 + x];
                        let inside = (2..30).contains(&y) && (2..30).contains(&x);
                        let want =
                            if inside { s.pixels[i * 784 + (y - 2) * 28 + x - 2] } else { 0 };
                        assert_eq!(got, want, "image {i} channel {c} at ({y}, {x})");
                    }
                }
            }
        }
        assert_eq!(p.kind.shape(), [3, 32, 32]);
        assert_eq!("fashion-mnist-32".parse::<DatasetKind>().unwrap(), p.kind);
        // Files spell it as the command line does, and read it back.
        let json = serde_json::to_string(&p.kind).unwrap();
        assert_eq!(json, "\"fashion-mnist-32\"");
        assert_eq!(serde_json::from_str::<DatasetKind>(&json).unwrap(), p.kind);
        assert!(!p.kind.augment());
    }

    #[test]
    fn cifar_files_are_read_and_checked() {
        let d = tmp("cifar");
        let mut rec = vec![3u8];
        rec.extend((0..3072).map(|i| (i % 251) as u8));
        let good = d.join("good.bin");
        std::fs::write(&good, [rec.clone(), rec.clone()].concat()).unwrap_or_default();
        let s = read_cifar(DatasetKind::Cifar10, &[good]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.len(), s.labels[1], s.pixels[5]), (2, 3, 5));

        let short = d.join("short.bin");
        std::fs::write(&short, &rec[..3000]).unwrap_or_default();
        let e = read_cifar(DatasetKind::Cifar10, &[short]).unwrap_err();
        assert!(matches!(e, DataError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains("short.bin"));

        let mut bad = rec.clone();
        bad[0] = 10;
        let badp = d.join("label.bin");
        std::fs::write(&badp, &bad).unwrap_or_default();
        let e = read_cifar(DatasetKind::Cifar10, &[badp]).unwrap_err();
        assert!(matches!(e, DataError::LabelOutOfRange { label: 10, .. }), "{e}");

        // CIFAR-100: the fine label (second byte) is the class.
        let mut r100 = vec![1u8, 99];
        r100.extend(vec![0u8; 3072]);
        let p100 = d.join("c100.bin");
        std::fs::write(&p100, &r100).unwrap_or_default();
        let s = read_cifar(DatasetKind::Cifar100, &[p100]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.labels, vec![99]);
    }

    #[test]
    fn a_cifar10_folder_loads_with_a_validation_split() {
        let d = tmp("cifar-dir");
        let rec = |label: u8| {
            let mut r = vec![label];
            r.extend(vec![label; 3072]);
            r
        };
        for i in 1..=5 {
            let recs: Vec<u8> = (0..3).flat_map(|k| rec((i + k) as u8 % 10)).collect();
            std::fs::write(d.join(format!("data_batch_{i}.bin")), recs).unwrap();
        }
        let e = load(DatasetKind::Cifar10, Some(&d), 2, 1).unwrap_err();
        assert!(e.to_string().contains("test_batch.bin"), "{e}");
        std::fs::write(d.join("test_batch.bin"), rec(7)).unwrap();
        let ds = load(DatasetKind::Cifar10, Some(&d), 2, 1).unwrap();
        assert_eq!((ds.train.len(), ds.valid.len(), ds.test.len()), (13, 2, 1));
        assert_eq!(ds.test.labels, vec![7]);
        // Each image's pixels still carry its label (records stay whole).
        for s in [&ds.train, &ds.valid] {
            for i in 0..s.len() {
                assert_eq!(s.pixels[i * 3072], s.labels[i]);
            }
        }
    }

    #[test]
    fn idx_magic_and_length_are_checked() {
        let d = tmp("idx");
        let p = d.join("x.idx");
        let mut b = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
        b.extend([1u8; 8]);
        std::fs::write(&p, &b).unwrap_or_default();
        assert_eq!(read_idx(&p, 3).map(|x| x.0).unwrap_or_default(), vec![2, 2, 2]);
        let e = read_idx(&p, 1).unwrap_err();
        assert!(matches!(e, DataError::BadMagic { .. }), "{e}");
        std::fs::write(&p, &b[..20]).unwrap_or_default();
        assert!(matches!(read_idx(&p, 3).unwrap_err(), DataError::Truncated { .. }));
    }

    #[test]
    fn augmentation_keeps_shape_and_normalises() {
        let mut s = Split { kind: DatasetKind::Cifar10, pixels: vec![255; 3072], labels: vec![0] };
        let norm = DatasetKind::Cifar10.default_normalization();
        let plain = s.image(0, None, &norm);
        let (m, sd) = DatasetKind::Cifar10.normalization();
        assert!((plain[0] - (1.0 - m[0]) / sd[0]).abs() < 1e-6);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let aug = s.image(0, Some(&mut rng), &norm);
        assert_eq!(aug.len(), 3072);
        s.pixels[0] = 0;
        assert_eq!(s.image(0, None, &norm)[0], -m[0] / sd[0]);
    }
}
