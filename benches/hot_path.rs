//! The request path's pieces, each benched beside the naive version it
//! replaces (STYLE habit 12): what one request pays to choose a version, match
//! a route, load the snapshot, record its outcome and pick an endpoint.
//!
//! Run with `cargo bench --bench hot_path` (all of it) or with a filter such
//! as `cargo bench --bench hot_path -- record`. Figures are ns per operation;
//! `docs/benchmarks.md` quotes them.
//!
//! Groups named `.../contended` run the operation on two threads at once (the
//! machine's two cores; a multi-worker veer does the same), timed as total
//! wall time over total operations: that is where a lock or a shared
//! reference count costs, and where a single-threaded figure flatters it.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Barrier, Mutex, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::StatusCode;
use veer::config::{self, Config, Protocol};
use veer::routing::{RouteTable, WeightedSplit};
use veer::telemetry::buckets::LatencyBuckets;
use veer::telemetry::{Outcome, Telemetry};
use veer::upstream::{balance, Endpoint};

/// Runs `op` `iters` times split over two threads and returns the wall time:
/// per-op figures then include the cache-line traffic between the cores.
fn on_two_threads<S: Sync>(iters: u64, shared: &S, op: impl Fn(&S, u64) + Sync) -> Duration {
    let start_line = Barrier::new(3);
    let half = iters.div_ceil(2);
    std::thread::scope(|scope| {
        for t in 0..2u64 {
            let (start_line, op) = (&start_line, &op);
            scope.spawn(move || {
                start_line.wait();
                for i in 0..half {
                    op(shared, t * half + i);
                }
            });
        }
        start_line.wait();
        let began = Instant::now();
        // The scope joins both threads before it returns.
        began
    })
    .elapsed()
}

// ---------------------------------------------------------------------------
// 1. Choosing a version

/// Smooth weighted round robin computed per request, the textbook way
/// (NGINX's `ngx_http_upstream_get_peer`), under a lock.
struct LockedSmoothWrr {
    state: Mutex<Vec<(i64, i64)>>, // (weight, current)
}

impl LockedSmoothWrr {
    fn new(weights: &[u32]) -> Self {
        LockedSmoothWrr {
            state: Mutex::new(weights.iter().map(|&w| (i64::from(w), 0)).collect()),
        }
    }

    fn next(&self) -> usize {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let total: i64 = state.iter().map(|s| s.0).sum();
        let mut best = 0;
        for i in 0..state.len() {
            state[i].1 += state[i].0;
            if state[i].1 > state[best].1 {
                best = i;
            }
        }
        state[best].1 -= total;
        best
    }
}

/// A random draw per request over cumulative weights: lock-free, but only
/// statistically fair.
struct RandomDraw {
    cumulative: Vec<u32>,
}

impl RandomDraw {
    fn new(weights: &[u32]) -> Self {
        let mut sum = 0;
        RandomDraw {
            cumulative: weights
                .iter()
                .map(|&w| {
                    sum += w;
                    sum
                })
                .collect(),
        }
    }

    fn next(&self) -> usize {
        let total = *self.cumulative.last().unwrap_or(&1);
        let draw = fastrand::u32(..total);
        self.cumulative.iter().position(|&c| draw < c).unwrap_or(0)
    }
}

