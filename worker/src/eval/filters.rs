//! Per-layer filter statistics (Gavrikov & Keuper's definitions, see PAPER.md):
//!
//! - FVE: reshape the weights to `(n, k*k)` with `n = c_out * c_in`, centre each column, take
//!   the singular values `s`, variances `v = s^2 / (n - 1)`, ratios `r = v / sum(v)`,
//!   `FVE = -sum r log10 r`; normalised by `T(n) = 1.2618047 / (1 + exp(-0.88767525 (log2 n -
//!   2.30436435))) - 0.31050834`, which is defined for 3x3 filters only.
//! - sparsity: share of k x k filters whose every `|w|` is below 1% of the layer's max `|w|`.
//! - orthogonality: `1 - mean |cos|` between distinct output filters (flattened `c_in*k*k`).
//! - spatial-variance heatmap: kernels scaled by the layer's weight std, variance over all
//!   kernels at each of the k x k positions.
//!
//! LC-blocks without an in-between op are measured on their folded filters (the Lemma); with
//! one, on their spatial conv. The singular values come from the eigenvalues of the `k*k x k*k`
//! covariance, which equals the SVD route and stays cheap for any number of filters.

use convsweep_proto::pb;
use tch::{Kind, Tensor};

use crate::model::Net;
use crate::model::lc::{self, SpatialLayer};

/// `T(n)`, the FVE of 3x3 filters at which the normalised FVE is 1.
pub fn fve_normaliser(n: f64) -> f64 {
    1.2618047 / (1.0 + (-0.88767525 * (n.log2() - 2.30436435)).exp()) - 0.31050834
}

/// The statistics of one weight `[c_out, c_in, k, k]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// FVE, log10.
    pub fve: f64,
    /// FVE / T(n), for 3x3 only.
    pub fve_norm: Option<f64>,
    /// Share of near-zero filters.
    pub sparsity: f64,
    /// 1 - mean |cos| between output filters.
    pub orthogonality: f64,
    /// k x k variances, row-major.
    pub heatmap: Vec<f64>,
    /// n = c_out * c_in.
    pub filters: u64,
}

/// Computes [`Stats`] of `w`.
pub fn stats(w: &Tensor) -> Stats {
    tch::no_grad(|| {
        let w = w.to_device(tch::Device::Cpu).to_kind(Kind::Double);
        let size = w.size();
        let (c_out, k) = (size[0], size[2]);
        let n = size[0] * size[1];
        let x = w.reshape([n, k * k]);
        let centred = &x - x.mean_dim([0i64].as_slice(), true, Kind::Double);
        let cov = centred.transpose(0, 1).matmul(&centred) / ((n - 1).max(1) as f64);
        let v = cov.linalg_eigvalsh("L").clamp_min(0.0);
        let total = v.sum(Kind::Double).double_value(&[]);
        let fve = if total > 0.0 {
            Vec::<f64>::try_from(&v / total)
                .unwrap_or_default()
                .into_iter()
                .filter(|r| *r > 0.0)
                .map(|r| -r * r.log10())
                .sum()
        } else {
            0.0
        };
        let fve_norm = (k == 3).then(|| fve / fve_normaliser(n as f64));

        let abs = x.abs();
        let max_abs = abs.max().double_value(&[]);
        let per_filter_max = abs.amax([1i64].as_slice(), false);
        let sparsity = per_filter_max
            .lt(0.01 * max_abs)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[]);

        let rows = w.reshape([c_out, -1]);
        let unit = &rows / rows.norm_scalaropt_dim(2, [1i64].as_slice(), true).clamp_min(1e-12);
        let cos = unit.matmul(&unit.transpose(0, 1)).abs();
        let pairs = (c_out * (c_out - 1)).max(1) as f64;
        let off_diagonal = cos.sum(Kind::Double).double_value(&[]) - cos.trace().double_value(&[]);
        let orthogonality = 1.0 - off_diagonal / pairs;

        let scaled = &x / w.std(true).clamp_min(1e-30);
        let heatmap = Vec::<f64>::try_from(scaled.var_dim([0i64].as_slice(), false, false)).unwrap_or_default();
        Stats {
            fve,
            fve_norm,
            sparsity,
            orthogonality,
            heatmap,
            filters: n as u64,
        }
    })
}

/// The filters a layer is measured on, and whether they are folded from an LC-block.
pub fn measured_filters(layer: &SpatialLayer) -> (Tensor, bool) {
    match lc::fold(layer) {
        Some(folded) => (folded, true),
        None => (layer.weight.shallow_clone(), false),
    }
}

/// Statistics of every spatial layer of `net`, labelled with `stage` (`init` or `final`).
pub fn measure(net: &Net, stage: &str) -> Vec<pb::FilterStats> {
    net.spatial
        .iter()
        .map(|layer| {
            let (w, folded) = measured_filters(layer);
            let s = stats(&w);
            pb::FilterStats {
                stage: stage.to_owned(),
                layer: layer.name.clone(),
                kernel_size: w.size()[2] as u32,
                filters: s.filters,
                fve: s.fve,
                fve_norm: s.fve_norm,
                sparsity: s.sparsity,
                orthogonality: s.orthogonality,
                heatmap: s.heatmap,
                folded,
            }
        })
        .collect()
}
