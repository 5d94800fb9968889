//! The paper check: every published cell of Tables 1 and 3 beside the sweep's trials of the
//! same configuration, with a verdict.
//!
//! A trial matches a table cell when it is ResNet-20-16, k = 3, kaiming-uniform (PyTorch's
//! default), on the full dataset, with the LC setting of the cell, and it is only compared when
//! it also used the paper's recipe (75 epochs, SGD Nesterov 0.9, lr 1e-2 cosine, weight decay
//! 1e-2, batch 256, label smoothing 0.1). Table 2 (ImageNet ResNet-18d) is not expressible in
//! the spec language and not checked.

use polars::prelude::*;

use crate::aggregate::{Aggregation, aggregate};
use crate::error::Result;
use crate::paper::{PAPER_RUNS, PUBLISHED, verdict};
use crate::report::section::Section;

/// The paper-check view: every published cell with the sweep's matching trials.
pub fn view(trials: &DataFrame) -> Result<Section> {
    let paper_recipe = col("arch")
        .eq(lit("resnet"))
        .and(col("depth").eq(lit(20u32)))
        .and(col("width").eq(lit(16u32)))
        .and(col("kernel_size").eq(lit(3u32)))
        .and(col("init").eq(lit("kaiming-uniform")))
        .and(col("train_size").is_null())
        .and(col("test_size").is_null());
    let recipe_ok = col("epochs")
        .eq(lit(75u32))
        .and(col("batch_size").eq(lit(256u32)))
        .and(col("lr").eq(lit(0.01)))
        .and(col("momentum").eq(lit(0.9)))
        .and(col("nesterov"))
        .and(col("weight_decay").eq(lit(0.01)))
        .and(col("label_smoothing").eq(lit(0.1)))
        .and(col("warmup_epochs").eq(lit(0u32)))
        .and(col("optimizer").eq(lit("sgd")))
        .and(col("loss").eq(lit("ce")))
        .and(col("mixup").eq(lit(0.0)))
        .and(col("cutmix").eq(lit(0.0)))
        .and(col("schedule").eq(lit("cosine")));
    let candidates = trials
        .clone()
        .lazy()
        .filter(paper_recipe.and(col("state").eq(lit("succeeded"))))
        .with_column(recipe_ok.alias("recipe_ok"))
        .collect()?;
    let (mut table, mut dataset, mut column, mut published, mut reproduced, mut seeds, mut verdicts) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut matched = 0;
    for p in PUBLISHED {
        let expansion = match p.expansion {
            Some(e) => col("expansion").eq(lit(e)),
            None => col("expansion").is_null(),
        };
        let rows = candidates
            .clone()
            .lazy()
            .filter(
                col("dataset")
                    .eq(lit(p.dataset))
                    .and(expansion)
                    .and(col("inter_op").eq(lit(p.inter_op)))
                    .and(col("train_mode").eq(lit(p.train_mode))),
            )
            .collect()?;
        table.push(p.table);
        dataset.push(p.dataset);
        column.push(p.column);
        published.push(format!("{:.2} ± {:.2}", p.mean, p.std));
        let with_recipe = rows.clone().lazy().filter(col("recipe_ok")).collect()?;
        let stats = aggregate(
            &with_recipe,
            Aggregation {
                factors: &["dataset"],
                metric: "final_test_acc",
                scale: 100.0,
                min_seeds: PAPER_RUNS,
            },
        )?;
        let n = if stats.height() == 0 {
            0
        } else {
            stats.column("n")?.u32()?.get(0).unwrap_or(0)
        };
        seeds.push(n);
        if n == 0 {
            reproduced.push("-".to_owned());
            verdicts.push(if rows.height() > 0 {
                "in the sweep, but not with the paper's recipe".to_owned()
            } else {
                "not in this sweep".to_owned()
            });
            continue;
        }
        matched += 1;
        let mean = stats.column("mean")?.f64()?.get(0).unwrap_or(f64::NAN);
        // One seed has no spread; the verdict then says there are too few.
        let std = stats.column("std")?.f64()?.get(0).unwrap_or(0.0);
        reproduced.push(format!("{mean:.2} ± {std:.2}"));
        verdicts.push(verdict(p, mean, std, n));
    }
    let df = df!(
        "table" => table,
        "dataset" => dataset,
        "column" => column,
        "paper" => published,
        "reproduced" => reproduced,
        "seeds" => seeds,
        "verdict" => verdicts,
    )?;
    let text = format!(
        "The paper's Tables 1 and 3 (test accuracy %, mean ± std over {PAPER_RUNS} runs) beside this sweep's \
         trials of the same configuration (ResNet-20-16, k = 3, kaiming-uniform, full dataset, the \
         paper's recipe). {matched} of {} cells have matching trials. Agreement means the means differ \
         by at most 1.96 standard errors of the difference.",
        PUBLISHED.len()
    );
    let mut s = Section::new("paper", "Paper check: Tables 1 and 3", &text);
    s.tables.push(("paper_check".into(), df));
    Ok(s)
}
