//! Datasets: loading (once per worker), per-channel statistics and the batch pipeline.
//!
//! Images stay `uint8` `[N, C, H, W]` on the training device; a batch is gathered, augmented
//! (random crop and flip, on the device, for the whole batch at once) and scaled to `[0, 1]`
//! there. Normalisation happens inside the model.

pub mod error;
pub mod files;
pub mod folder;
pub mod npz;
pub mod split;
pub mod synthetic;

pub use error::DataError;
pub use split::Split;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use convsweep_proto::spec::{DatasetName, DatasetSpec, synthetic_defaults as sd};
use tch::{Device, Kind, Tensor};

use crate::rng::Rng;

/// A dataset ready for training.
#[derive(Debug)]
pub struct Dataset {
    /// Training split.
    pub train: Split,
    /// Test split.
    pub test: Split,
    /// Validation split held out of the training images (`dataset.val_fraction`), if any.
    pub val: Option<Split>,
    /// Classes.
    pub classes: i64,
    /// Per-channel mean of training pixels in `[0, 1]`.
    pub mean: Vec<f64>,
    /// Per-channel standard deviation of training pixels in `[0, 1]`.
    pub std: Vec<f64>,
}

impl Dataset {
    fn shallow_clone(&self) -> Dataset {
        Dataset {
            train: self.train.shallow_clone(),
            test: self.test.shallow_clone(),
            val: self.val.as_ref().map(Split::shallow_clone),
            classes: self.classes,
            mean: self.mean.clone(),
            std: self.std.clone(),
        }
    }

    /// Channels and side of the images.
    pub fn image_shape(&self) -> (i64, i64) {
        let s = self.train.images.size();
        (s[1], s[3])
    }
}

/// Per-channel mean and standard deviation of `uint8` images scaled to `[0, 1]`.
pub fn channel_stats(images: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let x = images.to_kind(Kind::Double) / 255.0;
    let mean = x.mean_dim([0i64, 2, 3].as_slice(), false, Kind::Double);
    let std = x.std_dim([0i64, 2, 3].as_slice(), false, false);
    (
        Vec::<f64>::try_from(mean).expect("mean is a vector"),
        Vec::<f64>::try_from(std.clamp_min(1e-6)).expect("std is a vector"),
    )
}

fn load_uncached(spec: &DatasetSpec, decode_threads: usize) -> Result<(Split, Split, i64), DataError> {
    let root = || -> Result<&std::path::Path, DataError> {
        spec.root
            .as_deref()
            .map(std::path::Path::new)
            .ok_or(DataError::Unsupported(spec.name))
    };
    match spec.name {
        DatasetName::Synthetic => {
            let noise = spec.noise.unwrap_or(sd::NOISE);
            let seed = spec.data_seed.unwrap_or(sd::DATA_SEED);
            let train = synthetic::generate(spec.train_size.unwrap_or(sd::TRAIN_SIZE) as usize, noise, seed, "train");
            let test = synthetic::generate(spec.test_size.unwrap_or(sd::TEST_SIZE) as usize, noise, seed, "test");
            Ok((train, test, synthetic::CLASSES))
        }
        DatasetName::Cifar10 => files::cifar10(root()?).map(|(a, b)| (a, b, 10)),
        DatasetName::Cifar100 => files::cifar100(root()?).map(|(a, b)| (a, b, 100)),
        DatasetName::FashionMnist => files::fashion_mnist(root()?).map(|(a, b)| (a, b, 10)),
        DatasetName::Svhn => files::svhn(root()?).map(|(a, b)| (a, b, 10)),
        DatasetName::Tensor => files::tensor_file(root()?),
        DatasetName::Imagefolder => imagefolder(spec, root()?, decode_threads),
    }
}

