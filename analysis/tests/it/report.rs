//! The report of the fixture sweep: aggregates, every view, Markdown snapshot, well-formed HTML.

use convsweep_analysis::aggregate::{Aggregation, aggregate};
use convsweep_analysis::{Frames, Report};
use polars::prelude::*;

use crate::fixture;

fn frames() -> Frames {
    Frames::from_results(&fixture::results()).unwrap()
}

#[test]
fn frames_have_typed_columns_and_every_row() {
    let f = frames();
    assert_eq!(f.trials.height(), 12);
    assert_eq!(f.trials.column("kernel_size").unwrap().dtype(), &DataType::UInt32);
    assert_eq!(f.trials.column("final_test_acc").unwrap().dtype(), &DataType::Float64);
    assert_eq!(
        f.trials.column("mean_corruption_acc").unwrap().dtype(),
        &DataType::Float64
    );
    assert_eq!(
        f.epochs.height(),
        11 * 3,
        "every trial but the unfinished one reported 3 epochs"
    );
    assert_eq!(f.robustness.height(), 10 * 8);
    assert_eq!(f.filters.height(), 10 * 4);
    assert!(matches!(
        f.filters.column("heatmap").unwrap().dtype(),
        DataType::List(_)
    ));
    // Parquet round trip keeps the types.
    let out = tempfile::tempdir().unwrap();
    f.write_parquet(out.path()).unwrap();
    let back = Frames::read_parquet(out.path()).unwrap();
    assert_eq!(back.trials.schema(), f.trials.schema());
    assert_eq!(back.filters.schema(), f.filters.schema());
}

#[test]
fn aggregates_match_hand_computed_values() {
    let f = frames();
    let agg = aggregate(
        &f.trials,
        Aggregation {
            factors: &["kernel_size", "train_mode"],
            metric: "final_test_acc",
            scale: 100.0,
            min_seeds: 3,
        },
    )
    .unwrap();
    let row = |k: u32, mode: &str| {
        (0..agg.height())
            .find(|&i| {
                agg.column("kernel_size").unwrap().u32().unwrap().get(i) == Some(k)
                    && agg.column("train_mode").unwrap().str().unwrap().get(i) == Some(mode)
            })
            .unwrap()
    };
    let get = |name: &str, i: usize| agg.column(name).unwrap().f64().unwrap().get(i);
    // k=3 learned: 91.2, 91.6, 92.0 -> mean 91.6, std 0.4, ci95 = 4.303 * 0.4 / sqrt(3) = 0.9937.
    let i = row(3, "learned");
    assert!((get("mean", i).unwrap() - 91.6).abs() < 1e-9);
    assert!((get("std", i).unwrap() - 0.4).abs() < 1e-9);
    assert!((get("ci95", i).unwrap() - 4.303 * 0.4 / 3f64.sqrt()).abs() < 1e-9);
    // k=3 frozen: seed 2 failed -> 80.0, 80.4: mean 80.2, flagged.
    let i = row(3, "frozen");
    assert!((get("mean", i).unwrap() - 80.2).abs() < 1e-9);
    assert_eq!(
        agg.column("flag").unwrap().str().unwrap().get(i),
        Some("2 of 3 seeds, 1 failed")
    );
    // k=5 frozen: seed 2 unfinished.
    let i = row(5, "frozen");
    assert_eq!(
        agg.column("flag").unwrap().str().unwrap().get(i),
        Some("2 of 3 seeds, 1 unfinished")
    );
}

