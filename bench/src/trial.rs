//! `convsweep-bench trial`: what a whole trial costs against its training step, and whether
//! several trials per device raise trials per hour.
//!
//! For each configuration (slots x threads) it runs the spec's trials through the real worker
//! path ([`convsweep::local`], as `convsweep run` does): a coordinator in this process on a
//! loopback port, one `convsweep worker` process (a process per trial, checkpoints on) that
//! leases, trains, evaluates and reports, followed through the `Watch` stream. It then reads
//! each trial's time split from the results and prints it beside the step benchmark of the
//! same model, batch and recipe on the same device, timed here first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use convsweep::Globals;
use convsweep::commands::worker::WorkerArgs;
use convsweep::local::{Followed, Local};
use convsweep_coordinator::CoordinatorConfig;
use convsweep_coordinator::store::{DB_FILE, SqliteReader, StoreReader};
use convsweep_coordinator::sweep::SweepSpec;
use convsweep_proto::pb;
use convsweep_proto::spec::TrialSpec;
use convsweep_worker::data::DataCache;
use convsweep_worker::model::{Compute, InputShape};
use tokio_util::sync::CancellationToken;

use crate::step::{BenchRun, median};

/// Flags of `convsweep-bench trial`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrialArgs {
    /// The sweep spec whose trials to run (e.g. examples/demo.toml or bench/trial.toml).
    pub spec: PathBuf,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Trials the worker runs at once; trials per hour are compared against one slot.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// libtorch threads of each trial (default: the cores divided by the slots).
    #[arg(long)]
    pub threads: Option<u32>,
    /// Configurations to compare instead, as SLOTSxTHREADS, comma-separated (e.g.
    /// 1x1,2x1,1x2); the first is the baseline of the trials-per-hour ratios.
    #[arg(long, value_delimiter = ',')]
    pub configs: Vec<String>,
    /// Timed steps per round of the step benchmark (3 rounds, the median is used).
    #[arg(long, default_value_t = 8)]
    pub steps: u32,
    /// Keep each configuration's state, checkpoints and worker log under DIR.
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// Also write the figures as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The `convsweep` binary the workers run (default: the one beside this benchmark).
    #[arg(long)]
    pub convsweep: Option<PathBuf>,
}

/// One configuration: trials at once, and threads each.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Config {
    slots: u32,
    threads: u32,
}

impl std::fmt::Display for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = if self.slots == 1 { "" } else { "s" };
        let t = if self.threads == 1 { "" } else { "s" };
        write!(f, "{} slot{s} x {} thread{t}", self.slots, self.threads)
    }
}

fn parse_config(text: &str) -> Result<Config> {
    let parsed = text.split_once(['x', 'X']).and_then(|(s, t)| {
        let (s, t) = (s.trim().parse::<u32>().ok()?, t.trim().parse::<u32>().ok()?);
        (s >= 1 && t >= 1).then_some(Config { slots: s, threads: t })
    });
    parsed.with_context(|| {
        format!("--configs: {text:?} is not SLOTSxTHREADS with both at least 1 (e.g. 2x1: two slots of one thread)")
    })
}

