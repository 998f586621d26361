//! HTTP/1.1 clients that pipeline: several requests written before the first
//! answer is read. Every request is answered, in order, and an answer is
//! never held back waiting for the rest of a request still arriving (answers
//! to requests that arrived together may leave in one write).

mod support;

use std::time::Duration;

use support::client::{raw_exchange, read_until_close};
use support::config::{service, ConfigBuilder};
use support::harness::TestProxy;
use support::upstream::Upstream;
use support::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn fixture() -> (Upstream, TestProxy) {
    let up = Upstream::start("stable").await;
    let yaml = ConfigBuilder::new()
        .service(service("web").version("stable", &[up.addr()], 1))
        .yaml();
    (up, TestProxy::start(&yaml).await)
}

fn request(path: &str, close: bool) -> String {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: app.example\r\n{connection}\r\n")
}

/// The status codes of every response head in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| text.get(at + 9..at + 12)?.parse().ok())
        .collect()
}

#[tokio::test]
async fn requests_written_together_are_all_answered_in_order() {
    let (up, proxy) = fixture().await;
    let mut batch = String::new();
    for code in 201..=208 {
        batch.push_str(&request(&format!("/status/{code}"), code == 208));
    }
    let reply = raw_exchange(proxy.addr(), batch.as_bytes(), Duration::from_secs(10)).await;
    assert!(
        reply.closed,
        "the last request asked to close: {}",
        reply.text()
    );
    assert_eq!(
        statuses(&reply.text()),
        (201..=208).collect::<Vec<u16>>(),
        "every pipelined request answered once, in the order sent: {}",
        reply.text()
    );
    assert_eq!(up.total(), 8);
}

#[tokio::test]
async fn pipelined_requests_to_a_slow_upstream_are_all_answered() {
    let (up, proxy) = fixture().await;
    up.set_delay(Duration::from_millis(50));
    let batch = [
        request("/status/201", false),
        request("/status/202", false),
        request("/status/203", true),
    ]
    .concat();
    let reply = raw_exchange(proxy.addr(), batch.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(
        statuses(&reply.text()),
        vec![201, 202, 203],
        "{}",
        reply.text()
    );
}

#[tokio::test]
async fn an_answer_is_not_held_back_by_the_next_request_arriving_in_parts() {
    let (_up, proxy) = fixture().await;
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let second = request("/status/202", true);
    let (head, rest) = second.split_at(10);
    // The first request whole and the start of the second: the first's
    // answer must come now, not once the second is complete.
    let mut sent = request("/status/201", false);
    sent.push_str(head);
    stream.write_all(sent.as_bytes()).await.expect("write");
    let mut first = Vec::new();
    within(
        Duration::from_secs(5),
        "the first answer, before the second request is complete",
        async {
            let mut chunk = [0u8; 4096];
            while !String::from_utf8_lossy(&first).contains("\r\n\r\nstable") {
                let n = stream.read(&mut chunk).await.expect("read");
                assert!(
                    n > 0,
                    "the proxy closed: {}",
                    String::from_utf8_lossy(&first)
                );
                first.extend_from_slice(&chunk[..n]);
            }
        },
    )
    .await;
    assert_eq!(statuses(&String::from_utf8_lossy(&first)), vec![201]);
    stream
        .write_all(rest.as_bytes())
        .await
        .expect("write the rest");
    let reply = read_until_close(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(statuses(&reply.text()), vec![202], "{}", reply.text());
}