fn choose_version(c: &mut Criterion) {
    let mut group = c.benchmark_group("choose_version");
    group.throughput(Throughput::Elements(1));
    for weights in [&[90u32, 10][..], &[50, 30, 15, 5][..]] {
        let label = format!("{}_versions", weights.len());
        let split = WeightedSplit::new(weights).expect("a weight above zero");
        let locked = LockedSmoothWrr::new(weights);
        let random = RandomDraw::new(weights);
        group.bench_function(BenchmarkId::new("veer_WeightedSplit::next", &label), |b| {
            b.iter(|| black_box(split.next()))
        });
        group.bench_function(BenchmarkId::new("naive_Mutex<smooth_wrr>", &label), |b| {
            b.iter(|| black_box(locked.next()))
        });
        group.bench_function(BenchmarkId::new("naive_random_draw", &label), |b| {
            b.iter(|| black_box(random.next()))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("choose_version/contended");
    group.throughput(Throughput::Elements(1));
    let split = WeightedSplit::new(&[90, 10]).expect("a weight above zero");
    let locked = LockedSmoothWrr::new(&[90, 10]);
    group.bench_function("veer_WeightedSplit::next", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, &split, |s, _| {
                black_box(s.next());
            })
        })
    });
    group.bench_function("naive_Mutex<smooth_wrr>", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, &locked, |s, _| {
                black_box(s.next());
            })
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------
// 2. Route matching

/// A config of 24 services: exact hosts (several with more than one
/// prefix), wildcards and an any-host fallback, like a shared edge.
fn bench_config() -> Config {
    let mut yaml = String::from(
        "listeners:
  - { name: public, address: 127.0.0.1:8080 }
services:
",
    );
    let mut port = 20_000;
    let mut service = |yaml: &mut String, name: &str, hosts: &str, prefix: &str| {
        port += 1;
        let canary = port + 5_000;
        yaml.push_str(&format!(
            "  - name: {name}
    match: {{ hosts: {hosts}, path_prefix: {prefix} }}
    versions:
      - {{ name: stable, endpoints: [127.0.0.1:{port}], weight: 90 }}
      - {{ name: canary, endpoints: [127.0.0.1:{canary}], weight: 10 }}
"
        ));
    };
    for team in ["billing", "search", "users", "orders", "catalog", "media"] {
        service(
            &mut yaml,
            &format!("{team}-api"),
            &format!("[{team}.example.com]"),
            "/",
        );
        service(
            &mut yaml,
            &format!("{team}-v2"),
            &format!("[{team}.example.com]"),
            "/v2/",
        );
        service(
            &mut yaml,
            &format!("{team}-admin"),
            &format!("[{team}.example.com]"),
            "/admin/",
        );
    }
    for region in ["eu", "us", "ap"] {
        service(
            &mut yaml,
            &format!("edge-{region}"),
            &format!("[\"*.{region}.example.com\"]"),
            "/",
        );
    }
    service(&mut yaml, "wildcard", "[\"*.example.com\"]", "/");
    service(&mut yaml, "static", "[\"*.cdn.example.net\"]", "/assets/");
    yaml.push_str(
        "  - name: fallback
    match: { path_prefix: /health/ }
    versions:
      - { name: stable, endpoints: [127.0.0.1:29999], weight: 1 }
",
    );
    match config::parse_str(&yaml, "bench.yaml") {
        Ok(config) => config,
        Err(errors) => panic!("bench config refused:\n{errors:?}"),
    }
}

/// Every (host pattern, prefix) pair in one list; each request lowercases
/// its host into a new `String` and scans all of them for the best match.
struct LinearRoutes {
    pairs: Vec<(String, String, usize)>, // ("" any host | "*.x" | "x", prefix, service)
}

impl LinearRoutes {
    fn new(config: &Config) -> Self {
        let mut pairs = Vec::new();
        for (index, service) in config.services.iter().enumerate() {
            if service.hosts.is_empty() {
                pairs.push((String::new(), service.path_prefix.clone(), index));
            }
            for host in &service.hosts {
                let pattern = match host {
                    config::HostMatch::Exact(name) => name.clone(),
                    config::HostMatch::Suffix(suffix) => format!("*{suffix}"),
                };
                pairs.push((pattern, service.path_prefix.clone(), index));
            }
        }
        LinearRoutes { pairs }
    }

