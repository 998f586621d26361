//! The set of bound listeners, changed by reloads: new addresses are bound
//! before any old one closes, and if one cannot be bound the whole change is
//! refused and nothing closes. A listener is identified by its address:
//! renaming it keeps the socket, and so does changing its `tls` block (the new
//! TLS settings are loaded first, then swapped in for new connections).
//!
//! Every connection holds a permit of one semaphore, which is both the cap on
//! open connections and the drain's counter: the drain is over when every
//! permit is back. A TLS handshake runs in the connection's own task, under
//! its permit, bounded by `limits.header_read_timeout`.

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use crossbeam_utils::atomic::AtomicCell;
use http::{Request, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::ReadBuf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use super::idle::{IdleClock, InFlight, Tracked};
use super::park::{self, leftover, ParkingLot, Readable, Resumable};
use super::woken::PollWhenWoken;
use super::StartError;
use crate::config::{Limits, Listener};
use crate::proxy::{ClientInfo, ProxyBody, ProxyService, RequestTimer};
use crate::telemetry::operator::{ListenerGauges, OpenConnection};
use crate::telemetry::Telemetry;
use crate::tls::server::Terminator;

mod streams;
#[cfg(feature = "io-uring")]
mod uring;

/// A listener's TLS, swapped by reloads; `None` for cleartext. Read once
/// per accepted connection.
type SharedTls = Arc<ArcSwapOption<Terminator>>;

pub struct ListenerSet {
    service: ProxyService,
    telemetry: Arc<Telemetry>,
    builder: Arc<Builders>,
    connections: Arc<Semaphore>,
    max_connections: u32,
    first_request_timeout: Duration,
    /// Changes to `true` when every connection must wind down.
    drain: Arc<Drain>,
    /// Touched only by reloads and shutdown, never per request.
    active: Mutex<Vec<Active>>,
    /// Set, under the `active` lock, once the drain has begun.
    closed: AtomicBool,
    /// Cleartext listeners accept through io_uring when veer runs on a
    /// tokio-uring runtime (`VEER_IO=uring`).
    #[cfg(feature = "io-uring")]
    uring: Option<super::uring::Spawner>,
}

struct Active {
    settings: Listener,
    tls: SharedTls,
    bound: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ListenerSet {
    /// Binds every listener or none.
    pub fn start(
        listeners: &[Listener],
        limits: &Limits,
        service: ProxyService,
        telemetry: Arc<Telemetry>,
    ) -> Result<ListenerSet, StartError> {
        let max_connections = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
        let set = ListenerSet {
            service,
            telemetry,
            builder: Arc::new(connection_builder(limits)),
            connections: Arc::new(Semaphore::new(max_connections as usize)),
            max_connections,
            first_request_timeout: limits.header_read_timeout,
            drain: Arc::default(),
            active: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            #[cfg(feature = "io-uring")]
            uring: super::uring::Spawner::here(),
        };
        set.reconcile(listeners)?;
        let drain = Arc::downgrade(&set.drain);
        tokio::spawn(park::run(
            Arc::downgrade(&set.drain.parked),
            move |idle: Idle| {
                if let Some(drain) = drain.upgrade() {
                    tokio::spawn(resume(idle, drain));
                }
            },
        ));
        Ok(set)
    }

    /// Makes the bound listeners match `wanted`: loads new TLS settings and
    /// binds the new listeners first, then swaps TLS settings in and closes
    /// the listeners no longer wanted. On any failure nothing changes.
    pub fn reconcile(&self, wanted: &[Listener]) -> Result<(), StartError> {
        let mut active = self.lock();
        // A reload that races with shutdown must not open a listener the
        // drain no longer knows about: its accept loop would hold a
        // connection permit, and the drain would wait for it to the end.
        if self.closed.load(Ordering::Relaxed) {
            tracing::info!("shutting down: listener changes are ignored");
            return Ok(());
        }
        // Port 0 asks for any free port, so only the name tells it is the same.
        let same_socket = |a: &Listener, b: &Listener| {
            a.address == b.address && (a.address.port() != 0 || a.name == b.name)
        };
        let mut fresh = Vec::new();
        // (index into `active`, its new TLS) for kept listeners whose TLS changed.
        let mut swaps = Vec::new();
        for listener in wanted {
            match active
                .iter()
                .position(|a| same_socket(&a.settings, listener))
            {
                Some(kept) if active[kept].settings.tls == listener.tls => {}
                Some(kept) => swaps.push((kept, self.terminator(listener)?)),
                None => {
                    let tls = self.terminator(listener)?;
                    fresh.push((listener.clone(), bind(listener)?, tls));
                }
            }
        }
        // Everything new is loaded and bound: now it is safe to change.
        for (kept, tls) in swaps {
            tracing::info!(listener = %active[kept].settings.name, "TLS settings changed; new connections use them");
            active[kept].tls.store(tls.map(Arc::new));
        }
        active.retain_mut(|a| match wanted.iter().find(|w| same_socket(&a.settings, w)) {
            Some(w) => {
                a.settings = w.clone();
                true
            }
            None => {
                tracing::info!(listener = %a.settings.name, address = %a.bound, "closing listener");
                let _ = a.stop.send(true);
                false
            }
        });
        for (settings, listener, tls) in fresh {
            let bound = listener.local_addr().map_err(|cause| StartError::Bind {
                listener: settings.name.clone(),
                address: settings.address,
                cause,
            })?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            tracing::info!(listener = %settings.name, address = %bound, scheme, "listening");
            let tls: SharedTls = Arc::new(ArcSwapOption::new(tls.map(Arc::new)));
            let (stop, stopped) = watch::channel(false);
            let task = self.spawn_accept(
                listener,
                Arc::new(ConnectionSetup {
                    gauges: self.telemetry.operator().listener(&settings.name),
                    service: self.service.clone(),
                    builder: Arc::clone(&self.builder),
                    tls: Arc::clone(&tls),
                    first_request_timeout: self.first_request_timeout,
                    drain: Arc::downgrade(&self.drain),
                }),
                Arc::clone(&self.connections),
                Arc::clone(&self.drain),
                stopped,
            );
            active.push(Active {
                settings,
                tls,
                bound,
                stop,
                task,
            });
        }
        Ok(())
    }

    /// Starts a listener's accept loop: through io_uring on a tokio-uring
    /// runtime for a cleartext listener, with epoll otherwise.
    fn spawn_accept(
        &self,
        listener: TcpListener,
        setup: Arc<ConnectionSetup>,
        connections: Arc<Semaphore>,
        drain: Arc<Drain>,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        #[cfg(feature = "io-uring")]
        if let (Some(spawner), None) = (&self.uring, &*setup.tls.load()) {
            return uring::spawn_accept(spawner, listener, setup, connections, drain, stop);
        }
        tokio::spawn(accept(listener, setup, connections, drain, stop))
    }

    /// The TLS of `listener`, loaded from its files; `None` for cleartext.
    fn terminator(&self, listener: &Listener) -> Result<Option<Terminator>, StartError> {
        listener
            .tls
            .as_ref()
            .map(|tls| {
                Terminator::new(&listener.name, tls, &self.telemetry).map_err(|cause| {
                    StartError::Tls {
                        listener: listener.name.clone(),
                        cause: cause.to_string(),
                    }
                })
            })
            .transpose()
    }

    /// Every listener's name and bound address, in config order.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.lock()
            .iter()
            .map(|a| (a.settings.name.clone(), a.bound))
            .collect()
    }

    /// Closes every listener, then asks every connection to finish its
    /// in-flight requests and waits up to `timeout` for them. Returns whether
    /// all connections finished.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let tasks: Vec<JoinHandle<()>> = {
            let mut active = self.lock();
            self.closed.store(true, Ordering::Relaxed);
            active
                .drain(..)
                .map(|a| {
                    let _ = a.stop.send(true);
                    a.task
                })
                .collect()
        };
        for task in tasks {
            let _ = task.await;
        }
        let open = self.max_connections as usize - self.connections.available_permits();
        tracing::info!(connections = open, "draining");
        self.drain.start();
        let all_back = self.connections.acquire_many(self.max_connections);
        matches!(tokio::time::timeout(timeout, all_back).await, Ok(Ok(_)))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) fn bind(listener: &Listener) -> Result<TcpListener, StartError> {
    let fail = |cause| StartError::Bind {
        listener: listener.name.clone(),
        address: listener.address,
        cause,
    };
    let domain = socket2::Domain::for_address(listener.address);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&listener.address.into()).map_err(fail)?;
    socket.listen(4096).map_err(fail)?;
    TcpListener::from_std(socket.into()).map_err(fail)
}

