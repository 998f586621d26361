//! One upstream address: its outstanding-request count (read by the
//! balancer), its pooled connections (`pool`), and one attempt at sending a
//! request over them.
//!
//! A plain HTTP/1.1 request without a body takes veer's own client (`h1`);
//! anything else takes hyper's (a body, an upgrade or CONNECT, TLS, HTTP/2).
//! Either way an attempt ends in a response head and a `Lease`, or a
//! `retry::Failed` classified by `error` in the same terms: what to do next
//! is the retry loop's call (`retry`), never the client's. A TLS endpoint
//! wraps each new connection in a handshake (`tls::client`) before HTTP
//! starts; pooled connections are already past it. Nothing here takes a lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::error::Delivery;
use super::h1;
use super::health::EndpointHealth;
use super::pool::{IdlePool, Multiplexed};
use super::retry::{self, Failed};
use super::{RequestBody, ResponseBody, UpstreamError};
use crate::config::{Protocol, Timeouts};
use crate::tls::client::Originator;

pub struct Endpoint {
    addr: SocketAddr,
    protocol: Protocol,
    /// `None`: cleartext. `Err`: the version's TLS files could not be loaded
    /// when the endpoint was set up; every attempt fails with that reason.
    tls: Option<Result<Originator, String>>,
    outstanding: AtomicUsize,
    pub health: EndpointHealth,
    /// Plain connections of the fast path (`h1`).
    direct: IdlePool<Box<h1::Connection>>,
    /// hyper's HTTP/1.1 connections; they never mix with the fast path's,
    /// as hyper's connection task owns its socket.
    hyper_h1: IdlePool<http1::SendRequest<RequestBody>>,
    h2: Multiplexed,
    /// Where the endpoint asks its registry's one sweeper to look after its
    /// idle connections, once it has some (`None`: built outside a runtime,
    /// or outside a registry; idle connections are still checked when
    /// taken).
    sweeper: Option<mpsc::UnboundedSender<Weak<Endpoint>>>,
    /// On the sweeper's list: set by the first connection pooled, cleared by
    /// the sweeper when it finds the endpoint with none left.
    swept: AtomicBool,
}

/// A request's hold on an endpoint, from sending until the response body ends:
/// it counts as outstanding for the balancer, and it owns the HTTP/1.1
/// connection, which goes back to the pool when the lease is dropped.
pub struct Lease {
    endpoint: Arc<Endpoint>,
    connection: Option<Pooled>,
}

