//! The real dataset loaders, on small files written here in each official format.

use std::io::Write;
use std::path::Path;

use convsweep_proto::spec::{DatasetName, DatasetSpec};
use convsweep_worker::data::{DataCache, DataError, Dataset};
use tch::{Device, Kind, Tensor};

pub(crate) fn spec(name: DatasetName, root: &Path) -> DatasetSpec {
    DatasetSpec {
        name,
        root: Some(root.display().to_string()),
        train_size: None,
        test_size: None,
        noise: None,
        data_seed: None,
        image_size: None,
        classes: None,
        val_labels: None,
        val_fraction: None,
    }
}

fn load(name: DatasetName, root: &Path) -> Result<Dataset, DataError> {
    DataCache::default().get(&spec(name, root), Device::Cpu)
}

fn err(name: DatasetName, root: &Path) -> String {
    load(name, root).map(|_| ()).expect_err("should fail").to_string()
}

/// A recognisable pixel value for (image, channel, row, column).
fn px(n: usize, c: usize, r: usize, col: usize) -> u8 {
    ((n * 7 + c * 31 + r * 3 + col * 5) % 251) as u8
}

pub(crate) fn cifar_record(label_bytes: &[u8], n: usize) -> Vec<u8> {
    let mut rec = label_bytes.to_vec();
    for c in 0..3 {
        for r in 0..32 {
            for col in 0..32 {
                rec.push(px(n, c, r, col));
            }
        }
    }
    rec
}

fn check_pixels(images: &Tensor, n: usize, channels: usize) {
    for (c, r, col) in [(0, 0, 0), (channels - 1, 5, 17), (channels - 1, 31, 2)] {
        assert_eq!(
            images.int64_value(&[n as i64, c as i64, r as i64, col as i64]),
            i64::from(px(n, c, r, col)),
            "image {n} channel {c} at ({r}, {col})"
        );
    }
}

#[test]
fn cifar10_binary_batches() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&root).unwrap();
    let mut n = 0;
    for i in 1..=5 {
        let mut f = Vec::new();
        for _ in 0..2 {
            f.extend(cifar_record(&[(n % 10) as u8], n));
            n += 1;
        }
        std::fs::write(root.join(format!("data_batch_{i}.bin")), f).unwrap();
    }
    std::fs::write(
        root.join("test_batch.bin"),
        [cifar_record(&[3], 0), cifar_record(&[9], 1)].concat(),
    )
    .unwrap();
    // The parent folder works too (the archive's sub-folder is found).
    let ds = load(DatasetName::Cifar10, dir.path()).unwrap();
    assert_eq!(ds.train.images.size(), [10, 3, 32, 32]);
    assert_eq!(
        Vec::<i64>::try_from(&ds.train.labels).unwrap(),
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(Vec::<i64>::try_from(&ds.test.labels).unwrap(), vec![3, 9]);
    check_pixels(&ds.train.images, 7, 3);
    assert_eq!(ds.classes, 10);

    // Truncated.
    let path = root.join("test_batch.bin");
    std::fs::write(&path, &cifar_record(&[3], 0)[..3000]).unwrap();
    let e = err(DatasetName::Cifar10, &root);
    assert!(e.contains("test_batch.bin") && e.contains("truncated"), "{e}");
    // Mislabelled (a CIFAR-100 record read as CIFAR-10).
    std::fs::write(&path, cifar_record(&[42], 0)).unwrap();
    let e = err(DatasetName::Cifar10, &root);
    assert!(
        e.contains("test_batch.bin") && e.contains("label 42") && e.contains("0..10"),
        "{e}"
    );
    // Missing.
    std::fs::remove_file(root.join("data_batch_3.bin")).unwrap();
    let e = err(DatasetName::Cifar10, &root);
    assert!(e.contains("data_batch_3.bin") && e.contains("missing"), "{e}");
}

