//! `convsweep-bench` (no subcommand): images per second of the training step (forward,
//! backward, optimiser step) that trials use, for the paper's reference configurations, paired
//! round by round with `bench/pytorch_reference.py`, which times the same models in PyTorch
//! eager mode on the same machine with the same thread count.
//!
//! [`BenchRun`] is also the step the trial benchmark ([`crate::trial`]) holds whole trials
//! against.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use convsweep_proto::spec::{Arch, InitScheme, InterOp, ModelSpec, TrainMode, TrainSpec};
use convsweep_worker::model::{Compute, InputShape, Net};
use convsweep_worker::trainer::optim::FlatOptimizer;
use convsweep_worker::trainer::{optimizer, train_step};
use tch::{Device, Kind, Tensor};

/// Flags of the training-step benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct StepArgs {
    /// libtorch threads (and the reference's); default: every core.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    pub batch: i64,
    /// Untimed steps per case.
    #[arg(long, default_value_t = 2)]
    pub warmup: u32,
    /// Timed steps per round.
    #[arg(long, default_value_t = 5)]
    pub steps: u32,
    /// Rounds per case (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The PyTorch-eager reference script to run on the same cases (default: the repository's
    /// bench/pytorch_reference.py).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Skip the PyTorch reference.
    #[arg(long)]
    pub no_reference: bool,
    /// Python interpreter for the reference.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Only these cases (by name, repeatable).
    #[arg(long)]
    pub only: Vec<String>,
    /// Also write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Train stride-1 convs with kernel size 9 or more on the CPU through the FFT, as workers
    /// do by default; false keeps every conv on libtorch's conv2d.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub fft_conv: bool,
}

/// One configuration to time.
#[derive(Debug, Clone)]
pub struct BenchCase {
    /// Row name, shared with the reference script.
    pub name: &'static str,
    /// The model.
    pub model: ModelSpec,
}

fn resnet20(k: u32, mode: TrainMode, expansion: Option<u32>) -> ModelSpec {
    ModelSpec {
        arch: Arch::Resnet,
        depth: Some(20),
        width: Some(16),
        stem: None,
        patch_size: None,
        kernel_size: k,
        expansion,
        inter_op: InterOp::None,
        train_mode: mode,
        init: InitScheme::KaimingUniform,
        init_length: None,
        init_decay: None,
    }
}

/// The rows of docs/BENCHMARKS.md: ResNet-20-16 at k = 3 and 9, learned and frozen, and
/// ResNet-LC-20-16x8 at k = 3, learned and frozen.
pub fn default_cases() -> Vec<BenchCase> {
    vec![
        BenchCase {
            name: "resnet-20-16 k3 learned",
            model: resnet20(3, TrainMode::Learned, None),
        },
        BenchCase {
            name: "resnet-20-16 k3 frozen",
            model: resnet20(3, TrainMode::Frozen, None),
        },
        BenchCase {
            name: "resnet-20-16 k9 learned",
            model: resnet20(9, TrainMode::Learned, None),
        },
        BenchCase {
            name: "resnet-20-16 k9 frozen",
            model: resnet20(9, TrainMode::Frozen, None),
        },
        BenchCase {
            name: "resnet-lc-20-16x8 k3 learned",
            model: resnet20(3, TrainMode::Learned, Some(8)),
        },
        BenchCase {
            name: "resnet-lc-20-16x8 k3 frozen",
            model: resnet20(3, TrainMode::Frozen, Some(8)),
        },
    ]
}

