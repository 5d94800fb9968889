//! The paper's published numbers (Gavrikov & Keuper, Tables 1 and 3; mean ± std over 4 runs)
//! and the verdict of a reproduced cell against them; the report's view of the check is
//! [`crate::report::views::paper`].
//!
//! A trial matches a table cell when it is ResNet-20-16, k = 3, kaiming-uniform (PyTorch's
//! default), on the full dataset, with the LC setting of the cell, and it is only compared when
//! it also used the paper's recipe (75 epochs, SGD Nesterov 0.9, lr 1e-2 cosine, weight decay
//! 1e-2, batch 256, label smoothing 0.1). Agreement: the difference of the means is within 1.96
//! standard errors of the difference (`sqrt(s1^2/n1 + s2^2/n2)`). Table 2 (ImageNet
//! ResNet-18d) is not expressible in the spec language and not checked.

/// One published cell.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    /// "Table 1" or "Table 3".
    pub table: &'static str,
    /// Dataset spelling in specs.
    pub dataset: &'static str,
    /// LC expansion (None: the plain baseline).
    pub expansion: Option<u32>,
    /// In-between op.
    pub inter_op: &'static str,
    /// learned or frozen.
    pub train_mode: &'static str,
    /// Column heading in the paper.
    pub column: &'static str,
    /// Mean test accuracy (%).
    pub mean: f64,
    /// Standard deviation (%).
    pub std: f64,
}

/// A published cell: `cell!(table, dataset, expansion, inter_op, train_mode, column, mean, std)`.
macro_rules! cell {
    ($table:expr, $dataset:expr, $expansion:expr, $inter_op:expr, $mode:expr, $column:expr, $mean:expr, $std:expr $(,)?) => {
        Published {
            table: $table,
            dataset: $dataset,
            expansion: $expansion,
            inter_op: $inter_op,
            train_mode: $mode,
            column: $column,
            mean: $mean,
            std: $std,
        }
    };
}

/// Runs behind each published mean.
pub const PAPER_RUNS: u32 = 4;

/// Tables 1 and 3, exactly as published.
pub const PUBLISHED: &[Published] = &[
    cell!("Table 1", "cifar10", None, "none", "learned", "baseline", 91.60, 0.23),
    cell!(
        "Table 1",
        "cifar10",
        Some(128),
        "none",
        "learned",
        "LC learnable",
        91.39,
        0.29,
    ),
    cell!(
        "Table 1",
        "cifar10",
        Some(128),
        "none",
        "frozen",
        "LC frozen",
        91.89,
        0.10,
    ),
    cell!("Table 1", "cifar100", None, "none", "learned", "baseline", 60.84, 0.52),
    cell!(
        "Table 1",
        "cifar100",
        Some(128),
        "none",
        "learned",
        "LC learnable",
        59.44,
        0.55,
    ),
    cell!(
        "Table 1",
        "cifar100",
        Some(128),
        "none",
        "frozen",
        "LC frozen",
        61.31,
        0.74,
    ),
    cell!(
        "Table 1",
        "fashion-mnist",
        None,
        "none",
        "learned",
        "baseline",
        93.65,
        0.18,
    ),
    cell!(
        "Table 1",
        "fashion-mnist",
        Some(128),
        "none",
        "learned",
        "LC learnable",
        93.44,
        0.18,
    ),
    cell!(
        "Table 1",
        "fashion-mnist",
        Some(128),
        "none",
        "frozen",
        "LC frozen",
        93.65,
        0.06,
    ),
    cell!("Table 1", "svhn", None, "none", "learned", "baseline", 96.36, 0.04),
    cell!(
        "Table 1",
        "svhn",
        Some(128),
        "none",
        "learned",
        "LC learnable",
        96.31,
        0.08,
    ),
    cell!("Table 1", "svhn", Some(128), "none", "frozen", "LC frozen", 96.34, 0.11),
    cell!(
        "Table 3",
        "cifar10",
        Some(64),
        "none",
        "frozen",
        "none / frozen",
        91.71,
        0.08,
    ),
    cell!(
        "Table 3",
        "cifar10",
        Some(64),
        "none",
        "learned",
        "none / learned",
        91.18,
        0.10,
    ),
    cell!(
        "Table 3",
        "cifar10",
        Some(64),
        "relu",
        "frozen",
        "ReLU / frozen",
        92.78,
        0.31,
    ),
    cell!(
        "Table 3",
        "cifar10",
        Some(64),
        "relu",
        "learned",
        "ReLU / learned",
        93.38,
        0.15,
    ),
    cell!(
        "Table 3",
        "cifar10",
        Some(64),
        "bn",
        "frozen",
        "BN / frozen",
        91.50,
        0.15,
    ),
    cell!(
        "Table 3",
        "cifar10",
        Some(64),
        "bn",
        "learned",
        "BN / learned",
        91.06,
        0.23,
    ),
    cell!(
        "Table 3",
        "cifar10",
        Some(64),
        "bn-relu",
        "frozen",
        "BN+ReLU / frozen",
        93.26,
        0.18,
    ),
    cell!(
        "Table 3",
        "cifar10",
        Some(64),
        "bn-relu",
        "learned",
        "BN+ReLU / learned",
        94.72,
        0.16,
    ),
];

/// The verdict for a reproduced mean ± std over `n` seeds against a published cell.
pub fn verdict(p: &Published, mean: f64, std: f64, n: u32) -> String {
    if n < 2 {
        return format!("too few seeds to say (n = {n})");
    }
    let se = (std * std / f64::from(n) + p.std * p.std / f64::from(PAPER_RUNS)).sqrt();
    let diff = (mean - p.mean).abs();
    if diff <= 1.96 * se {
        format!("agrees (|diff| {diff:.2} <= 1.96 SE {:.2})", 1.96 * se)
    } else {
        format!("differs (|diff| {diff:.2} > 1.96 SE {:.2})", 1.96 * se)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let p = &PUBLISHED[0]; // 91.60 ± 0.23
        assert!(verdict(p, 91.5, 0.2, 4).starts_with("agrees"));
        // |diff| 1.0 against 1.96 * sqrt(0.04/4 + 0.0529/4) = 0.30: differs.
        assert!(verdict(p, 90.6, 0.2, 4).starts_with("differs (|diff| 1.00 > 1.96 SE 0.30)"));
        assert_eq!(verdict(p, 91.6, 0.0, 1), "too few seeds to say (n = 1)");
    }
}
