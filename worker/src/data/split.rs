//! One split of a dataset: `uint8` images and their labels, on one device.

use std::sync::Arc;

use tch::{Device, Tensor};

use super::folder::Files;

/// Images and labels of one split.
#[derive(Debug)]
pub struct Split {
    /// `uint8` `[N, C, H, W]`; `[0, C, H, W]` for a split streamed from [`Split::files`].
    pub images: Tensor,
    /// `int64` `[N]`.
    pub labels: Tensor,
    /// For a split decoded as it trains (imagefolder's training split): its image files, the
    /// `i`-th labelled by `labels[i]`. Its images are read through
    /// [`Files::stream`](super::folder::Files::stream), never from `images`.
    pub files: Option<Arc<Files>>,
}

impl Split {
    /// A split held in memory.
    pub fn new(images: Tensor, labels: Tensor) -> Split {
        Split {
            images,
            labels,
            files: None,
        }
    }

    /// Number of images.
    pub fn len(&self) -> i64 {
        self.labels.size()[0]
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn shallow_clone(&self) -> Split {
        Split {
            images: self.images.shallow_clone(),
            labels: self.labels.shallow_clone(),
            files: self.files.clone(),
        }
    }

    pub(super) fn to_device(&self, device: Device) -> Split {
        Split {
            images: self.images.to_device(device),
            labels: self.labels.to_device(device),
            files: self.files.clone(),
        }
    }

    /// The first `n` images (all when `None` or more than there are). A streamed split keeps
    /// its whole file list: only the first `n` entries are ever read.
    pub(super) fn first(&self, n: Option<u32>) -> Split {
        match n {
            Some(n) if i64::from(n) < self.len() => Split {
                images: if self.files.is_some() {
                    self.images.shallow_clone()
                } else {
                    self.images.narrow(0, 0, i64::from(n))
                },
                labels: self.labels.narrow(0, 0, i64::from(n)),
                files: self.files.clone(),
            },
            _ => self.shallow_clone(),
        }
    }
}
