//! `convsweep-bench decode`: the imagefolder pipeline's images per second, on JPEGs it writes
//! ([`crate::decode_pipeline::write_sample`]) or on a real folder.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use convsweep_worker::data::folder;

use crate::decode_pipeline;

/// Flags of `convsweep-bench decode`.
#[derive(Debug, Clone, clap::Args)]
pub struct DecodeArgs {
    /// An image folder to read instead (its `train/<class>/` files).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Images to decode per measurement.
    #[arg(long, default_value_t = 512)]
    pub images: usize,
    /// Crop side.
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    /// Images per batch.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Thread counts to measure (repeatable; default: 1 and every core).
    #[arg(long)]
    pub threads: Vec<usize>,
    /// Write the sample folder (train/ and val/, 10 classes) here and keep it, e.g. for a
    /// trial to read.
    #[arg(long, conflicts_with = "root")]
    pub keep: Option<PathBuf>,
}

/// `convsweep-bench decode`.
pub fn bench_decode(args: DecodeArgs) -> Result<ExitCode> {
    let DecodeArgs {
        root,
        images,
        size,
        batch,
        threads,
        keep,
    } = args;
    if images == 0 || batch == 0 {
        bail!("--images and --batch must be at least 1");
    }
    if !(16..=1024).contains(&size) {
        bail!("--size {size}: give a crop side in 16..=1024 pixels (as dataset.image_size)");
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = if threads.is_empty() {
        let mut t = vec![1, cores];
        t.dedup();
        t
    } else {
        threads
    };
    if let Some(&bad) = threads.iter().find(|&&t| t == 0 || t > 1024) {
        bail!("--threads {bad}: give thread counts in 1..=1024");
    }
    let _sample;
    let paths = match &root {
        Some(root) => {
            let mut spec = convsweep_proto::spec::DatasetSpec {
                name: convsweep_proto::spec::DatasetName::Imagefolder,
                root: Some(root.display().to_string()),
                train_size: None,
                test_size: None,
                noise: None,
                data_seed: None,
                image_size: Some(size),
                classes: None,
                val_labels: None,
                val_fraction: None,
            };
            spec.canonicalize();
            let mut paths = folder::list(&spec, root, cores)?.train.paths;
            paths.truncate(images);
            paths
        }
        None => {
            let dir = tempfile::tempdir().context("cannot make a folder for the sample images")?;
            let at = keep.clone().unwrap_or_else(|| dir.path().to_owned());
            let started = std::time::Instant::now();
            eprintln!(
                "writing {images} ImageNet-like JPEGs (500x375, quality 90) to {}",
                at.display()
            );
            let paths = decode_pipeline::write_sample(&at, images, 10)
                .with_context(|| format!("cannot write the sample images to {}", at.display()))?;
            let bytes: u64 = paths
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            eprintln!(
                "written in {:.1} s, {:.0} KB each on average",
                started.elapsed().as_secs_f64(),
                bytes as f64 / paths.len() as f64 / 1000.0
            );
            _sample = dir;
            paths
        }
    };
    println!(
        "decode {} images to {size} px, batches of {batch} ({cores} cores here)",
        paths.len()
    );
    println!(
        "{:>8} {:>22} {:>22}",
        "threads", "train (RRC+flip) img/s", "eval (resize+crop) img/s"
    );
    for r in decode_pipeline::measure(&paths, size, batch, &threads)? {
        println!("{:>8} {:>22.0} {:>22.0}", r.threads, r.train_per_s, r.eval_per_s);
    }
    Ok(ExitCode::SUCCESS)
}
