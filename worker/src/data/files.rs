//! Loaders for the real datasets, from their official file formats under `dataset.root`.
//! Nothing is downloaded. Each loader checks sizes, headers and labels and names the file
//! and the problem when something is off.
//!
//! | dataset | files (in root, or the sub-folder the archive unpacks to) |
//! |---|---|
//! | cifar10 | `data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin` (`cifar-10-batches-bin/`): records of 1 label byte + 3072 pixel bytes (R, G, B planes, row-major) |
//! | cifar100 | `train.bin`, `test.bin` (`cifar-100-binary/`): records of coarse label, fine label, 3072 pixel bytes; the 100 fine labels are used |
//! | fashion-mnist | `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each optionally `.gz`: IDX files; 28x28 images are upscaled (bilinear) to 32x32, one channel |
//! | svhn | `train_32x32.mat`, `test_32x32.mat`: MATLAB v5 files holding `X` (uint8 32x32x3xN) and `y` (labels 1..10, 10 meaning digit 0) |
//! | tensor | `train.npz`, `test.npz`: NumPy archives with `images` (uint8, N x C x H x W) and `labels` (integers in 0..classes, N); optional `classes` (one integer) |

use std::io::Read;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::error::{DataError, malformed, missing};
use super::npz;
use super::split::Split;

/// Largest image side a file may hold.
const MAX_SIDE: usize = 4096;
/// Most classes a tensor dataset may declare.
const MAX_CLASSES: i64 = 1_000_000;
/// Most bytes a compressed file or element may inflate to.
const MAX_INFLATED: u64 = npz::MAX_ARRAY_BYTES;

/// What an I/O error on `path` means: missing (`hint` says what belongs there), or unreadable.
fn io_error(path: &Path, hint: &str, e: std::io::Error) -> DataError {
    if e.kind() == std::io::ErrorKind::NotFound {
        missing(path, hint)
    } else {
        malformed(path, format!("cannot be read: {e}"))
    }
}

fn read(path: &Path, hint: &str) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| io_error(path, hint, e))
}

/// All of a compressed stream, refusing one that inflates past [`MAX_INFLATED`] bytes.
fn inflate(path: &Path, stream: impl Read, what: &str) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::new();
    stream
        .take(MAX_INFLATED + 1)
        .read_to_end(&mut out)
        .map_err(|e| malformed(path, format!("{what} does not inflate: {e}")))?;
    if out.len() as u64 > MAX_INFLATED {
        return Err(malformed(path, format!("{what} inflates to over {MAX_INFLATED} bytes")));
    }
    Ok(out)
}

/// `root/name`, or `root/sub/name` when only that exists.
fn locate(root: &Path, sub: &str, name: &str) -> PathBuf {
    let direct = root.join(name);
    let nested = root.join(sub).join(name);
    if !direct.exists() && nested.exists() {
        nested
    } else {
        direct
    }
}

fn check_labels(path: &Path, labels: &[i64], classes: i64) -> Result<(), DataError> {
    if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| !(0..classes).contains(*l)) {
        return Err(malformed(
            path,
            format!("label {l} of record {i} is outside 0..{classes}: is this the right dataset?"),
        ));
    }
    Ok(())
}

fn split(images: Vec<u8>, labels: Vec<i64>, shape: [i64; 3]) -> Split {
    let n = labels.len() as i64;
    Split::new(
        Tensor::from_slice(&images).view([n, shape[0], shape[1], shape[2]]),
        Tensor::from_slice(&labels),
    )
}

fn cifar_records(path: &Path, label_bytes: usize, label_index: usize, classes: i64) -> Result<Split, DataError> {
    let hint = "the binary version of CIFAR (not the Python pickles)";
    let bytes = read(path, hint)?;
    let record = label_bytes + 3072;
    if bytes.is_empty() || bytes.len() % record != 0 {
        return Err(malformed(
            path,
            format!(
                "{} bytes is not a whole number of {record}-byte records: truncated, or not a CIFAR-{classes} binary file",
                bytes.len()
            ),
        ));
    }
    let n = bytes.len() / record;
    let mut images = Vec::with_capacity(n * 3072);
    let mut labels = Vec::with_capacity(n);
    for r in bytes.chunks_exact(record) {
        labels.push(i64::from(r[label_index]));
        images.extend_from_slice(&r[label_bytes..]);
    }
    check_labels(path, &labels, classes)?;
    Ok(split(images, labels, [3, 32, 32]))
}

