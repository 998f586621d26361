//! A real gRPC stack on both sides of veer, without `protoc`:
//!
//! - [`GrpcUpstream`]: an HTTP/2 (h2c) server on `127.0.0.1:0` that speaks
//!   gRPC's wire format itself (length-prefixed messages, `grpc-status` in
//!   the trailers) for the four kinds of call, and can be told per method to
//!   fail a share of calls with a code (in the trailers or trailers-only), to
//!   reset the stream, or to end it with no status at all.
//! - [`GrpcClient`]: tonic's own client (`tonic::client::Grpc`, what
//!   generated stubs call) over hyper-util's HTTP/2 client, with a codec that
//!   carries raw bytes, so the test reads exactly what a gRPC application
//!   would: a message or a `tonic::Status`.
//!
//! Methods of the upstream (service `test.Echo`):
//!
//! | path | kind | answer |
//! | --- | --- | --- |
//! | `/test.Echo/Unary` (and any other) | unary | one message: the upstream's name |
//! | `/test.Echo/ServerStream` | server streaming | N messages `NAME i`, N = the request's message as a number |
//! | `/test.Echo/ClientStream` | client streaming | one message: how many messages came |
//! | `/test.Echo/Bidi` | bidirectional | each message back as it arrives |
//! | `/test.Echo/Slow` | unary | waits for the upstream's delay, then as Unary |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{mpsc, watch};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::BoxError;

pub const UNARY: &str = "/test.Echo/Unary";
pub const SERVER_STREAM: &str = "/test.Echo/ServerStream";
pub const CLIENT_STREAM: &str = "/test.Echo/ClientStream";
pub const BIDI: &str = "/test.Echo/Bidi";
pub const SLOW: &str = "/test.Echo/Slow";

/// How a failing call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The normal messages, then trailers with this `grpc-status`.
    Trailers(tonic::Code),
    /// A trailers-only answer: `200` with the status in the headers, no body.
    TrailersOnly(tonic::Code),
    /// The stream is reset (RST_STREAM) after the messages.
    Reset,
    /// The stream ends after the messages with no trailers at all.
    NoStatus,
}

/// What a method does to a share of its calls.
#[derive(Debug, Clone, Copy)]
struct Fault {
    failure: Failure,
    /// Out of 100; spread evenly (30 fails exactly 3 calls in every 10).
    percent: u64,
}

struct State {
    name: String,
    /// Per method path; `*` for every method without its own.
    faults: Mutex<HashMap<String, Fault>>,
    calls: Mutex<HashMap<String, u64>>,
    total: AtomicU64,
    delay: Mutex<Duration>,
    /// The last `grpc-timeout` received.
    last_timeout: Mutex<Option<String>>,
}

impl State {
    /// The failure of this call of `method`, if it is one of the share.
    fn failure(&self, method: &str) -> Option<Failure> {
        let n = {
            let mut calls = self.calls.lock().expect("calls");
            let n = calls.entry(method.to_string()).or_insert(0);
            *n += 1;
            *n - 1
        };
        let faults = self.faults.lock().expect("faults");
        let fault = faults.get(method).or_else(|| faults.get("*"))?;
        // Call n fails when the running share crosses a whole call.
        let fails = (n + 1) * fault.percent / 100 != n * fault.percent / 100;
        fails.then_some(fault.failure)
    }
}

/// A gRPC upstream; stops when dropped.
pub struct GrpcUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    _stop: watch::Sender<()>,
}

impl GrpcUpstream {
    pub async fn start(name: &str) -> GrpcUpstream {
        let listener = super::bind_loopback();
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            name: name.to_string(),
            faults: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
            total: AtomicU64::new(0),
            delay: Mutex::new(Duration::ZERO),
            last_timeout: Mutex::new(None),
        });
        let (stop, mut stopped) = watch::channel(());
        let served = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                    _ = stopped.changed() => return,
                };
                let state = Arc::clone(&served);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, std::convert::Infallible>(handle(req, state).await) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        GrpcUpstream {
            addr,
            state,
            _stop: stop,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Fails `percent` of the calls of `method` (`*`: every method without
    /// its own fault) with `failure`; 0 stops failing.
    pub fn fail(&self, method: &str, percent: u64, failure: Failure) {
        self.state
            .faults
            .lock()
            .expect("faults")
            .insert(method.to_string(), Fault { failure, percent });
    }

    /// How long `/test.Echo/Slow` waits before answering.
    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().expect("delay") = delay;
    }

    /// Calls received, every method.
    pub fn calls(&self) -> u64 {
        self.state.total.load(Ordering::Relaxed)
    }

    /// The `grpc-timeout` of the last call, as received.
    pub fn last_timeout(&self) -> Option<String> {
        self.state.last_timeout.lock().expect("timeout").clone()
    }
}

