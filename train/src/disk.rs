//! A provider's own data: a folder of images (one sub-folder per class) or
//! NumPy arrays (`.npz`, or a folder of `.npy` files).
//!
//! `--dataset PATH` names such data, `--dataset PATH:HxW` resizes every
//! image to H×W (the shorter side scaled to fit, then a centre crop), and
//! `PATH:CxHxW` also converts it to C channels (1 grey, 3 RGB). The
//! data is read and checked once, when the name is parsed: images are
//! decoded on every core, converted to the first image's channel count
//! (grey or RGB; alpha dropped), and kept as bytes at the network's size.
//! Every failure is a [`DataError`] naming the file. What the formats
//! accept, and how the splits are made, is in `docs/data.md`.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use image::DynamicImage;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

use super::data::{DataError, Result};

/// Image file extensions decoded (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "bmp"];
/// Image formats recognised but not decoded: named in an error rather than skipped.
const REFUSED_EXTENSIONS: [&str; 6] = ["gif", "webp", "tif", "tiff", "avif", "heic"];
/// One image in this many of each class is the test set when the data has no test split.
pub const TEST_ONE_IN: usize = 7;
/// Largest NumPy array read, in bytes (a header may claim anything).
const MAX_ARRAY_BYTES: u64 = 16 << 30;
/// Labels are stored as bytes.
const MAX_CLASSES: usize = 256;

/// What every image is made into: a size (height, width) and a channel
/// count, each only where asked (`PATH:HxW`, `PATH:CxHxW`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fit {
    /// Resize to (height, width): shorter side scaled, centre crop.
    pub size: Option<[usize; 2]>,
    /// Convert to 1 (grey) or 3 (RGB) channels.
    pub channels: Option<usize>,
}

/// How the data is kept on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    /// One sub-folder of images per class, optionally under `train/` and `test/` (or `val/`).
    ImageFolder,
    /// A NumPy `.npz` archive.
    Npz,
    /// A folder holding `x.npy` and `y.npy` (or `x_train.npy` …).
    NpyFolder,
}

/// Pixels (CHW bytes, image after image) and labels.
pub type Images = (Vec<u8>, Vec<u8>);

/// Items with their labels.
type Labelled<T> = Vec<(T, usize)>;

/// Images and labels read from disk, before any validation split.
struct Decoded {
    train: Images,
    test: Images,
}

/// A dataset read from disk: its shape, classes and pixel statistics, and
/// its images until [`DiskData::take`] hands them over.
pub struct DiskData {
    spec: String,
    name: String,
    /// Where the data is.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// What every image is resized or converted to, if asked.
    pub fit: Fit,
    /// Channels, height, width of every image as the network sees it.
    pub shape: [usize; 3],
    /// Class names (folder names, or the label numbers).
    pub class_names: Vec<String>,
    /// Per-channel mean and standard deviation of the training images (pixels / 255).
    pub mean_std: (Vec<f32>, Vec<f32>),
    /// How the splits were made, for the log.
    pub split_note: String,
    decoded: Mutex<Option<Decoded>>,
}

impl std::fmt::Debug for DiskData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DiskData({:?}, {:?}, {:?})", self.spec, self.format, self.shape)
    }
}

impl PartialEq for DiskData {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}
impl Eq for DiskData {}

impl DiskData {
    /// The name as given (`PATH` or `PATH:HxW`): what files store.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// A short name for logs and folder names (the file or folder name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.class_names.len()
    }

    /// The training and test images (pixels CHW, labels), read again if an
    /// earlier caller took them: the decoded images are held once.
    pub fn take(&self) -> Result<(Images, Images)> {
        let kept = self.decoded.lock().map_err(|_| poisoned())?.take();
        let d = match kept {
            Some(d) => d,
            None => read(&self.path, self.format, self.fit)?.1,
        };
        Ok((d.train, d.test))
    }
}

fn poisoned() -> DataError {
    DataError::Inconsistent("a thread reading the dataset panicked".into())
}

