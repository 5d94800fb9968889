//! One split of a dataset: `uint8` images and their labels, on one device.

use tch::{Device, Tensor};

/// Images and labels of one split.
#[derive(Debug)]
pub struct Split {
    /// `uint8` `[N, C, H, W]`.
    pub images: Tensor,
    /// `int64` `[N]`.
    pub labels: Tensor,
}

impl Split {
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
        }
    }

    pub(super) fn to_device(&self, device: Device) -> Split {
        Split {
            images: self.images.to_device(device),
            labels: self.labels.to_device(device),
        }
    }

    pub(super) fn first(&self, n: Option<u32>) -> Split {
        match n {
            Some(n) if i64::from(n) < self.len() => Split {
                images: self.images.narrow(0, 0, i64::from(n)),
                labels: self.labels.narrow(0, 0, i64::from(n)),
            },
            _ => self.shallow_clone(),
        }
    }
}
