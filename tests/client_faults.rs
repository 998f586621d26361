//! A client's fault is the client's: a request body with broken framing gets
//! `400` from veer and no upstream is blamed; a client that aborts its upload
//! is counted in `veer_client_aborts_total`; neither counts against the
//! version in the guard's window nor in an endpoint's failure streak. A
//! thousand of them at a guarded canary trip nothing and eject nothing.
//!
//! Raw client sockets on loopback; no timing is asserted.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::client::{get, http1_client, raw_exchange, read_until_close, send, HttpClient};
use support::harness::start_with_admin;
use support::metrics;
use support::upstream::Upstream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use veer::server::RunningProxy;

const WAIT: Duration = Duration::from_secs(10);

/// Chunked bodies whose framing is broken, each a complete request to the
/// upstream's `/sink` (which reads the whole body before answering).
const MALFORMED_CHUNKED: [(&str, &[u8]); 6] = [
    ("a size that is not hex", b"zz\r\nhello\r\n0\r\n\r\n"),
    ("a negative size", b"-1\r\nhello\r\n0\r\n\r\n"),
    (
        "a size that overflows",
        b"fffffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    ),
    ("a 0x-prefixed size", b"0x5\r\nhello\r\n0\r\n\r\n"),
    (
        "a chunk extension broken by a bare line feed",
        b"5;name\nhello\r\n0\r\n\r\n",
    ),
    ("a chunk longer than its size", b"2\r\nhello\r\n0\r\n\r\n"),
];

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut request =
        b"POST /sink HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    request.extend_from_slice(body);
    request
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

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metrics::sum(
            &metrics::scrape(&self.client, self.admin).await,
            name,
            labels,
        )
    }

    async fn errors_in_window(&self) -> u64 {
        let answer = send(
            &self.client,
            get(&format!("http://{}/status", self.admin), None),
        )
        .await;
        let status: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
        status["services"][0]["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .map(|v| v["window"]["errors"].as_u64().unwrap_or(0))
            .sum()
    }
}

fn config(stable: SocketAddr, canary: SocketAddr, canary_weight: u32) -> String {
    format!(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\nadmin:\n  address: \"127.0.0.1:0\"\n\
         services:\n  - name: web\n    versions:\n\
         \x20     - {{ name: stable, revision: \"1\", endpoints: [\"{stable}\"], weight: {} }}\n\
         \x20     - {{ name: canary, revision: \"2\", endpoints: [\"{canary}\"], weight: {canary_weight} }}\n\
         \x20   outlier_detection: {{ consecutive_failures: 3 }}\n\
         \x20   guard: {{ baseline: stable, interval: 200ms, window: 30s, min_requests: 50, consecutive: 1, max_error_rate: 0.05 }}\n",
        100 - canary_weight
    )
}

