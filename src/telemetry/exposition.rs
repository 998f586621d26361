//! veer's own histograms in the Prometheus text format: the registry that
//! gives each (family, label set) one shared `LatencyBuckets`, and the text
//! that follows the exporter's counters and gauges in `/metrics`.

use std::collections::BTreeMap;
use std::fmt::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::buckets::{LatencyBuckets, Reading, BOUNDS};

/// A histogram family: its metric name and `# HELP` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
}

/// One series' label names and values, in exposition order.
pub type Labels = Vec<(&'static str, String)>;

/// Every histogram series, keyed as Prometheus keys them: two holders of the
/// same name and labels (two revisions of one version) count into one
/// series. Only snapshot building and scrapes take the lock; requests hold
/// the `Arc`.
#[derive(Default)]
pub struct HistogramRegistry {
    series: Mutex<BTreeMap<(Family, Labels), Arc<LatencyBuckets>>>,
}

impl HistogramRegistry {
    pub fn get_or_create(&self, family: Family, labels: Labels) -> Arc<LatencyBuckets> {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(series.entry((family, labels)).or_default())
    }

    /// Appends every family (`# HELP`, `# TYPE`, then its series) to `out`.
    pub fn render_into(&self, out: &mut String) {
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        // Writing into a String cannot fail.
        let _ = write_families(out, &series);
    }
}

fn write_families(
    out: &mut String,
    series: &BTreeMap<(Family, Labels), Arc<LatencyBuckets>>,
) -> fmt::Result {
    // The map is ordered by family first, so each family's series are
    // contiguous and its HELP and TYPE are written once.
    let mut current: Option<Family> = None;
    for ((family, labels), histogram) in series {
        if current != Some(*family) {
            if current.is_some() {
                out.push('\n');
            }
            writeln!(out, "# HELP {} {}", family.name, Escaped::help(family.help))?;
            writeln!(out, "# TYPE {} histogram", family.name)?;
            current = Some(*family);
        }
        write_series(out, family.name, labels, &histogram.read())?;
    }
    if current.is_some() {
        out.push('\n');
    }
    Ok(())
}

fn write_series(out: &mut String, name: &str, labels: &Labels, reading: &Reading) -> fmt::Result {
    let mut pairs = String::new();
    for (key, value) in labels {
        write!(pairs, "{key}=\"{}\",", Escaped::label_value(value))?;
    }
    for (bound, count) in BOUNDS.iter().zip(&reading.cumulative) {
        writeln!(
            out,
            "{name}_bucket{{{pairs}le=\"{}\"}} {count}",
            Seconds(*bound)
        )?;
    }
    writeln!(
        out,
        "{name}_bucket{{{pairs}le=\"+Inf\"}} {}",
        reading.count()
    )?;
    // The bucket lines end their labels with `le`; sum and count have none
    // after the last pair, so its trailing comma goes.
    let pairs = pairs.strip_suffix(',').unwrap_or(&pairs);
    let braced = if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{pairs}}}")
    };
    let sum = Seconds(Duration::from_nanos(reading.sum_nanos));
    writeln!(out, "{name}_sum{braced} {sum}")?;
    writeln!(out, "{name}_count{braced} {}", reading.count())
}

/// A duration as decimal seconds, exact and as short as it can be (`0.00025`,
/// `1`, `2.5`): the `le` values read as the exporter wrote them, and sums
/// keep every nanosecond.
struct Seconds(Duration);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0.as_secs();
        let mut fraction = self.0.subsec_nanos();
        if fraction == 0 {
            return write!(f, "{whole}");
        }
        let mut digits = 9;
        while fraction.is_multiple_of(10) {
            fraction /= 10;
            digits -= 1;
        }
        write!(f, "{whole}.{fraction:0digits$}")
    }
}

/// Text escaped as the exposition format asks: backslash and line feed
/// everywhere, and the double quote inside label values.
struct Escaped<'a> {
    text: &'a str,
    quote: bool,
}

impl<'a> Escaped<'a> {
    fn label_value(text: &'a str) -> Self {
        Escaped { text, quote: true }
    }

    fn help(text: &'a str) -> Self {
        Escaped { text, quote: false }
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.text.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '"' if self.quote => f.write_str("\\\"")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATENCY: Family = Family {
        name: "test_latency_seconds",
        help: "A test family.",
    };

    fn labels(service: &str, version: &str) -> Labels {
        vec![
            ("service", service.to_string()),
            ("version", version.to_string()),
        ]
    }

    fn render(registry: &HistogramRegistry) -> String {
        let mut text = String::new();
        registry.render_into(&mut text);
        text
    }

    #[test]
    fn le_values_read_as_the_exporter_wrote_its_f64_bounds() {
        // The bounds veer configured on the exporter before it had its own
        // histograms; the exporter printed them with f64's Display.
        const EXPORTER_BOUNDS: [f64; 24] = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.035, 0.05,
            0.075, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0,
        ];
        for (bound, old) in BOUNDS.iter().zip(EXPORTER_BOUNDS) {
            assert_eq!(Seconds(*bound).to_string(), old.to_string());
        }
    }

