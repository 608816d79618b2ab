//! `tandem-perf plot`: latency by percentile for one or several `.hgrm` runs, as
//! an SVG written by hand. The x axis is HdrHistogram's: log scale of
//! 1/(1-percentile), so 90%, 99%, 99.9%... are evenly spaced and the tail gets
//! the room it deserves.

use std::fmt::Write as _;

/// Chart geometry (pixels).
const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
/// Line colours, one per series, in turn.
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One run to draw: its name and (latency ms, percentile fraction) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// log10(1/(1-q)), capped at `cap` decades (q = 1 sits at the cap).
fn decades(q: f64, cap: f64) -> f64 {
    if q >= 1.0 {
        cap
    } else {
        (1.0 / (1.0 - q)).log10().min(cap)
    }
}

/// A round step for about `n` ticks up to `max`.
fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    step * mag
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The SVG text of `series` under `title`.
pub fn render(title: &str, series: &[Series]) -> String {
    let finite_max = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(_, q)| *q < 1.0)
        .map(|(_, q)| decades(*q, 9.0))
        .fold(1.0f64, f64::max);
    // Room for the 100% points one decade past the last finite percentile.
    let x_decades = (finite_max.ceil() + 1.0).clamp(2.0, 9.0);
    let y_max_data = series
        .iter()
        .flat_map(|s| s.points.iter())
        .map(|(v, _)| *v)
        .fold(0.0f64, f64::max);
    let y_step = nice_step(y_max_data.max(1e-3), 6.0);
    let y_max = (y_max_data / y_step).ceil().max(1.0) * y_step;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |q: f64| LEFT + decades(q, x_decades) / x_decades * plot_w;
    let y = |v: f64| TOP + plot_h - v / y_max * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Grid and axis labels.
    for d in 0..=(x_decades as u32) {
        let q = 1.0 - 10f64.powi(-(d as i32));
        let px = x(q);
        let label = trim_percent(&format!("{}%", 100.0 * q));
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0
        );
    }
    let mut v = 0.0;
    while v <= y_max + y_step / 2.0 {
        let py = y(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            py + 4.0,
            format_ms(v)
        );
        v += y_step;
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 14.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">latency (ms)</text>"#,
        TOP + plot_h / 2.0
    );
    // Series and legend.
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut path = String::new();
        for (j, (v, q)) in s.points.iter().enumerate() {
            let _ = write!(
                path,
                "{}{:.1},{:.1} ",
                if j == 0 { "M" } else { "L" },
                x(*q),
                y(*v)
            );
        }
        let _ = writeln!(
            svg,
            r#"<path d="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            path.trim_end()
        );
        let ly = TOP + 18.0 + 18.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 12.0,
            LEFT + 36.0,
            LEFT + 42.0,
            ly + 4.0,
            escape(&s.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// "99.90000000000001%" and friends, shown as people write them.
fn trim_percent(label: &str) -> String {
    let Some(num) = label.strip_suffix('%') else {
        return label.to_owned();
    };
    match num.parse::<f64>() {
        Ok(v) => {
            let s = format!("{v:.6}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            format!("{s}%")
        }
        Err(_) => label.to_owned(),
    }
}

fn format_ms(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() {
        "0".into()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_one_path_per_series_and_percentile_labels() {
        let a = Series {
            label: "tandem <1>".into(),
            points: vec![
                (0.1, 0.0),
                (0.2, 0.9),
                (0.5, 0.99),
                (0.9, 0.999),
                (1.2, 1.0),
            ],
        };
        let b = Series {
            label: "rabbitmq".into(),
            points: vec![(1.0, 0.0), (3.0, 0.99), (9.0, 1.0)],
        };
        let svg = render("latency", &[a, b]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<path").count(), 2);
        for label in ["0%", "90%", "99%", "99.9%", "tandem &lt;1&gt;"] {
            assert!(svg.contains(&format!(">{label}<")), "missing {label}");
        }
    }

    #[test]
    fn tick_steps_are_round() {
        assert_eq!(nice_step(9.0, 6.0), 2.0);
        assert_eq!(nice_step(0.7, 6.0), 0.2);
        assert_eq!(trim_percent("99.90000000000001%"), "99.9%");
        assert_eq!(format_ms(0.5), "0.5");
        assert_eq!(format_ms(0.0), "0");
    }
}