    fn find(&self, host: &str, path: &str) -> Option<usize> {
        let host = host.to_lowercase();
        let host = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_string(),
            _ => host,
        };
        // Specificity: exact host, then longer wildcard, then any host; then
        // the longer prefix.
        let mut best: Option<((usize, usize), usize)> = None;
        for (pattern, prefix, service) in &self.pairs {
            let host_rank = if pattern.is_empty() {
                0
            } else if let Some(suffix) = pattern.strip_prefix('*') {
                if host.len() > suffix.len() && host.ends_with(suffix) {
                    1 + suffix.len()
                } else {
                    continue;
                }
            } else if *pattern == host {
                usize::MAX
            } else {
                continue;
            };
            if !path.starts_with(prefix.as_str()) {
                continue;
            }
            let rank = (host_rank, prefix.len());
            if best.is_none_or(|(b, _)| rank > b) {
                best = Some((rank, *service));
            }
        }
        best.map(|(_, s)| s)
    }
}

fn route_matching(c: &mut Criterion) {
    let config = bench_config();
    let table = RouteTable::new(&config.services);
    let linear = LinearRoutes::new(&config);
    let cases = [
        ("exact_host", "orders.example.com", "/v2/orders/42"),
        ("wildcard_host", "shop.eu.example.com", "/cart"),
        ("any_host", "10.0.0.7", "/health/ready"),
        (
            "host_with_port_and_case",
            "Orders.Example.com:8080",
            "/v2/orders/42",
        ),
        ("no_match", "other.org", "/"),
    ];
    for (_, host, path) in cases {
        assert_eq!(
            table.find(host, path),
            linear.find(host, path),
            "{host}{path}"
        );
    }
    let mut group = c.benchmark_group("route_matching");
    group.throughput(Throughput::Elements(1));
    for (case, host, path) in cases {
        group.bench_with_input(
            BenchmarkId::new("veer_RouteTable::find", case),
            &(host, path),
            |b, (h, p)| b.iter(|| black_box(table.find(black_box(h), black_box(p)))),
        );
        group.bench_with_input(
            BenchmarkId::new("naive_linear_scan_lowercase", case),
            &(host, path),
            |b, (h, p)| b.iter(|| black_box(linear.find(black_box(h), black_box(p)))),
        );
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// 3. Loading the snapshot

/// What the benchmark publishes: a route table and per-service data, like the
/// snapshot. The cost of `ArcSwap::load` does not depend on what it points at,
/// so a stand-in keeps this bench independent of how a snapshot is built.
struct Published {
    generation: u64,
    routes: RouteTable,
    splits: Vec<Option<WeightedSplit>>,
}

fn published(config: &Config) -> Published {
    Published {
        generation: 1,
        routes: RouteTable::new(&config.services),
        splits: config
            .services
            .iter()
            .map(|s| {
                WeightedSplit::new(
                    &s.versions
                        .iter()
                        .map(|v| v.weight.get())
                        .collect::<Vec<_>>(),
                )
            })
            .collect(),
    }
}

fn snapshot_load(c: &mut Criterion) {
    let config = bench_config();
    let swap = ArcSwap::from_pointee(published(&config));
    let locked = RwLock::new(Arc::new(published(&config)));
    let mutexed = Mutex::new(Arc::new(published(&config)));
    // What the request path reads once it holds the snapshot.
    assert_eq!(swap.load().splits.len(), config.services.len());
    assert!(swap.load().routes.find("orders.example.com", "/").is_some());

    let mut group = c.benchmark_group("snapshot_load");
    group.throughput(Throughput::Elements(1));
    group.bench_function("veer_ArcSwap::load", |b| {
        b.iter(|| black_box(swap.load().generation))
    });
    group.bench_function("veer_ArcSwap::load_full", |b| {
        b.iter(|| black_box(swap.load_full().generation))
    });
    group.bench_function("naive_RwLock<Arc>_read_clone", |b| {
        b.iter(|| {
            let snapshot = Arc::clone(&locked.read().unwrap_or_else(|p| p.into_inner()));
            black_box(snapshot.generation)
        })
    });
    group.bench_function("naive_Mutex<Arc>_lock_clone", |b| {
        b.iter(|| {
            let snapshot = Arc::clone(&mutexed.lock().unwrap_or_else(|p| p.into_inner()));
            black_box(snapshot.generation)
        })
    });
    group.finish();

    let mut group = c.benchmark_group("snapshot_load/contended");
    group.throughput(Throughput::Elements(1));
    group.bench_function("veer_ArcSwap::load", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, &swap, |p, _| {
                black_box(p.load().generation);
            })
        })
    });
    group.bench_function("veer_ArcSwap::load_full", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, &swap, |p, _| {
                black_box(p.load_full().generation);
            })
        })
    });
    group.bench_function("naive_RwLock<Arc>_read_clone", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, &locked, |l, _| {
                let snapshot = Arc::clone(&l.read().unwrap_or_else(|p| p.into_inner()));
                black_box(snapshot.generation);
            })
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------
// 4. Recording one request's outcome

