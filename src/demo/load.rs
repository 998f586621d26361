//! The demo's load generator and live table. It reuses veer's own upstream
//! client (`upstream::Endpoint`) to talk to the proxy, and reads which version
//! answered from the `x-upstream` header.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::config::{Protocol, Timeouts};
use crate::upstream::{Endpoint, RequestBody};

const CLIENTS: usize = 8;
/// Pause between a client's requests: about 8 × 250 = 2,000 requests/s.
const PACING: Duration = Duration::from_millis(4);

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    /// Latencies in microseconds since the last table line (demo only: a
    /// mutex is fine here, it is not veer's request path).
    latencies: Mutex<Vec<u32>>,
}

pub async fn drive(proxy: SocketAddr, versions: &[&'static str], duration: Duration) {
    let tallies: Arc<Vec<(&'static str, Tally)>> =
        Arc::new(versions.iter().map(|&v| (v, Tally::default())).collect());
    let failures = Arc::new(AtomicU64::new(0));
    let endpoint = Arc::new(Endpoint::new(proxy, Protocol::Http1));
    let deadline = Instant::now() + duration;
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let (endpoint, tallies, failures) = (
            Arc::clone(&endpoint),
            Arc::clone(&tallies),
            Arc::clone(&failures),
        );
        clients.push(tokio::spawn(async move {
            let timeouts = Timeouts::default();
            while Instant::now() < deadline {
                let started = Instant::now();
                let mut request = Request::new(RequestBody::Empty);
                request
                    .headers_mut()
                    .insert(http::header::HOST, http::HeaderValue::from_static("demo"));
                let version = match endpoint.send(request, &timeouts, false).await {
                    Ok((response, lease)) => {
                        let version = response
                            .headers()
                            .get("x-upstream")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let _ = response.into_body().collect().await;
                        drop(lease);
                        version
                    }
                    Err(_) => None,
                };
                let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
                match version.and_then(|v| tallies.iter().find(|(name, _)| *name == v)) {
                    Some((_, tally)) => {
                        tally.requests.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut l) = tally.latencies.lock() {
                            l.push(micros);
                        }
                    }
                    None => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(PACING).await;
            }
        }));
    }
    print_table(&tallies, &failures, deadline).await;
    for client in clients {
        let _ = client.await;
    }
}

async fn print_table(tallies: &[(&'static str, Tally)], failures: &AtomicU64, deadline: Instant) {
    println!(
        "{:>5}  {:<8} {:>9} {:>7} {:>9} {:>9}",
        "t", "version", "requests", "share", "p50 ms", "p99 ms"
    );
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let total: u64 = tallies
            .iter()
            .map(|(_, t)| t.requests.load(Ordering::Relaxed))
            .sum();
        for (name, tally) in tallies {
            let requests = tally.requests.load(Ordering::Relaxed);
            let mut latencies = tally
                .latencies
                .lock()
                .map(|mut l| std::mem::take(&mut *l))
                .unwrap_or_default();
            latencies.sort_unstable();
            let pct = |p: f64| {
                latencies
                    .get(
                        ((latencies.len() as f64 * p) as usize)
                            .min(latencies.len().saturating_sub(1)),
                    )
                    .map(|&us| f64::from(us) / 1000.0)
                    .unwrap_or(0.0)
            };
            println!(
                "{:>4}s  {:<8} {:>9} {:>6.1}% {:>9.2} {:>9.2}",
                started.elapsed().as_secs(),
                name,
                requests,
                if total == 0 {
                    0.0
                } else {
                    requests as f64 * 100.0 / total as f64
                },
                pct(0.50),
                pct(0.99),
            );
        }
        let failed = failures.load(Ordering::Relaxed);
        if failed > 0 {
            println!("       failed requests: {failed}");
        }
        if Instant::now() >= deadline {
            break;
        }
    }
}
