//! Limits on bad clients: oversized heads (431), slowloris (closed), malformed
//! requests (400, then closed), and many connections at once (all served).
//! After each, the proxy still serves a normal request.

mod support;

use std::time::Duration;

use support::client::{get, http1_client, http1_connect, raw_exchange, read_until_close, send};
use support::config::{service, ConfigBuilder};
use support::harness::TestProxy;
use support::upstream::Upstream;
use support::within;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The upstream, and a proxy with a 1 s header read timeout.
async fn fixture() -> (Upstream, TestProxy) {
    fixture_with("1s").await
}

async fn fixture_with(header_read_timeout: &str) -> (Upstream, TestProxy) {
    let up = Upstream::start("stable").await;
    let yaml = ConfigBuilder::new()
        .limit("header_read_timeout", header_read_timeout)
        .limit("max_header_bytes", "65536")
        .service(service("web").version("stable", &[up.addr()], 1))
        .yaml();
    (up, TestProxy::start(&yaml).await)
}

async fn still_serves(proxy: &TestProxy) {
    let answer = send(&http1_client(), get(&proxy.url("/"), None)).await;
    assert_eq!(answer.status, 200, "the proxy must keep serving");
    assert_eq!(answer.text(), "stable");
}

/// A request head of about `size` bytes, spread over 1 KiB headers.
fn head_of(size: usize) -> Vec<u8> {
    let mut head = b"GET / HTTP/1.1\r\nHost: app.example\r\n".to_vec();
    let mut i = 0;
    while head.len() + 1100 < size {
        head.extend_from_slice(format!("x-filler-{i}: ").as_bytes());
        head.extend_from_slice(&[b'a'; 1024]);
        head.extend_from_slice(b"\r\n");
        i += 1;
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    head
}

#[tokio::test]
async fn request_headers_over_64_kib_get_431() {
    let (up, proxy) = fixture().await;
    // Over the limit: 431, whether in many headers or in one.
    let reply = raw_exchange(proxy.addr(), &head_of(70 * 1024), Duration::from_secs(5)).await;
    assert_eq!(
        reply.status(),
        Some(431),
        "70 KiB of headers; reply {:?}",
        reply.text().chars().take(200).collect::<String>()
    );
    let mut one = b"GET / HTTP/1.1\r\nHost: app.example\r\nx-big: ".to_vec();
    one.extend_from_slice(&vec![b'b'; 80 * 1024]);
    one.extend_from_slice(b"\r\n\r\n");
    let reply = raw_exchange(proxy.addr(), &one, Duration::from_secs(5)).await;
    assert_eq!(reply.status(), Some(431), "one 80 KiB header");
    assert_eq!(up.total(), 0, "an oversized head is not forwarded");

    // Under the limit it passes.
    let reply = raw_exchange(proxy.addr(), &head_of(48 * 1024), Duration::from_secs(5)).await;
    assert_eq!(reply.status(), Some(200), "48 KiB of headers must pass");
    assert_eq!(up.total(), 1);
    still_serves(&proxy).await;
}

#[tokio::test]
async fn slowloris_connection_is_closed() {
    let (up, proxy) = fixture().await;
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: app.example\r\n")
        .await
        .expect("first bytes");
    // One header line every 200 ms, never the blank line; the head read
    // timeout is 1 s. Give up after 10 s (40 lines at most).
    let mut closed = false;
    for i in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if stream
            .write_all(format!("x-slow-{i}: a\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        // Closed by the proxy? (A 408 may come first.)
        let reply = read_until_close(&mut stream, Duration::from_millis(1)).await;
        if reply.closed {
            closed = true;
            if let Some(status) = reply.status() {
                assert_eq!(
                    status,
                    408,
                    "only a 408 may precede the close: {:?}",
                    reply.text()
                );
            }
            break;
        }
        if !reply.bytes.is_empty() {
            let reply_rest = read_until_close(&mut stream, Duration::from_secs(2)).await;
            let status = support::client::status_of(&reply.bytes);
            assert_eq!(
                status,
                Some(408),
                "unexpected answer to a slow head: {:?}",
                reply.text()
            );
            assert!(reply_rest.closed, "the connection must close after the 408");
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a client that never finishes its head must be disconnected"
    );
    assert_eq!(up.total(), 0);
    still_serves(&proxy).await;
}

/// A connection that opens and sends nothing at all is closed too.
#[tokio::test]
async fn silent_connection_is_closed() {
    let (_up, proxy) = fixture().await;
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    let reply = read_until_close(&mut stream, Duration::from_secs(10)).await;
    assert!(
        reply.closed,
        "an idle new connection must not be kept forever"
    );
    still_serves(&proxy).await;
}

/// A connection that sends the first bytes of the HTTP/2 preface and stalls
/// (so the server cannot yet tell HTTP/1.1 from HTTP/2) is closed too.
#[tokio::test]
async fn stalled_h2_preface_connection_is_closed() {
    let (_up, proxy) = fixture().await;
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n")
        .await
        .expect("partial preface");
    let reply = read_until_close(&mut stream, Duration::from_secs(10)).await;
    assert!(
        reply.closed,
        "a connection stalled in the middle of the h2 preface must not be kept forever"
    );
    still_serves(&proxy).await;
}

#[tokio::test]
async fn malformed_requests_get_400_and_are_closed() {
    let (up, proxy) = fixture().await;
    let cases: [&[u8]; 5] = [
        b"this is not http\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app.example\r\nBad Header Name: x\r\n\r\n",
        b"GET /\x01\x02 HTTP/1.1\r\nHost: app.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: app.example\r\nContent-Length: abc\r\n\r\n",
    ];
    for case in cases {
        let reply = raw_exchange(proxy.addr(), case, Duration::from_secs(5)).await;
        assert_eq!(
            reply.status(),
            Some(400),
            "{:?} -> {:?}",
            String::from_utf8_lossy(case),
            reply.text()
        );
        assert!(
            reply.closed,
            "the connection must be closed after a 400 for {:?}",
            String::from_utf8_lossy(case)
        );
    }
    assert_eq!(up.total(), 0, "a malformed request is not forwarded");
    still_serves(&proxy).await;
}

/// After a good request on a keep-alive connection, a malformed one on the
/// same connection still gets a 400 and the close.
#[tokio::test]
async fn malformed_request_after_a_good_one_on_the_same_connection() {
    let (up, proxy) = fixture().await;
    let reply = raw_exchange(
        proxy.addr(),
        b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\nNONSENSE\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let text = reply.text();
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    let second = text.find("HTTP/1.1 400");
    assert!(
        second.is_some(),
        "the second, malformed request gets a 400: {text:?}"
    );
    assert!(reply.closed, "and the connection is closed");
    assert_eq!(up.total(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_are_all_served() {
    const CONNECTIONS: usize = 1_000;
    // Client, proxy (both sides) and upstream share this process: ~4 fds each.
    let limit = rlimit::increase_nofile_limit(16_384).expect("raise RLIMIT_NOFILE");
    assert!(limit >= 5_000, "RLIMIT_NOFILE only {limit}");

    // The default head timeout: the first connections wait while the others open.
    let (up, proxy) = fixture_with("10s").await;
    // Open every connection first, so that all are open at once.
    let mut senders = Vec::with_capacity(CONNECTIONS);
    within(
        Duration::from_secs(30),
        "opening 1,000 connections",
        async {
            for _ in 0..CONNECTIONS {
                senders.push(http1_connect(proxy.addr()).await);
            }
        },
    )
    .await;

    let url = proxy.url("/delay/200");
    let mut tasks = Vec::with_capacity(CONNECTIONS);
    for mut sender in senders {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let resp = sender.send_request(get(&url, None)).await?;
            support::client::read_answer(resp).await
        }));
    }
    let mut ok = 0;
    let mut failures = Vec::new();
    within(
        Duration::from_secs(60),
        "1,000 concurrent requests",
        async {
            for task in tasks {
                match task.await.expect("task") {
                    Ok(answer) if answer.status == 200 => ok += 1,
                    Ok(answer) => failures.push(format!("{} {}", answer.status, answer.text())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
        },
    )
    .await;
    assert_eq!(
        ok,
        CONNECTIONS,
        "{} failed, e.g. {:?}",
        failures.len(),
        failures.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(up.total(), CONNECTIONS as u64);
    still_serves(&proxy).await;
}

/// The head timeout runs between requests too: a keep-alive connection
/// that sends nothing after its response is closed, while one whose
/// response takes longer than the timeout (the head is in, the clock stops)
/// is served in full and then kept for the next request.
#[tokio::test]
async fn the_head_timeout_runs_only_between_requests() {
    let (up, proxy) = fixture().await;
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");

    // A response that takes 1.5 s, longer than the 1 s head timeout.
    stream
        .write_all(b"GET /delay/1500 HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .await
        .expect("request");
    let mut reply = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while !reply.ends_with(b"stable") {
        let n = within(Duration::from_secs(5), "the slow answer", async {
            tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await
        })
        .await
        .expect("read");
        assert!(
            n > 0,
            "closed before the slow answer: {:?}",
            String::from_utf8_lossy(&reply)
        );
        reply.extend_from_slice(&buf[..n]);
    }
    assert_eq!(support::client::status_of(&reply), Some(200));

    // A download that streams for longer than the timeout is not cut.
    stream
        .write_all(b"GET /download/1048576 HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .await
        .expect("second request");
    let mut received = 0usize;
    let started = std::time::Instant::now();
    while received < 1024 * 1024 {
        // Read slowly: about 1.6 s for the whole body.
        tokio::time::sleep(Duration::from_millis(25)).await;
        let n = within(Duration::from_secs(5), "a slow read", async {
            tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await
        })
        .await
        .expect("read");
        assert!(
            n > 0,
            "closed after {received} bytes, {:?} in",
            started.elapsed()
        );
        received += n;
    }

    // Then idle: closed after about the head timeout.
    let reply = read_until_close(&mut stream, Duration::from_secs(10)).await;
    assert!(reply.closed, "an idle keep-alive connection must be closed");
    assert!(reply.bytes.len() < 1024, "nothing but the rest of the body");
    assert_eq!(up.count("/delay/1500"), 1);
    still_serves(&proxy).await;
}