    #[test]
    fn seconds_are_exact() {
        let s = |nanos| Seconds(Duration::from_nanos(nanos)).to_string();
        assert_eq!(s(0), "0");
        assert_eq!(s(1), "0.000000001");
        assert_eq!(s(1_000_000_010), "1.00000001");
        assert_eq!(s(12_345_000_000), "12.345");
        assert_eq!(s(u64::MAX), "18446744073.709551615");
    }

    #[test]
    fn the_same_name_and_labels_share_one_histogram() {
        let registry = HistogramRegistry::default();
        let a = registry.get_or_create(LATENCY, labels("web", "stable"));
        let b = registry.get_or_create(LATENCY, labels("web", "stable"));
        let other = registry.get_or_create(LATENCY, labels("web", "canary"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &other));
    }

    #[test]
    fn renders_one_series_as_cumulative_buckets_sum_and_count() {
        let registry = HistogramRegistry::default();
        let h = registry.get_or_create(LATENCY, labels("web", "stable"));
        h.record(Duration::from_micros(250));
        h.record(Duration::from_millis(20));
        h.record(Duration::from_secs(11));
        let text = render(&registry);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# HELP test_latency_seconds A test family.");
        assert_eq!(lines[1], "# TYPE test_latency_seconds histogram");
        let series = r#"test_latency_seconds_bucket{service="web",version="stable","#;
        assert_eq!(lines[2], format!("{series}le=\"0.0001\"}} 0"));
        assert_eq!(lines[3], format!("{series}le=\"0.00025\"}} 1"));
        assert_eq!(lines[11], format!("{series}le=\"0.025\"}} 2"));
        assert_eq!(lines[25], format!("{series}le=\"10\"}} 2"));
        assert_eq!(lines[26], format!("{series}le=\"+Inf\"}} 3"));
        assert_eq!(
            lines[27],
            r#"test_latency_seconds_sum{service="web",version="stable"} 11.02025"#
        );
        assert_eq!(
            lines[28],
            r#"test_latency_seconds_count{service="web",version="stable"} 3"#
        );
        assert_eq!(lines[29], "", "a blank line ends the family");
        assert_eq!(lines.len(), 30, "{text}");
    }

    #[test]
    fn series_without_labels_have_no_braces_on_sum_and_count() {
        let registry = HistogramRegistry::default();
        registry.get_or_create(LATENCY, Vec::new());
        let text = render(&registry);
        assert!(text.contains("test_latency_seconds_bucket{le=\"+Inf\"} 0\n"));
        assert!(text.contains("\ntest_latency_seconds_sum 0\n"));
        assert!(text.contains("\ntest_latency_seconds_count 0\n"));
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let family = Family {
            name: "test_escaped_seconds",
            help: "Back\\slash\nand \"quotes\".",
        };
        let registry = HistogramRegistry::default();
        registry.get_or_create(family, vec![("service", "a\"b\\c\nd".to_string())]);
        let text = render(&registry);
        assert!(
            text.starts_with("# HELP test_escaped_seconds Back\\\\slash\\nand \"quotes\".\n"),
            "{text}"
        );
        assert!(
            text.contains("test_escaped_seconds_count{service=\"a\\\"b\\\\c\\nd\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn families_are_declared_once_and_parse_as_prometheus_text() {
        let second = Family {
            name: "test_other_seconds",
            help: "Another.",
        };
        let registry = HistogramRegistry::default();
        for version in ["stable", "canary"] {
            registry
                .get_or_create(LATENCY, labels("web", version))
                .record(Duration::from_millis(3));
            registry
                .get_or_create(second, labels("web", version))
                .record(Duration::from_millis(30));
        }
        let text = render(&registry);
        for name in [LATENCY.name, second.name] {
            let declared = |prefix: &str| {
                text.lines()
                    .filter(|l| l.starts_with(&format!("{prefix} {name} ")))
                    .count()
            };
            assert_eq!(declared("# HELP"), 1, "{text}");
            assert_eq!(declared("# TYPE"), 1, "{text}");
        }
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("parses as Prometheus text");
        let histograms: Vec<_> = scrape
            .samples
            .iter()
            .filter_map(|s| match &s.value {
                prometheus_parse::Value::Histogram(buckets) => Some((s, buckets)),
                _ => None,
            })
            .collect();
        assert_eq!(histograms.len(), 4, "{text}");
        for (sample, buckets) in histograms {
            let at = |le: f64| buckets.iter().find(|b| b.less_than == le).map(|b| b.count);
            let (below, above) = if sample.metric == LATENCY.name {
                (0.0025, 0.005)
            } else {
                (0.025, 0.035)
            };
            assert_eq!(at(below), Some(0.0), "{sample:?}");
            assert_eq!(at(above), Some(1.0), "{sample:?}");
            assert_eq!(at(f64::INFINITY), Some(1.0), "{sample:?}");
        }
    }
}
