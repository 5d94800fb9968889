//! Small, dependency-free SVG charts for reports: line charts (with optional bands, e.g. a
//! confidence interval or the spread over seeds) and grids of heatmaps. The output is
//! well-formed XML that can be inlined into HTML or saved as `.svg`.

use std::fmt::Write;

const PALETTE: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
];

/// Escapes text for XML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line of a [`LineChart`].
#[derive(Debug, Clone, Default)]
pub struct Line {
    /// Legend text.
    pub name: String,
    /// Points `(x, y)`, drawn in x order.
    pub points: Vec<(f64, f64)>,
    /// Optional band `(x, low, high)` drawn behind the line.
    pub band: Vec<(f64, f64, f64)>,
    /// Dashed instead of solid.
    pub dashed: bool,
}

/// A line chart.
#[derive(Debug, Clone, Default)]
pub struct LineChart {
    /// Title above the plot.
    pub title: String,
    /// X-axis label.
    pub x_label: String,
    /// Y-axis label.
    pub y_label: String,
    /// Plot x on a log2 axis (expansion factors).
    pub x_log2: bool,
    /// The lines.
    pub lines: Vec<Line>,
}

/// An `<svg>` element's opening tag of `w` x `h` and its bold title at (`title_x`, 20).
fn svg_open(w: f64, h: f64, font_size: u32, title_x: f64, title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="{font_size}"><text x="{title_x}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    )
}

fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi <= lo || hi.is_nan() || lo.is_nan() {
        return vec![lo];
    }
    let raw = (hi - lo) / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn label(v: f64) -> String {
    convsweep_proto::numbers::readable(v)
}

