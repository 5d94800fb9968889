//! A sweep as a TensorBoard log folder: one run per trial, named by the factors that vary
//! (`k=3/frozen/E=4/seed=0`), with its epoch scalars (`train/loss`, `train/acc`, `test/loss`,
//! `test/acc`, `val/loss`, `val/acc` where a validation split was held out, `lr`,
//! `epoch/seconds`), its final figures (`final/*`) and robustness (`robustness/fgsm/eps_x255=1`,
//! `robustness/corruption/fog/severity=3`, ...) at its last epoch; and the sweep's
//! hyper-parameters through the `hparams` plugin (an experiment summary in the sweep's folder,
//! a session per run), so that TensorBoard's HPARAMS table and parallel-coordinates view work.
//!
//! Values are written as TensorBoard stores scalars (32-bit floats), accuracies as fractions
//! like the Parquet tables. Each run's file has a fixed name, so exporting again overwrites it.

mod events;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use convsweep_proto::numbers::readable;
use polars::prelude::*;
use prost::Message;
use prost_types::value::Kind;

use crate::Frames;
use crate::error::{Error, Result};
use crate::report::grouping::{grouping, seeds, varying_factors};
use events::{
    Dim, Event, Experiment, HParamInfo, HParamsData, HParamsPluginData, MetricInfo, MetricName, PluginData,
    SessionEndInfo, SessionStartInfo, Summary, SummaryMetadata, TensorProto, TensorShape, Value, What, write_record,
};

/// The event file each run folder holds.
pub const EVENT_FILE: &str = "events.out.tfevents.0.convsweep";

/// Factors first in a run's name, in this order; the other varying factors follow in
/// the report's factor order (`report::grouping::FACTORS`), then the seed.
const NAME_ORDER: [&str; 4] = ["kernel_size", "train_mode", "expansion", "init"];

/// The final figures each run records at its last epoch: (tag, trials column, what it is).
const FINAL: [(&str, &str, &str); 6] = [
    (
        "final/test_acc",
        "final_test_acc",
        "test accuracy at the end (fraction)",
    ),
    (
        "final/train_acc",
        "final_train_acc",
        "training accuracy at the end (fraction)",
    ),
    (
        "final/best_test_acc",
        "best_test_acc",
        "best test accuracy over the epochs (fraction)",
    ),
    ("final/test_loss", "final_test_loss", "test loss at the end"),
    ("final/train_loss", "final_train_loss", "training loss at the end"),
    (
        "final/wall_seconds",
        "wall_seconds",
        "the trial's wall time, training and evaluations",
    ),
];

/// What an export wrote.
#[derive(Debug, Default)]
pub struct Written {
    /// One folder per sweep: the `--logdir` to give TensorBoard.
    pub logdirs: Vec<PathBuf>,
    /// Runs (trials) written.
    pub runs: usize,
    /// Scalar values written.
    pub scalars: usize,
}

/// A column's value at row `i` as an `f64` (integers and booleans too), None where null.
fn num(df: &DataFrame, column: &str, i: usize) -> Option<f64> {
    match df.column(column).ok()?.get(i).ok()? {
        AnyValue::Null => None,
        AnyValue::Boolean(b) => Some(f64::from(u8::from(b))),
        v => v.extract::<f64>(),
    }
}

/// A column's value at row `i` as text (None where null).
fn text(df: &DataFrame, column: &str, i: usize) -> Option<String> {
    match df.column(column).ok()?.get(i).ok()? {
        AnyValue::Null => None,
        AnyValue::String(s) => Some(s.to_owned()),
        AnyValue::StringOwned(s) => Some(s.to_string()),
        AnyValue::Boolean(b) => Some(b.to_string()),
        v => v.extract::<f64>().map(readable),
    }
}

/// A factor's value as a hyper-parameter and as a run-name segment.
#[derive(Debug, Clone, PartialEq)]
enum Level {
    Number(f64),
    Text(String),
    Bool(bool),
    /// Null: plain convs for `expansion`.
    None,
}

