//! The decisions of a stopping rule, as a pure function of a sweep's recorded curves and the
//! decisions already stored: the coordinator runs it after epochs arrive, and a test runs it
//! as the oracle on the same rows. Successive halving and the median rule decide a group's rung
//! once every configuration of the group reached it, from values at that epoch only, so that
//! the decisions are the same whatever the workers, the order of arrival or restarts; ASHA
//! decides each configuration as it arrives (order-dependent, its inputs recorded).

use std::collections::{BTreeMap, HashMap};

use convsweep_proto::results::Results;
use convsweep_proto::{TrialState, pb};

use super::spec::{Rule, StoppingSpec};

/// What a pass decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decided {
    /// New decisions (stored ones are not repeated).
    pub decisions: Vec<pb::ExportDecision>,
    /// Every trial of a stopped configuration with the rung it was stopped at (stored ones
    /// included: the store takes each once).
    pub stops: Vec<(String, u32)>,
    /// The pilot's rank fidelity per rung (mean Kendall tau over pilot groups), once measured.
    pub pilot_tau: BTreeMap<u32, f64>,
}

/// A configuration's value at a rung: its seeds' mean, not yet known, or out of the race (an
/// evidence trial ended without reaching the rung: failed or cancelled).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    Mean(f64),
    Waiting,
    Out,
}

struct Config<'a> {
    name: &'a str,
    group: &'a str,
    exempt: bool,
    /// Trials by seed.
    trials: Vec<(u64, &'a str)>,
}

