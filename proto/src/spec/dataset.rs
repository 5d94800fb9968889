//! `[dataset]`: which dataset, where its files are, how much of it, the synthetic set's knobs.

use serde::{Deserialize, Serialize};

use super::error::FieldError;

/// The dataset a trial trains and tests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    /// Deterministic CIFAR-shaped oriented textures (needs no files).
    Synthetic,
    /// CIFAR-10, binary version.
    Cifar10,
    /// CIFAR-100, binary version.
    Cifar100,
    /// Fashion-MNIST, IDX files (upscaled to 32x32).
    FashionMnist,
    /// SVHN cropped digits.
    Svhn,
    /// A plain tensor file (see the worker's data docs).
    Tensor,
    /// An ImageNet-style folder of JPEG or PNG files, one sub-folder per class, decoded as it
    /// trains (see the worker's data docs).
    Imagefolder,
}

impl DatasetName {
    /// Every accepted spelling, for error messages.
    pub const ALL: &'static str = "synthetic, cifar10, cifar100, fashion-mnist, svhn, tensor, imagefolder";

    /// Channels, side and classes of the images as the models see them (a tensor file declares
    /// its own).
    pub fn input_shape(self) -> Option<(u32, u32, u32)> {
        match self {
            DatasetName::Synthetic | DatasetName::Cifar10 | DatasetName::Svhn => Some((3, 32, 10)),
            DatasetName::Cifar100 => Some((3, 32, 100)),
            DatasetName::FashionMnist => Some((1, 32, 10)),
            DatasetName::Tensor | DatasetName::Imagefolder => None,
        }
    }

    /// Whether the dataset is read from files under `dataset.root`.
    pub fn needs_root(self) -> bool {
        !matches!(self, DatasetName::Synthetic)
    }
}

/// Where a trial's data comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// Which dataset.
    pub name: DatasetName,
    /// Folder holding the dataset's files (required for every dataset but `synthetic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// Train on the first N training images only (all when absent; synthetic: how many to make).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_size: Option<u32>,
    /// Test on the first N test images only (all when absent; synthetic: how many to make).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_size: Option<u32>,
    /// Synthetic only: standard deviation of the pixel noise, in units of the texture amplitude.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<f64>,
    /// Synthetic only: seed of the generated images (shared by every trial, unlike `seed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_seed: Option<u64>,
    /// Imagefolder only: side of the square crops the models see (default 224; evaluation
    /// resizes the shorter side to `image_size / 0.875`, 256 for 224, and crops the centre).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<u32>,
    /// Imagefolder only: train on some classes (ImageNet-100 style): a list of class folder
    /// names, or a number N for the first N in sorted order. All when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<ClassSubset>,
    /// Imagefolder only: a file of `<image file name> <class folder name>` lines (also the
    /// Kaggle `LOC_val_solution.csv`) labelling a flat `val/` folder, relative to `root` and
    /// inside it (no absolute path, no `..`). Without it `val/` has a sub-folder per class, like
    /// `train/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_labels: Option<String>,
    /// Hold out this share of the training images (after `train_size`) as a validation split:
    /// the same images for every trial (drawn with a fixed seed), never trained on, evaluated
    /// after every epoch. Stopping rules decide on it; the test set stays untouched by any
    /// decision. Absent: no validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_fraction: Option<f64>,
}

/// Most classes a trial may name (ImageNet-21k has 21,841).
pub const MAX_CLASSES: usize = 100_000;

/// Which classes of an image folder a trial uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClassSubset {
    /// The first N class folders in sorted order.
    First(u32),
    /// These class folders (index = position in sorted order).
    Names(Vec<String>),
}

/// Crop side of imagefolder images when `dataset.image_size` is absent.
pub const DEFAULT_IMAGE_SIZE: u32 = 224;

/// Synthetic set defaults, applied by [`TrialSpec::canonicalize`].
pub mod synthetic_defaults {
    /// Training images.
    pub const TRAIN_SIZE: u32 = 5000;
    /// Test images.
    pub const TEST_SIZE: u32 = 1000;
    /// Noise standard deviation relative to the texture amplitude.
    pub const NOISE: f64 = 0.6;
    /// Seed of the images.
    pub const DATA_SEED: u64 = 0;
}

impl DatasetSpec {
    /// Resolves the synthetic set's defaults. Idempotent.
    pub fn canonicalize(&mut self) {
        let d = self;
        if d.name == DatasetName::Synthetic {
            use synthetic_defaults as sd;
            d.train_size.get_or_insert(sd::TRAIN_SIZE);
            d.test_size.get_or_insert(sd::TEST_SIZE);
            d.noise.get_or_insert(sd::NOISE);
            d.data_seed.get_or_insert(sd::DATA_SEED);
        }
        if d.name == DatasetName::Imagefolder {
            d.image_size.get_or_insert(DEFAULT_IMAGE_SIZE);
            if let Some(ClassSubset::Names(names)) = &mut d.classes {
                names.sort();
            }
        }
    }
}

/// Most images a split of a dataset on disk may be cut to (ImageNet-21k has 14 million).
pub const MAX_DATASET_IMAGES: u32 = 100_000_000;
/// Largest share of the training set `dataset.val_fraction` may hold out.
pub const MAX_VAL_FRACTION: f64 = 0.5;
/// Most images of a synthetic split: it is generated in memory.
pub const MAX_SYNTHETIC_IMAGES: u32 = 1_000_000;