impl Level {
    fn of(df: &DataFrame, column: &str, i: usize) -> Level {
        match df.column(column).ok().and_then(|c| c.get(i).ok()) {
            None | Some(AnyValue::Null) => Level::None,
            Some(AnyValue::Boolean(b)) => Level::Bool(b),
            Some(AnyValue::String(s)) => Level::Text(s.to_owned()),
            Some(AnyValue::StringOwned(s)) => Level::Text(s.to_string()),
            Some(v) => v.extract::<f64>().map_or(Level::None, Level::Number),
        }
    }

    fn shown(&self) -> String {
        match self {
            Level::Number(x) => readable(*x),
            Level::Text(s) => s.clone(),
            Level::Bool(b) => b.to_string(),
            Level::None => "none".into(),
        }
    }

    /// The run-name segment of factor `name` at this level (no `/`, never `.` or `..`).
    fn segment(&self, name: &str) -> String {
        let s = match (name, self) {
            ("kernel_size", _) => format!("k={}", self.shown()),
            ("expansion", Level::None) => "plain".into(),
            ("expansion", _) => format!("E={}", self.shown()),
            (_, Level::Text(s)) => s.clone(),
            _ => format!("{name}={}", self.shown()),
        };
        let s = s.replace(['/', '\\'], "_");
        if s.is_empty() || s == "." || s == ".." {
            format!("{name}_{s}")
        } else {
            s
        }
    }
}

/// The hyper-parameters of a sweep: the factors that vary (the seed too), in name order.
fn hparam_columns(trials: &DataFrame) -> Result<Vec<&'static str>> {
    let varying = varying_factors(trials)?;
    let first: Vec<&'static str> = NAME_ORDER.iter().copied().filter(|f| varying.contains(f)).collect();
    let mut ordered = grouping(&first, &varying);
    if seeds(trials)? > 1 {
        ordered.push("seed");
    }
    Ok(ordered)
}

/// A hyper-parameter's value as the plugin stores it: numbers stay numbers unless the column
/// has nulls (then every value is text, `none` for the null).
fn hparam_value(level: &Level, as_text: bool) -> prost_types::Value {
    let kind = match level {
        Level::Number(x) if !as_text => Kind::NumberValue(*x),
        Level::Bool(b) if !as_text => Kind::BoolValue(*b),
        other => Kind::StringValue(other.shown()),
    };
    prost_types::Value { kind: Some(kind) }
}

fn scalar(tag: impl Into<String>, v: f64) -> Value {
    Value {
        tag: tag.into(),
        simple_value: Some(v as f32),
        ..Value::default()
    }
}

/// A summary value of the hparams plugin (its data in the metadata, an empty float tensor).
fn hparams_value(tag: &str, data: HParamsData) -> Value {
    let content = HParamsPluginData {
        version: 0,
        data: Some(data),
    };
    Value {
        tag: tag.into(),
        metadata: Some(SummaryMetadata {
            plugin_data: Some(PluginData {
                plugin_name: "hparams".into(),
                content: content.encode_to_vec(),
            }),
        }),
        simple_value: None,
        tensor: Some(TensorProto {
            dtype: 1,
            tensor_shape: Some(TensorShape {
                dim: vec![Dim { size: 0 }],
            }),
        }),
    }
}

fn summary(wall_time: f64, step: i64, value: Vec<Value>) -> Event {
    Event {
        wall_time,
        step,
        what: Some(What::Summary(Summary { value })),
    }
}

/// The robustness tag of one measurement.
fn robustness_tag(kind: &str, name: &str, eps: f64, severity: u32) -> String {
    let mut tag = format!("robustness/{kind}");
    if !name.is_empty() && name != kind {
        tag.push_str(&format!("/{name}"));
    }
    if eps > 0.0 {
        tag.push_str(&format!("/eps_x255={}", readable(eps * 255.0)));
    }
    if severity > 0 {
        tag.push_str(&format!("/severity={severity}"));
    }
    tag
}

