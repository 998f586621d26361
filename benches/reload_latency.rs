//! Reload latency, end to end: how long from renaming a new config over the
//! watched file until the first request that sees the new weights, watcher
//! debounce included.
//!
//! An in-process proxy watches its config file; two upstreams, `stable` and
//! `canary`. 100 times: rename a file that flips the weights (100/0 <-> 0/100)
//! over the config, then send requests in a tight loop on a keep-alive
//! connection until one is answered by the version the new weights send
//! everything to. Reported: median and p99 of (that answer's arrival - the
//! instant just before the rename), and how many requests the old version
//! still answered after the rename.
//!
//! Client, proxy and upstreams share one runtime here, so a busy client
//! competes with the watcher's timer: the figures are an upper bound for a
//! proxy whose clients are elsewhere.
//!
//! `cargo bench --bench reload_latency` (`harness = false`). Issue 3's goal is
//! p99 under 50 ms.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::client::{get, http1_client, send, HttpClient};
use support::upstream::Upstream;
use veer::server::{Proxy, RunningProxy, StartOptions};

const RELOADS: usize = 100;
/// Pause between reloads, so each one starts from a quiet watcher.
const BETWEEN: Duration = Duration::from_millis(50);
/// A reload not seen within this is a failure, not a figure.
const GIVE_UP: Duration = Duration::from_secs(10);

fn config(stable: &Upstream, canary: &Upstream, stable_weight: u32, canary_weight: u32) -> String {
    format!(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n\
         services:\n  - name: web\n    versions:\n\
         \x20     - name: stable\n        endpoints: [\"{}\"]\n        weight: {stable_weight}\n\
         \x20     - name: canary\n        endpoints: [\"{}\"]\n        weight: {canary_weight}\n",
        stable.addr(),
        canary.addr()
    )
}

/// Writes `text` to a temp file and renames it over `file`; returns the
/// instant just before the rename. Taken before, not after: a bench thread
/// preempted right after the syscall would otherwise start the clock late
/// and report a reload faster than the watcher's debounce allows.
fn rename_over(file: &Path, text: &str) -> Instant {
    let tmp = file.with_file_name(".veer.yaml.tmp");
    std::fs::write(&tmp, text).expect("write the temp file");
    let renamed = Instant::now();
    std::fs::rename(&tmp, file).expect("rename over the config");
    renamed
}

fn reloads(proxy: &RunningProxy) -> u64 {
    let text = proxy.control().telemetry().render();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("veer_config_reloads_total{result=\"success\"}")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0, |v| v as u64)
}

async fn who(client: &HttpClient, url: &str) -> String {
    let answer = send(client, get(url, None)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.upstream().unwrap_or("(none)").to_string()
}

/// The proxy sets its watch up in a task of its own: rewrite the file (a
/// comment only) until a rewrite is reloaded, so the figures measure reloads
/// and not the start.
async fn until_watching(proxy: &RunningProxy, path: &Path, text: &str) {
    let before = reloads(proxy);
    for attempt in 0..30 {
        rename_over(path, &format!("{text}# probe {attempt}\n"));
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if reloads(proxy) > before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    panic!("the watcher never reloaded {}", path.display());
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn run() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("veer.yaml");
    let blue = config(&stable, &canary, 100, 0);
    let green = config(&stable, &canary, 0, 100);
    std::fs::write(&path, &blue).expect("write config");
    let loaded = veer::config::load_file(&path).expect("valid config");
    let proxy = Proxy::start_with(
        loaded,
        StartOptions {
            source: Some(path.clone()),
            admin: false,
        },
    )
    .await
    .expect("start veer");
    let url = format!(
        "http://{}/",
        proxy.listener_addr("public").expect("listener")
    );
    let client = http1_client();
    until_watching(&proxy, &path, &blue).await;
    // Warm the keep-alive connection.
    for _ in 0..100 {
        assert_eq!(who(&client, &url).await, "stable");
    }

    let mut latencies_ms = Vec::with_capacity(RELOADS);
    let mut old_answers = Vec::with_capacity(RELOADS);
    let mut requests = 0u64;
    for i in 0..RELOADS {
        tokio::time::sleep(BETWEEN).await;
        let (text, new, old) = if i % 2 == 0 {
            (&green, "canary", "stable")
        } else {
            (&blue, "stable", "canary")
        };
        let renamed = rename_over(&path, text);
        let mut stale = 0u64;
        loop {
            let got = who(&client, &url).await;
            requests += 1;
            if got == new {
                latencies_ms.push(renamed.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            assert_eq!(got, old, "answered by neither version");
            stale += 1;
            assert!(
                renamed.elapsed() < GIVE_UP,
                "reload {i}: the new weights did not apply within {GIVE_UP:?}"
            );
        }
        old_answers.push(stale);
    }
    let reloaded = reloads(&proxy);
    proxy.shutdown().await;

    let mut sorted = latencies_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let mut stale_sorted: Vec<f64> = old_answers.iter().map(|&n| n as f64).collect();
    stale_sorted.sort_by(f64::total_cmp);
    let stale_total: u64 = old_answers.iter().sum();
    let mean = latencies_ms.iter().sum::<f64>() / latencies_ms.len() as f64;

    println!();
    println!("reload latency: rename over the watched config -> first answer from the new version");
    println!(
        "{RELOADS} reloads, weights 100/0 <-> 0/100, one keep-alive client in a tight loop, \
         {requests} requests"
    );
    println!();
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "", "min", "median", "mean", "p99", "max"
    );
    println!(
        "{:<34} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
        "latency (ms)",
        sorted[0],
        percentile(&sorted, 50.0),
        mean,
        percentile(&sorted, 99.0),
        sorted[sorted.len() - 1]
    );
    println!(
        "{:<34} {:>8} {:>8} {:>8.1} {:>8} {:>8}",
        "old-version answers after rename",
        stale_sorted[0],
        percentile(&stale_sorted, 50.0),
        stale_total as f64 / RELOADS as f64,
        percentile(&stale_sorted, 99.0),
        stale_sorted[stale_sorted.len() - 1]
    );
    println!();
    println!(
        "old-version answers after a rename, in all: {stale_total}; successful reloads counted \
         by veer: {reloaded} ({RELOADS} + the watch probe)"
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does too, with
    // other flags: there is nothing to filter, so arguments are ignored.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}