#[test]
fn cifar100_uses_fine_labels() {
    let dir = tempfile::tempdir().unwrap();
    let train = [
        cifar_record(&[1, 77], 0),
        cifar_record(&[2, 99], 1),
        cifar_record(&[3, 5], 2),
    ]
    .concat();
    std::fs::write(dir.path().join("train.bin"), train).unwrap();
    std::fs::write(dir.path().join("test.bin"), cifar_record(&[19, 0], 0)).unwrap();
    let ds = load(DatasetName::Cifar100, dir.path()).unwrap();
    assert_eq!(Vec::<i64>::try_from(&ds.train.labels).unwrap(), vec![77, 99, 5]);
    assert_eq!(ds.classes, 100);
    check_pixels(&ds.test.images, 0, 3);
    std::fs::write(dir.path().join("test.bin"), cifar_record(&[0, 100], 0)).unwrap();
    assert!(err(DatasetName::Cifar100, dir.path()).contains("label 100"));
}

pub(crate) fn idx_file(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend(data);
    out
}

pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn fashion_mnist_idx_plain_and_gzipped_upscaled_to_32() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Constant images (so bilinear upscaling keeps the value exactly) of value 10 * label.
    let labels: Vec<u8> = vec![0, 1, 2, 9];
    let pixels: Vec<u8> = labels.iter().flat_map(|&l| vec![l * 10; 28 * 28]).collect();
    std::fs::write(
        root.join("train-images-idx3-ubyte.gz"),
        gzip(&idx_file(&[4, 28, 28], &pixels)),
    )
    .unwrap();
    std::fs::write(root.join("train-labels-idx1-ubyte"), idx_file(&[4], &labels)).unwrap();
    std::fs::write(root.join("t10k-images-idx3-ubyte"), idx_file(&[1, 28, 28], &[50; 784])).unwrap();
    std::fs::write(root.join("t10k-labels-idx1-ubyte.gz"), gzip(&idx_file(&[1], &[5]))).unwrap();
    let ds = load(DatasetName::FashionMnist, root).unwrap();
    assert_eq!(ds.train.images.size(), [4, 1, 32, 32]);
    assert_eq!(ds.image_shape(), (1, 32));
    assert_eq!(Vec::<i64>::try_from(&ds.train.labels).unwrap(), vec![0, 1, 2, 9]);
    assert_eq!(ds.train.images.get(3).min().int64_value(&[]), 90);
    assert_eq!(ds.train.images.get(3).max().int64_value(&[]), 90);
    assert_eq!(ds.test.images.get(0).int64_value(&[0, 16, 16]), 50);

    // A gradient survives upscaling in order (left darker than right).
    let ramp: Vec<u8> = (0..28 * 28).map(|i| ((i % 28) * 9) as u8).collect();
    std::fs::write(root.join("t10k-images-idx3-ubyte"), idx_file(&[1, 28, 28], &ramp)).unwrap();
    let ds = load(DatasetName::FashionMnist, root).unwrap();
    assert!(ds.test.images.int64_value(&[0, 0, 10, 2]) < ds.test.images.int64_value(&[0, 0, 10, 29]));

    // Count mismatch, truncation, bad magic, bad labels.
    std::fs::write(root.join("t10k-labels-idx1-ubyte.gz"), gzip(&idx_file(&[2], &[5, 5]))).unwrap();
    let e = err(DatasetName::FashionMnist, root);
    assert!(
        e.contains("t10k-labels-idx1-ubyte.gz") && e.contains("2 labels") && e.contains("1 images"),
        "{e}"
    );
    std::fs::write(root.join("t10k-labels-idx1-ubyte.gz"), gzip(&idx_file(&[1], &[12]))).unwrap();
    assert!(err(DatasetName::FashionMnist, root).contains("label 12"));
    std::fs::write(
        root.join("t10k-images-idx3-ubyte"),
        &idx_file(&[1, 28, 28], &ramp)[..500],
    )
    .unwrap();
    let e = err(DatasetName::FashionMnist, root);
    assert!(e.contains("t10k-images-idx3-ubyte") && e.contains("truncated"), "{e}");
    std::fs::write(root.join("t10k-images-idx3-ubyte"), b"PK\x03\x04 not idx").unwrap();
    assert!(err(DatasetName::FashionMnist, root).contains("not an IDX file"));
    std::fs::remove_file(root.join("t10k-images-idx3-ubyte")).unwrap();
    let e = err(DatasetName::FashionMnist, root);
    assert!(e.contains("t10k-images-idx3-ubyte") && e.contains("missing"), "{e}");
}

