//! What publishing windows to the fleet costs a replica in CPU: the real
//! binary with 100 guarded services (guard interval 1 s), alone and then in
//! a fleet on one etcd, each for the same span, idle and under a light load
//! spread over every service. CPU is the process's utime + stime from
//! `/proc/<pid>/stat` over the span, after a few seconds to settle; the
//! fleet's cost is the difference between the two runs of a scenario.
//!
//! Needs etcd and `protoc`: `cargo bench --features fleet --bench fleet_cpu`
//! (`harness = false`; `VEER_BENCH_SECONDS`, default 60, per run; four runs).
//! Other processes on the machine do not count in the figures, but a busy
//! machine makes every run a little dearer.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use http::Request;
use support::binary::VeerProcess;
use support::client::empty;
use support::etcd::Etcd;
use support::load::LoadPlan;
use support::release::BIN;
use support::upstream::Upstream;

const SERVICES: usize = 100;
const SETTLE: Duration = Duration::from_secs(5);
/// The light load: requests a second, spread round the services.
const LIGHT: u32 = 200;

fn config(upstream: &Upstream, etcd: Option<&Etcd>, state: &std::path::Path) -> String {
    let mut y = format!(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n\
         admin:\n  address: \"127.0.0.1:0\"\n\
         state_dir: \"{}\"\nservices:\n",
        state.display()
    );
    for i in 0..SERVICES {
        y.push_str(&format!(
            "  - name: s{i}\n    match: {{ hosts: [s{i}] }}\n    versions:\n\
             \x20     - {{ name: stable, revision: '1', endpoints: ['{addr}'], weight: 90 }}\n\
             \x20     - {{ name: canary, revision: '2', endpoints: ['{addr}'], weight: 10 }}\n\
             \x20   guard: {{ baseline: stable, interval: 1s, window: 30s, min_requests: 100000, \
             max_error_rate: 0.5 }}\n",
            addr = upstream.addr()
        ));
    }
    if let Some(etcd) = etcd {
        y.push_str(&format!(
            "fleet:\n  replica: bench\n  etcd: {{ endpoints: [\"{}\"], prefix: /veer/cpu }}\n",
            etcd.endpoint()
        ));
    }
    y
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // The kernel's USER_HZ is 100 on every Linux veer runs on.
    ticks as f64 / 100.0
}

async fn one_run(upstream: &Upstream, etcd: Option<&Etcd>, load: bool, span: Duration) -> f64 {
    let state = tempfile::tempdir().expect("state dir");
    let veer = VeerProcess::start(BIN, &config(upstream, etcd, state.path()));
    let proxy = veer.listener("public");
    let running = load.then(|| {
        LoadPlan::paced(format!("http://{proxy}/"), LIGHT)
            .max_requests(u64::MAX)
            .max_run(SETTLE + span + Duration::from_secs(5))
            .request(move |n| {
                Request::get(format!("http://{proxy}/"))
                    .header("host", format!("s{}", n % SERVICES as u64))
                    .body(empty())
                    .expect("request")
            })
            .start(|_| ())
    });
    tokio::time::sleep(SETTLE).await;
    let before = cpu_seconds(veer.pid());
    tokio::time::sleep(span).await;
    let used = cpu_seconds(veer.pid()) - before;
    if let Some(load) = running {
        load.finish().await;
    }
    drop(veer);
    used
}

async fn run(span: Duration) {
    let upstream = Upstream::start("stable").await;
    let etcd = Etcd::start();
    println!(
        "CPU of one replica with {SERVICES} guarded services (interval 1s) over {}s",
        span.as_secs()
    );
    println!(
        "{:>22} {:>12} {:>12} {:>14} {:>10}",
        "scenario", "alone", "in a fleet", "publishing", "of a core"
    );
    for (name, load) in [("idle", false), (&*format!("{LIGHT} req/s"), true)] {
        let alone = one_run(&upstream, None, load, span).await;
        let fleet = one_run(&upstream, Some(&etcd), load, span).await;
        let cost = fleet - alone;
        println!(
            "{:>22} {:>11.2}s {:>11.2}s {:>13.2}s {:>9.2}%",
            name,
            alone,
            fleet,
            cost,
            cost / span.as_secs_f64() * 100.0
        );
    }
}

fn main() {
    let seconds = std::env::var("VEER_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(Duration::from_secs(seconds)));
}
