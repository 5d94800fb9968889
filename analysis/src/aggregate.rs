//! Aggregates over seeds: for any grouping of factors, the count, mean, standard deviation
//! and 95% confidence interval of a metric over the succeeded trials of each group, with a flag
//! when a group has fewer seeds than asked or failed, stopped or unfinished trials, so that a
//! thin or partial group is never silently averaged. A trial a stopping rule stopped is a
//! censored observation: never in a mean, its cell marked `stopped at E: >= x%` (its test
//! accuracy at the epoch it reached).

use polars::prelude::*;

use crate::error::Result;

/// Two-sided 97.5% quantiles of Student's t for 1..=30 degrees of freedom.
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120,
    2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
];

/// The 97.5% quantile of Student's t with `df` degrees of freedom (normal beyond 30, 1.96).
pub fn t975(df: u32) -> f64 {
    match df {
        0 => f64::NAN,
        1..=30 => T975[df as usize - 1],
        _ => 1.96,
    }
}

/// Options of [`aggregate`].
#[derive(Debug, Clone, Copy)]
pub struct Aggregation<'a> {
    /// Columns to group by.
    pub factors: &'a [&'a str],
    /// The metric column (of succeeded trials).
    pub metric: &'a str,
    /// Multiply the metric by this (100 for accuracies in percent).
    pub scale: f64,
    /// Seeds a group should have; fewer are flagged.
    pub min_seeds: u32,
}