/// Latencies a loopback upstream produces (µs), cycled so the histogram
/// buckets vary as they do under load.
const LATENCIES_US: [u64; 8] = [180, 240, 310, 260, 420, 950, 205, 1_800];

fn outcome(i: u64) -> Outcome {
    Outcome {
        status: if i % 100 == 99 {
            StatusCode::BAD_GATEWAY
        } else {
            StatusCode::OK
        },
        failure: None,
        client: None,
        latency: Duration::from_micros(LATENCIES_US[(i % 8) as usize]),
        total: Duration::from_micros(LATENCIES_US[(i % 8) as usize] + 40),
        grpc: None,
    }
}

/// Per-request figures the naive way: a global map of sample lists, keyed
/// by a string built per request. Trimmed as it grows (a real one would
/// need the same), outside the timed part.
#[derive(Default)]
struct LockedSamples {
    samples: Mutex<HashMap<String, Vec<Duration>>>,
}

impl LockedSamples {
    fn record(&self, service: &str, version: &str, outcome: &Outcome) {
        let key = format!("{service}/{version}");
        let mut map = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key).or_default().push(outcome.latency);
    }

    fn trim(&self) {
        let mut map = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        map.values_mut().for_each(Vec::clear);
    }
}

/// Samples recorded between two upkeeps, outside the timed part: the naive
/// rows' buffers must be emptied as they would be off the request path.
const CHUNK: u64 = 1 << 16;

/// Times `op(i)` for `iters` iterations, calling `upkeep` untimed every
/// `CHUNK` of them.
fn timed_in_chunks(iters: u64, op: impl Fn(u64), upkeep: impl Fn()) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = CHUNK.min(iters - done);
        let began = Instant::now();
        for i in done..done + n {
            op(i);
        }
        total += began.elapsed();
        upkeep();
        done += n;
    }
    total
}

