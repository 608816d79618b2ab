//! The `.hgrm` percentile distribution: HdrHistogram's own text form
//! (`outputPercentileDistribution`), values in milliseconds, so the files open
//! in HdrHistogram's plotter as well as in `tandem-perf plot`.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Nanoseconds per unit written (milliseconds).
const NS_PER_MS: f64 = 1e6;
/// Percentile steps per halving of the distance to 100%, as HdrHistogram uses.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// The distribution of `h` (recorded in nanoseconds) as `.hgrm` text.
pub fn render(h: &Histogram<u64>) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64 / NS_PER_MS;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            let _ = writeln!(
                t,
                "{value:12.3} {q:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(t, "{value:12.3} {q:2.12} {total:10}");
        }
    }
    let _ = writeln!(
        t,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / NS_PER_MS,
        h.stdev() / NS_PER_MS
    );
    let _ = writeln!(
        t,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / NS_PER_MS,
        h.len()
    );
    let _ = writeln!(
        t,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        h.distinct_values()
    );
    t
}

/// (latency in ms, percentile as a fraction) points of a `.hgrm` text, in order.
pub fn parse(text: &str) -> Result<Vec<(f64, f64)>, String> {
    let mut points = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("Value") {
            continue;
        }
        let mut fields = line.split_whitespace();
        let parsed = (|| {
            let value: f64 = fields.next()?.parse().ok()?;
            let q: f64 = fields.next()?.parse().ok()?;
            Some((value, q))
        })();
        match parsed {
            Some(p) => points.push(p),
            None => {
                return Err(format!(
                    "line {}: not 'value percentile ...': {line}",
                    n + 1
                ))
            }
        }
    }
    if points.is_empty() {
        return Err("no percentile lines (is this an .hgrm file?)".into());
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_distribution_parses_back_in_milliseconds() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
        for us in 1..=1000u64 {
            h.record(us * 1000).expect("in range");
        }
        let text = render(&h);
        assert!(text.contains("1/(1-Percentile)"));
        assert!(text.contains("Total count    =         1000"));
        let points = parse(&text).expect("parses");
        let (first, last) = (points[0], points[points.len() - 1]);
        assert!((first.0 - 0.001).abs() < 1e-6, "{first:?}");
        assert_eq!(last.1, 1.0);
        assert!((last.0 - 1.0).abs() < 0.002, "{last:?}");
        assert!(points.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn garbage_is_refused_with_the_line() {
        let err = parse("Value Percentile\n\n0.1 zero 1\n").expect_err("bad");
        assert!(err.contains("line 3"), "{err}");
        assert!(parse("# nothing\n").is_err());
    }
}