/// An HTTP/1.1 connection on its way back to the pool.
enum Pooled {
    Direct(Box<h1::Connection>),
    Hyper(http1::SendRequest<RequestBody>),
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
            direct: IdlePool::new(),
            hyper_h1: IdlePool::new(),
            h2: Multiplexed::new(),
            sweeper: None,
            swept: AtomicBool::new(false),
        }
    }

    /// Has `sweeper` look after this endpoint's idle connections once it has
    /// some (see [`Sweeper`]).
    pub(crate) fn swept_by(&mut self, sweeper: &Sweeper) {
        self.sweeper = Some(sweeper.joins.clone());
    }

    /// Puts the endpoint on its sweeper's list, unless it is there: called
    /// whenever a connection is left waiting (pooled, or the shared h2 one).
    /// One relaxed load once listed.
    #[inline]
    fn list_for_sweep(self: &Arc<Self>) {
        if self.swept.load(Ordering::Relaxed) {
            return;
        }
        if let Some(sweeper) = &self.sweeper {
            if !self.swept.swap(true, Ordering::AcqRel) {
                let _ = sweeper.send(Arc::downgrade(self));
            }
        }
    }

    /// Whether any connection waits here (pooled, or the shared h2 one).
    fn holds_idle(&self) -> bool {
        self.direct.len() + self.hyper_h1.len() > 0 || self.h2.is_set()
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

    /// One attempt: sends `request` on a pooled connection, or a new one,
    /// and waits for the response head. An upgrade request (WebSocket) gets
    /// a connection of its own that never returns to the pool.
    pub async fn send(
        self: &Arc<Self>,
        request: Request<RequestBody>,
        timeouts: &Timeouts,
        upgrade: bool,
    ) -> Result<(Response<ResponseBody>, Lease), Failed> {
        let lease = Lease {
            endpoint: Arc::clone(self),
            connection: None,
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

    /// The fast path (`h1`): a request without a body to a plain HTTP/1.1
    /// endpoint. The request stays here while its head is written, so a
    /// failure always gives it back; whether it may go again is `retry`'s
    /// call.
    async fn send_direct(
        &self,
        request: Request<RequestBody>,
        timeouts: &Timeouts,
        lease: Lease,
    ) -> Result<(Response<ResponseBody>, Lease), Failed> {
        let pooled = self.direct.take(timeouts.idle);
        let reused = pooled.is_some();
        let mut connection = match pooled {
            Some(connection) => connection,
            None => match self.connect_tcp(timeouts.connect).await {
                Ok(stream) => h1::Connection::new(stream),
                Err(error) => return Err(unsent(error, request)),
            },
        };
        match connection.exchange(&request).await {
            Ok(head) => {
                let response = head.into_response(connection, self.addr);
                Ok((response.map(ResponseBody::Direct), lease))
            }
            Err(failure) => {
                let (error, delivery) = UpstreamError::from_exchange(self.addr, failure);
                Err(Failed {
                    error,
                    delivery,
                    request: Some(request),
                    reused,
                })
            }
        }
    }

    /// hyper's HTTP/1.1 client. hyper gives a request back only when it
    /// wrote none of it, so a request safe to send again is copied first
    /// (the copy is what `retry` may resend after a reset with nothing
    /// back, as the fast path would resend its own).
    async fn send_h1(
        &self,
        request: Request<RequestBody>,
        timeouts: &Timeouts,
        upgrade: bool,
        mut lease: Lease,
    ) -> Result<(Response<ResponseBody>, Lease), Failed> {
        let pooled = if upgrade {
            None
        } else {
            self.take_ready_h1(timeouts.idle).await
        };
        let reused = pooled.is_some();
        let mut sender = match pooled {
            Some(sender) => sender,
            // Boxed: a handshake's future is kilobytes, and an inline one
            // would be moved with every request's future.
            None => match Box::pin(self.connect_h1(timeouts.connect)).await {
                Ok(sender) => sender,
                Err(error) => return Err(unsent(error, request)),
            },
        };
        let replay = if upgrade {
            None
        } else {
            retry::replay_copy(&request)
        };
        match sender.try_send_request(request).await {
            Ok(response) => {
                if !upgrade && response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    // What the fast path answers too: a protocol switch
                    // nobody asked for cannot be passed on.
                    return Err(Failed {
                        error: UpstreamError::Protocol {
                            addr: self.addr,
                            cause: "101 Switching Protocols to a request that asked for no upgrade"
                                .to_string(),
                        },
                        delivery: Delivery::Partial,
                        request: None,
                        reused,
                    });
                }
                // Both framings on one head may be a response split in two:
                // whatever follows this body on the connection is not to be
                // trusted as the answer to another request (RFC 9112 §6.1).
                // hyper would keep it; dropping the sender closes it once
                // this body is read.
                let split = response
                    .headers()
                    .contains_key(http::header::TRANSFER_ENCODING)
                    && response
                        .headers()
                        .contains_key(http::header::CONTENT_LENGTH);
                if !upgrade && !split {
                    lease.connection = Some(Pooled::Hyper(sender));
                }
                Ok((response.map(ResponseBody::Hyper), lease))
            }
            Err(mut failed) => {
                let given_back = failed.take_message();
                let unsent = given_back.is_some();
                Err(self.hyper_failed(failed.error(), given_back.or(replay), unsent, reused))
            }
        }
    }

    /// An idle hyper connection that is open and ready, if the pool has one.
    async fn take_ready_h1(&self, max_idle: Duration) -> Option<http1::SendRequest<RequestBody>> {
        while let Some(mut sender) = self.hyper_h1.take(max_idle) {
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
        None
    }

    /// hyper's HTTP/2 client, over the one connection the endpoint's
    /// requests share. A shared connection found dead counts as a pooled
    /// connection that died while idle.
    async fn send_h2(
        &self,
        request: Request<RequestBody>,
        timeouts: &Timeouts,
        lease: Lease,
    ) -> Result<(Response<ResponseBody>, Lease), Failed> {
        let (mut sender, reused) = match self.h2.get() {
            Some(sender) => (sender, true),
            // Boxed, as in `send_h1`: the h2 handshake's future is 6 KiB.
            None => match Box::pin(self.connect_h2(timeouts.connect)).await {
                Ok(sender) => {
                    self.h2.set(&sender);
                    lease.endpoint.list_for_sweep();
                    (sender, false)
                }
                Err(error) => return Err(unsent(error, request)),
            },
        };
        if let Err(err) = sender.ready().await {
            self.h2.clear();
            return Err(self.hyper_failed(&err, Some(request), true, reused));
        }
        match sender.try_send_request(request).await {
            Ok(response) => Ok((response.map(ResponseBody::Hyper), lease)),
            Err(mut failed) => {
                let given_back = failed.take_message();
                let unsent = given_back.is_some();
                Err(self.hyper_failed(failed.error(), given_back, unsent, reused))
            }
        }
    }

    /// A failed exchange on one of hyper's connections, classified.
    fn hyper_failed(
        &self,
        err: &hyper::Error,
        request: Option<Request<RequestBody>>,
        unsent: bool,
        reused: bool,
    ) -> Failed {
        let (error, delivery) = UpstreamError::from_hyper_send(self.addr, err, unsent);
        match self.explain(error, !reused) {
            // The endpoint refused the TLS session: it read none of it.
            error @ UpstreamError::Tls { .. } => Failed {
                error,
                delivery: Delivery::Unsent,
                request,
                reused,
            },
            error => Failed {
                error,
                delivery,
                request,
                reused,
            },
        }
    }

    /// Closes the idle connections the upstream has closed or that waited
    /// past their idle limit (`pool`); run in the background.
    pub(crate) fn sweep(&self) {
        self.direct.sweep();
        self.hyper_h1.sweep();
        self.h2.sweep();
    }

    /// Half the shorter idle limit requests asked for, between 250 ms and
    /// 5 s: a connection waits at most half its limit longer than it may.
    /// Every second until a request has told the limit.
    fn sweep_every(&self) -> Duration {
        const MIN: Duration = Duration::from_millis(250);
        const MAX: Duration = Duration::from_secs(5);
        let shortest = match (self.direct.limit(), self.hyper_h1.limit()) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(Duration::from_secs(2)),
        };
        (shortest / 2).clamp(MIN, MAX)
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

/// The one task that closes the idle connections of a registry's endpoints
/// in the background (an endpoint that gets no more requests, such as a
/// version at weight 0 after a rollback, would otherwise keep its sockets
/// forever, half-closed by the upstream). Only endpoints holding idle
/// connections are on its list, each swept at its own pace
/// (`Endpoint::sweep_every`): thousands of endpoints that never took a
/// request cost it nothing, and with no connection waiting anywhere it
/// sleeps until one is pooled. The list holds weak references: it keeps no
/// endpoint alive, and the task ends when the registry and every endpoint
/// are gone.
#[derive(Debug)]
pub struct Sweeper {
    joins: mpsc::UnboundedSender<Weak<Endpoint>>,
}

impl Sweeper {
    /// Starts the sweeper on the current runtime; `None` outside one (a
    /// benchmark building endpoints by hand).
    pub(crate) fn start() -> Option<Sweeper> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (joins, joined) = mpsc::unbounded_channel();
        runtime.spawn(sweep_listed(joined));
        Some(Sweeper { joins })
    }
}

async fn sweep_listed(mut joined: mpsc::UnboundedReceiver<Weak<Endpoint>>) {
    const TICK: Duration = Duration::from_millis(250);
    // Each listed endpoint with when it is next due.
    let mut listed: Vec<(Weak<Endpoint>, tokio::time::Instant)> = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if listed.is_empty() {
            // Nothing to sweep: no wake-up until a connection is pooled.
            match joined.recv().await {
                Some(endpoint) => listed.push(due(endpoint)),
                None => return,
            }
            tick.reset();
            continue;
        }
        tokio::select! {
            endpoint = joined.recv() => match endpoint {
                Some(endpoint) => listed.push(due(endpoint)),
                None => return,
            },
            _ = tick.tick() => {
                let now = tokio::time::Instant::now();
                listed.retain_mut(|(weak, next)| {
                    let Some(endpoint) = weak.upgrade() else {
                        return false;
                    };
                    if now < *next {
                        return true;
                    }
                    endpoint.sweep();
                    *next = now + endpoint.sweep_every();
                    if endpoint.holds_idle() {
                        return true;
                    }
                    // Off the list; but a connection pooled meanwhile found
                    // it still listed and did not list it again: keep it,
                    // unless that pooling listed it anew.
                    endpoint.swept.store(false, Ordering::Release);
                    endpoint.holds_idle() && !endpoint.swept.swap(true, Ordering::AcqRel)
                });
            }
        }
    }
}

fn due(endpoint: Weak<Endpoint>) -> (Weak<Endpoint>, tokio::time::Instant) {
    let every = endpoint
        .upgrade()
        .map_or(Duration::ZERO, |e| e.sweep_every());
    (endpoint, tokio::time::Instant::now() + every)
}

/// A failure before anything was written: the request goes back whole.
fn unsent(error: UpstreamError, request: Request<RequestBody>) -> Failed {
    Failed {
        error,
        delivery: Delivery::Unsent,
        request: Some(request),
        reused: false,
    }
}

impl Lease {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Called when a fast-path response body ended: its connection, if it
    /// can serve another request, goes back to the pool with the lease.
    pub fn release_direct(&mut self, connection: Option<Box<h1::Connection>>) {
        if let Some(connection) = connection {
            self.connection = Some(Pooled::Direct(connection));
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
        match self.connection.take() {
            Some(Pooled::Direct(connection)) => {
                self.endpoint.direct.put(connection);
                self.endpoint.list_for_sweep();
            }
            // hyper's connection task knows at once when the upstream
            // closed; the fast path's socket is asked when next taken.
            Some(Pooled::Hyper(sender)) if !sender.is_closed() => {
                self.endpoint.hyper_h1.put(sender);
                self.endpoint.list_for_sweep();
            }
            _ => {}
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
            .field("idle", &(self.direct.len() + self.hyper_h1.len()))
            .finish()
    }
}
