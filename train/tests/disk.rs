//! A provider's own data: image folders and NumPy arrays written here, read,
//! checked, and trained on; bad data is refused with a named error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use delphi_train::data::{self, DataError, DatasetKind};
use delphi_train::{TrainConfig, Trainer};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("delphi-disk-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A grey image whose look says its class ("dark", "bright", else a
/// vertical bar), with per-image noise.
fn grey(class: &str, i: usize, w: u32, h: u32) -> image::GrayImage {
    image::GrayImage::from_fn(w, h, |x, y| {
        let noise = ((x * 31 + y * 17 + i as u32 * 7) % 23) as u8;
        let v = match class {
            "dark" => 20 + noise,
            "bright" => 200 + noise,
            _ => {
                if x == w / 2 {
                    250
                } else {
                    40 + noise
                }
            }
        };
        image::Luma([v])
    })
}

fn write_folder(root: &Path, classes: &[&str], per_class: usize, w: u32, h: u32) {
    for name in classes {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..per_class {
            grey(name, i, w, h).save(d.join(format!("{i:03}.png"))).unwrap();
        }
    }
}

fn parse(spec: &Path) -> Result<DatasetKind, DataError> {
    spec.to_str().unwrap().parse()
}

#[test]
fn an_image_folder_is_read_split_and_normalised() {
    let root = tmp("folder");
    write_folder(&root, &["bar", "bright", "dark"], 14, 10, 12);
    std::fs::write(root.join("bright").join("notes.txt"), "not an image").unwrap();
    let kind = parse(&root).unwrap();
    assert_eq!(kind.shape(), [1, 12, 10]);
    assert_eq!(kind.classes(), 3);
    let DatasetKind::Disk(d) = &kind else { panic!("{kind:?}") };
    assert_eq!(d.class_names, ["bar", "bright", "dark"]);
    // Mean and spread measured on the training images.
    let (m, s) = kind.normalization();
    assert!(m[0] > 0.2 && m[0] < 0.7 && s[0] > 0.2, "{m:?} {s:?}");

    // One image in seven of each class is the test set (2 of 14), the same on every load.
    let ds = data::load(kind.clone(), None, 6, 1).unwrap();
    assert_eq!((ds.train.len(), ds.valid.len(), ds.test.len()), (30, 6, 6));
    let again = data::load(kind.clone(), None, 6, 1).unwrap();
    assert_eq!(ds.test.pixels, again.test.pixels);
    // Shuffled once, by a fixed draw: a prefix (--train-limit) holds several classes.
    let first = &ds.train.labels[..6];
    assert!(first.iter().any(|&l| l != first[0]), "{first:?}");
    for c in 0..3u8 {
        assert_eq!(ds.test.labels.iter().filter(|&&l| l == c).count(), 2);
    }
    // Pixels arrive as written, labelled by sorted folder name: bar 0, bright 1, dark 2.
    for s in [&ds.train, &ds.test] {
        for i in 0..s.len() {
            let px = &s.pixels[i * 120..(i + 1) * 120];
            let mean = px.iter().map(|&v| v as f64).sum::<f64>() / 120.0;
            match s.labels[i] {
                1 => assert!(mean > 190.0, "{mean}"),
                2 => assert!(mean < 50.0, "{mean}"),
                _ => assert!(px.contains(&250)),
            }
        }
    }
    // A --data-dir beside a path is a mistake, named.
    let e = data::load(kind.clone(), Some(Path::new("/tmp")), 6, 1).unwrap_err().to_string();
    assert!(e.contains("--data-dir") && e.contains("names its data itself"), "{e}");
    // Files store the path, and read it back.
    let json = serde_json::to_string(&kind).unwrap();
    assert_eq!(json, serde_json::to_string(root.to_str().unwrap()).unwrap());
    assert_eq!(serde_json::from_str::<DatasetKind>(&json).unwrap(), kind);
}

#[test]
fn train_and_test_folders_and_colour_images_and_resizing() {
    let root = tmp("split");
    for split in ["train", "test"] {
        for (c, name) in ["cat", "dog"].iter().enumerate() {
            let d = root.join(split).join(name);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..3 {
                // Colour JPEGs of mixed sizes.
                let (w, h) = (16 + 4 * i as u32, 12 + 2 * c as u32);
                let img = image::RgbImage::from_fn(w, h, |x, _| {
                    image::Rgb([(c * 200) as u8, 100, if x < w / 2 { 0 } else { 255 }])
                });
                img.save(d.join(format!("{i}.jpg"))).unwrap();
            }
        }
    }
    // Mixed sizes need a resize: the error names two files and says how.
    let e = parse(&root).unwrap_err();
    let m = e.to_string();
    assert!(m.contains("mixed sizes") && m.contains(":HxW") && m.contains(".jpg"), "{m}");

    let spec = format!("{}:8x8", root.display());
    let kind: DatasetKind = spec.parse().unwrap();
    assert_eq!((kind.shape(), kind.classes()), ([3, 8, 8], 2));
    assert_eq!(kind.spec(), spec);
    assert!(kind.default_normalization().pixels.unwrap().contains("resized to 8×8"));
    let ds = data::load(kind, None, 2, 1).unwrap();
    assert_eq!((ds.train.len() + ds.valid.len(), ds.test.len()), (6, 6));
    // CHW: red is plane 0 (0 or 200 by class, JPEG within a few levels),
    // blue plane 2 dark on the left and bright on the right after the crop.
    for i in 0..ds.test.len() {
        let img = &ds.test.pixels[i * 192..(i + 1) * 192];
        let red = img[..64].iter().map(|&v| v as f64).sum::<f64>() / 64.0;
        let want = if ds.test.labels[i] == 1 { 200.0 } else { 0.0 };
        assert!((red - want).abs() < 12.0, "red {red} for label {}", ds.test.labels[i]);
        assert!(img[128] < 40 && img[128 + 7] > 215, "{} {}", img[128], img[135]);
    }

    // A test class without a training folder is named. (Data is read once
    // per process and name: this is a new name.)
    std::fs::create_dir_all(root.join("test").join("bird")).unwrap();
    image::RgbImage::new(8, 8).save(root.join("test").join("bird").join("0.png")).unwrap();
    let e = format!("{}:9x9", root.display()).parse::<DatasetKind>().unwrap_err();
    assert!(e.to_string().contains("\"bird\" has no training folder"), "{e}");
}

#[test]
fn bad_image_folders_get_named_errors() {
    // An unreadable image names the file.
    let root = tmp("bad-image");
    write_folder(&root, &["a", "b"], 3, 8, 8);
    std::fs::write(root.join("b").join("001.png"), b"\x89PNG but not really").unwrap();
    let e = parse(&root).unwrap_err();
    assert!(matches!(e, DataError::Image { .. }), "{e}");
    assert!(e.to_string().contains("001.png"), "{e}");

    // One class is not a classifier.
    let root = tmp("one-class");
    write_folder(&root, &["only"], 4, 8, 8);
    let e = parse(&root).unwrap_err();
    assert!(e.to_string().contains("1 class found"), "{e}");

    // An empty class folder, and an image format that is not read, are named.
    let root = tmp("empty-class");
    write_folder(&root, &["a", "b"], 3, 8, 8);
    std::fs::create_dir_all(root.join("c")).unwrap();
    assert!(parse(&root).unwrap_err().to_string().contains("holds no images"));
    std::fs::write(root.join("c").join("x.webp"), b"RIFF").unwrap();
    let e = parse(&root).unwrap_err().to_string();
    assert!(e.contains("x.webp") && e.contains("convert"), "{e}");

    // A path that is nothing says what it could have been.
    let e = "no/such/folder".parse::<DatasetKind>().unwrap_err().to_string();
    assert!(e.contains("no such file or folder") && e.contains(".npz"), "{e}");
}

fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    delphi_train::disk::npy_bytes(descr, shape, data)
}

