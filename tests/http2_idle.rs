//! An HTTP/2 client that stops sending requests is closed like an idle
//! HTTP/1.1 one, after `limits.header_read_timeout` with no stream open: veer
//! sends GOAWAY (so the client opens a new connection for its next request)
//! and frees the connection's `max_connections` slot. A stream still open
//! keeps the connection, however long it takes.
//!
//! An idle connection gives its read, write and header-decoding buffers
//! back and takes them again when bytes arrive, and one with no stream open
//! is parked (its task and its hyper and h2 state dropped, a compact record
//! kept) after 50 ms, as the pauses here are; what must outlive the idle
//! time does: the client's HPACK table in veer's decoder, the flow-control
//! windows, and a frame half received.
//!
//! A real HTTP/2 client (the `h2` crate) on loopback, and raw frames where
//! the test must say exactly what is on the wire; no timing is asserted,
//! every wait is bounded.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use http::Request;
use support::config::{service, ConfigBuilder};
use support::harness::TestProxy;
use support::upstream::Upstream;
use support::within;
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(20);

async fn proxy(upstream: &Upstream) -> TestProxy {
    let yaml = ConfigBuilder::new()
        .limit("header_read_timeout", "300ms")
        .limit("max_connections", "1")
        .service(service("web").version("stable", &[upstream.addr()], 1))
        .yaml();
    TestProxy::start(&yaml).await
}

