//! Rank agreement between two orderings of the same items: what the coordinator's pilot and the
//! report's budget section measure (does an early ranking match the final one?).

/// Kendall's tau-b between `a` and `b` (paired values of the same items; ties count as neither
/// concordant nor discordant, and tau-b corrects for them). `None` with fewer than two items or
/// when either side is all ties.
pub fn kendall_tau_b(a: &[f64], b: &[f64]) -> Option<f64> {
    assert_eq!(a.len(), b.len(), "paired values");
    let n = a.len();
    if n < 2 {
        return None;
    }
    let (mut concordant, mut discordant, mut ties_a, mut ties_b) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let da = a[i] - a[j];
            let db = b[i] - b[j];
            match (da == 0.0, db == 0.0) {
                (true, true) => {}
                (true, false) => ties_a += 1,
                (false, true) => ties_b += 1,
                (false, false) if (da > 0.0) == (db > 0.0) => concordant += 1,
                (false, false) => discordant += 1,
            }
        }
    }
    let left = (concordant + discordant + ties_a) as f64;
    let right = (concordant + discordant + ties_b) as f64;
    if left == 0.0 || right == 0.0 {
        return None;
    }
    Some((concordant - discordant) as f64 / (left * right).sqrt())
}

/// Of the `k` best items by `final_` (higher is better), the share that are also among the `k`
/// best by `early`: how many of the configurations that end on top a rung would have kept.
/// Ties are broken by position, the same way on both sides.
pub fn top_k_recall(early: &[f64], final_: &[f64], k: usize) -> Option<f64> {
    assert_eq!(early.len(), final_.len(), "paired values");
    let k = k.min(early.len());
    if k == 0 {
        return None;
    }
    let top = |v: &[f64]| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[j].total_cmp(&v[i]).then(i.cmp(&j)));
        idx.truncate(k);
        idx
    };
    let (e, f) = (top(early), top(final_));
    Some(f.iter().filter(|i| e.contains(i)).count() as f64 / k as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tau_is_one_for_the_same_order_minus_one_for_the_reverse_and_corrected_for_ties() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(kendall_tau_b(&a, &[10.0, 20.0, 30.0, 40.0]), Some(1.0));
        assert_eq!(kendall_tau_b(&a, &[4.0, 3.0, 2.0, 1.0]), Some(-1.0));
        // One swapped pair of six: (5 - 1) / 6.
        let t = kendall_tau_b(&a, &[1.0, 3.0, 2.0, 4.0]).unwrap();
        assert!((t - 4.0 / 6.0).abs() < 1e-12, "{t}");
        // scipy.stats.kendalltau([1, 2, 2, 3], [1, 2, 3, 3]) = 0.8
        let t = kendall_tau_b(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 3.0]).unwrap();
        assert!((t - 0.8).abs() < 1e-12, "{t}");
        assert_eq!(kendall_tau_b(&[1.0], &[1.0]), None);
        assert_eq!(kendall_tau_b(&[1.0, 1.0], &[1.0, 2.0]), None);
    }

    #[test]
    fn recall_counts_the_final_top_k_found_early() {
        assert_eq!(top_k_recall(&[4.0, 3.0, 2.0, 1.0], &[4.0, 3.0, 2.0, 1.0], 2), Some(1.0));
        assert_eq!(top_k_recall(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0], 2), Some(0.0));
        // The same two on top in another order: all found.
        assert_eq!(top_k_recall(&[3.0, 4.0, 1.0, 2.0], &[4.0, 3.0, 2.0, 1.0], 2), Some(1.0));
        assert_eq!(top_k_recall(&[4.0, 1.0, 3.0, 2.0], &[4.0, 3.0, 2.0, 1.0], 2), Some(0.5));
        assert_eq!(top_k_recall(&[], &[], 1), None);
    }
}
