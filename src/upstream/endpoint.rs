//! One upstream address: its outstanding-request count (read by the balancer)
//! and its pooled connections.
//!
//! HTTP/1.1 connections wait in a lock-free queue while idle; a request takes
//! one, and its `Lease` puts it back when the response body has been read to
//! the end. An HTTP/2 endpoint keeps one shared connection that every request
//! multiplexes over. Nothing here takes a lock. A TLS endpoint wraps each new
//! connection in a handshake (`tls::client`) before HTTP starts; pooled
//! connections are already past it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::error::FailureReason;
use super::h1;
use super::health::EndpointHealth;
use super::{RequestBody, ResponseBody, UpstreamError};
use crate::config::{Protocol, Timeouts};
use crate::tls::client::Originator;

/// Idle HTTP/1.1 connections kept per endpoint; more are closed when returned.
const MAX_IDLE_PER_ENDPOINT: usize = 512;
/// A pooled connection idle longer than this may have been closed by the
/// upstream's own keep-alive timeout in the meantime.
const RISKY_IDLE: Duration = Duration::from_secs(1);
/// Stale pooled connections tried in a row before a fresh one is the answer.
const MAX_STALE_RETRIES: u32 = 3;

pub struct Endpoint {
    addr: SocketAddr,
    protocol: Protocol,
    /// `None`: cleartext. `Err`: the version's TLS files could not be loaded
    /// when the endpoint was set up; every attempt fails with that reason.
    tls: Option<Result<Originator, String>>,
    outstanding: AtomicUsize,
    pub health: EndpointHealth,
    idle: ArrayQueue<IdleConnection>,
    /// Plain connections for the fast path (`h1`); they never mix with
    /// hyper's, whose connection task owns its socket.
    idle_direct: ArrayQueue<IdleDirect>,
    shared_h2: ArcSwapOption<http2::SendRequest<RequestBody>>,
}

struct IdleConnection {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

struct IdleDirect {
    connection: Box<h1::Connection>,
    since: Instant,
}

/// A request's hold on an endpoint, from sending until the response body ends:
/// it counts as outstanding for the balancer, and it owns the HTTP/1.1
/// connection, which goes back to the pool when the lease is dropped.
pub struct Lease {
    endpoint: Arc<Endpoint>,
    connection: Option<http1::SendRequest<RequestBody>>,
    direct: Option<Box<h1::Connection>>,
}

/// A failed attempt; `request` is given back when nothing of it was sent, so
/// the caller may try it on another endpoint.
pub struct Failed {
    pub error: UpstreamError,
    pub request: Option<Request<RequestBody>>,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, protocol: Protocol) -> Endpoint {
        Endpoint::with_tls(addr, protocol, None)
    }

