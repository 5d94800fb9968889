//! Sweep specs (TOML) and their expansion into trials.
//!
//! ```toml
//! name = "demo"              # the sweep id: a-z, 0-9, '-', '_'
//! seeds = 2                  # 0 and 1; or a list, e.g. [0, 7]
//!
//! [dataset]                  # base values of every trial (TrialSpec's sections)
//! name = "synthetic"
//! [model]
//! arch = "resnet"
//! depth = 8
//! [train]
//! epochs = 2
//!
//! [grid]                     # axes: every combination becomes a trial (x every seed)
//! kernel_size = [3, 5]
//! train_mode = ["learned", "frozen"]
//! init = ["kaiming-uniform", "kaiming-normal"]
//! "train.lr" = [0.01, 0.05]  # any field by its dotted path
//! ```
//!
//! Axis names are short aliases ([`AXIS_ALIASES`]) or dotted paths into the trial spec. On an
//! optional field ([`OPTIONAL_AXES`]) the value `"none"` leaves the field out, so that
//! `expansion = ["none", 8, 128]` puts the plain baseline beside LC-blocks in one sweep.
//! Expansion order: seed outermost (so a partly finished sweep covers the whole grid for its
//! first seeds), then axes in the order of their names. Grid points whose canonical specs are
//! equal become one trial.

use std::collections::BTreeMap;

use convsweep_proto::results::StopCell;
use convsweep_proto::{FieldError, SweepId, TrialId, TrialSpec};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::search::Search;
use crate::stopping::{GridFacts, StoppingSpec};

/// Short grid-axis names and the trial-spec field each one sets.
pub const AXIS_ALIASES: &[(&str, &str)] = &[
    ("dataset", "dataset.name"),
    ("arch", "model.arch"),
    ("depth", "model.depth"),
    ("width", "model.width"),
    ("stem", "model.stem"),
    ("patch_size", "model.patch_size"),
    ("kernel_size", "model.kernel_size"),
    ("expansion", "model.expansion"),
    ("inter_op", "model.inter_op"),
    ("train_mode", "model.train_mode"),
    ("init", "model.init"),
    ("init_length", "model.init_length"),
    ("init_decay", "model.init_decay"),
    ("epochs", "train.epochs"),
    ("batch_size", "train.batch_size"),
    ("lr", "train.lr"),
    ("momentum", "train.momentum"),
    ("nesterov", "train.nesterov"),
    ("weight_decay", "train.weight_decay"),
    ("label_smoothing", "train.label_smoothing"),
    ("schedule", "train.schedule"),
    ("augment", "train.augment"),
    ("warmup_epochs", "train.warmup_epochs"),
    ("optimizer", "train.optimizer"),
    ("loss", "train.loss"),
    ("mixup", "train.mixup"),
    ("cutmix", "train.cutmix"),
    ("precision", "train.precision"),
    ("seed", "seed"),
];

const SECTIONS: [&str; 4] = ["dataset", "model", "train", "eval"];

/// Fields that may be absent, where the grid value `"none"` leaves them out: e.g.
/// `expansion = ["none", 8, 128]` sweeps the plain baseline beside LC-blocks.
pub const OPTIONAL_AXES: &[&str] = &[
    "model.expansion",
    "model.depth",
    "model.width",
    "model.stem",
    "model.patch_size",
    "model.init_length",
    "model.init_decay",
    "dataset.train_size",
    "dataset.test_size",
    "dataset.noise",
    "dataset.data_seed",
    "eval.images",
];

/// Seeds of a sweep: a count (0..n) or an explicit list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Seeds {
    Count(u64),
    List(Vec<u64>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSweep {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    seeds: Option<Seeds>,
    #[serde(default)]
    dataset: Option<toml::Table>,
    #[serde(default)]
    model: Option<toml::Table>,
    #[serde(default)]
    train: Option<toml::Table>,
    #[serde(default)]
    eval: Option<toml::Table>,
    #[serde(default)]
    grid: Option<toml::Table>,
    #[serde(default)]
    stopping: Option<toml::Table>,
    #[serde(default)]
    search: Option<toml::Table>,
}

/// One grid axis: the trial-spec field it sets and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// Name as written in `[grid]`.
    pub name: String,
    /// Dotted path into the trial spec.
    pub path: String,
    /// Values, in the order written.
    pub values: Vec<Json>,
}

/// A parsed sweep spec, not yet expanded.
#[derive(Debug, Clone)]
pub struct SweepSpec {
    /// Sweep id (its name).
    pub id: SweepId,
    /// Free text.
    pub description: Option<String>,
    /// Seeds every grid point runs with.
    pub seeds: Vec<u64>,
    /// Base trial (the `dataset`, `model` and `train` sections) as JSON.
    base: serde_json::Map<String, Json>,
    /// Grid axes, sorted by name.
    pub axes: Vec<Axis>,
    /// The stopping rule (`[stopping]`), when there is one.
    pub stopping: Option<StoppingSpec>,
    /// Random-search fields (`[search]`), when there are any: each sample's draws are crossed
    /// with the grid and the seeds.
    pub search: Option<Search>,
}

/// The dotted path and serialised size of the largest value under `map` (lists counted whole).
fn largest_leaf(map: &serde_json::Map<String, Json>, prefix: &str) -> Option<(String, u64)> {
    map.iter()
        .filter_map(|(k, v)| {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Json::Object(inner) => largest_leaf(inner, &path),
                v => Some((path, v.to_string().len() as u64)),
            }
        })
        .max_by_key(|(_, n)| *n)
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::InvalidSpec(FieldError::new(field, message))
}

fn allowed_axes() -> String {
    AXIS_ALIASES.iter().map(|(a, _)| *a).collect::<Vec<_>>().join(", ")
}

