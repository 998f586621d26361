//! One pool and one retry loop for both HTTP/1.1 clients: the same upstream
//! failure, met by veer's own client (the fast path, as shipped) and by
//! hyper's (`VEER_H1_CLIENT=hyper`), gives the client the same answer, the
//! upstream the same number of attempts, and `veer_upstream_failures_total`
//! the same reason; and both clients' idle connections are closed once they
//! have waited `timeouts.idle`, even when no request comes to take them.
//! Real `veer` processes, scripted upstreams on loopback.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use support::binary::VeerProcess;
use support::client::{empty, get, http1_client, send, HttpClient};
use support::metrics::scrape;
use support::raw::{reset, RawMode, RawUpstream};
use support::upstream::Upstream;
use support::within;

const CLIENTS: [(&str, &[(&str, &str)]); 2] = [
    ("fast path", &[]),
    ("hyper", &[("VEER_H1_CLIENT", "hyper")]),
];

/// Bounds a wait that only ends when veer does what is tested.
const LIMIT: Duration = Duration::from_secs(20);

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-upstream: scripted\r\n\r\nok";

/// `canary` on `canary` endpoints, reached with `x-to: canary`; `stable`,
/// its baseline, on `stable`.
fn yaml(stable: &[SocketAddr], canary: &[SocketAddr], timeouts: &str) -> String {
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
         \x20   timeouts: {{ {timeouts} }}\n\
         \x20   guard: {{ baseline: stable, min_requests: 1000, max_error_rate: 0.5 }}\n",
        list(stable),
        list(canary)
    )
}

fn start(name: &str, env: &[(&str, &str)], yaml: &str) -> (VeerProcess, String, SocketAddr) {
    let veer = VeerProcess::start_with_env(env!("CARGO_BIN_EXE_veer"), yaml, env);
    let url = format!("http://{}", veer.listener("public"));
    let admin = veer
        .output()
        .lines()
        .find_map(|line| line.trim().strip_prefix("veer: admin on ")?.parse().ok())
        .unwrap_or_else(|| panic!("{name}: no `veer: admin on` line\n{}", veer.output()));
    (veer, url, admin)
}

fn to_canary(method: &str, url: &str) -> Request<support::Body> {
    Request::builder()
        .method(method)
        .uri(url)
        .header("x-to", "canary")
        .body(empty())
        .expect("request")
}

/// `veer_upstream_failures_total` of `version`, by reason.
async fn failures(client: &HttpClient, admin: SocketAddr, version: &str) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = scrape(client, admin)
        .await
        .samples
        .into_iter()
        .filter(|s| {
            s.metric == "veer_upstream_failures_total" && s.labels.get("version") == Some(version)
        })
        .filter_map(|s| match s.value {
            prometheus_parse::Value::Counter(n) if n > 0.0 => {
                Some((s.labels.get("reason")?.to_string(), n as u64))
            }
            _ => None,
        })
        .collect();
    found.sort();
    found
}

/// What one scenario left behind, compared across the two clients.
#[derive(Debug, PartialEq)]
struct Seen {
    statuses: Vec<u16>,
    /// Request heads the scripted upstream read: the attempts made on it.
    attempts: u64,
    /// `veer_upstream_failures_total` by reason.
    failures: Vec<(String, u64)>,
}

fn reasons(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(r, n)| (r.to_string(), *n)).collect()
}

/// An upstream on `127.0.0.1:0` that runs a script on every connection it
/// accepts, counting connections and the request heads the scripts read.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// One connection as a script sees it.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    requests: Arc<AtomicU64>,
}

impl Conn {
    /// Reads the next request head; false when the peer closed first.
    async fn head(&mut self) -> bool {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                self.buf.drain(..end + 4);
                self.requests.fetch_add(1, Ordering::SeqCst);
                return true;
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn answer(&mut self) -> bool {
        self.stream.write_all(OK).await.is_ok()
    }
}

impl Scripted {
    async fn start<F, Fut>(script: F) -> Scripted
    where
        F: Fn(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = support::bind_loopback();
        let addr = listener.local_addr().expect("local addr");
        let connections = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let (conns, reqs) = (Arc::clone(&connections), Arc::clone(&requests));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(script(Conn {
                    stream,
                    buf: Vec::new(),
                    requests: Arc::clone(&reqs),
                }));
            }
        });
        Scripted {
            addr,
            connections,
            requests,
            task,
        }
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request written to an endpoint that reads it and closes without a
/// byte of answer: a GET (safe to repeat) goes to the version's other
/// endpoint, then to the baseline; a POST goes nowhere else, as the
/// upstream may have acted on it.
#[tokio::test]
async fn a_request_closed_unanswered_is_retried_alike_by_both_clients() {
    let stable = Upstream::start("stable").await;
    let mut seen = Vec::new();
    for (name, env) in CLIENTS {
        // `/close`: read the request, close the connection.
        let closing = [
            RawUpstream::start(RawMode::ByPath).await,
            RawUpstream::start(RawMode::ByPath).await,
        ];
        let canary: Vec<_> = closing.iter().map(RawUpstream::addr).collect();
        let (_veer, url, admin) = start(name, env, &yaml(&[stable.addr()], &canary, "request: 5s"));
        let url = format!("{url}/close");
        let client = http1_client();
        let got = send(&client, to_canary("GET", &url)).await;
        assert_eq!(got.upstream(), Some("stable"), "{name}: {got:?}");
        let post = send(&client, to_canary("POST", &url)).await;
        post.assert_proxy_error(502);
        seen.push(Seen {
            statuses: vec![got.status.as_u16(), post.status.as_u16()],
            attempts: closing.iter().map(RawUpstream::requests).sum(),
            failures: failures(&client, admin, "canary").await,
        });
    }
    // The GET tried both canary endpoints, the POST one.
    let expected = Seen {
        statuses: vec![200, 502],
        attempts: 3,
        failures: reasons(&[("reset", 2)]),
    };
    assert_eq!(seen[0], expected, "fast path");
    assert_eq!(seen[1], expected, "hyper");
}

