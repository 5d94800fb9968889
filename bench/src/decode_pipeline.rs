//! What `convsweep-bench decode` measures: images per second the imagefolder pipeline decodes
//! and crops, on a folder of JPEGs written for the purpose (ImageNet-like: 500x375, quality 90,
//! textured content) or on a real one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};

use convsweep_worker::data::DataError;
use convsweep_worker::data::folder::{EpochPlan, Files};
use convsweep_worker::rng::Rng;

/// One measurement: a thread count and what it reached.
#[derive(Debug, Clone)]
pub struct DecodeResult {
    /// Decoding threads.
    pub threads: usize,
    /// Training transform (decode, RandomResizedCrop, flip), images per second.
    pub train_per_s: f64,
    /// Evaluation transform (decode, resize, centre crop), images per second.
    pub eval_per_s: f64,
}

/// A textured photograph-like image: smooth colour fields, edges and grain, so that it
/// compresses like a photo (about 100 KB at 500x375, quality 90) rather than like a flat fill.
pub fn photo_like(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut rng = Rng::new(seed);
    let f: Vec<f64> = (0..9).map(|_| 0.005 + 0.05 * rng.unit()).collect();
    let phase: Vec<f64> = (0..9).map(|_| std::f64::consts::TAU * rng.unit()).collect();
    let mut grain = Rng::new(seed ^ 0x5eed);
    RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (f64::from(x), f64::from(y));
        let mut px = [0u8; 3];
        for (c, v) in px.iter_mut().enumerate() {
            let i = 3 * c;
            let s = (x * f[i] + phase[i]).sin()
                + (y * f[i + 1] + phase[i + 1]).cos()
                + ((x + y) * f[i + 2] + phase[i + 2]).sin();
            let edge = if (x * f[i] * 3.0 + y * f[i + 1] * 2.0).sin() > 0.6 {
                40.0
            } else {
                0.0
            };
            let noise = 24.0 * (grain.unit() - 0.5);
            *v = (128.0 + 30.0 * s + edge + noise).clamp(0.0, 255.0) as u8;
        }
        Rgb(px)
    })
}

/// Writes `n` photo-like JPEGs over `classes` class folders of `root/train`, and a tenth as
/// many (at least one per class) under `root/val`, as the loader reads them. Returns the
/// training files' paths.
pub fn write_sample(root: &Path, n: usize, classes: usize) -> std::io::Result<Vec<PathBuf>> {
    let classes = classes.max(1);
    let mut paths = Vec::with_capacity(n);
    let val = (n / 10).max(classes);
    for i in 0..n + val {
        let split = if i < n { "train" } else { "val" };
        let dir = root.join(split).join(format!("n{:08}", i % classes));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("img_{i:06}.JPEG"));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&photo_like(500, 375, i as u64))
            .map_err(std::io::Error::other)?;
        if i < n {
            paths.push(path);
        }
    }
    Ok(paths)
}

/// Decodes every file of `paths` once per transform with each thread count, in batches of
/// `batch`, through the same code the trainer and the loader use.
pub fn measure(paths: &[PathBuf], size: u32, batch: usize, threads: &[usize]) -> Result<Vec<DecodeResult>, DataError> {
    let mut out = Vec::new();
    for &t in threads {
        let files = Arc::new(Files {
            paths: paths.to_vec(),
            size,
            threads: t,
        });
        let order: Vec<i64> = (0..paths.len() as i64).collect();
        let batches = paths.len().div_ceil(batch);
        let started = Instant::now();
        let mut stream = files.stream(EpochPlan {
            order: order.clone(),
            batch,
            from_batch: 0,
            batches,
            augment: true,
            seed: 1,
            epoch: 1,
        });
        for _ in 0..batches {
            let _batch = stream.next_batch()?;
        }
        let train_per_s = paths.len() as f64 / started.elapsed().as_secs_f64();
        let started = Instant::now();
        for chunk in order.chunks(batch) {
            let _images = files.decode_eval(chunk)?;
        }
        let eval_per_s = paths.len() as f64 / started.elapsed().as_secs_f64();
        out.push(DecodeResult {
            threads: t,
            train_per_s,
            eval_per_s,
        });
    }
    Ok(out)
}