    /// An endpoint reached over TLS when `tls` is set.
    pub fn with_tls(
        addr: SocketAddr,
        protocol: Protocol,
        tls: Option<Result<Originator, String>>,
    ) -> Endpoint {
        Endpoint {
            addr,
            protocol,
            tls,
            outstanding: AtomicUsize::new(0),
            health: EndpointHealth::default(),
            idle: ArrayQueue::new(MAX_IDLE_PER_ENDPOINT),
            idle_direct: ArrayQueue::new(MAX_IDLE_PER_ENDPOINT),
            shared_h2: ArcSwapOption::empty(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Requests sent to this endpoint whose responses have not ended.
    #[inline]
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Sends `request` and waits for the response head. An upgrade request
    /// (WebSocket) gets a connection of its own that never returns to the pool.
    pub async fn send(
        self: &Arc<Self>,
        request: Request<RequestBody>,
        timeouts: &Timeouts,
        upgrade: bool,
    ) -> Result<(Response<ResponseBody>, Lease), Failed> {
        let lease = Lease {
            endpoint: Arc::clone(self),
            connection: None,
            direct: None,
        };
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        match self.protocol {
            Protocol::Http1
                if !upgrade
                    && self.tls.is_none()
                    && direct_enabled()
                    && http_body::Body::is_end_stream(request.body())
                    // A 2xx to CONNECT is a tunnel, which only hyper's client
                    // knows how to hand over.
                    && request.method() != http::Method::CONNECT =>
            {
                self.send_direct(request, timeouts, lease).await
            }
            Protocol::Http1 => self.send_h1(request, timeouts, upgrade, lease).await,
            Protocol::Http2 => self.send_h2(request, timeouts, lease).await,
        }
    }

    async fn send_h1(
        &self,
        mut request: Request<RequestBody>,
        timeouts: &Timeouts,
        upgrade: bool,
        mut lease: Lease,
    ) -> Result<(Response<ResponseBody>, Lease), Failed> {
        let mut stale_pool_retries = 0;
        loop {
            let pooled = if upgrade {
                None
            } else {
                self.take_idle(timeouts.idle).await
            };
            let reused = pooled.is_some();
            // A connection that is new, or was idle a while, may be reset by
            // the upstream before it answers (it refuses work, or closed the
            // idle connection just as we wrote). A request that is safe to
            // repeat keeps a copy for that case. A connection busy a moment
            // ago is not at risk, so the hot path copies nothing.
            let replay = match &pooled {
                Some((_, idle_for)) if *idle_for < RISKY_IDLE => None,
                _ if upgrade => None,
                _ => replayable(&request),
            };
            let mut sender = match pooled {
                Some((sender, _)) => sender,
                // Boxed: a handshake's future is kilobytes, and an inline
                // one would be moved with every request's future.
                None => match Box::pin(self.connect_h1(timeouts.connect)).await {
                    Ok(sender) => sender,
                    Err(error) => {
                        return Err(Failed {
                            error,
                            request: Some(request),
                        })
                    }
                },
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    if !upgrade && response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                        // What the fast path answers too: a protocol switch
                        // nobody asked for cannot be passed on.
                        return Err(Failed {
                            error: UpstreamError::Protocol {
                                addr: self.addr,
                                cause:
                                    "101 Switching Protocols to a request that asked for no upgrade"
                                        .to_string(),
                            },
                            request: None,
                        });
                    }
                    // Both framings on one head may be a response split in
                    // two: whatever follows this body on the connection is
                    // not to be trusted as the answer to another request
                    // (RFC 9112 §6.1). hyper would keep it; dropping the
                    // sender closes it once this body is read.
                    let split = response
                        .headers()
                        .contains_key(http::header::TRANSFER_ENCODING)
                        && response
                            .headers()
                            .contains_key(http::header::CONTENT_LENGTH);
                    if !upgrade && !split {
                        lease.connection = Some(sender);
                    }
                    return Ok((response.map(ResponseBody::Hyper), lease));
                }
                Err(mut failed) => {
                    let error = self.explain(
                        UpstreamError::from_hyper(self.addr, failed.error()),
                        !reused,
                    );
                    let unsent = failed.take_message();
                    let resent = match (unsent, replay) {
                        // The client's body broke: nothing to send again.
                        _ if error.is_client() => None,
                        (Some(unsent), _) => Some(unsent),
                        (None, Some(copy)) if error.reason() == Some(FailureReason::Reset) => {
                            Some(copy)
                        }
                        (None, _) => None,
                    };
                    match resent {
                        // The pooled connection had died while idle: not the
                        // upstream's fault, try a fresh one (a few times at
                        // most, in case the whole pool went stale).
                        Some(again) if reused && stale_pool_retries < MAX_STALE_RETRIES => {
                            stale_pool_retries += 1;
                            request = again;
                        }
                        resent => {
                            return Err(Failed {
                                error,
                                request: resent,
                            })
                        }
                    }
                }
            }
        }
    }

    /// The fast path for a request without a body to a plain HTTP/1.1
    /// endpoint (`h1`). Nothing was taken by the upstream when the head could
    /// not be written; when it was written and the connection closed without
    /// a byte of answer, the request is given back only if its method is safe
    /// to repeat. Either way a pooled connection that died while idle is not
    /// the upstream's fault: a fresh one is tried.
    async fn send_direct(
        &self,
        request: Request<RequestBody>,
        timeouts: &Timeouts,
        lease: Lease,
    ) -> Result<(Response<ResponseBody>, Lease), Failed> {
        let mut stale_pool_retries = 0;
        loop {
            let pooled = self.take_idle_direct(timeouts.idle);
            let reused = pooled.is_some();
            let mut connection = match pooled {
                Some(connection) => connection,
                None => match self.connect_tcp(timeouts.connect).await {
                    Ok(stream) => h1::Connection::new(stream),
                    Err(error) => {
                        return Err(Failed {
                            error,
                            request: Some(request),
                        })
                    }
                },
            };
            let (error, resendable) = match connection.exchange(&request).await {
                Ok(head) => {
                    let response = head.into_response(connection, self.addr);
                    return Ok((response.map(ResponseBody::Direct), lease));
                }
                Err(h1::ExchangeError::Unwritten(cause)) => (
                    UpstreamError::Reset {
                        addr: self.addr,
                        cause: format!("could not send the request: {cause}"),
                    },
                    true,
                ),
                Err(h1::ExchangeError::NothingBack(cause)) => (
                    UpstreamError::Reset {
                        addr: self.addr,
                        cause,
                    },
                    request.method().is_idempotent(),
                ),
                Err(h1::ExchangeError::Broken(cause)) => (
                    UpstreamError::Reset {
                        addr: self.addr,
                        cause,
                    },
                    false,
                ),
                Err(h1::ExchangeError::Protocol(cause)) => (
                    UpstreamError::Protocol {
                        addr: self.addr,
                        cause,
                    },
                    false,
                ),
            };
            if !resendable {
                return Err(Failed {
                    error,
                    request: None,
                });
            }
            if !(reused && stale_pool_retries < MAX_STALE_RETRIES) {
                return Err(Failed {
                    error,
                    request: Some(request),
                });
            }
            stale_pool_retries += 1;
        }
    }

    /// An idle plain connection that is still open, if the pool has one.
    fn take_idle_direct(&self, max_idle: Duration) -> Option<Box<h1::Connection>> {
        while let Some(IdleDirect { connection, since }) = self.idle_direct.pop() {
            if since.elapsed() <= max_idle && connection.is_idle_and_open() {
                return Some(connection);
            }
        }
        None
    }

    async fn send_h2(
        &self,
        request: Request<RequestBody>,
        timeouts: &Timeouts,
        lease: Lease,
    ) -> Result<(Response<ResponseBody>, Lease), Failed> {
        let current = self.shared_h2.load_full();
        let mut fresh = false;
        let mut sender = match current {
            Some(sender) if !sender.is_closed() => (*sender).clone(),
            // Boxed, as in `send_h1`: the h2 handshake's future is 6 KiB.
            _ => match Box::pin(self.connect_h2(timeouts.connect)).await {
                Ok(sender) => {
                    self.shared_h2.store(Some(Arc::new(sender.clone())));
                    fresh = true;
                    sender
                }
                Err(error) => {
                    return Err(Failed {
                        error,
                        request: Some(request),
                    })
                }
            },
        };
        if let Err(err) = sender.ready().await {
            self.shared_h2.store(None);
            return Err(Failed {
                error: self.explain(UpstreamError::from_hyper(self.addr, &err), fresh),
                request: Some(request),
            });
        }
        match sender.try_send_request(request).await {
            Ok(response) => Ok((response.map(ResponseBody::Hyper), lease)),
            Err(mut failed) => Err(Failed {
                error: self.explain(UpstreamError::from_hyper(self.addr, failed.error()), fresh),
                request: failed.take_message(),
            }),
        }
    }

    /// A reset on a connection just made to a TLS endpoint may be the
    /// endpoint refusing the handshake late (TLS 1.3 client certificates).
    fn explain(&self, error: UpstreamError, fresh: bool) -> UpstreamError {
        match (&self.tls, &error) {
            (Some(Ok(origin)), UpstreamError::Reset { .. }) if fresh => {
                match origin.explain_reset() {
                    Some(cause) => UpstreamError::Tls {
                        addr: self.addr,
                        cause,
                    },
                    None => error,
                }
            }
            _ => error,
        }
    }

    /// An idle connection that is still open and ready, and how long it was
    /// idle, if the pool has one.
    async fn take_idle(
        &self,
        max_idle: Duration,
    ) -> Option<(http1::SendRequest<RequestBody>, Duration)> {
        while let Some(IdleConnection { mut sender, since }) = self.idle.pop() {
            let idle_for = since.elapsed();
            if sender.is_closed() || idle_for > max_idle {
                continue;
            }
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Some((sender, idle_for));
            }
        }
        None
    }

