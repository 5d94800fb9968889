//! `convsweep-bench stopping`: one sweep run in full and with each stopping rule, side by side,
//! through the real worker path (a coordinator in this process, one `convsweep worker` process,
//! a process per trial): the trial-seconds each spent, the decisions each made, and how well
//! each kept what the full run found best.
//!
//! The spec must have a `[stopping]` section (its rungs, groups and keep share are used by every
//! rule); the full run is the same spec with `rule = "none"`. Fidelity against the full run:
//! for each group, the full run's final ranking (mean final test accuracy over seeds) is the
//! truth; a rule's survivors (configurations that ran to the end) are compared with the full
//! run's top configurations of the same count (top-k recall), and whether the full run's best
//! configuration of each group survived; and for each rung, Kendall's tau between the full
//! run's ranking at that rung (the rule's metric) and its final one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use convsweep::Globals;
use convsweep::commands::worker::WorkerArgs;
use convsweep::local::{Followed, Local};
use convsweep_coordinator::CoordinatorConfig;
use convsweep_coordinator::store::{SqliteReader, StoreReader};
use convsweep_coordinator::sweep::SweepSpec;
use convsweep_proto::TrialState;
use convsweep_proto::results::Results;
use tokio_util::sync::CancellationToken;

/// Flags of `convsweep-bench stopping`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoppingArgs {
    /// The sweep spec, with a [stopping] section (e.g. bench/stopping.toml).
    pub spec: PathBuf,
    /// The rules to run beside the full run.
    #[arg(long, value_delimiter = ',', default_value = "successive-halving,median,asha")]
    pub rules: Vec<String>,
    /// Trials the worker runs at once.
    #[arg(long, default_value_t = 2)]
    pub slots: u32,
    /// libtorch threads of each trial.
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
    /// Keep each run's state and worker log under DIR.
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// Also write the figures as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The `convsweep` binary the worker runs (default: the one beside this benchmark).
    #[arg(long)]
    pub convsweep: Option<PathBuf>,
}

/// One run's figures.
#[derive(Debug, Clone, serde::Serialize)]
struct RunFigures {
    rule: String,
    trials: usize,
    succeeded: usize,
    stopped: usize,
    failed: usize,
    trial_seconds: f64,
    saved_pct: f64,
    wall_seconds: f64,
    decisions: usize,
    /// Share of the full run's top configurations (as many as survived) that survived, over groups.
    top_k_recall: Option<f64>,
    /// Groups whose best configuration in the full run survived, of all groups.
    best_kept: (usize, usize),
    decision_lines: Vec<String>,
}

