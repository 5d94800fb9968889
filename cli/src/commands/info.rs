//! `convsweep model-info`: parameters and compute of models given as grid settings or a spec.

use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(not(feature = "worker"))]
use anyhow::Result;
use serde::Serialize;

/// Flags of `convsweep model-info`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize)]
pub struct ModelInfoArgs {
    /// KEY=VALUE settings with the keys of a sweep's [grid] (lists give several models).
    pub settings: Vec<String>,
    /// List the models of a sweep spec instead.
    #[arg(long, conflicts_with = "settings")]
    pub spec: Option<PathBuf>,
    /// Classes of the head (default: the dataset's).
    #[arg(long)]
    pub classes: Option<u32>,
    /// Side of the input images (default: the dataset's, 32).
    #[arg(long)]
    pub image_size: Option<u32>,
    /// Input channels (default: the dataset's).
    #[arg(long)]
    pub channels: Option<u32>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[cfg(feature = "worker")]
mod imp {
    use anyhow::{Context, Result, bail};
    use convsweep_coordinator::sweep::{SweepSpec, trials_from_settings};
    use convsweep_proto::TrialSpec;
    use convsweep_worker::model::{InputShape, Net};

    use super::*;

    fn input_shape(trial: &TrialSpec, args: &ModelInfoArgs) -> Result<InputShape> {
        let (c, s, k) = trial.dataset.name.input_shape().unwrap_or((0, 0, 0));
        let shape = InputShape {
            channels: i64::from(args.channels.unwrap_or(c)),
            size: i64::from(args.image_size.unwrap_or(s)),
            classes: i64::from(args.classes.unwrap_or(k)),
        };
        if shape.channels == 0 || shape.size == 0 || shape.classes == 0 {
            bail!("a tensor dataset declares its own shape: give --channels, --image-size and --classes");
        }
        Ok(shape)
    }

    fn thousands(n: u64) -> String {
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    }

    /// `convsweep model-info`: parameters and compute of models given as grid settings or a spec.
    pub fn model_info(args: &ModelInfoArgs) -> Result<ExitCode> {
        let trials = match &args.spec {
            Some(path) => {
                if !args.settings.is_empty() {
                    bail!("give either a spec file or KEY=VALUE settings, not both");
                }
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                SweepSpec::from_toml(&text)?.expand()?
            }
            None => trials_from_settings(&args.settings)?,
        };
        // One row per distinct model and input.
        let mut rows: Vec<(String, u32, &str, &str, InputShape, convsweep_worker::model::Cost)> = Vec::new();
        for t in &trials {
            let shape = input_shape(t, args)?;
            let m = &t.model;
            let row_key = (m.name(), m.kernel_size, m.train_mode.as_str(), m.init.as_str());
            if rows
                .iter()
                .any(|r| (r.0.clone(), r.1, r.2, r.3) == row_key && r.4 == shape)
            {
                continue;
            }
            let cost = Net::cost_of(m, shape);
            rows.push((row_key.0, row_key.1, row_key.2, row_key.3, shape, cost));
        }
        if args.json {
            let out: Vec<serde_json::Value> = rows
                .iter()
                .map(|(name, k, mode, init, shape, cost)| {
                    serde_json::json!({
                        "model": name, "kernel_size": k, "train_mode": mode, "init": init,
                        "input": [shape.channels, shape.size, shape.size], "classes": shape.classes,
                        "params_total": cost.params_total, "params_learnable": cost.params_learnable,
                        "flops_per_image": cost.macs_per_image,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{:<32} {:>3} {:<8} {:>14} {:>14} {:>14}  input",
            "model", "k", "mode", "params", "learnable", "MMACs/image"
        );
        for (name, k, mode, _, shape, cost) in &rows {
            println!(
                "{:<32} {:>3} {:<8} {:>14} {:>14} {:>14.2}  {}x{}x{}, {} classes",
                name,
                k,
                mode,
                thousands(cost.params_total),
                thousands(cost.params_learnable),
                cost.macs_per_image as f64 / 1e6,
                shape.channels,
                shape.size,
                shape.size,
                shape.classes
            );
        }
        eprintln!("FLOPs are counted as multiply-accumulates of convs and linear layers, forward pass, one image.");
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(feature = "worker")]
pub use imp::model_info;

/// `convsweep model-info` in a build without libtorch.
#[cfg(not(feature = "worker"))]
pub fn model_info(_: &ModelInfoArgs) -> Result<ExitCode> {
    Err(super::without_worker("model-info"))
}