/// How a connection is served, once its protocol is known.
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<streams::InConnection>,
}

fn connection_builder(limits: &Limits) -> Builders {
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        // The connection's own IdleClock does this, without a timer per
        // request (see `idle.rs`).
        .header_read_timeout(None)
        // hyper answers 431 when the head does not fit; it needs at least 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8 * 1024));
    let mut http2 = http2::Builder::new(streams::InConnection);
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // No HTTP/2 PINGs: hyper's keep-alive takes a lock and reads the
        // clock for every frame received and every poll of the connection.
        // A dead client is found by TCP keep-alive instead (`connection`),
        // as NGINX and Envoy do by default.
        .keep_alive_interval(None);
    Builders { http1, http2 }
}

/// Tells every connection to wind down. A connection waits on it holding
/// one waiter (a watch channel's receiver and its future were twice that,
/// in every idle connection).
#[derive(Default)]
struct Drain {
    draining: AtomicBool,
    notify: Notify,
    /// Where parked connections wait, for it and for their idle deadline.
    parked: Arc<ParkingLot<Idle>>,
}

impl Drain {
    fn start(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        self.parked.drain();
    }

    async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before the flag is read: a drain that starts in
        // between wakes it.
        notified.as_mut().enable();
        if self.draining.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}

/// TCP keep-alive on client connections: probes after this much silence,
const CLIENT_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// this far apart,
const CLIENT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// and the connection is dropped after this many unanswered.
const CLIENT_KEEPALIVE_PROBES: u32 = 3;

