//! `guard.on_revert`: what happens to a reverted version's long-lived
//! connections. `evict` closes its WebSocket tunnels at once; `drain` leaves
//! them to finish.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::harness::TestProxy;
use support::upstream::Upstream;
use support::within;
use tokio_tungstenite::tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(10);

fn yaml(canary: &Upstream, stable: &Upstream, on_revert: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\n\
         services:\n  - name: web\n    versions:\n\
         \x20     - {{name: stable, revision: '1', endpoints: ['{}'], weight: 0}}\n\
         \x20     - {{name: canary, revision: '2', endpoints: ['{}'], weight: 100}}\n\
         \x20   guard: {{baseline: stable, max_error_rate: 0.5, on_revert: {on_revert}}}\n",
        stable.addr(),
        canary.addr()
    )
}

/// Opens a WebSocket through the proxy to the canary and checks it echoes.
async fn open(proxy: &TestProxy) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    let (mut ws, response) = within(
        LIMIT,
        "handshake",
        tokio_tungstenite::client_async("ws://web/ws", stream),
    )
    .await
    .expect("handshake");
    assert_eq!(
        response
            .headers()
            .get("x-upstream")
            .and_then(|v| v.to_str().ok()),
        Some("canary")
    );
    ws.send(Message::text("before")).await.expect("send");
    let echoed = within(LIMIT, "echo", ws.next())
        .await
        .expect("open")
        .expect("frame");
    assert_eq!(echoed, Message::text("before"));
    ws
}

#[tokio::test]
async fn evict_closes_the_reverted_versions_tunnels() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let proxy = TestProxy::start(&yaml(&canary, &stable, "evict")).await;
    let mut ws = open(&proxy).await;
    proxy.control().rollback("web").await.expect("rollback");
    // The tunnel ends: the next read sees the close (or an error), not an echo.
    let _ = ws.send(Message::text("after")).await;
    let next = within(LIMIT, "the tunnel to close", ws.next()).await;
    assert!(
        !matches!(next, Some(Ok(Message::Text(ref t))) if t.as_str() == "after"),
        "the canary's tunnel must be closed on revert, got {next:?}"
    );
}

#[tokio::test]
async fn drain_leaves_the_reverted_versions_tunnels_open() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let proxy = TestProxy::start(&yaml(&canary, &stable, "drain")).await;
    let mut ws = open(&proxy).await;
    proxy.control().rollback("web").await.expect("rollback");
    ws.send(Message::text("after"))
        .await
        .expect("send after the revert");
    let echoed = within(LIMIT, "echo", ws.next())
        .await
        .expect("open")
        .expect("frame");
    assert_eq!(echoed, Message::text("after"));
}
