//! Upstreams that break HTTP on purpose, on raw TCP, and a port that refuses.
//!
//! [`RawUpstream`] in [`RawMode::ByPath`] reads each request head and answers by
//! its path:
//!
//! | path | what it writes |
//! | --- | --- |
//! | `/garbage` | bytes that are not HTTP, then closes |
//! | `/reset` | a 200 head promising 1 MiB, 16 KiB of body, then a TCP reset |
//! | `/close` | nothing: closes right after reading the request |
//! | `/hang` | nothing, and keeps the connection open |
//! | anything else | `200 OK`, body `ok`, and waits for the next request |
//!
//! Request bodies are not read: send it bodiless requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawMode {
    /// Read request heads and answer by path (see the module docs).
    ByPath,
    /// Close every connection as soon as it is accepted, reading nothing.
    CloseOnAccept,
    /// Reset (RST) every connection as soon as it is accepted.
    ResetOnAccept,
}

/// A scripted TCP peer on `127.0.0.1:0`. Stops when dropped.
pub struct RawUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    _stop: watch::Sender<bool>,
}

/// What the raw upstream answers for any path it has no script for.
pub const RAW_OK: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-upstream: raw\r\ncontent-type: text/plain\r\n\r\nok";

const GARBAGE: &[u8] =
    b"SSH-2.0-OpenSSH_9.2 this is not http\r\n\x00\x01\x02\xff\xfe garbage\r\n\r\n";

/// Bytes of body the `/reset` script sends before the reset.
pub const RESET_AFTER: usize = 16 * 1024;

impl RawUpstream {
    pub async fn start(mode: RawMode) -> RawUpstream {
        let listener = super::bind_loopback();
        let addr = listener.local_addr().expect("raw upstream local_addr");
        let accepted = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let (stop, mut stop_rx) = watch::channel(false);
        let (acc, reqs) = (accepted.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop_rx.changed() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                let reqs = reqs.clone();
                let mut conn_stop = stop_rx.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(stream, mode, reqs) => {}
                        _ = conn_stop.changed() => {}
                    }
                });
            }
        });
        RawUpstream {
            addr,
            accepted,
            requests,
            _stop: stop,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Request heads read so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Closes `stream` with a TCP reset rather than a FIN.
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn serve(mut stream: TcpStream, mode: RawMode, requests: Arc<AtomicU64>) {
    match mode {
        RawMode::CloseOnAccept => return,
        RawMode::ResetOnAccept => return reset(stream),
        RawMode::ByPath => {}
    }
    let mut buf = Vec::with_capacity(4096);
    loop {
        let Some(head) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        requests.fetch_add(1, Ordering::SeqCst);
        let path = head
            .split(|&b| b == b' ')
            .nth(1)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        match path.as_str() {
            "/garbage" => {
                let _ = stream.write_all(GARBAGE).await;
                let _ = stream.shutdown().await;
                return;
            }
            "/reset" => {
                let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\nx-upstream: raw\r\n\r\n";
                let _ = stream.write_all(head).await;
                let _ = stream.write_all(&vec![b'r'; RESET_AFTER]).await;
                let _ = stream.flush().await;
                // Let the proxy pass the head and the first bytes on before the reset.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return reset(stream);
            }
            "/close" => return,
            "/hang" => return std::future::pending().await,
            _ => {
                if stream.write_all(RAW_OK).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads one request head (up to the blank line) and returns it; `None` on EOF,
/// error, or a head over 1 MiB. Bytes after the head stay in `buf`.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            return Some(head);
        }
        if buf.len() > 1 << 20 {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An address where nothing listens: connecting is refused. On a loopback
/// address of this process's own where nothing ever listens
/// ([`super::own_loopback`]), so no other test can take the port and answer;
/// each call gives another port, so two of them are two endpoints.
pub fn closed_port() -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    let port = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    SocketAddr::new(super::own_loopback(2), port)
}