fn record_outcome(c: &mut Criterion) {
    let telemetry = Telemetry::new();
    let stats = telemetry.version_stats("checkout", "canary", Duration::from_secs(30), 0);
    let elapsed = Duration::from_millis(5_250);
    let naive = LockedSamples::default();

    // The parts of `VersionStats::record`, on their own.
    let buckets = LatencyBuckets::default();
    // The exporter's histogram, which veer recorded latencies into before
    // `LatencyBuckets`: every sample is buffered with a clock read until an
    // upkeep folds the buffer.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = prometheus.handle();
    let key = metrics::Key::from_parts(
        "bench_duration_seconds",
        vec![metrics::Label::new("version", "canary")],
    );
    let metadata = metrics::Metadata::new("bench", metrics::Level::INFO, None);
    let histogram = metrics::Recorder::register_histogram(&prometheus, &key, &metadata);
    let counter = metrics::Recorder::register_counter(&prometheus, &key, &metadata);
    let plain = AtomicU64::new(0);

    let mut group = c.benchmark_group("record_outcome");
    group.throughput(Throughput::Elements(1));
    // In chunks like the naive rows, though there is nothing to fold.
    group.bench_function("veer_VersionStats::record", |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(
                iters,
                |i| stats.record(black_box(elapsed), &outcome(i)),
                || {},
            )
        })
    });
    // What a request pays in all: one record, at the end of its stream,
    // which takes both durations (to the head and to the end).
    group.bench_function("veer_VersionStats::record_end_of_stream", |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(
                iters,
                |i| {
                    let o = outcome(i);
                    stats.record(black_box(elapsed), &o);
                },
                || {},
            )
        })
    });
    group.bench_function("part_Window::record", |b| {
        b.iter(|| {
            let o = outcome(3);
            stats
                .window()
                .record(black_box(elapsed), o.latency, o.is_error())
        })
    });
    group.bench_function("part_LatencyBuckets::record", |b| {
        b.iter_custom(|iters| timed_in_chunks(iters, |i| buckets.record(outcome(i).latency), || {}))
    });
    // Its upkeep is untimed, which flatters it: the proxy paid for it on the
    // ticker.
    group.bench_function("naive_prometheus_histogram.record", |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(
                iters,
                |i| histogram.record(outcome(i).latency.as_secs_f64()),
                || handle.run_upkeep(),
            )
        })
    });
    group.bench_function("part_prometheus_counter.increment", |b| {
        b.iter(|| counter.increment(1))
    });
    group.bench_function("part_AtomicU64::fetch_add", |b| {
        b.iter(|| plain.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    });
    group.bench_function("naive_Mutex<HashMap<String,Vec<Duration>>>_push", |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(
                iters,
                |i| naive.record(black_box("checkout"), black_box("canary"), &outcome(i)),
                || naive.trim(),
            )
        })
    });
    group.finish();

    let mut group = c.benchmark_group("record_outcome/contended");
    group.throughput(Throughput::Elements(1));
    group.bench_function("veer_VersionStats::record", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = CHUNK.min(iters - done);
                total += on_two_threads(n, &stats, |s, i| s.record(elapsed, &outcome(i)));
                done += n;
            }
            total
        })
    });
    group.bench_function("naive_Mutex<HashMap<String,Vec<Duration>>>_push", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = CHUNK.min(iters - done);
                total += on_two_threads(n, &naive, |s, i| {
                    s.record("checkout", "canary", &outcome(i))
                });
                naive.trim();
                done += n;
            }
            total
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------
// 5. Picking an endpoint

/// Round robin under a lock.
struct LockedRoundRobin {
    next: Mutex<usize>,
}

impl LockedRoundRobin {
    fn pick(&self, n: usize) -> usize {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let chosen = *next % n;
        *next = next.wrapping_add(1);
        chosen
    }
}

fn pick_endpoint(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick_endpoint");
    group.throughput(Throughput::Elements(1));
    for n in [1usize, 2, 8] {
        let endpoints: Vec<Arc<Endpoint>> = (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([127, 0, 0, 1], 30_000 + i as u16));
                Arc::new(Endpoint::new(addr, Protocol::Http1))
            })
            .collect();
        let locked = LockedRoundRobin {
            next: Mutex::new(0),
        };
        let label = format!("{n}_endpoints");
        group.bench_function(BenchmarkId::new("veer_balance::pick_p2c", &label), |b| {
            b.iter(|| black_box(balance::pick(black_box(&endpoints), None)))
        });
        group.bench_function(BenchmarkId::new("naive_Mutex_round_robin", &label), |b| {
            b.iter(|| black_box(locked.pick(black_box(endpoints.len()))))
        });
    }
    group.finish();
}

criterion_group! {
    name = hot_path;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = choose_version, route_matching, snapshot_load, record_outcome, pick_endpoint
}
criterion_main!(hot_path);