/// Loads an image folder (see [`folder`]): the training split as files, the validation split
/// decoded.
/// `test_size` cuts the validation split before it is decoded.
fn imagefolder(spec: &DatasetSpec, root: &Path, threads: usize) -> Result<(Split, Split, i64), DataError> {
    let listing = folder::list(spec, root, threads)?;
    let classes = listing.classes.len() as i64;
    let size = i64::from(listing.train.size);
    let n_test = spec
        .test_size
        .map_or(listing.val.paths.len(), |n| (n as usize).min(listing.val.paths.len()));
    let started = std::time::Instant::now();
    let indices: Vec<i64> = (0..n_test as i64).collect();
    let mut parts = Vec::new();
    for chunk in indices.chunks(1024) {
        parts.push(listing.val.decode_eval(chunk)?);
    }
    let test_images = if parts.is_empty() {
        Tensor::zeros([0, 3, size, size], (tch::Kind::Uint8, tch::Device::Cpu))
    } else {
        Tensor::cat(&parts, 0)
    };
    tracing::info!(
        images = n_test,
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        threads = listing.val.threads,
        "imagefolder: validation images decoded"
    );
    let test = Split::new(test_images, Tensor::from_slice(&listing.val_labels[..n_test]));
    let mut train = Split::new(
        Tensor::zeros([0, 3, size, size], (tch::Kind::Uint8, tch::Device::Cpu)),
        Tensor::from_slice(&listing.train_labels),
    );
    train.files = Some(Arc::new(listing.train));
    Ok((train, test, classes))
}

/// Datasets a worker has loaded, by spec and device. Loading (parsing files, generating images,
/// uploading to the GPU) happens once; trials get cheap handles to the same storage.
#[derive(Debug, Default)]
pub struct DataCache {
    loaded: Mutex<HashMap<(String, String), Dataset>>,
    /// Threads that decode image-folder files (`None`: every core).
    decode_threads: Option<usize>,
}

impl DataCache {
    /// An empty cache whose image folders decode on `decode_threads` threads (`None`: every
    /// core this process may use).
    pub fn new(decode_threads: Option<usize>) -> DataCache {
        DataCache {
            loaded: Mutex::default(),
            decode_threads,
        }
    }

    /// The dataset of `spec` on `device`, loading it on first use.
    pub fn get(&self, spec: &DatasetSpec, device: Device) -> Result<Dataset, DataError> {
        // Sizes are applied after the cache: trials that differ only in subset share the load.
        let mut key_spec = spec.clone();
        key_spec.train_size = None;
        key_spec.test_size = None;
        if spec.name == DatasetName::Synthetic {
            key_spec.train_size = spec.train_size;
            key_spec.test_size = spec.test_size;
        }
        if spec.name == DatasetName::Imagefolder {
            // Its test split is decoded at load, as far as `test_size` asks.
            key_spec.test_size = spec.test_size;
        }
        let key = (
            serde_json::to_string(&key_spec).unwrap_or_default(),
            format!("{device:?}"),
        );
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if !loaded.contains_key(&key) {
            let (train, test, classes) = load_uncached(spec, folder::decode_threads(self.decode_threads))?;
            let (mean, std) = if train.files.is_some() {
                (folder::IMAGENET_MEAN.to_vec(), folder::IMAGENET_STD.to_vec())
            } else {
                channel_stats(&train.images)
            };
            tracing::info!(dataset = ?spec.name, train = train.len(), test = test.len(), device = ?device, "dataset loaded");
            loaded.insert(
                key.clone(),
                Dataset {
                    train: train.to_device(device),
                    test: test.to_device(device),
                    val: None,
                    classes,
                    mean,
                    std,
                },
            );
        }
        let full = &loaded[&key];
        let mut ds = full.shallow_clone();
        ds.train = full.train.first(spec.train_size);
        ds.test = full.test.first(spec.test_size);
        if let Some(fraction) = spec.val_fraction {
            let (train, val) = hold_out(&ds.train, fraction)?;
            ds.train = train;
            ds.val = Some(val);
        }
        Ok(ds)
    }
}

/// Seed of the permutation that picks the validation images: fixed, so that every trial of
/// every seed holds out the same images.
const VAL_SPLIT_SEED: u64 = 0x7661_6c5f_7370_6c69;