/// Writes `frames` (one sweep or several) as TensorBoard logs under `dir`: the sweep's runs
/// directly in `dir` when there is one sweep, else one folder per sweep.
pub fn write(frames: &Frames, dir: &Path) -> Result<Written> {
    let sweeps: BTreeSet<String> = {
        let c = frames.trials.column("sweep")?.str()?.clone();
        c.iter().flatten().map(str::to_owned).collect()
    };
    let mut written = Written::default();
    for sweep in &sweeps {
        let logdir = if sweeps.len() == 1 {
            dir.to_owned()
        } else {
            dir.join(sweep)
        };
        write_sweep(&frames.for_sweep(sweep)?, sweep, &logdir, &mut written)?;
        written.logdirs.push(logdir);
    }
    Ok(written)
}

fn create(path: &Path) -> Result<std::io::BufWriter<std::fs::File>> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    Ok(std::io::BufWriter::new(
        std::fs::File::create(path).map_err(|e| Error::io(path, e))?,
    ))
}

fn write_events(path: &Path, events: &[Event]) -> Result<()> {
    use std::io::Write;
    let mut out = create(path)?;
    for e in events {
        write_record(&mut out, e).map_err(|e| Error::io(path, e))?;
    }
    out.flush().map_err(|e| Error::io(path, e))
}

fn file_version() -> Event {
    Event {
        wall_time: 0.0,
        step: 0,
        what: Some(What::FileVersion("brain.Event:2".into())),
    }
}

