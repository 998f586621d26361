//! One retry loop for both HTTP/1.1 clients: the same upstream failure, met
//! by veer's own client (the fast path, as shipped) and by hyper's
//! (`VEER_H1_CLIENT=hyper`), gives the client the same answer, the upstream
//! the same number of attempts, and `veer_upstream_failures_total` the same
//! reason. Two real `veer` processes, scripted upstreams on loopback.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::binary::VeerProcess;
use support::client::{empty, get, http1_client, send, HttpClient};
use support::metrics::{scrape, sum};
use support::raw::{reset, RawMode, RawUpstream};
use support::upstream::Upstream;

const CLIENTS: [(&str, &[(&str, &str)]); 2] = [
    ("fast path", &[]),
    ("hyper", &[("VEER_H1_CLIENT", "hyper")]),
];

/// `canary` on `canary` endpoints, reached with `x-to: canary`; `stable`,
/// its baseline, on `stable`.
fn yaml(stable: &[SocketAddr], canary: &[SocketAddr]) -> String {
    let list = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n\
         admin:\n  address: \"127.0.0.1:0\"\n\
         services:\n  - name: web\n    versions:\n\
         \x20     - {{ name: stable, revision: \"1\", endpoints: [{}], weight: 1 }}\n\
         \x20     - {{ name: canary, revision: \"2\", endpoints: [{}], weight: 0 }}\n\
         \x20   rules:\n      - {{ match: {{ headers: {{ x-to: canary }} }}, version: canary }}\n\
         \x20   timeouts: {{ connect: 1s, request: 5s }}\n\
         \x20   guard: {{ baseline: stable, min_requests: 1000, max_error_rate: 0.5 }}\n",
        list(stable),
        list(canary)
    )
}

fn admin_of(veer: &VeerProcess) -> SocketAddr {
    veer.output()
        .lines()
        .find_map(|line| line.trim().strip_prefix("veer: admin on ")?.parse().ok())
        .unwrap_or_else(|| panic!("no `veer: admin on` line\n{}", veer.output()))
}

fn to_canary(method: &str, url: &str) -> Request<support::Body> {
    Request::builder()
        .method(method)
        .uri(url)
        .header("x-to", "canary")
        .body(empty())
        .expect("request")
}

/// What one scenario left behind, compared across the two clients.
#[derive(Debug, PartialEq)]
struct Seen {
    statuses: Vec<u16>,
    /// Request heads the failing upstream read: the attempts made on it.
    attempts: u64,
    /// `veer_upstream_failures_total` of `canary` by reason.
    failures: Vec<(&'static str, u64)>,
}

async fn failures(
    client: &HttpClient,
    admin: SocketAddr,
    version: &str,
) -> Vec<(&'static str, u64)> {
    let metrics = scrape(client, admin).await;
    [
        "connect",
        "timeout",
        "reset",
        "protocol",
        "tls",
        "midstream",
    ]
    .into_iter()
    .map(|reason| {
        let n = sum(
            &metrics,
            "veer_upstream_failures_total",
            &[("version", version), ("reason", reason)],
        );
        (reason, n as u64)
    })
    .filter(|(_, n)| *n > 0)
    .collect()
}

/// A request written to an endpoint that reads it and closes without a
/// byte of answer: a GET (safe to repeat) goes to the version's other
/// endpoint, then to the baseline; a POST goes nowhere else, as the
/// upstream may have acted on it. Both clients count the same attempts and
/// the same reason.
#[tokio::test]
async fn a_request_closed_unanswered_is_retried_alike_by_both_clients() {
    let stable = Upstream::start("stable").await;
    let mut seen = Vec::new();
    for (name, env) in CLIENTS {
        // Two canary endpoints that read each request and close.
        let closing = [
            RawUpstream::start(RawMode::ByPath).await,
            RawUpstream::start(RawMode::ByPath).await,
        ];
        let canary: Vec<_> = closing.iter().map(RawUpstream::addr).collect();
        let veer = VeerProcess::start_with_env(
            env!("CARGO_BIN_EXE_veer"),
            &yaml(&[stable.addr()], &canary),
            env,
        );
        let url = format!("http://{}/close", veer.listener("public"));
        let client = http1_client();
        let mut statuses = Vec::new();
        let got = send(&client, to_canary("GET", &url)).await;
        assert_eq!(got.upstream(), Some("stable"), "{name}: {got:?}");
        statuses.push(got.status.as_u16());
        let attempts_get: u64 = closing.iter().map(RawUpstream::requests).sum();
        assert_eq!(attempts_get, 2, "{name}: a GET tries both canary endpoints");
        let got = send(&client, to_canary("POST", &url)).await;
        got.assert_proxy_error(502);
        statuses.push(got.status.as_u16());
        let attempts: u64 = closing.iter().map(RawUpstream::requests).sum();
        assert_eq!(attempts, 3, "{name}: a POST is tried once");
        let failures = failures(&client, admin_of(&veer), "canary").await;
        seen.push((
            name,
            Seen {
                statuses,
                attempts,
                failures,
            },
        ));
    }
    let (fast, hyper) = (&seen[0].1, &seen[1].1);
    assert_eq!(
        fast,
        &Seen {
            statuses: vec![200, 502],
            attempts: 3,
            failures: vec![("reset", 2)],
        }
    );
    assert_eq!(fast, hyper, "the two clients disagree");
}

/// An upstream that answers the first request on each connection and closes
/// the connection unanswered when the second comes: the keep-alive race
/// (the upstream closes an idle connection just as a request is written).
struct OneAnswerPerConnection {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl OneAnswerPerConnection {
    async fn start() -> OneAnswerPerConnection {
        let listener = support::bind_loopback();
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let (reqs, conns) = (Arc::clone(&requests), Arc::clone(&connections));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_once(stream, Arc::clone(&reqs)));
            }
        });
        OneAnswerPerConnection {
            addr,
            requests,
            connections,
            task,
        }
    }
}