/// What a listener's accept loop hands every connection it accepts.
struct ConnectionSetup {
    /// This listener's open connections and requests in flight.
    gauges: Arc<ListenerGauges>,
    service: ProxyService,
    builder: Arc<Builders>,
    tls: SharedTls,
    /// Bounds the TLS handshake, and then the wait for the first request.
    first_request_timeout: Duration,
    /// Where a parked HTTP/2 connection closed by the lot is served its
    /// GOAWAY (weak: the lot holds the parked connections, which hold this).
    drain: Weak<Drain>,
}

/// What every request on one connection needs, behind one `Arc`.
struct ConnectionContext {
    service: ProxyService,
    client: ClientInfo,
    /// How long the connection has waited for a request head.
    idle: IdleClock,
    /// The connection's request-timeout timer, lent to one request at a time
    /// and reset for each (see `ProxyService::serve`); HTTP/2 streams that
    /// find it lent out make their own. One word, where a queue of one was
    /// two cache lines: every idle connection holds it.
    request_timer: AtomicCell<Option<RequestTimer>>,
}

impl AsRef<IdleClock> for ConnectionContext {
    fn as_ref(&self) -> &IdleClock {
        &self.idle
    }
}

/// A permit for one more client connection, or `None` once the listener is
/// stopped (a reload removed it, or the drain began) or the proxy closes the
/// semaphore.
async fn connection_permit(
    connections: &Arc<Semaphore>,
    stop: &mut watch::Receiver<bool>,
) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        permit = Arc::clone(connections).acquire_owned() => permit.ok(),
        _ = stop.changed() => None,
    }
}

async fn accept(
    listener: TcpListener,
    setup: Arc<ConnectionSetup>,
    connections: Arc<Semaphore>,
    drain: Arc<Drain>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let Some(permit) = connection_permit(&connections, &mut stop).await else {
            return;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Out of file descriptors or similar: back off instead of
                // spinning; the connection waits in the backlog.
                tracing::warn!(error = %err, "accept failed; retrying in 50ms");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The handshake, if any, is the connection task's: a slow client
        // must not hold up the accept loop.
        tokio::spawn(connection(
            stream,
            peer,
            Arc::clone(&setup),
            Arc::clone(&drain),
            permit,
        ));
    }
}

