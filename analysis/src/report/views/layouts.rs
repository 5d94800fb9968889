//! The paper's table layouts: Table 1 (baseline vs LC-blocks per dataset), Table 2 (ImageNet:
//! frozen and learned by expansion) and Table 3 (the operation inside LC-blocks).

use std::cmp::Ordering;

use polars::prelude::*;

use crate::error::Result;
use crate::report::grouping::*;
use crate::report::section::Section;

/// A cell's mean ± std (n), with the aggregate's note on stopped (censored) trials.
fn lookup(df: &DataFrame, keys: &[(&str, &str)]) -> String {
    for i in 0..df.height() {
        if keys.iter().all(|(c, v)| cell(df, c, i) == *v) {
            let n = f64_at(df, "n", i).unwrap_or(0.0) as u32;
            let value = pm(f64_at(df, "mean", i), f64_at(df, "std", i), n);
            let flag = cell(df, "flag", i);
            return match flag.split(", ").find(|part| part.contains("stopped")) {
                Some(stopped) if n == 0 => stopped.to_owned(),
                Some(stopped) => format!("{value} [{stopped}]"),
                None => value,
            };
        }
    }
    pm(None, None, 0)
}

/// Numbers by value (so that k = 9 comes before k = 11), anything else as text; `-` (absent)
/// sorts before numbers.
fn natural(a: &str, b: &str) -> Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.total_cmp(&y),
        _ => a.cmp(b),
    }
}

/// Row keys of a paper-layout table: `first` and every other varying factor except `skip`.
fn row_keys(first: &'static str, varying: &[&'static str], skip: &[&str]) -> Vec<&'static str> {
    let mut keys = vec![first];
    keys.extend(varying.iter().copied().filter(|f| *f != first && !skip.contains(f)));
    keys
}

/// A paper-layout table: one row per distinct value of `keys` among `rows_of`, one column per
/// `(heading, extra key-value pairs)`, each cell the mean ± std (n) of `stats`.
fn layout(
    rows_of: &DataFrame,
    keys: &[&str],
    stats: &DataFrame,
    columns: &[(String, Vec<(&str, String)>)],
) -> Result<DataFrame> {
    let mut seen: Vec<Vec<String>> = Vec::new();
    for i in 0..rows_of.height() {
        let k: Vec<String> = keys.iter().map(|c| cell(rows_of, c, i)).collect();
        if !seen.contains(&k) {
            seen.push(k);
        }
    }
    seen.sort_by(|a, b| {
        a.iter()
            .zip(b)
            .map(|(x, y)| natural(x, y))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    });
    let mut out: Vec<Column> = keys
        .iter()
        .enumerate()
        .map(|(j, name)| Column::new((*name).into(), seen.iter().map(|k| k[j].clone()).collect::<Vec<_>>()))
        .collect();
    for (heading, extra) in columns {
        let values: Vec<String> = seen
            .iter()
            .map(|k| {
                let mut cond: Vec<(&str, &str)> = keys.iter().copied().zip(k.iter().map(String::as_str)).collect();
                cond.extend(extra.iter().map(|(c, v)| (*c, v.as_str())));
                lookup(stats, &cond)
            })
            .collect();
        out.push(Column::new(heading.as_str().into(), values));
    }
    Ok(DataFrame::new_infer_height(out)?)
}