impl LineChart {
    /// Renders the chart as an SVG element.
    pub fn svg(&self) -> String {
        let longest = self.lines.iter().map(|l| l.name.chars().count()).max().unwrap_or(0) as f64;
        let right = (40.0 + 7.0 * longest).clamp(60.0, 360.0);
        let (w, h) = (480.0 + right, 360.0);
        let (left, top, bottom) = (64.0, 36.0, 48.0);
        let tx = |x: f64| if self.x_log2 { x.max(1e-12).log2() } else { x };
        let mut xs: Vec<f64> = Vec::new();
        let mut ys: Vec<f64> = Vec::new();
        for l in &self.lines {
            for (x, y) in &l.points {
                xs.push(tx(*x));
                ys.push(*y);
            }
            for (x, lo, hi) in &l.band {
                xs.push(tx(*x));
                ys.extend([*lo, *hi]);
            }
        }
        let finite = |v: &Vec<f64>| v.iter().copied().filter(|x| x.is_finite()).collect::<Vec<_>>();
        let (xs, ys) = (finite(&xs), finite(&ys));
        let mut svg = svg_open(w, h, 12, left, &self.title);
        if xs.is_empty() || ys.is_empty() {
            let _ = write!(svg, r#"<text x="{}" y="{}">no data</text></svg>"#, left, h / 2.0);
            return svg;
        }
        let (mut x0, mut x1) = (
            xs.iter().copied().fold(f64::INFINITY, f64::min),
            xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        let (mut y0, mut y1) = (
            ys.iter().copied().fold(f64::INFINITY, f64::min),
            ys.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        if x1 - x0 < 1e-12 {
            x0 -= 1.0;
            x1 += 1.0;
        }
        let pad = ((y1 - y0) * 0.08).max(1e-6);
        y0 -= pad;
        y1 += pad;
        let (pw, ph) = (w - left - right, h - top - bottom);
        let px = |x: f64| left + (tx(x) - x0) / (x1 - x0) * pw;
        let py = |y: f64| top + (1.0 - (y - y0) / (y1 - y0)) * ph;
        // Axes and ticks.
        let _ = write!(
            svg,
            r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
        );
        let mut distinct: Vec<f64> = Vec::new();
        for l in &self.lines {
            for (x, _) in &l.points {
                if !distinct.iter().any(|d| (d - x).abs() < 1e-12) {
                    distinct.push(*x);
                }
            }
        }
        distinct.sort_by(f64::total_cmp);
        let xticks: Vec<f64> = if !distinct.is_empty() && distinct.len() <= 8 {
            // Few x values (kernel sizes, expansions, severities): tick exactly those.
            distinct
        } else if self.x_log2 {
            let mut t: Vec<f64> = (x0.ceil() as i64..=x1.floor() as i64)
                .map(|e| 2f64.powi(e as i32))
                .collect();
            if t.is_empty() {
                t.push(2f64.powf(x0));
            }
            t
        } else {
            nice_ticks(x0, x1, 6)
        };
        for t in xticks {
            let x = px(t);
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#444"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                top + ph,
                top + ph + 4.0,
                top + ph + 17.0,
                label(t)
            );
        }
        for t in nice_ticks(y0, y1, 5) {
            let y = py(t);
            let _ = write!(
                svg,
                r##"<line x1="{:.1}" y1="{y:.1}" x2="{left}" y2="{y:.1}" stroke="#444"/><line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                left - 4.0,
                left + pw,
                left - 7.0,
                y + 4.0,
                label(t)
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            left + pw / 2.0,
            h - 10.0,
            escape(&self.x_label)
        );
        let _ = write!(
            svg,
            r#"<text x="14" y="{:.1}" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"#,
            top + ph / 2.0,
            top + ph / 2.0,
            escape(&self.y_label)
        );
        // Bands, then lines and points, then the legend.
        for (i, l) in self.lines.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let mut band: Vec<(f64, f64, f64)> = l
                .band
                .iter()
                .copied()
                .filter(|b| b.1.is_finite() && b.2.is_finite())
                .collect();
            band.sort_by(|a, b| a.0.total_cmp(&b.0));
            if band.len() >= 2 {
                let upper: Vec<String> = band
                    .iter()
                    .map(|(x, _, hi)| format!("{:.1},{:.1}", px(*x), py(*hi)))
                    .collect();
                let lower: Vec<String> = band
                    .iter()
                    .rev()
                    .map(|(x, lo, _)| format!("{:.1},{:.1}", px(*x), py(*lo)))
                    .collect();
                let _ = write!(
                    svg,
                    r#"<polygon points="{} {}" fill="{color}" fill-opacity="0.15" stroke="none"/>"#,
                    upper.join(" "),
                    lower.join(" ")
                );
            }
            let mut points: Vec<(f64, f64)> = l.points.iter().copied().filter(|p| p.1.is_finite()).collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let path: Vec<String> = points
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
                .collect();
            let dash = if l.dashed { r#" stroke-dasharray="5,4""# } else { "" };
            if path.len() >= 2 {
                let _ = write!(
                    svg,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
                    path.join(" ")
                );
            }
            for (x, y) in &points {
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                    px(*x),
                    py(*y)
                );
            }
            let ly = top + 12.0 + 18.0 * i as f64;
            let lx = left + pw + 12.0;
            let _ = write!(
                svg,
                r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
                lx + 18.0,
                lx + 22.0,
                ly + 4.0,
                escape(&l.name)
            );
        }
        svg.push_str("</svg>");
        svg
    }
}

/// One k x k map of a [`HeatmapGrid`].
#[derive(Debug, Clone)]
pub struct Heatmap {
    /// Caption.
    pub name: String,
    /// Side.
    pub k: usize,
    /// Row-major values.
    pub values: Vec<f64>,
}

/// Heatmaps side by side, each with its own colour scale (white = its minimum, dark blue =
/// its maximum), captioned with the range.
#[derive(Debug, Clone, Default)]
pub struct HeatmapGrid {
    /// Title.
    pub title: String,
    /// The maps.
    pub maps: Vec<Heatmap>,
}

impl HeatmapGrid {
    /// Renders the grid as an SVG element.
    pub fn svg(&self) -> String {
        let cell_box = 120.0;
        let per_row = 5usize;
        let rows = self.maps.len().div_ceil(per_row).max(1);
        let w = 20.0 + per_row.min(self.maps.len().max(1)) as f64 * (cell_box + 30.0);
        let h = 40.0 + rows as f64 * (cell_box + 50.0);
        let mut svg = svg_open(w, h, 11, 20.0, &self.title);
        for (i, m) in self.maps.iter().enumerate() {
            let (gx, gy) = (
                20.0 + (i % per_row) as f64 * (cell_box + 30.0),
                36.0 + (i / per_row) as f64 * (cell_box + 50.0),
            );
            let lo = m.values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = m.values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let cell = cell_box / m.k.max(1) as f64;
            for (j, v) in m.values.iter().enumerate() {
                let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
                let (r, g, b) = (255.0 - 222.0 * t, 255.0 - 155.0 * t, 255.0 - 75.0 * t);
                let _ = write!(
                    svg,
                    r#"<rect x="{:.1}" y="{:.1}" width="{cell:.1}" height="{cell:.1}" fill="rgb({},{},{})"/>"#,
                    gx + (j % m.k) as f64 * cell,
                    gy + (j / m.k) as f64 * cell,
                    r as u8,
                    g as u8,
                    b as u8
                );
            }
            let _ = write!(
                svg,
                r##"<rect x="{gx:.1}" y="{gy:.1}" width="{cell_box}" height="{cell_box}" fill="none" stroke="#444"/><text x="{gx:.1}" y="{:.1}">{}</text><text x="{gx:.1}" y="{:.1}" fill="#555">{} to {}</text>"##,
                gy + cell_box + 14.0,
                escape(&m.name),
                gy + cell_box + 28.0,
                label(lo),
                label(hi)
            );
        }
        svg.push_str("</svg>");
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_escape_text_and_draw_every_line() {
        let chart = LineChart {
            title: "a < b & c".into(),
            x_label: "k".into(),
            y_label: "acc".into(),
            x_log2: false,
            lines: vec![
                Line {
                    name: "learned".into(),
                    points: vec![(3.0, 80.0), (5.0, 85.0)],
                    band: vec![(3.0, 78.0, 82.0), (5.0, 83.0, 87.0)],
                    dashed: false,
                },
                Line {
                    name: "frozen".into(),
                    points: vec![(3.0, 60.0), (5.0, f64::NAN)],
                    ..Default::default()
                },
            ],
        };
        let svg = chart.svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("a &lt; b &amp; c"));
        assert_eq!(
            svg.matches("<polyline").count(),
            1,
            "one line has a single finite point"
        );
        assert_eq!(svg.matches("<polygon").count(), 1);
        assert!(svg.contains(">learned<") && svg.contains(">frozen<"));
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(label(2.5), "2.5");
        assert_eq!(label(3.0), "3");
    }

    #[test]
    fn heatmaps_have_a_cell_per_position() {
        let grid = HeatmapGrid {
            title: "k".into(),
            maps: vec![Heatmap {
                name: "k=3".into(),
                k: 3,
                values: (0..9).map(f64::from).collect(),
            }],
        };
        assert_eq!(grid.svg().matches("<rect").count(), 9 + 1);
    }
}