fn concat(path_for_errors: &Path, parts: Vec<Split>) -> Result<Split, DataError> {
    if parts.is_empty() {
        return Err(missing(path_for_errors, "no files"));
    }
    let images: Vec<Tensor> = parts.iter().map(|s| s.images.shallow_clone()).collect();
    let labels: Vec<Tensor> = parts.iter().map(|s| s.labels.shallow_clone()).collect();
    Ok(Split::new(Tensor::cat(&images, 0), Tensor::cat(&labels, 0)))
}

/// CIFAR-10, binary version.
pub fn cifar10(root: &Path) -> Result<(Split, Split), DataError> {
    let sub = "cifar-10-batches-bin";
    let train = (1..=5)
        .map(|i| cifar_records(&locate(root, sub, &format!("data_batch_{i}.bin")), 1, 0, 10))
        .collect::<Result<Vec<_>, _>>()?;
    let test = cifar_records(&locate(root, sub, "test_batch.bin"), 1, 0, 10)?;
    Ok((concat(root, train)?, test))
}

/// CIFAR-100, binary version (fine labels).
pub fn cifar100(root: &Path) -> Result<(Split, Split), DataError> {
    let sub = "cifar-100-binary";
    let train = cifar_records(&locate(root, sub, "train.bin"), 2, 1, 100)?;
    let test = cifar_records(&locate(root, sub, "test.bin"), 2, 1, 100)?;
    Ok((train, test))
}

/// Reads an IDX file, gzipped or not; returns its dimensions and data bytes.
fn idx(root: &Path, name: &str, expected_dims: usize) -> Result<(PathBuf, Vec<usize>, Vec<u8>), DataError> {
    let plain = root.join(name);
    let gz = root.join(format!("{name}.gz"));
    let (path, bytes) = if plain.exists() {
        (plain.clone(), read(&plain, "")?)
    } else if gz.exists() {
        let compressed = read(&gz, "")?;
        (
            gz.clone(),
            inflate(&gz, flate2::read::GzDecoder::new(&compressed[..]), "gzip file")?,
        )
    } else {
        return Err(missing(
            &plain,
            "an IDX file of Fashion-MNIST, optionally gzipped (.gz)",
        ));
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(malformed(
            &path,
            "not an IDX file of unsigned bytes (magic 0x0000 0x08 ..)",
        ));
    }
    let dims = usize::from(bytes[3]);
    if dims != expected_dims {
        return Err(malformed(
            &path,
            format!("has {dims} dimensions; expected {expected_dims}"),
        ));
    }
    let header = 4 + 4 * dims;
    if bytes.len() < header {
        return Err(malformed(&path, "truncated header"));
    }
    let shape: Vec<usize> = (0..dims)
        .map(|d| u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().expect("4 bytes")) as usize)
        .collect();
    if let Some(d) = shape.iter().skip(1).find(|&&d| d == 0 || d > MAX_SIDE) {
        return Err(malformed(
            &path,
            format!("its header {shape:?} has a side of {d}; expected 1 to {MAX_SIDE}"),
        ));
    }
    let expected = npz::element_count(&shape).ok_or_else(|| {
        malformed(
            &path,
            format!("its header {shape:?} announces more bytes than fit in memory"),
        )
    })?;
    let data = bytes[header..].to_vec();
    if data.len() != expected {
        return Err(malformed(
            &path,
            format!(
                "holds {} data bytes; its header {shape:?} announces {expected} (truncated?)",
                data.len()
            ),
        ));
    }
    Ok((path, shape, data))
}