/// One accepted connection: the TLS handshake when the listener has TLS, then
/// HTTP until the client leaves or the drain ends it.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    setup: Arc<ConnectionSetup>,
    drain: Arc<Drain>,
    permit: OwnedSemaphorePermit,
) {
    let held = Held {
        _permit: permit,
        _open: OpenConnection::open(Arc::clone(&setup.gauges)),
    };
    let _ = stream.set_nodelay(true);
    // A client that vanished (host down, cable cut) without closing is found
    // by the kernel in about a minute, at no cost per request.
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(CLIENT_KEEPALIVE_IDLE)
            .with_interval(CLIENT_KEEPALIVE_INTERVAL)
            .with_retries(CLIENT_KEEPALIVE_PROBES),
    );
    let Some(tls) = setup.tls.load_full() else {
        let parts = Parts {
            prefix: Bytes::new(),
            protocol: None,
            client: Client::Peer(peer),
            idle_since: Instant::now(),
            h2: None,
            setup,
            _held: held,
        };
        serve(stream, parts, drain).await;
        return;
    };
    // Boxed: the handshake's and the TLS stream's state would otherwise make
    // every connection's task, cleartext ones too, as large as a TLS one's.
    Box::pin(tls_connection(stream, peer, setup, drain, tls, held)).await;
}

async fn tls_connection(
    stream: TcpStream,
    peer: SocketAddr,
    setup: Arc<ConnectionSetup>,
    drain: Arc<Drain>,
    tls: Arc<Terminator>,
    held: Held,
) {
    let Some(accepted) = tls.accept(stream, setup.first_request_timeout).await else {
        return;
    };
    let mut client = ClientInfo::new(peer, true);
    if let Some(header) = tls.identity_header() {
        client = client.with_identity(header.clone(), accepted.identity);
    }
    // The connection keeps the settings it was accepted with, not the
    // terminator (which holds the certificate watches).
    drop(tls);
    let protocol = match accepted.stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Some(Protocol::Http2),
        Some(_) => Some(Protocol::Http1),
        None => None,
    };
    let parts = Parts {
        prefix: Bytes::new(),
        protocol,
        client: Client::Known(Box::new(client)),
        idle_since: Instant::now(),
        h2: None,
        setup,
        _held: held,
    };
    serve(Box::new(accepted.stream), parts, drain).await;
}

/// The HTTP/2 connection preface: a cleartext connection that opens with it
/// speaks HTTP/2 with prior knowledge, any other is HTTP/1.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Why a connection is ended from outside its HTTP.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// No request head within `limits.header_read_timeout`.
    Expired,
    Drained,
}

/// How a served HTTP/1.1 connection stopped being polled.
enum Step {
    Ended(hyper::Result<()>),
    /// Between requests with nothing buffered: back to a bare socket.
    Park,
    Expired,
    Drained,
}

/// Who the client is, kept while a connection is parked. A cleartext
/// client's `ClientInfo` is built again from its address when it resumes
/// (its IP header value is an allocation of its own); a TLS client's, with
/// its certificate identity, is kept whole.
enum Client {
    Peer(SocketAddr),
    Known(Box<ClientInfo>),
}

impl Client {
    fn info(&self) -> ClientInfo {
        match self {
            Client::Peer(peer) => ClientInfo::new(*peer, false),
            Client::Known(info) => ClientInfo::clone(info),
        }
    }
}

const SILENT: &str =
    "closing a connection that sent no request head within limits.header_read_timeout";