fn npz(path: &Path, arrays: &[(&str, Vec<u8>)]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in arrays {
        let opts =
            zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        z.start_file(format!("{name}.npy"), opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

fn i64s(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn npz_archives_in_either_layout_and_their_errors() {
    let dir = tmp("npz");
    // 4 images, N×H×W×C (Keras) uint8, 3 channels, 2×3 pixels: value = 100·c + 10·y + x + image.
    let x: Vec<u8> = (0..4)
        .flat_map(|n| {
            (0..2).flat_map(move |y| {
                (0..3).flat_map(move |x| (0..3).map(move |c| 100 * c + 10 * y + x + n))
            })
        })
        .map(|v| v as u8)
        .collect();
    let y = i64s(&[0, 1, 2, 1]);
    let xt: Vec<u8> = x[..2 * 18].to_vec();
    let p = dir.join("keras.npz");
    npz(
        &p,
        &[
            ("x_train", npy("|u1", &[4, 2, 3, 3], &x)),
            ("y_train", npy("<i8", &[4], &y)),
            ("x_test", npy("|u1", &[2, 2, 3, 3], &xt)),
            ("y_test", npy("<i8", &[2], &i64s(&[2, 0]))),
        ],
    );
    let kind = parse(&p).unwrap();
    assert_eq!((kind.shape(), kind.classes()), ([3, 2, 3], 3));
    let ds = data::load(kind, None, 0, 1).unwrap();
    assert_eq!((ds.train.len(), ds.test.len()), (4, 2));
    // Images come in a fixed shuffled order; each keeps its label and pixels.
    // Pixel (channel 0, row 0, column 0) is the image's number n.
    for (set, labels) in [(&ds.train, [0u8, 1, 2, 1]), (&ds.test, [2, 0, 0, 0])] {
        for i in 0..set.len() {
            let img = &set.pixels[i * 18..(i + 1) * 18];
            let n = img[0] as usize;
            assert_eq!(set.labels[i], labels[n]);
            // Channels first: channel 2, row 1, column 2 = 200 + 10 + 2 + n.
            assert_eq!(img[2 * 6 + 3 + 2] as usize, 212 + n);
        }
    }
    let mut seen: Vec<u8> = (0..4).map(|i| ds.train.pixels[i * 18]).collect();
    seen.sort_unstable();
    assert_eq!(seen, vec![0, 1, 2, 3]);

    // Floats in [0, 1], N×C×H×W, `x`/`y` with no test arrays: a fixed split.
    let n = 14;
    let xf: Vec<u8> = (0..n * 4).flat_map(|i| ((i % 4) as f32 / 4.0).to_le_bytes()).collect();
    let yl: Vec<u8> = (0..n).flat_map(|i| ((i % 2) as i32).to_le_bytes()).collect();
    let p = dir.join("floats.npz");
    npz(&p, &[("x", npy("<f4", &[n, 1, 2, 2], &xf)), ("y", npy("<i4", &[n], &yl))]);
    let ds = data::load(parse(&p).unwrap(), None, 0, 1).unwrap();
    assert_eq!((ds.train.len(), ds.test.len()), (12, 2));
    assert_eq!(&ds.train.pixels[..4], &[0, 64, 128, 191]);

    // Errors, each naming the array.
    let bad = |name: &str, arrays: &[(&str, Vec<u8>)]| {
        let p = dir.join(format!("{name}.npz"));
        npz(&p, arrays);
        parse(&p).unwrap_err().to_string()
    };
    let e = bad("no-y", &[("x", npy("|u1", &[2, 2, 2], &[0; 8]))]);
    assert!(e.contains("no array y"), "{e}");
    let e = bad(
        "neg",
        &[("x", npy("|u1", &[2, 2, 2], &[0; 8])), ("y", npy("<i8", &[2], &i64s(&[0, -1])))],
    );
    assert!(e.contains("label -1 of record 1 out of range") && e.contains("neg.npz:y"), "{e}");
    let e = bad(
        "shape",
        &[("x", npy("|u1", &[2, 5, 2, 2], &[0; 40])), ("y", npy("<i8", &[2], &i64s(&[0, 1])))],
    );
    assert!(e.contains("C = 1 or 3"), "{e}");
    let e = bad(
        "norm",
        &[
            ("x", npy("<f4", &[2, 1, 1], &[(-0.5f32).to_le_bytes(), 1f32.to_le_bytes()].concat())),
            ("y", npy("<i8", &[2], &i64s(&[0, 1]))),
        ],
    );
    assert!(e.contains("raw pixels"), "{e}");
    // A header that claims more than the file holds is refused before any allocation.
    let e = bad(
        "claims",
        &[
            ("x", npy("|u1", &[1 << 20, 1024, 1024], &[0; 8])),
            ("y", npy("<i8", &[2], &i64s(&[0, 1]))),
        ],
    );
    assert!(e.contains("larger than the file"), "{e}");
    std::fs::write(dir.join("junk.npz"), b"not a zip").unwrap();
    let e = parse(&dir.join("junk.npz")).unwrap_err().to_string();
    assert!(e.contains("not a .npz"), "{e}");
}

#[test]
fn a_folder_of_npy_files_reads_like_an_npz() {
    let dir = tmp("npy");
    let x: Vec<u8> = (0..6 * 4).map(|i| (i * 10) as u8).collect();
    std::fs::write(dir.join("x.npy"), npy("|u1", &[6, 2, 2], &x)).unwrap();
    std::fs::write(dir.join("y.npy"), npy("|u1", &[6], &[0, 1, 0, 1, 0, 1])).unwrap();
    let kind = parse(&dir).unwrap();
    assert_eq!((kind.shape(), kind.classes()), ([1, 2, 2], 2));
    // Grey arrays made RGB (and resized) on request.
    let rgb: DatasetKind = format!("{}:3x4x4", dir.display()).parse().unwrap();
    assert_eq!(rgb.shape(), [3, 4, 4]);
    let d = data::load(rgb, None, 0, 1).unwrap();
    assert_eq!(d.train.pixels[..16], d.train.pixels[16..32]);
    let e = format!("{}:2x4x4", dir.display()).parse::<DatasetKind>().unwrap_err().to_string();
    assert!(e.contains("channels must be 1 (grey) or 3 (RGB)"), "{e}");
    let e = parse(&dir.join("x.npy")).unwrap_err().to_string();
    assert!(e.contains("pass the folder"), "{e}");
}

#[test]
fn a_network_trains_on_a_folder_of_pngs() {
    let root = tmp("train");
    write_folder(&root, &["bar", "bright", "dark"], 70, 28, 28);
    let kind = parse(&root).unwrap();
    let data = data::load(kind.clone(), None, 30, 1).unwrap();
    let mut c = TrainConfig::new(kind.clone());
    assert_eq!(c.arch, "small-cnn");
    c.epochs = 6;
    c.batch_size = 16;
    let mut tr = Trainer::new(c, &Device::flex()).unwrap();
    tr.train(&data, true).unwrap();
    let acc = tr.accuracy(&data.test);
    assert!(acc >= 0.9, "test accuracy {acc} on 3 easy classes");
    let net = tr.export().unwrap();
    // The description records the data's own normalisation.
    let n = net.metadata.input_normalization.clone().unwrap();
    assert_eq!((n.mean, n.std), kind.normalization());
    assert_eq!(net.metadata.extra["classes"], serde_json::json!(["bar", "bright", "dark"]));

    // A network whose input differs is refused with the resize that fits it.
    let mut c = TrainConfig::new(kind);
    c.arch = "minionn".into();
    let e = Trainer::new(c, &Device::flex()).err().unwrap().to_string();
    assert!(e.contains(":3x32x32"), "{e}");
    // Converted to RGB and resized as the network needs, it trains.
    let rgb: DatasetKind = format!("{}:3x32x32", root.display()).parse().unwrap();
    assert_eq!(rgb.shape(), [3, 32, 32]);
    let d = data::load(rgb.clone(), None, 30, 1).unwrap();
    // Grey repeated over three channels.
    let l = 32 * 32;
    assert_eq!(d.test.pixels[..l], d.test.pixels[l..2 * l]);
    let mut c = TrainConfig::new(rgb);
    c.arch = "minionn".into();
    c.steps = Some(1);
    c.batch_size = 4;
    let mut tr = Trainer::new(c, &Device::flex()).unwrap();
    tr.train(&d, false).unwrap();
}