/// How to time.
#[derive(Debug, Clone, Copy)]
pub struct BenchConfig {
    /// Images per step.
    pub batch: i64,
    /// Untimed steps first.
    pub warmup: u32,
    /// Timed steps per round.
    pub steps: u32,
    /// Rounds; the median round is reported.
    pub rounds: u32,
    /// Device and conv algorithms.
    pub compute: Compute,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// A case ready to be timed: model, optimiser and a fixed random batch of `[0, 1]` images.
pub struct BenchRun {
    net: Net,
    opt: FlatOptimizer,
    x: Tensor,
    y: Tensor,
    label_smoothing: f64,
    batch: i64,
    device: Device,
}

impl BenchRun {
    /// Builds `model` with the paper's optimiser and loss and runs `warmup` untimed steps.
    pub fn new(model: &ModelSpec, batch: i64, warmup: u32, compute: impl Into<Compute>) -> BenchRun {
        let input = InputShape {
            channels: 3,
            size: 32,
            classes: 10,
        };
        BenchRun::with_recipe(model, &TrainSpec::default(), input, batch, warmup, compute)
    }

    /// [`BenchRun::new`] for `model` trained by `recipe` (its optimiser, precision and label
    /// smoothing) on images of `input`: the step of a trial, for the trial benchmark.
    pub fn with_recipe(
        model: &ModelSpec,
        recipe: &TrainSpec,
        input: InputShape,
        batch: i64,
        warmup: u32,
        compute: impl Into<Compute>,
    ) -> BenchRun {
        let compute = compute.into();
        let device = compute.device;
        let c = input.channels;
        let (mean, std) = (vec![0.5; c as usize], vec![0.25; c as usize]);
        let net = Net::new(model, input, 0, compute, &mean, &std);
        let opt = optimizer(&net, recipe);
        let side = input.size;
        let mut run = BenchRun {
            x: Tensor::rand([batch, c, side, side], (Kind::Float, device)),
            y: Tensor::randint(input.classes, [batch], (Kind::Int64, device)),
            net,
            opt,
            label_smoothing: recipe.label_smoothing,
            batch,
            device,
        };
        for _ in 0..warmup {
            run.step();
        }
        sync(device);
        run
    }

    fn step(&mut self) {
        let _ = train_step(&self.net, &mut self.opt, &self.x, &self.y, self.label_smoothing);
    }

