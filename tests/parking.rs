//! Idle HTTP/1.1 connections are parked as bare sockets between requests
//! (hyper's state dropped, rebuilt when bytes arrive). Whatever the client
//! does around the park point must read as one ordinary connection: many
//! idle gaps, a pipelined request split across one, a partial head, an
//! upgrade after one, a drain or the idle limit while parked, TLS.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::config::{service, ConfigBuilder};
use support::harness::TestProxy;
use support::upstream::Upstream;
use support::within;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(20);
/// Long enough for the connection to be parked: it parks once it has had
/// nothing to do for 50 ms.
const GAP: Duration = Duration::from_millis(120);

async fn fixture(header_read_timeout: &str) -> (Upstream, TestProxy) {
    let up = Upstream::start("stable").await;
    let yaml = ConfigBuilder::new()
        .limit("header_read_timeout", header_read_timeout)
        .service(
            service("web")
                .hosts(&["app.example"])
                .version("stable", &[up.addr()], 1),
        )
        .yaml();
    (up, TestProxy::start(&yaml).await)
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: app.example\r\n\r\n").into_bytes()
}

/// One response off `stream`: its status and body (`Content-Length`).
async fn response<S: AsyncRead + Unpin>(stream: &mut S) -> (u16, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .expect("a Content-Length");
            if got.len() >= end + 4 + length {
                let status = text[9..12].parse().expect("a status code");
                let body = text[end + 4..end + 4 + length].to_string();
                return (status, body);
            }
        }
        let n = within(LIMIT, "a response", stream.read(&mut buf))
            .await
            .expect("read");
        assert!(n > 0, "veer closed the connection; got {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, request: &[u8]) {
    stream.write_all(request).await.expect("write");
    assert_eq!(response(stream).await, (200, "stable".to_string()));
}

/// EOF on `stream` within `LIMIT`: veer closed it.
async fn closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 256];
    let n = within(LIMIT, "veer closing the connection", stream.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "expected EOF, got {:?}", &buf[..n]);
}

#[tokio::test]
async fn a_connection_idle_between_many_requests_serves_them_all() {
    let (up, proxy) = fixture("10s").await;
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    for i in 0..30 {
        exchange(&mut stream, &get(&format!("/cycle/{i}"))).await;
        if i % 3 == 0 {
            tokio::time::sleep(GAP).await;
        }
    }
    assert_eq!(up.total(), 30);
    assert_eq!(up.connections(), 1, "veer pooled its upstream connection");
}

#[tokio::test]
async fn a_pipelined_request_split_across_the_park_point_is_read_whole() {
    let (up, proxy) = fixture("10s").await;
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    let second = get("/second");
    let (head, tail) = second.split_at(20);
    let mut first = get("/first");
    first.extend_from_slice(head);
    stream.write_all(&first).await.expect("write");
    assert_eq!(response(&mut stream).await, (200, "stable".to_string()));
    // The connection parks holding the second head's first 20 bytes.
    tokio::time::sleep(GAP).await;
    exchange(&mut stream, tail).await;
    assert_eq!(up.count("/first"), 1);
    assert_eq!(up.count("/second"), 1);
}