/// Endpoints that reset the connection (RST) once they have read the
/// request: GET and DELETE, both safe to repeat, go to the version's other
/// endpoint, then to the baseline; the canary's failure is `reset`.
#[tokio::test]
async fn a_reset_connection_is_retried_alike_by_both_clients() {
    let stable = Upstream::start("stable").await;
    let mut seen = Vec::new();
    for (name, env) in CLIENTS {
        let script = |mut conn: Conn| async move {
            if conn.head().await {
                reset(conn.stream);
            }
        };
        let resetting = [Scripted::start(script).await, Scripted::start(script).await];
        let canary: Vec<_> = resetting.iter().map(|r| r.addr).collect();
        let (_veer, url, admin) = start(name, env, &yaml(&[stable.addr()], &canary, "request: 5s"));
        let client = http1_client();
        let mut statuses = Vec::new();
        for method in ["GET", "DELETE"] {
            let got = send(&client, to_canary(method, &url)).await;
            assert_eq!(got.upstream(), Some("stable"), "{name} {method}: {got:?}");
            statuses.push(got.status.as_u16());
        }
        seen.push(Seen {
            statuses,
            attempts: resetting.iter().map(Scripted::requests).sum(),
            failures: failures(&client, admin, "canary").await,
        });
    }
    // Each request: both canary endpoints, then the baseline; one failed
    // outcome of the canary per request.
    let expected = Seen {
        statuses: vec![200, 200],
        attempts: 4,
        failures: reasons(&[("reset", 2)]),
    };
    assert_eq!(seen[0], expected, "fast path");
    assert_eq!(seen[1], expected, "hyper");
}

/// The keep-alive race: the upstream answers the first request on each
/// connection and closes it unanswered when the second comes, as an
/// upstream closing an idle connection just as a request is written. That is
/// nobody's fault: both clients send the request again on a fresh connection
/// to the same endpoint, and count no failure.
#[tokio::test]
async fn a_pooled_connection_closed_under_a_request_is_replaced_alike_by_both_clients() {
    let mut seen = Vec::new();
    for (name, env) in CLIENTS {
        let once = Scripted::start(|mut conn: Conn| async move {
            if conn.head().await && conn.answer().await {
                conn.head().await;
            }
        })
        .await;
        let (_veer, url, admin) =
            start(name, env, &yaml(&[once.addr], &[once.addr], "request: 5s"));
        let client = http1_client();
        let mut statuses = Vec::new();
        for i in 0..3 {
            let got = send(&client, get(&url, None)).await;
            assert_eq!(
                got.upstream(),
                Some("scripted"),
                "{name}, request {i}: {got:?}"
            );
            statuses.push(got.status.as_u16());
        }
        // Request 1 opens a connection; 2 and 3 each meet the closing one
        // and go again on a new connection.
        assert_eq!(
            once.connections.load(Ordering::SeqCst),
            3,
            "{name}: connections"
        );
        seen.push(Seen {
            statuses,
            attempts: once.requests(),
            failures: failures(&client, admin, "stable").await,
        });
    }
    let expected = Seen {
        statuses: vec![200, 200, 200],
        attempts: 5,
        failures: vec![],
    };
    assert_eq!(seen[0], expected, "fast path");
    assert_eq!(seen[1], expected, "hyper");
}

/// An idle connection is closed by veer once it has waited `timeouts.idle`,
/// with no request coming to take it (as for a version at weight 0 after a
/// rollback, which would otherwise hold its sockets for good).
#[tokio::test]
async fn an_idle_upstream_connection_is_closed_after_timeouts_idle_with_no_request_to_take_it() {
    for (name, env) in CLIENTS {
        let (closed_tx, mut closed) = mpsc::unbounded_channel();
        let watching = Scripted::start(move |mut conn: Conn| {
            let closed_tx = closed_tx.clone();
            async move {
                // Nothing more is sent after the answer: the next read ends
                // when veer closes the connection.
                if conn.head().await && conn.answer().await && !conn.head().await {
                    let _ = closed_tx.send(());
                }
            }
        })
        .await;
        let addrs = [watching.addr];
        let (_veer, url, _) = start(name, env, &yaml(&addrs, &addrs, "idle: 1s"));
        let answer = send(&http1_client(), get(&url, None)).await;
        assert_eq!(answer.upstream(), Some("scripted"), "{name}: {answer:?}");
        within(
            LIMIT,
            &format!("{name}: veer closing its idle connection"),
            closed.recv(),
        )
        .await
        .expect("the script reports");
    }
}