/// Splits `PATH[:HxW]` or `PATH:CxHxW`; `None` when the path exists neither way.
fn split_spec(spec: &str) -> Option<(PathBuf, Fit)> {
    if Path::new(spec).exists() {
        return Some((spec.into(), Fit::default()));
    }
    let (p, size) = spec.rsplit_once(':')?;
    let dims: Vec<usize> =
        size.split(['x', 'X', '×']).map(|d| d.trim().parse().ok()).collect::<Option<_>>()?;
    let fit = match dims[..] {
        [h, w] => Fit { size: Some([h, w]), channels: None },
        [c, h, w] => Fit { size: Some([h, w]), channels: Some(c) },
        _ => return None,
    };
    Path::new(p).exists().then(|| (p.into(), fit))
}

/// Whether `spec` names data on disk (an existing path, with an optional `:HxW`).
pub fn is_disk_spec(spec: &str) -> bool {
    split_spec(spec).is_some()
}

/// Reads the data `spec` names, once per process: a second parse of the
/// same name returns the same [`DiskData`].
pub fn open(spec: &str) -> Result<Arc<DiskData>> {
    static OPENED: OnceLock<Mutex<HashMap<String, Arc<DiskData>>>> = OnceLock::new();
    let opened = OPENED.get_or_init(Default::default);
    if let Some(d) = opened.lock().map_err(|_| poisoned())?.get(spec) {
        return Ok(d.clone());
    }
    let (path, fit) = split_spec(spec).ok_or_else(|| DataError::Unknown(spec.into()))?;
    if fit.size.is_some_and(|[h, w]| h == 0 || w == 0 || h > 4096 || w > 4096) {
        return Err(DataError::Inconsistent(format!(
            "{spec}: a resize must be between 1x1 and 4096x4096"
        )));
    }
    if fit.channels.is_some_and(|c| c != 1 && c != 3) {
        return Err(DataError::Inconsistent(format!(
            "{spec}: channels must be 1 (grey) or 3 (RGB)"
        )));
    }
    let format = format_of(&path)?;
    let (meta, decoded) = read(&path, format, fit)?;
    let name = path
        .file_stem()
        .or_else(|| path.file_name())
        .map_or_else(|| "data".to_string(), |s| s.to_string_lossy().into_owned());
    let d = Arc::new(DiskData {
        spec: spec.into(),
        name,
        path,
        format,
        fit,
        shape: meta.shape,
        class_names: meta.class_names,
        mean_std: meta.mean_std,
        split_note: meta.split_note,
        decoded: Mutex::new(Some(decoded)),
    });
    opened.lock().map_err(|_| poisoned())?.insert(spec.into(), d.clone());
    Ok(d)
}

fn format_of(path: &Path) -> Result<DiskFormat> {
    let ext = extension(path);
    if path.is_file() {
        return match ext.as_str() {
            "npz" => Ok(DiskFormat::Npz),
            "npy" => Err(DataError::Inconsistent(format!(
                "{}: pass the folder that holds x.npy and y.npy (a .npy file holds one array)",
                path.display()
            ))),
            _ => Err(DataError::Inconsistent(format!(
                "{}: not a dataset (expected a folder of images, a .npz file or a folder of \
                 .npy files)",
                path.display()
            ))),
        };
    }
    let has = |f: &str| path.join(f).is_file();
    if has("x.npy") || has("x_train.npy") {
        Ok(DiskFormat::NpyFolder)
    } else {
        Ok(DiskFormat::ImageFolder)
    }
}

fn extension(p: &Path) -> String {
    p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default()
}

struct Meta {
    shape: [usize; 3],
    class_names: Vec<String>,
    mean_std: (Vec<f32>, Vec<f32>),
    split_note: String,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_path_buf(), source }
}