/// Decides what can be decided now, over the trials of `sweep` that `results` places in the
/// rule's design (their `cell`, as the store's readers fill it).
pub fn decide<'c>(spec: &StoppingSpec, sweep: &str, results: &'c Results, now_ms: i64) -> Decided {
    let metric = spec.metric;
    // Metric values by trial and epoch; trial states.
    let mut values: HashMap<&str, BTreeMap<u32, f64>> = HashMap::new();
    for e in &results.epochs {
        if let Some(v) = metric.of(&e.metrics) {
            values
                .entry(e.trial_id.as_str())
                .or_default()
                .insert(e.metrics.epoch, v);
        }
    }
    let states: HashMap<&str, (TrialState, u32)> = results
        .trials
        .iter()
        .filter(|t| t.sweep_id == sweep)
        .map(|t| (t.trial_id.as_str(), (t.state, t.spec.train.epochs)))
        .collect();
    // By group and configuration: a configuration's label repeats in every group.
    let mut configs: BTreeMap<(&str, &str), Config<'c>> = BTreeMap::new();
    let placed = results
        .trials
        .iter()
        .filter(|t| t.sweep_id == sweep)
        .filter_map(|t| Some((t, t.cell.as_ref()?)));
    for (t, cell) in placed {
        let c = configs
            .entry((cell.group.as_str(), cell.config.as_str()))
            .or_insert_with(|| Config {
                name: &cell.config,
                group: &cell.group,
                exempt: cell.exempt,
                trials: Vec::new(),
            });
        c.trials.push((t.spec.seed, t.trial_id.as_str()));
    }
    for c in configs.values_mut() {
        c.trials.sort();
    }
    let mut groups: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for c in configs.values() {
        groups.entry(c.group).or_default().push((c.group, c.name));
    }
    // Kept or stopped, by group, configuration and rung: what was stored, then what this pass
    // decides.
    let mut kept: HashMap<(&'c str, &'c str, u32), bool> = results
        .decisions
        .iter()
        .filter(|d| d.sweep_id == sweep)
        .map(|d| ((d.group.as_str(), d.config.as_str(), d.rung), d.kept))
        .collect();
    let value_at = |c: &Config<'c>, rung: u32| -> (Value, Vec<&'c str>) {
        let evidence: Vec<&str> = c
            .trials
            .iter()
            .take(spec.min_seeds as usize)
            .map(|(_, id)| *id)
            .collect();
        let mut sum = 0.0;
        for id in &evidence {
            match values.get(id).and_then(|v| v.get(&rung)) {
                Some(v) => sum += v,
                None => {
                    let done = states.get(id).is_some_and(|(s, _)| s.is_done());
                    return (if done { Value::Out } else { Value::Waiting }, evidence);
                }
            }
        }
        (Value::Mean(sum / evidence.len() as f64), evidence)
    };
    let better = |a: f64, b: f64| {
        if metric.higher_is_better() {
            b.total_cmp(&a)
        } else {
            a.total_cmp(&b)
        }
    };

    let mut out = Decided::default();
    // The pilot: its groups run in full; the others wait for it to finish.
    let pilot: Vec<&str> = groups.keys().take(spec.pilot as usize).copied().collect();
    let pilot_done = pilot.iter().all(|g| {
        groups[g]
            .iter()
            .flat_map(|c| configs[c].trials.iter())
            .all(|(_, id)| states.get(id).is_some_and(|(s, _)| s.is_done()))
    });
    if !pilot.is_empty() && pilot_done {
        for &rung in &spec.rungs {
            let mut taus = Vec::new();
            for g in &pilot {
                let (mut early, mut last) = (Vec::new(), Vec::new());
                for c in &groups[g] {
                    let c = &configs[c];
                    let finals: Option<Vec<f64>> = c
                        .trials
                        .iter()
                        .take(spec.min_seeds as usize)
                        .map(|(_, id)| {
                            let planned = states.get(id).map(|(_, e)| *e)?;
                            values.get(id).and_then(|v| v.get(&planned)).copied()
                        })
                        .collect();
                    if let (Value::Mean(v), Some(f)) = (value_at(c, rung).0, finals) {
                        early.push(v);
                        last.push(f.iter().sum::<f64>() / f.len() as f64);
                    }
                }
                if let Some(t) = convsweep_proto::rank::kendall_tau_b(&early, &last) {
                    taus.push(t);
                }
            }
            if !taus.is_empty() {
                out.pilot_tau.insert(rung, taus.iter().sum::<f64>() / taus.len() as f64);
            }
        }
    }
    for (group, names) in &groups {
        if pilot.contains(group) || (!pilot.is_empty() && !pilot_done) {
            continue;
        }
        let mut alive: Vec<&Config<'c>> = names.iter().map(|n| &configs[n]).filter(|c| !c.exempt).collect();
        for &rung in &spec.rungs {
            if alive.is_empty() {
                break;
            }
            let measured: Vec<(&Config<'c>, Value, Vec<&str>)> = alive
                .iter()
                .map(|c| {
                    let (v, ev) = value_at(c, rung);
                    (*c, v, ev)
                })
                .collect();
            let decided_here = alive.iter().any(|c| kept.contains_key(&(c.group, c.name, rung)));
            if !decided_here || spec.rule == Rule::Asha {
                let tau_gate = spec.min_tau.and_then(|min| {
                    let tau = out.pilot_tau.get(&rung).copied();
                    match tau {
                        Some(t) if t >= min => None,
                        t => Some(format!(
                            "pilot Kendall tau at rung {rung} is {} (min_tau {min}): nothing is pruned here",
                            t.map_or("unmeasured".to_owned(), |t| format!("{t:.3}"))
                        )),
                    }
                });
                match spec.rule {
                    Rule::SuccessiveHalving | Rule::Median => {
                        if measured.iter().any(|(_, v, _)| *v == Value::Waiting) {
                            break;
                        }
                        let mut ranked: Vec<(&Config<'c>, f64, &Vec<&str>)> = measured
                            .iter()
                            .filter_map(|(c, v, ev)| match v {
                                Value::Mean(m) => Some((*c, *m, ev)),
                                _ => None,
                            })
                            .collect();
                        ranked.sort_by(|a, b| better(a.1, b.1).then_with(|| a.2[0].cmp(b.2[0])));
                        let n = ranked.len();
                        let cut = match spec.rule {
                            Rule::Median => {
                                let mut v: Vec<f64> = ranked.iter().map(|r| r.1).collect();
                                v.sort_by(|a, b| a.total_cmp(b));
                                let median = if n == 0 {
                                    0.0
                                } else if n % 2 == 1 {
                                    v[n / 2]
                                } else {
                                    (v[n / 2 - 1] + v[n / 2]) / 2.0
                                };
                                Cut::Median(median)
                            }
                            _ => Cut::Keep(spec.kept_of(n)),
                        };
                        let inputs = inputs_json(ranked.iter().map(|r| (r.0.name, r.1)), tau_gate.as_deref());
                        for (i, (c, v, ev)) in ranked.iter().enumerate() {
                            let keep = tau_gate.is_some()
                                || match cut {
                                    Cut::Keep(k) => i < k,
                                    Cut::Median(m) => better(*v, m) != std::cmp::Ordering::Greater,
                                };
                            kept.insert((c.group, c.name, rung), keep);
                            out.decisions.push(decision(
                                spec,
                                sweep,
                                group,
                                c.name,
                                rung,
                                keep,
                                *v,
                                ev,
                                i + 1,
                                n,
                                &inputs,
                                now_ms,
                            ));
                        }
                    }
                    Rule::Asha => {
                        // Everything the group recorded at this rung so far, decided or not.
                        let recorded: Vec<(&str, f64, &str)> = names
                            .iter()
                            .map(|n| &configs[n])
                            .filter(|c| !c.exempt)
                            .filter_map(|c| match value_at(c, rung) {
                                (Value::Mean(v), ev) => Some((c.name, v, ev[0])),
                                _ => None,
                            })
                            .collect();
                        for (c, v, ev) in &measured {
                            let Value::Mean(v) = v else { continue };
                            if kept.contains_key(&(c.group, c.name, rung)) {
                                continue;
                            }
                            let mut order: Vec<&(&str, f64, &str)> = recorded.iter().collect();
                            order.sort_by(|a, b| better(a.1, b.1).then_with(|| a.2.cmp(b.2)));
                            let n = order.len();
                            let rank = order.iter().position(|r| r.0 == c.name).map_or(n, |p| p + 1);
                            let keep = tau_gate.is_some() || rank <= spec.kept_of(n);
                            let inputs = inputs_json(order.iter().map(|r| (r.0, r.1)), tau_gate.as_deref());
                            kept.insert((c.group, c.name, rung), keep);
                            out.decisions.push(decision(
                                spec, sweep, group, c.name, rung, keep, *v, ev, rank, n, &inputs, now_ms,
                            ));
                        }
                    }
                }
            }
            // Who goes on to the next rung: kept here (an undecided one waits, under ASHA).
            alive.retain(|c| kept.get(&(c.group, c.name, rung)) == Some(&true));
        }
    }
    // Every trial of a configuration stopped at some rung (its earliest).
    for c in configs.values() {
        let first_stop = spec
            .rungs
            .iter()
            .copied()
            .find(|&r| kept.get(&(c.group, c.name, r)) == Some(&false));
        if let Some(rung) = first_stop {
            for (_, id) in &c.trials {
                out.stops.push(((*id).to_owned(), rung));
            }
        }
    }
    out.stops.sort();
    out
}

enum Cut {
    Keep(usize),
    Median(f64),
}

fn inputs_json<'a>(values: impl Iterator<Item = (&'a str, f64)>, note: Option<&str>) -> String {
    let mut map = serde_json::Map::new();
    for (c, v) in values {
        map.insert(c.to_owned(), serde_json::json!(v));
    }
    let mut out = serde_json::json!({ "values": map });
    if let Some(n) = note {
        out["note"] = serde_json::Value::String(n.to_owned());
    }
    out.to_string()
}

