//! `dataset.name = "imagefolder"`: an ImageNet-style folder of JPEG and PNG files.
//!
//! ```text
//! root/train/<class>/*.JPEG        class index = position of <class> in sorted order
//! root/val/<class>/*.JPEG          the same classes; or, with `dataset.val_labels`:
//! root/val/*.JPEG + a labels file  lines `<file name> <class>` (whitespace or a comma; the
//!                                  Kaggle `LOC_val_solution.csv`, whose second column starts
//!                                  with the class, reads as it is; extensions may be left off)
//! ```
//!
//! Files ending in `.jpg`, `.jpeg` or `.png` (any case) are images; anything else is skipped.
//! Both splits are listed class by class in turn (first image of every class, then the second,
//! ...), so `train_size` and `test_size` cut class-balanced subsets.
//!
//! The training split is not held in memory: each batch is decoded as it is needed, on a pool
//! of threads, a few batches ahead of the trainer, and cropped with torchvision's
//! RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3, bilinear) and flipped at even odds. Every
//! image's crop comes from a generator seeded by the trial seed, the epoch and the image's
//! place in the epoch, so a trial's batches do not depend on the thread count or on where it
//! resumed. The test split is decoded once (resize the shorter side to `size / 0.875`, crop
//! the centre) and kept in memory as `uint8`: 150 KiB an image at 224 px.
//!
//! Threads: the worker's `--decode-threads`, else every core the process may use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use convsweep_proto::spec::{ClassSubset, DEFAULT_IMAGE_SIZE, DatasetSpec, inside_root};
use convsweep_proto::text;
use image::imageops::{self, FilterType};
use image::{ImageReader, RgbImage};
use tch::Tensor;

use super::error::{DataError, malformed, missing};
use crate::rng::{Rng, derive_seed};

/// Batches decoded ahead of the trainer.
const PREFETCH: usize = 3;
/// Largest image side accepted from a file (bigger ones are refused, not resized).
const MAX_SIDE: u32 = 16_384;

/// ImageNet's per-channel mean and standard deviation (torchvision's and timm's), used to
/// normalise imagefolder images: a streamed split has no pixel statistics of its own.
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// See [`IMAGENET_MEAN`].
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_ascii_lowercase().as_str()))
}

/// The entries of `dir`, sorted by name: (name, path, is a folder).
fn entries(dir: &Path, hint: &str) -> Result<Vec<(String, PathBuf, bool)>, DataError> {
    let read = std::fs::read_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => missing(dir, hint),
        _ => malformed(dir, format!("cannot be listed: {e}")),
    })?;
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| malformed(dir, format!("cannot be listed: {e}")))?;
        let path = entry.path();
        // The listing's own file type costs no stat per file (ImageNet has 1.28 million);
        // links are followed, as datasets are often a tree of links into shared storage.
        let is_dir = match entry.file_type() {
            Ok(t) if !t.is_symlink() => t.is_dir(),
            _ => path.is_dir(),
        };
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(malformed(&path, "the name is not UTF-8"));
        };
        if name.starts_with('.') {
            continue;
        }
        out.push((name, path, is_dir));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The image files of one class folder, sorted; an error when there are none.
fn class_images(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let files: Vec<PathBuf> = entries(dir, "a class folder")?
        .into_iter()
        .filter(|(_, p, is_dir)| !is_dir && is_image(p))
        .map(|(_, p, _)| p)
        .collect();
    if files.is_empty() {
        return Err(malformed(
            dir,
            "this class folder holds no .jpg, .jpeg or .png files: every class needs images (remove the folder, or leave it out with dataset.classes)",
        ));
    }
    Ok(files)
}

/// Interleaves per-class lists: the first file of every class, then the second, and so on.
fn interleave(per_class: Vec<Vec<PathBuf>>) -> (Vec<PathBuf>, Vec<i64>) {
    let longest = per_class.iter().map(Vec::len).max().unwrap_or(0);
    let mut files = Vec::with_capacity(per_class.iter().map(Vec::len).sum());
    let mut labels = Vec::with_capacity(files.capacity());
    let mut iters: Vec<_> = per_class.into_iter().map(Vec::into_iter).collect();
    for _ in 0..longest {
        for (class, it) in iters.iter_mut().enumerate() {
            if let Some(f) = it.next() {
                files.push(f);
                labels.push(class as i64);
            }
        }
    }
    (files, labels)
}