fn read(path: &Path, format: DiskFormat, fit: Fit) -> Result<(Meta, Decoded)> {
    let (shape, class_names, d, split_note) = match format {
        DiskFormat::ImageFolder => read_image_folder(path, fit)?,
        DiskFormat::Npz | DiskFormat::NpyFolder => read_numpy(path, format, fit)?,
    };
    if class_names.len() < 2 {
        return Err(DataError::Inconsistent(format!(
            "{}: {} class{} found; a classifier needs at least two",
            path.display(),
            class_names.len(),
            if class_names.len() == 1 { "" } else { "es" }
        )));
    }
    if d.train.1.is_empty() || d.test.1.is_empty() {
        return Err(DataError::Inconsistent(format!(
            "{}: {} training and {} test images; both must be non-empty",
            path.display(),
            d.train.1.len(),
            d.test.1.len()
        )));
    }
    let mut d = d;
    // Files come sorted by class: a fixed pseudo-random order (the same on
    // every run and machine) makes --train-limit and --test-limit take a
    // sample of every class, not the first ones.
    let l = shape.iter().product::<usize>();
    for (k, set) in [&mut d.train, &mut d.test].into_iter().enumerate() {
        shuffle_images(set, l, 0x0da7_a5e7 + k as u64);
    }
    let mean_std = moments(&d.train.0, shape);
    Ok((Meta { shape, class_names, mean_std, split_note }, d))
}

/// Shuffles images (`l` bytes each) and their labels together, in place.
fn shuffle_images((pixels, labels): &mut Images, l: usize, seed: u64) {
    use rand::Rng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for i in (1..labels.len()).rev() {
        let j = rng.gen_range(0..=i);
        if i != j {
            labels.swap(i, j);
            let (a, b) = pixels.split_at_mut(i * l);
            a[j * l..(j + 1) * l].swap_with_slice(&mut b[..l]);
        }
    }
}

/// Per-channel mean and standard deviation of pixels / 255 (CHW images of `shape`).
fn moments(pixels: &[u8], shape: [usize; 3]) -> (Vec<f32>, Vec<f32>) {
    let [c, h, w] = shape;
    let hw = h * w;
    let mut sums = vec![(0u64, 0u64); c];
    for img in pixels.chunks_exact(c * hw) {
        for (ch, acc) in sums.iter_mut().enumerate() {
            for &v in &img[ch * hw..(ch + 1) * hw] {
                acc.0 += v as u64;
                acc.1 += (v as u64) * (v as u64);
            }
        }
    }
    let n = (pixels.len() / c.max(1)).max(1) as f64;
    sums.iter()
        .map(|&(s, s2)| {
            let m = s as f64 / n;
            let var = (s2 as f64 / n - m * m).max(0.0);
            // A constant channel would divide by zero: its spread is floored.
            ((m / 255.0) as f32, ((var.sqrt() / 255.0) as f32).max(1e-3))
        })
        .unzip()
}

// ---------------------------------------------------------------- images

type Read4 = ([usize; 3], Vec<String>, Decoded, String);

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        if !e.file_name().to_string_lossy().starts_with('.') {
            v.push(e.path());
        }
    }
    v.sort();
    Ok(v)
}

/// Image files under `dir`, recursively, in path order.
fn image_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for p in sorted_entries(dir)? {
        if p.is_dir() {
            image_files(&p, out)?;
            continue;
        }
        let ext = extension(&p);
        if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            out.push(p);
        } else if REFUSED_EXTENSIONS.contains(&ext.as_str()) {
            return Err(DataError::Inconsistent(format!(
                "{}: .{ext} images are not read (only {}); convert them, e.g. to PNG",
                p.display(),
                IMAGE_EXTENSIONS.join(", ")
            )));
        }
    }
    Ok(())
}