async fn handle(request: Request<Incoming>, state: Arc<State>) -> Response<ChannelBody> {
    state.total.fetch_add(1, Ordering::Relaxed);
    let method = request.uri().path().to_string();
    *state.last_timeout.lock().expect("timeout") = request
        .headers()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let failure = state.failure(&method);
    let (tx, rx) = mpsc::channel(16);
    let mut response = Response::new(ChannelBody(rx));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    if let Some(Failure::TrailersOnly(code)) = failure {
        let headers = response.headers_mut();
        headers.insert("grpc-status", status_value(code));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("trailers-only failure"),
        );
        drop(tx);
        return response;
    }
    if method == SLOW {
        let delay = *state.delay.lock().expect("delay");
        tokio::time::sleep(delay).await;
    }
    let name = state.name.clone();
    let mut messages = Messages::new(request.into_body());
    tokio::spawn(async move {
        let send = |payload: Bytes| {
            let tx = tx.clone();
            async move { tx.send(Ok(Frame::data(frame(&payload)))).await.is_ok() }
        };
        match method.as_str() {
            SERVER_STREAM => {
                let n: u64 = messages
                    .next()
                    .await
                    .and_then(|m| std::str::from_utf8(&m).ok()?.parse().ok())
                    .unwrap_or(1);
                for i in 0..n {
                    if !send(Bytes::from(format!("{name} {i}"))).await {
                        return;
                    }
                }
            }
            CLIENT_STREAM => {
                let mut count = 0u64;
                while messages.next().await.is_some() {
                    count += 1;
                }
                send(Bytes::from(count.to_string())).await;
            }
            BIDI => {
                while let Some(message) = messages.next().await {
                    if !send(message).await {
                        return;
                    }
                }
            }
            _ => {
                while messages.next().await.is_some() {}
                send(Bytes::from(name.clone())).await;
            }
        }
        let end = match failure {
            None => Some(Ok(Frame::trailers(trailers(tonic::Code::Ok, "")))),
            Some(Failure::Trailers(code)) => Some(Ok(Frame::trailers(trailers(
                code,
                "the test upstream was told to fail",
            )))),
            Some(Failure::Reset) => Some(Err(BoxError::from("reset on purpose"))),
            Some(Failure::NoStatus) | Some(Failure::TrailersOnly(_)) => None,
        };
        if let Some(end) = end {
            let _ = tx.send(end).await;
        }
    });
    response
}

fn status_value(code: tonic::Code) -> HeaderValue {
    HeaderValue::from(code as i32)
}

fn trailers(code: tonic::Code, message: &'static str) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert("grpc-status", status_value(code));
    if !message.is_empty() {
        map.insert("grpc-message", HeaderValue::from_static(message));
    }
    map
}

/// One gRPC message on the wire: uncompressed flag, length, payload.
fn frame(payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + payload.len());
    buf.put_u8(0);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
    buf.freeze()
}

/// Reads length-prefixed gRPC messages from a request body as they arrive.
struct Messages {
    body: Incoming,
    buf: BytesMut,
    done: bool,
}

impl Messages {
    fn new(body: Incoming) -> Messages {
        Messages {
            body,
            buf: BytesMut::new(),
            done: false,
        }
    }

    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    return Some(self.buf.split_to(len).freeze());
                }
            }
            if self.done {
                return None;
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                _ => self.done = true,
            }
        }
    }
}

/// A response body fed frame by frame from a channel; an `Err` resets the
/// stream.
pub struct ChannelBody(mpsc::Receiver<Result<Frame<Bytes>, BoxError>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx)
    }
}

// ------------------------------------------------------------------ client

/// Messages are raw bytes: the tests need gRPC's framing and status, not
/// protobuf.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

type Transport = Client<FixedAddr, tonic::body::Body>;

