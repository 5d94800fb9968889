//! Learning curves for the live views (`Watch` snapshots, the status page, `convsweep watch`):
//! each running trial's accuracy per epoch, and each configuration's mean over its seeds with
//! the band from its lowest to its highest seed. The stores read the rows in their own SQL;
//! the curves and their labels are made here, once for both.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use convsweep_proto::numbers::readable;
use convsweep_proto::pb;

/// Most configuration curves one snapshot carries (the rest are counted, not sent): enough for
/// any sweep a person reads as lines, bounded for sweeps of many thousands of trials.
pub const MAX_CURVES: usize = 400;

/// One configuration's test accuracy at one epoch over its seeds, as a store reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct CurveRow {
    /// The sweep.
    pub sweep_id: String,
    /// The configuration: the trial's canonical spec without its seed.
    pub config_json: String,
    /// The epoch.
    pub epoch: u32,
    /// Mean test accuracy over the seeds that reported this epoch.
    pub mean: f64,
    /// The lowest seed's.
    pub lo: f64,
    /// The highest seed's.
    pub hi: f64,
    /// How many seeds.
    pub seeds: u32,
    /// Mean training accuracy.
    pub train_mean: f64,
}

/// Leaves of a JSON object as `a.b.c` -> value.
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

/// How a factor reads in a label: `k=3`, `frozen`, `E=4` (`plain` without LC-blocks),
/// `kaiming-normal`, else `name=value`.
fn part(key: &str, v: Option<&serde_json::Value>) -> String {
    let value = match v {
        None | Some(serde_json::Value::Null) => "none".to_owned(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.as_f64().map_or_else(|| n.to_string(), readable),
        Some(other) => other.to_string(),
    };
    match key {
        "model.kernel_size" => format!("k={value}"),
        "model.expansion" if value == "none" => "plain".into(),
        "model.expansion" => format!("E={value}"),
        "model.train_mode" | "model.init" | "dataset.name" | "model.arch" => value,
        other => format!("{}={value}", other.rsplit('.').next().unwrap_or(other)),
    }
}

/// Labels of one sweep's configurations: the factors that differ between them, the paper's
/// first (kernel size, train mode, expansion, init), then the others by name; `all` when
/// there is one configuration.
fn labels(configs: &[&str]) -> Vec<String> {
    const FIRST: [&str; 4] = ["model.kernel_size", "model.train_mode", "model.expansion", "model.init"];
    let flat: Vec<BTreeMap<String, serde_json::Value>> = configs
        .iter()
        .map(|c| {
            let mut out = BTreeMap::new();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(c) {
                flatten("", &v, &mut out);
            }
            out
        })
        .collect();
    let keys: BTreeSet<&String> = flat.iter().flat_map(|f| f.keys()).collect();
    let varying: Vec<&str> = keys
        .into_iter()
        .filter(|k| flat.iter().any(|f| f.get(*k) != flat[0].get(*k)))
        .map(String::as_str)
        .collect();
    let mut order: Vec<&str> = FIRST.iter().copied().filter(|k| varying.contains(k)).collect();
    order.extend(varying.iter().copied().filter(|k| !FIRST.contains(k)));
    flat.iter()
        .map(|f| {
            if order.is_empty() {
                "all".to_owned()
            } else {
                order.iter().map(|k| part(k, f.get(*k))).collect::<Vec<_>>().join(" ")
            }
        })
        .collect()
}

/// The curves of `rows` (ordered by sweep, configuration and epoch), at most [`MAX_CURVES`],
/// and how many configurations were left out.
pub fn config_curves(rows: Vec<CurveRow>) -> (Vec<pb::ConfigCurve>, u32) {
    // (sweep, config) in order of first appearance, each with its points.
    let mut groups: Vec<((String, String), Vec<CurveRow>)> = Vec::new();
    for r in rows {
        match groups.last_mut() {
            Some((key, points)) if key.0 == r.sweep_id && key.1 == r.config_json => points.push(r),
            _ => groups.push(((r.sweep_id.clone(), r.config_json.clone()), vec![r])),
        }
    }
    let mut by_sweep: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for ((sweep, config), _) in &groups {
        by_sweep.entry(sweep).or_default().push(config);
    }
    let mut label_of: HashMap<(String, String), String> = HashMap::new();
    for (sweep, configs) in &by_sweep {
        for (config, label) in configs.iter().zip(labels(configs)) {
            label_of.insert(((*sweep).to_owned(), (*config).to_owned()), label);
        }
    }
    let mut curves: Vec<pb::ConfigCurve> = groups
        .into_iter()
        .map(|(key, points)| pb::ConfigCurve {
            label: label_of.remove(&key).unwrap_or_default(),
            sweep_id: key.0,
            trials: points.iter().map(|p| p.seeds).max().unwrap_or(0),
            points: points
                .into_iter()
                .map(|p| pb::BandPoint {
                    epoch: p.epoch,
                    mean: p.mean,
                    lo: p.lo,
                    hi: p.hi,
                    seeds: p.seeds,
                    train_mean: p.train_mean,
                })
                .collect(),
        })
        .collect();
    curves.sort_by(|a, b| (&a.sweep_id, &a.label).cmp(&(&b.sweep_id, &b.label)));
    let left_out = curves.len().saturating_sub(MAX_CURVES) as u32;
    curves.truncate(MAX_CURVES);
    (curves, left_out)
}

/// Gives each active trial its curve from `points` (trial id, epoch, test and train accuracy,
/// in epoch order).
pub fn attach(active: &mut [pb::ActiveTrial], points: Vec<(String, pb::CurvePoint)>) {
    let mut by_trial: HashMap<String, Vec<pb::CurvePoint>> = HashMap::new();
    for (trial, p) in points {
        by_trial.entry(trial).or_default().push(p);
    }
    for a in active {
        a.curve = by_trial.get(&a.trial_id).cloned().unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(sweep: &str, config: &str, epoch: u32, mean: f64) -> CurveRow {
        CurveRow {
            sweep_id: sweep.into(),
            config_json: config.into(),
            epoch,
            mean,
            lo: mean - 0.1,
            hi: mean + 0.1,
            seeds: 2,
            train_mean: mean,
        }
    }

    #[test]
    fn configurations_are_named_by_the_factors_that_differ() {
        let a = r#"{"model":{"kernel_size":3,"train_mode":"frozen"},"train":{"lr":0.05}}"#;
        let b = r#"{"model":{"kernel_size":5,"train_mode":"frozen","expansion":4},"train":{"lr":1e-30}}"#;
        let c = r#"{"model":{"kernel_size":3,"train_mode":"frozen"},"train":{"lr":0.05}}"#;
        let (curves, left_out) = config_curves(vec![
            row("s", a, 1, 0.2),
            row("s", a, 2, 0.3),
            row("s", b, 1, 0.4),
            row("t", c, 1, 0.5),
        ]);
        assert_eq!(left_out, 0);
        let labels: Vec<(&str, &str, usize)> = curves
            .iter()
            .map(|c| (c.sweep_id.as_str(), c.label.as_str(), c.points.len()))
            .collect();
        assert_eq!(
            labels,
            [
                ("s", "k=3 plain lr=0.05", 2),
                ("s", "k=5 E=4 lr=1e-30", 1),
                ("t", "all", 1)
            ]
        );
        assert_eq!(curves[0].points[1].epoch, 2);
        assert!((curves[0].points[1].hi - 0.4).abs() < 1e-12);
    }

    #[test]
    fn a_snapshot_carries_at_most_max_curves() {
        let rows: Vec<CurveRow> = (0..MAX_CURVES + 5)
            .map(|i| row("s", &format!(r#"{{"train":{{"lr":{}}}}}"#, i + 1), 1, 0.5))
            .collect();
        let (curves, left_out) = config_curves(rows);
        assert_eq!((curves.len(), left_out), (MAX_CURVES, 5));
    }
}
