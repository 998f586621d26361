//! How fast a decision on one replica is in force on the others: three
//! replicas of the real binary on one etcd (loopback), and for each trial a
//! `veer rollback` (the admin POST) on one replica, then each other
//! replica's `/status` polled until its canary's weight is 0; then a
//! `veer resume`, measured the same way (the weight back). The clock starts
//! when the POST is answered (the change is in force on the replica that
//! made it) and stops when another replica shows it. The replica acted on
//! turns round the three. Reported: p50, p99 and max over every (trial,
//! other replica) pair.
//!
//! Needs etcd and `protoc`: `cargo bench --features fleet --bench
//! fleet_propagation` (`harness = false`; `VEER_BENCH_TRIALS`, default 60).
//! etcd, the replicas and this process share the machine: on a busy one
//! read the figures as an upper bound.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::binary::VeerProcess;
use support::client::{http1_client, HttpClient};
use support::etcd::Etcd;
use support::fleet::{wait_fleet, ReplicaPlan};
use support::release::{admin_of, admin_post, status_at, version, web};
use support::upstream::Upstream;

const GIVE_UP: Duration = Duration::from_secs(10);
/// With `VEER_BENCH_TRACE=DIR`: each wait longer than this is printed, and
/// the replicas' logs are kept in DIR (run with `VEER_LOG=info,veer::fleet=debug`).
const SLOW: Duration = Duration::from_millis(20);

async fn canary_weight(client: &HttpClient, admin: std::net::SocketAddr) -> u64 {
    version(web(&status_at(client, admin).await), "canary")["weight"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Polls `admin` until the canary's weight is `want`; how long it took.
async fn until_weight(
    client: &HttpClient,
    admin: std::net::SocketAddr,
    want: u64,
    from: Instant,
) -> Option<Duration> {
    loop {
        if canary_weight(client, admin).await == want {
            return Some(from.elapsed());
        }
        if from.elapsed() > GIVE_UP {
            return None;
        }
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

async fn run(trials: usize) {
    let etcd = Etcd::start();
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let dirs: Vec<_> = (0..3)
        .map(|_| match std::env::var("VEER_BENCH_STATE_IN") {
            // Where the replicas keep their copies (default: the temp dir).
            Ok(base) => tempfile::tempdir_in(base).expect("state dir"),
            Err(_) => tempfile::tempdir().expect("state dir"),
        })
        .collect();
    let names = ["a", "b", "c"];
    let replicas: Vec<VeerProcess> = names
        .iter()
        .zip(&dirs)
        .map(|(name, dir)| {
            let mut plan = ReplicaPlan::new(name, vec![etcd.endpoint()]);
            plan.prefix = "/veer/bench";
            plan.guard = "baseline: stable, interval: 1s, window: 30s, min_requests: 100000, \
                          max_error_rate: 0.2";
            plan.weights = (90, 10);
            plan.start(&stable, &canary, dir.path())
        })
        .collect();
    let client = http1_client();
    wait_fleet(&client, &replicas[0], &names).await;
    let admins: Vec<_> = replicas.iter().map(admin_of).collect();

    let mut rollback = Vec::new();
    let mut resume = Vec::new();
    let mut lost = 0;
    let trace_dir = std::env::var("VEER_BENCH_TRACE").ok();
    let trace = trace_dir.is_some();
    for trial in 0..trials {
        let origin = trial % 3;
        for (action, want, samples) in [("rollback", 0, &mut rollback), ("resume", 10, &mut resume)]
        {
            let path = format!("/services/web/{action}");
            let answer = admin_post(&client, admins[origin], &path, None).await;
            assert_eq!(answer.status, 200, "{action}: {}", answer.text());
            let from = Instant::now();
            let others: Vec<_> = (0..3).filter(|&i| i != origin).collect();
            let waits = others
                .iter()
                .map(|&i| until_weight(&client, admins[i], want, from));
            let started = std::time::SystemTime::now();
            for (took, &i) in futures_util::future::join_all(waits)
                .await
                .iter()
                .zip(&others)
            {
                match took {
                    Some(took) => samples.push(*took),
                    None => lost += 1,
                }
                if trace && took.is_none_or(|t| t > SLOW) {
                    println!(
                        "slow: trial {trial} {action} on {} seen on {} after {:?} (answered at {:?})",
                        names[origin], names[i], took, started
                    );
                }
            }
        }
    }
    println!(
        "fleet propagation: 3 replicas, one etcd, loopback; {trials} trials, 2 other replicas each"
    );
    println!(
        "{:>10} {:>8} {:>10} {:>10} {:>10}",
        "action", "samples", "p50", "p99", "max"
    );
    for (name, samples) in [("rollback", &mut rollback), ("resume", &mut resume)] {
        samples.sort();
        if samples.is_empty() {
            println!("{name:>10} no samples");
            continue;
        }
        println!(
            "{:>10} {:>8} {:>10} {:>10} {:>10}",
            name,
            samples.len(),
            ms(quantile(samples, 0.50)),
            ms(quantile(samples, 0.99)),
            ms(*samples.last().expect("samples")),
        );
    }
    if lost > 0 {
        println!("{lost} waits gave up after {GIVE_UP:?}");
    }
    if let Some(dir) = trace_dir {
        for (name, replica) in names.iter().zip(&replicas) {
            let path = std::path::Path::new(&dir).join(format!("replica-{name}.log"));
            std::fs::write(&path, replica.stderr()).expect("write a replica's log");
        }
    }
}

fn main() {
    let trials = std::env::var("VEER_BENCH_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(60);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(trials));
}