impl Drop for OneAnswerPerConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_once(mut stream: TcpStream, requests: Arc<AtomicU64>) {
    let mut buf = Vec::new();
    for answered in [true, false] {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                buf.drain(..end + 4);
                break;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        requests.fetch_add(1, Ordering::SeqCst);
        if !answered {
            return;
        }
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-upstream: once\r\n\r\nok";
        if stream.write_all(ok).await.is_err() {
            return;
        }
    }
}

/// A pooled connection the upstream closed as the request was written is
/// nobody's fault: both clients send the request again on a fresh
/// connection to the same endpoint, and count no failure.
#[tokio::test]
async fn a_pooled_connection_closed_under_a_request_is_replaced_alike_by_both_clients() {
    let mut seen = Vec::new();
    for (name, env) in CLIENTS {
        let once = OneAnswerPerConnection::start().await;
        let veer = VeerProcess::start_with_env(
            env!("CARGO_BIN_EXE_veer"),
            &yaml(&[once.addr], &[once.addr]),
            env,
        );
        let url = format!("http://{}/", veer.listener("public"));
        let client = http1_client();
        let mut statuses = Vec::new();
        for i in 0..3 {
            let got = send(&client, get(&url, None)).await;
            assert_eq!(got.upstream(), Some("once"), "{name}, request {i}: {got:?}");
            statuses.push(got.status.as_u16());
        }
        let attempts = once.requests.load(Ordering::SeqCst);
        // Request 1 opens a connection; 2 and 3 each meet the closing one
        // and go again on a new connection.
        assert_eq!(
            once.connections.load(Ordering::SeqCst),
            3,
            "{name}: connections"
        );
        let failures = failures(&client, admin_of(&veer), "stable").await;
        seen.push(Seen {
            statuses,
            attempts,
            failures,
        });
    }
    assert_eq!(
        seen[0],
        Seen {
            statuses: vec![200, 200, 200],
            attempts: 5,
            failures: vec![],
        }
    );
    assert_eq!(seen[0], seen[1], "the two clients disagree");
}

/// An upstream that reads each request head and resets the connection
/// (RST, no answer); counts the heads it read.
struct ResetsAfterRequest {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl ResetsAfterRequest {
    async fn start() -> ResetsAfterRequest {
        let listener = support::bind_loopback();
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(AtomicU64::new(0));
        let reqs = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let reqs = Arc::clone(&reqs);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    reqs.fetch_add(1, Ordering::SeqCst);
                    reset(stream);
                });
            }
        });
        ResetsAfterRequest {
            addr,
            requests,
            task,
        }
    }
}

impl Drop for ResetsAfterRequest {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Endpoints that reset the connection once they have read the request: a
/// GET goes to the version's other endpoint, then to the baseline; a DELETE
/// (safe to repeat too) likewise; the canary's failure is `reset` whichever
/// client met it.
#[tokio::test]
async fn a_reset_connection_is_retried_alike_by_both_clients() {
    let stable = Upstream::start("stable").await;
    let mut seen = Vec::new();
    for (name, env) in CLIENTS {
        let resetting = [
            ResetsAfterRequest::start().await,
            ResetsAfterRequest::start().await,
        ];
        let canary: Vec<_> = resetting.iter().map(|r| r.addr).collect();
        let veer = VeerProcess::start_with_env(
            env!("CARGO_BIN_EXE_veer"),
            &yaml(&[stable.addr()], &canary),
            env,
        );
        let url = format!("http://{}/", veer.listener("public"));
        let client = http1_client();
        let mut statuses = Vec::new();
        for method in ["GET", "DELETE"] {
            let got = send(&client, to_canary(method, &url)).await;
            assert_eq!(got.upstream(), Some("stable"), "{name} {method}: {got:?}");
            statuses.push(got.status.as_u16());
        }
        seen.push(Seen {
            statuses,
            attempts: resetting
                .iter()
                .map(|r| r.requests.load(Ordering::SeqCst))
                .sum(),
            failures: failures(&client, admin_of(&veer), "canary").await,
        });
    }
    // Each request: both canary endpoints, then the baseline; one failed
    // outcome of the canary per request.
    assert_eq!(
        seen[0],
        Seen {
            statuses: vec![200, 200],
            attempts: 4,
            failures: vec![("reset", 2)],
        }
    );
    assert_eq!(seen[0], seen[1], "the two clients disagree");
}
