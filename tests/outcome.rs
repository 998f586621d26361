//! One outcome per request, recorded when the response stream ends: a
//! response that breaks after its `200` head is the version's error
//! (`midstream`) on every path (the HTTP/1.1 fast path, hyper's client,
//! HTTP/2 upstreams, HTTP/2 clients), and the guard reverts a canary that
//! does it as it reverts one that answers 500. A client that leaves early is
//! the client's (`veer_client_aborts_total`), never the version's. The exact
//! status is the `code` label, and `veer_response_duration_seconds` counts
//! each finished stream once.
//!
//! No timing is asserted: loads are bounded in count and time, waits are
//! polls with generous deadlines.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;
use prometheus_parse::Scrape;
use support::client::{empty, full, get, h2c_client, http1_client, send, HttpClient};
use support::harness::start_with_admin;
use support::metrics;
use support::upstream::Upstream;
use support::{bind_loopback, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use veer::server::RunningProxy;

const LIMIT: Duration = Duration::from_secs(30);

fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// One service `web`, any host; `versions` are (name, endpoint, weight, h2).
fn yaml(versions: &[(&str, SocketAddr, u32, bool)], extra: &str) -> String {
    let mut y = String::from(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\nadmin:\n  address: \"127.0.0.1:0\"\nservices:\n  - name: web\n    versions:\n",
    );
    for (name, addr, weight, h2) in versions {
        y.push_str(&format!(
            "      - name: {name}\n        revision: \"1\"\n        endpoints: [{}]\n        weight: {weight}\n",
            quote(&addr.to_string())
        ));
        if *h2 {
            y.push_str("        protocol: http2\n");
        }
    }
    y.push_str(extra);
    y
}

struct Fixture {
    running: RunningProxy,
    proxy: SocketAddr,
    admin: SocketAddr,
    client: HttpClient,
}

impl Fixture {
    async fn start(yaml: &str) -> Fixture {
        let (running, proxy, admin) = start_with_admin(yaml, None).await;
        Fixture {
            running,
            proxy,
            admin,
            client: http1_client(),
        }
    }

    async fn scrape(&self) -> Scrape {
        metrics::scrape(&self.client, self.admin).await
    }

    /// The sum of `name`'s samples whose labels include `labels`.
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metrics::sum(&self.scrape().await, name, labels)
    }

    async fn window(&self, version: &str) -> serde_json::Value {
        let request = get(&format!("http://{}/status", self.admin), None);
        let answer = send(&self.client, request).await;
        let status: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
        status["services"][0]["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .find(|v| v["name"] == version)
            .map(|v| v["window"].clone())
            .expect("version in /status")
    }

    /// Polls until `name{labels}` reaches `at_least`; returns the value.
    async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], at_least: f64) -> f64 {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let value = self.metric(name, labels).await;
            if value >= at_least || tokio::time::Instant::now() > deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sends `request` and reads its body to the end: the status, and whether
/// the body arrived whole.
async fn exchange(client: &HttpClient, request: Request<support::Body>) -> (u16, bool) {
    let response = within(LIMIT, "request", client.request(request))
        .await
        .expect("a response head");
    let status = response.status().as_u16();
    let whole = within(LIMIT, "body", response.into_body().collect())
        .await
        .is_ok();
    (status, whole)
}

const MIDSTREAM: &str = "veer_upstream_failures_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_broken_after_a_200_head_is_the_versions_midstream_error_on_every_path() {
    let h1 = Upstream::start("h1").await;
    let h2 = Upstream::start("h2").await;
    for (name, upstream, h2_upstream) in [("h1", &h1, false), ("h2", &h2, true)] {
        let f = Fixture::start(&yaml(&[("stable", upstream.addr(), 1, h2_upstream)], "")).await;
        let url = |path: &str| format!("http://{}{path}", f.proxy);
        let labels = [("version", "stable"), ("reason", "midstream")];

        // A body-less GET (the fast path to an HTTP/1.1 upstream), a POST
        // with a body (hyper's client), and an HTTP/2 client: each sees its
        // 200 head, then a broken body.
        let h2c = h2c_client();
        let post = Request::post(url("/reset/100"))
            .body(full(Bytes::from_static(b"payload")))
            .expect("request");
        let cases: [(&HttpClient, Request<support::Body>); 3] = [
            (&f.client, get(&url("/reset/100"), None)),
            (&f.client, post),
            (&h2c, get(&url("/reset/100"), None)),
        ];
        let mut expected = 0.0;
        for (client, request) in cases {
            let (status, whole) = exchange(client, request).await;
            assert_eq!(status, 200, "{name}: the head arrived");
            assert!(!whole, "{name}: the client must see the body break");
            expected += 1.0;
            assert_eq!(
                f.wait_metric(MIDSTREAM, &labels, expected).await,
                expected,
                "{name}: one midstream failure per broken body"
            );
        }
        // A whole answer is no failure; each stream ended once.
        let (status, whole) = exchange(&f.client, get(&url("/download/5000"), None)).await;
        assert_eq!((status, whole), (200, true));
        assert_eq!(
            f.wait_metric(
                "veer_response_duration_seconds_count",
                &[("version", "stable")],
                4.0
            )
            .await,
            4.0,
            "{name}: every stream's end is measured once"
        );
        assert_eq!(f.metric(MIDSTREAM, &labels).await, 3.0);
        assert_eq!(
            f.metric(
                "veer_requests_total",
                &[("version", "stable"), ("code", "200")]
            )
            .await,
            4.0,
            "{name}: the status counted is the head's, exact"
        );
        let window = f.window("stable").await;
        assert_eq!(
            (window["requests"].clone(), window["errors"].clone()),
            (4.into(), 3.into()),
            "{name}: the guard's window sees the broken bodies as errors: {window}"
        );
        assert_eq!(
            f.metric("veer_client_aborts_total", &[]).await,
            0.0,
            "{name}: no client left; a body delivered whole is not abandoned"
        );
        f.running.shutdown().await;
    }
}