    async fn connect_tcp(&self, connect_timeout: Duration) -> Result<TcpStream, UpstreamError> {
        let attempt = tokio::time::timeout(connect_timeout, TcpStream::connect(self.addr)).await;
        let stream = match attempt {
            Ok(Ok(stream)) => stream,
            Ok(Err(cause)) => {
                return Err(UpstreamError::Connect {
                    addr: self.addr,
                    cause,
                })
            }
            Err(_) => {
                return Err(UpstreamError::Connect {
                    addr: self.addr,
                    cause: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {connect_timeout:?} (timeouts.connect)"),
                    ),
                })
            }
        };
        // Small requests and responses must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// `GET path` on a fresh connection of its own (TLS when the endpoint
    /// has it), outside the pool and the outstanding count: a health probe.
    pub async fn probe_get(
        &self,
        path: &str,
        connect_timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let authority = self.addr.to_string();
        let mut request = Request::new(RequestBody::Empty);
        request.headers_mut().insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("veer-health-check"),
        );
        let invalid = |e: &dyn std::fmt::Display| UpstreamError::Protocol {
            addr: self.addr,
            cause: format!("cannot build the probe request: {e}"),
        };
        match self.protocol {
            Protocol::Http1 => {
                *request.uri_mut() = path.parse().map_err(|e| invalid(&e))?;
                let host = http::HeaderValue::from_str(&authority).map_err(|e| invalid(&e))?;
                request.headers_mut().insert(http::header::HOST, host);
                let mut sender = self.connect_h1(connect_timeout).await?;
                sender
                    .send_request(request)
                    .await
                    .map_err(|e| UpstreamError::from_hyper(self.addr, &e))
            }
            Protocol::Http2 => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                *request.uri_mut() = format!("{scheme}://{authority}{path}")
                    .parse()
                    .map_err(|e| invalid(&e))?;
                *request.version_mut() = http::Version::HTTP_2;
                let mut sender = self.connect_h2(connect_timeout).await?;
                sender
                    .send_request(request)
                    .await
                    .map_err(|e| UpstreamError::from_hyper(self.addr, &e))
            }
        }
    }

    async fn connect_h1(
        &self,
        connect_timeout: Duration,
    ) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        let stream = self.connect_tcp(connect_timeout).await?;
        match &self.tls {
            None => self.handshake_h1(stream).await,
            Some(tls) => {
                let stream = self.connect_tls(tls, stream, connect_timeout).await?;
                self.handshake_h1(stream).await
            }
        }
    }

    async fn connect_h2(
        &self,
        connect_timeout: Duration,
    ) -> Result<http2::SendRequest<RequestBody>, UpstreamError> {
        let stream = self.connect_tcp(connect_timeout).await?;
        match &self.tls {
            None => self.handshake_h2(stream).await,
            Some(tls) => {
                let stream = self.connect_tls(tls, stream, connect_timeout).await?;
                self.handshake_h2(stream).await
            }
        }
    }

    async fn connect_tls(
        &self,
        tls: &Result<Originator, String>,
        stream: TcpStream,
        limit: Duration,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
        let fail = |cause| UpstreamError::Tls {
            addr: self.addr,
            cause,
        };
        match tls {
            Ok(originator) => originator.connect(stream, limit).await.map_err(fail),
            Err(cause) => Err(fail(cause.clone())),
        }
    }

    async fn handshake_h1<I>(&self, io: I) -> Result<http1::SendRequest<RequestBody>, UpstreamError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|err| UpstreamError::from_hyper(self.addr, &err))?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(upstream = %addr, error = %err, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    async fn handshake_h2<I>(&self, io: I) -> Result<http2::SendRequest<RequestBody>, UpstreamError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|err| UpstreamError::from_hyper(self.addr, &err))?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(upstream = %addr, error = %err, "upstream h2 connection ended");
            }
        });
        Ok(sender)
    }
}

