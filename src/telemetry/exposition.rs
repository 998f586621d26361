//! The Prometheus text format, written straight from veer's atomics: family
//! headers, samples with escaped labels, counters, gauges and histograms.
//! Everything here writes into any `fmt::Write`, so `/metrics` can be
//! streamed in pieces as well as built whole.

use std::fmt::{self, Write};
use std::time::Duration;

use super::buckets::{Reading, BOUNDS};

/// What a family is declared as in `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A metric family: its name, type and `# HELP` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family<'a> {
    pub name: &'a str,
    pub kind: Kind,
    pub help: &'a str,
}

/// Writes one family's samples, its `# HELP` and `# TYPE` first, and only if
/// it has a sample at all (as Prometheus exporters do: no empty families).
pub struct FamilyWriter<'a, W: Write> {
    out: &'a mut W,
    family: Family<'a>,
    started: bool,
}

impl<'a, W: Write> FamilyWriter<'a, W> {
    pub fn new(out: &'a mut W, family: Family<'a>) -> Self {
        FamilyWriter {
            out,
            family,
            started: false,
        }
    }

    fn start(&mut self) -> fmt::Result {
        if !self.started {
            self.started = true;
            let Family { name, kind, help } = self.family;
            writeln!(self.out, "# HELP {name} {}", Escaped::help(help))?;
            writeln!(self.out, "# TYPE {name} {}", kind.as_str())?;
        }
        Ok(())
    }

    /// One counter sample.
    pub fn counter(&mut self, labels: &[(&str, &str)], value: u64) -> fmt::Result {
        self.start()?;
        write_name(self.out, self.family.name, "", labels, None)?;
        writeln!(self.out, " {value}")
    }

    /// One gauge sample.
    pub fn gauge(&mut self, labels: &[(&str, &str)], value: f64) -> fmt::Result {
        self.start()?;
        write_name(self.out, self.family.name, "", labels, None)?;
        writeln!(self.out, " {}", Float(value))
    }

    /// One histogram series: cumulative buckets, `+Inf`, sum and count; only
    /// the bounds whose bit is set in `bounds` (bit `i`: `BOUNDS[i]`). The
    /// counts are cumulative, so leaving a bound out loses nothing of the
    /// others.
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        reading: &Reading,
        bounds: u32,
    ) -> fmt::Result {
        self.start()?;
        let name = self.family.name;
        let picked = BOUNDS
            .iter()
            .zip(&reading.cumulative)
            .enumerate()
            .filter(|(i, _)| bounds & (1 << i) != 0)
            .map(|(_, pair)| pair);
        for (bound, count) in picked {
            write_name(self.out, name, "_bucket", labels, Some(Le::Bound(*bound)))?;
            writeln!(self.out, " {count}")?;
        }
        write_name(self.out, name, "_bucket", labels, Some(Le::Inf))?;
        writeln!(self.out, " {}", reading.count())?;
        write_name(self.out, name, "_sum", labels, None)?;
        writeln!(
            self.out,
            " {}",
            Seconds(Duration::from_nanos(reading.sum_nanos))
        )?;
        write_name(self.out, name, "_count", labels, None)?;
        writeln!(self.out, " {}", reading.count())
    }

    /// Ends the family: a blank line after its samples, as the exporter
    /// veer used before wrote them.
    pub fn finish(self) -> fmt::Result {
        if self.started {
            self.out.write_char('\n')?;
        }
        Ok(())
    }
}

enum Le {
    Bound(Duration),
    Inf,
}

fn write_name<W: Write>(
    out: &mut W,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    le: Option<Le>,
) -> fmt::Result {
    out.write_str(name)?;
    out.write_str(suffix)?;
    if labels.is_empty() && le.is_none() {
        return Ok(());
    }
    out.write_char('{')?;
    for (i, (key, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.write_char(',')?;
        }
        write!(out, "{key}=\"{}\"", Escaped::label_value(value))?;
    }
    if let Some(le) = le {
        if !labels.is_empty() {
            out.write_char(',')?;
        }
        match le {
            Le::Bound(bound) => write!(out, "le=\"{}\"", Seconds(bound))?,
            Le::Inf => out.write_str("le=\"+Inf\"")?,
        }
    }
    out.write_char('}')
}

/// A gauge's value as the text format spells it (`+Inf`, `-Inf`, `NaN`).
struct Float(f64);

impl fmt::Display for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            v if v.is_nan() => f.write_str("NaN"),
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
        }
    }
}

/// A duration as decimal seconds, exact and as short as it can be (`0.00025`,
/// `1`, `2.5`): the `le` values read as the exporter wrote them, and sums
/// keep every nanosecond.
pub struct Seconds(pub Duration);

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
        // Names in a config rarely need escaping: write them whole.
        if !self
            .text
            .bytes()
            .any(|b| b == b'\\' || b == b'\n' || (self.quote && b == b'"'))
        {
            return f.write_str(self.text);
        }
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
    use crate::telemetry::buckets::LatencyBuckets;

    const LATENCY: Family<'static> = Family {
        name: "test_latency_seconds",
        kind: Kind::Histogram,
        help: "A test family.",
    };

    fn one_histogram(labels: &[(&str, &str)], h: &LatencyBuckets) -> String {
        let mut text = String::new();
        let mut family = FamilyWriter::new(&mut text, LATENCY);
        family
            .histogram(labels, &h.read(), u32::MAX)
            .expect("write");
        family.finish().expect("write");
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
    fn renders_one_series_as_cumulative_buckets_sum_and_count() {
        let h = LatencyBuckets::default();
        h.record(Duration::from_micros(250));
        h.record(Duration::from_millis(20));
        h.record(Duration::from_secs(11));
        let text = one_histogram(&[("service", "web"), ("version", "stable")], &h);
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
        let text = one_histogram(&[], &LatencyBuckets::default());
        assert!(text.contains("test_latency_seconds_bucket{le=\"+Inf\"} 0\n"));
        assert!(text.contains("\ntest_latency_seconds_sum 0\n"));
        assert!(text.contains("\ntest_latency_seconds_count 0\n"));
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let family = Family {
            name: "test_escaped_total",
            kind: Kind::Counter,
            help: "Back\\slash\nand \"quotes\".",
        };
        let mut text = String::new();
        let mut writer = FamilyWriter::new(&mut text, family);
        writer
            .counter(&[("service", "a\"b\\c\nd")], 0)
            .expect("write");
        writer.finish().expect("write");
        assert!(
            text.starts_with("# HELP test_escaped_total Back\\\\slash\\nand \"quotes\".\n"),
            "{text}"
        );
        assert!(
            text.contains("test_escaped_total{service=\"a\\\"b\\\\c\\nd\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn an_empty_family_writes_nothing_and_gauges_spell_infinities() {
        let mut text = String::new();
        FamilyWriter::new(&mut text, LATENCY)
            .finish()
            .expect("write");
        assert_eq!(text, "");
        let family = Family {
            name: "test_gauge",
            kind: Kind::Gauge,
            help: "A gauge.",
        };
        let mut writer = FamilyWriter::new(&mut text, family);
        for v in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 2.5] {
            writer.gauge(&[], v).expect("write");
        }
        writer.finish().expect("write");
        assert_eq!(
            text,
            "# HELP test_gauge A gauge.\n# TYPE test_gauge gauge\n\
             test_gauge +Inf\ntest_gauge -Inf\ntest_gauge NaN\ntest_gauge 2.5\n\n"
        );
    }
}