/// The class folders of `root` and their image files.
fn class_folders(root: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let mut classes = Vec::new();
    for p in sorted_entries(root)? {
        if !p.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        image_files(&p, &mut files)?;
        if files.is_empty() {
            return Err(DataError::Inconsistent(format!(
                "{}: class folder holds no images ({})",
                p.display(),
                IMAGE_EXTENSIONS.join(", ")
            )));
        }
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        classes.push((name, files));
    }
    if classes.is_empty() {
        return Err(DataError::Inconsistent(format!(
            "{}: no class folders (an image folder holds one sub-folder of images per class)",
            root.display()
        )));
    }
    Ok(classes)
}

fn read_image_folder(root: &Path, fit: Fit) -> Result<Read4> {
    let sub = |n: &str| Some(root.join(n)).filter(|p| p.is_dir());
    let (train_dirs, test_dir, note) = match (sub("train"), sub("test"), sub("val")) {
        (Some(tr), Some(te), Some(va)) => (
            vec![tr, va],
            Some(te),
            "train/ and val/ pooled for training and validation, test/ held out".to_string(),
        ),
        (Some(tr), Some(te), None) => (vec![tr], Some(te), "train/ and test/".to_string()),
        (Some(tr), None, Some(va)) => {
            (vec![tr], Some(va), "train/, and val/ as the test set".to_string())
        }
        (Some(_), None, None) => {
            return Err(DataError::Inconsistent(format!(
                "{}: has train/ but neither test/ nor val/ (give both, or put the class \
                 folders directly in {0} for a fixed split)",
                root.display()
            )))
        }
        _ => (vec![root.to_path_buf()], None, String::new()),
    };
    let mut train: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for d in &train_dirs {
        for (name, files) in class_folders(d)? {
            match train.iter_mut().find(|(n, _)| *n == name) {
                Some((_, f)) => f.extend(files),
                None => train.push((name, files)),
            }
        }
    }
    train.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<String> = train.iter().map(|(n, _)| n.clone()).collect();
    let (train_files, test_files, note) = match test_dir {
        Some(t) => {
            let test = class_folders(&t)?;
            let mut files = Vec::new();
            for (name, f) in test {
                let label = names.iter().position(|n| *n == name).ok_or_else(|| {
                    DataError::Inconsistent(format!(
                        "{}: class {name:?} has no training folder (training classes: {})",
                        t.display(),
                        names.join(", ")
                    ))
                })?;
                files.extend(f.into_iter().map(|p| (p, label)));
            }
            let tr = labelled(train);
            (tr, files, note)
        }
        None => {
            let (tr, te) = fixed_split(train.into_iter().map(|(_, f)| f).collect());
            let note = format!(
                "no train/ and test/ folders: one image in {TEST_ONE_IN} of each class (a \
                 fixed draw) is the test set"
            );
            (tr, te, note)
        }
    };
    let all: Vec<&PathBuf> = train_files.iter().chain(&test_files).map(|(p, _)| p).collect();
    // The first image sets the channels and the size, unless asked otherwise.
    let first = decode(all[0])?;
    let channels = fit.channels.unwrap_or(if first.color().has_color() { 3 } else { 1 });
    let (h, w) = match fit.size {
        Some([h, w]) => (h, w),
        None => (first.height() as usize, first.width() as usize),
    };
    let fit = |p: &PathBuf| -> Result<Vec<u8>> {
        let img = decode(p)?;
        let (ih, iw) = (img.height() as usize, img.width() as usize);
        let img = match fit.size {
            Some(_) => fit_to(img, h, w),
            None if (ih, iw) != (h, w) => {
                return Err(DataError::Inconsistent(format!(
                    "{}: {iw}×{ih} image where {} is {w}×{h}; images of mixed sizes need a \
                     resize: --dataset {}:HxW",
                    p.display(),
                    all[0].display(),
                    root.display()
                )))
            }
            None => img,
        };
        Ok(chw(&img, channels))
    };
    // Each image decoded straight into its place in one buffer, on every core.
    let pixels = |files: &[(PathBuf, usize)]| -> Result<(Vec<u8>, Vec<u8>)> {
        let l = channels * h * w;
        let mut all = vec![0u8; files.len() * l];
        all.par_chunks_mut(l).zip(files.par_iter()).try_for_each(|(dst, (p, _))| {
            dst.copy_from_slice(&fit(p)?);
            Ok::<(), DataError>(())
        })?;
        Ok((all, files.iter().map(|&(_, l)| l as u8).collect()))
    };
    if names.len() > MAX_CLASSES {
        return Err(DataError::Inconsistent(format!(
            "{}: {} classes (at most {MAX_CLASSES})",
            root.display(),
            names.len()
        )));
    }
    let d = Decoded { train: pixels(&train_files)?, test: pixels(&test_files)? };
    Ok(([channels, h, w], names, d, note))
}

