//! gRPC unary calls through veer beside a direct connection, at a fixed
//! rate: veer's CPU time per call, and each path's latency.
//!
//!     cargo bench --bench grpc                      # 3 rounds, 2,000 calls/s, 5 s each
//!     RATE=5000 DURATION=10 ROUNDS=5 cargo bench --bench grpc
//!
//! One process holds the gRPC upstream (the test suite's, `tests/support/
//! grpc.rs`: hyper's HTTP/2 server writing gRPC frames and trailers) and the
//! load generator (tonic's client over hyper-util, `CONNS` HTTP/2
//! connections); `veer run` is its own process (the release binary), so its
//! CPU time is read alone from `/proc/PID/stat` (utime + stime, in clock
//! ticks of 10 ms: run long enough for the figure to mean something). The
//! bench process's own CPU time, direct and through veer, is printed too:
//! the client and upstream's share. Rounds alternate direct and veer; the
//! figures are medians over rounds. Calls are started on a 1 ms clock at the
//! rate, whatever the answers' pace (open loop), at most 1,024 in flight.
//! Loopback only; nothing here is a pass/fail.

#[path = "../tests/support/grpc.rs"]
#[allow(dead_code)]
mod grpc_support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use grpc_support::{GrpcClient, GrpcUpstream, UNARY};

// `grpc_support` reaches these as `super::…`.
type BoxError = Box<dyn std::error::Error + Send + Sync>;
fn bind_loopback() -> tokio::net::TcpListener {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    tokio::net::TcpListener::from_std(listener).expect("tokio listener")
}

const CLOCK_TICK: Duration = Duration::from_millis(10);
const MAX_IN_FLIGHT: usize = 1024;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of a process.
fn cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`, which may hold spaces.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u32>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15; `after` starts at field 3.
    CLOCK_TICK * (ticks(11) + ticks(12))
}

struct Veer {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Veer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_veer(upstream: SocketAddr) -> Veer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("veer.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - name: public\n    address: \"{port}\"\nadmin:\n  address: \"127.0.0.1:0\"\n\
             services:\n  - name: echo\n    versions:\n      - {{ name: stable, endpoints: [\"{upstream}\"], weight: 100, protocol: http2 }}\n"
        ),
    )
    .expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["run", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start veer");
    Veer {
        child,
        addr: port,
        _dir: dir,
    }
}

struct Run {
    calls: u64,
    failed: u64,
    p50_us: u64,
    p99_us: u64,
    veer_cpu: Duration,
    own_cpu: Duration,
}

async fn run(target: SocketAddr, veer_pid: Option<&str>, rate: u64, duration: Duration) -> Run {
    let conns = env("CONNS", 4) as usize;
    let clients: Vec<GrpcClient> = (0..conns).map(|_| GrpcClient::new(target)).collect();
    // Warm up: connections made, pools filled.
    for client in &clients {
        let mut client = client.clone();
        let _ = client.unary(UNARY).await;
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(
        (rate * duration.as_secs()) as usize,
    )));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total = rate * duration.as_secs();
    let (veer_before, own_before) = (veer_pid.map(cpu), cpu("self"));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    while sent < total {
        tick.tick().await;
        let due = (started.elapsed().as_micros() as u64 * rate / 1_000_000).min(total);
        while sent < due {
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                break;
            };
            let mut client = clients[sent as usize % conns].clone();
            let (latencies, failed) = (Arc::clone(&latencies), Arc::clone(&failed));
            tasks.spawn(async move {
                let at = Instant::now();
                let ok = client.unary(UNARY).await.is_ok();
                let us = at.elapsed().as_micros() as u64;
                drop(permit);
                if ok {
                    latencies.lock().expect("latencies").push(us);
                } else {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
            sent += 1;
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let veer_cpu = match (veer_pid, veer_before) {
        (Some(pid), Some(before)) => cpu(pid).saturating_sub(before),
        _ => Duration::ZERO,
    };
    let own_cpu = cpu("self").saturating_sub(own_before);
    let mut latencies = latencies.lock().expect("latencies").clone();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Run {
        calls: sent,
        failed: failed.load(std::sync::atomic::Ordering::Relaxed),
        p50_us: at(0.50),
        p99_us: at(0.99),
        veer_cpu,
        own_cpu,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that is not ours skips the run.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"grpc".contains(&a))
    {
        return;
    }
    let rate = env("RATE", 2000);
    let duration = Duration::from_secs(env("DURATION", 5));
    let rounds = env("ROUNDS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let upstream = GrpcUpstream::start("stable").await;
        let veer = start_veer(upstream.addr());
        let pid = veer.child.id().to_string();
        let mut probe = GrpcClient::new(veer.addr);
        let ready = Instant::now();
        while probe.unary(UNARY).await.is_err() {
            assert!(ready.elapsed() < Duration::from_secs(20), "veer did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "gRPC unary, {rate} calls/s for {}s, {rounds} rounds (medians), {} connections",
            duration.as_secs(),
            env("CONNS", 4)
        );
        let (mut direct, mut proxied) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let d = run(upstream.addr(), None, rate, duration).await;
            let v = run(veer.addr, Some(&pid), rate, duration).await;
            println!(
                "round {}: direct p50 {} µs p99 {} µs, bench CPU {:.1} µs/call | via veer p50 {} µs p99 {} µs, veer CPU {:.1} µs/call, bench CPU {:.1} µs/call, failed {}+{}",
                round + 1,
                d.p50_us,
                d.p99_us,
                d.own_cpu.as_secs_f64() * 1e6 / d.calls as f64,
                v.p50_us,
                v.p99_us,
                v.veer_cpu.as_secs_f64() * 1e6 / v.calls as f64,
                v.own_cpu.as_secs_f64() * 1e6 / v.calls as f64,
                d.failed,
                v.failed,
            );
            direct.push(d);
            proxied.push(v);
        }
        let per_call = |runs: &[Run], f: fn(&Run) -> Duration| {
            median(runs.iter().map(|r| f(r).as_secs_f64() * 1e6 / r.calls as f64).collect())
        };
        let direct_own = per_call(&direct, |r| r.own_cpu);
        let proxied_own = per_call(&proxied, |r| r.own_cpu);
        let veer_cpu = per_call(&proxied, |r| r.veer_cpu);
        let p50 = |runs: &[Run]| median(runs.iter().map(|r| r.p50_us as f64).collect());
        let p99 = |runs: &[Run]| median(runs.iter().map(|r| r.p99_us as f64).collect());
        println!("| path | p50 µs | p99 µs | veer CPU µs/call | client+upstream CPU µs/call |");
        println!("| --- | --- | --- | --- | --- |");
        println!(
            "| direct | {:.0} | {:.0} | – | {direct_own:.1} |",
            p50(&direct),
            p99(&direct)
        );
        println!(
            "| via veer | {:.0} | {:.0} | {veer_cpu:.1} | {proxied_own:.1} |",
            p50(&proxied),
            p99(&proxied)
        );
        println!(
            "veer's CPU per call is {:.2}x the client and upstream's together on the direct path",
            veer_cpu / direct_own
        );
        drop(veer);
    });
}
