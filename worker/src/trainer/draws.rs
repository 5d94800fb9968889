//! An epoch's random draws, made at its start: each batch's crop-flip windows and its mixing,
//! in the order the batches use them (a batch's crops, then its mix), so that the generator
//! ends the epoch where drawing batch by batch would have left it and every number is the
//! same. The crops go to the device in one upload; a batch then needs nothing from the host.

use tch::{Device, Tensor};

use super::mix::{self, Mix};
use crate::data::{CROP_PAD, draw_crop};
use crate::readback;
use crate::rng::Rng;

/// What an epoch's batches are.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Training images.
    pub images: i64,
    /// Images per batch (the last may have fewer).
    pub batch: i64,
    /// Batches run (a last batch of one image is dropped).
    pub batches: i64,
    /// Crop-flip the batches.
    pub crop: bool,
    /// Mixup and CutMix alphas.
    pub mixup: f64,
    /// CutMix alpha.
    pub cutmix: f64,
    /// Image height and width.
    pub size: (i64, i64),
}

/// The draws of one epoch.
#[derive(Debug)]
pub struct EpochDraws {
    /// `[images, 3]` rows of [`draw_crop`] in the epoch's order, on the device (crop-flip only).
    crops: Option<Tensor>,
    /// Each batch's mixing.
    mixes: Vec<Option<Mix>>,
}

impl EpochDraws {
    /// Draws the epoch of `plan` from `rng` and uploads the crops to `device`.
    pub fn new(rng: &mut Rng, plan: Plan, device: Device) -> EpochDraws {
        let mut crops = Vec::new();
        let mut mixes = Vec::with_capacity(plan.batches.max(0) as usize);
        for b in 0..plan.batches {
            if plan.crop {
                let len = plan.batch.min(plan.images - b * plan.batch);
                for _ in 0..len {
                    crops.extend(draw_crop(rng, CROP_PAD));
                }
            }
            mixes.push(mix::draw(plan.mixup, plan.cutmix, plan.size.0, plan.size.1, rng));
        }
        let crops = plan
            .crop
            .then(|| readback::upload(&Tensor::from_slice(&crops).view([-1, 3]), device));
        EpochDraws { crops, mixes }
    }

    /// The uint8 batch `images`, the `start`-th to `start + len`-th of the epoch's order,
    /// augmented by its draws and scaled to `[0, 1]` floats.
    pub fn augment(&self, images: &Tensor, start: i64) -> Tensor {
        let images = match &self.crops {
            Some(crops) => {
                let len = images.size()[0];
                crate::data::crop_flip(images, &crops.narrow(0, start, len), CROP_PAD)
            }
            None => images.shallow_clone(),
        };
        crate::data::to_unit(&images)
    }

    /// Batch `b`'s mixing.
    pub fn mix(&self, b: i64) -> Option<Mix> {
        self.mixes.get(b as usize).copied().flatten()
    }
}