#[test]
fn the_report_has_every_view() {
    let f = frames();
    let report = Report::build(&f.for_sweep("fixture").unwrap(), "fixture").unwrap();
    let ids: Vec<&str> = report.sections.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "accuracy",
            "table1",
            "table3",
            "gain",
            "robustness",
            "overfitting",
            "filters",
            "cost",
            "paper",
            "claims"
        ]
    );
    let md = report.markdown();
    // The paper check finds Table 1's CIFAR-10 baseline (91.60 ± 0.23): 91.60 ± 0.40 over 3.
    assert!(
        md.contains("| Table 1 | cifar10 | baseline | 91.60 ± 0.23 | 91.6 ± 0.4 | 3 | agrees"),
        "{md}"
    );
    assert!(md.contains("not in this sweep"));
    // The claims: the fixture's gap grows by 3.9 pp per +1 of k over 2 seeds per cell; it has
    // no LC-blocks, so the E claims say so.
    assert!(md.contains("| gap grows with k | holds | 3.9 |"), "{md}");
    assert!(md.contains("needs LC-blocks with E >= 8"), "{md}");
    // Each attack's curve starts at radius 0 from the clean accuracy on the same images.
    for kind in ["fgsm", "pgd"] {
        assert!(
            md.contains(&format!("| {kind} | 0 | 3 | learned | 3 | 0 | 0 | 91.6 |")),
            "{md}"
        );
    }
    assert!(md.contains("| clean | 0 | 3 | learned | 91.6 |"), "{md}");
    let out = tempfile::tempdir().unwrap();
    let written = report.write(out.path()).unwrap();
    let plots: usize = report.sections.iter().map(|s| s.plots.len()).sum();
    assert_eq!(written.plots.len(), plots);
    let tables: usize = report.sections.iter().map(|s| s.tables.len()).sum();
    assert_eq!(written.tables.len(), 2 * tables, "every table as CSV and Parquet");
    for t in &written.tables {
        assert!(t.exists(), "{}", t.display());
    }
}

#[test]
fn markdown_matches_the_snapshot() {
    let f = frames();
    let md = Report::build(&f, "fixture").unwrap().markdown();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/snapshots/report.md");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(path, &md).unwrap();
    }
    let expected = std::fs::read_to_string(path).expect("snapshot exists (UPDATE_SNAPSHOTS=1 writes it)");
    assert!(
        md == expected,
        "report.md changed; review and rerun with UPDATE_SNAPSHOTS=1\n{md}"
    );
}

#[test]
fn html_is_well_formed_with_one_svg_per_plot() {
    let f = frames();
    let report = Report::build(&f, "fixture").unwrap();
    let html = report.html();
    let body = html.strip_prefix("<!DOCTYPE html>\n").expect("doctype");
    let mut reader = quick_xml::Reader::from_str(body);
    let mut depth = 0i64;
    let mut svgs = 0;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Start(e)) => {
                depth += 1;
                if e.name().as_ref() == b"svg" {
                    svgs += 1;
                }
            }
            Ok(quick_xml::events::Event::End(_)) => depth -= 1,
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("not well-formed at {}: {e}", reader.buffer_position()),
        }
    }
    assert_eq!(depth, 0, "every element closed");
    let plots: usize = report.sections.iter().map(|s| s.plots.len()).sum();
    assert_eq!(svgs, plots);
    assert!(plots >= 8);
    assert!(
        !html.contains("http://") || html.matches("http://").count() == html.matches("xmlns=\"http://").count(),
        "self-contained: no links except XML namespaces"
    );
}