/// Trials one sweep may expand to unless the coordinator is told otherwise
/// (`--max-trials-per-sweep`).
pub const DEFAULT_MAX_TRIALS_PER_SWEEP: u64 = 1_000_000;

/// Largest canonical spec of one trial (bytes) unless the coordinator is told otherwise
/// (`--max-spec-bytes`).
pub const DEFAULT_MAX_SPEC_BYTES: u64 = 1 << 20;

/// Largest sum of a sweep's canonical trial specs (bytes) unless the coordinator is told
/// otherwise (`--max-sweep-bytes`).
pub const DEFAULT_MAX_SWEEP_BYTES: u64 = 2 << 30;

impl SweepSpec {
    /// Refuses a sweep whose trials would be larger than `max_spec_bytes` each, or
    /// `max_sweep_bytes` together, from one grid point and the sizes of the grid's values,
    /// before anything else is expanded. The bound is an upper one: each axis counted at its
    /// longest value, the seed at its longest.
    pub fn check_bytes(&self, max_spec_bytes: u64, max_sweep_bytes: u64) -> Result<()> {
        let len = |v: &Json| v.to_string().len() as u64;
        let first = self.point(0)?.canonical_json().len() as u64;
        let mut widest: Option<(String, u64)> = None;
        let mut bound = first;
        for axis in &self.axes {
            let longest = axis.values.iter().map(len).max().unwrap_or(0);
            bound += longest.saturating_sub(len(&axis.values[0]));
            if widest.as_ref().is_none_or(|(_, n)| longest > *n) {
                widest = Some((format!("grid.{}", axis.name), longest));
            }
        }
        let digits = |n: u64| n.to_string().len() as u64;
        let seed_digits = self.seeds.iter().copied().map(digits).max().unwrap_or(1);
        bound += seed_digits.saturating_sub(digits(self.seeds[0]));
        // A drawn number is at most 24 characters (6 significant digits and an exponent); a
        // choice at most its longest value.
        for axis in self.search.iter().flat_map(|s| &s.axes) {
            bound += match &axis.dist {
                crate::search::Distribution::Choice(values) => values.iter().map(len).max().unwrap_or(0),
                _ => 24,
            };
        }
        if bound > max_spec_bytes {
            let base = largest_leaf(&self.base, "");
            let (field, size) = match (widest, base) {
                (Some(a), Some(b)) => {
                    if a.1 >= b.1 {
                        a
                    } else {
                        b
                    }
                }
                (a, b) => a.or(b).unwrap_or(("spec".into(), bound)),
            };
            return Err(invalid(
                field,
                format!(
                    "one trial's canonical spec would be up to {bound} bytes ({size} of them this field's), \
                     over the limit of {max_spec_bytes} bytes per trial (the coordinator's --max-spec-bytes)"
                ),
            ));
        }
        let trials = self.grid_size() as u64;
        match bound.checked_mul(trials) {
            Some(total) if total <= max_sweep_bytes => Ok(()),
            total => Err(invalid(
                if self.seeds.len() > 1 { "seeds" } else { "grid" },
                format!(
                    "{trials} trials of up to {bound} bytes each make {} bytes of specs, over the limit of \
                     {max_sweep_bytes} per sweep (the coordinator's --max-sweep-bytes); split the sweep or raise the limit",
                    total.map_or_else(|| "more than 2^64".to_owned(), |t| t.to_string())
                ),
            )),
        }
    }

    /// Parses a sweep spec, checking its shape (values are checked by [`SweepSpec::expand`]),
    /// with the default size cap ([`DEFAULT_MAX_TRIALS_PER_SWEEP`]).
    pub fn from_toml(text: &str) -> Result<Self> {
        Self::from_toml_capped(text, DEFAULT_MAX_TRIALS_PER_SWEEP)
    }