/// An HTTP/1.1 upstream that answers every request `200` with a 1,000-byte
/// body, and for 3 requests in 10 sends 10 bytes of it and resets.
async fn breaking_upstream() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = bind_loopback();
    let addr = listener.local_addr().expect("addr");
    let served = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&served);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    buf.drain(..end + 4);
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n";
                    if stream.write_all(head).await.is_err() {
                        return;
                    }
                    if n % 10 < 3 {
                        let _ = stream.write_all(&[b'x'; 10]).await;
                        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                        return;
                    }
                    if stream.write_all(&[b'x'; 1000]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, served)
}

/// Sends paced load (4 at a time, at most 3,000 requests) until the guard
/// latches a version; the latch's reason, if any.
async fn load_until_trip(f: &Fixture) -> Option<String> {
    let url = format!("http://{}/", f.proxy);
    for _ in 0..750 {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let client = f.client.clone();
            let request = get(&url, None);
            batch.spawn(async move { exchange(&client, request).await });
        }
        while batch.join_next().await.is_some() {}
        if let Some(latch) = f.running.control().latches("web").first() {
            return Some(latch.reason.clone());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

const GUARD: &str = "    guard: { baseline: stable, interval: 200ms, window: 5s, min_requests: 20, consecutive: 2, max_error_rate: 0.1 }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_resets_30_percent_of_bodies_is_reverted_like_one_that_answers_500() {
    let stable = Upstream::start("stable").await;

    // 200 heads, 30 % of bodies broken.
    let (breaking, served) = breaking_upstream().await;
    let f = Fixture::start(&yaml(
        &[
            ("stable", stable.addr(), 50, false),
            ("canary", breaking, 50, false),
        ],
        GUARD,
    ))
    .await;
    let reason = load_until_trip(&f).await;
    assert_eq!(
        reason.as_deref(),
        Some("error_rate"),
        "the breaking canary trips"
    );
    assert!(served.load(Ordering::Relaxed) > 0);
    assert!(
        f.metric(MIDSTREAM, &[("version", "canary"), ("reason", "midstream")])
            .await
            >= 1.0
    );
    assert_eq!(
        f.metric(
            "veer_requests_total",
            &[("version", "canary"), ("code", "500")]
        )
        .await,
        0.0,
        "every head the canary sent was a 200"
    );
    f.running.shutdown().await;

    // The same share answered 500: the same verdict.
    let failing = Upstream::start("failing").await;
    failing.set_fail_ratio(0.3);
    let f = Fixture::start(&yaml(
        &[
            ("stable", stable.addr(), 50, false),
            ("canary", failing.addr(), 50, false),
        ],
        GUARD,
    ))
    .await;
    let reason = load_until_trip(&f).await;
    assert_eq!(
        reason.as_deref(),
        Some("error_rate"),
        "the 500 canary trips"
    );
    f.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_is_counted_as_an_abort_never_as_the_versions_error() {
    let upstream = Upstream::start("stable").await;
    let f = Fixture::start(&yaml(
        &[("stable", upstream.addr(), 1, false)],
        "    outlier_detection: { consecutive_failures: 1 }\n",
    ))
    .await;
    let gone = [("version", "stable"), ("reason", "disconnect")];

    // Leaves in the middle of a long body.
    let mut stream = TcpStream::connect(f.proxy).await.expect("connect");
    stream
        .write_all(b"GET /download/50000000 HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .expect("write");
    let mut first = [0u8; 1024];
    let n = within(LIMIT, "first bytes", stream.read(&mut first))
        .await
        .expect("read");
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    drop(stream);
    assert_eq!(
        f.wait_metric("veer_client_aborts_total", &gone, 1.0).await,
        1.0
    );

    // Leaves while the upstream thinks.
    let mut stream = TcpStream::connect(f.proxy).await.expect("connect");
    stream
        .write_all(b"GET /delay/3000 HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);
    assert_eq!(
        f.wait_metric("veer_client_aborts_total", &gone, 2.0).await,
        2.0
    );

    let window = f.window("stable").await;
    assert_eq!(window["errors"], 0, "{window}");
    assert_eq!(
        f.metric(MIDSTREAM, &[("reason", "midstream")]).await,
        0.0,
        "leaving is not a broken body"
    );
    assert_eq!(
        f.metric("veer_endpoint_ejections_total", &[]).await,
        0.0,
        "no failure streak for the client's doing"
    );
    // The endpoint still serves.
    let (status, whole) = exchange(&f.client, get(&format!("http://{}/", f.proxy), None)).await;
    assert_eq!((status, whole), (200, true));
    f.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rare_statuses_get_their_own_code_label() {
    let upstream = Upstream::start("stable").await;
    let f = Fixture::start(&yaml(&[("stable", upstream.addr(), 1, false)], "")).await;
    for code in [200, 418, 599, 200] {
        let request = Request::builder()
            .method(Method::GET)
            .uri(format!("http://{}/status/{code}", f.proxy))
            .body(empty())
            .expect("request");
        assert_eq!(exchange(&f.client, request).await.0, code);
    }
    for (code, count) in [("200", 2.0), ("418", 1.0), ("599", 1.0)] {
        assert_eq!(
            f.wait_metric("veer_requests_total", &[("code", code)], count)
                .await,
            count,
            "code {code}"
        );
    }
    f.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_judged_at_its_101_while_the_tunnel_lives_on() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let upstream = Upstream::start("stable").await;
    let f = Fixture::start(&yaml(&[("stable", upstream.addr(), 1, false)], "")).await;
    let stream = TcpStream::connect(f.proxy).await.expect("connect");
    let (mut ws, response) = within(
        LIMIT,
        "handshake",
        tokio_tungstenite::client_async("ws://web/ws", stream),
    )
    .await
    .expect("handshake");
    assert_eq!(response.status(), 101);
    // Recorded at the 101, with the tunnel still open.
    assert_eq!(
        f.wait_metric("veer_requests_total", &[("code", "101")], 1.0)
            .await,
        1.0
    );
    assert_eq!(
        f.metric("veer_response_duration_seconds_count", &[]).await,
        1.0
    );
    ws.send(Message::text("still open")).await.expect("send");
    let echoed = within(LIMIT, "echo", ws.next()).await;
    assert!(matches!(echoed, Some(Ok(Message::Text(_)))), "{echoed:?}");
    drop(ws);
    assert_eq!(f.metric("veer_client_aborts_total", &[]).await, 0.0);
    assert_eq!(f.window("stable").await["errors"], 0);
    f.running.shutdown().await;
}
