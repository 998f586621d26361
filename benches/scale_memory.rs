//! Where an idle proxy's memory goes as its config grows: a counting global
//! allocator measures the bytes held after each stage of starting veer with
//! N generated services (the shape of `benches/gen_config.py`: two hosts,
//! a stable version with two endpoints, a canary with one, a guard), then
//! after a few idle seconds, then after reloads. The figures are heap bytes
//! (what the allocator was asked for and still holds), not RSS: they do not
//! move with the machine's load.
//!
//!     cargo bench --bench scale_memory                 # 1,000 and 10,000 services
//!     SIZES=10000 cargo bench --bench scale_memory
//!     cargo test --bench scale_memory                  # the same, dev profile
//!
//! Also printed: the peak heap of the read `veer check` makes, the sizes of
//! the structs a service is made of, and the tokio tasks alive once idle.

// A global allocator cannot be written without `unsafe`; this one only
// counts and hands every call to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::Duration;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
/// The most `LIVE` has been since the last `reset_peak`.
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grew(by: isize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn reset_peak() -> isize {
    let now = live();
    PEAK.store(now, Ordering::Relaxed);
    now
}

// SAFETY: every method forwards its arguments to `System` unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as isize);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as isize);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size as isize - layout.size() as isize);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn yaml(count: usize, last_canary: u32) -> String {
    let mut y = String::with_capacity(count * 700);
    y.push_str("listeners:\n  - name: public\n    address: 127.0.0.1:0\n");
    y.push_str("admin:\n  address: 127.0.0.1:0\n");
    y.push_str("telemetry:\n  idle_series_after: 10m\n");
    y.push_str("services:\n");
    // GUARD=0 leaves the guard out: what the guard's state and sweep cost.
    let guarded = std::env::var("GUARD").map_or(true, |v| v != "0");
    for i in 0..count {
        let port = 20000 + (i * 3) % 40000;
        let canary = if i + 1 == count { last_canary } else { 10 };
        let _ = write!(
            y,
            "  - name: svc-{i}
    match:
      hosts: [svc-{i}.example.com, \"*.svc-{i}.internal\"]
      path_prefix: /
    versions:
      - name: stable
        revision: \"1.{i}.0\"
        endpoints: [127.0.0.1:{port}, 127.0.0.1:{}]
        weight: 90
      - name: canary
        revision: \"1.{i}.1\"
        endpoints: [127.0.0.1:{}]
        weight: {canary}
    timeouts: {{ connect: 1s, request: 15s }}
",
            port + 1,
            port + 2
        );
        if guarded {
            y.push_str(
                "    guard:
      baseline: stable
      interval: 1s
      window: 30s
      min_requests: 50
      max_error_rate: 0.05
      max_p95_latency: 500ms
      consecutive: 2
",
            );
        }
    }
    y
}

fn per(bytes: isize, n: usize) -> String {
    format!(
        "{:>9.1} MB  {:>7} B/service",
        bytes as f64 / 1e6,
        bytes / n as isize
    )
}

fn sizes() {
    use std::mem::size_of;
    println!("struct sizes (bytes, inline part only):");
    for (name, size) in [
        ("config::Service", size_of::<veer::config::Service>()),
        (
            "snapshot::ServiceSnapshot",
            size_of::<veer::snapshot::ServiceSnapshot>(),
        ),
        (
            "snapshot::VersionSnapshot",
            size_of::<veer::snapshot::VersionSnapshot>(),
        ),
        (
            "telemetry::VersionStats",
            size_of::<veer::telemetry::VersionStats>(),
        ),
        (
            "telemetry::VersionSeries",
            size_of::<veer::telemetry::VersionSeries>(),
        ),
        ("telemetry::Window", size_of::<veer::telemetry::Window>()),
        ("upstream::Endpoint", size_of::<veer::upstream::Endpoint>()),
        ("config::Guard", size_of::<veer::config::Guard>()),
        ("config::Rollout", size_of::<veer::config::Rollout>()),
        (
            "config::HealthCheck",
            size_of::<veer::config::HealthCheck>(),
        ),
        ("config::Outlier", size_of::<veer::config::Outlier>()),
        ("config::Timeouts", size_of::<veer::config::Timeouts>()),
    ] {
        println!("  {name:<28} {size:>6}");
    }
}

/// The snapshot's parts one by one, built by hand from `config`: what each
/// long-lived registry holds, and what the snapshot itself adds.
fn breakdown(runtime: &tokio::runtime::Runtime, config: &veer::config::Config, count: usize) {
    use veer::snapshot::{Effective, Parts, Snapshot};
    let _guard = runtime.enter();
    let before = live();
    // The services are shared `Arc`s: a deep copy is what each holder of a
    // copy (a snapshot's part, a reload's `Reuse`) would cost.
    let copy: Vec<veer::config::Service> = config.services.iter().map(|s| (**s).clone()).collect();
    println!("  a deep copy of services {}", per(live() - before, count));
    drop(copy);
    let before = live();
    let telemetry = veer::telemetry::Telemetry::new();
    let mut endpoints = veer::upstream::Registry::default();
    let mut stats = veer::telemetry::StatsRegistry::default();
    let mut mirrors = veer::mirror::MirrorRegistry::default();
    let snapshot = Snapshot::build(
        1,
        config,
        Parts {
            endpoints: &mut endpoints,
            stats: &mut stats,
            telemetry: &telemetry,
            mirrors: &mut mirrors,
            starting: true,
            previous: None,
        },
        |_, service| Effective {
            weights: service.versions.iter().map(|v| v.weight.get()).collect(),
            latched: vec![false; service.versions.len()],
        },
    );
    let built = live();
    println!("  snapshot + registries   {}", per(built - before, count));
    drop(snapshot);
    let kept = live();
    println!("    the snapshot's own    {}", per(built - kept, count));
    drop(stats);
    let without_stats = live();
    println!(
        "    stats registry        {}",
        per(kept - without_stats, count)
    );
    drop(telemetry);
    let without_telemetry = live();
    println!(
        "    metric series         {}",
        per(without_stats - without_telemetry, count)
    );
    drop(endpoints);
    println!(
        "    endpoints             {}",
        per(without_telemetry - live(), count)
    );
    drop(mirrors);
}

fn measure(runtime: &tokio::runtime::Runtime, count: usize) {
    let dir = tempfile_dir(count);
    let path = dir.join("veer.yaml");
    std::fs::write(&path, yaml(count, 10)).expect("write the config");
    // What `veer check` holds at its peak: the read of the file, as the
    // command does it (`veer check` adds only the files' checks).
    let start = reset_peak();
    let checked = veer::config::load_file_reusing(
        &path,
        |_| Vec::new(),
        Some(&mut veer::config::Reuse::default()),
    )
    .expect("the generated config is valid");
    let peak = PEAK.load(Ordering::Relaxed) - start;
    drop(checked);
    println!("{count} services:");
    println!("  a check's read, peak    {}", per(peak, count));
    let start = live();
    // Read as `veer run` reads it: what the read validated seeds the
    // reloader, so its first look at the file shares the services.
    let mut reuse = veer::config::Reuse::default();
    let (config, _) = veer::config::load_file_reusing(&path, |_| Vec::new(), Some(&mut reuse))
        .expect("the generated config is valid");
    let parsed = live();
    println!("  config model            {}", per(parsed - start, count));
    breakdown(runtime, &config, count);
    let proxy = runtime.block_on(async {
        veer::server::Proxy::start_seeded(
            config,
            veer::server::StartOptions {
                source: Some(path.clone()),
                admin: false,
            },
            reuse,
        )
        .await
        .expect("the proxy starts")
    });
    let started = live();
    println!("  started (all but model) {}", per(started - parsed, count));
    // What start-up leaves running settles first (the config watch's first
    // look at the file, in a debug build, takes a few seconds).
    let settle = std::env::var("SETTLE").map_or(10, |v| v.parse().expect("SETTLE: seconds"));
    runtime.block_on(async { tokio::time::sleep(Duration::from_secs(settle)).await });
    let idle = live();
    println!(
        "  after {settle:>2} s idle         {}",
        per(idle - parsed, count)
    );
    println!(
        "  tasks alive             {:>9}",
        runtime.metrics().num_alive_tasks()
    );
    let generation = proxy.control().snapshot().generation;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    runtime.block_on(async { tokio::time::sleep(Duration::from_secs(5)).await });
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    println!(
        "  allocations in 5 s idle {allocations:>9}  ({} per second; snapshot generation {generation} -> {})",
        allocations / 5,
        proxy.control().snapshot().generation
    );
    for (i, weight) in [20u32, 10, 20].into_iter().enumerate() {
        std::fs::write(&path, yaml(count, weight)).expect("rewrite the config");
        runtime.block_on(async {
            let control = proxy.control();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let snapshot = control.snapshot();
                let last = snapshot.services.last().expect("services");
                if last.versions[1].weight == weight {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "reload {i} not seen"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        });
    }
    println!("  after 3 reloads         {}", per(live() - parsed, count));
    runtime.block_on(proxy.shutdown());
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(count: usize) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("veer-scale-memory-{}-{count}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("make a temp dir");
    dir
}

fn main() {
    let sizes_wanted = std::env::var("SIZES").unwrap_or_else(|_| "1000 10000".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    sizes();
    for count in sizes_wanted.split_whitespace() {
        let count = count.parse().expect("SIZES: numbers");
        measure(&runtime, count);
    }
}