/// Runs the benchmark.
pub async fn bench_stopping(args: StoppingArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.spec).with_context(|| format!("cannot read {}", args.spec.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", args.spec.display()))?;
    if !table.contains_key("stopping") {
        bail!(
            "{}: needs a [stopping] section (its rungs, groups and keep share serve every rule)",
            args.spec.display()
        );
    }
    for rule in &args.rules {
        if !["successive-halving", "median", "asha"].contains(&rule.as_str()) {
            bail!("--rules: {rule:?} is not one of successive-halving, median, asha");
        }
    }
    let program = crate::files::convsweep_binary(args.convsweep.as_deref())?;
    let scratch = tempfile::tempdir()?;
    let root = args.keep.clone().unwrap_or_else(|| scratch.path().to_owned());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "# stopping rules on {} ({} slot(s) x {} thread(s), {cores} cores; the full run first)",
        args.spec.display(),
        args.slots,
        args.threads
    );
    let mut runs: Vec<(String, Results, f64)> = Vec::new();
    for rule in std::iter::once("none".to_owned()).chain(args.rules.iter().cloned()) {
        let mut t = table.clone();
        let Some(toml::Value::Table(stopping)) = t.get_mut("stopping") else {
            bail!("[stopping] is not a table");
        };
        stopping.insert("rule".into(), toml::Value::String(rule.clone()));
        if rule == "median" {
            stopping.remove("keep");
        }
        if rule == "none" {
            // The full run keeps nothing of the rule but its name.
            stopping.retain(|k, _| k == "rule");
        }
        let spec_text = toml::to_string(&t)?;
        SweepSpec::from_toml(&spec_text).with_context(|| format!("the spec with rule = {rule:?}"))?;
        let dir = root.join(&rule);
        let started = Instant::now();
        let results = run(&spec_text, &dir, &program, args.slots, args.threads).await?;
        let wall = started.elapsed().as_secs_f64();
        println!("  {rule}: {} trials in {wall:.1} s", results.trials.len());
        runs.push((rule, results, wall));
    }
    let full = &runs[0].1;
    let metric = runs
        .iter()
        .flat_map(|r| r.1.decisions.first())
        .map(|d| d.metric.clone())
        .next()
        .unwrap_or_else(|| "val_acc".into());
    let truth = design(full, &runs.get(1).map(|r| &r.1));
    let figures: Vec<RunFigures> = runs
        .iter()
        .map(|(rule, r, wall)| figure(rule, r, *wall, &truth))
        .collect();

    println!(
        "\n| run | trials | succeeded | stopped | failed | trial-seconds | saved | wall s | decisions | top-k recall | best kept |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for f in &figures {
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.1}% | {:.1} | {} | {} | {} of {} |",
            f.rule,
            f.trials,
            f.succeeded,
            f.stopped,
            f.failed,
            f.trial_seconds,
            f.saved_pct,
            f.wall_seconds,
            f.decisions,
            f.top_k_recall.map_or("-".into(), |r| format!("{r:.2}")),
            f.best_kept.0,
            f.best_kept.1
        );
    }
    println!("\nRank fidelity of the full run ({metric} at each rung against the final test accuracy):");
    println!("| group | rung | configurations | Kendall tau |");
    println!("|---|---|---|---|");
    for (group, rung, n, tau) in fidelity(full, &truth, &metric) {
        println!(
            "| {group} | {rung} | {n} | {} |",
            tau.map_or("-".into(), |t| format!("{t:.2}"))
        );
    }
    for f in figures.iter().skip(1) {
        println!("\nDecisions of {}:", f.rule);
        for line in &f.decision_lines {
            println!("  {line}");
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs one spec to its end with one worker process; returns its results.
async fn run(text: &str, dir: &Path, program: &Path, slots: u32, threads: u32) -> Result<Results> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut local = Local::start(CoordinatorConfig {
        watch_interval: Duration::from_millis(100),
        expiry_interval: Duration::from_millis(100),
        heartbeat_interval: Duration::from_millis(200),
        ..convsweep::local::config(dir)
    })
    .await?;
    let (sweep, _) = local.coordinator().submit_or_extend(text)?;
    let worker = WorkerArgs {
        exit_when_idle: true,
        slots,
        threads: Some(threads),
        name: Some("bench".into()),
        grace_secs: 5,
        device: "cpu".into(),
        checkpoint_dir: Some(dir.join("checkpoints")),
        ..WorkerArgs::new("")
    };
    let log = dir.join("worker.log");
    local.spawn_worker(program, &Globals::default(), worker, &log)?;
    let followed = local
        .follow(sweep.as_str(), &CancellationToken::new(), |_| {}, |_| {}, &log)
        .await;
    local.stop(false).await?;
    let Followed::Done(_) = followed? else {
        bail!("the run in {} was interrupted", dir.display());
    };
    Ok(SqliteReader::open(dir)?.results(Some(sweep.as_str()))?)
}

/// The design (group -> configuration -> trial ids, matched across runs by spec id) and the
/// full run's final test accuracy per configuration (mean over seeds).
struct Truth {
    configs: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    final_acc: BTreeMap<(String, String), f64>,
}

fn design(full: &Results, ruled: &Option<&Results>) -> Truth {
    // The full run has no rule: the design comes from a run with one (the same trial ids).
    let cells: BTreeMap<String, (String, String)> = ruled
        .map(|r| {
            r.trials
                .iter()
                .filter_map(|t| {
                    t.cell
                        .as_ref()
                        .map(|c| (t.trial_id.clone(), (c.group.clone(), c.config.clone())))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut configs: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut sums: BTreeMap<(String, String), (f64, u32)> = BTreeMap::new();
    for t in &full.trials {
        let Some((g, c)) = cells.get(&t.trial_id) else { continue };
        configs
            .entry(g.clone())
            .or_default()
            .entry(c.clone())
            .or_default()
            .push(t.trial_id.clone());
        if let Some(r) = &t.result {
            let s = sums.entry((g.clone(), c.clone())).or_default();
            s.0 += r.final_test_acc;
            s.1 += 1;
        }
    }
    let final_acc = sums.into_iter().map(|(k, (s, n))| (k, s / f64::from(n))).collect();
    Truth { configs, final_acc }
}

fn figure(rule: &str, r: &Results, wall: f64, truth: &Truth) -> RunFigures {
    let count = |s: TrialState| r.trials.iter().filter(|t| t.state == s).count();
    let spent: f64 = r.epochs.iter().map(|e| e.metrics.seconds).sum();
    // A stopped trial would have run the rest of its budget at its pace (the run's, for one
    // that never ran).
    let per_epoch = spent / r.epochs.len().max(1) as f64;
    let mut unspent = 0.0;
    for t in r.trials.iter().filter(|t| t.state == TrialState::Stopped) {
        let mine: Vec<f64> = r
            .epochs
            .iter()
            .filter(|e| e.trial_id == t.trial_id)
            .map(|e| e.metrics.seconds)
            .collect();
        let pace = if mine.is_empty() {
            per_epoch
        } else {
            mine.iter().sum::<f64>() / mine.len() as f64
        };
        unspent += pace * (f64::from(t.spec.train.epochs) - mine.len() as f64).max(0.0);
    }
    let full = spent + unspent;
    let state: BTreeMap<&str, TrialState> = r.trials.iter().map(|t| (t.trial_id.as_str(), t.state)).collect();
    let (mut recall_sum, mut groups, mut best_kept) = (0.0, 0usize, 0usize);
    for (g, configs) in &truth.configs {
        let survived: BTreeSet<&String> = configs
            .iter()
            .filter(|(_, ids)| {
                ids.iter()
                    .all(|id| state.get(id.as_str()) != Some(&TrialState::Stopped))
            })
            .map(|(c, _)| c)
            .collect();
        let mut ranked: Vec<(&String, f64)> = configs
            .keys()
            .filter_map(|c| truth.final_acc.get(&(g.clone(), c.clone())).map(|a| (c, *a)))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        if ranked.is_empty() || survived.is_empty() {
            continue;
        }
        let k = survived.len().min(ranked.len());
        let hits = ranked.iter().take(k).filter(|(c, _)| survived.contains(c)).count();
        recall_sum += hits as f64 / k as f64;
        groups += 1;
        if survived.contains(ranked[0].0) {
            best_kept += 1;
        }
    }
    RunFigures {
        rule: rule.to_owned(),
        trials: r.trials.len(),
        succeeded: count(TrialState::Succeeded),
        stopped: count(TrialState::Stopped),
        failed: count(TrialState::Failed),
        trial_seconds: spent,
        saved_pct: if full > 0.0 { 100.0 * (full - spent) / full } else { 0.0 },
        wall_seconds: wall,
        decisions: r.decisions.len(),
        top_k_recall: (rule != "none" && groups > 0).then(|| recall_sum / groups as f64),
        best_kept: (
            if rule == "none" { truth.configs.len() } else { best_kept },
            truth.configs.len(),
        ),
        decision_lines: r
            .decisions
            .iter()
            .map(|d| {
                format!(
                    "rung {} {} {}: {} {:.1}% (rank {} of {}){}",
                    d.rung,
                    d.group,
                    d.config,
                    if d.kept { "kept" } else { "STOPPED" },
                    100.0 * d.value,
                    d.rank,
                    d.ranked,
                    if d.rule == "asha" {
                        format!(" against {}", d.inputs)
                    } else {
                        String::new()
                    }
                )
            })
            .collect(),
    }
}

/// Kendall's tau per group and rung of the full run: its ranking at the rung (the rule's
/// metric, mean over seeds) against its final test accuracy.
fn fidelity(full: &Results, truth: &Truth, metric: &str) -> Vec<(String, u32, usize, Option<f64>)> {
    let rungs: BTreeSet<u32> = {
        // Every epoch but the last: where a rule could decide.
        let last = full.trials.iter().map(|t| t.spec.train.epochs).min().unwrap_or(1);
        (1..last).collect()
    };
    let at = |id: &str, epoch: u32| {
        full.epochs
            .iter()
            .find(|e| e.trial_id == id && e.metrics.epoch == epoch)
            .and_then(|e| match metric {
                "val_loss" => e.metrics.val_loss.map(|v| -v),
                "train_acc" => Some(e.metrics.train_acc),
                "train_loss" => Some(-e.metrics.train_loss),
                _ => e.metrics.val_acc,
            })
    };
    let mut out = Vec::new();
    for (g, configs) in &truth.configs {
        for &rung in &rungs {
            let (mut early, mut last) = (Vec::new(), Vec::new());
            for (c, ids) in configs {
                let Some(f) = truth.final_acc.get(&(g.clone(), c.clone())) else {
                    continue;
                };
                let vals: Vec<f64> = ids.iter().filter_map(|id| at(id, rung)).collect();
                if vals.len() == ids.len() && !vals.is_empty() {
                    early.push(vals.iter().sum::<f64>() / vals.len() as f64);
                    last.push(*f);
                }
            }
            out.push((
                g.clone(),
                rung,
                early.len(),
                convsweep_proto::rank::kendall_tau_b(&early, &last),
            ));
        }
    }
    out
}