fn labelled(classes: Vec<(String, Vec<PathBuf>)>) -> Vec<(PathBuf, usize)> {
    classes
        .into_iter()
        .enumerate()
        .flat_map(|(l, (_, f))| f.into_iter().map(move |p| (p, l)))
        .collect()
}

/// One image in [`TEST_ONE_IN`] of each class (at least one where a class
/// has two or more) to the test set, by a fixed draw: the same on every
/// run. `classes[label]` lists that class's items in a fixed order.
fn fixed_split<T: Ord>(classes: Vec<Vec<T>>) -> (Labelled<T>, Labelled<T>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x07e5_75e7);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (label, mut items) in classes.into_iter().enumerate() {
        items.shuffle(&mut rng);
        let n_test = if items.len() >= 2 { (items.len() / TEST_ONE_IN).max(1) } else { 0 };
        for (i, p) in items.into_iter().enumerate() {
            if i < n_test { &mut test } else { &mut train }.push((p, label));
        }
    }
    train.sort();
    test.sort();
    (train, test)
}

fn decode(p: &Path) -> Result<DynamicImage> {
    let bad =
        |e: image::ImageError| DataError::Image { path: p.to_path_buf(), reason: e.to_string() };
    image::ImageReader::open(p)
        .map_err(io_err(p))?
        .with_guessed_format()
        .map_err(io_err(p))?
        .decode()
        .map_err(bad)
}

/// Scales the shorter side to fit H×W, then crops the centre.
fn fit_to(img: DynamicImage, h: usize, w: usize) -> DynamicImage {
    let (ih, iw) = (img.height() as f64, img.width() as f64);
    let s = (h as f64 / ih).max(w as f64 / iw);
    let (nh, nw) =
        (((ih * s).round() as u32).max(h as u32), ((iw * s).round() as u32).max(w as u32));
    let img = if (nh, nw) == (img.height(), img.width()) {
        img
    } else {
        img.resize_exact(nw, nh, image::imageops::FilterType::Triangle)
    };
    let (y, x) = ((nh - h as u32) / 2, (nw - w as u32) / 2);
    img.crop_imm(x, y, w as u32, h as u32)
}

/// An image as bytes, channels first.
fn chw(img: &DynamicImage, channels: usize) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if channels == 1 {
        return img.to_luma8().into_raw();
    }
    let rgb = img.to_rgb8();
    let raw = rgb.as_raw();
    let mut out = vec![0u8; 3 * h * w];
    for (i, px) in raw.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * h * w + i] = px[c];
        }
    }
    out
}

// ----------------------------------------------------------------- NumPy

/// A `.npy` file's bytes (format 1.0, C order) for `data`, already laid
/// out as `descr` (a NumPy type string such as `|u1` or `<i8`) says: what
/// tests and tools write for this reader.
pub fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Data starts on a 64-byte boundary, the header ends with a newline.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// One array: its shape, element type and raw little-endian bytes.
struct Array {
    shape: Vec<usize>,
    kind: char,
    size: usize,
    bytes: Vec<u8>,
}