    /// [`SweepSpec::from_toml`] refusing a spec whose grid times its seeds is over
    /// `max_trials`, before anything is expanded (the seeds included), in checked arithmetic.
    pub fn from_toml_capped(text: &str, max_trials: u64) -> Result<Self> {
        let de = toml::Deserializer::parse(text).map_err(|e| invalid("spec", format!("not valid TOML: {e}")))?;
        let raw: RawSweep = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "spec".to_owned() } else { path };
            let msg = e.inner().message().to_owned();
            let hint = if msg.contains("unknown field") {
                " (top-level keys: name, description, seeds, [dataset], [model], [train], [eval], [grid], [stopping], [search])"
            } else {
                ""
            };
            invalid(field, format!("{msg}{hint}"))
        })?;

        let id = SweepId::parse(&raw.name).map_err(Error::InvalidSpec)?;
        let samples = raw.search.as_ref().map_or(1, crate::search::samples_of);
        check_size(raw.grid.as_ref(), raw.seeds.as_ref(), samples, max_trials)?;
        let seeds = match raw.seeds {
            None => vec![0],
            Some(Seeds::Count(0)) => return Err(invalid("seeds", "must be at least 1 (a count) or a non-empty list")),
            Some(Seeds::Count(n)) => (0..n).collect(),
            Some(Seeds::List(list)) => {
                if list.is_empty() {
                    return Err(invalid("seeds", "must be a non-empty list or a count >= 1"));
                }
                let mut seen = std::collections::BTreeSet::new();
                for s in &list {
                    if !seen.insert(*s) {
                        return Err(invalid("seeds", format!("seed {s} is listed twice")));
                    }
                }
                list
            }
        };

        let mut base = serde_json::Map::new();
        for (name, table) in SECTIONS.iter().zip([raw.dataset, raw.model, raw.train, raw.eval]) {
            if let Some(table) = table {
                base.insert((*name).to_owned(), toml_to_json(toml::Value::Table(table)));
            }
        }

        let mut axes = Vec::new();
        for (name, values) in raw.grid.unwrap_or_default() {
            let path = resolve_axis(&name)?;
            let field = format!("grid.{name}");
            let toml::Value::Array(values) = values else {
                return Err(invalid(field, "an axis is a list of values, e.g. [3, 5]"));
            };
            if values.is_empty() {
                return Err(invalid(field, "an axis needs at least one value"));
            }
            if path == "seed" {
                return Err(invalid(
                    field,
                    "give seeds with the top-level `seeds` key, not as a grid axis",
                ));
            }
            let optional = OPTIONAL_AXES.contains(&path.as_str());
            let values: Vec<Json> = values
                .into_iter()
                .map(toml_to_json)
                .map(|v| match v {
                    Json::String(s) if optional && s == "none" => Json::Null,
                    v => v,
                })
                .collect();
            for (i, v) in values.iter().enumerate() {
                if values[..i].contains(v) {
                    return Err(invalid(field, format!("value {v} is listed twice")));
                }
            }
            axes.push(Axis { name, path, values });
        }
        axes.sort_by(|a, b| a.name.cmp(&b.name));
        for (i, a) in axes.iter().enumerate() {
            if let Some(b) = axes[..i].iter().find(|b| b.path == a.path) {
                return Err(invalid(
                    format!("grid.{}", a.name),
                    format!("sets the same field ({}) as grid.{}", a.path, b.name),
                ));
            }
        }

        let search = match raw.search {
            None => None,
            Some(table) => {
                let taken: Vec<&str> = axes.iter().map(|a| a.path.as_str()).collect();
                let resolve = |name: &str| resolve_axis(name).ok();
                let search = Search::parse(table, &resolve, &taken, &|v| match toml_to_json(v) {
                    Json::String(s) if s == "none" => Json::Null,
                    v => v,
                })
                .map_err(Error::InvalidSpec)?;
                Some(search)
            }
        };
        let mut spec = SweepSpec {
            id,
            description: raw.description,
            seeds,
            base,
            axes,
            stopping: None,
            search,
        };
        if let Some(table) = raw.stopping {
            spec.stopping = spec.parse_stopping(table)?;
        }
        Ok(spec)
    }

    /// Checks a `[stopping]` section against this sweep's grid.
    fn parse_stopping(&self, table: toml::Table) -> Result<Option<StoppingSpec>> {
        let first = self.point(0)?;
        let axis = |path: &str| self.axes.iter().find(|a| a.path == path);
        let min_epochs = match axis("train.epochs") {
            Some(a) => a.values.iter().filter_map(Json::as_u64).min().unwrap_or(0) as u32,
            None => first.train.epochs,
        };
        let all_have_val = match axis("dataset.val_fraction") {
            Some(a) => a.values.iter().all(|v| !v.is_null()),
            None => first.dataset.val_fraction.is_some(),
        };
        let facts = GridFacts {
            axes: self
                .axes
                .iter()
                .map(|a| (a.name.as_str(), a.values.as_slice()))
                .collect(),
            min_epochs,
            all_have_val,
            seeds: self.seeds.len(),
        };
        StoppingSpec::parse(table, &facts, &|name| resolve_axis(name).ok()).map_err(Error::InvalidSpec)
    }

    /// Where each trial sits in the design a stopping rule races: its group, configuration and
    /// whether it is exempt, by trial id (empty without a stopping rule).
    pub fn stopping_cells(&self) -> Result<std::collections::HashMap<String, StopCell>> {
        let mut out = std::collections::HashMap::new();
        let Some(stopping) = &self.stopping else { return Ok(out) };
        for n in 0..self.grid_size() {
            let spec = self.point(n)?;
            let (_, sample, index) = self.place(n);
            let (mut config, mut group, mut exempt) = (Vec::new(), Vec::new(), false);
            // A searched configuration is its drawn values.
            for (axis, v) in self.search.as_ref().map(|s| s.draw(sample)).unwrap_or_default() {
                config.push(format!("{}={}", axis.name, crate::stopping::spec::show(&v)));
            }
            for (axis, &i) in self.axes.iter().zip(&index) {
                let value = &axis.values[i];
                let label = format!("{}={}", axis.name, crate::stopping::spec::show(value));
                if stopping.within.contains(&axis.name) {
                    group.push(label);
                } else {
                    config.push(label);
                }
                if stopping
                    .exempt
                    .iter()
                    .any(|(a, vs)| *a == axis.name && vs.contains(value))
                {
                    exempt = true;
                }
            }
            let join = |v: Vec<String>| if v.is_empty() { "all".to_owned() } else { v.join(" ") };
            out.entry(spec.id().to_string()).or_insert(StopCell {
                config: join(config),
                group: join(group),
                exempt,
            });
        }
        Ok(out)
    }

    /// Number of grid points times search samples times seeds (before merging equal trials).
    pub fn grid_size(&self) -> usize {
        self.axes.iter().map(|a| a.values.len()).product::<usize>() * self.samples() * self.seeds.len()
    }

    /// Search samples (1 without a `[search]`).
    fn samples(&self) -> usize {
        self.search.as_ref().map_or(1, |s| s.samples as usize)
    }

    /// Where point `n` lies: its seed, its search sample and its index on each axis (seed
    /// outermost, then the sample, then the axes, the last fastest).
    fn place(&self, n: usize) -> (u64, u32, Vec<usize>) {
        let points = self.axes.iter().map(|a| a.values.len()).product::<usize>().max(1);
        let per_seed = points * self.samples();
        let seed = self.seeds[n / per_seed];
        let sample = (n % per_seed) / points;
        let mut rest = n % points;
        let mut index = vec![0usize; self.axes.len()];
        for (pos, axis) in self.axes.iter().enumerate().rev() {
            index[pos] = rest % axis.values.len();
            rest /= axis.values.len();
        }
        (seed, sample as u32, index)
    }

    /// Every trial of the sweep: canonical, validated, without duplicates, in expansion order.
    pub fn expand(&self) -> Result<Vec<TrialSpec>> {
        let mut trials = Vec::with_capacity(self.grid_size());
        let mut seen = std::collections::HashSet::new();
        for n in 0..self.grid_size() {
            let spec = self.point(n)?;
            if seen.insert(spec.id()) {
                trials.push(spec);
            }
        }
        Ok(trials)
    }

    /// The spec of grid point `n` in expansion order (seed outermost, then the search sample,
    /// last axis fastest).
    fn point(&self, n: usize) -> Result<TrialSpec> {
        let (seed, sample, index) = self.place(n);
        let mut value = Json::Object(self.base.clone());
        for (axis, &i) in self.axes.iter().zip(&index) {
            set_path(&mut value, &axis.path, axis.values[i].clone());
        }
        let drawn = self.search.as_ref().map(|s| s.draw(sample)).unwrap_or_default();
        for (axis, v) in &drawn {
            set_path(&mut value, &axis.path, v.clone());
        }
        set_path(&mut value, "seed", Json::from(seed));
        trial_from_json(value).map_err(|e| {
            let mut point: BTreeMap<&str, String> = self
                .axes
                .iter()
                .zip(&index)
                .map(|(axis, &i)| (axis.name.as_str(), axis.values[i].to_string()))
                .collect();
            if self.search.is_some() {
                point.insert("search sample", sample.to_string());
            }
            for (axis, v) in &drawn {
                point.insert(axis.name.as_str(), v.to_string());
            }
            grid_point_error(e, &point, seed)
        })
    }

    /// What [`SweepSpec::expand`] gives, as each trial's id and canonical JSON (all a store
    /// keeps), computed on every core: a million-trial sweep is expanded in seconds, and no
    /// parsed spec is held beside its JSON. The first grid point that does not fit is the
    /// error, as in [`SweepSpec::expand`].
    pub fn expand_canonical(&self) -> Result<Vec<(TrialId, String)>> {
        let total = self.grid_size();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        let threads = if total < 4096 { 1 } else { threads };
        let per = total.div_ceil(threads).max(1);
        let parts: Vec<Result<Vec<(TrialId, String)>>> = std::thread::scope(|scope| {
            let running: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        (t * per..((t + 1) * per).min(total))
                            .map(|n| {
                                let json = self.point(n)?.canonical_json();
                                Ok((TrialId::of_canonical_json(&json), json))
                            })
                            .collect::<Result<Vec<_>>>()
                    })
                })
                .collect();
            running
                .into_iter()
                .map(|r| r.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        });
        let mut seen = std::collections::HashSet::with_capacity(total);
        let mut trials = Vec::with_capacity(total);
        for part in parts {
            for (id, json) in part? {
                if seen.insert(id.clone()) {
                    trials.push((id, json));
                }
            }
        }
        Ok(trials)
    }
}

