//! A real upstream: a hyper server on `127.0.0.1:0` that speaks HTTP/1.1 and h2c
//! (prior knowledge) on one port and supports upgrades.
//!
//! Every response carries `x-upstream: NAME`. What it does is chosen by path:
//!
//! | path | answer |
//! | --- | --- |
//! | `/status/{code}` | that status, body = name |
//! | `/delay/{ms}` | waits, then 200, body = name |
//! | `/hang` | never answers |
//! | `/echo` | streams the request body (and its trailers) back as it arrives |
//! | `/sink` | reads the body without keeping it, answers its length in bytes |
//! | `/download/{bytes}` | streams that many bytes (`x`), with a content-length |
//! | `/reset/{bytes}` | promises 1 MiB, sends `bytes` of it, then breaks the stream |
//! | `/headers` | JSON object: header name -> list of values, as received |
//! | `/hop` | 200 with hop-by-hop headers in the response |
//! | `/ws` | WebSocket echo (HTTP/1.1 upgrade) |
//! | `/trailers` | gRPC-like: body `hello`, then trailers `grpc-status: 0` |
//! | anything else | 200, body = name |
//!
//! It counts requests (total and per path), accepted connections, and keeps the
//! last request's method, URI, version and headers. At run time it can be told to
//! fail a share of requests with 500 ([`Upstream::set_fail_ratio`]), to drop a
//! share of them unanswered ([`Upstream::set_reset_ratio`]), or to delay every
//! answer ([`Upstream::set_delay`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::{Body, BoxError};

/// The request line and headers of a request the upstream received.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

impl SeenRequest {
    /// The host the request named: `Host` (HTTP/1.1) or the URI's authority
    /// (HTTP/2 `:authority`).
    pub fn host(&self) -> Option<String> {
        if let Some(h) = self.headers.get(header::HOST) {
            return h.to_str().ok().map(str::to_string);
        }
        self.uri.authority().map(|a| a.as_str().to_string())
    }
}

struct State {
    name: String,
    total: AtomicU64,
    per_path: Mutex<HashMap<String, u64>>,
    last: Mutex<Option<SeenRequest>>,
    connections: AtomicU64,
    /// Share of requests answered 500, in thousandths.
    fail_permille: AtomicU64,
    fail_counter: AtomicU64,
    delay_ms: AtomicU64,
    /// Share of requests whose connection is dropped unanswered, in thousandths.
    reset_permille: AtomicU64,
    reset_counter: AtomicU64,
}

impl State {
    fn record(&self, req: &Request<Incoming>) {
        self.total.fetch_add(1, Ordering::SeqCst);
        *self
            .per_path
            .lock()
            .expect("per_path lock")
            .entry(req.uri().path().to_string())
            .or_insert(0) += 1;
        *self.last.lock().expect("last lock") = Some(SeenRequest {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        });
    }

    fn should_fail(&self) -> bool {
        pick(&self.fail_permille, &self.fail_counter)
    }

    fn should_reset(&self) -> bool {
        pick(&self.reset_permille, &self.reset_counter)
    }
}

/// Deterministic: exactly `permille` of every 1000 calls say yes, spread out.
fn pick(permille: &AtomicU64, counter: &AtomicU64) -> bool {
    let p = permille.load(Ordering::SeqCst);
    if p == 0 {
        return false;
    }
    let n = counter.fetch_add(1, Ordering::SeqCst);
    (n + 1) * p / 1000 != n * p / 1000
}

/// A running test upstream. Stops (listener and open connections) when dropped.
pub struct Upstream {
    addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
}

impl Upstream {
    /// Binds `127.0.0.1:0` and serves until dropped. Needs a tokio runtime.
    pub async fn start(name: &str) -> Upstream {
        Upstream::serve(name, super::bind_loopback())
    }

    /// Binds `addr` (a loopback address and a port another upstream may
    /// use on another address); `None` when it is taken.
    pub async fn start_at(name: &str, addr: SocketAddr) -> Option<Upstream> {
        let listener = tokio::net::TcpListener::bind(addr).await.ok()?;
        Some(Upstream::serve(name, listener))
    }

