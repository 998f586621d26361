//! Cleartext client connections accepted and served through io_uring
//! (`server::uring`), when veer runs with `VEER_IO=uring`. The HTTP is the
//! epoll path's: HTTP/1.1 and HTTP/2 with prior knowledge on one port, the
//! connection's idle clock, the connection cap and the drain, over `UringIo`.
//!
//! Two things differ. A connection is not parked between requests: its read
//! is in the kernel's hands with the connection's buffer, so an idle
//! connection holds that buffer and hyper's. And an HTTP/1.1 upgrade
//! (WebSocket, `CONNECT`) is answered 501: hyper hands an upgraded
//! connection over only as a stream that can move between threads, and a
//! ring's stream cannot.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::atomic::AtomicCell;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::super::uring::{Spawner, UringIo};
use super::{
    ConnectionContext, ConnectionSetup, Drain, Ending, IdleClock, InFlight, PollWhenWoken,
    Protocol, Tracked, CLIENT_KEEPALIVE_IDLE, CLIENT_KEEPALIVE_INTERVAL, CLIENT_KEEPALIVE_PROBES,
    PREFACE, SILENT,
};
use crate::proxy::error::ERROR_HEADER;
use crate::proxy::{ClientInfo, ProxyBody};
use crate::telemetry::operator::OpenConnection;

const UPGRADE_REFUSED: &str =
    "veer: upgrades (WebSocket, CONNECT) are not served with VEER_IO=uring; unset VEER_IO to serve them\n";

/// Starts `listener`'s accept loop on the ring's thread.
pub(super) fn spawn_accept(
    spawner: &Spawner,
    listener: TcpListener,
    setup: Arc<ConnectionSetup>,
    connections: Arc<Semaphore>,
    drain: Arc<Drain>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let listener = listener.into_std();
    spawner.spawn(move || async move {
        match listener {
            Ok(listener) => accept(listener, setup, connections, drain, stop).await,
            Err(err) => tracing::error!(error = %err, "cannot hand the listener to io_uring"),
        }
    })
}

async fn accept(
    listener: std::net::TcpListener,
    setup: Arc<ConnectionSetup>,
    connections: Arc<Semaphore>,
    drain: Arc<Drain>,
    mut stop: watch::Receiver<bool>,
) {
    // Accepted sockets inherit these from the listening one, which saves
    // calls per connection.
    let _ = socket2::SockRef::from(&listener).set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(CLIENT_KEEPALIVE_IDLE)
            .with_interval(CLIENT_KEEPALIVE_INTERVAL)
            .with_retries(CLIENT_KEEPALIVE_PROBES),
    );
    // An accept in flight holds the listening socket open until a client
    // comes, so closing the listener means shutting its socket down through
    // a second handle, which ends that accept.
    let closer = match listener.try_clone() {
        Ok(closer) => closer,
        Err(err) => {
            tracing::error!(error = %err, "cannot hand the listener to io_uring");
            return;
        }
    };
    let listener = tokio_uring::net::TcpListener::from_std(listener);
    loop {
        let Some(permit) = super::connection_permit(&connections, &mut stop).await else {
            break;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::task::spawn_local(connection(
                    stream,
                    peer,
                    Arc::clone(&setup),
                    Arc::clone(&drain),
                    permit,
                ));
            }
            Err(err) => {
                tracing::warn!(error = %err, "accept failed; retrying in 50ms");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let _ = socket2::SockRef::from(&closer).shutdown(std::net::Shutdown::Both);
}

async fn connection(
    stream: tokio_uring::net::TcpStream,
    peer: SocketAddr,
    setup: Arc<ConnectionSetup>,
    drain: Arc<Drain>,
    permit: OwnedSemaphorePermit,
) {
    let _open = OpenConnection::open(Arc::clone(&setup.gauges));
    let _ = stream.set_nodelay(true);
    if setup.tls.load().is_some() {
        // A reload turned TLS on for a listener that was accepting
        // through the ring; rustls here reads only tokio's streams.
        tracing::warn!(
            "this listener became TLS after it started with VEER_IO=uring; restart veer to serve TLS on it"
        );
        return;
    }
    serve(UringIo::new(stream), peer, &setup, drain).await;
    drop(permit);
}

async fn serve(mut io: UringIo, peer: SocketAddr, setup: &ConnectionSetup, drain: Arc<Drain>) {
    let context = Arc::new(ConnectionContext {
        service: setup.service.clone(),
        client: ClientInfo::new(peer, false),
        idle: IdleClock::since(
            Instant::now(),
            setup.first_request_timeout,
            Arc::clone(&setup.gauges),
        ),
        request_timer: AtomicCell::new(None),
    });
    let watched = Arc::clone(&context);
    let mut ending = PollWhenWoken::new(async move {
        tokio::select! {
            _ = watched.idle.expired() => Ending::Expired,
            () = drain.wait() => Ending::Drained,
        }
    });
    let protocol = tokio::select! {
        protocol = detect(&mut io) => match protocol {
            Some(protocol) => protocol,
            None => return,
        },
        ending = &mut ending => {
            if ending == Ending::Expired {
                tracing::debug!("{SILENT}");
            }
            return;
        }
    };
    let requests = {
        let context = Arc::clone(&context);
        service_fn(move |request: Request<Incoming>| {
            let context = InFlight::start(Arc::clone(&context));
            let upgrade = request.extensions().get::<OnUpgrade>().is_some();
            Box::pin(async move {
                if upgrade {
                    return Ok(upgrade_refused().map(|body| Tracked::new(body, context)));
                }
                super::serve_request(context, request).await
            })
        })
    };
    let result = if protocol == Protocol::Http2 {
        let mut connection =
            super::streams::Multiplexed::new(setup.builder.http2.serve_connection(io, requests));
        tokio::select! {
            result = &mut connection => result,
            ending = &mut ending => {
                std::pin::Pin::new(connection.connection()).graceful_shutdown();
                if ending == Ending::Expired {
                    tracing::debug!("{SILENT}");
                    let _ = tokio::time::timeout(context.idle.limit(), &mut connection).await;
                    Ok(())
                } else {
                    connection.await
                }
            }
        }
    } else {
        let connection = setup.builder.http1.serve_connection(io, requests);
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => result,
            ending = &mut ending => {
                if ending == Ending::Expired {
                    tracing::debug!("{SILENT}");
                    Ok(())
                } else {
                    // Finish the request in flight, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(error = %err, "client connection ended with an error");
    }
}

/// Reads a connection's first bytes, kept for hyper, until they tell
/// HTTP/2 with prior knowledge from HTTP/1; `None` when the client left.
async fn detect(io: &mut UringIo) -> Option<Protocol> {
    loop {
        let seen = io.buffered();
        let n = seen.len().min(PREFACE.len());
        if seen[..n] != PREFACE[..n] {
            return Some(Protocol::Http1);
        }
        if n == PREFACE.len() {
            return Some(Protocol::Http2);
        }
        match io.read_more().await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn upgrade_refused() -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(UPGRADE_REFUSED));
    *response.status_mut() = StatusCode::NOT_IMPLEMENTED;
    let headers = response.headers_mut();
    headers.insert(
        ERROR_HEADER,
        HeaderValue::from_static("upgrade_unsupported"),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