/// Aggregates `metric` over the trials of each group of `factors`.
///
/// Columns: the factors, `n` (succeeded trials with the metric), `failed`, `unfinished`
/// (pending, running, cancelled ...), `mean`, `std` (sample, n - 1), `ci95` (half-width,
/// `t(0.975, n-1) * std / sqrt(n)`), `flag` (empty, or why the group needs care: stopped
/// trials are named there, with where they stopped). Sorted by the factors.
pub fn aggregate(trials: &DataFrame, a: Aggregation) -> Result<DataFrame> {
    let by: Vec<Expr> = a.factors.iter().map(|f| col(*f)).collect();
    let ok = col("state").eq(lit("succeeded")).and(col(a.metric).is_not_null());
    let value = col(a.metric) * lit(a.scale);
    let stopped = col("state").eq(lit("stopped"));
    let has = |c: &str| trials.get_column_names().iter().any(|n| n.as_str() == c);
    // Where stopped trials stopped, and (for test accuracy) what they had there.
    let mut censored = vec![stopped.clone().cast(DataType::UInt32).sum().alias("stopped")];
    if has("epochs_reached") {
        censored.push(
            col("epochs_reached")
                .filter(stopped.clone())
                .min()
                .cast(DataType::UInt32)
                .alias("stopped_at"),
        );
    }
    let test_acc = matches!(a.metric, "final_test_acc" | "best_test_acc");
    if test_acc && has("last_test_acc") {
        censored.push(
            (col("last_test_acc") * lit(a.scale))
                .filter(stopped.clone())
                .mean()
                .alias("stopped_value"),
        );
    }
    let grouped = trials
        .clone()
        .lazy()
        .group_by(by)
        .agg(
            [
                censored,
                vec![
                    ok.clone().cast(DataType::UInt32).sum().alias("n"),
                    col("state")
                        .eq(lit("failed"))
                        .cast(DataType::UInt32)
                        .sum()
                        .alias("failed"),
                    col("state")
                        .eq(lit("succeeded"))
                        .not()
                        .and(col("state").eq(lit("failed")).not())
                        .and(stopped.clone().not())
                        .cast(DataType::UInt32)
                        .sum()
                        .alias("unfinished"),
                    value.clone().filter(ok.clone()).mean().alias("mean"),
                    value.filter(ok).std(1).alias("std"),
                ],
            ]
            .concat(),
        )
        .sort(
            a.factors.iter().map(|f| (*f).to_owned()).collect::<Vec<_>>(),
            SortMultipleOptions::default(),
        )
        .collect()?;

    let n = grouped.column("n")?.u32()?.clone();
    let failed = grouped.column("failed")?.u32()?.clone();
    let unfinished = grouped.column("unfinished")?.u32()?.clone();
    let std = grouped.column("std")?.f64()?.clone();
    let n_stopped = grouped.column("stopped")?.u32()?.clone();
    let opt_u32 = |name: &str| grouped.column(name).ok().and_then(|c| c.u32().ok().cloned());
    let opt_f64 = |name: &str| grouped.column(name).ok().and_then(|c| c.f64().ok().cloned());
    let (stopped_at, stopped_value) = (opt_u32("stopped_at"), opt_f64("stopped_value"));
    let mut ci = Vec::with_capacity(grouped.height());
    let mut flags = Vec::with_capacity(grouped.height());
    for i in 0..grouped.height() {
        let k = n.get(i).unwrap_or(0);
        ci.push(match (k, std.get(i)) {
            (k, Some(s)) if k >= 2 => Some(t975(k - 1) * s / f64::from(k).sqrt()),
            _ => None,
        });
        let mut why = Vec::new();
        if k < a.min_seeds {
            why.push(format!("{k} of {} seeds", a.min_seeds));
        }
        if let Some(f) = failed.get(i).filter(|f| *f > 0) {
            why.push(format!("{f} failed"));
        }
        if let Some(s) = n_stopped.get(i).filter(|s| *s > 0) {
            let at = stopped_at.as_ref().and_then(|c| c.get(i));
            let value = stopped_value.as_ref().and_then(|c| c.get(i));
            why.push(match (at, value) {
                (Some(e), Some(v)) => format!("{s} stopped at {e}: >= {v:.1}%"),
                (Some(e), None) => format!("{s} stopped at {e}"),
                _ => format!("{s} stopped"),
            });
        }
        if let Some(u) = unfinished.get(i).filter(|u| *u > 0) {
            why.push(format!("{u} unfinished"));
        }
        flags.push(why.join(", "));
    }
    let mut out = grouped.drop_many(["stopped", "stopped_at", "stopped_value"]);
    out.with_column(Column::new("ci95".into(), ci))?;
    out.with_column(Column::new("flag".into(), flags))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> DataFrame {
        df!(
            "k" => [3u32, 3, 3, 5, 5, 5, 5],
            "mode" => ["learned", "learned", "learned", "frozen", "frozen", "frozen", "frozen"],
            "state" => ["succeeded", "succeeded", "succeeded", "succeeded", "succeeded", "failed", "pending"],
            "acc" => [Some(0.80), Some(0.90), Some(0.70), Some(0.5), Some(0.6), None, None],
        )
        .unwrap()
    }

    #[test]
    fn hand_computed_aggregates() {
        let out = aggregate(
            &fixture(),
            Aggregation {
                factors: &["k", "mode"],
                metric: "acc",
                scale: 100.0,
                min_seeds: 3,
            },
        )
        .unwrap();
        let f = |name: &str, i: usize| out.column(name).unwrap().f64().unwrap().get(i).unwrap();
        let u = |name: &str, i: usize| out.column(name).unwrap().u32().unwrap().get(i).unwrap();
        // k=3: 80, 90, 70 -> mean 80, std 10, ci = 4.303 * 10 / sqrt(3) = 24.843.
        assert_eq!(u("n", 0), 3);
        assert!((f("mean", 0) - 80.0).abs() < 1e-9);
        assert!((f("std", 0) - 10.0).abs() < 1e-9);
        assert!((f("ci95", 0) - 4.303 * 10.0 / 3f64.sqrt()).abs() < 1e-9);
        assert_eq!(out.column("flag").unwrap().str().unwrap().get(0), Some(""));
        // k=5: 50, 60 -> mean 55, std 7.0711, ci = 12.706 * 7.0711 / sqrt(2) = 63.53; flagged.
        assert_eq!((u("n", 1), u("failed", 1), u("unfinished", 1)), (2, 1, 1));
        assert!((f("mean", 1) - 55.0).abs() < 1e-9);
        assert!((f("std", 1) - 50f64.sqrt()).abs() < 1e-9);
        assert!((f("ci95", 1) - 12.706 * 50f64.sqrt() / 2f64.sqrt()).abs() < 1e-9);
        assert_eq!(
            out.column("flag").unwrap().str().unwrap().get(1),
            Some("2 of 3 seeds, 1 failed, 1 unfinished")
        );
    }

    #[test]
    fn stopped_trials_are_never_in_a_mean_and_their_cells_say_where_they_stopped() {
        let trials = df!(
            "k" => [3u32, 3, 3, 5, 5],
            "state" => ["succeeded", "stopped", "stopped", "stopped", "stopped"],
            "final_test_acc" => [Some(0.80), None, None, None, None],
            "epochs_reached" => [Some(30u32), Some(15), Some(16), Some(5), Some(5)],
            "last_test_acc" => [Some(0.80), Some(0.60), Some(0.624), Some(0.4), Some(0.5)],
        )
        .unwrap();
        let out = aggregate(
            &trials,
            Aggregation {
                factors: &["k"],
                metric: "final_test_acc",
                scale: 100.0,
                min_seeds: 1,
            },
        )
        .unwrap();
        let flag = |i: usize| out.column("flag").unwrap().str().unwrap().get(i).unwrap().to_owned();
        let mean = |i: usize| out.column("mean").unwrap().f64().unwrap().get(i);
        assert_eq!(mean(0), Some(80.0), "the finished trial alone");
        assert_eq!(flag(0), "2 stopped at 15: >= 61.2%");
        assert_eq!(mean(1), None, "nothing finished: no mean");
        assert_eq!(flag(1), "0 of 1 seeds, 2 stopped at 5: >= 45.0%");
        let unfinished = out.column("unfinished").unwrap().u32().unwrap();
        assert_eq!(
            (unfinished.get(0), unfinished.get(1)),
            (Some(0), Some(0)),
            "stopped is not unfinished"
        );
        assert!(out.column("stopped_at").is_err(), "helper columns are not in the table");
    }

    #[test]
    fn t_quantiles() {
        assert_eq!(t975(1), 12.706);
        assert_eq!(t975(3), 3.182);
        assert_eq!(t975(100), 1.96);
        assert!(t975(0).is_nan());
    }
}