    fn serve(name: &str, listener: tokio::net::TcpListener) -> Upstream {
        let addr = listener.local_addr().expect("upstream local_addr");
        let state = Arc::new(State {
            name: name.to_string(),
            total: AtomicU64::new(0),
            per_path: Mutex::new(HashMap::new()),
            last: Mutex::new(None),
            connections: AtomicU64::new(0),
            fail_permille: AtomicU64::new(0),
            fail_counter: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            reset_permille: AtomicU64::new(0),
            reset_counter: AtomicU64::new(0),
        });
        let (stop, mut stop_rx) = watch::channel(false);
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop_rx.changed() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else {
                    // Out of descriptors or similar: back off briefly, keep serving.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                let mut conn_stop = stop_rx.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = conn_stop.changed() => {}
                    }
                });
            }
        });
        Upstream { addr, state, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Requests received so far (counted on arrival, before any delay).
    pub fn total(&self) -> u64 {
        self.state.total.load(Ordering::SeqCst)
    }

    /// Requests received so far for exactly this path.
    pub fn count(&self, path: &str) -> u64 {
        self.state
            .per_path
            .lock()
            .expect("per_path lock")
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The last request received, if any.
    pub fn last_request(&self) -> Option<SeenRequest> {
        self.state.last.lock().expect("last lock").clone()
    }

    /// Headers of the last request received; panics if there was none.
    pub fn last_headers(&self) -> HeaderMap {
        self.last_request()
            .expect("the upstream has received no request")
            .headers
    }

    /// From now on answer this share of requests (0.0..=1.0) with 500,
    /// deterministically spread (exact per 1000 requests).
    pub fn set_fail_ratio(&self, ratio: f64) {
        let permille = (ratio.clamp(0.0, 1.0) * 1000.0).round() as u64;
        self.state.fail_permille.store(permille, Ordering::SeqCst);
        self.state.fail_counter.store(0, Ordering::SeqCst);
    }

    /// From now on drop the connection without any answer for this share of
    /// requests (0.0..=1.0), deterministically spread: HTTP/1.1 connections
    /// close, HTTP/2 streams are reset.
    pub fn set_reset_ratio(&self, ratio: f64) {
        let permille = (ratio.clamp(0.0, 1.0) * 1000.0).round() as u64;
        self.state.reset_permille.store(permille, Ordering::SeqCst);
        self.state.reset_counter.store(0, Ordering::SeqCst);
    }

    /// From now on wait this long before every answer.
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Stops listening and drops every open connection; the port then refuses.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp
}

/// `/prefix/{n}` -> n
fn arg<T: std::str::FromStr>(path: &str, prefix: &str) -> Option<T> {
    path.strip_prefix(prefix)?.parse().ok()
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, BoxError> {
    st.record(&req);
    let delay = st.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if st.should_reset() {
        // hyper drops the connection (HTTP/1.1) or resets the stream (HTTP/2).
        return Err("test upstream told to reset".into());
    }
    let mut resp = if st.should_fail() {
        text(StatusCode::INTERNAL_SERVER_ERROR, st.name.clone())
    } else {
        answer(&st, req).await
    };
    if let Ok(v) = HeaderValue::from_str(&st.name) {
        resp.headers_mut().insert("x-upstream", v);
    }
    Ok(resp)
}

async fn answer(st: &State, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if let Some(code) = arg::<u16>(&path, "/status/") {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
        return text(status, st.name.clone());
    }
    if let Some(ms) = arg::<u64>(&path, "/delay/") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return text(StatusCode::OK, st.name.clone());
    }
    if let Some(n) = arg::<u64>(&path, "/download/") {
        return download(n);
    }
    if let Some(n) = arg::<u64>(&path, "/reset/") {
        return reset_after(n);
    }
    match path.as_str() {
        "/hang" => std::future::pending().await,
        "/echo" => {
            let mut resp = Response::new(req.into_body().map_err(BoxError::from).boxed_unsync());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            resp
        }
        "/sink" => {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Some(data) = frame.data_ref() {
                            n += data.len() as u64;
                        }
                    }
                    Err(_) => return text(StatusCode::BAD_REQUEST, "body broke"),
                }
            }
            text(StatusCode::OK, n.to_string())
        }
        "/headers" => {
            let mut map = serde_json::Map::new();
            if let Some(authority) = req.uri().authority() {
                map.insert(
                    ":authority".to_string(),
                    serde_json::Value::Array(vec![authority.as_str().into()]),
                );
            }
            for name in req.headers().keys() {
                let values: Vec<serde_json::Value> = req
                    .headers()
                    .get_all(name)
                    .iter()
                    .map(|v| {
                        serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into())
                    })
                    .collect();
                map.insert(name.as_str().to_string(), serde_json::Value::Array(values));
            }
            let mut resp = text(StatusCode::OK, serde_json::Value::Object(map).to_string());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        "/hop" => {
            let mut resp = text(StatusCode::OK, st.name.clone());
            let h = resp.headers_mut();
            h.insert(header::CONNECTION, HeaderValue::from_static("x-resp-hop"));
            h.insert("x-resp-hop", HeaderValue::from_static("1"));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
            h.insert("x-resp-end-to-end", HeaderValue::from_static("1"));
            resp
        }
        "/ws" => websocket(req),
        "/trailers" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert("grpc-message", HeaderValue::from_static("ok"));
            let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
                Ok(Frame::data(Bytes::from_static(b"hello"))),
                Ok(Frame::trailers(trailers)),
            ];
            let body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
            let mut resp = Response::new(body);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            resp
        }
        _ => text(StatusCode::OK, st.name.clone()),
    }
}

const CHUNK: usize = 64 * 1024;

/// A body of `total` bytes produced chunk by chunk, never held whole.
pub fn generated_body(total: u64) -> Body {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let stream = futures_util::stream::unfold(total, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let k = left.min(CHUNK as u64) as usize;
            Some((
                Ok::<_, BoxError>(Frame::data(chunk.slice(..k))),
                left - k as u64,
            ))
        }
    });
    StreamBody::new(stream).boxed_unsync()
}

fn download(n: u64) -> Response<Body> {
    let mut resp = Response::new(generated_body(n));
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    resp
}

/// Promises 1 MiB, sends `n` bytes, then fails the body: hyper aborts the
/// connection (HTTP/1.1) or resets the stream (HTTP/2).
fn reset_after(n: u64) -> Response<Body> {
    let sent = generated_body(n.min(1 << 20));
    let broken = futures_util::stream::once(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Err::<Frame<Bytes>, BoxError>("test upstream breaks the body on purpose".into())
    });
    let stream = http_body_util::BodyStream::new(sent).chain(broken);
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(1u64 << 20));
    resp
}

fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let key = match req.headers().get(header::SEC_WEBSOCKET_KEY) {
        Some(key) => derive_accept_key(key.as_bytes()),
        None => return text(StatusCode::BAD_REQUEST, "not a websocket request"),
    };
    let wants_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !wants_upgrade {
        return text(StatusCode::BAD_REQUEST, "no Upgrade: websocket");
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut resp = text(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}