    /// Times `steps` training steps; returns images per second.
    pub fn round(&mut self, steps: u32) -> f64 {
        let start = Instant::now();
        for _ in 0..steps {
            self.step();
        }
        sync(self.device);
        (f64::from(steps) * self.batch as f64) / start.elapsed().as_secs_f64()
    }
}

/// The median of `values` (upper median for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `num[i] / den[i]` for each round the two share: ratios of rounds run back to back.
pub fn paired_ratios(num: &[f64], den: &[f64]) -> Vec<f64> {
    num.iter().zip(den).map(|(a, b)| a / b).collect()
}

/// The PyTorch reference as a subprocess that times one round per request, so that its rounds
/// interleave with ours and machine load affects both alike.
struct Reference {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Reference {
    fn start(args: &StepArgs, threads: u32, script: &Path) -> Result<Reference> {
        let mut cmd = Command::new(&args.python);
        cmd.arg("-W")
            .arg("ignore")
            .arg(script)
            .args([
                "--serve",
                "--threads",
                &threads.to_string(),
                "--batch",
                &args.batch.to_string(),
            ])
            .args(["--device", if args.device == "cpu" { "cpu" } else { "cuda" }])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        // The project's own PyTorch (the same 2.11 that convsweep links) when it is there.
        let local = crate::files::repo_file(".deps/py");
        if local.join("torch").exists() && std::env::var_os("PYTHONPATH").is_none() {
            cmd.env("PYTHONPATH", &local);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run {} {}", args.python, script.display()))?;
        let stdin = child.stdin.take().context("reference stdin")?;
        let stdout = std::io::BufReader::new(child.stdout.take().context("reference stdout")?);
        Ok(Reference { child, stdin, stdout })
    }

    fn ask(&mut self, request: serde_json::Value) -> Result<serde_json::Value> {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{request}").context("the PyTorch reference stopped")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!("the PyTorch reference exited ({status}) on {request}");
        }
        serde_json::from_str(&line).with_context(|| format!("reference answered {line:?}"))
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The training-step benchmark: throughput of the reference configurations, side by side with
/// PyTorch eager.
pub fn bench(args: &StepArgs) -> Result<ExitCode> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    tch::set_num_threads(threads as i32);
    let device = convsweep_worker::pick_device(&args.device)?;
    let config = BenchConfig {
        batch: args.batch,
        warmup: args.warmup,
        steps: args.steps,
        rounds: args.rounds,
        compute: convsweep_worker::model::Compute {
            device,
            fft_conv: args.fft_conv,
        },
    };
    let cases: Vec<_> = default_cases()
        .into_iter()
        .filter(|c| args.only.is_empty() || args.only.iter().any(|o| o == c.name))
        .collect();
    eprintln!(
        "timing {} cases on {device:?}, {} threads, batch {}, {} warm-up + {} rounds of {} steps (each round times every case in turn, each followed by the reference)",
        cases.len(),
        threads,
        args.batch,
        args.warmup,
        args.rounds,
        args.steps
    );
    let mut reference = match args.no_reference {
        false => {
            let script = args
                .reference
                .clone()
                .unwrap_or_else(|| crate::files::repo_file("bench/pytorch_reference.py"));
            Some(Reference::start(args, threads, &script)?)
        }
        true => None,
    };
    // Every case is built first; then each round times every case in turn, each of our rounds
    // followed by the reference's round of the same case. Rounds of different cases are thus
    // seconds apart, so ratios between cases (frozen over learned) are paired as well.
    let mut runs = Vec::new();
    for case in &cases {
        runs.push(BenchRun::new(&case.model, config.batch, config.warmup, config.compute));
        if let Some(r) = reference.as_mut() {
            r.ask(serde_json::json!({ "prepare": case.name, "warmup": config.warmup }))?;
        }
    }
    let mut mine = vec![Vec::new(); cases.len()];
    let mut theirs = vec![Vec::new(); cases.len()];
    for _ in 0..config.rounds.max(1) {
        for (i, (case, run)) in cases.iter().zip(&mut runs).enumerate() {
            mine[i].push(run.round(config.steps));
            if let Some(r) = reference.as_mut() {
                let b = r.ask(serde_json::json!({ "round": config.steps, "case": case.name }))?["images_per_sec"]
                    .as_f64()
                    .context("reference round without images_per_sec")?;
                theirs[i].push(b);
            }
        }
    }
    drop(runs);
    println!("| configuration | convsweep (images/s) | PyTorch eager (images/s) | convsweep / PyTorch |");
    println!("|---|---:|---:|---:|");
    let mut json_rows = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        // Paired: each of our rounds against the reference round right after it.
        let ratios = paired_ratios(&mine[i], &theirs[i]);
        let ips = median(&mine[i]);
        let py = (!theirs[i].is_empty()).then(|| median(&theirs[i]));
        let ratio = (!ratios.is_empty()).then(|| median(&ratios));
        println!(
            "| {} | {ips:.1} | {} | {} |",
            case.name,
            py.map_or("-".into(), |p| format!("{p:.1}")),
            ratio.map_or("-".into(), |x| format!("{x:.2}"))
        );
        json_rows.push(serde_json::json!({
            "name": case.name, "convsweep_images_per_sec": ips, "convsweep_rounds": mine[i],
            "pytorch_images_per_sec": py, "pytorch_rounds": theirs[i], "paired_ratios": ratios, "ratio": ratio,
        }));
    }
    let index = |name: String| cases.iter().position(|c| c.name == name);
    for k in ["k3", "k9"] {
        let (Some(f), Some(l)) = (
            index(format!("resnet-20-16 {k} frozen")),
            index(format!("resnet-20-16 {k} learned")),
        ) else {
            continue;
        };
        // Median over rounds of frozen over learned within the same round.
        let per_round = |rounds: &[Vec<f64>]| median(&paired_ratios(&rounds[f], &rounds[l]));
        let theirs_too = if theirs[f].is_empty() {
            String::new()
        } else {
            format!(" (PyTorch eager: {:.2}x)", per_round(&theirs))
        };
        println!(
            "\nfrozen / learned step speed at {k}: {:.2}x, median of the per-round ratios{theirs_too}",
            per_round(&mine)
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&json_rows)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
