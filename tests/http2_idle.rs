//! An HTTP/2 client that stops sending requests is closed like an idle
//! HTTP/1.1 one, after `limits.header_read_timeout` with no stream open: veer
//! sends GOAWAY (so the client opens a new connection for its next request)
//! and frees the connection's `max_connections` slot. A stream still open
//! keeps the connection, however long it takes.
//!
//! A real HTTP/2 client (the `h2` crate) on loopback; no timing is asserted,
//! every wait is bounded.

mod support;

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
