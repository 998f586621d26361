//! How fast the guard reacts, end to end: a canary that starts failing 30 %
//! of its requests while the proxy carries steady paced traffic (10 % to the
//! canary), at 100, 1,000 and 5,000 requests/s. Reported per rate:
//! - fault → trip: from the moment the canary starts failing to the moment
//!   its weight is 0 in the published snapshot;
//! - crossing → trip: from the first moment the canary's window error rate is
//!   above the threshold (sampled every 5 ms) to the trip. Issue 5's goal is
//!   at most 2 × `guard.interval`;
//! - the requests the canary served between the fault and the trip.
//!
//! Policy: the contract's defaults but a 10 s window (so the runs are short):
//! interval 1s, min_requests 50, max_error_rate 0.05, consecutive 2. Each
//! rate first runs 10 s healthy so the window is full of good requests.
//! Client, proxy and upstreams share this process (and this 2-core machine),
//! so at 5,000 requests/s the load generator itself is a large part of the
//! CPU: read the figures as an upper bound.
//!
//! `cargo bench --bench guard_trip` (`harness = false`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::client::{get, http1_client, send};
use support::upstream::Upstream;
use veer::server::{Proxy, RunningProxy};

const WARM: Duration = Duration::from_secs(10);
const GIVE_UP: Duration = Duration::from_secs(30);
const CLIENTS: usize = 32;

fn config(stable: &Upstream, canary: &Upstream) -> String {
    format!(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n\
         services:\n  - name: web\n    versions:\n\
         \x20     - {{name: stable, revision: '1', endpoints: ['{}'], weight: 90}}\n\
         \x20     - {{name: canary, revision: '2', endpoints: ['{}'], weight: 10}}\n\
         \x20   guard: {{baseline: stable, interval: 1s, window: 10s, min_requests: 50, \
         max_error_rate: 0.05, consecutive: 2}}\n",
        stable.addr(),
        canary.addr()
    )
}

fn canary_weight(proxy: &RunningProxy) -> u32 {
    proxy.control().snapshot().services[0].versions[1].weight
}

fn canary_error_rate(proxy: &RunningProxy) -> f64 {
    let snapshot = proxy.control().snapshot();
    let elapsed = proxy
        .control()
        .telemetry()
        .elapsed(tokio::time::Instant::now());
    snapshot.services[0].versions[1]
        .stats
        .window()
        .figures(elapsed, Duration::from_secs(10))
        .error_rate()
}

struct Figures {
    rate: u32,
    fault_to_trip: Duration,
    crossing_to_trip: Option<Duration>,
    canary_served: u64,
    sent: u64,
}

async fn one_rate(rate: u32) -> Option<Figures> {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let config = veer::config::parse_str(&config(&stable, &canary), "bench.yaml").ok()?;
    let proxy = Proxy::start(config).await.ok()?;
    let url = format!("http://{}/", proxy.listener_addr("public")?);
    let running = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Paced clients: each sends rate/CLIENTS per second on its own schedule.
    let period = Duration::from_secs_f64(CLIENTS as f64 / f64::from(rate));
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        let (url, running, sent) = (url.clone(), Arc::clone(&running), Arc::clone(&sent));
        clients.push(tokio::spawn(async move {
            let client = http1_client();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tokio::time::sleep(period.mul_f64(k as f64 / CLIENTS as f64)).await;
            while running.load(Ordering::Relaxed) {
                tick.tick().await;
                let _ = send(&client, get(&url, Some("web"))).await;
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(WARM).await;
    let before = canary.total();
    let sent_before = sent.load(Ordering::Relaxed);
    let fault = Instant::now();
    canary.set_fail_ratio(0.3);
    let mut crossing = None;
    let tripped = loop {
        if canary_weight(&proxy) == 0 {
            break Some(Instant::now());
        }
        if crossing.is_none() && canary_error_rate(&proxy) > 0.05 {
            crossing = Some(Instant::now());
        }
        if fault.elapsed() > GIVE_UP {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let served = canary.total() - before;
    let sent_during = sent.load(Ordering::Relaxed) - sent_before;
    running.store(false, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }
    proxy.shutdown().await;
    let tripped = tripped?;
    Some(Figures {
        rate,
        fault_to_trip: tripped - fault,
        crossing_to_trip: crossing.map(|c| tripped - c),
        canary_served: served,
        sent: sent_during,
    })
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("guard reaction (interval 1s, window 10s, 30% canary errors, 10% canary share)");
    println!(
        "{:>10} {:>16} {:>18} {:>16} {:>14}",
        "req/s", "fault→trip", "crossing→trip", "canary served", "total sent"
    );
    for rate in [100, 1_000, 5_000] {
        match runtime.block_on(one_rate(rate)) {
            Some(f) => println!(
                "{:>10} {:>14.0}ms {:>16} {:>16} {:>14}",
                f.rate,
                f.fault_to_trip.as_secs_f64() * 1000.0,
                f.crossing_to_trip.map_or("-".to_string(), |d| format!(
                    "{:.0}ms",
                    d.as_secs_f64() * 1000.0
                )),
                f.canary_served,
                f.sent,
            ),
            None => println!("{rate:>10}  no trip within {GIVE_UP:?}"),
        }
    }
}