/// The Table 1 layout: baseline and LC-block columns, learned and frozen, per dataset.
pub fn table1(trials: &DataFrame, varying: &[&'static str]) -> Result<Section> {
    let keys = row_keys("dataset", varying, &["expansion", "train_mode", "inter_op"]);
    let lc = col("expansion").is_not_null();
    let mut by: Vec<&str> = keys.clone();
    by.push("train_mode");
    let base = stats_by(trials, &by, lc.clone().not())?;
    by.push("expansion");
    let lc_stats = stats_by(trials, &by, lc)?;
    let e_max = (0..lc_stats.height())
        .filter_map(|i| f64_at(&lc_stats, "expansion", i).map(|e| e as i64))
        .max();
    let mode = |m: &str| vec![("train_mode", m.to_owned())];
    let mut columns = vec![
        ("baseline learned".to_owned(), mode("learned")),
        ("baseline frozen".to_owned(), mode("frozen")),
    ];
    let mut df = layout(trials, &keys, &base, &columns)?;
    if let Some(e) = e_max {
        columns = ["learned", "frozen"]
            .iter()
            .map(|m| {
                (
                    format!("LC {m} (E={e})"),
                    vec![("train_mode", (*m).to_owned()), ("expansion", e.to_string())],
                )
            })
            .collect();
        let lc_df = layout(trials, &keys, &lc_stats, &columns)?;
        for c in &columns {
            df.with_column(lc_df.column(c.0.as_str())?.clone())?;
        }
    }
    let mut s = Section::new(
        "table1",
        "Paper Table 1 layout: baseline vs LC-blocks per dataset",
        "Test accuracy (%), mean ± std (seeds), one row per dataset and every other factor that varies. The paper's Table 1 uses ResNet-20-16 with E = 128; here the LC columns use the largest expansion present. Without LC-block trials only the baseline columns are filled.",
    );
    s.tables.push(("table1".into(), df));
    Ok(s)
}

/// The Table 2 layout: ImageNet-style (imagefolder) trials, frozen and learned, one row per
/// expansion (the plain baseline first) and every other factor that varies. None for a sweep
/// without imagefolder trials.
pub fn table2(trials: &DataFrame, varying: &[&'static str]) -> Result<Option<Section>> {
    let folder = trials
        .clone()
        .lazy()
        .filter(col("dataset").eq(lit("imagefolder")))
        .collect()?;
    if folder.height() == 0 {
        return Ok(None);
    }
    let keys = row_keys("expansion", varying, &["train_mode", "dataset"]);
    let mut by = keys.clone();
    by.push("train_mode");
    let stats = stats_by(&folder, &by, lit(true))?;
    let columns: Vec<(String, Vec<(&str, String)>)> = ["frozen", "learned"]
        .iter()
        .map(|m| ((*m).to_owned(), vec![("train_mode", (*m).to_owned())]))
        .collect();
    let mut df = layout(&folder, &keys, &stats, &columns)?;
    let blocks: Vec<String> = (0..df.height())
        .map(|i| match cell(&df, "expansion", i).as_str() {
            "-" => "baseline".to_owned(),
            e => format!("LC x{e}"),
        })
        .collect();
    df.with_column(Column::new("expansion".into(), blocks))?;
    let mut s = Section::new(
        "table2",
        "Paper Table 2 layout: ImageNet, frozen and learned by expansion",
        "Top-1 test accuracy (%) of the image-folder (ImageNet-style) trials, mean ± std (seeds), \
         one row per expansion and every other factor that varies. The paper's Table 2: \
         ResNet-18d, one run each (examples/paper/table2-imagenet.toml).",
    );
    s.tables.push(("table2".into(), df));
    Ok(Some(s))
}

/// The Table 3 layout: LC-block accuracy by the operation between the two convs.
pub fn table3(trials: &DataFrame, varying: &[&'static str]) -> Result<Section> {
    let keys = row_keys("inter_op", varying, &["train_mode", "inter_op"]);
    let lc_trials = trials.clone().lazy().filter(col("expansion").is_not_null()).collect()?;
    let mut by = keys.clone();
    by.push("train_mode");
    let stats = stats_by(trials, &by, col("expansion").is_not_null())?;
    let columns: Vec<(String, Vec<(&str, String)>)> = ["frozen", "learned"]
        .iter()
        .map(|m| ((*m).to_owned(), vec![("train_mode", (*m).to_owned())]))
        .collect();
    let df = layout(&lc_trials, &keys, &stats, &columns)?;
    let mut s = Section::new(
        "table3",
        "Paper Table 3 layout: the operation inside LC-blocks",
        "Test accuracy (%) of LC-block trials by the operation between the spatial and the 1x1 conv \
         (the paper: ResNet-LC-20-16x64 on CIFAR-10), one row per operation and every other factor \
         that varies. Empty when the sweep has no LC-block trials.",
    );
    s.tables.push(("table3".into(), df));
    Ok(s)
}
