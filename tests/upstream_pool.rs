//! The idle upstream connections veer keeps: closed by veer once they have
//! waited `timeouts.idle`, even when no request comes to take them (a
//! version at weight 0 after a rollback would otherwise hold its sockets for
//! good), whichever HTTP/1.1 client opened them. Real `veer` processes, a
//! scripted upstream on loopback that watches for veer's close.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use support::binary::VeerProcess;
use support::client::{get, http1_client, send};
use support::within;

/// Generous: veer closes after `timeouts.idle` (1s) and half of it again at
/// most; this only bounds a failure.
const LIMIT: Duration = Duration::from_secs(20);

fn yaml(endpoint: SocketAddr) -> String {
    format!(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n\
         services:\n  - name: web\n    versions:\n\
         \x20     - {{ name: stable, revision: \"1\", endpoints: [\"{endpoint}\"], weight: 1 }}\n\
         \x20   timeouts: {{ idle: 1s }}\n"
    )
}

/// Answers one request per connection, keeps the connection open, and
/// reports on `closed` when veer closes it.
async fn upstream() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let listener = support::bind_loopback();
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-upstream: idle\r\n\r\nok";
                if stream.write_all(ok).await.is_err() {
                    return;
                }
                // Nothing more is sent to us: the next read ends when veer
                // closes the idle connection.
                let mut rest = [0u8; 64];
                if let Ok(0) = stream.read(&mut rest).await {
                    let _ = tx.send(());
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn an_idle_upstream_connection_is_closed_after_timeouts_idle_with_no_request_to_take_it() {
    for (name, env) in [
        ("fast path", &[][..]),
        ("hyper", &[("VEER_H1_CLIENT", "hyper")][..]),
    ] {
        let (endpoint, mut closed) = upstream().await;
        let veer = VeerProcess::start_with_env(env!("CARGO_BIN_EXE_veer"), &yaml(endpoint), env);
        let url = format!("http://{}/", veer.listener("public"));
        let answer = send(&http1_client(), get(&url, None)).await;
        assert_eq!(answer.upstream(), Some("idle"), "{name}: {answer:?}");
        within(
            LIMIT,
            &format!("{name}: veer closing its idle connection"),
            closed.recv(),
        )
        .await
        .expect("the upstream task reports");
    }
}