/// The class folders a spec uses, in index order.
fn classes(train: &Path, subset: Option<&ClassSubset>) -> Result<Vec<String>, DataError> {
    let all: Vec<String> = entries(train, "the training images: one sub-folder of images per class")?
        .into_iter()
        .filter(|(_, _, is_dir)| *is_dir)
        .map(|(name, _, _)| name)
        .collect();
    if all.is_empty() {
        return Err(malformed(
            train,
            "holds no class folders: the training images go in one sub-folder per class (train/<class>/*.JPEG)",
        ));
    }
    match subset {
        None => Ok(all),
        Some(ClassSubset::First(n)) => {
            let n = *n as usize;
            if n > all.len() {
                return Err(malformed(
                    train,
                    format!("dataset.classes = {n}, but there are only {} class folders", all.len()),
                ));
            }
            Ok(all[..n].to_vec())
        }
        Some(ClassSubset::Names(names)) => {
            let mut picked = names.clone();
            picked.sort();
            for name in &picked {
                if all.binary_search(name).is_err() {
                    return Err(missing(
                        &train.join(name),
                        "a class named in dataset.classes: it needs a folder of training images",
                    ));
                }
            }
            Ok(picked)
        }
    }
}

/// The validation split labelled by a file: `<file name> <class>` per line.
fn labelled_val(val: &Path, labels_file: &Path, index: &HashMap<&str, i64>) -> Result<Vec<Vec<PathBuf>>, DataError> {
    let text = std::fs::read_to_string(labels_file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => missing(labels_file, "dataset.val_labels: lines of `<file name> <class>`"),
        _ => malformed(labels_file, format!("cannot be read as text: {e}")),
    })?;
    // File names in `val/`, also by stem, for labels files that leave the extension off.
    let mut by_name: HashMap<String, PathBuf> = HashMap::new();
    for (name, path, is_dir) in entries(val, "the validation images named by dataset.val_labels")? {
        if is_dir || !is_image(&path) {
            continue;
        }
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
            by_name.entry(stem.to_owned()).or_insert_with(|| path.clone());
        }
        by_name.insert(name, path);
    }
    let mut per_class = vec![Vec::new(); index.len()];
    let mut known = 0usize;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (n == 0 && line.starts_with("ImageId")) {
            continue;
        }
        let (name, class) = match line.split_once(',') {
            Some((name, rest)) => (name.trim(), rest.split_whitespace().next()),
            None => {
                let mut words = line.split_whitespace();
                (words.next().unwrap_or(""), words.next())
            }
        };
        let Some(class) = class else {
            return Err(malformed(
                labels_file,
                format!(
                    "line {}: {} has no class after the file name",
                    n + 1,
                    text::excerpt(line)
                ),
            ));
        };
        let Some(&label) = index.get(class) else {
            // A class left out by dataset.classes, or one without training images.
            continue;
        };
        let Some(path) = by_name.get(name) else {
            // The name is the file's content: quoted short unless it is a plain file name.
            let shown = if name.len() <= text::EXCERPT_CHARS
                && !name.contains(['/', '\\'])
                && !name.chars().any(char::is_control)
            {
                val.join(name).display().to_string()
            } else {
                format!("{}/{}", val.display(), text::excerpt(name))
            };
            return Err(DataError::Missing {
                path: shown,
                hint: format!("named on line {} of {}", n + 1, labels_file.display()),
            });
        };
        per_class[label as usize].push(path.clone());
        known += 1;
    }
    if known == 0 {
        return Err(malformed(
            labels_file,
            "labels no image of the classes in use: its lines are `<file name> <class folder name>`",
        ));
    }
    for files in &mut per_class {
        files.sort();
    }
    Ok(per_class)
}