/// A request whose body stops early: `Content-Length: 100`, 5 bytes, then
/// the client closes its side.
async fn aborted_upload(proxy: SocketAddr) {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let _ = stream
        .write_all(b"POST /sink HTTP/1.1\r\nhost: web\r\ncontent-length: 100\r\n\r\nhello")
        .await;
    let _ = stream.shutdown().await;
    let _ = read_until_close(&mut stream, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_body_gets_400_from_veer_and_blames_no_upstream() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let f = Fixture::start(&config(stable.addr(), canary.addr(), 0)).await;

    for (what, body) in MALFORMED_CHUNKED {
        let reply = raw_exchange(f.proxy, &chunked(body), WAIT).await;
        assert_eq!(reply.status(), Some(400), "{what}: {}", reply.text());
        let text = reply.text().to_ascii_lowercase();
        assert!(
            text.contains("x-veer-error: malformed-request-body"),
            "{what}: veer's own answer: {text}"
        );
        assert!(
            text.contains(
                "veer: the request body is malformed (invalid chunked framing); fix the client's encoding"
            ),
            "{what}: {text}"
        );
    }
    // Framing hyper refuses in the head never reaches a version: 400 too.
    for (what, head) in [
        (
            "a content-length that is not a number",
            &b"POST /sink HTTP/1.1\r\nhost: web\r\ncontent-length: abc\r\n\r\nhello"[..],
        ),
        (
            "two different content-lengths",
            b"POST /sink HTTP/1.1\r\nhost: web\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
        ),
        (
            "a transfer-encoding that does not end in chunked",
            b"POST /sink HTTP/1.1\r\nhost: web\r\ntransfer-encoding: gzip\r\n\r\nhello",
        ),
    ] {
        let reply = raw_exchange(f.proxy, head, WAIT).await;
        assert_eq!(reply.status(), Some(400), "{what}: {}", reply.text());
    }
    // Content-Length beside Transfer-Encoding: chunked wins, the length is
    // dropped and the connection is closed after the answer (RFC 9112 §6.1),
    // so the upstream never sees two framings.
    let reply = raw_exchange(
        f.proxy,
        b"POST /sink HTTP/1.1\r\nhost: web\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    assert!(
        reply.text().ends_with('5'),
        "the chunked body, 5 bytes: {}",
        reply.text()
    );
    assert!(reply.closed, "closed after a request with two framings");

    aborted_upload(f.proxy).await;

    let malformed = MALFORMED_CHUNKED.len() as f64;
    assert_eq!(
        f.metric("veer_client_aborts_total", &[("reason", "malformed")])
            .await,
        malformed
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while f
        .metric("veer_client_aborts_total", &[("reason", "upload")])
        .await
        + f.metric("veer_client_aborts_total", &[("reason", "disconnect")])
            .await
        < 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "upload abort not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        f.metric("veer_upstream_failures_total", &[]).await,
        0.0,
        "no upstream blamed"
    );
    assert_eq!(f.errors_in_window().await, 0);
    // An upload that stopped is answered 400 too when the client is still
    // there to read it (else it is a disconnect, with no answer).
    let uploads = f
        .metric("veer_client_aborts_total", &[("reason", "upload")])
        .await;
    assert_eq!(
        f.metric("veer_requests_total", &[("code", "400")]).await,
        malformed + uploads,
        "the 400s veer answered for a version are counted as the client's"
    );
    // Still serving.
    let answer = send(&f.client, get(&format!("http://{}/", f.proxy), None)).await;
    assert_eq!(answer.status, 200);
    f.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_broken_requests_trip_no_guard_and_eject_no_endpoint() {
    const REQUESTS: usize = 1_000;
    const CONCURRENCY: usize = 16;
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let f = Fixture::start(&config(stable.addr(), canary.addr(), 10)).await;

    let proxy = f.proxy;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..CONCURRENCY {
        tasks.spawn(async move {
            let mut answered_400 = 0u64;
            for i in (worker..REQUESTS).step_by(CONCURRENCY) {
                // Every seventh is an aborted upload; the rest cycle through
                // the broken chunked framings.
                if i % 7 == 0 {
                    aborted_upload(proxy).await;
                } else {
                    let (_, body) = MALFORMED_CHUNKED[i % MALFORMED_CHUNKED.len()];
                    let reply = raw_exchange(proxy, &chunked(body), WAIT).await;
                    if reply.status() == Some(400) {
                        answered_400 += 1;
                    }
                }
            }
            answered_400
        });
    }
    let mut answered_400 = 0;
    while let Some(done) = tasks.join_next().await {
        answered_400 += done.expect("worker");
    }
    let malformed = (0..REQUESTS).filter(|i| i % 7 != 0).count() as u64;
    assert_eq!(answered_400, malformed, "every malformed body got 400");

    // The guard has had time to judge (interval 200 ms) with far more than
    // min_requests in the canary's window.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let canary_requests = f
        .metric("veer_requests_total", &[("version", "canary")])
        .await;
    assert!(
        canary_requests >= 50.0,
        "the canary saw enough requests for a verdict: {canary_requests}"
    );
    assert!(
        f.running.control().latches("web").is_empty(),
        "no trip: {:?}",
        f.running.control().latches("web")
    );
    assert_eq!(f.metric("veer_guard_trips_total", &[]).await, 0.0);
    assert_eq!(
        f.metric("veer_endpoint_ejections_total", &[]).await,
        0.0,
        "no ejection"
    );
    assert_eq!(
        f.metric("veer_endpoint_healthy", &[]).await,
        2.0,
        "both endpoints in service"
    );
    assert_eq!(f.metric("veer_upstream_failures_total", &[]).await, 0.0);
    assert_eq!(f.errors_in_window().await, 0);
    let aborts = f.metric("veer_client_aborts_total", &[]).await;
    assert!(
        aborts >= malformed as f64,
        "the client-fault counter moved: {aborts}"
    );
    assert!(
        f.metric("veer_client_aborts_total", &[("version", "canary")])
            .await
            > 0.0,
        "the canary's share is counted as the client's"
    );
    f.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_still_arriving_when_the_request_timeout_ends_is_the_clients_408() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let yaml = config(stable.addr(), canary.addr(), 0).replace(
        "    outlier_detection:",
        "    timeouts: { request: 300ms }\n    outlier_detection:",
    );
    let f = Fixture::start(&yaml).await;

    // One chunk of a chunked body, then nothing (the connection stays open).
    let mut stream = TcpStream::connect(f.proxy).await.expect("connect");
    stream
        .write_all(
            b"POST /sink HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .expect("write");
    let reply = read_until_close(&mut stream, WAIT).await;
    assert_eq!(reply.status(), Some(408), "{}", reply.text());
    let text = reply.text();
    assert!(
        text.contains("x-veer-error: request-body-timeout")
            && text.contains("veer: the request body was still arriving when the service's timeouts.request ran out; send it faster or raise timeouts.request"),
        "{text}"
    );
    assert_eq!(
        f.metric("veer_client_aborts_total", &[("reason", "upload")])
            .await,
        1.0
    );
    assert_eq!(
        f.metric("veer_upstream_failures_total", &[]).await,
        0.0,
        "the upstream was waiting for the client, not timing out"
    );
    assert_eq!(f.errors_in_window().await, 0);

    // A whole body the upstream is slow to answer is still the upstream's
    // timeout.
    let reply = raw_exchange(
        f.proxy,
        b"POST /delay/2000 HTTP/1.1\r\nhost: web\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello",
        WAIT,
    )
    .await;
    assert_eq!(reply.status(), Some(504), "{}", reply.text());
    assert_eq!(
        f.metric("veer_upstream_failures_total", &[("reason", "timeout")])
            .await,
        1.0
    );
    f.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_resets_its_upload_is_counted_and_blames_no_one() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let f = Fixture::start(&config(stable.addr(), canary.addr(), 0)).await;

    let stream = TcpStream::connect(f.proxy).await.expect("connect");
    let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    for sent in 1..=3u64 {
        let request = http::Request::post("http://web/sink")
            .body(())
            .expect("request");
        let (_response, mut body) = client.send_request(request, false).expect("stream");
        body.send_data(bytes::Bytes::from_static(b"part of it"), false)
            .expect("data");
        // Reset once the upstream has the request: veer routed it and is
        // sending its body.
        support::wait_until(WAIT, "the upstream to get the request", || {
            stable.count("/sink") == sent
        })
        .await;
        body.send_reset(h2::Reason::CANCEL);
        client = client.ready().await.expect("ready again");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let aborts = f
            .metric("veer_client_aborts_total", &[("reason", "upload")])
            .await
            + f.metric("veer_client_aborts_total", &[("reason", "disconnect")])
                .await;
        if aborts >= 3.0 {
            assert_eq!(aborts, 3.0, "each reset counted once");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "resets not counted: {aborts}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f.metric("veer_upstream_failures_total", &[]).await, 0.0);
    assert_eq!(f.errors_in_window().await, 0);
    assert_eq!(f.metric("veer_endpoint_ejections_total", &[]).await, 0.0);
    f.running.shutdown().await;
}