fn read_array(name: &str, r: impl Read, claimed_max: u64) -> Result<Array> {
    let bad = |reason: String| DataError::Numpy { file: name.into(), reason };
    let f = npyz::NpyFile::new(r).map_err(|e| bad(format!("not a .npy array: {e}")))?;
    let npyz::DType::Plain(ts) = f.dtype() else {
        return Err(bad(format!("dtype {} is not a plain number type", f.dtype().descr())));
    };
    if f.order() == npyz::Order::Fortran {
        return Err(bad("Fortran-order array; save it with np.ascontiguousarray".into()));
    }
    let kind = match ts.type_char() {
        npyz::TypeChar::Uint => 'u',
        npyz::TypeChar::Int => 'i',
        npyz::TypeChar::Float => 'f',
        npyz::TypeChar::Bool => 'u',
        t => return Err(bad(format!("dtype {ts} ({t}) is not a number type"))),
    };
    let size = ts.num_bytes().unwrap_or(0);
    if !matches!((kind, size), ('u' | 'i', 1 | 2 | 4 | 8) | ('f', 4 | 8)) {
        return Err(bad(format!("dtype {ts} is not read (integers or float32/float64)")));
    }
    if size > 1 && ts.endianness() == npyz::Endianness::Big {
        return Err(bad(format!("big-endian dtype {ts}; save it little-endian")));
    }
    let shape: Vec<usize> = f.shape().iter().map(|&d| d as usize).collect();
    let n = f.shape().iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    let want = n
        .and_then(|n| n.checked_mul(size as u64))
        .filter(|&b| b <= MAX_ARRAY_BYTES.min(claimed_max));
    let want = want.ok_or_else(|| {
        bad(format!("shape {shape:?} of {size}-byte numbers is larger than the file or {MAX_ARRAY_BYTES} bytes"))
    })?;
    let mut bytes = Vec::new();
    f.into_inner()
        .take(want + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("reading the data: {e}")))?;
    if bytes.len() as u64 != want {
        return Err(bad(format!("{} data bytes where shape {shape:?} needs {want}", bytes.len())));
    }
    Ok(Array { shape, kind, size, bytes })
}

impl Array {
    /// Element `i` as a number (read from the bytes; nothing is widened
    /// in memory, so a large array is held once).
    fn get(&self, i: usize) -> f64 {
        let b = &self.bytes[i * self.size..(i + 1) * self.size];
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        match (self.kind, self.size) {
            ('f', 4) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            ('f', _) => f64::from_le_bytes(w),
            ('u', _) => u64::from_le_bytes(w) as f64,
            (_, s) => {
                // Sign-extend.
                let shift = 64 - 8 * s as u32;
                ((i64::from_le_bytes(w) << shift) >> shift) as f64
            }
        }
    }

    fn values(&self) -> impl Iterator<Item = f64> + '_ {
        (0..self.bytes.len() / self.size).map(move |i| self.get(i))
    }
}

/// The named arrays of a `.npz` file or a folder of `.npy` files.
fn numpy_arrays(path: &Path, format: DiskFormat, names: &[&str]) -> Result<HashMap<String, Array>> {
    let mut out = HashMap::new();
    match format {
        DiskFormat::Npz => {
            let f = File::open(path).map_err(io_err(path))?;
            let len = f.metadata().map_err(io_err(path))?.len();
            let mut z = zip::ZipArchive::new(f).map_err(|e| DataError::Numpy {
                file: path.display().to_string(),
                reason: format!("not a .npz (zip) archive: {e}"),
            })?;
            for name in names {
                let Ok(entry) = z.by_name(&format!("{name}.npy")) else { continue };
                // The uncompressed size is bounded by deflate's best ratio (1032:1).
                let cap = entry.size().min(len.saturating_mul(1032));
                let file = format!("{}:{name}", path.display());
                out.insert(name.to_string(), read_array(&file, entry, cap)?);
            }
        }
        _ => {
            for name in names {
                let p = path.join(format!("{name}.npy"));
                if !p.is_file() {
                    continue;
                }
                let f = File::open(&p).map_err(io_err(&p))?;
                let len = f.metadata().map_err(io_err(&p))?.len();
                let r = std::io::BufReader::new(f);
                out.insert(name.to_string(), read_array(&p.display().to_string(), r, len)?);
            }
        }
    }
    Ok(out)
}