/// The trials of `key=value` settings given on a command line: keys are grid-axis names or
/// dotted paths, values are TOML (`3`, `"frozen"` or `frozen`, lists such as `[3,5,7]` make
/// axes). Unset model fields default to ResNet-20-16, k = 3, learned, kaiming-uniform, on the
/// synthetic dataset.
pub fn trials_from_settings(settings: &[String]) -> Result<Vec<TrialSpec>> {
    let mut grid = String::new();
    for setting in settings {
        let (key, value) = setting.split_once('=').ok_or_else(|| {
            invalid(
                setting.clone(),
                "expected KEY=VALUE, e.g. kernel_size=5 or arch=resnet50",
            )
        })?;
        let key = key.trim();
        let value = value.trim();
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_owned()));
        let list = match parsed {
            toml::Value::Array(a) => toml::Value::Array(a),
            scalar => toml::Value::Array(vec![scalar]),
        };
        grid.push_str(&format!("{} = {list}\n", toml::Value::String(key.to_owned())));
    }
    let text = format!(
        "name = \"settings\"\n[dataset]\nname = \"synthetic\"\n[model]\narch = \"resnet\"\nkernel_size = 3\n\
         train_mode = \"learned\"\ninit = \"kaiming-uniform\"\n[grid]\n{grid}"
    );
    SweepSpec::from_toml(&text)?.expand()
}

/// Refuses a grid (times its search samples and seeds) of more than `max_trials` trials, from
/// the counts alone.
fn check_size(grid: Option<&toml::Table>, seeds: Option<&Seeds>, samples: u64, max_trials: u64) -> Result<()> {
    let mut points: Option<u64> = Some(samples);
    for values in grid.into_iter().flat_map(|g| g.values()) {
        // An empty axis is refused later; counted as one value here, so that it cannot hide
        // a seed count that would not fit in memory (the fuzzer's `seeds = 2^63 - 1` with
        // `dataset = []`).
        let n = values.as_array().map_or(1, |a| a.len().max(1) as u64);
        points = points.and_then(|p| p.checked_mul(n));
    }
    let Some(points) = points.filter(|&p| p <= max_trials) else {
        return Err(invalid(
            "grid",
            format!(
                "the grid (times its search samples) has {} points, over the limit of {max_trials} trials per sweep \
                 (the coordinator's --max-trials-per-sweep)",
                points.map_or_else(|| "more than 2^64".to_owned(), |p| p.to_string())
            ),
        ));
    };
    let (count, written) = match seeds {
        None => (1, "1 (the default)".to_owned()),
        Some(Seeds::Count(n)) => (*n, n.to_string()),
        Some(Seeds::List(list)) => (list.len() as u64, format!("a list of {}", list.len())),
    };
    match points.checked_mul(count) {
        Some(total) if total <= max_trials => Ok(()),
        total => Err(invalid(
            "seeds",
            format!(
                "seeds = {written} times the grid's {points} point(s) is {} trials, over the limit of \
                 {max_trials} per sweep (the coordinator's --max-trials-per-sweep); split the sweep or raise the limit",
                total.map_or_else(|| "more than 2^64".to_owned(), |t| t.to_string())
            ),
        )),
    }
}

