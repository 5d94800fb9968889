//! Numbers as a person reads them: in tables, plot labels, the terminal and the status page's
//! JSON-fed text. Files meant for machines (Parquet, CSV, JSON) keep full precision; these are
//! for display only.

/// A value of unknown unit (a learning rate, a radius, a ratio): up to 4 significant digits
/// with trailing zeros dropped (`0.05`, `1.04`, `300`), and in scientific notation when very
/// small or very large (`1e-30`, `2.5e-4`, `1e30`); `0` for zero, `nan`/`inf`/`-inf` as such.
pub fn readable(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "nan".into()
        } else if x > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if !(1e-3..1e6).contains(&a) {
        // `{:.3e}` is 4 significant digits: `1.000e-30` -> `1e-30`.
        let s = format!("{x:.3e}");
        let (mantissa, exponent) = s.split_once('e').unwrap_or((&s, "0"));
        return format!("{}e{exponent}", trim(mantissa));
    }
    let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
    trim(&format!("{x:.decimals$}")).to_owned()
}

/// A percentage (or percentage points): one decimal (`83.1`); `-0.0` shows as `0.0`.
pub fn percent(x: f64) -> String {
    if !x.is_finite() {
        return readable(x);
    }
    let s = format!("{x:.1}");
    if s == "-0.0" { "0.0".into() } else { s }
}

/// Seconds: `0.42s` and `12.3s` while short, then `1m12s` and `1h02m`; `unknown` for a
/// negative or non-finite value (an ETA not known yet).
pub fn duration(seconds: f64) -> String {
    if seconds < 0.0 || !seconds.is_finite() {
        return "unknown".into();
    }
    if seconds < 10.0 {
        return format!("{}s", trim(&format!("{seconds:.2}")));
    }
    if seconds < 59.5 {
        return format!("{}s", trim(&format!("{seconds:.1}")));
    }
    let s = seconds.round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

/// `1.2300` -> `1.23`, `4.000` -> `4`.
fn trim(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_a_person_writes_them() {
        for (x, want) in [
            (1e30, "1e30"),
            (1e-30, "1e-30"),
            (0.00025, "2.5e-4"),
            (0.05, "0.05"),
            (0.005, "0.005"),
            (0.001, "0.001"),
            (1.04, "1.04"),
            (1.23456, "1.235"),
            (4.0, "4"),
            (300.0, "300"),
            (12345.678, "12346"),
            (-0.3, "-0.3"),
            (0.0, "0"),
            (2_500_000.0, "2.5e6"),
            (f64::NAN, "nan"),
        ] {
            assert_eq!(readable(x), want, "{x}");
        }
    }

    #[test]
    fn percentages_have_one_decimal_and_durations_grow_units() {
        assert_eq!(percent(83.14), "83.1");
        assert_eq!(percent(-0.04), "0.0");
        assert_eq!(percent(100.0), "100.0");
        assert_eq!(duration(0.421), "0.42s");
        assert_eq!(duration(12.34), "12.3s");
        assert_eq!(duration(72.0), "1m12s");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(3720.0), "1h02m");
        assert_eq!(duration(-1.0), "unknown");
    }
}