#[tokio::test]
async fn a_head_sent_in_pieces_with_gaps_is_read_whole() {
    let (up, proxy) = fixture("10s").await;
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    let request = get("/pieces");
    for piece in request.chunks(7) {
        stream.write_all(piece).await.expect("write");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(response(&mut stream).await, (200, "stable".to_string()));
    // And again after an idle gap, a head cut at the park point.
    tokio::time::sleep(GAP).await;
    let (head, tail) = request.split_at(5);
    stream.write_all(head).await.expect("write");
    tokio::time::sleep(GAP).await;
    exchange(&mut stream, tail).await;
    assert_eq!(up.count("/pieces"), 2);
}

#[tokio::test]
async fn requests_with_bodies_and_closing_requests_are_served_around_parks() {
    let (up, proxy) = fixture("10s").await;
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    let post = b"POST /sink HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\n\r\nhello";
    stream.write_all(post).await.expect("write");
    let (status, body) = response(&mut stream).await;
    assert_eq!((status, body.as_str()), (200, "5"));
    tokio::time::sleep(GAP).await;
    exchange(&mut stream, &get("/after-body")).await;
    tokio::time::sleep(GAP).await;
    // A chunked body cut by a gap in its middle.
    stream
        .write_all(b"POST /sink HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        .await
        .expect("write");
    tokio::time::sleep(GAP).await;
    stream.write_all(b"0\r\n\r\n").await.expect("write");
    let (status, body) = response(&mut stream).await;
    assert_eq!((status, body.as_str()), (200, "3"));
    tokio::time::sleep(GAP).await;
    stream
        .write_all(b"GET /last HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(response(&mut stream).await, (200, "stable".to_string()));
    closed(&mut stream).await;
    assert_eq!(up.count("/last"), 1);
}

#[tokio::test]
async fn a_websocket_upgrade_after_an_idle_gap_works() {
    let (_up, proxy) = fixture("10s").await;
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    exchange(&mut stream, &get("/before")).await;
    tokio::time::sleep(GAP).await;
    let (mut ws, answer) = within(
        LIMIT,
        "WebSocket handshake on a parked connection",
        tokio_tungstenite::client_async("ws://app.example/ws", stream),
    )
    .await
    .expect("WebSocket handshake");
    assert_eq!(answer.status(), 101);
    // The tunnel outlives the idle limit's checks: it is no idle connection.
    tokio::time::sleep(GAP).await;
    ws.send(Message::text("after a park")).await.expect("send");
    let back = within(LIMIT, "ws echo", ws.next())
        .await
        .expect("ws open")
        .expect("ws frame");
    assert_eq!(back, Message::text("after a park"));
}

#[tokio::test]
async fn a_parked_connection_is_closed_at_the_idle_limit() {
    let (_up, proxy) = fixture("300ms").await;
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    exchange(&mut stream, &get("/")).await;
    closed(&mut stream).await;
    // A parked partial head is not a request: the limit closes it too.
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    exchange(&mut stream, &get("/")).await;
    stream.write_all(b"GET / HT").await.expect("write");
    closed(&mut stream).await;
}

#[tokio::test]
async fn the_drain_closes_parked_connections_at_once() {
    let (_up, proxy) = fixture("60s").await;
    let mut parked = Vec::new();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        exchange(&mut stream, &get("/")).await;
        parked.push(stream);
    }
    tokio::time::sleep(GAP).await;
    within(LIMIT, "the drain", proxy.shutdown()).await;
    for stream in &mut parked {
        closed(stream).await;
    }
}

#[tokio::test]
async fn tls_connections_park_and_resume() {
    let up = Upstream::start("stable").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = support::tls::Ca::new("veer test root");
    let (cert, key) = ca.leaf(&["app.example"]).write(dir.path(), "server");
    let yaml = format!(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n    tls: {{ cert: \"{}\", key: \"{}\" }}\nservices:\n  - name: web\n    versions:\n      - {{ name: stable, revision: \"1\", endpoints: [\"{}\"], weight: 1 }}\n",
        cert.display(),
        key.display(),
        up.addr()
    );
    let proxy = TestProxy::start(&yaml).await;
    for alpn in [&["http/1.1"][..], &[][..]] {
        let config = support::tls::client_config(&[&ca], alpn, None);
        let mut stream = within(
            LIMIT,
            "TLS handshake",
            support::tls::connect(proxy.addr(), "app.example", config),
        )
        .await
        .expect("TLS handshake");
        for i in 0..5 {
            exchange(&mut stream, &get(&format!("/tls/{i}"))).await;
            tokio::time::sleep(GAP).await;
        }
    }
    assert_eq!(up.total(), 10);
}

#[tokio::test]
async fn a_connection_silent_after_connecting_is_served_when_it_speaks() {
    let (up, proxy) = fixture("10s").await;
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    // Parked before a byte is read: the protocol is not known yet.
    tokio::time::sleep(GAP).await;
    exchange(&mut stream, &get("/late")).await;
    // An HTTP/2 preface cut at the park point is still told apart.
    let mut h2 = TcpStream::connect(proxy.addr()).await.expect("connect");
    h2.write_all(&H2_HELLO[..10]).await.expect("write");
    tokio::time::sleep(GAP).await;
    h2.write_all(&H2_HELLO[10..]).await.expect("write");
    let mut frame = [0u8; 9];
    within(LIMIT, "the server's SETTINGS", h2.read_exact(&mut frame))
        .await
        .expect("read");
    assert_eq!(frame[3], 4, "a SETTINGS frame: veer took the preface");
    assert_eq!(up.count("/late"), 1);
}

/// The HTTP/2 preface and an empty SETTINGS frame.
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// The `public` listener's open connections, as `/metrics` says.
async fn open_connections(client: &support::client::HttpClient, admin: SocketAddr) -> f64 {
    let scrape = support::metrics::scrape(client, admin).await;
    support::metrics::sum(
        &scrape,
        "veer_listener_connections",
        &[("listener", "public")],
    )
}

/// Waits until `/metrics` counts `want` open connections.
async fn until_open(client: &support::client::HttpClient, admin: SocketAddr, want: f64) {
    within(LIMIT, "the open-connections gauge", async {
        while open_connections(client, admin).await != want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

fn admin_yaml(up: &Upstream) -> String {
    ConfigBuilder::new()
        .limit("header_read_timeout", "60s")
        .service(
            service("web")
                .hosts(&["app.example"])
                .version("stable", &[up.addr()], 1),
        )
        .yaml()
}

#[tokio::test]
async fn a_client_that_closes_while_parked_is_released() {
    let up = Upstream::start("stable").await;
    let (running, proxy, admin) = support::harness::start_with_admin(&admin_yaml(&up), None).await;
    let client = support::client::http1_client();
    let mut served = TcpStream::connect(proxy).await.expect("connect");
    exchange(&mut served, &get("/")).await;
    let silent = TcpStream::connect(proxy).await.expect("connect");
    tokio::time::sleep(GAP).await;
    until_open(&client, admin, 2.0).await;
    drop(served);
    drop(silent);
    // Each closed socket reads EOF in the lot: its slot, permit and place
    // in the gauge are given back long before the 60 s idle limit.
    until_open(&client, admin, 0.0).await;
    assert!(
        within(LIMIT, "the drain", running.shutdown()).await,
        "nothing left to drain"
    );
}

#[tokio::test]
async fn a_thousand_parked_connections_are_drained_at_once_and_counted() {
    const CONNECTIONS: usize = 1_000;
    // Client and proxy share this process: two descriptors a connection.
    let limit = rlimit::increase_nofile_limit(16_384).expect("raise RLIMIT_NOFILE");
    assert!(limit >= 5_000, "RLIMIT_NOFILE only {limit}");
    let up = Upstream::start("stable").await;
    let (running, proxy, admin) = support::harness::start_with_admin(&admin_yaml(&up), None).await;
    let mut parked = Vec::with_capacity(CONNECTIONS);
    within(LIMIT, "1,000 keep-alive exchanges", async {
        for i in 0..CONNECTIONS {
            let mut stream = TcpStream::connect(proxy).await.expect("connect");
            // Half say nothing at all: parked before their first byte.
            if i % 2 == 0 {
                exchange(&mut stream, &get("/")).await;
            }
            parked.push(stream);
        }
    })
    .await;
    tokio::time::sleep(GAP).await;
    let client = support::client::http1_client();
    until_open(&client, admin, CONNECTIONS as f64).await;
    assert!(
        within(LIMIT, "the drain", running.shutdown()).await,
        "every parked connection's permit came back"
    );
    for stream in &mut parked {
        closed(stream).await;
    }
    assert_eq!(up.total(), CONNECTIONS as u64 / 2);
}
