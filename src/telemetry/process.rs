//! The process figures (CPU, memory, file descriptors, threads, start time)
//! as veer's own series. The `metrics-process` collector reads them from the
//! OS and reports through the `metrics` facade; this is the small recorder
//! it reports to, so they are written by veer's one renderer instead of a
//! second exporter. Only ever used at scrape time.

use std::collections::BTreeMap;
use std::fmt::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

use super::exposition::{Family, FamilyWriter, Kind};

/// The collector and the figures it last reported.
pub struct ProcessFigures {
    collector: metrics_process::Collector,
    recorder: ProcessRecorder,
}

impl Default for ProcessFigures {
    fn default() -> Self {
        let figures = ProcessFigures {
            collector: metrics_process::Collector::default(),
            recorder: ProcessRecorder::default(),
        };
        metrics::with_local_recorder(&figures.recorder, || figures.collector.describe());
        figures
    }
}

impl ProcessFigures {
    /// Reads the figures afresh and writes them.
    pub fn render_into<W: Write>(&self, out: &mut W) -> fmt::Result {
        metrics::with_local_recorder(&self.recorder, || self.collector.collect());
        let series = lock(&self.recorder.series).clone();
        for (name, s) in &series {
            let family = Family {
                name,
                kind: s.kind,
                help: &s.help,
            };
            let value = s.value.load(Ordering::Relaxed);
            let mut f = FamilyWriter::new(out, family);
            match s.kind {
                Kind::Counter => f.counter(&[], value)?,
                _ => f.gauge(&[], f64::from_bits(value))?,
            }
            f.finish()?;
        }
        Ok(())
    }
}

#[derive(Clone)]
struct Series {
    kind: Kind,
    help: String,
    value: Arc<AtomicU64>,
}

#[derive(Default)]
struct ProcessRecorder {
    series: Mutex<BTreeMap<String, Series>>,
}

impl ProcessRecorder {
    fn describe(&self, key: KeyName, kind: Kind, help: SharedString) {
        let mut series = lock(&self.series);
        let entry = series.entry(key.as_str().to_string()).or_insert(Series {
            kind,
            help: String::new(),
            value: Arc::default(),
        });
        entry.kind = kind;
        entry.help = help.to_string();
    }

    fn register(&self, key: &Key, kind: Kind) -> Arc<AtomicU64> {
        let mut series = lock(&self.series);
        let entry = series.entry(key.name().to_string()).or_insert(Series {
            kind,
            help: String::new(),
            value: Arc::default(),
        });
        Arc::clone(&entry.value)
    }
}

impl Recorder for ProcessRecorder {
    fn describe_counter(&self, key: KeyName, _unit: Option<Unit>, help: SharedString) {
        self.describe(key, Kind::Counter, help);
    }

    fn describe_gauge(&self, key: KeyName, _unit: Option<Unit>, help: SharedString) {
        self.describe(key, Kind::Gauge, help);
    }

    fn describe_histogram(&self, _key: KeyName, _unit: Option<Unit>, _help: SharedString) {}

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.register(key, Kind::Counter))
    }

    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.register(key, Kind::Gauge))
    }

    fn register_histogram(&self, _key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every holder leaves the map whole: a panic elsewhere does not spoil it.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_figures_parse_with_their_types() {
        let figures = ProcessFigures::default();
        let mut text = String::new();
        figures.render_into(&mut text).expect("render");
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("parses as Prometheus text");
        let value = |name: &str| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name)
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                    _ => f64::NAN,
                })
        };
        assert!(value("process_resident_memory_bytes") > Some(0.0), "{text}");
        assert!(value("process_cpu_seconds_total") >= Some(0.0), "{text}");
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP process_resident_memory_bytes "),
            "{text}"
        );
    }
}