fn grid_point_error(e: FieldError, point: &BTreeMap<&str, String>, seed: u64) -> Error {
    let mut at: Vec<String> = point.iter().map(|(k, v)| format!("{k}={v}")).collect();
    at.push(format!("seed={seed}"));
    let hint = if e.message.starts_with("missing field") {
        " (set it in its section or as a [grid] axis)"
    } else {
        ""
    };
    Error::InvalidSpec(FieldError::new(
        e.field,
        format!("{}{hint} (grid point {})", e.message, at.join(", ")),
    ))
}

fn resolve_axis(name: &str) -> Result<String> {
    if let Some((_, path)) = AXIS_ALIASES.iter().find(|(alias, _)| *alias == name) {
        return Ok((*path).to_owned());
    }
    match name.split_once('.') {
        Some((section, rest)) if SECTIONS.contains(&section) && !rest.is_empty() && !rest.contains('.') => {
            Ok(name.to_owned())
        }
        _ => Err(invalid(
            format!("grid.{name}"),
            format!(
                "unknown axis; use one of {} or a dotted field path such as \"train.lr\" or \"dataset.train_size\"",
                allowed_axes()
            ),
        )),
    }
}

fn set_path(value: &mut Json, path: &str, v: Json) {
    let mut cur = value;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let obj = match cur {
            Json::Object(map) => map,
            other => {
                *other = Json::Object(serde_json::Map::new());
                let Json::Object(map) = other else { unreachable!() };
                map
            }
        };
        if parts.peek().is_none() {
            obj.insert(part.to_owned(), v);
            return;
        }
        cur = obj
            .entry(part.to_owned())
            .or_insert_with(|| Json::Object(serde_json::Map::new()));
    }
}

/// Deserialises, canonicalises and validates one trial, naming the field that is wrong.
fn trial_from_json(value: Json) -> std::result::Result<TrialSpec, FieldError> {
    // The plain deserializer first (a million grid points go through here); the one that
    // tracks the path only to name the field of a point that does not fit.
    let parsed = match TrialSpec::deserialize(&value) {
        Ok(spec) => Ok(spec),
        Err(_) => serde_path_to_error::deserialize(value),
    };
    let mut spec: TrialSpec = parsed.map_err(|e| {
        let path = e.path().to_string();
        FieldError::new(
            if path == "." { "spec".to_owned() } else { path },
            e.inner().to_string(),
        )
    })?;
    spec.canonicalize();
    spec.validate()?;
    Ok(spec)
}