/// Splits `train` into what is trained on and a validation split of `fraction` of its images
/// (rounded, at least one), chosen by a fixed permutation; both keep the original order.
pub fn hold_out(train: &Split, fraction: f64) -> Result<(Split, Split), DataError> {
    let n = train.len();
    let n_val = ((n as f64 * fraction).round() as i64).max(1);
    if train.files.is_some() || n_val >= n {
        return Err(DataError::Split {
            field: "dataset.val_fraction",
            problem: format!(
                "{fraction} of {n} training images leaves {} to train on; hold out less or train on more",
                n - n_val.min(n)
            ),
        });
    }
    let mut order = Rng::new(VAL_SPLIT_SEED).permutation(n as usize);
    let (val, rest) = order.split_at_mut(n_val as usize);
    val.sort_unstable();
    rest.sort_unstable();
    let device = train.labels.device();
    let pick = |idx: &[i64]| {
        let idx = Tensor::from_slice(idx).to_device(device);
        Split::new(train.images.index_select(0, &idx), train.labels.index_select(0, &idx))
    };
    Ok((pick(rest), pick(val)))
}

/// Images per batch of a pass over `images` (`[N, C, H, W]`) whose batch is `base` for CIFAR's
/// 3x32x32: scaled down in proportion to the image's size, so that a pass at 224 px holds about
/// as much memory as one at 32 px (at least 16 images). The same as `base` at 32 px.
pub fn batch_for(images: &Tensor, base: i64) -> i64 {
    let per_image: i64 = images.size().iter().skip(1).product();
    (base * 3 * 32 * 32 / per_image.max(1)).clamp(16.min(base), base)
}

/// Zero padding of the crop-flip augmentation, pixels on each side.
pub const CROP_PAD: i64 = 4;

/// One image's crop-flip draw, `[dy, dx, flip]`: the window's offsets into the image padded by
/// `pad` and 1 to mirror it. Three draws of `rng`, in that order.
pub fn draw_crop(rng: &mut Rng, pad: i64) -> [i64; 3] {
    let span = 2 * pad as u64 + 1;
    let dy = rng.below(span) as i64;
    let dx = rng.below(span) as i64;
    [dy, dx, rng.below(2) as i64]
}

/// `[0, 1]` floats from `uint8` images, on their device.
pub fn to_unit(images: &Tensor) -> Tensor {
    images.to_kind(Kind::Float) / 255.0
}