fn fashion_split(root: &Path, images: &str, labels: &str) -> Result<Split, DataError> {
    let (ipath, ishape, pixels) = idx(root, images, 3)?;
    let (lpath, lshape, label_bytes) = idx(root, labels, 1)?;
    if ishape[0] != lshape[0] {
        return Err(malformed(
            &lpath,
            format!(
                "has {} labels but {} has {} images",
                lshape[0],
                ipath.display(),
                ishape[0]
            ),
        ));
    }
    if ishape[0] == 0 {
        return Err(malformed(&ipath, "holds no images"));
    }
    let labels: Vec<i64> = label_bytes.iter().map(|&b| i64::from(b)).collect();
    check_labels(&lpath, &labels, 10)?;
    let n = ishape[0] as i64;
    let small = Tensor::from_slice(&pixels).view([n, 1, ishape[1] as i64, ishape[2] as i64]);
    // Upscale to 32x32 as the paper does (bilinear), back to bytes.
    let images = small
        .to_kind(Kind::Float)
        .upsample_bilinear2d([32, 32], false, None, None)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8);
    Ok(Split::new(images, Tensor::from_slice(&labels)))
}

/// Fashion-MNIST from IDX files (gzipped or not), upscaled to 32x32.
pub fn fashion_mnist(root: &Path) -> Result<(Split, Split), DataError> {
    Ok((
        fashion_split(root, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")?,
        fashion_split(root, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?,
    ))
}

/// A numeric MATLAB array: dimensions (column-major) and values.
#[derive(Debug)]
struct MatArray {
    dims: Vec<usize>,
    values: MatValues,
}

#[derive(Debug)]
enum MatValues {
    U8(Vec<u8>),
    F64(Vec<f64>),
}

/// Reads the named numeric arrays of a MATLAB v5 (`-v6`/`-v7`, not HDF5 `-v7.3`) file.
mod mat {
    use super::*;

    const MI_INT8: u32 = 1;
    const MI_UINT8: u32 = 2;
    const MI_INT16: u32 = 3;
    const MI_UINT16: u32 = 4;
    const MI_INT32: u32 = 5;
    const MI_UINT32: u32 = 6;
    const MI_SINGLE: u32 = 7;
    const MI_DOUBLE: u32 = 9;
    const MI_MATRIX: u32 = 14;
    const MI_COMPRESSED: u32 = 15;

    struct Element<'a> {
        kind: u32,
        data: &'a [u8],
        next: usize,
    }

    fn element(bytes: &[u8], at: usize) -> Option<Element<'_>> {
        let head = bytes.get(at..at + 8)?;
        let first = u32::from_le_bytes(head[0..4].try_into().ok()?);
        if first >> 16 != 0 {
            // Small element: size in the upper half, data in the same 8 bytes.
            let (kind, size) = (first & 0xffff, (first >> 16) as usize);
            return Some(Element {
                kind,
                data: bytes.get(at + 4..at + 4 + size)?,
                next: at + 8,
            });
        }
        let size = u32::from_le_bytes(head[4..8].try_into().ok()?) as usize;
        let data = bytes.get(at + 8..at + 8 + size)?;
        let padded = if first == MI_COMPRESSED {
            size
        } else {
            size.div_ceil(8) * 8
        };
        Some(Element {
            kind: first,
            data,
            next: at + 8 + padded,
        })
    }

    fn numbers(kind: u32, data: &[u8]) -> Option<MatValues> {
        macro_rules! conv {
            ($t:ty, $n:expr) => {
                MatValues::F64(
                    data.chunks_exact($n)
                        .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()) as f64)
                        .collect(),
                )
            };
        }
        Some(match kind {
            MI_UINT8 => MatValues::U8(data.to_vec()),
            MI_INT8 => MatValues::F64(data.iter().map(|&b| f64::from(b as i8)).collect()),
            MI_INT16 => conv!(i16, 2),
            MI_UINT16 => conv!(u16, 2),
            MI_INT32 => conv!(i32, 4),
            MI_UINT32 => conv!(u32, 4),
            MI_SINGLE => conv!(f32, 4),
            MI_DOUBLE => conv!(f64, 8),
            _ => return None,
        })
    }

    fn matrix(data: &[u8]) -> Option<(String, MatArray)> {
        let flags = element(data, 0)?;
        let dims_el = element(data, flags.next)?;
        let dims: Vec<usize> = dims_el
            .data
            .chunks_exact(4)
            .map(|c| usize::try_from(i32::from_le_bytes(c.try_into().unwrap())).ok())
            .collect::<Option<_>>()?;
        let name_el = element(data, dims_el.next)?;
        let name = String::from_utf8_lossy(name_el.data).into_owned();
        let real = element(data, name_el.next)?;
        Some((
            name,
            MatArray {
                dims,
                values: numbers(real.kind, real.data)?,
            },
        ))
    }

    /// Every numeric array in the file, by name.
    pub(super) fn read_arrays(path: &Path, bytes: &[u8]) -> Result<Vec<(String, MatArray)>, DataError> {
        if bytes.len() < 128 || &bytes[126..128] != b"IM" {
            let why = if bytes.starts_with(b"\x89HDF") || bytes.get(512..516) == Some(b"\x89HDF") {
                "a MATLAB v7.3 (HDF5) file; save it with -v7 or use the official SVHN files"
            } else {
                "not a little-endian MATLAB v5 file (no 'IM' marker in its 128-byte header)"
            };
            return Err(malformed(path, why));
        }
        let mut arrays = Vec::new();
        let mut at = 128;
        while at < bytes.len() {
            let el =
                element(bytes, at).ok_or_else(|| malformed(path, format!("truncated data element at byte {at}")))?;
            let decompressed;
            let (kind, data) = if el.kind == MI_COMPRESSED {
                decompressed = inflate(
                    path,
                    flate2::read::ZlibDecoder::new(el.data),
                    &format!("compressed element at byte {at}"),
                )?;
                let inner = element(&decompressed, 0).ok_or_else(|| malformed(path, "truncated compressed element"))?;
                (inner.kind, inner.data)
            } else {
                (el.kind, el.data)
            };
            if kind == MI_MATRIX
                && let Some(array) = matrix(data)
            {
                arrays.push(array);
            }
            at = el.next;
        }
        Ok(arrays)
    }
}

