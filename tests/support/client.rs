//! Real clients: hyper-util's pooled client (HTTP/1.1, or h2c with prior
//! knowledge), single hyper connections, and raw TCP for malformed input.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Body, BoxError};

/// Bound on any single exchange made through [`send`].
pub const EXCHANGE_LIMIT: Duration = Duration::from_secs(20);

pub type HttpClient = Client<HttpConnector, Body>;

/// A pooled HTTP/1.1 client with keep-alive.
pub fn http1_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// A pooled HTTP/2 client speaking cleartext h2 with prior knowledge (h2c).
pub fn h2c_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector)
}

pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A request body fed by hand: each chunk sent on the returned sender is one
/// data frame; dropping the sender ends the body.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, BoxError>(Frame::data(chunk)), rx))
    });
    (tx, StreamBody::new(stream).boxed_unsync())
}

/// Reads frames from `body` until `want` bytes in all have arrived since the
/// call; returns them. Fails on error, end of body, or after `limit`.
pub async fn read_exactly(
    body: &mut Incoming,
    want: usize,
    limit: Duration,
) -> Result<Vec<u8>, BoxError> {
    let mut got = Vec::with_capacity(want);
    let deadline = tokio::time::Instant::now() + limit;
    while got.len() < want {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(format!("only {} of {want} bytes within {limit:?}", got.len()).into())
            }
            Ok(None) => {
                return Err(format!("body ended after {} of {want} bytes", got.len()).into())
            }
            Ok(Some(frame)) => frame?,
        };
        if let Some(data) = frame.data_ref() {
            got.extend_from_slice(data);
        }
    }
    Ok(got)
}

/// `GET url`, with `Host: host` when given (the connection still goes to `url`).
pub fn get(url: &str, host: Option<&str>) -> Request<Body> {
    let mut builder = Request::get(url);
    if let Some(host) = host {
        builder = builder.header(http::header::HOST, host);
    }
    builder.body(empty()).expect("build GET request")
}

/// A response read to its end.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `x-upstream` header: which test upstream answered.
    pub fn upstream(&self) -> Option<&str> {
        self.headers.get("x-upstream").and_then(|v| v.to_str().ok())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts this is a response veer made itself for an error: the status,
    /// an `x-veer-error` reason code, and a one-line body.
    pub fn assert_proxy_error(&self, status: u16) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "expected a proxy-made {status}, got {} (headers {:?}, body {:?})",
            self.status,
            self.headers,
            self.text()
        );
        let reason = self.header("x-veer-error").unwrap_or_else(|| {
            panic!(
                "a proxy-made {status} must carry x-veer-error; headers {:?}",
                self.headers
            )
        });
        assert!(!reason.trim().is_empty(), "x-veer-error is empty");
        assert!(
            self.upstream().is_none(),
            "a proxy-made error must not look like the upstream's answer: {:?}",
            self.headers
        );
        let body = self.text();
        assert!(
            !body.trim().is_empty(),
            "a proxy-made {status} must say what failed"
        );
        assert!(
            !body.trim_end().contains('\n'),
            "the error body must be one line, got {body:?}"
        );
    }
}

/// Sends through `client` and reads the whole answer; panics on any error or
/// after [`EXCHANGE_LIMIT`].
pub async fn send(client: &HttpClient, req: Request<Body>) -> Answer {
    let what = format!("{} {}", req.method(), req.uri());
    match tokio::time::timeout(EXCHANGE_LIMIT, try_send(client, req)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => panic!("{what}: {e:?}"),
        Err(_) => panic!("{what}: no complete answer within {EXCHANGE_LIMIT:?}"),
    }
}

/// Sends through `client`; any failure, of the head or of the body, is an `Err`.
pub async fn try_send(client: &HttpClient, req: Request<Body>) -> Result<Answer, BoxError> {
    let resp = client.request(req).await?;
    read_answer(resp).await
}

/// Reads a response to its end, trailers included.
pub async fn read_answer(resp: http::Response<Incoming>) -> Result<Answer, BoxError> {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(Answer {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// Reads a body to its end counting bytes, keeping none of them.
pub async fn count_body(mut body: Incoming) -> Result<u64, hyper::Error> {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}

/// One HTTP/1.1 connection to `addr` (no pool): what it sends next reuses it.
pub async fn http1_connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Body> {
    let stream = TcpStream::connect(addr).await.expect("connect (http1)");
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// One h2c (prior knowledge) connection to `addr`. Requests on it should carry
/// an absolute URI whose authority becomes `:authority`, e.g. `http://app.example/x`.
pub async fn h2c_connect(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Body> {
    let stream = TcpStream::connect(addr).await.expect("connect (h2c)");
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// What a raw TCP exchange got back.
#[derive(Debug)]
pub struct RawReply {
    pub bytes: Vec<u8>,
    /// The peer closed (EOF or reset) within the time allowed.
    pub closed: bool,
    /// The connection ended with an error (such as a reset) rather than EOF.
    pub error: Option<std::io::ErrorKind>,
}

impl RawReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status code of the first response in the bytes, if there is one.
    pub fn status(&self) -> Option<u16> {
        status_of(&self.bytes)
    }
}

/// `HTTP/1.x NNN ...` -> NNN
pub fn status_of(bytes: &[u8]) -> Option<u16> {
    let line = bytes.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.trim().parse().ok()
}

/// Writes `request` to a fresh connection to `addr`, then reads until the peer
/// closes or `wait` passes.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> RawReply {
    let mut stream = TcpStream::connect(addr).await.expect("connect (raw)");
    let _ = stream.set_nodelay(true);
    // A peer that answers early and closes may make this write fail: what it
    // answered is still read below.
    let _ = stream.write_all(request).await;
    read_until_close(&mut stream, wait).await
}

/// Reads from `stream` until EOF, an error, or `wait` passes.
pub async fn read_until_close(stream: &mut TcpStream, wait: Duration) -> RawReply {
    let deadline = tokio::time::Instant::now() + wait;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => {
                return RawReply {
                    bytes,
                    closed: false,
                    error: None,
                }
            }
            Ok(Ok(0)) => {
                return RawReply {
                    bytes,
                    closed: true,
                    error: None,
                }
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => {
                return RawReply {
                    bytes,
                    closed: true,
                    error: Some(e.kind()),
                }
            }
        }
    }
}
