//! `[stopping]`: which rule, on which metric, at which rungs, inside which comparison groups,
//! with which cells exempt; parsed and checked against the sweep's grid.

use serde::Deserialize;
use serde_json::Value as Json;

use convsweep_proto::FieldError;

/// A stopping rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Successive halving, decided once every configuration of a group reached the rung:
    /// independent of arrival order.
    SuccessiveHalving,
    /// Asynchronous successive halving: each configuration decided as it reaches the rung,
    /// against what its group had recorded there by then (order-dependent).
    Asha,
    /// The median stopping rule, decided like successive halving: below the group's median at
    /// the rung stops.
    Median,
}

impl Rule {
    /// The name in a spec and in decisions.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::SuccessiveHalving => "successive-halving",
            Rule::Asha => "asha",
            Rule::Median => "median",
        }
    }
}

/// What decisions are made on: a metric of the epochs, on the validation split or the training
/// set, never on the test set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Validation accuracy (higher is better).
    ValAcc,
    /// Validation loss (lower is better).
    ValLoss,
    /// Training accuracy of the epoch.
    TrainAcc,
    /// Training loss of the epoch.
    TrainLoss,
}

impl Metric {
    /// Every accepted name.
    pub const ALLOWED: &'static str = "val_acc, val_loss, train_acc, train_loss";

    /// The name in a spec and in decisions.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::ValAcc => "val_acc",
            Metric::ValLoss => "val_loss",
            Metric::TrainAcc => "train_acc",
            Metric::TrainLoss => "train_loss",
        }
    }

    /// Whether a larger value is better.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::ValAcc | Metric::TrainAcc)
    }

    /// Whether it needs a validation split.
    pub fn needs_val(self) -> bool {
        matches!(self, Metric::ValAcc | Metric::ValLoss)
    }

    /// Its value in an epoch's metrics (none when the epoch has no validation split).
    pub fn of(self, e: &convsweep_proto::pb::EpochMetrics) -> Option<f64> {
        match self {
            Metric::ValAcc => e.val_acc,
            Metric::ValLoss => e.val_loss,
            Metric::TrainAcc => Some(e.train_acc),
            Metric::TrainLoss => Some(e.train_loss),
        }
    }
}

/// A parsed and checked `[stopping]` section (absent or `rule = "none"`: no section).
#[derive(Debug, Clone, PartialEq)]
pub struct StoppingSpec {
    /// The rule.
    pub rule: Rule,
    /// What it decides on.
    pub metric: Metric,
    /// Epochs at which decisions are made, ascending.
    pub rungs: Vec<u32>,
    /// Share of a group's configurations kept at each rung (successive halving, ASHA).
    pub keep: f64,
    /// Axis names whose values make the comparison groups (decided inside each).
    pub within: Vec<String>,
    /// Cells that always run to the end: axis name and the values that exempt.
    pub exempt: Vec<(String, Vec<Json>)>,
    /// Seeds of a configuration whose metric is pooled (the lowest seeds of the sweep).
    pub min_seeds: u32,
    /// Groups run in full first (in group order) to measure rank fidelity before pruning.
    pub pilot: u32,
    /// With a pilot: no pruning at a rung whose pilot Kendall tau is below this.
    pub min_tau: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStopping {
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    metric: Option<String>,
    #[serde(default)]
    rungs: Option<Vec<i64>>,
    #[serde(default)]
    min_epochs: Option<i64>,
    #[serde(default)]
    eta: Option<f64>,
    #[serde(default)]
    keep: Option<f64>,
    #[serde(default)]
    within: Option<Vec<String>>,
    #[serde(default)]
    exempt: Option<toml::Table>,
    #[serde(default)]
    min_seeds: Option<i64>,
    #[serde(default)]
    pilot: Option<i64>,
    #[serde(default)]
    min_tau: Option<f64>,
}

fn err(field: &str, message: impl Into<String>) -> FieldError {
    FieldError::new(format!("stopping.{field}"), message)
}

/// What the sweep's grid offers a `[stopping]` section to be checked against.
#[derive(Debug, Clone)]
pub struct GridFacts<'a> {
    /// Axis names (as written) with the values each takes (as expanded).
    pub axes: Vec<(&'a str, &'a [Json])>,
    /// The fewest epochs any trial trains.
    pub min_epochs: u32,
    /// Whether every trial holds out a validation split.
    pub all_have_val: bool,
    /// Seeds per configuration.
    pub seeds: usize,
}

impl StoppingSpec {
    /// How many of `n` ranked configurations a rung keeps: `ceil(keep * n)`, at least one.
    pub fn kept_of(&self, n: usize) -> usize {
        ((self.keep * n as f64).ceil() as usize).max(1)
    }

