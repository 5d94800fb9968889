//! The paper's directional claims, tested on whatever sweep the report is given: each as a
//! test over seeds, with its effect size, a 95% confidence interval and a verdict (holds,
//! contradicted, inconclusive with the reason). Unlike the paper check of Tables 1-3, these
//! need none of the paper's datasets or recipe: they compare learned and frozen trials that are
//! otherwise equal.
//!
//! The unit is a *pair*: a learned and a frozen trial of the same configuration and seed, both
//! succeeded. Differences are learned minus frozen, in percentage points.
//!
//! | claim | effect | holds when | contradicted when |
//! |---|---|---|---|
//! | the gap grows with k | slope of the gap against k (pp per +1 of k), within each configuration | CI above 0 | CI below 0 |
//! | the gap shrinks as E grows | slope of the gap against log2 E over LC-blocks | CI below 0 | CI above 0 |
//! | frozen LC-blocks match or beat learned ones from E = 8 | mean gap at E >= 8 | CI below +1 pp ("match": within one point) | CI above +1 pp |
//! | frozen models drop less under FGSM at 1/255 | mean of learned minus frozen relative drop (% of clean accuracy) | CI above 0 | CI below 0 |
//! | frozen models overfit less | mean of learned minus frozen final train-test accuracy gap | CI above 0 | CI below 0 |
//!
//! Anything else is inconclusive, and the reason says why: too few seeds (a test over seeds
//! needs at least 2 per cell), too few kernel sizes or expansions, no measurement, or an
//! interval that spans the threshold.

use std::collections::BTreeMap;

use crate::aggregate::t975;

/// How close frozen must come to learned to "match" (percentage points).
pub const MATCH_PP: f64 = 1.0;

/// One side of a pair: what its trial measured (accuracies in percent).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Side {
    /// Final test accuracy.
    pub test_acc: f64,
    /// Final training accuracy.
    pub train_acc: f64,
    /// Drop under FGSM at eps = 1/255 relative to the clean accuracy on the same images (% of
    /// it), when measured.
    pub fgsm_drop: Option<f64>,
}

/// A learned and a frozen trial of the same configuration and seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// Every other factor of the configuration, as one key.
    pub rest: String,
    /// Kernel size.
    pub kernel_size: u32,
    /// LC expansion (None: plain convs).
    pub expansion: Option<u32>,
    /// Seed.
    pub seed: u64,
    /// The learned trial.
    pub learned: Side,
    /// The frozen trial.
    pub frozen: Side,
}

impl Pair {
    fn gap(&self) -> f64 {
        self.learned.test_acc - self.frozen.test_acc
    }
}

/// The verdict of a claim on a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The interval is on the claim's side.
    Holds,
    /// The interval is on the other side.
    Contradicted,
    /// Not enough to tell; the reason says why.
    Inconclusive,
}

impl Verdict {
    /// As the report writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Holds => "holds",
            Verdict::Contradicted => "contradicted",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// One claim checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// Short name.
    pub claim: &'static str,
    /// What the paper says.
    pub statement: &'static str,
    /// What is measured, in what unit.
    pub effect_is: &'static str,
    /// The effect (slope or mean difference), when it could be computed.
    pub effect: Option<f64>,
    /// Its 95% confidence interval.
    pub ci95: Option<(f64, f64)>,
    /// Pairs used.
    pub pairs: usize,
    /// Fewest seeds in a cell used.
    pub seeds: usize,
    /// The verdict.
    pub verdict: Verdict,
    /// Why.
    pub reason: String,
}

/// A mean with its t interval.
struct Estimate {
    effect: f64,
    lo: f64,
    hi: f64,
}

fn mean_ci(values: &[f64]) -> Option<Estimate> {
    let n = values.len();
    if n < 2 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = t975(n as u32 - 1) * (var / n as f64).sqrt();
    Some(Estimate {
        effect: mean,
        lo: mean - half,
        hi: mean + half,
    })
}