fn svhn_split(path: &Path) -> Result<Split, DataError> {
    let bytes = read(
        path,
        "the official SVHN cropped-digit file (train_32x32.mat / test_32x32.mat)",
    )?;
    let arrays = mat::read_arrays(path, &bytes)?;
    let get = |name: &str| {
        arrays
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
            .ok_or_else(|| malformed(path, format!("has no array named {name:?}")))
    };
    let x = get("X")?;
    let y = get("y")?;
    let MatValues::U8(pixels) = &x.values else {
        return Err(malformed(path, "X is not uint8"));
    };
    if x.dims.len() != 4 || x.dims[..3] != [32, 32, 3] {
        return Err(malformed(
            path,
            format!("X has dimensions {:?}; expected 32x32x3xN", x.dims),
        ));
    }
    let n = x.dims[3];
    if n.checked_mul(3072) != Some(pixels.len()) {
        return Err(malformed(
            path,
            format!("X holds {} bytes for {n} images (truncated?)", pixels.len()),
        ));
    }
    let labels: Vec<i64> = match &y.values {
        MatValues::U8(v) => v.iter().map(|&l| i64::from(l)).collect(),
        MatValues::F64(v) => v.iter().map(|&l| l as i64).collect(),
    };
    if labels.len() != n {
        return Err(malformed(path, format!("has {} labels for {n} images", labels.len())));
    }
    // Labels 1..10, where 10 is the digit 0.
    if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| !(1..=10).contains(*l)) {
        return Err(malformed(path, format!("label {l} of image {i} is outside 1..10")));
    }
    let labels: Vec<i64> = labels.into_iter().map(|l| l % 10).collect();
    // Column-major 32x32x3xN: image n is [channel][column][row]; make it [channel][row][column].
    let images = Tensor::from_slice(pixels)
        .view([n as i64, 3, 32, 32])
        .transpose(2, 3)
        .contiguous();
    Ok(Split::new(images, Tensor::from_slice(&labels)))
}

/// SVHN cropped digits from the official `.mat` files.
pub fn svhn(root: &Path) -> Result<(Split, Split), DataError> {
    Ok((
        svhn_split(&root.join("train_32x32.mat"))?,
        svhn_split(&root.join("test_32x32.mat"))?,
    ))
}

