//! What a stopping rule spent and saved, what it decided, and how faithful its early rankings
//! were: for every comparison group where configurations ran to the end, Kendall's tau and
//! top-k recall between each rung's ranking (the rule's metric) and the final one (final test
//! accuracy). Absent from sweeps without a stopping rule.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use polars::prelude::*;

use crate::error::Result;
use crate::frames::Frames;
use crate::report::grouping::{cell, f64_at};
use crate::report::section::Section;

/// Names of this view's tables.
pub const SPENT: &str = "budget";
/// The decisions, one row per configuration and rung.
pub const DECISIONS: &str = "stopping_decisions";
/// Rank fidelity per group and rung.
pub const FIDELITY: &str = "rank_fidelity";

/// One trial as this view needs it.
struct Trial {
    state: String,
    group: Option<String>,
    config: Option<String>,
    planned: f64,
    final_test_acc: Option<f64>,
}

/// The budget view, when the sweep has a stopping rule.
pub fn view(frames: &Frames) -> Result<Option<Section>> {
    let (t, e, d) = (&frames.trials, &frames.epochs, &frames.decisions);
    let trials: BTreeMap<String, Trial> = (0..t.height())
        .map(|i| {
            let group = Some(cell(t, "stop_group", i)).filter(|s| s != "-");
            let config = Some(cell(t, "stop_config", i)).filter(|s| s != "-");
            (
                cell(t, "trial_id", i),
                Trial {
                    state: cell(t, "state", i),
                    group,
                    config,
                    planned: f64_at(t, "epochs", i).unwrap_or(0.0),
                    final_test_acc: f64_at(t, "final_test_acc", i),
                },
            )
        })
        .collect();
    if d.height() == 0 && trials.values().all(|t| t.group.is_none()) {
        return Ok(None);
    }
    let metric = if d.height() > 0 {
        cell(d, "metric", 0)
    } else {
        "val_acc".to_owned()
    };
    // Seconds and epochs each trial spent, and the rule's metric at each epoch.
    let mut spent: HashMap<String, (f64, u32)> = HashMap::new();
    let mut at: HashMap<(String, u32), f64> = HashMap::new();
    for i in 0..e.height() {
        let id = cell(e, "trial_id", i);
        let epoch = f64_at(e, "epoch", i).unwrap_or(0.0) as u32;
        let s = spent.entry(id.clone()).or_default();
        s.0 += f64_at(e, "seconds", i).unwrap_or(0.0);
        s.1 = s.1.max(epoch);
        if let Some(v) = f64_at(e, &metric, i) {
            at.insert((id, epoch), v);
        }
    }
    let per_epoch = {
        let (secs, epochs) = spent.values().fold((0.0, 0u32), |a, s| (a.0 + s.0, a.1 + s.1));
        if epochs > 0 { secs / f64::from(epochs) } else { 0.0 }
    };
    // Spent against the full grid: a stopped trial would have trained its whole budget at the
    // pace it had (the sweep's pace for one that never ran).
    let (mut used, mut unspent, mut stopped) = (0.0, 0.0, 0u32);
    for (id, trial) in &trials {
        let (secs, reached) = spent.get(id).copied().unwrap_or((0.0, 0));
        used += secs;
        if trial.state == "stopped" {
            stopped += 1;
            let pace = if reached > 0 {
                secs / f64::from(reached)
            } else {
                per_epoch
            };
            unspent += pace * (trial.planned - f64::from(reached)).max(0.0);
        }
    }
    let full = used + unspent;
    let saved = if full > 0.0 { 100.0 * (full - used) / full } else { 0.0 };
    let rules: BTreeSet<String> = (0..d.height()).map(|i| cell(d, "rule", i)).collect();
    let rule = rules.into_iter().collect::<Vec<_>>().join(", ");
    let budget = df!(
        "rule" => [rule.clone()],
        "trials" => [trials.len() as u32],
        "stopped" => [stopped],
        "trial_seconds" => [used],
        "full_grid_seconds" => [full],
        "saved_pct" => [saved],
    )?;

    let decisions = d
        .clone()
        .lazy()
        .select([
            col("rule"),
            col("group"),
            col("config"),
            col("rung"),
            col("metric"),
            (col("value") * lit(100.0)).alias("value_pct"),
            col("rank"),
            col("ranked"),
            col("kept"),
        ])
        .sort(["rung", "group", "rank"], SortMultipleOptions::default())
        .collect()?;

    // Rank fidelity: configurations that ran to the end (no stopped trial, at least one
    // succeeded), each group and rung.
    let mut by_config: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for (id, trial) in &trials {
        if let (Some(g), Some(c)) = (&trial.group, &trial.config) {
            by_config.entry((g.clone(), c.clone())).or_default().push(id);
        }
    }
    let rungs: BTreeSet<u32> = (0..d.height())
        .filter_map(|i| f64_at(d, "rung", i).map(|r| r as u32))
        .collect();
    let kept_share: HashMap<(String, u32), f64> = {
        let mut n: HashMap<(String, u32), (u32, u32)> = HashMap::new();
        for i in 0..d.height() {
            let key = (cell(d, "group", i), f64_at(d, "rung", i).unwrap_or(0.0) as u32);
            let e = n.entry(key).or_default();
            e.1 += 1;
            if cell(d, "kept", i) == "true" {
                e.0 += 1;
            }
        }
        n.into_iter()
            .map(|(k, (kept, all))| (k, f64::from(kept) / f64::from(all)))
            .collect()
    };
    let groups: BTreeSet<&String> = by_config.keys().map(|(g, _)| g).collect();
    let (mut f_group, mut f_rung, mut f_n, mut f_tau, mut f_k, mut f_recall) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for g in groups {
        for &rung in &rungs {
            let (mut early, mut last) = (Vec::new(), Vec::new());
            for (_, ids) in by_config.iter().filter(|((cg, _), _)| cg == g) {
                if ids.iter().any(|id| trials[*id].state == "stopped") {
                    continue;
                }
                let done: Vec<&&str> = ids.iter().filter(|id| trials[**id].state == "succeeded").collect();
                let finals: Vec<f64> = done.iter().filter_map(|id| trials[**id].final_test_acc).collect();
                let earlies: Vec<f64> = done
                    .iter()
                    .filter_map(|id| at.get(&((**id).to_owned(), rung)).copied())
                    .collect();
                if finals.is_empty() || earlies.len() != done.len() || finals.len() != done.len() {
                    continue;
                }
                early.push(earlies.iter().sum::<f64>() / earlies.len() as f64);
                last.push(finals.iter().sum::<f64>() / finals.len() as f64);
            }
            if early.len() < 2 {
                continue;
            }
            let share = kept_share.get(&(g.clone(), rung)).copied().unwrap_or(1.0 / 3.0);
            let k = ((share * early.len() as f64).round() as usize).clamp(1, early.len());
            let sign = if metric.ends_with("loss") { -1.0 } else { 1.0 };
            let early_signed: Vec<f64> = early.iter().map(|v| v * sign).collect();
            f_group.push(g.clone());
            f_rung.push(rung);
            f_n.push(early.len() as u32);
            f_tau.push(convsweep_proto::rank::kendall_tau_b(&early_signed, &last));
            f_k.push(k as u32);
            f_recall.push(convsweep_proto::rank::top_k_recall(&early_signed, &last, k));
        }
    }
    let fidelity = df!(
        "group" => f_group,
        "rung" => f_rung,
        "configurations" => f_n,
        "kendall_tau" => f_tau,
        "top_k" => f_k,
        "top_k_recall" => f_recall,
    )?;
    let text = format!(
        "Stopping rule: {}. Trial-seconds spent {used:.0} of an estimated {full:.0} for the full grid \
         ({saved:.1}% saved; {stopped} of {} trials stopped). Decisions are made on {metric} (a validation \
         split, never the test set), inside comparison groups, over each configuration's lowest seeds; \
         a stopped trial is a censored result, never averaged with finished ones, and other tables mark \
         its cell 'stopped at E: >= x%'. Rank fidelity compares each rung's ranking of the configurations \
         that ran to the end with their final test accuracy: Kendall's tau (1: the same order) and the \
         share of the final top k that the rung's top k holds (k: what the rule kept there).{}",
        if rule.is_empty() { "none recorded" } else { &rule },
        trials.len(),
        if fidelity.height() == 0 {
            " No group has two configurations that ran to the end yet: fidelity is unmeasured \
             (a pilot, `stopping.pilot`, runs groups in full to measure it)."
        } else {
            ""
        }
    );
    let mut s = Section::new("budget", "Budget: early stopping and rank fidelity", &text);
    s.tables.push((SPENT.into(), budget));
    s.tables.push((DECISIONS.into(), decisions));
    s.tables.push((FIDELITY.into(), fidelity));
    Ok(Some(s))
}