/// An ImageNet sweep as `examples/paper/table2-imagenet.toml` runs it (one seed), with
/// accuracies near the paper's: the Table 2 layout and the paper check fill from it.
#[test]
fn an_imagenet_sweep_fills_table_2_and_its_paper_check() {
    use convsweep_proto::results::{Results, TrialRow};
    use convsweep_proto::{TrialSpec, TrialState, pb};

    let mut results = Results::default();
    let cells = [
        ("null", "frozen", 0.3801),
        ("null", "learned", 0.7190),
        ("1", "frozen", 0.6131),
        ("8", "frozen", 0.7000),
        ("8", "learned", 0.7185),
    ];
    for (e, mode, acc) in cells {
        let json = format!(
            r#"{{"dataset":{{"name":"imagefolder","root":"/data/imagenet"}},
                "model":{{"arch":"resnet18d","stem":"imagenet","kernel_size":3,"expansion":{e},"train_mode":"{mode}","init":"kaiming-normal-fan-out"}},
                "train":{{"epochs":300,"warmup_epochs":5,"batch_size":1024,"optimizer":"lamb","lr":0.0025,"weight_decay":0.02,
                          "loss":"bce","label_smoothing":0.0,"mixup":0.1,"cutmix":1.0,"precision":"bf16"}},"seed":0}}"#
        );
        let mut spec = TrialSpec::from_json(&json).unwrap();
        spec.canonicalize();
        spec.validate().unwrap();
        results.trials.push(TrialRow {
            sweep_id: "imagenet".into(),
            trial_id: spec.id().to_string(),
            spec,
            state: TrialState::Succeeded,
            attempts: 1,
            reason: None,
            worker_id: Some("w".into()),
            result: Some(pb::TrialResult {
                final_test_acc: acc,
                best_test_acc: acc,
                ..Default::default()
            }),
            cell: None,
        });
    }
    let f = Frames::from_results(&results).unwrap();
    let report = Report::build(&f.for_sweep("imagenet").unwrap(), "imagenet").unwrap();
    assert!(
        report.sections.iter().any(|s| s.id == "table2"),
        "an ImageNet sweep has Table 2"
    );
    let md = report.markdown();
    // Table 2's layout: the baseline first, then E by value.
    let rows: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("| baseline |") || l.starts_with("| LC x"))
        .collect();
    assert_eq!(
        rows,
        [
            "| baseline | 38.0 (1) | 71.9 (1) |",
            "| LC x1 | 61.3 (1) | - |",
            "| LC x8 | 70.0 (1) | 71.9 (1) |"
        ],
        "{md}"
    );
    // The paper check against one published run each: within 1 point agrees.
    for want in [
        r"| Table 2 | imagefolder | baseline / frozen | 37.85 | 38.0 | 1 | agrees (\|diff\| 0.2, one published run: within 1.0) |",
        r"| Table 2 | imagefolder | baseline / learned | 72.60 | 71.9 | 1 | agrees (\|diff\| 0.7, one published run: within 1.0) |",
        r"| Table 2 | imagefolder | LCx8 / frozen | 71.30 | 70.0 | 1 | differs (\|diff\| 1.3, one published run: within 1.0) |",
        r"| Table 2 | imagefolder | LCx64 / frozen | 72.46 | - | 0 | not in this sweep |",
    ] {
        assert!(md.contains(want), "{want}\n{md}");
    }
    assert!(md.contains("5 of 29 cells have matching trials"), "{md}");
}

/// The cost view shows where each trial's time went, and an export from before the split was
/// recorded (no such columns) still reports, without it.
#[test]
fn the_cost_view_splits_the_time_and_reads_older_exports() {
    let cost = |f: &Frames| {
        let report = Report::build(f, "fixture").unwrap();
        let s = report.sections.into_iter().find(|s| s.id == "cost").unwrap();
        (s.text, s.tables[0].1.clone())
    };
    let f = frames().for_sweep("fixture").unwrap();
    let (text, table) = cost(&f);
    assert!(text.contains("Where the wall time went"), "{text}");
    // The fixture: 100,000 images in 80 s of training, 8 s of epoch evaluation.
    let speed = table.column("train_images_per_s").unwrap().f64().unwrap().clone();
    assert!((0..speed.len()).all(|i| speed.get(i) == Some(1250.0)), "{table}");
    let epoch_eval = table.column("epoch_eval_s").unwrap().f64().unwrap().clone();
    assert!((0..epoch_eval.len()).all(|i| epoch_eval.get(i) == Some(8.0)), "{table}");

    let mut old = f.clone();
    old.trials = old.trials.drop_many([
        "startup_seconds",
        "train_seconds",
        "epoch_eval_seconds",
        "checkpoint_seconds",
        "report_seconds",
        "train_images",
        "train_images_per_second",
    ]);
    let (text, table) = cost(&old);
    assert!(text.contains("predate"), "{text}");
    assert!(table.column("train_s").is_err() && table.column("wall_seconds").is_ok());
}