impl DatasetSpec {
    /// Checks the data fields. Call on canonical specs.
    pub fn validate(&self) -> Result<(), FieldError> {
        let d = self;
        if d.name.needs_root() && d.root.as_deref().is_none_or(str::is_empty) {
            return Err(FieldError::new(
                "dataset.root",
                format!(
                    "required for dataset {:?}: the folder holding its files (nothing is downloaded)",
                    d.name
                ),
            ));
        }
        if d.name != DatasetName::Synthetic {
            if d.noise.is_some() {
                return Err(FieldError::new("dataset.noise", "only the synthetic dataset has noise"));
            }
            if d.data_seed.is_some() {
                return Err(FieldError::new(
                    "dataset.data_seed",
                    "only the synthetic dataset is generated from a seed",
                ));
            }
        }
        if d.name == DatasetName::Imagefolder {
            d.validate_imagefolder()?;
        } else {
            for (field, set) in [
                ("dataset.image_size", d.image_size.is_some()),
                ("dataset.classes", d.classes.is_some()),
                ("dataset.val_labels", d.val_labels.is_some()),
            ] {
                if set {
                    return Err(FieldError::new(
                        field,
                        format!(
                            "only the imagefolder dataset has it (dataset {:?} has a fixed layout)",
                            d.name
                        ),
                    ));
                }
            }
        }
        let (limit, what) = if d.name == DatasetName::Synthetic {
            (
                MAX_SYNTHETIC_IMAGES,
                "images for the synthetic set (generated in memory, 12 KiB each)",
            )
        } else {
            (MAX_DATASET_IMAGES, "images per split")
        };
        for (field, v) in [("dataset.train_size", d.train_size), ("dataset.test_size", d.test_size)] {
            match v {
                Some(0) => return Err(FieldError::new(field, "must be at least 1")),
                Some(n) if n > limit => {
                    return Err(FieldError::new(
                        field,
                        format!("{n} is over the limit of {limit} {what}"),
                    ));
                }
                _ => {}
            }
        }
        if let Some(f) = d.val_fraction {
            if !(f.is_finite() && f > 0.0 && f <= MAX_VAL_FRACTION) {
                return Err(FieldError::new(
                    "dataset.val_fraction",
                    format!("the share of training images held out, in (0, {MAX_VAL_FRACTION}], got {f}"),
                ));
            }
            if d.name == DatasetName::Imagefolder {
                return Err(FieldError::new(
                    "dataset.val_fraction",
                    "imagefolder streams its training files and has no held-out split yet; use a dataset held in memory",
                ));
            }
        }
        if let Some(noise) = d.noise
            && !(noise.is_finite() && noise >= 0.0)
        {
            return Err(FieldError::new(
                "dataset.noise",
                format!("must be a finite number >= 0, got {noise}"),
            ));
        }
        Ok(())
    }
}

impl DatasetSpec {
    fn validate_imagefolder(&self) -> Result<(), FieldError> {
        if let Some(size) = self.image_size
            && !(16..=1024).contains(&size)
        {
            return Err(FieldError::new(
                "dataset.image_size",
                format!("must be in 16..=1024 pixels (ImageNet: 224), got {size}"),
            ));
        }
        match &self.classes {
            Some(ClassSubset::First(0)) => {
                return Err(FieldError::new(
                    "dataset.classes",
                    "must be at least 1 (absent for all)",
                ));
            }
            Some(ClassSubset::Names(names)) => {
                if names.len() > MAX_CLASSES {
                    return Err(FieldError::new(
                        "dataset.classes",
                        format!("at most {MAX_CLASSES} class folder names, got {}", names.len()),
                    ));
                }
                if names.is_empty() {
                    return Err(FieldError::new(
                        "dataset.classes",
                        "the list is empty: name at least one class folder (absent for all)",
                    ));
                }
                if let Some(bad) = names
                    .iter()
                    .find(|n| n.is_empty() || n.contains('/') || n.contains('\\') || *n == "." || *n == "..")
                {
                    return Err(FieldError::new(
                        "dataset.classes",
                        format!("{bad:?} is not a class folder name (no path separators, not empty)"),
                    ));
                }
                if let Some(dup) = names.windows(2).find(|w| w[0] == w[1]) {
                    return Err(FieldError::new(
                        "dataset.classes",
                        format!("{:?} is listed twice", dup[0]),
                    ));
                }
            }
            _ => {}
        }
        if let Some(file) = &self.val_labels {
            inside_root("dataset.val_labels", file)?;
        }
        Ok(())
    }
}

/// Refuses a path that could leave the dataset's root: empty, absolute, or with a `..` (or a
/// NUL) in it. A spec's author chooses what a worker reads only under the root it names.
pub fn inside_root(field: &str, path: &str) -> Result<(), FieldError> {
    use std::path::Component;
    let problem = if path.is_empty() {
        Some("is empty: give the file's path relative to dataset.root")
    } else if path.contains('\0') {
        Some("holds a NUL character")
    } else if path.starts_with('/') || path.starts_with('\\') {
        Some("must be relative to dataset.root, not absolute")
    } else if std::path::Path::new(path)
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::RootDir | Component::Prefix(_)))
        || path.split(['/', '\\']).any(|part| part == "..")
    {
        Some("must stay inside dataset.root: no `..`")
    } else {
        None
    };
    match problem {
        Some(p) => Err(FieldError::new(field, format!("{} {p}", crate::text::excerpt(path)))),
        None => Ok(()),
    }
}