/// The slope of y on x within groups (each group's means removed: a fixed effect per group),
/// with its t interval; None without two x values in some group or residual degrees of freedom.
fn slope_ci(points: &[(String, f64, f64)]) -> Option<Estimate> {
    let mut groups: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for (g, x, y) in points {
        groups.entry(g).or_default().push((*x, *y));
    }
    let mut centred = Vec::new();
    for pts in groups.values() {
        let n = pts.len() as f64;
        let (mx, my) = (
            pts.iter().map(|p| p.0).sum::<f64>() / n,
            pts.iter().map(|p| p.1).sum::<f64>() / n,
        );
        centred.extend(pts.iter().map(|(x, y)| (x - mx, y - my)));
    }
    let sxx: f64 = centred.iter().map(|(x, _)| x * x).sum();
    let df = centred.len() as i64 - groups.len() as i64 - 1;
    if sxx <= 0.0 || df < 1 {
        return None;
    }
    let slope = centred.iter().map(|(x, y)| x * y).sum::<f64>() / sxx;
    let ssr: f64 = centred.iter().map(|(x, y)| (y - slope * x).powi(2)).sum();
    let half = t975(df as u32) * (ssr / df as f64 / sxx).sqrt();
    Some(Estimate {
        effect: slope,
        lo: slope - half,
        hi: slope + half,
    })
}

/// Fewest pairs (seeds) of one configuration among `pairs`: every claim's x value (k or E) is
/// part of the configuration, so this is the fewest seeds in a cell.
fn fewest(pairs: &[&Pair]) -> usize {
    let mut count: BTreeMap<(&str, u32, Option<u32>), usize> = BTreeMap::new();
    for p in pairs {
        *count.entry((p.rest.as_str(), p.kernel_size, p.expansion)).or_default() += 1;
    }
    count.values().copied().min().unwrap_or(0)
}

/// How many distinct values.
fn distinct<T: Ord>(values: impl Iterator<Item = T>) -> usize {
    values.collect::<std::collections::BTreeSet<_>>().len()
}

/// Percentage points as the report prints them: one decimal, without a negative zero.
pub fn pp(v: f64) -> String {
    convsweep_proto::numbers::percent(v)
}

/// Which side of `threshold` the interval is on: `above` is what the claim says.
fn judge(e: &Estimate, threshold: f64, claim_above: bool) -> (Verdict, String) {
    let (lo, hi) = (e.lo, e.hi);
    let above = lo > threshold;
    let below = hi < threshold;
    let interval = format!("95% CI [{}, {}]", pp(lo), pp(hi));
    match (above, below, claim_above) {
        (true, _, true) | (_, true, false) => (
            Verdict::Holds,
            format!("{interval} is on the claim's side of {threshold}"),
        ),
        (true, _, false) | (_, true, true) => (
            Verdict::Contradicted,
            format!("{interval} is on the other side of {threshold}"),
        ),
        _ => (
            Verdict::Inconclusive,
            format!("{interval} spans {threshold}: more seeds would tell"),
        ),
    }
}

struct Test<'a> {
    claim: &'static str,
    statement: &'static str,
    effect_is: &'static str,
    /// Pairs used.
    used: Vec<&'a Pair>,
    /// Why nothing could be estimated, when the pairs do not allow it.
    missing: Option<String>,
}

impl Test<'_> {
    fn finish(self, estimate: Option<Estimate>, threshold: f64, claim_above: bool) -> Checked {
        let seeds = fewest(&self.used);
        let (verdict, reason, effect, ci95) = match (&self.missing, estimate) {
            (Some(why), _) => (Verdict::Inconclusive, why.clone(), None, None),
            // The point estimate is still shown; it is not tested.
            (None, e) if seeds < 2 => (
                Verdict::Inconclusive,
                format!("too few seeds: {seeds} per cell; a test over seeds needs 2 or more"),
                e.map(|e| e.effect),
                None,
            ),
            (None, None) => (
                Verdict::Inconclusive,
                "too few pairs for an interval".to_owned(),
                None,
                None,
            ),
            (None, Some(e)) => {
                let (v, r) = judge(&e, threshold, claim_above);
                (v, r, Some(e.effect), Some((e.lo, e.hi)))
            }
        };
        Checked {
            claim: self.claim,
            statement: self.statement,
            effect_is: self.effect_is,
            effect,
            ci95,
            pairs: self.used.len(),
            seeds,
            verdict,
            reason,
        }
    }
}

