//! An HTTP/2 connection's streams run inside the connection's own task
//! (`server/listeners/streams.rs`): they must still run side by side, a
//! slow stream holding up none of the others, and streams whose HEADERS
//! arrive together in one read must all be answered.
//!
//! A real HTTP/2 client (the `h2` crate) and, where the test must say what
//! arrives in one read, raw frames; loopback only, every wait bounded, no
//! timing asserted.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use http::Request;
use support::config::{service, ConfigBuilder};
use support::harness::TestProxy;
use support::upstream::Upstream;
use support::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(20);

async fn proxy(upstream: &Upstream) -> TestProxy {
    let yaml = ConfigBuilder::new()
        .service(service("web").version("stable", &[upstream.addr()], 1))
        .yaml();
    TestProxy::start(&yaml).await
}

/// Sends one GET on `client`; its status and body.
async fn get(mut client: h2::client::SendRequest<bytes::Bytes>, path: &str) -> (u16, String) {
    let request = Request::get(format!("http://web{path}"))
        .body(())
        .expect("request");
    client = client.ready().await.expect("room for a stream");
    let (response, _) = client.send_request(request, true).expect("stream opened");
    let response = within(LIMIT, "response", response).await.expect("answer");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = within(LIMIT, "body", body.data()).await {
        let chunk = chunk.expect("body data");
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (status, String::from_utf8(text).expect("utf-8 body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_holds_up_none_of_the_others_on_its_connection() {
    let upstream = Upstream::start("stable").await;
    let proxy = proxy(&upstream).await;
    let stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(connection);

    // One stream the upstream answers only after a long while...
    let slow = tokio::spawn(get(client.clone(), "/delay/3000"));
    // ... while 40 others on the same connection come and go.
    let quick: Vec<_> = (0..40)
        .map(|_| tokio::spawn(get(client.clone(), "/")))
        .collect();
    for answer in quick {
        let (status, body) = within(LIMIT, "a quick stream", answer)
            .await
            .expect("no panic");
        assert_eq!((status, body.as_str()), (200, "stable"));
    }
    assert!(
        !slow.is_finished(),
        "the slow stream was still waiting while the quick ones were answered"
    );
    let (status, _) = within(LIMIT, "the slow stream", slow)
        .await
        .expect("no panic");
    assert_eq!(status, 200);
    proxy.shutdown().await;
}

/// A HEADERS frame (END_STREAM | END_HEADERS) for `GET http://web/` on
/// stream `id`, its header block in HPACK without the dynamic table.
fn get_headers(id: u32) -> Vec<u8> {
    // :method GET, :scheme http, :path / (static table), then :authority
    // as a literal not indexed, with the static table's name.
    let block = [0x82, 0x86, 0x84, 0x01, 0x03, b'w', b'e', b'b'];
    let mut frame = Vec::new();
    frame.extend_from_slice(&(block.len() as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(&[0x1, 0x5]);
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&block);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_arrive_in_one_read_are_all_answered() {
    let upstream = Upstream::start("stable").await;
    let proxy = proxy(&upstream).await;
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");

    // The preface, empty SETTINGS and five requests, written at once.
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    let ids = [1u32, 3, 5, 7, 9];
    for id in ids {
        bytes.extend_from_slice(&get_headers(id));
    }
    stream.write_all(&bytes).await.expect("write");

    // Read frames until every stream has ended (END_STREAM on its HEADERS
    // or DATA), noting which streams had a HEADERS frame.
    let mut answered = BTreeSet::new();
    let mut ended = BTreeSet::new();
    while ended.len() < ids.len() {
        let mut head = [0u8; 9];
        within(LIMIT, "a frame", stream.read_exact(&mut head))
            .await
            .expect("frame head");
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; length];
        within(LIMIT, "a frame's payload", stream.read_exact(&mut payload))
            .await
            .expect("frame payload");
        assert_ne!(kind, 0x3, "stream {id} was reset");
        assert_ne!(kind, 0x7, "the connection was sent GOAWAY");
        if kind == 0x1 {
            answered.insert(id);
        }
        if (kind == 0x0 || kind == 0x1) && flags & 0x1 != 0 {
            ended.insert(id);
        }
    }
    assert_eq!(answered, ids.into_iter().collect::<BTreeSet<_>>());
    // Closed first: the drain's GOAWAY waits for a PING answer this client
    // would never send.
    drop(stream);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_with_a_stream_in_flight_leaves_no_connection_open() {
    let upstream = Upstream::start("stable").await;
    let yaml = ConfigBuilder::new()
        .service(service("web").version("stable", &[upstream.addr()], 1))
        .yaml();
    let (running, addr, admin) = support::harness::start_with_admin(&yaml, None).await;
    let metrics = support::client::http1_client();
    let open = |scrape: &prometheus_parse::Scrape| {
        support::metrics::sum(
            scrape,
            "veer_listener_connections",
            &[("listener", "public")],
        )
    };

    let stream = TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let request = Request::get("http://web/delay/1000")
        .body(())
        .expect("request");
    let mut client = client.ready().await.expect("ready");
    let (response, _) = client.send_request(request, true).expect("stream opened");
    // The stream is in flight once the upstream has it.
    within(LIMIT, "the upstream to get the request", async {
        while upstream.total() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    assert_eq!(open(&support::metrics::scrape(&metrics, admin).await), 1.0);

    // The client vanishes: its socket closes with the stream unanswered.
    connection.abort();
    drop((client, response));
    // The connection's task, its streams inside it, ends all the same.
    within(LIMIT, "no client connection left open", async {
        while open(&support::metrics::scrape(&metrics, admin).await) != 0.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(running.shutdown().await, "a clean drain");
}