fn toml_to_json(v: toml::Value) -> Json {
    match v {
        toml::Value::String(s) => Json::String(s),
        toml::Value::Integer(i) => Json::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number),
        toml::Value::Boolean(b) => Json::Bool(b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(a) => Json::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Json::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use convsweep_proto::spec::{InitScheme, InterOp, TrainMode};

    const DEMO: &str = r#"
name = "demo"
seeds = 1

[dataset]
name = "synthetic"
train_size = 200
test_size = 100

[model]
arch = "resnet"
depth = 8
width = 8

[train]
epochs = 2
batch_size = 64
lr = 0.05

[grid]
kernel_size = [3, 5]
train_mode = ["learned", "frozen"]
init = ["kaiming-uniform", "kaiming-normal"]
"#;

    fn err_of(text: &str) -> FieldError {
        match SweepSpec::from_toml(text).and_then(|s| s.expand()) {
            Err(Error::InvalidSpec(e)) => e,
            other => panic!("expected an invalid spec, got {other:?}"),
        }
    }

    #[test]
    fn demo_expands_to_the_full_grid() {
        let spec = SweepSpec::from_toml(DEMO).unwrap();
        assert_eq!(spec.id.as_str(), "demo");
        assert_eq!(spec.grid_size(), 8);
        let trials = spec.expand().unwrap();
        assert_eq!(trials.len(), 8);
        let mut combos: Vec<_> = trials
            .iter()
            .map(|t| (t.model.kernel_size, t.model.train_mode, t.model.init))
            .collect();
        combos.sort_by_key(|c| format!("{c:?}"));
        combos.dedup();
        assert_eq!(combos.len(), 8);
        for t in &trials {
            assert_eq!(t.model.depth, Some(8));
            assert_eq!(t.train.epochs, 2);
            assert_eq!(t.train.lr, 0.05);
            // Untouched recipe fields keep the paper's defaults.
            assert_eq!(t.train.weight_decay, 1e-2);
            assert_eq!(t.seed, 0);
        }
        // Order: axes sorted by name, last fastest: init, kernel_size, train_mode.
        assert_eq!(trials[0].model.init, InitScheme::KaimingUniform);
        assert_eq!(trials[0].model.kernel_size, 3);
        assert_eq!(trials[0].model.train_mode, TrainMode::Learned);
        assert_eq!(trials[1].model.train_mode, TrainMode::Frozen);
        assert_eq!(trials[2].model.kernel_size, 5);
        assert_eq!(trials[4].model.init, InitScheme::KaimingNormal);
    }

    #[test]
    fn none_on_an_optional_axis_leaves_the_field_out() {
        let base = "name = \"x\"\n[dataset]\nname = \"synthetic\"\n[model]\narch = \"resnet\"\n\
                    kernel_size = 3\ntrain_mode = \"frozen\"\ninit = \"kaiming-uniform\"\n";
        let expand = |text: &str| SweepSpec::from_toml(text).unwrap().expand().unwrap();
        let trials = expand(&format!("{base}[grid]\nexpansion = [\"none\", 8]\n"));
        let expansions: Vec<_> = trials.iter().map(|t| t.model.expansion).collect();
        assert_eq!(expansions, [None, Some(8)]);
        // The baseline is the very trial of a spec that never names the field.
        assert_eq!(trials[0].id(), expand(base)[0].id());
        // inter_op's "none" is a value (no op), not an absence.
        let ops: Vec<_> = expand(&format!(
            "{base}expansion = 8\n[grid]\ninter_op = [\"none\", \"relu\"]\n"
        ))
        .iter()
        .map(|t| t.model.inter_op)
        .collect();
        assert_eq!(ops, [InterOp::None, InterOp::Relu]);
        // On a field that cannot be absent, "none" is an ordinary value and refused by name.
        let e = err_of(&format!("{base}[grid]\ntrain_mode = [\"learned\", \"none\"]\n"));
        assert_eq!(e.field, "model.train_mode", "{e}");
    }

    #[test]
    fn the_paper_specs_expand_to_the_papers_cells_with_its_recipe() {
        let table1 = SweepSpec::from_toml(include_str!("../../examples/paper/table1.toml")).unwrap();
        let table3 = SweepSpec::from_toml(include_str!("../../examples/paper/table3.toml")).unwrap();
        let (t1, t3) = (table1.expand().unwrap(), table3.expand().unwrap());
        assert_eq!((t1.len(), t3.len()), (4 * 2 * 2 * 4, 4 * 2 * 4));
        for t in t1.iter().chain(&t3) {
            let (m, r) = (&t.model, &t.train);
            assert_eq!((m.kernel_size, m.init), (3, InitScheme::KaimingUniform));
            assert_eq!((m.depth, m.width), (Some(20), Some(16)));
            assert_eq!(
                (r.epochs, r.batch_size, r.lr, r.momentum, r.nesterov),
                (75, 256, 0.01, 0.9, true)
            );
            assert_eq!((r.weight_decay, r.label_smoothing), (0.01, 0.1));
            assert_eq!((t.dataset.train_size, t.dataset.test_size), (None, None));
        }
        let mut cells: Vec<_> = t1
            .iter()
            .map(|t| (format!("{:?}", t.dataset.name), t.model.expansion, t.model.train_mode))
            .collect();
        cells.sort_by_key(|c| format!("{c:?}"));
        cells.dedup();
        assert_eq!(
            cells.len(),
            4 * 2 * 2,
            "every dataset x baseline/LC x128 x learned/frozen"
        );
        assert!(t1.iter().all(|t| matches!(t.model.expansion, None | Some(128))));
        assert!(t3.iter().all(|t| t.model.expansion == Some(64)));

        // Table 2: ImageNet ResNet-18d, 5 settings of E x learned/frozen, one run, timm's A2 as
        // the report's paper check expects it.
        use convsweep_proto::spec::{Augment, DatasetName, Loss, Optimizer, Precision};
        let table2 = SweepSpec::from_toml(include_str!("../../examples/paper/table2-imagenet.toml")).unwrap();
        let t2 = table2.expand().unwrap();
        assert_eq!(t2.len(), 5 * 2);
        let mut es: Vec<_> = t2.iter().map(|t| t.model.expansion).collect();
        es.dedup();
        assert_eq!(es, [None, Some(1), Some(8), Some(64), Some(128)]);
        for t in &t2 {
            let (d, r) = (&t.dataset, &t.train);
            assert_eq!(
                (d.name, d.image_size, d.classes.as_ref()),
                (DatasetName::Imagefolder, Some(224), None)
            );
            assert_eq!((t.model.arch.as_str(), t.model.kernel_size), ("resnet18d", 3));
            assert_eq!(t.model.init, InitScheme::KaimingNormalFanOut);
            assert_eq!(
                (r.epochs, r.warmup_epochs, r.optimizer, r.loss),
                (300, 5, Optimizer::Lamb, Loss::Bce)
            );
            assert_eq!((r.mixup, r.cutmix, r.precision), (0.1, 1.0, Precision::Bf16));
            assert_eq!(r.augment, Augment::RandomResizedCrop);
            assert_eq!((d.train_size, d.test_size), (None, None));
        }
    }

    #[test]
    fn an_empty_axis_does_not_hide_a_seed_count_too_large_to_hold() {
        // Found by the spec fuzzer: 0 grid points times 2^63 seeds passed the size check and
        // the seed list overflowed its allocation.
        let e = err_of("name = \"x\"\nseeds = 9223372036854775807\n[grid]\ndataset = []\n");
        assert_eq!(e.field, "seeds");
        assert!(e.message.contains("over the limit"), "{e}");
    }

    #[test]
    fn expansion_is_deterministic_and_key_order_free() {
        let a = SweepSpec::from_toml(DEMO).unwrap().expand().unwrap();
        let reordered = DEMO.replace(
            "kernel_size = [3, 5]\ntrain_mode = [\"learned\", \"frozen\"]",
            "train_mode = [\"learned\", \"frozen\"]\nkernel_size = [3, 5]",
        );
        assert_ne!(reordered, DEMO);
        let b = SweepSpec::from_toml(&reordered).unwrap().expand().unwrap();
        let ids = |v: &[TrialSpec]| v.iter().map(|t| t.id()).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b));
    }

    #[test]
    fn seeds_count_list_and_dotted_axes() {
        let text = DEMO.replace("seeds = 1", "seeds = [3, 9]").replace(
            "[grid]\n",
            "[grid]\n\"train.lr\" = [0.1, 0.2]\n\"dataset.train_size\" = [100]\n",
        );
        let trials = SweepSpec::from_toml(&text).unwrap().expand().unwrap();
        assert_eq!(trials.len(), 2 * 8 * 2);
        assert_eq!(trials[0].seed, 3);
        assert_eq!(trials.last().unwrap().seed, 9);
        assert!(trials.iter().all(|t| t.dataset.train_size == Some(100)));
        assert!(trials.iter().any(|t| t.train.lr == 0.2));
        let four = SweepSpec::from_toml(&DEMO.replace("seeds = 1", "seeds = 4")).unwrap();
        assert_eq!(four.seeds, vec![0, 1, 2, 3]);
    }

    #[test]
    fn the_parallel_expansion_is_the_expansion() {
        // Enough points for several threads, with equal points merged (depth 20 is the default).
        let text = DEMO
            .replace("seeds = 1", "seeds = 700")
            .replace("depth = 8\n", "")
            .replace("[grid]\n", "[grid]\ndepth = [20, 14]\n");
        let spec = SweepSpec::from_toml(&text).unwrap();
        let plain: Vec<(TrialId, String)> = spec
            .expand()
            .unwrap()
            .iter()
            .map(|t| (t.id(), t.canonical_json()))
            .collect();
        assert_eq!(spec.expand_canonical().unwrap(), plain);
        assert_eq!(plain.len(), 700 * 16);
        // The first bad point is the error, whichever thread meets it.
        let bad = text.replace(
            "init = [\"kaiming-uniform\", \"kaiming-normal\"]",
            "init = [\"kaiming-uniform\", \"nope\"]",
        );
        let spec = SweepSpec::from_toml(&bad).unwrap();
        assert_eq!(
            spec.expand_canonical().unwrap_err().to_string(),
            spec.expand().unwrap_err().to_string()
        );
    }

    #[test]
    fn oversized_sweeps_are_refused_before_expansion() {
        // 8 grid points; ten billion seeds would need 80 GB just to list them.
        let huge = DEMO.replace("seeds = 1", "seeds = 10000000000");
        let Err(Error::InvalidSpec(e)) = SweepSpec::from_toml(&huge) else {
            panic!("a ten-billion-seed sweep was accepted");
        };
        assert_eq!(e.field, "seeds");
        for part in [
            "10000000000",
            "8 point(s)",
            "80000000000 trials",
            "1000000 per sweep",
            "--max-trials-per-sweep",
        ] {
            assert!(e.message.contains(part), "{part:?} missing from {:?}", e.message);
        }
        // Products that overflow 64 bits are refused, not wrapped.
        let overflow = DEMO.replace("seeds = 1", &format!("seeds = {}", u64::MAX / 2));
        let Err(Error::InvalidSpec(e)) = SweepSpec::from_toml(&overflow) else {
            panic!()
        };
        assert!(e.message.contains("more than 2^64"), "{}", e.message);
        // A grid too large by itself names the grid.
        let axes: String = (0..21).map(|i| format!("\"train.x{i}\" = [1, 2]\n")).collect();
        let wide = DEMO.replace("[grid]\n", &format!("[grid]\n{axes}"));
        let Err(Error::InvalidSpec(e)) = SweepSpec::from_toml(&wide) else {
            panic!()
        };
        assert_eq!(e.field, "grid");
        assert!(e.message.contains("16777216 points"), "{}", e.message);
        // The limit is the caller's: 8 trials pass a cap of 8 and not of 7.
        assert!(SweepSpec::from_toml_capped(DEMO, 8).is_ok());
        let Err(Error::InvalidSpec(e)) = SweepSpec::from_toml_capped(DEMO, 7) else {
            panic!()
        };
        assert!(e.message.contains("over the limit of 7"), "{}", e.message);
    }

    #[test]
    fn equal_grid_points_become_one_trial() {
        // Depth 20 is the default: both values resolve to the same canonical spec.
        let text = DEMO
            .replace("depth = 8\n", "")
            .replace("[grid]\n", "[grid]\ndepth = [20, 14]\n");
        let with_default = text.replace("depth = [20, 14]", "depth = [20]");
        let n = SweepSpec::from_toml(&with_default).unwrap().expand().unwrap().len();
        assert_eq!(n, 8);
        let n2 = SweepSpec::from_toml(&text).unwrap().expand().unwrap().len();
        assert_eq!(n2, 16);
    }

    #[test]
    fn errors_name_the_field_and_what_is_allowed() {
        let cases: &[(&str, &str, &str)] = &[
            ("name = \"demo\"\n[grid\n", "spec", "not valid TOML"),
            (&DEMO.replace("name = \"demo\"", "name = \"Demo!\""), "name", "a-z"),
            (&DEMO.replace("seeds = 1", "seeds = 0"), "seeds", "at least 1"),
            (&DEMO.replace("seeds = 1", "seeds = [1, 1]"), "seeds", "twice"),
            (&DEMO.replace("seeds = 1", "seed = 1"), "seed", "unknown field"),
            (
                &DEMO.replace("kernel_size = [3, 5]", "kernel_size = [3, 4]"),
                "model.kernel_size",
                "odd",
            ),
            (
                &DEMO.replace("kernel_size = [3, 5]", "kernel_size = 3"),
                "grid.kernel_size",
                "list",
            ),
            (
                &DEMO.replace("kernel_size = [3, 5]", "kernel_size = []"),
                "grid.kernel_size",
                "at least one",
            ),
            (
                &DEMO.replace("kernel_size = [3, 5]", "kernel_size = [3, 3]"),
                "grid.kernel_size",
                "twice",
            ),
            (
                &DEMO.replace("kernel_size = [3, 5]", "kernal_size = [3, 5]"),
                "grid.kernal_size",
                "kernel_size",
            ),
            (
                &DEMO.replace("kernel_size = [3, 5]", "\"model.kernal\" = [3, 5]"),
                "model.kernal",
                "expected one of",
            ),
            (
                &DEMO.replace("\"kaiming-normal\"]", "\"kaiming\"]"),
                "model.init",
                "kaiming-uniform",
            ),
            (
                &DEMO.replace("\"frozen\"]", "\"fixed\"]"),
                "model.train_mode",
                "learned",
            ),
            (
                &DEMO.replace("\"synthetic\"", "\"imagenet\""),
                "dataset.name",
                "cifar10",
            ),
            (
                &DEMO.replace("\"synthetic\"", "\"cifar10\""),
                "dataset.root",
                "required",
            ),
            (&DEMO.replace("depth = 8", "depth = 9"), "model.depth", "6n+2"),
            (
                &DEMO.replace("epochs = 2", "epochs = \"two\""),
                "train.epochs",
                "invalid type",
            ),
            (
                &DEMO.replace("epochs = 2", "epoch = 2"),
                "train.epoch",
                "expected one of",
            ),
            (&DEMO.replace("lr = 0.05", "lr = 0.0"), "train.lr", "> 0"),
            (&DEMO.replace("[grid]\n", "[grid]\nseed = [1]\n"), "grid.seed", "seeds"),
            (
                &DEMO.replace("[grid]\n", "[grid]\n\"model.kernel_size\" = [7]\n"),
                "grid.model.kernel_size",
                "same field",
            ),
            (
                &DEMO.replace("kernel_size = [3, 5]\n", ""),
                "model",
                "missing field `kernel_size`",
            ),
        ];
        for (text, field, needle) in cases {
            let e = err_of(text);
            assert_eq!(&e.field, field, "{e}");
            assert!(e.to_string().contains(needle), "{e} should mention {needle}");
        }
    }

    #[test]
    fn settings_from_a_command_line() {
        let set = |v: &[&str]| trials_from_settings(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let t = set(&[]).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].model.depth, t[0].model.kernel_size), (Some(20), 3));
        let t = set(&[
            "arch=resnet50",
            "stem=imagenet",
            "kernel_size=[3,5]",
            "train_mode=frozen",
        ])
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].model.kernel_size, 5);
        assert_eq!(t[0].model.train_mode, TrainMode::Frozen);
        assert_eq!(t[0].model.depth, None);
        let t = set(&["model.expansion=8", "init=correlated"]).unwrap();
        assert_eq!(
            (t[0].model.expansion, t[0].model.init),
            (Some(8), InitScheme::Correlated)
        );
        let e = set(&["kernel_size"]).unwrap_err().to_string();
        assert!(e.contains("KEY=VALUE"), "{e}");
        let e = set(&["arch=vgg"]).unwrap_err().to_string();
        assert!(e.contains("model.arch") && e.contains("resnet50"), "{e}");
    }

    #[test]
    fn a_search_crosses_its_draws_with_the_grid_and_seeds_and_extends_by_new_draws_only() {
        let search = |samples: u32| {
            format!(
                "{DEMO}\n[search]\nsamples = {samples}\n\"train.lr\" = {{ loguniform = [1e-3, 1e-1] }}\n\
                 \"train.weight_decay\" = {{ uniform = [0.0, 0.001] }}\n"
            )
        };
        let four = SweepSpec::from_toml(&search(4)).unwrap();
        let trials = four.expand().unwrap();
        // 2 kernel sizes x 2 train modes x 2 inits x 4 samples x 1 seed.
        assert_eq!(trials.len(), 32);
        let lrs: std::collections::BTreeSet<String> = trials.iter().map(|t| t.train.lr.to_string()).collect();
        assert_eq!(lrs.len(), 4, "one lr per sample, shared by the grid's points: {lrs:?}");
        assert!(trials.iter().all(|t| (1e-3..1e-1).contains(&t.train.lr)));
        // The same spec gives the same trials; a larger sample count only adds trials.
        let ids_of = |samples: u32| -> Vec<String> {
            let spec = SweepSpec::from_toml(&search(samples)).unwrap();
            spec.expand().unwrap().iter().map(|t| t.id().to_string()).collect()
        };
        let ids: Vec<String> = trials.iter().map(|t| t.id().to_string()).collect();
        assert_eq!(ids_of(4), ids);
        let six: std::collections::BTreeSet<String> = ids_of(6).into_iter().collect();
        assert_eq!(six.len(), 48);
        assert!(
            ids.iter().all(|id| six.contains(id)),
            "every draw of 4 samples is among those of 6"
        );
        // A searched field that is also a grid axis, and a draw a trial refuses, are named.
        let e = err_of(&format!(
            "{DEMO}\n[search]\nsamples = 2\nkernel_size = {{ choice = [3, 5] }}\n"
        ));
        assert!(
            e.field == "search.kernel_size" && e.message.contains("[grid] axis too"),
            "{e}"
        );
        let e = err_of(&format!(
            "{DEMO}\n[search]\nsamples = 2\n\"train.momentum\" = {{ uniform = [-1.0, -0.5] }}\n"
        ));
        assert!(
            e.field.contains("momentum") && e.message.contains("search sample"),
            "{e}"
        );
        // Sizes count the samples before anything is drawn.
        let e = SweepSpec::from_toml_capped(&search(1000), 100).unwrap_err().to_string();
        assert!(e.contains("8000") && e.contains("search samples"), "{e}");
    }

    #[test]
    fn value_errors_say_which_grid_point() {
        let e = err_of(&DEMO.replace("kernel_size = [3, 5]", "kernel_size = [3, 4]"));
        assert!(e.message.contains("kernel_size=4"), "{e}");
        assert!(e.message.contains("seed=0"), "{e}");
    }
}
