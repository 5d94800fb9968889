//! `[eval]`: what a trial measures after training (attacks, corruptions, filter statistics).

use serde::{Deserialize, Serialize};

use super::error::FieldError;

/// An L-inf radius on `[0, 1]` inputs, written as a number or as `"n/255"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Eps(pub f64);

impl<'de> Deserialize<'de> for Eps {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        let fraction = |s: &str| -> Option<f64> {
            let (a, b) = s.split_once('/')?;
            let (a, b): (f64, f64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            (b != 0.0).then_some(a / b)
        };
        match Raw::deserialize(d)? {
            Raw::Number(x) => Ok(Eps(x)),
            Raw::Text(s) => fraction(&s)
                .or_else(|| s.trim().parse().ok())
                .map(Eps)
                .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a number or a fraction like \"1/255\""))),
        }
    }
}

/// A common corruption of CIFAR-10-C (Hendrycks & Dietterich), computed on the fly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Corruption {
    /// Additive Gaussian noise.
    GaussianNoise,
    /// Poisson (shot) noise.
    ShotNoise,
    /// Salt-and-pepper noise.
    ImpulseNoise,
    /// Gaussian blur.
    GaussianBlur,
    /// Contrast reduction.
    Contrast,
    /// Brightness increase (in HSV value).
    Brightness,
    /// Box down- and up-sampling.
    Pixelate,
}

impl Corruption {
    /// Every corruption, in CIFAR-10-C's order of groups (noise, blur, digital, weather).
    pub const ALL: [Corruption; 7] = [
        Corruption::GaussianNoise,
        Corruption::ShotNoise,
        Corruption::ImpulseNoise,
        Corruption::GaussianBlur,
        Corruption::Contrast,
        Corruption::Pixelate,
        Corruption::Brightness,
    ];

    /// Name as written in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            Corruption::GaussianNoise => "gaussian-noise",
            Corruption::ShotNoise => "shot-noise",
            Corruption::ImpulseNoise => "impulse-noise",
            Corruption::GaussianBlur => "gaussian-blur",
            Corruption::Contrast => "contrast",
            Corruption::Brightness => "brightness",
            Corruption::Pixelate => "pixelate",
        }
    }
}

/// L-inf PGD (Madry et al.).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgdSpec {
    /// Radii.
    pub eps: Vec<Eps>,
    /// Iterations (10).
    #[serde(default = "default_pgd_steps")]
    pub steps: u32,
    /// Step size; default `2.5 * eps / steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_size: Option<f64>,
    /// Start from a uniformly random point in the eps-ball (true).
    #[serde(default = "default_true")]
    pub random_start: bool,
}

fn default_pgd_steps() -> u32 {
    10
}

fn default_true() -> bool {
    true
}

/// Most radii one attack may list (each is an evaluation of the test set).
pub const MAX_RADII: usize = 64;

/// What a trial measures after training, besides clean accuracy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSpec {
    /// FGSM radii (default `[1/255]`, as the paper); empty for none.
    pub fgsm: Vec<Eps>,
    /// PGD, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgd: Option<PgdSpec>,
    /// Corruptions (default: all seven); empty for none.
    pub corruptions: Vec<Corruption>,
    /// Corruption severities (default 1 to 5).
    pub severities: Vec<u32>,
    /// Evaluate robustness on the first N test images (default: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<u32>,
    /// Filter statistics at initialisation and at the end (true).
    pub filters: bool,
}

impl Default for EvalSpec {
    fn default() -> Self {
        EvalSpec {
            fgsm: vec![Eps(1.0 / 255.0)],
            pgd: None,
            corruptions: Corruption::ALL.to_vec(),
            severities: vec![1, 2, 3, 4, 5],
            images: None,
            filters: true,
        }
    }
}

impl EvalSpec {
    /// Whether every field holds its default (then it is left out of the canonical form).
    pub fn is_default(&self) -> bool {
        *self == EvalSpec::default()
    }

    /// Checks the measurements. Call on canonical specs.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.fgsm.len() > MAX_RADII {
            return Err(FieldError::new(
                "eval.fgsm",
                format!("at most {MAX_RADII} radii, got {}", self.fgsm.len()),
            ));
        }
        let mut radii: Vec<(&str, f64)> = self.fgsm.iter().map(|e| ("eval.fgsm", e.0)).collect();
        if let Some(p) = &self.pgd {
            if p.eps.len() > MAX_RADII {
                return Err(FieldError::new(
                    "eval.pgd.eps",
                    format!("at most {MAX_RADII} radii, got {}", p.eps.len()),
                ));
            }
            radii.extend(p.eps.iter().map(|e| ("eval.pgd.eps", e.0)));
            if p.eps.is_empty() {
                return Err(FieldError::new(
                    "eval.pgd.eps",
                    "give at least one radius, e.g. [\"8/255\"]",
                ));
            }
            if p.steps == 0 {
                return Err(FieldError::new("eval.pgd.steps", "must be at least 1"));
            }
            if let Some(a) = p.step_size
                && !(a.is_finite() && a > 0.0)
            {
                return Err(FieldError::new(
                    "eval.pgd.step_size",
                    format!("must be a number > 0, got {a}"),
                ));
            }
        }
        for (field, eps) in radii {
            if !(0.0..=1.0).contains(&eps) {
                return Err(FieldError::new(
                    field,
                    format!("radii are on [0, 1] inputs: 0 to 1, got {eps}"),
                ));
            }
        }
        for (i, s) in self.severities.iter().enumerate() {
            if !(1..=5).contains(s) || self.severities[..i].contains(s) {
                return Err(FieldError::new("eval.severities", "distinct severities from 1 to 5"));
            }
        }
        for (i, c) in self.corruptions.iter().enumerate() {
            if self.corruptions[..i].contains(c) {
                return Err(FieldError::new(
                    "eval.corruptions",
                    format!("{} is listed twice", c.as_str()),
                ));
            }
        }
        if self.images == Some(0) {
            return Err(FieldError::new(
                "eval.images",
                "must be at least 1 (leave it out for the whole test set)",
            ));
        }
        Ok(())
    }
}