/// Connects to one address whatever host the URI names.
#[derive(Clone)]
pub struct FixedAddr {
    addr: SocketAddr,
    connector: HttpConnector,
}

impl tower::Service<http::Uri> for FixedAddr {
    type Response = <HttpConnector as tower::Service<http::Uri>>::Response;
    type Error = <HttpConnector as tower::Service<http::Uri>>::Error;
    type Future = <HttpConnector as tower::Service<http::Uri>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.connector.poll_ready(cx)
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let uri = format!("http://{}", self.addr)
            .parse()
            .expect("address URI");
        self.connector.call(uri)
    }
}

/// tonic's gRPC client, over HTTP/2 to `addr` (h2c prior knowledge).
#[derive(Clone)]
pub struct GrpcClient {
    inner: tonic::client::Grpc<Transport>,
}

impl GrpcClient {
    pub fn new(addr: SocketAddr) -> GrpcClient {
        GrpcClient::with_authority(addr, &addr.to_string())
    }

    /// Connects to `addr` but names `authority` in each call (`:authority`,
    /// what veer routes by), as a client of a named service behind veer does.
    pub fn with_authority(addr: SocketAddr, authority: &str) -> GrpcClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let transport = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(FixedAddr { addr, connector });
        let origin: http::Uri = format!("http://{authority}").parse().expect("origin");
        GrpcClient {
            inner: tonic::client::Grpc::with_origin(transport, origin),
        }
    }

    async fn ready(&mut self) -> Result<(), tonic::Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))
    }

    /// One unary call; `timeout` becomes the call's `grpc-timeout`.
    pub async fn unary_with(
        &mut self,
        method: &str,
        message: &str,
        timeout: Option<Duration>,
    ) -> Result<Bytes, tonic::Status> {
        self.ready().await?;
        let mut request = tonic::Request::new(Bytes::from(message.to_string()));
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        let path = method.parse().expect("method path");
        self.inner
            .unary(request, path, RawCodec)
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn unary(&mut self, method: &str) -> Result<Bytes, tonic::Status> {
        self.unary_with(method, "hello", None).await
    }

    /// A server-streaming call asking for `n` messages; every message, or
    /// the status the stream ended with.
    pub async fn server_stream(
        &mut self,
        method: &str,
        n: u64,
    ) -> Result<Vec<Bytes>, tonic::Status> {
        self.ready().await?;
        let request = tonic::Request::new(Bytes::from(n.to_string()));
        let path = method.parse().expect("method path");
        let mut stream = self
            .inner
            .server_streaming(request, path, RawCodec)
            .await?
            .into_inner();
        let mut messages = Vec::new();
        while let Some(message) = stream.message().await? {
            messages.push(message);
        }
        Ok(messages)
    }

    /// A client-streaming call sending `n` messages; the one answer.
    pub async fn client_stream(&mut self, method: &str, n: u64) -> Result<Bytes, tonic::Status> {
        self.ready().await?;
        let messages = (0..n).map(|i| Bytes::from(format!("m{i}")));
        let request = tonic::Request::new(futures_util::stream::iter(messages));
        let path = method.parse().expect("method path");
        self.inner
            .client_streaming(request, path, RawCodec)
            .await
            .map(tonic::Response::into_inner)
    }

    /// A bidirectional call: sends each message and reads its echo before
    /// the next (so it proves both directions flow while the call is open).
    pub async fn bidi(&mut self, method: &str, n: u64) -> Result<Vec<Bytes>, tonic::Status> {
        self.ready().await?;
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        let outgoing =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let path = method.parse().expect("method path");
        let first = Bytes::from_static(b"m0");
        tx.send(first)
            .await
            .map_err(|_| tonic::Status::internal("send"))?;
        let mut stream = self
            .inner
            .streaming(tonic::Request::new(outgoing), path, RawCodec)
            .await?
            .into_inner();
        let mut echoed = Vec::new();
        for i in 1..=n {
            match stream.message().await? {
                Some(message) => echoed.push(message),
                None => return Ok(echoed),
            }
            if i < n {
                tx.send(Bytes::from(format!("m{i}")))
                    .await
                    .map_err(|_| tonic::Status::internal("send"))?;
            }
        }
        drop(tx);
        while let Some(message) = stream.message().await? {
            echoed.push(message);
        }
        Ok(echoed)
    }
}