fn npz_split(path: &Path) -> Result<(Split, Option<i64>), DataError> {
    // Read through the file (not a copy of it in memory), each array taken out of the archive's
    // list rather than copied: an npz may hold gigabytes of images.
    let file = std::fs::File::open(path).map(std::io::BufReader::new).map_err(|e| {
        io_error(
            path,
            "a NumPy .npz with `images` (uint8 NxCxHxW) and `labels` (integers, N)",
            e,
        )
    })?;
    let mut arrays = npz::read(file).map_err(|e| malformed(path, e))?;
    let mut take = |name: &str| {
        let i = arrays.iter().position(|(n, _)| n == name)?;
        Some(arrays.swap_remove(i).1)
    };
    let images = take("images").ok_or_else(|| malformed(path, "has no `images` array"))?;
    let labels = take("labels").ok_or_else(|| malformed(path, "has no `labels` array"))?;
    let classes = take("classes");
    let npz::Values::U8(pixels) = images.values else {
        return Err(malformed(
            path,
            format!(
                "`images` is {} with shape {:?}; expected uint8 N x C x H x W",
                images.descr, images.shape
            ),
        ));
    };
    let [n, c, h, w] = images.shape[..] else {
        return Err(malformed(
            path,
            format!("`images` has shape {:?}; expected N x C x H x W", images.shape),
        ));
    };
    if c == 0 || h == 0 || w == 0 || c > 4 || h > MAX_SIDE || w > MAX_SIDE {
        return Err(malformed(
            path,
            format!("`images` are {c} x {h} x {w}; expected 1 to 4 channels and sides of 1 to {MAX_SIDE} pixels"),
        ));
    }
    let labels: Vec<i64> = match (labels.values, &labels.shape[..]) {
        (npz::Values::U8(v), [_]) => v.into_iter().map(i64::from).collect(),
        (npz::Values::I64(v), [_]) => v,
        (_, shape) => {
            return Err(malformed(
                path,
                format!(
                    "`labels` is {} with shape {shape:?}; expected integers of shape N",
                    labels.descr
                ),
            ));
        }
    };
    if labels.len() != n {
        return Err(malformed(path, format!("{} labels for {n} images", labels.len())));
    }
    if n == 0 {
        return Err(malformed(path, "holds no images"));
    }
    let classes = match classes {
        None => None,
        Some(c) => match (&c.values, c.shape.iter().product::<usize>()) {
            (npz::Values::I64(v), 1) if (1..=MAX_CLASSES).contains(&v[0]) => Some(v[0]),
            (npz::Values::U8(v), 1) if v[0] >= 1 => Some(i64::from(v[0])),
            _ => {
                return Err(malformed(
                    path,
                    format!("`classes` must be one integer in 1..={MAX_CLASSES}"),
                ));
            }
        },
    };
    let shape = [c as i64, h as i64, w as i64];
    Ok((split(pixels, labels, shape), classes))
}

/// A plain tensor dataset: `train.npz` and `test.npz`. Returns the splits and the classes
/// (the `classes` entry, else the largest label + 1).
pub fn tensor_file(root: &Path) -> Result<(Split, Split, i64), DataError> {
    let train_path = root.join("train.npz");
    let test_path = root.join("test.npz");
    let (train, c1) = npz_split(&train_path)?;
    let (test, c2) = npz_split(&test_path)?;
    if train.images.size()[1..] != test.images.size()[1..] {
        return Err(malformed(
            &test_path,
            format!(
                "images are {:?}, but the training images are {:?}",
                &test.images.size()[1..],
                &train.images.size()[1..]
            ),
        ));
    }
    let mut labels = Vec::with_capacity(2);
    for (path, s) in [(&train_path, &train), (&test_path, &test)] {
        labels.push(Vec::<i64>::try_from(&s.labels).map_err(|e| malformed(path, e.to_string()))?);
    }
    let largest = labels.iter().flatten().copied().max().unwrap_or(-1);
    let classes = c1
        .or(c2)
        .unwrap_or_else(|| largest.saturating_add(1).clamp(0, MAX_CLASSES));
    for (path, labels) in [&train_path, &test_path].into_iter().zip(&labels) {
        check_labels(path, labels, classes)?;
    }
    Ok((train, test, classes))
}
