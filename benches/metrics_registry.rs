//! What one request's metrics cost with each registry veer considered: its
//! own atomics (`telemetry::registry`), metrics-exporter-prometheus for
//! everything, or the `prometheus` crate's counters and atomic histograms.
//! Each row does what a request does to the exported series — one count by
//! exact status and two latency histograms (to the head, to the end) —
//! through handles resolved ahead of time, as veer resolves them when a
//! snapshot is built. The window (the guard's) is not part of any row: veer
//! keeps it whichever registry exports.
//!
//! `cargo bench --bench metrics_registry`; figures are ns per request.
//! `docs/metrics.md` quotes them.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::StatusCode;
use veer::telemetry::buckets::{Bucket, BOUNDS};
use veer::telemetry::{Registry, Shown};

/// Latencies a loopback upstream produces (µs), cycled so the buckets vary
/// as they do under load.
const LATENCIES_US: [u64; 8] = [180, 240, 310, 260, 420, 950, 205, 1_800];

/// Statuses each row resolves a handle for, like veer's common statuses.
const STATUSES: [u16; 3] = [200, 404, 502];

fn request(i: u64) -> (usize, Duration, Duration) {
    let status = if i % 100 == 99 { 2 } else { 0 };
    let latency = Duration::from_micros(LATENCIES_US[(i % 8) as usize]);
    (status, latency, latency + Duration::from_micros(40))
}

/// Samples between two upkeeps of the exporter, outside the timed part (it
/// buffers every sample until then).
const CHUNK: u64 = 1 << 16;

fn timed_in_chunks(
    iters: u64,
    threads: usize,
    op: impl Fn(u64) + Sync,
    upkeep: impl Fn(),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = CHUNK.min(iters - done);
        let start = Barrier::new(threads);
        let began = Instant::now();
        std::thread::scope(|scope| {
            for t in 0..threads as u64 {
                let (op, start) = (&op, &start);
                scope.spawn(move || {
                    start.wait();
                    let share = n / threads as u64;
                    for i in done + t * share..done + (t + 1) * share {
                        op(i);
                    }
                });
            }
        });
        total += began.elapsed();
        upkeep();
        done += n;
    }
    total
}

fn candidates(c: &mut Criterion) {
    // veer's own: one VersionSeries, the status counted by slot.
    let registry = Registry::default();
    let series = registry.version("checkout", "canary");
    let codes: Vec<StatusCode> = STATUSES
        .iter()
        .map(|&s| StatusCode::from_u16(s).expect("status"))
        .collect();

    // metrics-exporter-prometheus throughout.
    let exporter = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&BOUNDS.map(|b| b.as_secs_f64()))
        .expect("buckets")
        .build_recorder();
    let exporter_handle = exporter.handle();
    let metadata = metrics::Metadata::new("bench", metrics::Level::INFO, None);
    let key = |name: &'static str, code: Option<u16>| {
        let mut labels = vec![
            metrics::Label::new("service", "checkout"),
            metrics::Label::new("version", "canary"),
        ];
        if let Some(code) = code {
            labels.push(metrics::Label::new("code", code.to_string()));
        }
        metrics::Key::from_parts(name, labels)
    };
    let exporter_counters: Vec<metrics::Counter> = STATUSES
        .iter()
        .map(|&s| {
            metrics::Recorder::register_counter(&exporter, &key("requests", Some(s)), &metadata)
        })
        .collect();
    let exporter_head =
        metrics::Recorder::register_histogram(&exporter, &key("head", None), &metadata);
    let exporter_end =
        metrics::Recorder::register_histogram(&exporter, &key("end", None), &metadata);

    // The prometheus crate.
    let prom = prometheus::Registry::new();
    let buckets: Vec<f64> = BOUNDS.iter().map(|b| b.as_secs_f64()).collect();
    let requests = prometheus::IntCounterVec::new(
        prometheus::Opts::new("requests_total", "requests"),
        &["service", "version", "code"],
    )
    .expect("counter");
    let histogram = |name: &str| {
        prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(name, "latency").buckets(buckets.clone()),
            &["service", "version"],
        )
        .expect("histogram")
    };
    let (head, end) = (histogram("head_seconds"), histogram("end_seconds"));
    for collector in [
        Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(head.clone()),
        Box::new(end.clone()),
    ] {
        prom.register(collector).expect("register");
    }
    let prom_counters: Vec<prometheus::IntCounter> = STATUSES
        .iter()
        .map(|s| requests.with_label_values(&["checkout", "canary", &s.to_string()]))
        .collect();
    let prom_head = head.with_label_values(&["checkout", "canary"]);
    let prom_end = end.with_label_values(&["checkout", "canary"]);

    for threads in [1usize, 2] {
        let mut group = c.benchmark_group(format!("metrics_per_request/{threads}_threads"));
        group.throughput(Throughput::Elements(1));
        group.bench_function("veer_registry", |b| {
            b.iter_custom(|iters| {
                timed_in_chunks(
                    iters,
                    threads,
                    |i| {
                        let (status, latency, total) = request(black_box(i));
                        series.count_status(codes[status]);
                        series.record_durations(Bucket::of(latency), latency, total);
                    },
                    || {},
                )
            })
        });
        // Its upkeep is untimed, which flatters it: a proxy pays it on a
        // ticker or at each scrape.
        group.bench_function("metrics_exporter_prometheus", |b| {
            b.iter_custom(|iters| {
                timed_in_chunks(
                    iters,
                    threads,
                    |i| {
                        let (status, latency, total) = request(black_box(i));
                        exporter_counters[status].increment(1);
                        exporter_head.record(latency.as_secs_f64());
                        exporter_end.record(total.as_secs_f64());
                    },
                    || exporter_handle.run_upkeep(),
                )
            })
        });
        group.bench_function("prometheus_crate", |b| {
            b.iter_custom(|iters| {
                timed_in_chunks(
                    iters,
                    threads,
                    |i| {
                        let (status, latency, total) = request(black_box(i));
                        prom_counters[status].inc();
                        prom_head.observe(latency.as_secs_f64());
                        prom_end.observe(total.as_secs_f64());
                    },
                    || {},
                )
            })
        });
        group.finish();
    }

    // The three render the same series; scraping is off the request path
    // but grows with the config, so it is measured too (one version).
    let mut group = c.benchmark_group("render_one_version");
    group.bench_function("veer_registry", |b| {
        b.iter(|| {
            let mut text = String::new();
            registry
                .render_into(&mut text, &Shown::ALL)
                .expect("render");
            black_box(text.len())
        })
    });
    group.bench_function("metrics_exporter_prometheus", |b| {
        b.iter(|| black_box(exporter_handle.render().len()))
    });
    group.bench_function("prometheus_crate", |b| {
        b.iter(|| {
            let text = prometheus::TextEncoder::new()
                .encode_to_string(&prom.gather())
                .expect("encode");
            black_box(text.len())
        })
    });
    group.finish();
}

criterion_group! {
    name = metrics_registry;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = candidates
}
criterion_main!(metrics_registry);