#[allow(clippy::too_many_arguments)]
fn decision(
    spec: &StoppingSpec,
    sweep: &str,
    group: &str,
    config: &str,
    rung: u32,
    kept: bool,
    value: f64,
    evidence: &[&str],
    rank: usize,
    ranked: usize,
    inputs: &str,
    now_ms: i64,
) -> pb::ExportDecision {
    pb::ExportDecision {
        sweep_id: sweep.to_owned(),
        rule: spec.rule.as_str().to_owned(),
        group: group.to_owned(),
        config: config.to_owned(),
        rung,
        kept,
        metric: spec.metric.as_str().to_owned(),
        value,
        seeds: evidence.len() as u32,
        rank: rank as u32,
        ranked: ranked as u32,
        trials: evidence.join(","),
        inputs: inputs.to_owned(),
        decided_ms: now_ms,
    }
}

#[cfg(test)]
mod tests {
    use convsweep_proto::results::{EpochRow, StopCell, TrialRow};

    use super::*;
    use crate::stopping::spec::{Metric, Rule};

    fn spec(rule: Rule) -> StoppingSpec {
        StoppingSpec {
            rule,
            metric: Metric::ValAcc,
            rungs: vec![1, 2],
            keep: 0.5,
            within: vec![],
            exempt: vec![],
            min_seeds: 1,
            pilot: 0,
            min_tau: None,
        }
    }