fn configs(args: &TrialArgs) -> Result<Vec<Config>> {
    if !args.configs.is_empty() {
        return args.configs.iter().map(|c| parse_config(c)).collect();
    }
    if args.slots == 0 {
        bail!("--slots must be at least 1");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let threads = args.threads.unwrap_or((cores / args.slots).max(1)).max(1);
    let mut out = vec![Config { slots: 1, threads }];
    if args.slots > 1 {
        out.push(Config {
            slots: args.slots,
            threads,
        });
    }
    Ok(out)
}

/// One finished trial's figures.
#[derive(Debug, Clone, serde::Serialize)]
struct TrialFigures {
    label: String,
    test_acc: f64,
    train_images_per_second: f64,
    step_images_per_second: f64,
    ratio: f64,
    startup: f64,
    train: f64,
    epoch_eval: f64,
    final_eval: f64,
    checkpoint: f64,
    report: f64,
}

impl TrialFigures {
    fn total(&self) -> f64 {
        self.startup + self.train + self.epoch_eval + self.final_eval + self.checkpoint + self.report
    }
}

/// One configuration's run.
#[derive(Debug, Clone, serde::Serialize)]
struct ConfigFigures {
    slots: u32,
    threads: u32,
    wall_seconds: f64,
    trials: usize,
    failed: u32,
    trials_per_hour: f64,
    per_trial: Vec<TrialFigures>,
}

/// The step benchmark of one trial's model, batch and recipe at the current thread count.
fn step_rate(spec: &TrialSpec, compute: Compute, data: &DataCache, steps: u32) -> Result<f64> {
    let ds = data
        .get(&spec.dataset, compute.device)
        .map_err(|e| anyhow::anyhow!("dataset of {}: {e}", spec.label()))?;
    let (channels, size) = ds.image_shape();
    let input = InputShape {
        channels,
        size,
        classes: ds.classes,
    };
    let batch = i64::from(spec.train.batch_size).min(ds.train.len()).max(1);
    let mut run = BenchRun::with_recipe(&spec.model, &spec.train, input, batch, 2, compute);
    Ok(median(&(0..3).map(|_| run.round(steps)).collect::<Vec<_>>()))
}

/// Runs every trial of `text` under `config` with the worker `program`; the wall time is from
/// the worker's start to the last trial's completion.
async fn run_config(
    text: &str,
    config: Config,
    device: &str,
    dir: &Path,
    program: &Path,
) -> Result<(f64, u32, Vec<Finished>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut local = Local::start(CoordinatorConfig {
        // The wall time ends at the snapshot that sees the last trial done: 0.1 s apart.
        watch_interval: Duration::from_millis(100),
        ..convsweep::local::config(dir)
    })
    .await?;
    let (sweep, _) = local.coordinator().submit_or_extend(text)?;
    let started = Instant::now();
    let worker = WorkerArgs {
        exit_when_idle: true,
        slots: config.slots,
        threads: Some(config.threads),
        name: Some("bench".into()),
        grace_secs: 5,
        device: device.to_owned(),
        checkpoint_dir: Some(dir.join("checkpoints")),
        ..WorkerArgs::new("")
    };
    let log = dir.join("worker.log");
    local.spawn_worker(program, &Globals::default(), worker, &log)?;
    let followed = local
        .follow(sweep.as_str(), &CancellationToken::new(), |_| {}, |_| {}, &log)
        .await;
    let wall = started.elapsed().as_secs_f64();
    local.stop(false).await?;
    let Followed::Done(last) = followed? else {
        bail!("the run of {config} was interrupted");
    };
    let failed = last
        .status
        .and_then(|s| s.sweeps.first().and_then(|s| s.counts))
        .unwrap_or_default()
        .failed;
    let results = SqliteReader::open(dir)?.results(Some(sweep.as_str()))?;
    let rows = results
        .trials
        .into_iter()
        .filter_map(|row| row.result.map(|r| (row.spec, r)))
        .collect();
    Ok((wall, failed, rows))
}

/// A finished trial's spec and result.
type Finished = (TrialSpec, pb::TrialResult);

fn figures(spec: &TrialSpec, r: &pb::TrialResult, step: f64) -> TrialFigures {
    let t = r.times.unwrap_or_default();
    let ips = t.train_images as f64 / t.train_seconds.max(1e-9);
    TrialFigures {
        label: spec.label(),
        test_acc: r.final_test_acc,
        train_images_per_second: ips,
        step_images_per_second: step,
        ratio: ips / step,
        startup: t.startup_seconds,
        train: t.train_seconds,
        epoch_eval: t.epoch_eval_seconds,
        final_eval: r.eval_seconds,
        checkpoint: t.checkpoint_seconds,
        report: t.report_seconds,
    }
}

fn print_config(c: &ConfigFigures) {
    println!(
        "\n## {} slot(s) x {} thread(s): {} trials in {:.1} s, {:.1} trials/hour{}",
        c.slots,
        c.threads,
        c.trials,
        c.wall_seconds,
        c.trials_per_hour,
        if c.failed > 0 {
            format!(" ({} failed)", c.failed)
        } else {
            String::new()
        }
    );
    println!(
        "| trial | test acc | train img/s | step img/s | ratio | start-up s | training s | epoch eval s | final eval s | checkpoints s | reporting s | total s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for t in &c.per_trial {
        println!(
            "| {} | {:.1}% | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} | {:.2} |",
            t.label,
            t.test_acc * 100.0,
            t.train_images_per_second,
            t.step_images_per_second,
            t.ratio,
            t.startup,
            t.train,
            t.epoch_eval,
            t.final_eval,
            t.checkpoint,
            t.report,
            t.total()
        );
    }
    let sum = |f: fn(&TrialFigures) -> f64| c.per_trial.iter().map(f).sum::<f64>();
    let total = sum(TrialFigures::total);
    let ratios: Vec<f64> = c.per_trial.iter().map(|t| t.ratio).collect();
    println!(
        "| **all** | | | | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} | {:.2} |",
        if ratios.is_empty() {
            "-".into()
        } else {
            format!("{:.2} (median)", median(&ratios))
        },
        sum(|t| t.startup),
        sum(|t| t.train),
        sum(|t| t.epoch_eval),
        sum(|t| t.final_eval),
        sum(|t| t.checkpoint),
        sum(|t| t.report),
        total
    );
    let slot_seconds = c.wall_seconds * f64::from(c.slots);
    println!(
        "slot time {slot_seconds:.1} s ({} slot(s) x {:.1} s wall): {:.1}% in the trials' spans; the rest is the worker's \
         own start, waits for a lease, the completions, and slots left idle at the end",
        c.slots,
        c.wall_seconds,
        100.0 * total / slot_seconds.max(1e-9)
    );
}

/// `convsweep-bench trial`.
pub async fn bench_trial(args: TrialArgs) -> Result<ExitCode> {
    let program = crate::files::convsweep_binary(args.convsweep.as_deref())?;
    let text = std::fs::read_to_string(&args.spec).with_context(|| format!("cannot read {}", args.spec.display()))?;
    let spec = SweepSpec::from_toml(&text).with_context(|| format!("{}", args.spec.display()))?;
    let configs = configs(&args)?;
    let device = convsweep_worker::pick_device(&args.device)?;
    let compute = Compute {
        device,
        fft_conv: false,
    };
    let trials = spec.expand()?;
    eprintln!(
        "{}: {} trials on {}, configurations: {}",
        args.spec.display(),
        trials.len(),
        convsweep_worker::device::describe_device(device),
        configs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    );

    // The step benchmark of each distinct step (model, recipe, dataset) at each thread count.
    let cache = DataCache::default();
    let mut steps: HashMap<(String, u32), f64> = HashMap::new();
    let key = |t: &TrialSpec| serde_json::json!([t.model, t.train, t.dataset]).to_string();
    for threads in configs
        .iter()
        .map(|c| c.threads)
        .collect::<std::collections::BTreeSet<_>>()
    {
        tch::set_num_threads(threads as i32);
        for t in &trials {
            if let std::collections::hash_map::Entry::Vacant(e) = steps.entry((key(t), threads)) {
                let rate = step_rate(t, compute, &cache, args.steps)?;
                eprintln!(
                    "step benchmark, {threads} thread(s): {} at {rate:.1} images/s",
                    t.label()
                );
                e.insert(rate);
            }
        }
    }
    drop(cache);

    let scratch = match &args.keep {
        Some(_) => None,
        None => Some(tempfile::tempdir().context("cannot make a scratch folder")?),
    };
    let root = args
        .keep
        .clone()
        .unwrap_or_else(|| scratch.as_ref().expect("made above").path().to_owned());
    let mut all = Vec::new();
    for (i, &config) in configs.iter().enumerate() {
        let dir = root.join(format!("{i}-{}x{}", config.slots, config.threads));
        if dir.join(DB_FILE).exists() {
            bail!("{} already holds a run; give --keep an empty folder", dir.display());
        }
        eprintln!("running {config} ...");
        let (wall, failed, rows) = run_config(&text, config, &args.device, &dir, &program).await?;
        let per_trial: Vec<TrialFigures> = rows
            .iter()
            .map(|(t, r)| figures(t, r, steps.get(&(key(t), config.threads)).copied().unwrap_or(f64::NAN)))
            .collect();
        let c = ConfigFigures {
            slots: config.slots,
            threads: config.threads,
            wall_seconds: wall,
            trials: per_trial.len(),
            failed,
            trials_per_hour: per_trial.len() as f64 * 3600.0 / wall.max(1e-9),
            per_trial,
        };
        print_config(&c);
        all.push(c);
    }
    if let Some(base) = all.first()
        && all.len() > 1
    {
        println!(
            "\n| configuration | trials/hour | against {} slot(s) x {} thread(s) |",
            base.slots, base.threads
        );
        println!("|---|---:|---:|");
        for c in &all {
            println!(
                "| {} slot(s) x {} thread(s) | {:.1} | {:.2}x |",
                c.slots,
                c.threads,
                c.trials_per_hour,
                c.trials_per_hour / base.trials_per_hour.max(1e-9)
            );
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&all)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(if all.iter().any(|c| c.failed > 0) {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_read_and_refuse_clearly() {
        assert_eq!(parse_config("2x1").unwrap(), Config { slots: 2, threads: 1 });
        assert_eq!(parse_config(" 1 X 2 ").unwrap(), Config { slots: 1, threads: 2 });
        for bad in ["2", "0x1", "1x0", "ax1", "2x"] {
            let err = parse_config(bad).unwrap_err().to_string();
            assert!(err.contains("SLOTSxTHREADS") && err.contains(bad), "{bad}: {err}");
        }
    }
}