/// Serves HTTP on `io` until the client leaves, the idle clock runs out or
/// the drain ends it, or until it is parked: then its task ends, and the
/// parking lot starts a new one (`resume`) when bytes arrive.
///
/// Each spell of serving is a boxed future of its own, dropped at the park.
async fn serve<I: StreamKind>(mut io: I, mut parts: Parts, drain: Arc<Drain>) {
    loop {
        let protocol = match parts.protocol {
            Some(protocol) => protocol,
            None => match detect(&mut io, &mut parts.prefix).await {
                Detected::Protocol(protocol) => {
                    parts.protocol = Some(protocol);
                    protocol
                }
                Detected::Gone => return,
                Detected::Blocked => {
                    // A client that connects and waits: give it `PARK_AFTER`
                    // here, so a connection whose head follows at once (the
                    // common case) does not go through the lot.
                    let readable = std::future::poll_fn(|cx| io.poll_readable(cx));
                    if tokio::time::timeout(PARK_AFTER, readable).await.is_ok() {
                        continue;
                    }
                    match park_or_resume(io, parts, &drain) {
                        Some((back, resumed)) => (io, parts) = (back, resumed),
                        None => return,
                    }
                    continue;
                }
            },
        };
        let from = Parked {
            io,
            prefix: std::mem::take(&mut parts.prefix),
            idle_since: parts.idle_since,
            h2: parts.h2.take(),
        };
        let spell = Box::pin(serve_spell(
            from,
            protocol,
            &parts.setup,
            &parts.client,
            &drain,
        ))
        .await;
        let Some(parked) = spell else { return };
        (parts.prefix, parts.idle_since, parts.h2) = (parked.prefix, parked.idle_since, parked.h2);
        match park_or_resume(parked.io, parts, &drain) {
            Some((back, resumed)) => (io, parts) = (back, resumed),
            None => return,
        }
    }
}

/// Moves an idle connection into the parking lot; hands it back when its
/// socket is readable already.
fn park_or_resume<I: StreamKind>(io: I, parts: Parts, drain: &Drain) -> Option<(I, Parts)> {
    let deadline = parts.idle_since + parts.setup.first_request_timeout;
    let idle = Idle {
        stream: io.into_stream(),
        parts,
    };
    let idle = drain.parked.park(idle, deadline)?;
    Some((I::from_stream(idle.stream)?, idle.parts))
}

/// A parked connection whose socket became readable, on a task of its own.
async fn resume(idle: Idle, drain: Arc<Drain>) {
    match idle.stream {
        Stream::Plain(io) => serve(io, idle.parts, drain).await,
        Stream::Tls(io) => serve(io, idle.parts, drain).await,
    }
}

/// What a cleartext connection's first bytes said.
enum Detected {
    Protocol(Protocol),
    /// Not enough bytes yet to tell; the read would block.
    Blocked,
    /// The client left.
    Gone,
}

/// Reads a cleartext connection's first bytes to tell HTTP/2 with prior
/// knowledge from HTTP/1. `seen` holds the bytes read so far (the start of
/// the preface, when it was parked before it could tell) and, on return,
/// all the bytes read.
async fn detect<I: Readable>(io: &mut I, seen: &mut Bytes) -> Detected {
    let mut head = [0u8; PREFACE.len()];
    let mut n = seen.len().min(PREFACE.len());
    head[..n].copy_from_slice(&seen[..n]);
    loop {
        // `None` when the read would block.
        let read = std::future::poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut head[n..]);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Ready(read) => Poll::Ready(Some(read.map(|()| buf.filled().len()))),
                Poll::Pending => Poll::Ready(None),
            }
        })
        .await;
        match read {
            None => {
                *seen = Bytes::copy_from_slice(&head[..n]);
                return Detected::Blocked;
            }
            Some(Ok(0) | Err(_)) => return Detected::Gone,
            Some(Ok(read)) => n += read,
        }
        if head[..n] != PREFACE[..n] {
            *seen = Bytes::copy_from_slice(&head[..n]);
            return Detected::Protocol(Protocol::Http1);
        }
        if n == PREFACE.len() {
            // The preface is known: no copy for every HTTP/2 connection to
            // hold.
            *seen = Bytes::from_static(PREFACE);
            return Detected::Protocol(Protocol::Http2);
        }
    }
}

/// What keeps a connection counted while it is open, parked or not: its
/// permit of the connection cap (which the drain counts) and its place in
/// the listener's open-connections gauge.
struct Held {
    _permit: OwnedSemaphorePermit,
    _open: OpenConnection,
}