/// A MATLAB v5 element: tag, data, padding to 8 bytes.
pub(crate) fn mat_element(kind: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(kind.to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out.extend(data);
    while out.len() % 8 != 0 {
        out.push(0);
    }
    out
}

/// A compressed numeric matrix as MATLAB's save -v7 writes it.
pub(crate) fn mat_matrix(name: &str, class: u32, dims: &[i32], data_kind: u32, data: &[u8]) -> Vec<u8> {
    let matrix = mat_matrix_plain(name, class, dims, data_kind, data);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&matrix).unwrap();
    let compressed = z.finish().unwrap();
    let mut out = 15u32.to_le_bytes().to_vec();
    out.extend((compressed.len() as u32).to_le_bytes());
    out.extend(compressed);
    out
}

/// The same matrix uncompressed, as `save -v6` writes it.
pub(crate) fn mat_matrix_plain(name: &str, class: u32, dims: &[i32], data_kind: u32, data: &[u8]) -> Vec<u8> {
    let mut m = mat_element(6, &[class.to_le_bytes(), 0u32.to_le_bytes()].concat());
    m.extend(mat_element(
        5,
        &dims.iter().flat_map(|d| d.to_le_bytes()).collect::<Vec<_>>(),
    ));
    // The name as a small element (type and size in one word) when it fits in 4 bytes.
    let mut small = Vec::new();
    small.extend((1u32 | ((name.len() as u32) << 16)).to_le_bytes());
    let mut padded = name.as_bytes().to_vec();
    padded.resize(4, 0);
    small.extend(padded);
    m.extend(small);
    m.extend(mat_element(data_kind, data));
    mat_element(14, &m)
}

pub(crate) fn mat_file(arrays: &[Vec<u8>]) -> Vec<u8> {
    let mut header = b"MATLAB 5.0 MAT-file, written by convsweep tests".to_vec();
    header.resize(116, b' ');
    header.extend([0u8; 8]);
    header.extend(0x0100u16.to_le_bytes());
    header.extend(b"IM");
    for a in arrays {
        header.extend(a);
    }
    header
}

pub(crate) fn svhn_mat(labels: &[f64]) -> Vec<u8> {
    let n = labels.len();
    // Column-major 32x32x3xN: index = row + 32*col + 1024*channel + 3072*n.
    let mut x = vec![0u8; 3072 * n];
    for i in 0..n {
        for c in 0..3 {
            for col in 0..32 {
                for r in 0..32 {
                    x[r + 32 * col + 1024 * c + 3072 * i] = px(i, c, r, col);
                }
            }
        }
    }
    let y: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    mat_file(&[
        mat_matrix("X", 9, &[32, 32, 3, n as i32], 2, &x),
        mat_matrix("y", 6, &[n as i32, 1], 9, &y),
    ])
}