fn read_numpy(path: &Path, format: DiskFormat, fit: Fit) -> Result<Read4> {
    let mut a = numpy_arrays(path, format, &["x", "y", "x_train", "y_train", "x_test", "y_test"])?;
    let file = |n: &str| match format {
        DiskFormat::Npz => format!("{}:{n}", path.display()),
        _ => path.join(format!("{n}.npy")).display().to_string(),
    };
    let missing = |what: &str| {
        DataError::Numpy {
        file: path.display().to_string(),
        reason: format!("no array {what} (expected x and y, or x_train and y_train; x_test and y_test optional)"),
    }
    };
    let (xn, yn) = if a.contains_key("x") { ("x", "y") } else { ("x_train", "y_train") };
    let x = a.remove(xn).ok_or_else(|| missing("x"))?;
    let y = a.remove(yn).ok_or_else(|| missing(yn))?;
    let test = match (a.remove("x_test"), a.remove("y_test")) {
        (Some(x), Some(y)) => Some((x, y)),
        (None, None) => None,
        _ => return Err(missing("x_test with y_test (one is there without the other)")),
    };
    let (shape, px) = images_of(&file(xn), &x, fit, None)?;
    let ly = labels_of(&file(yn), &y, shape_n(&x))?;
    let (train, test, note) = match test {
        Some((tx, ty)) => {
            let (s2, tpx) = images_of(&file("x_test"), &tx, fit, Some(shape))?;
            debug_assert_eq!(s2, shape);
            let tly = labels_of(&file("y_test"), &ty, shape_n(&tx))?;
            ((px, ly), (tpx, tly), format!("{xn}/{yn} and x_test/y_test"))
        }
        None => {
            let l = shape.iter().product::<usize>();
            let mut by_class: Vec<Vec<usize>> = Vec::new();
            for (i, &c) in ly.iter().enumerate() {
                let c = c as usize;
                if by_class.len() <= c {
                    by_class.resize_with(c + 1, Vec::new);
                }
                by_class[c].push(i);
            }
            let (tr, te) = fixed_split(by_class);
            let pick = |v: &[(usize, usize)]| {
                let mut p = Vec::with_capacity(v.len() * l);
                for &(i, _) in v {
                    p.extend_from_slice(&px[i * l..(i + 1) * l]);
                }
                (p, v.iter().map(|&(_, c)| c as u8).collect::<Vec<u8>>())
            };
            let note = format!(
                "no x_test/y_test: one image in {TEST_ONE_IN} of each class (a fixed draw) is the test set"
            );
            (pick(&tr), pick(&te), note)
        }
    };
    let classes = train.1.iter().chain(&test.1).map(|&c| c as usize + 1).max().unwrap_or(0);
    let names = (0..classes).map(|c| c.to_string()).collect();
    Ok((shape, names, Decoded { train, test }, note))
}

fn shape_n(a: &Array) -> usize {
    a.shape.first().copied().unwrap_or(0)
}