/// A connection, but for its stream: what it takes to serve it again.
struct Parts {
    /// Bytes read and not yet parsed: a partial head, or the start of the
    /// HTTP/2 preface before the protocol is known.
    prefix: Bytes,
    /// `None` until the first bytes of a cleartext connection tell.
    protocol: Option<Protocol>,
    client: Client,
    /// When its last response ended (or it was accepted).
    idle_since: Instant,
    /// A parked HTTP/2 connection's state (HPACK tables, settings, windows,
    /// stream ids): what it is resumed from, without a handshake.
    h2: Option<Box<http2::Parked>>,
    setup: Arc<ConnectionSetup>,
    _held: Held,
}

/// A connection's stream while it is parked.
enum Stream {
    Plain(TcpStream),
    /// Boxed, so a cleartext slot is not as large as a TLS one.
    Tls(Box<TlsStream<TcpStream>>),
}

/// A stream that can wait in the parking lot.
trait StreamKind: Readable {
    fn into_stream(self) -> Stream;
    /// `None` when it is the other kind, which `serve` never parks and
    /// takes back as.
    fn from_stream(stream: Stream) -> Option<Self>
    where
        Self: Sized;
}

impl StreamKind for TcpStream {
    fn into_stream(self) -> Stream {
        Stream::Plain(self)
    }

    fn from_stream(stream: Stream) -> Option<TcpStream> {
        match stream {
            Stream::Plain(io) => Some(io),
            Stream::Tls(_) => None,
        }
    }
}

impl StreamKind for Box<TlsStream<TcpStream>> {
    fn into_stream(self) -> Stream {
        Stream::Tls(self)
    }

    fn from_stream(stream: Stream) -> Option<Box<TlsStream<TcpStream>>> {
        match stream {
            Stream::Tls(io) => Some(io),
            Stream::Plain(_) => None,
        }
    }
}

/// An idle connection in the parking lot.
struct Idle {
    stream: Stream,
    parts: Parts,
}

impl park::Parkable for Idle {
    fn poll_readable(&self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        match &self.stream {
            Stream::Plain(io) => io.poll_readable(cx),
            Stream::Tls(io) => io.poll_readable(cx),
        }
    }

    fn expire(self) {
        tracing::debug!("{SILENT}");
        self.close();
    }

    /// An HTTP/2 connection is resumed to be sent GOAWAY, so its client
    /// opens a new connection for its next request rather than see it fail.
    /// It is resumed as any woken connection is, with its real service: the
    /// spell finds its idle deadline passed or the drain begun, sends
    /// GOAWAY, and serves a request that raced it. Its hold on the
    /// connection count lasts until then, so the drain waits for it.
    fn close(self) {
        if self.parts.h2.is_none() {
            return;
        }
        if let Some(drain) = self.parts.setup.drain.upgrade() {
            tokio::spawn(resume(self, drain));
        }
    }
}

/// A connection between two spells of serving (parked, or about to be):
/// what it takes to serve it again.
struct Parked<I> {
    io: I,
    /// Bytes read and not yet parsed: a partial head.
    prefix: Bytes,
    /// When its last response ended (or it was accepted).
    idle_since: Instant,
    /// An HTTP/2 connection's state.
    h2: Option<Box<http2::Parked>>,
}