#[test]
fn svhn_matlab_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("train_32x32.mat"), svhn_mat(&[1.0, 10.0, 4.0])).unwrap();
    std::fs::write(root.join("test_32x32.mat"), svhn_mat(&[7.0])).unwrap();
    let ds = load(DatasetName::Svhn, root).unwrap();
    assert_eq!(ds.train.images.size(), [3, 3, 32, 32]);
    // Label 10 is the digit 0.
    assert_eq!(Vec::<i64>::try_from(&ds.train.labels).unwrap(), vec![1, 0, 4]);
    check_pixels(&ds.train.images, 2, 3);
    check_pixels(&ds.test.images, 0, 3);

    std::fs::write(root.join("test_32x32.mat"), svhn_mat(&[11.0])).unwrap();
    let e = err(DatasetName::Svhn, root);
    assert!(e.contains("test_32x32.mat") && e.contains("label 11"), "{e}");
    let full = svhn_mat(&[7.0]);
    std::fs::write(root.join("test_32x32.mat"), &full[..full.len() - 40]).unwrap();
    let e = err(DatasetName::Svhn, root);
    assert!(e.contains("test_32x32.mat") && e.contains("truncated"), "{e}");
    std::fs::write(root.join("test_32x32.mat"), b"\x89HDF\r\n not v5").unwrap();
    assert!(err(DatasetName::Svhn, root).contains("MATLAB v7.3 (HDF5)"));
    std::fs::write(root.join("test_32x32.mat"), [0u8; 200]).unwrap();
    assert!(err(DatasetName::Svhn, root).contains("not a little-endian MATLAB v5 file"));
    std::fs::remove_file(root.join("test_32x32.mat")).unwrap();
    assert!(err(DatasetName::Svhn, root).contains("test_32x32.mat: missing"));
}

#[test]
fn tensor_files_as_npz() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let images = Tensor::arange(4 * 3 * 8 * 8, (Kind::Int64, Device::Cpu))
        .remainder(256)
        .to_kind(Kind::Uint8)
        .view([4, 3, 8, 8]);
    let labels = Tensor::from_slice(&[0i64, 4, 2, 1]);
    Tensor::write_npz(&[("images", &images), ("labels", &labels)], root.join("train.npz")).unwrap();
    Tensor::write_npz(
        &[("images", &images.narrow(0, 0, 2)), ("labels", &labels.narrow(0, 0, 2))],
        root.join("test.npz"),
    )
    .unwrap();
    let ds = load(DatasetName::Tensor, root).unwrap();
    assert_eq!(ds.classes, 5, "largest label + 1");
    assert!(ds.train.images.equal(&images));
    assert_eq!(ds.image_shape(), (3, 8));

    // An explicit class count wins; labels beyond it are refused.
    let classes = Tensor::from_slice(&[3i64]).view([]);
    Tensor::write_npz(
        &[("images", &images), ("labels", &labels), ("classes", &classes)],
        root.join("train.npz"),
    )
    .unwrap();
    let e = err(DatasetName::Tensor, root);
    assert!(
        e.contains("train.npz") && e.contains("label 4") && e.contains("0..3"),
        "{e}"
    );
    let float_images = images.to_kind(Kind::Float);
    Tensor::write_npz(
        &[("images", &float_images), ("labels", &labels)],
        root.join("train.npz"),
    )
    .unwrap();
    assert!(err(DatasetName::Tensor, root).contains("expected uint8"));
    Tensor::write_npz(
        &[("images", &images), ("labels", &labels.narrow(0, 0, 3))],
        root.join("train.npz"),
    )
    .unwrap();
    assert!(err(DatasetName::Tensor, root).contains("3 labels for 4 images"));
    std::fs::write(root.join("test.npz"), b"garbage").unwrap();
    assert!(
        err(DatasetName::Tensor, root).contains("test.npz") || err(DatasetName::Tensor, root).contains("train.npz")
    );
}

#[test]
fn subsets_take_the_first_images_and_share_one_load() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<u8> = (0..6).flat_map(|n| cifar_record(&[n as u8 % 10], n)).collect();
    for i in 1..=5 {
        std::fs::write(dir.path().join(format!("data_batch_{i}.bin")), &records).unwrap();
    }
    std::fs::write(dir.path().join("test_batch.bin"), &records).unwrap();
    let cache = DataCache::default();
    let mut s = spec(DatasetName::Cifar10, dir.path());
    s.train_size = Some(4);
    let a = cache.get(&s, Device::Cpu).unwrap();
    assert_eq!(a.train.len(), 4);
    // Files removed after the first load: the cached copy serves other subsets.
    for i in 1..=5 {
        std::fs::remove_file(dir.path().join(format!("data_batch_{i}.bin"))).unwrap();
    }
    s.train_size = Some(10);
    assert_eq!(cache.get(&s, Device::Cpu).unwrap().train.len(), 10);
}