/// Whether plain HTTP/1.1 requests without a body take veer's own client
/// (`h1`). `VEER_H1_CLIENT=hyper` sends every request through hyper's client
/// instead: a way to rule the fast path out when an upstream misbehaves, and
/// what the differential framing tests run one of their two proxies with.
/// Read once, at the first request.
fn direct_enabled() -> bool {
    static DIRECT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DIRECT.get_or_init(|| std::env::var_os("VEER_H1_CLIENT").is_none_or(|v| v != "hyper"))
}

/// A copy of `request` to send again if the first try is reset before any
/// answer: only for methods that are safe to repeat (RFC 9110 §9.2.2) and a
/// request without a body.
fn replayable(request: &Request<RequestBody>) -> Option<Request<RequestBody>> {
    if !request.method().is_idempotent() || !http_body::Body::is_end_stream(request.body()) {
        return None;
    }
    let mut copy = Request::new(RequestBody::Empty);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

impl Lease {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Called when a fast-path response body ended: its connection, if it
    /// can serve another request, goes back to the pool with the lease.
    pub fn release_direct(&mut self, connection: Option<Box<h1::Connection>>) {
        self.direct = connection;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
        if let Some(connection) = self.direct.take() {
            let _ = self.endpoint.idle_direct.push(IdleDirect {
                connection,
                since: Instant::now(),
            });
        }
        if let Some(sender) = self.connection.take() {
            if !sender.is_closed() {
                // A full pool just closes the surplus connection.
                let _ = self.endpoint.idle.push(IdleConnection {
                    sender,
                    since: Instant::now(),
                });
            }
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("endpoint", &self.endpoint.addr)
            .finish()
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.is_some())
            .field("outstanding", &self.outstanding())
            .field("idle", &self.idle.len())
            .finish()
    }
}