/// Crop-flip of a `uint8` batch `[B, C, H, W]` by the draws `crops` (`[B, 3]` int64, rows of
/// [`draw_crop`], on the images' device): zero-pad by `pad`, take each image's `H x W` window
/// and mirror those marked. One gather for the whole batch, its indices built on the device
/// from the draws, so a batch needs nothing from the host.
pub fn crop_flip(images: &Tensor, crops: &Tensor, pad: i64) -> Tensor {
    let [b, c, h, w] = images.size()[..] else {
        panic!("images must be [N, C, H, W], got {:?}", images.size());
    };
    let device = images.device();
    let padded = images.constant_pad_nd([pad, pad, pad, pad]);
    let (dy, dx, flip) = (crops.select(1, 0), crops.select(1, 1), crops.select(1, 2));
    let i = Tensor::arange(h, (Kind::Int64, device));
    let j = Tensor::arange(w, (Kind::Int64, device));
    // Row i of the window is row dy + i of the padded image; column j is dx + j, or
    // dx + (w - 1 - j) when mirrored.
    let rows = (dy.view([b, 1]) + i.view([1, h]))
        .view([b, 1, h, 1])
        .expand([b, c, h, w + 2 * pad], false);
    let mirrored = (j.view([1, w]) * -2 + (w - 1)) * flip.view([b, 1]);
    let cols = (dx.view([b, 1]) + j.view([1, w]) + mirrored)
        .view([b, 1, 1, w])
        .expand([b, c, h, w], false);
    padded.gather(2, &rows, false).gather(3, &cols, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_flip_matches_a_per_image_reference() {
        let images = Tensor::arange(2 * 3 * 8 * 8, (Kind::Int64, Device::Cpu))
            .remainder(251)
            .to_kind(Kind::Uint8)
            .view([2, 3, 8, 8]);
        let mut rng = Rng::new(5);
        let draws: Vec<i64> = (0..2).flat_map(|_| draw_crop(&mut rng, 2)).collect();
        let out = crop_flip(&images, &Tensor::from_slice(&draws).view([2, 3]), 2);
        // Replay the same draws and crop each image by hand.
        let mut replay = Rng::new(5);
        let padded = images.constant_pad_nd([2, 2, 2, 2]);
        for i in 0..2 {
            let dy = replay.below(5) as i64;
            let dx = replay.below(5) as i64;
            let flip = replay.below(2) == 1;
            let mut want = padded.get(i).narrow(1, dy, 8).narrow(2, dx, 8);
            if flip {
                want = want.flip([2]);
            }
            assert!(out.get(i).equal(&want), "image {i}");
        }
    }

    #[test]
    fn pass_batches_shrink_with_the_image_size_only() {
        let images = |c: i64, side: i64| Tensor::zeros([0, c, side, side], (Kind::Uint8, Device::Cpu));
        assert_eq!(batch_for(&images(3, 32), 1000), 1000, "CIFAR-sized: unchanged");
        assert_eq!(
            batch_for(&images(1, 32), 250),
            250,
            "smaller images: not above the base"
        );
        assert_eq!(batch_for(&images(3, 224), 1000), 20);
        assert_eq!(batch_for(&images(3, 224), 250), 16, "at least 16");
        assert_eq!(batch_for(&images(3, 512), 8), 8);
    }

    /// 100 training and 30 test images of the synthetic set, holding out `val_fraction`.
    fn synthetic(val_fraction: Option<f64>) -> DatasetSpec {
        DatasetSpec {
            name: DatasetName::Synthetic,
            root: None,
            train_size: Some(100),
            test_size: Some(30),
            noise: None,
            data_seed: None,
            image_size: None,
            classes: None,
            val_labels: None,
            val_fraction,
        }
    }

    #[test]
    fn stats_and_subsets() {
        let cache = DataCache::default();
        let spec = synthetic(None);
        let ds = cache.get(&spec, Device::Cpu).unwrap();
        assert_eq!(ds.train.len(), 100);
        assert_eq!(ds.test.len(), 30);
        assert_eq!(ds.mean.len(), 3);
        for (m, s) in ds.mean.iter().zip(&ds.std) {
            assert!((0.2..0.8).contains(m), "{m}");
            assert!((0.02..0.5).contains(s), "{s}");
        }
        let again = cache.get(&spec, Device::Cpu).unwrap();
        assert!(again.train.images.equal(&ds.train.images));
        assert!(ds.val.is_none());
    }

    #[test]
    fn a_validation_split_is_held_out_the_same_way_for_every_trial() {
        let cache = DataCache::default();
        let mut spec = synthetic(Some(0.2));
        let ds = cache.get(&spec, Device::Cpu).unwrap();
        let val = ds.val.as_ref().expect("a validation split");
        assert_eq!((ds.train.len(), val.len(), ds.test.len()), (80, 20, 30));
        // Disjoint and together the whole training set: every image of the full set is in
        // exactly one of them.
        spec.val_fraction = None;
        let full = cache.get(&spec, Device::Cpu).unwrap();
        let flat = |s: &Split| s.images.view([s.len(), -1]);
        let (all, train, val) = (flat(&full.train), flat(&ds.train), flat(val));
        for i in 0..100 {
            let row = all.get(i);
            let in_train = (0..80).filter(|&j| train.get(j).equal(&row)).count();
            let in_val = (0..20).filter(|&j| val.get(j).equal(&row)).count();
            assert_eq!(in_train + in_val, 1, "image {i}");
        }
        spec.val_fraction = Some(0.2);
        let again = cache.get(&spec, Device::Cpu).unwrap();
        assert!(again.val.unwrap().images.equal(&ds.val.as_ref().unwrap().images));
        spec.val_fraction = Some(0.5);
        spec.train_size = Some(1);
        let err = cache.get(&spec, Device::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("dataset.val_fraction") && err.contains("leaves 0"),
            "{err}"
        );
    }
}