/// One spell of serving: from the first bytes (or a resume) to the
/// connection's end, or to the point where it is parked.
async fn serve_spell<I: Readable>(
    from: Parked<I>,
    protocol: Protocol,
    setup: &ConnectionSetup,
    client: &Client,
    drain: &Arc<Drain>,
) -> Option<Parked<I>> {
    let Parked {
        io,
        prefix,
        idle_since,
        h2,
    } = from;
    let context = Arc::new(ConnectionContext {
        service: setup.service.clone(),
        client: client.info(),
        idle: IdleClock::since(
            idle_since,
            setup.first_request_timeout,
            Arc::clone(&setup.gauges),
        ),
        request_timer: AtomicCell::new(None),
    });
    if !prefix.is_empty() && protocol == Protocol::Http1 {
        // A partial head is parked once; until it is whole, the next
        // connection keeps it, so a head trickled a byte at a time is not
        // copied out and back for each byte.
        context.idle.set_parkable(false);
    }
    let requests = {
        let context = Arc::clone(&context);
        service_fn(move |request: Request<Incoming>| {
            let context = InFlight::start(Arc::clone(&context));
            match request.version() {
                Version::HTTP_11 => context.idle.set_parkable(
                    request.body().is_end_stream()
                        && request.extensions().get::<OnUpgrade>().is_none()
                        && !asks_to_close(request.headers()),
                ),
                Version::HTTP_10 => context.idle.set_parkable(false),
                _ => {}
            }
            // Boxed: the future is a few KiB, and hyper's HTTP/2 server spawns
            // each stream's future as a task, which moved it twice (callgrind:
            // 9,600 instructions of memcpy per h2 request before this).
            Box::pin(serve_request(context, request))
        })
    };
    // Polled only when it fires, not on every wake-up of the connection;
    // one future for both, as every idle connection holds it.
    let watched = Arc::clone(&context);
    let drain = Arc::clone(drain);
    let mut ending = PollWhenWoken::new(async move {
        tokio::select! {
            _ = watched.idle.expired() => Ending::Expired,
            () = drain.wait() => Ending::Drained,
        }
    });
    if protocol == Protocol::Http2 {
        let io = TokioIo::new(Resumable::new(prefix, io, Arc::clone(&context)));
        let http2 = &setup.builder.http2;
        let limit = context.idle.limit();
        // Boxed, as every state the task may be in sizes it: an idle
        // HTTP/1.1 connection's task must not be as large as this.
        return Box::pin(async move {
            // Made in here rather than captured: a captured connection and
            // its pinned copy would both size this future (1.1 KiB each,
            // held by every idle HTTP/2 connection).
            let connection = match h2 {
                Some(parked) => match http2.resume(io, *parked, requests) {
                    Ok(connection) => connection,
                    Err(err) => {
                        tracing::debug!(error = %err, "a parked HTTP/2 connection could not resume");
                        return None;
                    }
                },
                None => http2.serve_connection(io, requests),
            };
            let mut connection = streams::Multiplexed::new(connection);
            // After a park refused (h2 had something in progress that the
            // idle clock does not see, such as a SETTINGS frame to
            // acknowledge), the next try waits another `PARK_AFTER`.
            let mut retry = None;
            let result = loop {
                let (step, back) = drive(connection, &context.idle, &mut ending, retry).await;
                connection = back;
                match step {
                    Step::Park => {
                        // Only with no stream (or tunnel) left running.
                        let refused = match connection.into_connection() {
                            Ok(inner) => match inner.park() {
                                Ok((io, parked, _service)) => {
                                    let (unread, io) = io.into_inner().into_parts();
                                    return Some(Parked {
                                        io,
                                        prefix: unread,
                                        idle_since: context.idle.idle_since(),
                                        h2: Some(Box::new(parked)),
                                    });
                                }
                                Err(back) => streams::Multiplexed::new(back),
                            },
                            Err(back) => back,
                        };
                        connection = refused;
                        retry = Some(Instant::now() + PARK_AFTER);
                    }
                    Step::Ended(result) => break result,
                    Step::Expired => {
                        // GOAWAY, so the client knows to open a new
                        // connection rather than see its next stream fail;
                        // then finish the open streams.
                        tracing::debug!("{SILENT}");
                        Pin::new(connection.connection()).graceful_shutdown();
                        // Bounded: a client that never reads would hold it.
                        let _ = tokio::time::timeout(limit, &mut connection).await;
                        break Ok(());
                    }
                    Step::Drained => {
                        Pin::new(connection.connection()).graceful_shutdown();
                        break connection.await;
                    }
                }
            };
            if let Err(err) = result {
                tracing::debug!(error = %err, "client connection ended with an error");
            }
            None
        })
        .await;
    }

    // Boxed too, so that an HTTP/2 connection's spell (which lives as long
    // as the connection, idle or not) is not sized by HTTP/1.1's state.
    Box::pin(async move {
        let resumable = TokioIo::new(Resumable::new(prefix, io, Arc::clone(&context)));
        let connection = setup
            .builder
            .http1
            .serve_connection(resumable, requests)
            .with_upgrades();
        let (step, connection) = drive(connection, &context.idle, &mut ending, None).await;
        let result = match step {
            Step::Park => {
                // `None` only after an upgrade, which never parks.
                let parts = connection.into_parts()?;
                let (unread, io) = parts.io.into_inner().into_parts();
                return Some(Parked {
                    io,
                    prefix: leftover(unread, parts.read_buf),
                    idle_since: context.idle.idle_since(),
                    h2: None,
                });
            }
            Step::Ended(result) => result,
            Step::Expired => {
                tracing::debug!("{SILENT}");
                Ok(())
            }
            Step::Drained => {
                // Finish the request in flight, then close.
                let mut connection = Box::pin(connection);
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(err) = result {
            tracing::debug!(error = %err, "client connection ended with an error");
        }
        None
    })
    .await
}

/// One request through the proxy, on the connection's reused request timer;
/// the response's body keeps the request counted as in flight until it ends.
async fn serve_request(
    context: InFlight<ConnectionContext>,
    request: Request<Incoming>,
) -> Result<http::Response<Tracked<ProxyBody, ConnectionContext>>, std::convert::Infallible> {
    let mut timer = context.request_timer.take();
    let response = context
        .service
        .serve(request, &context.client, &mut timer)
        .await;
    if timer.is_some() {
        context.request_timer.store(timer);
    }
    response.map(|response| response.map(|body| Tracked::new(body, context)))
}

/// How long an HTTP/1.1 connection must have had nothing to do before it
/// is parked. Taking hyper's connection apart and building it again costs
/// about a fifth of a request's instructions (callgrind: 31,500 per request
/// parking at every idle point, 26,300 without); a client that sends its
/// next request sooner than this (a busy keep-alive client) never pays it.
const PARK_AFTER: Duration = Duration::from_millis(50);

/// Polls a connection until it ends, has been idle for `PARK_AFTER` (and
/// until `retry`, when given) and may be parked (see `park`), or is ended
/// from outside; hands it back for the caller to take apart.
async fn drive<C, E>(
    mut connection: C,
    idle: &IdleClock,
    ending: &mut PollWhenWoken<E>,
    retry: Option<Instant>,
) -> (Step, C)
where
    C: std::future::Future<Output = hyper::Result<()>> + Unpin,
    E: std::future::Future<Output = Ending>,
{
    // One timer for the connection's whole active spell, registered when it
    // first goes idle and pushed forward after each response: pushing a
    // registered timer later is one atomic update, not a timer-wheel move.
    let quiet = tokio::time::sleep(PARK_AFTER);
    tokio::pin!(quiet);
    let step = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = Pin::new(&mut connection).poll(cx) {
            return Poll::Ready(Step::Ended(result));
        }
        // Before the park: a connection resumed by the lot to be sent its
        // GOAWAY (deadline passed, drain begun) has been quiet long enough
        // to park again, and must not go back.
        if let Poll::Ready(ending) = Pin::new(&mut *ending).poll(cx) {
            return Poll::Ready(match ending {
                Ending::Expired => Step::Expired,
                Ending::Drained => Step::Drained,
            });
        }
        if idle.may_park() {
            let at = idle.idle_since() + PARK_AFTER;
            let at = retry.map_or(at, |retry| at.max(retry));
            if quiet.deadline() != at {
                quiet.as_mut().reset(at);
            }
            if quiet.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::Park);
            }
        }
        Poll::Pending
    })
    .await;
    (step, connection)
}

/// Whether a request's `Connection` header says `close`: hyper closes after
/// its response, so the connection must not be parked in between.
fn asks_to_close(headers: &http::HeaderMap) -> bool {
    crate::connection_header::names(headers, b"close")
}

impl crate::reload::Listeners for ListenerSet {
    fn reconcile(&self, wanted: &[Listener]) -> Result<(), String> {
        ListenerSet::reconcile(self, wanted).map_err(|e| e.to_string())
    }
}