/// Every claim on `pairs`.
pub fn check(pairs: &[Pair]) -> Vec<Checked> {
    let mut out = Vec::new();

    // 1. The gap grows with k (within each configuration of the other factors and E).
    let all: Vec<&Pair> = pairs.iter().collect();
    let kernels = distinct(all.iter().map(|p| p.kernel_size));
    let test = Test {
        claim: "gap grows with k",
        statement: "The learned-minus-frozen accuracy gap grows with the kernel size.",
        effect_is: "slope of the gap, pp per +1 of k",
        used: all.clone(),
        missing: (kernels < 2).then(|| format!("needs 2 or more kernel sizes; the sweep has {kernels}")),
    };
    let points: Vec<(String, f64, f64)> = all
        .iter()
        .map(|p| {
            (
                format!("{} E={:?}", p.rest, p.expansion),
                f64::from(p.kernel_size),
                p.gap(),
            )
        })
        .collect();
    out.push(test.finish(slope_ci(&points), 0.0, true));

    // 2. The gap shrinks as E grows (LC-blocks only, against log2 E).
    let lc: Vec<&Pair> = pairs.iter().filter(|p| p.expansion.is_some()).collect();
    let expansions = distinct(lc.iter().filter_map(|p| p.expansion));
    let test = Test {
        claim: "gap shrinks with E",
        statement: "The gap shrinks as the LC-block expansion E grows.",
        effect_is: "slope of the gap, pp per doubling of E",
        used: lc.clone(),
        missing: (expansions < 2)
            .then(|| format!("needs LC-blocks at 2 or more expansions; the sweep has {expansions}")),
    };
    let points: Vec<(String, f64, f64)> = lc
        .iter()
        .map(|p| {
            let group = format!("{} k={}", p.rest, p.kernel_size);
            (group, f64::from(p.expansion.unwrap_or(1)).log2(), p.gap())
        })
        .collect();
    out.push(test.finish(slope_ci(&points), 0.0, false));

    // 3. Frozen LC-blocks match or beat learned ones from E = 8.
    let wide: Vec<&Pair> = pairs.iter().filter(|p| p.expansion.is_some_and(|e| e >= 8)).collect();
    let test = Test {
        claim: "frozen matches learned from E = 8",
        statement: "From E = 8, frozen LC-blocks match (within 1 pp) or beat learned ones.",
        effect_is: "mean gap at E >= 8, pp",
        used: wide.clone(),
        missing: wide.is_empty().then(|| "needs LC-blocks with E >= 8".to_owned()),
    };
    let gaps: Vec<f64> = wide.iter().map(|p| p.gap()).collect();
    out.push(test.finish(mean_ci(&gaps), MATCH_PP, false));

    // 4. Frozen models drop less under FGSM at 1/255, relative to their clean accuracy.
    let measured: Vec<&Pair> = pairs
        .iter()
        .filter(|p| p.learned.fgsm_drop.is_some() && p.frozen.fgsm_drop.is_some())
        .collect();
    let test = Test {
        claim: "frozen drops less under FGSM",
        statement: "Frozen models lose less of their clean accuracy under FGSM at eps = 1/255.",
        effect_is: "learned minus frozen relative drop, % of clean accuracy",
        used: measured.clone(),
        missing: measured
            .is_empty()
            .then(|| "needs FGSM at eps = 1/255 on both sides of a pair".to_owned()),
    };
    let drops: Vec<f64> = measured
        .iter()
        .map(|p| p.learned.fgsm_drop.unwrap_or(0.0) - p.frozen.fgsm_drop.unwrap_or(0.0))
        .collect();
    out.push(test.finish(mean_ci(&drops), 0.0, true));

    // 5. Frozen models overfit less.
    let test = Test {
        claim: "frozen overfits less",
        statement: "Frozen models end with a smaller generalisation gap (train minus test accuracy).",
        effect_is: "learned minus frozen final train-test gap, pp",
        used: all.clone(),
        missing: all
            .is_empty()
            .then(|| "needs learned and frozen trials of one configuration".to_owned()),
    };
    let overfit: Vec<f64> = all
        .iter()
        .map(|p| (p.learned.train_acc - p.learned.test_acc) - (p.frozen.train_acc - p.frozen.test_acc))
        .collect();
    out.push(test.finish(mean_ci(&overfit), 0.0, true));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(test_acc: f64, train_acc: f64, fgsm_drop: f64) -> Side {
        Side {
            test_acc,
            train_acc,
            fgsm_drop: Some(fgsm_drop),
        }
    }

    /// Pairs at `ks` x `es` x `seeds`; the learned side's accuracy from `learned(k, e, seed)`.
    fn sweep(ks: &[u32], es: &[Option<u32>], seeds: u64, learned: impl Fn(u32, Option<u32>, u64) -> Side) -> Vec<Pair> {
        let mut out = Vec::new();
        for &k in ks {
            for &e in es {
                for seed in 0..seeds {
                    out.push(Pair {
                        rest: "resnet-20-16 cifar10".into(),
                        kernel_size: k,
                        expansion: e,
                        seed,
                        learned: learned(k, e, seed),
                        frozen: side(60.0, 65.0, 20.0),
                    });
                }
            }
        }
        out
    }

    fn verdicts(pairs: &[Pair]) -> Vec<(&'static str, Verdict)> {
        check(pairs).into_iter().map(|c| (c.claim, c.verdict)).collect()
    }

    /// A little seed noise that averages out: +-0.3 pp.
    fn noise(seed: u64) -> f64 {
        if seed % 2 == 0 { 0.3 } else { -0.3 }
    }

    #[test]
    fn a_sweep_like_the_papers_findings_holds_every_claim() {
        let es = [Some(1), Some(2), Some(8), Some(16)];
        let pairs = sweep(&[3, 5, 7, 9], &es, 3, |k, e, s| {
            // The gap: +1 pp per step of k, shrinking with E to about zero at E >= 8;
            // learned models overfit more and lose more under FGSM.
            let shrink = 1.0 / f64::from(e.unwrap_or(1));
            side(
                60.0 + f64::from(k) * 2.0 * shrink - 1.0 + noise(s),
                75.0 + f64::from(k),
                30.0 + noise(s),
            )
        });
        let checked = check(&pairs);
        for c in &checked {
            assert_eq!(c.verdict, Verdict::Holds, "{c:?}");
            assert!(c.effect.is_some() && c.ci95.is_some(), "{c:?}");
            assert_eq!(c.seeds, 3, "{c:?}");
        }
        // The effect is what was put in: 2 pp per +1 of k at E = 1, averaged over E.
        let slope = checked[0].effect.unwrap();
        let expected = 2.0 * (1.0 + 0.5 + 0.125 + 0.0625) / 4.0;
        assert!((slope - expected).abs() < 1e-9, "{slope} vs {expected}");
    }

    #[test]
    fn the_opposite_findings_contradict_every_claim() {
        let es = [Some(8), Some(16), Some(32)];
        let pairs = sweep(&[3, 5, 7], &es, 3, |k, e, s| {
            // The gap shrinks with k, grows with E and stays large; frozen overfits more and
            // drops more.
            let grow = f64::from(e.unwrap_or(1)).log2();
            side(
                60.0 + 10.0 - f64::from(k) + grow + noise(s),
                60.0 + 10.0 - f64::from(k) + grow + 1.0,
                10.0 + noise(s),
            )
        });
        for (claim, v) in verdicts(&pairs) {
            assert_eq!(v, Verdict::Contradicted, "{claim}");
        }
    }

    #[test]
    fn one_seed_or_one_kernel_size_is_inconclusive_and_says_why() {
        let one_seed = sweep(&[3, 5], &[None, Some(8)], 1, |k, _, _| {
            side(70.0 + f64::from(k), 80.0, 25.0)
        });
        for c in check(&one_seed) {
            assert_eq!(c.verdict, Verdict::Inconclusive, "{c:?}");
            assert!(c.reason.contains("seeds") || c.reason.contains("expansions"), "{c:?}");
        }
        let one_k = sweep(&[3], &[None], 4, |_, _, s| side(70.0 + noise(s), 80.0, 25.0));
        let checked = check(&one_k);
        assert!(checked[0].reason.contains("2 or more kernel sizes"), "{:?}", checked[0]);
        assert!(checked[1].reason.contains("expansions"), "{:?}", checked[1]);
        assert!(checked[2].reason.contains("E >= 8"), "{:?}", checked[2]);
        // The overfitting claim is testable on these pairs: 10 pp against 5 pp of gap.
        assert_eq!(checked[4].verdict, Verdict::Holds, "{:?}", checked[4]);
        // An interval that spans the threshold is inconclusive, with the interval.
        let noisy = sweep(&[3, 5], &[None], 2, |_, _, s| {
            side(60.0 + 10.0 * noise(s), 65.0 + 10.0 * noise(s), 20.0)
        });
        let c = &check(&noisy)[0];
        assert_eq!(c.verdict, Verdict::Inconclusive, "{c:?}");
        assert!(c.reason.contains("spans 0"), "{c:?}");
    }
}