    /// Trials placed in groups and configurations, with their validation curves.
    struct Design {
        results: Results,
    }

    impl Design {
        fn new() -> Design {
            Design {
                results: Results::default(),
            }
        }

        fn add(&mut self, group: &str, config: &str, seed: u64, exempt: bool, curve: &[f64], state: TrialState) {
            let id = format!("{group}-{config}-{seed}");
            let mut spec = convsweep_proto::TrialSpec::from_json(
                r#"{"dataset":{"name":"synthetic"},"model":{"arch":"resnet","kernel_size":3,"train_mode":"learned","init":"kaiming-uniform"},"seed":0}"#,
            )
            .unwrap();
            spec.train.epochs = 3;
            spec.seed = seed;
            self.results.trials.push(TrialRow {
                sweep_id: "s".into(),
                trial_id: id.clone(),
                spec,
                state,
                attempts: 1,
                reason: None,
                worker_id: None,
                result: None,
                cell: Some(StopCell {
                    group: group.into(),
                    config: config.into(),
                    exempt,
                }),
            });
            for (i, v) in curve.iter().enumerate() {
                self.results.epochs.push(EpochRow {
                    trial_id: id.clone(),
                    attempt: 1,
                    metrics: pb::EpochMetrics {
                        epoch: i as u32 + 1,
                        val_acc: Some(*v),
                        val_loss: Some(1.0 - v),
                        ..Default::default()
                    },
                });
            }
        }

        fn decide(&mut self, spec: &StoppingSpec) -> Decided {
            let d = decide(spec, "s", &self.results, 0);
            self.results.decisions.extend(d.decisions.iter().cloned());
            d
        }
    }

    fn kept(d: &[pb::ExportDecision], rung: u32) -> Vec<(&str, bool)> {
        d.iter()
            .filter(|d| d.rung == rung)
            .map(|d| (d.config.as_str(), d.kept))
            .collect()
    }

    #[test]
    fn the_median_rule_waits_for_the_group_and_stops_below_the_median() {
        let mut d = Design::new();
        d.add("g", "a", 0, false, &[0.5], TrialState::Running);
        d.add("g", "b", 0, false, &[0.7, 0.8], TrialState::Running);
        d.add("g", "c", 0, false, &[], TrialState::Running);
        assert!(
            d.decide(&spec(Rule::Median)).decisions.is_empty(),
            "c has not reached rung 1"
        );
        d.results.epochs.push(EpochRow {
            trial_id: "g-c-0".into(),
            attempt: 1,
            metrics: pb::EpochMetrics {
                epoch: 1,
                val_acc: Some(0.6),
                ..Default::default()
            },
        });
        let out = d.decide(&spec(Rule::Median));
        // Median of 0.5, 0.6, 0.7 is 0.6: a (below) stops, c (at it) and b go on.
        assert_eq!(kept(&out.decisions, 1), vec![("b", true), ("c", true), ("a", false)]);
        assert_eq!(out.stops, vec![("g-a-0".to_owned(), 1)]);
    }

    #[test]
    fn asha_decides_each_arrival_against_what_was_recorded_and_says_so() {
        let mut d = Design::new();
        d.add("g", "a", 0, false, &[0.5], TrialState::Running);
        let first = d.decide(&spec(Rule::Asha));
        assert_eq!(kept(&first.decisions, 1), vec![("a", true)], "alone at the rung: kept");
        d.add("g", "b", 0, false, &[0.7], TrialState::Running);
        d.add("g", "c", 0, false, &[0.4], TrialState::Running);
        let second = d.decide(&spec(Rule::Asha));
        // b and c each against a, b, c (ceil(0.5 * 3) = 2 kept): b first, c third.
        assert_eq!(kept(&second.decisions, 1), vec![("b", true), ("c", false)]);
        assert!(
            second.decisions[1].inputs.contains("\"a\":0.5"),
            "{}",
            second.decisions[1].inputs
        );
        // The same curves arriving at once keep a and b and stop c as well, but had c come
        // first it would have been kept: ASHA's order dependence, recorded in its inputs.
        let mut alone = Design::new();
        alone.add("g", "c", 0, false, &[0.4], TrialState::Running);
        assert_eq!(kept(&alone.decide(&spec(Rule::Asha)).decisions, 1), vec![("c", true)]);
    }