/// Sends one GET on `client` and reads its answer to the end; the status.
async fn get(client: &mut h2::client::SendRequest<bytes::Bytes>, path: &str) -> u16 {
    let request = Request::get(format!("http://web{path}"))
        .body(())
        .expect("request");
    let (response, _) = client.send_request(request, true).expect("stream opened");
    let response = within(LIMIT, "response", response).await.expect("answer");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(chunk) = within(LIMIT, "body", body.data()).await {
        let chunk = chunk.expect("body data");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_client_is_sent_goaway_and_its_slot_freed() {
    let upstream = Upstream::start("stable").await;
    let proxy = proxy(&upstream).await;

    let stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");

    // A stream open longer than the idle limit keeps the connection.
    assert_eq!(get(&mut client, "/delay/900").await, 200);
    assert_eq!(get(&mut client, "/").await, 200);

    // Then nothing: veer ends the connection with GOAWAY (NO_ERROR), which
    // the client's connection reports as a clean end, not a broken one.
    let ended = within(LIMIT, "the idle connection to be closed", connection)
        .await
        .expect("connection task");
    assert!(
        ended.is_ok(),
        "a clean GOAWAY, not a reset or a dropped socket: {ended:?}"
    );
    assert!(
        client.clone().ready().await.is_err(),
        "no new stream on a connection that was sent GOAWAY"
    );

    // The slot is free: with max_connections 1, a new client is served.
    let stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    assert_eq!(get(&mut client, "/").await, 200);
    proxy.shutdown().await;
}

/// A proxy that leaves idle HTTP/2 connections open for the test's pauses.
async fn patient_proxy(upstream: &Upstream) -> TestProxy {
    let yaml = ConfigBuilder::new()
        .limit("header_read_timeout", "60s")
        .service(service("web").version("stable", &[upstream.addr()], 1))
        .yaml();
    TestProxy::start(&yaml).await
}

/// Long enough for veer to see its read block and give its buffers back.
const PAUSE: Duration = Duration::from_millis(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_idle_then_busy_keeps_its_header_tables() {
    let upstream = Upstream::start("stable").await;
    let proxy = patient_proxy(&upstream).await;
    let stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");

    // The client's encoder indexes `x-tenant` (Huffman-coded) on its first
    // use and sends only its index after; veer's encoder does the same with
    // the answer's `x-upstream`. Each round follows an idle pause.
    let tenant = "a-tenant-with-a-name-long-enough-to-be-worth-indexing";
    for round in 0..4 {
        tokio::time::sleep(PAUSE).await;
        client = client.ready().await.expect("ready after the pause");
        let request = Request::get("http://web/headers")
            .header("x-tenant", tenant)
            .header("x-round", round.to_string())
            .body(())
            .expect("request");
        let (response, _) = client.send_request(request, true).expect("stream opened");
        let response = within(LIMIT, "response", response).await.expect("answer");
        assert_eq!(response.status(), 200, "round {round}");
        assert_eq!(
            response.headers().get("x-upstream").map(|v| v.as_bytes()),
            Some(&b"stable"[..]),
            "round {round}: the answer's headers as veer indexed them"
        );
        let mut body = response.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = within(LIMIT, "body", body.data()).await {
            let chunk = chunk.expect("body data");
            let _ = body.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.contains(&format!("\"x-tenant\":[\"{tenant}\"]")),
            "round {round}: the upstream saw {got}"
        );
        assert!(
            got.contains(&format!("\"x-round\":[\"{round}\"]")),
            "round {round}: the upstream saw {got}"
        );
    }
    proxy.shutdown().await;
}

/// One HTTP/2 frame: its 9-byte head, then `payload`.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a small frame");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A raw HTTP/2 client's socket to `addr`, reads bounded by `LIMIT`, past
/// the preface and its own (empty) SETTINGS; veer's SETTINGS is the caller's
/// to acknowledge.
fn raw_client(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let mut socket = std::net::TcpStream::connect(addr).expect("connect");
    socket.set_read_timeout(Some(LIMIT)).expect("read timeout");
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .expect("preface");
    socket
        .write_all(&frame(SETTINGS, 0, 0, &[]))
        .expect("SETTINGS");
    socket
}

const HEADERS: u8 = 1;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

/// Reads frames until the HEADERS of `stream`; its header block.
fn response_headers(socket: &mut std::net::TcpStream, stream: u32) -> Vec<u8> {
    loop {
        let (kind, _, id, payload) = read_frame(socket);
        assert_ne!(kind, GOAWAY, "veer sent GOAWAY: {payload:?}");
        assert_ne!(kind, RST_STREAM, "veer reset stream {id}: {payload:?}");
        if kind == HEADERS && id == stream {
            return payload;
        }
    }
}

/// The first field of a response's header block, past any dynamic table
/// size updates in front of it: a connection parked while idle and resumed
/// starts its next block with updates that empty the client's table (its
/// encoder's table is not kept while parked).
fn first_field(block: &[u8]) -> Option<u8> {
    let mut rest = block;
    // `001xxxxx`: a size update, its value in 5 bits, then more bytes
    // while their high bit is set when the 5 bits are all ones.
    while let Some((&first, tail)) = rest.split_first() {
        if first & 0xe0 != 0x20 {
            return Some(first);
        }
        rest = tail;
        if first & 0x1f == 0x1f {
            let more = rest.iter().position(|b| b & 0x80 == 0)?;
            rest = &rest[more + 1..];
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_split_across_idle_pauses_is_decoded_whole() {
    let upstream = Upstream::start("stable").await;
    let proxy = patient_proxy(&upstream).await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        let mut socket = raw_client(addr);
        socket
            .write_all(&frame(SETTINGS, ACK, 0, &[]))
            .expect("SETTINGS ACK");

        // GET http://web/ in a HEADERS frame sent in two parts with pauses
        // between, then its CONTINUATION: `:authority: web`, literal with
        // incremental indexing, goes into veer's decoding table.
        let headers = frame(HEADERS, END_STREAM, 1, &[0x82, 0x86, 0x84]);
        let (first, rest) = headers.split_at(10);
        socket.write_all(first).expect("half a frame");
        std::thread::sleep(PAUSE);
        socket.write_all(rest).expect("the rest of the frame");
        std::thread::sleep(PAUSE);
        let authority = [0x41, 3, b'w', b'e', b'b'];
        socket
            .write_all(&frame(CONTINUATION, END_HEADERS, 1, &authority))
            .expect("CONTINUATION");
        // `:status: 200` is the static table's entry 8.
        assert_eq!(first_field(&response_headers(&mut socket, 1)), Some(0x88));

        // After a pause, a request naming its authority by the index the
        // first one gave it (62, the first dynamic entry).
        std::thread::sleep(PAUSE);
        let indexed = frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            3,
            &[0x82, 0x86, 0x84, 0xbe],
        );
        socket.write_all(&indexed).expect("second request");
        assert_eq!(first_field(&response_headers(&mut socket, 3)), Some(0x88));
    })
    .await
    .expect("raw client");
    assert_eq!(upstream.count("/"), 2);
    proxy.shutdown().await;
}

/// Sends `body` to `path` on `client` and reads the answer whole: its
/// status and body.
async fn exchange(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    path: &str,
    body: bytes::Bytes,
) -> (u16, Vec<u8>) {
    let request = Request::post(format!("http://web{path}"))
        .body(())
        .expect("request");
    let (response, mut send) = client
        .send_request(request, body.is_empty())
        .expect("stream opened");
    if !body.is_empty() {
        // Flow control: the body goes as the window opens.
        let mut rest = body;
        while !rest.is_empty() {
            send.reserve_capacity(rest.len());
            let room = within(
                LIMIT,
                "send window",
                std::future::poll_fn(|cx| send.poll_capacity(cx)),
            )
            .await
            .expect("window")
            .expect("capacity");
            let chunk = rest.split_to(room.min(rest.len()));
            send.send_data(chunk, rest.is_empty()).expect("send body");
        }
    }
    let response = within(LIMIT, "response", response).await.expect("answer");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = within(LIMIT, "body", body.data()).await {
        let chunk = chunk.expect("body data");
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    (status, got)
}

/// Frames larger than the pooled buffers (a 100 KiB upload read in 16 KiB
/// DATA frames, a 300 KiB download written through the write buffer) grow
/// them past what the pool keeps; each burst, and each after an idle pause,
/// is carried whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_before_and_after_idle_pauses_arrive_whole() {
    let upstream = Upstream::start("stable").await;
    let proxy = patient_proxy(&upstream).await;
    let stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let upload = bytes::Bytes::from(vec![b'u'; 100 * 1024]);
    for round in 0..3 {
        tokio::time::sleep(PAUSE).await;
        client = client.ready().await.expect("ready after the pause");
        let (status, got) = exchange(&mut client, "/sink", upload.clone()).await;
        assert_eq!(status, 200, "round {round}");
        assert_eq!(
            got, b"102400",
            "round {round}: the upstream's count of the upload"
        );
        client = client.ready().await.expect("ready");
        let (status, got) = exchange(&mut client, "/download/300000", bytes::Bytes::new()).await;
        assert_eq!(status, 200, "round {round}");
        assert_eq!(got.len(), 300_000, "round {round}");
        assert!(
            got.iter().all(|&b| b == b'x'),
            "round {round}: the download's bytes"
        );
    }
    proxy.shutdown().await;
}

/// A connected h2 client whose connection task reports how it ended.
struct Client {
    send: h2::client::SendRequest<bytes::Bytes>,
    ping: Option<h2::PingPong>,
    ended: tokio::task::JoinHandle<Result<(), h2::Error>>,
}

async fn client(addr: std::net::SocketAddr) -> Client {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (send, mut connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    let ping = connection.ping_pong();
    Client {
        send,
        ping,
        ended: tokio::spawn(connection),
    }
}

/// A proxy that keeps idle connections for a minute and serves one client
/// connection at a time.
async fn single_patient_proxy(upstream: &Upstream) -> TestProxy {
    let yaml = ConfigBuilder::new()
        .limit("header_read_timeout", "60s")
        .limit("max_connections", "1")
        .service(service("web").version("stable", &[upstream.addr()], 1))
        .yaml();
    TestProxy::start(&yaml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_while_parked_is_answered_and_the_connection_serves_on() {
    let upstream = Upstream::start("stable").await;
    let proxy = patient_proxy(&upstream).await;
    let mut client = client(proxy.addr()).await;
    let mut send = client.send.clone().ready().await.expect("ready");
    assert_eq!(get(&mut send, "/").await, 200);
    // Parked in the pause; the PING wakes it and is answered.
    tokio::time::sleep(PAUSE).await;
    let mut ping = client.ping.take().expect("the ping handle");
    within(LIMIT, "a PONG", ping.ping(h2::Ping::opaque()))
        .await
        .expect("the PONG");
    tokio::time::sleep(PAUSE).await;
    let mut send = client.send.clone().ready().await.expect("ready");
    assert_eq!(get(&mut send, "/").await, 200);
    assert_eq!(upstream.count("/"), 2);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_parked_frees_its_slot() {
    let upstream = Upstream::start("stable").await;
    let proxy = single_patient_proxy(&upstream).await;
    let first = client(proxy.addr()).await;
    let mut send = first.send.clone().ready().await.expect("ready");
    assert_eq!(get(&mut send, "/").await, 200);
    tokio::time::sleep(PAUSE).await;
    // The client sends GOAWAY and closes while parked: veer sees the socket
    // readable, reads the GOAWAY and the end, and frees the one slot well
    // before the minute's idle limit.
    drop((send, first.send, first.ping));
    let _ = within(LIMIT, "the client's connection to end", first.ended).await;
    let second = client(proxy.addr()).await;
    let mut send = within(LIMIT, "a slot for the next client", second.send.ready())
        .await
        .expect("ready");
    assert_eq!(get(&mut send, "/").await, 200);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_sends_goaway_to_parked_http2_connections() {
    let upstream = Upstream::start("stable").await;
    let proxy = patient_proxy(&upstream).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = client(proxy.addr()).await;
        let mut send = client.send.clone().ready().await.expect("ready");
        assert_eq!(get(&mut send, "/").await, 200);
        clients.push(client);
    }
    tokio::time::sleep(PAUSE).await;
    within(LIMIT, "the drain", proxy.shutdown()).await;
    for client in clients {
        // GOAWAY (NO_ERROR) and a close: a clean end for the client, not a
        // dropped socket.
        let ended = within(LIMIT, "the parked connection to end", client.ended)
            .await
            .expect("connection task");
        assert!(
            ended.is_ok(),
            "a clean GOAWAY, not a reset or a dropped socket: {ended:?}"
        );
    }
}

/// A request sent right after the GOAWAY that closes a parked connection
/// (the client had not read it yet) is served by the proxy, not refused: a
/// GOAWAY's first round names no last stream, so the stream is accepted, and
/// the client would not retry a refusal it got as an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_racing_the_goaway_of_a_parked_connection_is_served() {
    let upstream = Upstream::start("stable").await;
    let yaml = ConfigBuilder::new()
        .limit("header_read_timeout", "1s")
        .service(service("web").version("stable", &[upstream.addr()], 1))
        .yaml();
    let proxy = TestProxy::start(&yaml).await;
    let addr = proxy.addr();
    let status = tokio::task::spawn_blocking(move || {
        let mut socket = raw_client(addr);
        // veer's SETTINGS acknowledged (so the idle connection can park),
        // then nothing until veer, past the idle limit, sends GOAWAY.
        loop {
            let (kind, flags, _, _) = read_frame(&mut socket);
            if kind == SETTINGS && flags & ACK == 0 {
                socket
                    .write_all(&frame(SETTINGS, ACK, 0, &[]))
                    .expect("settings ack");
            }
            if kind == GOAWAY {
                break;
            }
        }
        // GET http://web/ on stream 1: :method GET, :scheme http, :path /
        // from the static table, :authority a literal.
        let block = [0x82, 0x86, 0x84, 0x01, 0x03, b'w', b'e', b'b'];
        socket
            .write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block))
            .expect("a request after the GOAWAY");
        loop {
            let (kind, _, _, payload) = read_frame(&mut socket);
            assert_ne!(kind, RST_STREAM, "veer reset the stream: {payload:?}");
            if kind == HEADERS {
                return first_field(&payload);
            }
        }
    })
    .await
    .expect("the raw client");
    // 0x88: `:status 200` from the static table (503 has no entry there).
    assert_eq!(status, Some(0x88), "the racing request was not served");
    proxy.shutdown().await;
}

const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const RST_STREAM: u8 = 3;
const ACK: u8 = 1;

/// One frame from veer: its type, flags, stream and payload.
fn read_frame(socket: &mut std::net::TcpStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    socket
        .read_exact(&mut head)
        .expect("a frame head from veer");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    socket
        .read_exact(&mut payload)
        .expect("a frame payload from veer");
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    (head[3], head[4], stream, payload)
}

/// Parked connections woken by one write each, all at once.
const MANY: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_parked_http2_connections_woken_at_once_are_all_served() {
    let upstream = Upstream::start("stable").await;
    let proxy = patient_proxy(&upstream).await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        let mut sockets: Vec<std::net::TcpStream> = (0..MANY)
            .map(|_| {
                let mut socket = raw_client(addr);
                socket
                    .write_all(&frame(SETTINGS, ACK, 0, &[]))
                    .expect("SETTINGS ACK");
                socket
            })
            .collect();
        // Parked, each of them, in the pause.
        std::thread::sleep(PAUSE);
        let request = frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &[0x82, 0x86, 0x84, 0x41, 3, b'w', b'e', b'b'],
        );
        for socket in &mut sockets {
            socket.write_all(&request).expect("a request");
        }
        for socket in &mut sockets {
            assert_eq!(first_field(&response_headers(socket, 1)), Some(0x88));
        }
    })
    .await
    .expect("clients");
    assert_eq!(upstream.count("/"), MANY as u64);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_over_tls_parks_and_resumes() {
    let upstream = Upstream::start("stable").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = support::tls::Ca::new("veer test root");
    let (cert, key) = ca.leaf(&["app.example"]).write(dir.path(), "server");
    let yaml = format!(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n    tls: {{ cert: \"{}\", key: \"{}\" }}\nlimits:\n  header_read_timeout: 60s\nservices:\n  - name: web\n    versions:\n      - {{ name: stable, revision: \"1\", endpoints: [\"{}\"], weight: 1 }}\n",
        cert.display(),
        key.display(),
        upstream.addr()
    );
    let proxy = TestProxy::start(&yaml).await;
    let config = support::tls::client_config(&[&ca], &["h2"], None);
    let tls = within(
        LIMIT,
        "TLS handshake",
        support::tls::connect(proxy.addr(), "app.example", config),
    )
    .await
    .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, connection) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(connection);
    // Each request after a pause long enough to park the connection; the
    // same header, indexed by the client the first time, referred to after.
    for round in 0..3 {
        tokio::time::sleep(PAUSE).await;
        let mut send = send.clone().ready().await.expect("ready");
        let request = Request::get("http://app.example/headers")
            .header(
                "x-tenant",
                "a-tenant-with-a-name-long-enough-to-be-worth-indexing",
            )
            .body(())
            .expect("request");
        let (response, _) = send.send_request(request, true).expect("stream opened");
        let response = within(LIMIT, "response", response).await.expect("answer");
        assert_eq!(response.status(), 200, "round {round}");
        let mut body = response.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = within(LIMIT, "body", body.data()).await {
            let chunk = chunk.expect("body data");
            let _ = body.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        assert!(
            String::from_utf8_lossy(&got).contains("a-tenant-with-a-name"),
            "round {round}: the upstream saw the header"
        );
    }
    proxy.shutdown().await;
}
