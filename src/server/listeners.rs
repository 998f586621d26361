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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use crossbeam_queue::ArrayQueue;
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::idle::{IdleClock, InFlight, Tracked};
use super::woken::PollWhenWoken;
use super::StartError;
use crate::config::{Limits, Listener};
use crate::proxy::{ClientInfo, ProxyService, RequestTimer};
use crate::telemetry::operator::{ListenerGauges, OpenConnection};
use crate::telemetry::Telemetry;
use crate::tls::server::Terminator;

/// A listener's TLS, swapped by reloads; `None` for cleartext. Read once
/// per accepted connection.
type SharedTls = Arc<ArcSwapOption<Terminator>>;

pub struct ListenerSet {
    service: ProxyService,
    telemetry: Arc<Telemetry>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    connections: Arc<Semaphore>,
    max_connections: u32,
    first_request_timeout: Duration,
    /// Changes to `true` when every connection must wind down.
    drain: watch::Sender<bool>,
    /// Touched only by reloads and shutdown, never per request.
    active: Mutex<Vec<Active>>,
    /// Set, under the `active` lock, once the drain has begun.
    closed: AtomicBool,
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
            drain: watch::channel(false).0,
            active: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        };
        set.reconcile(listeners)?;
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
            let task = tokio::spawn(accept(
                listener,
                Arc::new(ConnectionSetup {
                    gauges: self.telemetry.operator().listener(&settings.name),
                    service: self.service.clone(),
                    builder: Arc::clone(&self.builder),
                    tls: Arc::clone(&tls),
                    first_request_timeout: self.first_request_timeout,
                }),
                Arc::clone(&self.connections),
                self.drain.subscribe(),
                stopped,
            ));
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
        self.drain.send_replace(true);
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

fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The connection's own IdleClock does this, without a timer per
        // request (see `idle.rs`).
        .header_read_timeout(None)
        // hyper answers 431 when the head does not fit; it needs at least 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // No HTTP/2 PINGs: hyper's keep-alive takes a lock and reads the
        // clock for every frame received and every poll of the connection.
        // A dead client is found by TCP keep-alive instead (`connection`),
        // as NGINX and Envoy do by default.
        .keep_alive_interval(None);
    builder
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
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: SharedTls,
    /// Bounds the TLS handshake, and then the wait for the first request.
    first_request_timeout: Duration,
}

/// What every request on one connection needs, behind one `Arc`.
struct ConnectionContext {
    service: ProxyService,
    client: ClientInfo,
    /// How long the connection has waited for a request head.
    idle: IdleClock,
    /// The connection's request-timeout timer, lent to one request at a time
    /// and reset for each (see `ProxyService::serve`); HTTP/2 streams that
    /// find it lent out make their own.
    request_timer: ArrayQueue<RequestTimer>,
}

impl AsRef<IdleClock> for ConnectionContext {
    fn as_ref(&self) -> &IdleClock {
        &self.idle
    }
}

async fn accept(
    listener: TcpListener,
    setup: Arc<ConnectionSetup>,
    connections: Arc<Semaphore>,
    drain: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = stop.changed() => return,
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
            drain.clone(),
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
    drain: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) {
    let _open = OpenConnection::open(Arc::clone(&setup.gauges));
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
        let client = ClientInfo::new(peer, false);
        serve(stream, &setup, client, drain).await;
        drop(permit);
        return;
    };
    let Some(accepted) = tls.accept(stream, setup.first_request_timeout).await else {
        drop(permit);
        return;
    };
    let mut client = ClientInfo::new(peer, true);
    if let Some(header) = tls.identity_header() {
        client = client.with_identity(header.clone(), accepted.identity);
    }
    // The connection keeps the settings it was accepted with, not the
    // terminator (which holds the certificate watches).
    drop(tls);
    serve(accepted.stream, &setup, client, drain).await;
    drop(permit);
}

async fn serve<I>(
    io: I,
    setup: &ConnectionSetup,
    client: ClientInfo,
    mut drain: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let context = Arc::new(ConnectionContext {
        service: setup.service.clone(),
        client,
        idle: IdleClock::new(setup.first_request_timeout, Arc::clone(&setup.gauges)),
        request_timer: ArrayQueue::new(1),
    });
    let watched = Arc::clone(&context);
    let watched_http2 = Arc::clone(&context);
    let requests = service_fn(move |request: Request<Incoming>| {
        let context = InFlight::start(Arc::clone(&context), request.version());
        let fut = async move {
            let mut timer = context.request_timer.pop();
            let response = context
                .service
                .serve(request, &context.client, &mut timer)
                .await;
            if let Some(timer) = timer {
                let _ = context.request_timer.push(timer);
            }
            response.map(|response| response.map(|body| Tracked::new(body, context)))
        };
        // Boxed: the future is a few KiB, and hyper's HTTP/2 server spawns
        // each stream's future as a task, which moved it twice (callgrind:
        // 9,600 instructions of memcpy per h2 request before this).
        Box::pin(fut)
    });
    let connection = setup
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), requests);
    tokio::pin!(connection);
    // Polled only when they fire, not on every wake-up of the connection.
    let expired = PollWhenWoken::new(async move { watched.idle.expired().await });
    let watched_http2 = &watched_http2.idle;
    let drained = PollWhenWoken::new(async move {
        drop(drain.wait_for(|&draining| draining).await);
    });
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = expired => {
            tracing::debug!("closing a connection that sent no request head within limits.header_read_timeout");
            if watched_http2.is_http2() {
                // GOAWAY, so the client knows to open a new connection
                // rather than see its next stream fail; bounded, as a client
                // that never reads would hold it open.
                connection.as_mut().graceful_shutdown();
                let limit = watched_http2.limit();
                let _ = tokio::time::timeout(limit, connection.as_mut()).await;
            }
            Ok(())
        }
        _ = drained => {
            // HTTP/1.1: finish the request in flight, then close;
            // HTTP/2: GOAWAY, finish the open streams.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(error = %err, "client connection ended with an error");
    }
}

impl crate::reload::Listeners for ListenerSet {
    fn reconcile(&self, wanted: &[Listener]) -> Result<(), String> {
        ListenerSet::reconcile(self, wanted).map_err(|e| e.to_string())
    }
}
