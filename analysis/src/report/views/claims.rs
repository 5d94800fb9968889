//! The paper's directional claims on this sweep ([`crate::claims`]): learned and frozen trials
//! paired by configuration and seed, each claim with its effect, interval and verdict.

use std::collections::BTreeMap;

use polars::prelude::*;

use crate::claims::{Pair, Side, check};
use crate::error::Result;
use crate::frames::Frames;
use crate::report::grouping::{FACTORS, cell, f64_at};
use crate::report::section::Section;

/// Factors that are not part of a pair's key besides the ones a pair names.
const PAIRED_BY: [&str; 3] = ["train_mode", "kernel_size", "expansion"];

/// A pair's key (the other factors, k, E, seed) and its two sides (learned, frozen).
type Sides = BTreeMap<(String, u32, Option<u32>, u64), [Option<Side>; 2]>;

/// Relative FGSM drop at eps = 1/255 (% of clean accuracy on the same images), by trial.
fn fgsm_drops(robustness: &DataFrame) -> BTreeMap<String, f64> {
    let mut clean = BTreeMap::new();
    let mut fgsm = BTreeMap::new();
    for i in 0..robustness.height() {
        let trial = cell(robustness, "trial_id", i);
        let kind = cell(robustness, "kind", i);
        let (Some(eps), Some(acc)) = (f64_at(robustness, "eps", i), f64_at(robustness, "accuracy", i)) else {
            continue;
        };
        match kind.as_str() {
            "clean" => {
                clean.insert(trial, acc);
            }
            "fgsm" if (eps * 255.0 - 1.0).abs() < 1e-6 => {
                fgsm.insert(trial, acc);
            }
            _ => {}
        }
    }
    fgsm.into_iter()
        .filter_map(|(t, adv)| {
            let c = *clean.get(&t)?;
            (c > 0.0).then(|| (t, 100.0 * (c - adv) / c))
        })
        .collect()
}

/// The learned/frozen pairs of a sweep's succeeded trials.
pub fn pairs(frames: &Frames) -> Result<Vec<Pair>> {
    let trials = frames
        .trials
        .clone()
        .lazy()
        .filter(col("state").eq(lit("succeeded")))
        .collect()?;
    let drops = fgsm_drops(&frames.robustness);
    let mut sides = Sides::new();
    for i in 0..trials.height() {
        let (Some(test), Some(train)) = (
            f64_at(&trials, "final_test_acc", i),
            f64_at(&trials, "final_train_acc", i),
        ) else {
            continue;
        };
        let rest: Vec<String> = FACTORS
            .iter()
            .filter(|f| !PAIRED_BY.contains(f))
            .map(|f| format!("{f}={}", cell(&trials, f, i)))
            .collect();
        let k = f64_at(&trials, "kernel_size", i).unwrap_or(0.0) as u32;
        let e = f64_at(&trials, "expansion", i).map(|e| e as u32);
        let seed = f64_at(&trials, "seed", i).unwrap_or(0.0) as u64;
        let slot = match cell(&trials, "train_mode", i).as_str() {
            "learned" => 0,
            "frozen" => 1,
            _ => continue,
        };
        let side = Side {
            test_acc: 100.0 * test,
            train_acc: 100.0 * train,
            fgsm_drop: drops.get(&cell(&trials, "trial_id", i)).copied(),
        };
        sides.entry((rest.join(" "), k, e, seed)).or_default()[slot] = Some(side);
    }
    Ok(sides
        .into_iter()
        .filter_map(|((rest, kernel_size, expansion, seed), [l, f])| {
            Some(Pair {
                rest,
                kernel_size,
                expansion,
                seed,
                learned: l?,
                frozen: f?,
            })
        })
        .collect())
}

/// The claims view.
pub fn view(frames: &Frames) -> Result<Section> {
    let pairs = pairs(frames)?;
    let checked = check(&pairs);
    // Full precision (CSV and Parquet); tables print one decimal, never a negative zero.
    let df = df!(
        "claim" => checked.iter().map(|c| c.claim).collect::<Vec<_>>(),
        "verdict" => checked.iter().map(|c| c.verdict.as_str()).collect::<Vec<_>>(),
        "effect" => checked.iter().map(|c| c.effect).collect::<Vec<_>>(),
        "ci95_low" => checked.iter().map(|c| c.ci95.map(|c| c.0)).collect::<Vec<_>>(),
        "ci95_high" => checked.iter().map(|c| c.ci95.map(|c| c.1)).collect::<Vec<_>>(),
        "pairs" => checked.iter().map(|c| c.pairs as u32).collect::<Vec<_>>(),
        "seeds" => checked.iter().map(|c| c.seeds as u32).collect::<Vec<_>>(),
        "effect_is" => checked.iter().map(|c| c.effect_is).collect::<Vec<_>>(),
        "reason" => checked.iter().map(|c| c.reason.clone()).collect::<Vec<_>>(),
    )?;
    let mut s = Section::new(
        "claims",
        "The paper's claims, tested on this sweep",
        &format!(
            "Each directional claim of the paper as a test over seeds on {} learned/frozen pairs \
             (trials of the same configuration and seed, both succeeded): its effect in \
             percentage points with a 95% confidence interval, and a verdict. Holds: the \
             interval is on the claim's side; contradicted: on the other; inconclusive: too few \
             seeds (2 or more per cell), kernel sizes or expansions, no measurement, or an \
             interval across the threshold. 'Match' means within 1 pp.",
            pairs.len()
        ),
    );
    s.tables.push(("claims".into(), df));
    Ok(s)
}
