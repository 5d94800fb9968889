//! `convsweep model-info` and `convsweep bench`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use convsweep_coordinator::sweep::{SweepSpec, trials_from_settings};
use convsweep_proto::TrialSpec;
use convsweep_worker::bench::{BenchConfig, BenchRun, default_cases, median, paired_ratios};
use convsweep_worker::model::{InputShape, Net};

/// Flags of `convsweep model-info`.
#[derive(Debug)]
pub struct ModelInfoArgs {
    pub settings: Vec<String>,
    pub spec: Option<PathBuf>,
    pub classes: Option<u32>,
    pub image_size: Option<u32>,
    pub channels: Option<u32>,
    pub json: bool,
}

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
pub fn model_info(args: ModelInfoArgs) -> Result<ExitCode> {
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
        let shape = input_shape(t, &args)?;
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

/// Flags of `convsweep bench`.
#[derive(Debug)]
pub struct BenchArgs {
    pub threads: u32,
    pub batch: i64,
    pub warmup: u32,
    pub steps: u32,
    pub rounds: u32,
    pub device: String,
    pub reference: Option<PathBuf>,
    pub python: String,
    pub only: Vec<String>,
    pub json: Option<PathBuf>,
    pub fft_conv: bool,
}

/// The PyTorch reference as a subprocess that times one round per request, so that its rounds
/// interleave with ours and machine load affects both alike.
struct Reference {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Reference {
    fn start(args: &BenchArgs, script: &Path) -> Result<Reference> {
        let mut cmd = Command::new(&args.python);
        cmd.arg("-W")
            .arg("ignore")
            .arg(script)
            .args([
                "--serve",
                "--threads",
                &args.threads.to_string(),
                "--batch",
                &args.batch.to_string(),
            ])
            .args(["--device", if args.device == "cpu" { "cpu" } else { "cuda" }])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        // The project's own PyTorch (the same 2.11 that convsweep links) when it is there.
        let local = Path::new(".deps/py");
        if local.join("torch").exists() && std::env::var_os("PYTHONPATH").is_none() {
            cmd.env("PYTHONPATH", local);
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

/// `convsweep bench`: training throughput of the reference configurations, side by side with
/// PyTorch eager.
pub fn bench(args: BenchArgs) -> Result<ExitCode> {
    tch::set_num_threads(args.threads.max(1) as i32);
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
        args.threads,
        args.batch,
        args.warmup,
        args.rounds,
        args.steps
    );
    let mut reference = match &args.reference {
        Some(script) => Some(Reference::start(&args, script)?),
        None => None,
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