    /// Parses a `[stopping]` table: `None` for `rule = "none"` (the default). Every error
    /// names its field and what is allowed.
    pub fn parse(
        table: toml::Table,
        grid: &GridFacts<'_>,
        resolve: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<StoppingSpec>, FieldError> {
        let raw: RawStopping = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            let msg = e.inner().to_string();
            let hint = if msg.contains("unknown field") {
                " (keys: rule, metric, rungs, min_epochs, eta, keep, within, exempt, min_seeds, pilot, min_tau)"
            } else {
                ""
            };
            FieldError::new(
                if path == "." {
                    "stopping".to_owned()
                } else {
                    format!("stopping.{path}")
                },
                format!("{msg}{hint}"),
            )
        })?;
        let rule = match raw.rule.as_deref().unwrap_or("none") {
            "none" => return Ok(None),
            "successive-halving" => Rule::SuccessiveHalving,
            "asha" => Rule::Asha,
            "median" => Rule::Median,
            other => {
                return Err(err(
                    "rule",
                    format!("unknown rule {other:?}; one of \"successive-halving\", \"asha\", \"median\", \"none\""),
                ));
            }
        };
        let metric = match raw.metric.as_deref().unwrap_or("val_acc") {
            "val_acc" => Metric::ValAcc,
            "val_loss" => Metric::ValLoss,
            "train_acc" => Metric::TrainAcc,
            "train_loss" => Metric::TrainLoss,
            m if m.starts_with("test") => {
                return Err(err(
                    "metric",
                    format!(
                        "{m:?}: decisions are made on a validation split, never on the test set; one of {} \
                         (val_* with dataset.val_fraction)",
                        Metric::ALLOWED
                    ),
                ));
            }
            m => {
                return Err(err(
                    "metric",
                    format!("unknown metric {m:?}; one of {}", Metric::ALLOWED),
                ));
            }
        };
        if metric.needs_val() && !grid.all_have_val {
            return Err(err(
                "metric",
                format!(
                    "{} needs a validation split: set dataset.val_fraction (e.g. 0.1) for every trial",
                    metric.as_str()
                ),
            ));
        }
        let eta = raw.eta.unwrap_or(3.0);
        if !(eta.is_finite() && eta > 1.0) {
            return Err(err("eta", format!("must be a number > 1 (3: keep a third), got {eta}")));
        }
        let rungs: Vec<u32> = match (raw.rungs, raw.min_epochs) {
            (Some(_), Some(_)) => return Err(err("rungs", "give rungs or min_epochs (with eta), not both")),
            (Some(list), None) => {
                if list.is_empty() {
                    return Err(err("rungs", "needs at least one epoch"));
                }
                let mut out = Vec::new();
                for (i, r) in list.iter().enumerate() {
                    let Ok(r) = u32::try_from(*r) else {
                        return Err(err(&format!("rungs[{i}]"), format!("an epoch >= 1, got {r}")));
                    };
                    if r == 0 || out.last().is_some_and(|&p| p >= r) {
                        return Err(err(
                            &format!("rungs[{i}]"),
                            format!("rungs are epochs >= 1 in ascending order, got {r} after {:?}", out),
                        ));
                    }
                    out.push(r);
                }
                out
            }
            (None, Some(m)) => {
                let Ok(m) = u32::try_from(m) else {
                    return Err(err("min_epochs", format!("an epoch >= 1, got {m}")));
                };
                if m == 0 {
                    return Err(err("min_epochs", "an epoch >= 1, got 0"));
                }
                let mut out = Vec::new();
                let mut r = f64::from(m);
                while (r.round() as u32) < grid.min_epochs {
                    let e = r.round() as u32;
                    if out.last() != Some(&e) {
                        out.push(e);
                    }
                    r *= eta;
                }
                out
            }
            (None, None) => {
                return Err(err(
                    "rungs",
                    "say where decisions are made: rungs = [5, 15] or min_epochs = 5 (with eta)",
                ));
            }
        };
        if let Some(&last) = rungs.last()
            && last >= grid.min_epochs
        {
            return Err(err(
                "rungs",
                format!(
                    "rung {last} is not before the end of training: train.epochs is {} (the fewest of any trial); \
                     rungs must be below it",
                    grid.min_epochs
                ),
            ));
        }
        if rungs.is_empty() {
            return Err(err(
                "min_epochs",
                format!("leaves no rung below train.epochs = {}", grid.min_epochs),
            ));
        }
        let keep = match (rule, raw.keep) {
            (Rule::Median, Some(_)) => {
                return Err(err(
                    "keep",
                    "the median rule keeps what is at or above the group's median; keep is for successive-halving and asha",
                ));
            }
            (_, Some(k)) if !(k.is_finite() && k > 0.0 && k < 1.0) => {
                return Err(err("keep", format!("the share kept at each rung, in (0, 1), got {k}")));
            }
            (_, Some(k)) => k,
            (_, None) => 1.0 / eta,
        };
        let axis_named = |field: &str, name: &str| -> Result<usize, FieldError> {
            let path = resolve(name);
            grid.axes
                .iter()
                .position(|(a, _)| *a == name || path.as_deref().is_some_and(|p| resolve(a).as_deref() == Some(p)))
                .ok_or_else(|| {
                    err(
                        field,
                        format!(
                            "{name:?} does not vary in this sweep's grid; its axes: {}",
                            if grid.axes.is_empty() {
                                "none".to_owned()
                            } else {
                                grid.axes.iter().map(|(a, _)| *a).collect::<Vec<_>>().join(", ")
                            }
                        ),
                    )
                })
        };
        let mut within = Vec::new();
        for (i, name) in raw.within.unwrap_or_default().iter().enumerate() {
            let axis = axis_named(&format!("within[{i}]"), name)?;
            let name = grid.axes[axis].0.to_owned();
            if within.contains(&name) {
                return Err(err(&format!("within[{i}]"), format!("{name:?} is listed twice")));
            }
            within.push(name);
        }
        let mut exempt = Vec::new();
        for (name, value) in raw.exempt.unwrap_or_default() {
            let field = format!("exempt.{name}");
            let axis = axis_named(&field, &name)?;
            let (axis_name, values) = grid.axes[axis];
            let wanted: Vec<Json> = match value {
                toml::Value::Array(a) => a.into_iter().map(axis_value).collect(),
                v => vec![axis_value(v)],
            };
            // "none" is an absent optional field, or the value "none" of an axis such as inter_op.
            let wanted: Vec<Json> = wanted
                .into_iter()
                .map(|w| {
                    let literal = Json::String("none".into());
                    if w.is_null() && !values.contains(&w) && values.contains(&literal) {
                        literal
                    } else {
                        w
                    }
                })
                .collect();
            for w in &wanted {
                if !values.contains(w) {
                    return Err(err(
                        &field,
                        format!(
                            "{} is not a value of axis {axis_name}: {}",
                            show(w),
                            values.iter().map(show).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
            if within.iter().any(|w| w == axis_name) {
                return Err(err(
                    &field,
                    format!("{axis_name} makes the groups (within); exempt a level of another axis"),
                ));
            }
            exempt.push((axis_name.to_owned(), wanted));
        }
        let min_seeds = raw.min_seeds.unwrap_or(1);
        if min_seeds < 1 || min_seeds as u64 > grid.seeds as u64 {
            return Err(err(
                "min_seeds",
                format!("between 1 and the sweep's {} seed(s), got {min_seeds}", grid.seeds),
            ));
        }
        let pilot = raw.pilot.unwrap_or(0);
        let Ok(pilot) = u32::try_from(pilot) else {
            return Err(err("pilot", format!("a number of groups >= 0, got {pilot}")));
        };
        if pilot > 0 && within.is_empty() {
            return Err(err(
                "pilot",
                "a pilot runs some groups in full: set within so that there are groups",
            ));
        }
        if let Some(t) = raw.min_tau {
            if !(t.is_finite() && (-1.0..=1.0).contains(&t)) {
                return Err(err("min_tau", format!("a Kendall tau in [-1, 1], got {t}")));
            }
            if pilot == 0 {
                return Err(err("min_tau", "measured on the pilot groups: set pilot = N too"));
            }
        }
        Ok(Some(StoppingSpec {
            rule,
            metric,
            rungs,
            keep,
            within,
            exempt,
            min_seeds: min_seeds as u32,
            pilot,
            min_tau: raw.min_tau,
        }))
    }
}

/// A TOML value as a grid axis holds it: `"none"` for an absent optional field is JSON null.
fn axis_value(v: toml::Value) -> Json {
    match v {
        toml::Value::String(s) if s == "none" => Json::Null,
        toml::Value::String(s) => Json::String(s),
        toml::Value::Integer(i) => Json::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number),
        toml::Value::Boolean(b) => Json::Bool(b),
        other => Json::String(other.to_string()),
    }
}

/// An axis value as labels show it: strings bare, null as `none`.
pub fn show(v: &Json) -> String {
    match v {
        Json::Null => "none".to_owned(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}