/// The image files of one split and their sizes; decoded on demand.
#[derive(Debug)]
pub struct Files {
    /// The image files, class by class in turn.
    pub paths: Vec<PathBuf>,
    /// Side of the square images produced.
    pub size: u32,
    /// Decoding threads.
    pub threads: usize,
}

/// The listing of an image folder: training files, validation files, class names.
#[derive(Debug)]
pub struct Listing {
    /// The training split's files.
    pub train: Files,
    /// Its labels.
    pub train_labels: Vec<i64>,
    /// The validation split's files.
    pub val: Files,
    /// Its labels.
    pub val_labels: Vec<i64>,
    /// Class folder names, in index order.
    pub classes: Vec<String>,
}

/// Decoding threads: `configured` (the worker's `--decode-threads`), else the cores this
/// process may use.
pub fn decode_threads(configured: Option<usize>) -> usize {
    configured
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// Lists an image folder as `spec` asks (classes, labels file), without decoding anything;
/// its files decode on `threads` threads.
pub fn list(spec: &DatasetSpec, root: &Path, threads: usize) -> Result<Listing, DataError> {
    let size = spec.image_size.unwrap_or(DEFAULT_IMAGE_SIZE);
    let train_dir = root.join("train");
    let names = classes(&train_dir, spec.classes.as_ref())?;
    let per_class = names
        .iter()
        .map(|c| class_images(&train_dir.join(c)))
        .collect::<Result<Vec<_>, _>>()?;
    let (train, train_labels) = interleave(per_class);
    let val_dir = root.join("val");
    let per_class = match &spec.val_labels {
        Some(file) => {
            let index: HashMap<&str, i64> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i as i64)).collect();
            // A spec's validation refused this already; a worker checks again before it reads.
            inside_root("dataset.val_labels", file).map_err(|e| malformed(root, e.to_string()))?;
            let file = root.join(file);
            labelled_val(&val_dir, &file, &index)?
        }
        None => names
            .iter()
            .map(|c| {
                let dir = val_dir.join(c);
                if !dir.is_dir() {
                    return Err(missing(
                        &dir,
                        "the class's validation images (or give dataset.val_labels for a flat val/ folder)",
                    ));
                }
                class_images(&dir)
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let (val, val_labels) = interleave(per_class);
    Ok(Listing {
        train: Files {
            paths: train,
            size,
            threads,
        },
        train_labels,
        val: Files {
            paths: val,
            size,
            threads,
        },
        val_labels,
        classes: names,
    })
}

/// Decodes one file to RGB, naming it when it cannot be. A decoder that panics on a damaged
/// file is caught: the file is refused like any other undecodable one.
pub fn decode(path: &Path) -> Result<RgbImage, DataError> {
    std::panic::catch_unwind(|| decode_unguarded(path)).unwrap_or_else(|_| {
        Err(malformed(
            path,
            "cannot be decoded as a JPEG or PNG image: the decoder failed on it",
        ))
    })
}

fn decode_unguarded(path: &Path) -> Result<RgbImage, DataError> {
    let reader = ImageReader::open(path)
        .map_err(|e| malformed(path, format!("cannot be opened: {e}")))?
        .with_guessed_format()
        .map_err(|e| malformed(path, format!("cannot be read: {e}")))?;
    let image = reader
        .decode()
        .map_err(|e| malformed(path, format!("cannot be decoded as a JPEG or PNG image: {e}")))?;
    if image.width() == 0 || image.height() == 0 || image.width() > MAX_SIDE || image.height() > MAX_SIDE {
        return Err(malformed(
            path,
            format!(
                "is {}x{} pixels: sides must be 1..={MAX_SIDE}",
                image.width(),
                image.height()
            ),
        ));
    }
    Ok(image.into_rgb8())
}

/// torchvision's `RandomResizedCrop.get_params` with scale (0.08, 1) and ratio (3/4, 4/3):
/// the window `(x, y, w, h)` to crop.
pub fn random_resized_crop_window(width: u32, height: u32, rng: &mut Rng) -> (u32, u32, u32, u32) {
    let (w0, h0) = (f64::from(width), f64::from(height));
    let area = w0 * h0;
    let (log_lo, log_hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * (0.08 + (1.0 - 0.08) * rng.unit());
        let ratio = (log_lo + (log_hi - log_lo) * rng.unit()).exp();
        let w = (target * ratio).sqrt().round();
        let h = (target / ratio).sqrt().round();
        if w > 0.0 && h > 0.0 && w <= w0 && h <= h0 {
            let (w, h) = (w as u32, h as u32);
            let x = rng.below(u64::from(width - w) + 1) as u32;
            let y = rng.below(u64::from(height - h) + 1) as u32;
            return (x, y, w, h);
        }
    }
    // Fallback: the whole image, cut to the nearest allowed aspect ratio, centred.
    let in_ratio = w0 / h0;
    let (w, h) = if in_ratio < 3.0 / 4.0 {
        (width, ((w0 / (3.0 / 4.0)).round() as u32).min(height))
    } else if in_ratio > 4.0 / 3.0 {
        (((h0 * 4.0 / 3.0).round() as u32).min(width), height)
    } else {
        (width, height)
    };
    ((width - w) / 2, (height - h) / 2, w, h)
}

/// The training transform: RandomResizedCrop to `size`, then a flip at even odds.
pub fn train_transform(image: &RgbImage, size: u32, rng: &mut Rng) -> RgbImage {
    let (x, y, w, h) = random_resized_crop_window(image.width(), image.height(), rng);
    let crop = imageops::crop_imm(image, x, y, w, h).to_image();
    let mut out = imageops::resize(&crop, size, size, FilterType::Triangle);
    if rng.below(2) == 1 {
        imageops::flip_horizontal_in_place(&mut out);
    }
    out
}

/// The evaluation transform: the shorter side resized to `size / 0.875` (256 for 224), the
/// centre `size` x `size` cropped.
pub fn eval_transform(image: &RgbImage, size: u32) -> RgbImage {
    let short = (f64::from(size) / 0.875).round() as u32;
    let (w, h) = (image.width(), image.height());
    let (nw, nh) = if w <= h {
        (short, ((u64::from(short) * u64::from(h)) / u64::from(w)).max(1) as u32)
    } else {
        (((u64::from(short) * u64::from(w)) / u64::from(h)).max(1) as u32, short)
    };
    let resized = imageops::resize(image, nw, nh, FilterType::Triangle);
    let x = ((f64::from(nw) - f64::from(size)) / 2.0).round() as u32;
    let y = ((f64::from(nh) - f64::from(size)) / 2.0).round() as u32;
    imageops::crop_imm(&resized, x, y, size, size).to_image()
}

/// Writes an RGB image as `[3, H, W]` bytes.
fn to_chw(image: &RgbImage, out: &mut [u8]) {
    let plane = (image.width() * image.height()) as usize;
    for (i, p) in image.pixels().enumerate() {
        out[i] = p[0];
        out[plane + i] = p[1];
        out[2 * plane + i] = p[2];
    }
}

/// The generator of one image's crop: from the trial seed, the epoch and its place in it.
pub fn crop_rng(seed: u64, epoch: u32, position: usize) -> Rng {
    Rng::new(derive_seed(seed, &format!("crop/{epoch}/{position}")))
}

/// How one image of a batch is made.
#[derive(Debug, Clone, Copy)]
enum Transform {
    /// RandomResizedCrop and flip, from this generator seed.
    Train { seed: u64, epoch: u32, first: usize },
    /// Resize to `size` on the whole image: no augmentation for training.
    Plain,
    /// Resize and centre crop.
    Eval,
}

impl Files {
    /// Decodes `indices` into `[n, 3, size, size]` bytes on the pool.
    fn decode_batch(&self, indices: &[i64], how: Transform) -> Result<Vec<u8>, DataError> {
        let size = self.size;
        let bytes = 3 * (size as usize) * (size as usize);
        let mut out = vec![0u8; indices.len() * bytes];
        let mut slots: Vec<(usize, &mut [u8])> = out.chunks_mut(bytes).enumerate().collect();
        let per_thread = indices.len().div_ceil(self.threads.max(1)).max(1);
        let results: Vec<Result<(), DataError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = slots
                .chunks_mut(per_thread)
                .map(|chunk| {
                    scope.spawn(move || {
                        for (i, slot) in chunk.iter_mut() {
                            let path = &self.paths[indices[*i] as usize];
                            let image = decode(path)?;
                            let image = match how {
                                Transform::Train { seed, epoch, first } => {
                                    train_transform(&image, size, &mut crop_rng(seed, epoch, first + *i))
                                }
                                Transform::Plain => imageops::resize(&image, size, size, FilterType::Triangle),
                                Transform::Eval => eval_transform(&image, size),
                            };
                            to_chw(&image, slot);
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(malformed(Path::new("decoder"), "a decoding thread panicked")))
                })
                .collect()
        });
        results.into_iter().collect::<Result<(), _>>()?;
        Ok(out)
    }

    /// Decodes the images at `indices` as evaluation sees them, `[n, 3, size, size]` `uint8`.
    pub fn decode_eval(&self, indices: &[i64]) -> Result<Tensor, DataError> {
        let size = i64::from(self.size);
        let bytes = self.decode_batch(indices, Transform::Eval)?;
        Ok(Tensor::from_slice(&bytes).view([indices.len() as i64, 3, size, size]))
    }

    /// Decodes an epoch's training batches in the background, a few ahead of the trainer.
    pub fn stream(self: &Arc<Self>, plan: EpochPlan) -> Stream {
        let files = Arc::clone(self);
        let size = i64::from(self.size);
        // Bytes cross the channel; the tensor is made on the trainer's side.
        let (btx, brx): (SyncSender<Decoded>, Receiver<Decoded>) = sync_channel(PREFETCH);
        std::thread::Builder::new()
            .name("decode".into())
            .spawn(move || {
                let EpochPlan {
                    order,
                    batch,
                    from_batch,
                    batches,
                    augment,
                    seed,
                    epoch,
                } = plan;
                for b in from_batch..batches {
                    let start = b * batch;
                    let end = (start + batch).min(order.len());
                    let how = if augment {
                        Transform::Train {
                            seed,
                            epoch,
                            first: start,
                        }
                    } else {
                        Transform::Plain
                    };
                    let result = files.decode_batch(&order[start..end], how).map(|v| (end - start, v));
                    let failed = result.is_err();
                    if btx.send(result).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("the decoding thread starts");
        Stream { raw: brx, size }
    }
}

/// What [`Files::stream`] decodes: batch `b` holds `order[b * batch ..]` (at most `batch`
/// images), for `b` from `from_batch` to `batches - 1`.
#[derive(Debug, Clone)]
pub struct EpochPlan {
    /// Indices into the file list, in the epoch's order.
    pub order: Vec<i64>,
    /// Images per batch.
    pub batch: usize,
    /// The first batch to decode (a resumed epoch starts part-way).
    pub from_batch: usize,
    /// Batches in the epoch.
    pub batches: usize,
    /// RandomResizedCrop and flip (`train.augment = "random-resized-crop"`); whole images
    /// resized otherwise.
    pub augment: bool,
    /// The trial's seed.
    pub seed: u64,
    /// The epoch, from 1.
    pub epoch: u32,
}

/// A decoded batch: its image count and `[n, 3, size, size]` bytes.
type Decoded = Result<(usize, Vec<u8>), DataError>;

/// Training batches decoded ahead; see [`Files::stream`]. Dropping it stops the decoding.
pub struct Stream {
    raw: Receiver<Decoded>,
    size: i64,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Stream {
    /// The next batch, `uint8` `[n, 3, size, size]` on the CPU.
    pub fn next_batch(&mut self) -> Result<Tensor, DataError> {
        let (n, bytes) = self
            .raw
            .recv()
            .map_err(|_| malformed(Path::new("decoder"), "the decoding thread ended before the epoch did"))??;
        Ok(Tensor::from_slice(&bytes).view([n as i64, 3, self.size, self.size]))
    }
}