    #[test]
    fn exempt_cells_always_finish_and_failed_evidence_leaves_the_race() {
        let mut d = Design::new();
        d.add("g", "a", 0, false, &[0.9, 0.9], TrialState::Running);
        d.add("g", "b", 0, false, &[0.8, 0.1], TrialState::Running);
        d.add("g", "base", 0, true, &[0.0, 0.0], TrialState::Running);
        d.add("g", "nan", 0, false, &[], TrialState::Failed);
        let out = d.decide(&spec(Rule::SuccessiveHalving));
        // Rung 1: a and b ranked (the failed one is out, the exempt one not raced): one kept.
        assert_eq!(kept(&out.decisions, 1), vec![("a", true), ("b", false)]);
        // Rung 2: a alone is kept.
        assert_eq!(kept(&out.decisions, 2), vec![("a", true)]);
        assert_eq!(out.stops, vec![("g-b-0".to_owned(), 1)]);
        assert!(out.decisions.iter().all(|d| d.config != "base" && d.config != "nan"));
    }

    #[test]
    fn a_pilot_measures_rank_fidelity_first_and_min_tau_keeps_everything_where_it_is_low() {
        let mut s = spec(Rule::SuccessiveHalving);
        s.pilot = 1;
        s.min_tau = Some(0.5);
        s.rungs = vec![1];
        let mut d = Design::new();
        // Pilot group "a": the rung-1 order is the reverse of the final one (tau -1).
        d.add("a", "x", 0, false, &[0.9, 0.5, 0.1], TrialState::Running);
        d.add("a", "y", 0, false, &[0.5, 0.6, 0.2], TrialState::Running);
        d.add("a", "z", 0, false, &[0.1, 0.7, 0.3], TrialState::Running);
        d.add("b", "x", 0, false, &[0.9], TrialState::Running);
        d.add("b", "y", 0, false, &[0.5], TrialState::Running);
        let waiting = d.decide(&s);
        assert!(
            waiting.decisions.is_empty(),
            "the pilot has not finished: {:?}",
            waiting.decisions
        );
        for t in d.results.trials.iter_mut().filter(|t| t.trial_id.starts_with("a-")) {
            t.state = TrialState::Succeeded;
        }
        let out = d.decide(&s);
        assert_eq!(out.pilot_tau.get(&1).copied(), Some(-1.0));
        // Group b at rung 1: pruning would stop y, but the pilot's tau is below min_tau.
        assert_eq!(kept(&out.decisions, 1), vec![("x", true), ("y", true)]);
        assert!(
            out.decisions[1].inputs.contains("min_tau"),
            "{}",
            out.decisions[1].inputs
        );
        assert!(out.decisions.iter().all(|d| d.group == "b"), "pilot groups run in full");
        // With a faithful pilot, the same group is pruned.
        let mut faithful = Design::new();
        faithful.add("a", "x", 0, false, &[0.9, 0.5, 0.3], TrialState::Succeeded);
        faithful.add("a", "y", 0, false, &[0.5, 0.6, 0.2], TrialState::Succeeded);
        faithful.add("a", "z", 0, false, &[0.1, 0.7, 0.1], TrialState::Succeeded);
        faithful.add("b", "x", 0, false, &[0.9], TrialState::Running);
        faithful.add("b", "y", 0, false, &[0.5], TrialState::Running);
        let out = faithful.decide(&s);
        assert_eq!(out.pilot_tau.get(&1).copied(), Some(1.0));
        assert_eq!(kept(&out.decisions, 1), vec![("x", true), ("y", false)]);
    }
}