/// Pixels of `x` (N×H×W, N×C×H×W or N×H×W×C; uint8, or floats in [0, 1]
/// or [0, 255]) as CHW bytes, resized and converted if asked.
fn images_of(
    file: &str,
    x: &Array,
    fit: Fit,
    like: Option<[usize; 3]>,
) -> Result<([usize; 3], Vec<u8>)> {
    let bad = |reason: String| DataError::Numpy { file: file.into(), reason };
    let is_c = |d: usize| d == 1 || d == 3;
    let (n, c, h, w, nhwc) = match x.shape[..] {
        [n, h, w] => (n, 1, h, w, false),
        [n, c, h, w] if is_c(c) => (n, c, h, w, false),
        [n, h, w, c] if is_c(c) => (n, c, h, w, true),
        _ => {
            return Err(bad(format!(
                "shape {:?}: images must be N×H×W, N×C×H×W or N×H×W×C with C = 1 or 3",
                x.shape
            )))
        }
    };
    if h == 0 || w == 0 {
        return Err(bad(format!("shape {:?} has empty images", x.shape)));
    }
    let scale = match x.kind {
        'f' => {
            let (lo, hi, finite) = x.values().fold((f64::MAX, f64::MIN, true), |(a, b, f), v| {
                (a.min(v), b.max(v), f && v.is_finite())
            });
            if !finite || lo < 0.0 || hi > 255.0 {
                return Err(bad(format!(
                    "float pixels from {lo} to {hi}: give raw pixels in [0, 1] or [0, 255] \
                     (normalisation is the toolkit's; it records it in the network)"
                )));
            }
            if hi <= 1.0 {
                255.0
            } else {
                1.0
            }
        }
        _ => {
            if let Some(v) = x.values().find(|v| !(0.0..=255.0).contains(v)) {
                return Err(bad(format!("pixel value {v} outside 0..=255")));
            }
            1.0
        }
    };
    let (oh, ow) = fit.size.map_or((h, w), |[a, b]| (a, b));
    let oc = fit.channels.unwrap_or(c);
    let shape = [oc, oh, ow];
    if let Some(want) = like {
        if want != shape {
            return Err(bad(format!(
                "test images are {oc}×{oh}×{ow} but training images {}×{}×{}",
                want[0], want[1], want[2]
            )));
        }
    }
    let l = c * h * w;
    let mut out = Vec::with_capacity(n * c * oh * ow);
    for i in 0..n {
        let img = |k: usize| x.get(i * l + k);
        let mut chw_px = vec![0u8; l];
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    let src = if nhwc { (y * w + xx) * c + ch } else { (ch * h + y) * w + xx };
                    chw_px[(ch * h + y) * w + xx] =
                        (img(src) * scale).round().clamp(0.0, 255.0) as u8;
                }
            }
        }
        if fit.size.is_some() || oc != c {
            let dynimg = to_image(&chw_px, c, h, w);
            let dynimg = if fit.size.is_some() { fit_to(dynimg, oh, ow) } else { dynimg };
            out.extend(chw(&dynimg, oc));
        } else {
            out.extend(chw_px);
        }
    }
    Ok((shape, out))
}

fn to_image(chw_px: &[u8], c: usize, h: usize, w: usize) -> DynamicImage {
    let hw = h * w;
    if c == 1 {
        let buf = image::GrayImage::from_raw(w as u32, h as u32, chw_px.to_vec());
        return buf
            .map_or_else(|| DynamicImage::new_luma8(w as u32, h as u32), DynamicImage::ImageLuma8);
    }
    let mut raw = vec![0u8; 3 * hw];
    for i in 0..hw {
        for ch in 0..3 {
            raw[i * 3 + ch] = chw_px[ch * hw + i];
        }
    }
    image::RgbImage::from_raw(w as u32, h as u32, raw)
        .map_or_else(|| DynamicImage::new_rgb8(w as u32, h as u32), DynamicImage::ImageRgb8)
}

fn labels_of(file: &str, y: &Array, n: usize) -> Result<Vec<u8>> {
    let bad = |reason: String| DataError::Numpy { file: file.into(), reason };
    let ok_shape = matches!(y.shape[..], [m] | [m, 1] if m == n);
    if !ok_shape {
        return Err(bad(format!("labels of shape {:?} for {n} images (expected [{n}])", y.shape)));
    }
    if y.kind == 'f' {
        return Err(bad("labels must be integers (class indices)".into()));
    }
    y.values()
        .enumerate()
        .map(|(index, v)| {
            if (0.0..MAX_CLASSES as f64).contains(&v) {
                Ok(v as u8)
            } else {
                Err(DataError::LabelOutOfRange {
                    path: file.into(),
                    index,
                    label: v as i64,
                    classes: MAX_CLASSES,
                })
            }
        })
        .collect()
}
