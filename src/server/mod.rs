//! Listeners, connections and the drain.
//!
//! Each listener accepts in a task of its own and serves every connection with
//! hyper-util's auto builder: HTTP/1.1 (keep-alive, pipelining, upgrades) and
//! HTTP/2 with prior knowledge share the port. A semaphore caps open
//! connections (beyond the cap, clients wait in the kernel's backlog). On
//! shutdown the listeners close first, then every connection is told to finish
//! its in-flight requests (HTTP/1.1 stops keep-alive, HTTP/2 sends GOAWAY) and
//! is given `limits.drain_timeout` to do so.

pub mod signal;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::config::{Config, Limits, Listener};
use crate::control::Control;
use crate::proxy::{ClientInfo, ProxyService};

/// Why the proxy could not start.
#[derive(Debug)]
pub enum StartError {
    Bind {
        listener: String,
        address: SocketAddr,
        cause: std::io::Error,
    },
    Unsupported {
        listener: String,
        what: &'static str,
    },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind {
                listener,
                address,
                cause,
            } => write!(
                f,
                "listener `{listener}` cannot bind {address}: {cause} \
                 (is another process using the port, or does binding it need privileges?)"
            ),
            StartError::Unsupported { listener, what } => {
                write!(f, "listener `{listener}`: {what}")
            }
        }
    }
}

impl std::error::Error for StartError {}

/// Starts a proxy: `Proxy::start(config)`.
pub struct Proxy;

impl Proxy {
    /// Binds every listener and starts serving. Returns once all listeners
    /// are bound, so a request sent after this returns is served.
    pub async fn start(config: Config) -> Result<RunningProxy, StartError> {
        let limits = config.limits.clone();
        let mut bound = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            bound.push((listener.name.clone(), bind(listener)?));
        }
        let control = Arc::new(Control::new(config));
        let service = ProxyService::new(control.published());
        let builder = Arc::new(connection_builder(&limits));
        let connections = Arc::new(Semaphore::new(limits.max_connections));
        let graceful = Arc::new(GracefulShutdown::new());
        let (stop, stopped) = watch::channel(false);

        let mut addresses = Vec::with_capacity(bound.len());
        let mut accepting = Vec::with_capacity(bound.len());
        for (name, listener) in bound {
            let address = listener.local_addr().map_err(|cause| StartError::Bind {
                listener: name.clone(),
                address: SocketAddr::from(([0, 0, 0, 0], 0)),
                cause,
            })?;
            tracing::info!(listener = %name, %address, "listening");
            addresses.push((name, address));
            accepting.push(tokio::spawn(accept(
                listener,
                service.clone(),
                Arc::clone(&builder),
                Arc::clone(&connections),
                Arc::clone(&graceful),
                stopped.clone(),
            )));
        }
        Ok(RunningProxy {
            addresses,
            control,
            stop,
            accepting,
            graceful,
            drain_timeout: limits.drain_timeout,
        })
    }
}

/// A serving proxy. Dropping it without `shutdown` leaves the listeners to the
/// runtime's end.
pub struct RunningProxy {
    addresses: Vec<(String, SocketAddr)>,
    control: Arc<Control>,
    stop: watch::Sender<bool>,
    accepting: Vec<JoinHandle<()>>,
    graceful: Arc<GracefulShutdown>,
    drain_timeout: Duration,
}

impl RunningProxy {
    /// The address a listener is bound to (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.addresses
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, addr)| addr)
    }

    /// Every listener's name and bound address, in config order.
    pub fn listeners(&self) -> &[(String, SocketAddr)] {
        &self.addresses
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain
    /// timeout), then returns. Returns whether every connection finished.
    pub async fn shutdown(self) -> bool {
        let _ = self.stop.send(true);
        for task in self.accepting {
            let _ = task.await;
        }
        let open = self.graceful.count();
        tracing::info!(connections = open, "draining");
        let Ok(graceful) = Arc::try_unwrap(self.graceful) else {
            return false;
        };
        match tokio::time::timeout(self.drain_timeout, graceful.shutdown()).await {
            Ok(()) => {
                tracing::info!("drained");
                true
            }
            Err(_) => {
                tracing::warn!(
                    timeout = ?self.drain_timeout,
                    "drain timeout reached; closing the remaining connections (limits.drain_timeout)"
                );
                false
            }
        }
    }
}

fn bind(listener: &Listener) -> Result<TcpListener, StartError> {
    if listener.tls.is_some() {
        return Err(StartError::Unsupported {
            listener: listener.name.clone(),
            what: "TLS termination is not available in this build yet; \
                   remove the `tls` block or terminate TLS in front of veer",
        });
    }
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
        .header_read_timeout(limits.header_read_timeout)
        // hyper answers 431 when the head does not fit; it needs at least 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

/// What every request on one connection needs, behind one `Arc`.
struct ConnectionContext {
    service: ProxyService,
    client: ClientInfo,
}

async fn accept(
    listener: TcpListener,
    service: ProxyService,
    builder: Arc<auto::Builder<TokioExecutor>>,
    connections: Arc<Semaphore>,
    graceful: Arc<GracefulShutdown>,
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
        let watcher = graceful.watcher();
        let builder = Arc::clone(&builder);
        let context = Arc::new(ConnectionContext {
            service: service.clone(),
            client: ClientInfo::new(peer, false),
        });
        tokio::spawn(async move {
            serve(stream, builder, context, watcher).await;
            drop(permit);
        });
    }
}

async fn serve(
    stream: TcpStream,
    builder: Arc<auto::Builder<TokioExecutor>>,
    context: Arc<ConnectionContext>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let _ = stream.set_nodelay(true);
    let requests = service_fn(move |request| {
        let context = Arc::clone(&context);
        async move { context.service.serve(request, &context.client).await }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), requests);
    if let Err(err) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(error = %err, "client connection ended with an error");
    }
}
