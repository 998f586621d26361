//! What a mirror costs the client: paced GETs through the proxy at a fixed
//! rate, client latency p50/p99 side by side for
//! - no mirror;
//! - a mirror to a slow shadow (every answer 1 s late: the concurrency budget
//!   fills, and copies beyond it are dropped);
//! - a mirror to a failing shadow (answers 500 to every copy);
//! - a mirror to a shadow that is down (connections refused).
//!
//! Client, proxy and upstreams share this process: read the figures as an
//! upper bound on what the proxy adds, and compare the rows, not absolutes.
//! The figures of record come from `benches/mirror.sh`: the release binary
//! pinned to its own core, the load and the shadows on another.
//!
//! `cargo bench --bench mirror` (`harness = false`); `MIRROR_BENCH_RATE`
//! (default 5000 requests/s) and `MIRROR_BENCH_SECONDS` (default 5) change
//! the load.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use tokio::time::Instant;

use support::load::LoadPlan;
use support::upstream::Upstream;
use veer::server::Proxy;

#[derive(Clone, Copy, PartialEq)]
enum Shadow {
    None,
    Slow,
    Failing,
    Down,
}

impl Shadow {
    fn name(self) -> &'static str {
        match self {
            Shadow::None => "no mirror",
            Shadow::Slow => "mirror, slow shadow (1 s)",
            Shadow::Failing => "mirror, shadow answers 500",
            Shadow::Down => "mirror, shadow down",
        }
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Row {
    shadow: Shadow,
    sent: usize,
    errors: usize,
    p50: Duration,
    p99: Duration,
    copies: [u64; 4],
}

async fn one(shadow: Shadow, rate: u32, seconds: u64) -> Option<Row> {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    match shadow {
        Shadow::Slow => canary.set_delay(Duration::from_secs(1)),
        Shadow::Failing => canary.set_fail_ratio(1.0),
        Shadow::Down => canary.stop(),
        Shadow::None => {}
    }
    let mirror = if shadow == Shadow::None {
        ""
    } else {
        "    mirror: { version: canary, concurrency: 64, timeout: 2s }\n"
    };
    let yaml = format!(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n\
         services:\n  - name: web\n    versions:\n\
         \x20     - {{name: stable, revision: '1', endpoints: ['{}'], weight: 100}}\n\
         \x20     - {{name: canary, revision: '2', endpoints: ['{}'], weight: 0}}\n{mirror}",
        stable.addr(),
        canary.addr()
    );
    let config = veer::config::parse_str(&yaml, "bench.yaml").ok()?;
    let proxy = Proxy::start(config).await.ok()?;
    let url = format!("http://{}/", proxy.listener_addr("public")?);
    let load = LoadPlan::paced(url, rate)
        .max_requests(u64::from(rate) * seconds)
        .max_run(Duration::from_secs(seconds + 5))
        .answer_limit(Duration::from_secs(10))
        .start(|reply| (Instant::now(), reply.is_ok_and(|a| a.status == 200)));
    let samples = load.join().await;
    let mut latencies: Vec<Duration> = samples
        .iter()
        .filter(|s| s.record.1)
        .map(|s| s.record.0.duration_since(s.at))
        .collect();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let copies = proxy.control().snapshot().services[0]
        .mirror
        .as_ref()
        .map_or([0; 4], |m| m.state.counts.get());
    let row = Row {
        shadow,
        sent: samples.len(),
        errors: samples.len() - latencies.len(),
        p50: at(0.50),
        p99: at(0.99),
        copies,
    };
    proxy.shutdown().await;
    Some(row)
}

fn main() {
    let rate = u32::try_from(env("MIRROR_BENCH_RATE", 5000)).unwrap_or(5000);
    let seconds = env("MIRROR_BENCH_SECONDS", 5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!("paced GETs at {rate}/s for {seconds}s per row");
    println!(
        "{:<30} {:>8} {:>7} {:>9} {:>9}   copies sent/dropped/failed/skipped",
        "", "requests", "errors", "p50", "p99"
    );
    for shadow in [Shadow::None, Shadow::Slow, Shadow::Failing, Shadow::Down] {
        match runtime.block_on(one(shadow, rate, seconds)) {
            Some(row) => println!(
                "{:<30} {:>8} {:>7} {:>9.2?} {:>9.2?}   {}/{}/{}/{}",
                row.shadow.name(),
                row.sent,
                row.errors,
                row.p50,
                row.p99,
                row.copies[0],
                row.copies[1],
                row.copies[2],
                row.copies[3],
            ),
            None => println!("{:<30} could not start", shadow.name()),
        }
    }
}
