//! The paper check: every published cell of Tables 1-3 beside the sweep's trials of the same
//! configuration, with a verdict. Which trials match which cell, and the recipe each must have
//! used to be compared, is in [`crate::paper`].

use convsweep_proto::numbers::percent;
use polars::prelude::*;

use crate::aggregate::{Aggregation, aggregate};
use crate::error::Result;
use crate::paper::{PAPER_RUNS, PUBLISHED, SINGLE_RUN_TOLERANCE, verdict};
use crate::report::section::Section;

/// The paper-check view: every published cell with the sweep's matching trials.
pub fn view(trials: &DataFrame) -> Result<Section> {
    // Tables 1 and 3: ResNet-20-16 on a whole CIFAR-style dataset, the paper's CIFAR recipe.
    let cifar_model = col("arch")
        .eq(lit("resnet"))
        .and(col("depth").eq(lit(20u32)))
        .and(col("width").eq(lit(16u32)))
        .and(col("init").eq(lit("kaiming-uniform")));
    let cifar_recipe = col("epochs")
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
    // Table 2: ResNet-18d on a whole image folder at 224 px, convsweep's A2.
    let imagenet_model = col("arch")
        .eq(lit("resnet18d"))
        .and(col("init").eq(lit("kaiming-normal-fan-out")))
        .and(col("image_size").eq(lit(224u32)))
        .and(col("class_subset").is_null());
    let a2_recipe = col("epochs")
        .eq(lit(300u32))
        .and(col("warmup_epochs").eq(lit(5u32)))
        .and(col("loss").eq(lit("bce")))
        .and(col("mixup").eq(lit(0.1)))
        .and(col("cutmix").eq(lit(1.0)))
        .and(col("optimizer").eq(lit("lamb")).or(col("optimizer").eq(lit("adamw"))))
        .and(col("schedule").eq(lit("cosine")));
    let is_imagenet = col("dataset").eq(lit("imagefolder"));
    let paper_model = when(is_imagenet.clone())
        .then(imagenet_model)
        .otherwise(cifar_model)
        .and(col("kernel_size").eq(lit(3u32)))
        .and(col("train_size").is_null())
        .and(col("test_size").is_null());
    let recipe_ok = when(is_imagenet).then(a2_recipe).otherwise(cifar_recipe);
    let candidates = trials
        .clone()
        .lazy()
        .filter(paper_model.and(col("state").eq(lit("succeeded"))))
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
        // Quoted as the paper prints it (two decimals).
        published.push(if p.runs == 1 {
            format!("{:.2}", p.mean)
        } else {
            format!("{:.2} ± {:.2}", p.mean, p.std)
        });
        let with_recipe = rows.clone().lazy().filter(col("recipe_ok")).collect()?;
        let stats = aggregate(
            &with_recipe,
            Aggregation {
                factors: &["dataset"],
                metric: "final_test_acc",
                scale: 100.0,
                min_seeds: p.runs,
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
        reproduced.push(if n == 1 {
            percent(mean)
        } else {
            format!("{} ± {}", percent(mean), percent(std))
        });
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
        "The paper's Tables 1 and 3 (test accuracy %, mean ± std over {PAPER_RUNS} runs) and Table 2 \
         (ImageNet top-1 %, one run each) beside this sweep's trials of the same configuration \
         (Tables 1 and 3: ResNet-20-16, k = 3, kaiming-uniform, full dataset, the paper's recipe; \
         Table 2: ResNet-18d, k = 3, timm's init, a whole image folder at 224 px, convsweep's A2 \
         recipe as in examples/paper/table2-imagenet.toml). {matched} of {} cells have matching \
         trials. Agreement means the means differ by at most 1.96 standard errors of the \
         difference; against Table 2's single runs, by at most {SINGLE_RUN_TOLERANCE:.1} points.",
        PUBLISHED.len()
    );
    let mut s = Section::new("paper", "Paper check: Tables 1-3", &text);
    s.tables.push(("paper_check".into(), df));
    Ok(s)
}
