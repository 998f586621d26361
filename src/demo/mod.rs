//! `veer demo`: everything on loopback in one process. Two built-in upstreams
//! (stable answers in about 2 ms, canary in about 3 ms), the proxy splitting
//! 90/10 between them under a guard, and a load generator. A third of the way
//! in, the canary starts failing 30 % of its requests; the live table shows
//! the guard trip and the canary's traffic move back to stable.

mod load;
mod upstream;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config;
use crate::control::Control;
use crate::server::{Proxy, StartOptions};

pub fn run(duration: Duration) -> ExitCode {
    let runtime = match crate::server::runtime::build(None) {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("veer demo: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        match demo(duration).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("veer demo: {err}");
                ExitCode::from(1)
            }
        }
    })
}

async fn demo(duration: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let canary_failing = Arc::new(AtomicBool::new(false));
    let stable = upstream::spawn("stable", Duration::from_millis(2), None).await?;
    let canary = upstream::spawn(
        "canary",
        Duration::from_millis(3),
        Some(Arc::clone(&canary_failing)),
    )
    .await?;
    // The admin API's usual port when it is free, so the page's address is
    // the one the README gives; any free port otherwise.
    let admin_port = std::net::TcpListener::bind("127.0.0.1:9901").map_or(0, |_| 9901);
    let yaml = format!(
        "listeners:\n  - name: demo\n    address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:{admin_port}\n\
         services:\n  - name: demo\n    versions:\n\
         \x20     - name: stable\n        revision: \"1.1.0\"\n        endpoints: [{stable}]\n        weight: 90\n\
         \x20     - name: canary\n        revision: \"1.2.0\"\n        endpoints: [{canary}]\n        weight: 10\n\
         \x20   guard:\n        baseline: stable\n        interval: 500ms\n        window: 5s\n\
         \x20       min_requests: 30\n        max_error_rate: 0.05\n        max_p95_latency: 250ms\n\
         \x20       consecutive: 2\n"
    );
    let config = config::parse_str(&yaml, "demo.yaml")?;
    // With the admin API: the page at its root is where to watch.
    let options = StartOptions {
        source: None,
        admin: true,
    };
    let proxy = Proxy::start_with(config, options).await?;
    let address = proxy
        .listener_addr("demo")
        .ok_or("the demo listener did not bind")?;
    if let Some(admin) = proxy.admin_addr() {
        println!("veer demo: watch the release live at http://{admin}/");
    }
    println!("veer demo: stable on {stable}, canary on {canary}, proxy on {address}");
    println!(
        "guard: baseline stable, window 5s, trips on error rate > 5% or p95 > 250ms (2 verdicts in a row)"
    );
    println!(
        "the canary starts failing 30% of its requests at {:.0}s\n",
        (duration / 3).as_secs_f64()
    );
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let load = tokio::spawn(load::drive(address, deadline, Arc::clone(&failures)));
    let fault_at = Instant::now() + duration / 3;
    table(
        proxy.control(),
        deadline,
        fault_at,
        &canary_failing,
        &failures,
    )
    .await;
    let _ = load.await;
    proxy.shutdown().await;
    Ok(())
}

/// Prints the proxy's own per-version figures every second, and the guard's
/// decisions as they happen.
async fn table(
    control: &Control,
    deadline: Instant,
    fault_at: Instant,
    canary_failing: &AtomicBool,
    failures: &std::sync::atomic::AtomicU64,
) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut events_seen = 0;
    println!(
        "{:>4}  {:<7} {:>6} {:>8} {:>7} {:>8} {:>8}",
        "t", "version", "weight", "req/s", "err %", "p50 ms", "p95 ms"
    );
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= fault_at && !canary_failing.swap(true, Ordering::Relaxed) {
            println!("  -- the canary starts failing 30% of its requests --");
        }
        let snapshot = control.snapshot();
        let elapsed = control.telemetry().elapsed(now);
        for service in &snapshot.services {
            for version in &service.versions {
                let f = version
                    .stats
                    .window()
                    .figures(elapsed, Duration::from_secs(2));
                let ms = |us: Option<f64>| us.map_or("-".into(), |v| format!("{:.2}", v / 1000.0));
                println!(
                    "{:>3}s  {:<7} {:>6} {:>8.0} {:>7.1} {:>8} {:>8}",
                    started.elapsed().as_secs(),
                    version.name,
                    version.weight,
                    f.rps(),
                    f.error_rate() * 100.0,
                    ms(f.p50_us),
                    ms(f.p95_us),
                );
            }
            let events = control.events(&service.name);
            for event in events.iter().skip(events_seen) {
                println!(
                    "  >> guard: {} {} rolled back: {} {:.3} > {:.3} over {} requests; weights now {:?}",
                    event.version,
                    event.revision,
                    event.reason,
                    event.observed.unwrap_or(0.0),
                    event.threshold.unwrap_or(0.0),
                    event.window_requests,
                    event.weights,
                );
            }
            events_seen = events.len();
        }
        if now >= deadline {
            break;
        }
    }
    let failed = failures.load(Ordering::Relaxed);
    println!("\nrequests the clients saw fail: {failed} (the canary's 500s before the trip)");
}