fn write_sweep(frames: &Frames, sweep: &str, logdir: &Path, written: &mut Written) -> Result<()> {
    let trials = &frames.trials;
    let hparams = hparam_columns(trials)?;
    let nullable: BTreeSet<&str> = hparams
        .iter()
        .copied()
        .filter(|c| trials.column(c).is_ok_and(|c| c.null_count() > 0))
        .collect();

    // Each trial's epochs of its last attempt, and its robustness figures.
    let mut epochs: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let e = &frames.epochs;
    let mut last_attempt: BTreeMap<String, f64> = BTreeMap::new();
    for i in 0..e.height() {
        let (Some(id), Some(a)) = (text(e, "trial_id", i), num(e, "attempt", i)) else {
            continue;
        };
        let best = last_attempt.entry(id.clone()).or_insert(a);
        if a > *best {
            *best = a;
            epochs.remove(&id);
        }
        if a >= *best {
            epochs.entry(id).or_default().push(i);
        }
    }
    let mut robust: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    let r = &frames.robustness;
    for i in 0..r.height() {
        let (Some(id), Some(kind), Some(acc)) = (text(r, "trial_id", i), text(r, "kind", i), num(r, "accuracy", i))
        else {
            continue;
        };
        let tag = robustness_tag(
            &kind,
            &text(r, "name", i).unwrap_or_default(),
            num(r, "eps", i).unwrap_or(0.0),
            num(r, "severity", i).unwrap_or(0.0) as u32,
        );
        robust.entry(id).or_default().push((tag, acc));
    }

    let mut names: BTreeSet<String> = BTreeSet::new();
    let mut levels: BTreeMap<&str, Vec<Level>> = BTreeMap::new();
    let mut robust_tags: BTreeSet<String> = BTreeSet::new();
    for i in 0..trials.height() {
        let Some(id) = text(trials, "trial_id", i) else {
            continue;
        };
        let state = text(trials, "state", i).unwrap_or_default();
        let rows = epochs.get(&id).map(Vec::as_slice).unwrap_or_default();
        if rows.is_empty() && state != "succeeded" {
            // Nothing to show yet (pending, or failed before its first epoch).
            continue;
        }
        let point: Vec<(&str, Level)> = hparams.iter().map(|c| (*c, Level::of(trials, c, i))).collect();
        let mut name: Vec<String> = point.iter().map(|(c, l)| l.segment(c)).collect();
        if name.is_empty() {
            name.push("trial".into());
        }
        let mut run = name.join("/");
        if !names.insert(run.clone()) {
            // Two trials with the same factors (e.g. a searched value the factors do not show).
            run = format!("{run}-{}", &id[..id.len().min(8)]);
            names.insert(run.clone());
        }
        for (c, l) in &point {
            let seen = levels.entry(c).or_default();
            if !seen.contains(l) {
                seen.push(l.clone());
            }
        }

        let mut wall = 0.0;
        let start = SessionStartInfo {
            hparams: point
                .iter()
                .map(|(c, l)| ((*c).to_owned(), hparam_value(l, nullable.contains(c))))
                .collect(),
            // A row of its own in the HPARAMS table (seeds are not averaged away).
            group_name: run.clone(),
            start_time_secs: 0.0,
        };
        let mut out = vec![
            file_version(),
            summary(
                0.0,
                0,
                vec![hparams_value(
                    "_hparams_/session_start_info",
                    HParamsData::SessionStart(start),
                )],
            ),
        ];
        let mut last_step = 0;
        for &j in rows {
            let step = num(e, "epoch", j).unwrap_or(0.0) as i64;
            wall += num(e, "seconds", j).unwrap_or(0.0);
            let mut values = Vec::new();
            for (tag, column) in [
                ("train/loss", "train_loss"),
                ("train/acc", "train_acc"),
                ("test/loss", "test_loss"),
                ("test/acc", "test_acc"),
                ("val/loss", "val_loss"),
                ("val/acc", "val_acc"),
                ("lr", "lr"),
                ("epoch/seconds", "seconds"),
            ] {
                if let Some(v) = num(e, column, j) {
                    values.push(scalar(tag, v));
                }
            }
            written.scalars += values.len();
            out.push(summary(wall, step, values));
            last_step = last_step.max(step);
        }
        let mut finals: Vec<Value> = FINAL
            .iter()
            .filter_map(|(tag, column, _)| num(trials, column, i).map(|v| scalar(*tag, v)))
            .collect();
        for (tag, acc) in robust.get(&id).map(Vec::as_slice).unwrap_or_default() {
            robust_tags.insert(tag.clone());
            finals.push(scalar(tag.clone(), *acc));
        }
        written.scalars += finals.len();
        if !finals.is_empty() {
            out.push(summary(wall, last_step, finals));
        }
        let status = match state.as_str() {
            "succeeded" => Some(1),
            "failed" => Some(2),
            "leased" | "running" => None,
            _ => Some(0),
        };
        if let Some(status) = status {
            out.push(summary(
                wall,
                last_step,
                vec![hparams_value(
                    "_hparams_/session_end_info",
                    HParamsData::SessionEnd(SessionEndInfo {
                        status,
                        end_time_secs: wall,
                    }),
                )],
            ));
        }
        write_events(&logdir.join(&run).join(EVENT_FILE), &out)?;
        written.runs += 1;
    }

    // The experiment: every hyper-parameter with the values the sweep has, and the metrics.
    let hparam_infos = hparams
        .iter()
        .map(|c| {
            let as_text = nullable.contains(c);
            let values = levels.get(c).cloned().unwrap_or_default();
            let r#type = match values.first() {
                Some(Level::Number(_)) if !as_text => 3,
                Some(Level::Bool(_)) if !as_text => 2,
                _ => 1,
            };
            HParamInfo {
                name: (*c).to_owned(),
                r#type,
                domain_discrete: Some(prost_types::ListValue {
                    values: values.iter().map(|l| hparam_value(l, as_text)).collect(),
                }),
            }
        })
        .collect();
    let metric = |tag: &str, description: &str| MetricInfo {
        name: Some(MetricName {
            group: String::new(),
            tag: tag.to_owned(),
        }),
        display_name: tag.to_owned(),
        description: description.to_owned(),
    };
    let mut metric_infos: Vec<MetricInfo> = FINAL.iter().map(|(tag, _, what)| metric(tag, what)).collect();
    metric_infos.extend(
        robust_tags
            .iter()
            .map(|t| metric(t, "accuracy under this perturbation (fraction)")),
    );
    let experiment = Experiment {
        name: sweep.to_owned(),
        description: format!("convsweep sweep {sweep}: one session per trial"),
        time_created_secs: 0.0,
        hparam_infos,
        metric_infos,
    };
    write_events(
        &logdir.join(EVENT_FILE),
        &[
            file_version(),
            summary(
                0.0,
                0,
                vec![hparams_value(
                    "_hparams_/experiment",
                    HParamsData::Experiment(experiment),
                )],
            ),
        ],
    )
}
