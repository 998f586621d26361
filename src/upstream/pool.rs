//! Where an endpoint's connections wait between requests, whichever client
//! speaks on them: one `IdlePool` type for HTTP/1.1 connections (veer's own
//! plain sockets, `h1`, and hyper's `SendRequest`s, kept apart because hyper's
//! connection task owns its socket), and one `Multiplexed` slot for the
//! HTTP/2 connection every request shares.
//!
//! Both kinds of HTTP/1.1 connection obey the same rules: at most
//! `MAX_IDLE_PER_ENDPOINT` wait (a surplus connection is closed when
//! returned), the oldest is taken first, and one idle longer than
//! `timeouts.idle` or found closed is dropped when it comes up. No lock: the
//! queue is crossbeam's bounded lock-free queue, and taking or returning a
//! connection allocates nothing.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use crossbeam_queue::ArrayQueue;
use hyper::client::conn::{http1, http2};
use tokio::time::Instant;

use super::h1;
use super::RequestBody;

/// Idle HTTP/1.1 connections kept per endpoint and client; more are closed
/// when returned.
pub(crate) const MAX_IDLE_PER_ENDPOINT: usize = 512;

/// A connection that can wait in an [`IdlePool`].
pub(crate) trait Poolable {
    /// Whether the connection can still carry a request, as far as can be
    /// told without waiting (no system call unless the socket was signalled).
    fn is_open(&self) -> bool;
}

impl Poolable for Box<h1::Connection> {
    fn is_open(&self) -> bool {
        self.is_idle_and_open()
    }
}

impl Poolable for http1::SendRequest<RequestBody> {
    fn is_open(&self) -> bool {
        !self.is_closed()
    }
}

/// Idle connections of one kind to one endpoint.
pub(crate) struct IdlePool<C> {
    queue: ArrayQueue<Idle<C>>,
}

struct Idle<C> {
    connection: C,
    since: Instant,
}

impl<C: Poolable> IdlePool<C> {
    pub(crate) fn new() -> IdlePool<C> {
        IdlePool {
            queue: ArrayQueue::new(MAX_IDLE_PER_ENDPOINT),
        }
    }

    /// The oldest idle connection that is open and was idle no longer than
    /// `max_idle`; the stale ones before it are closed.
    pub(crate) fn take(&self, max_idle: Duration) -> Option<C> {
        while let Some(Idle { connection, since }) = self.queue.pop() {
            if since.elapsed() <= max_idle && connection.is_open() {
                return Some(connection);
            }
        }
        None
    }

    /// Puts a connection that carried its last exchange cleanly back; one
    /// over the limit is dropped, which closes it. Whether it is still open
    /// is asked when it is taken, not here: a socket that just delivered a
    /// response is still signalled readable, and asking now would cost the
    /// fast path a system call per request.
    pub(crate) fn put(&self, connection: C) {
        let _ = self.queue.push(Idle {
            connection,
            since: Instant::now(),
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}

/// The one HTTP/2 connection an endpoint's requests share.
pub(crate) struct Multiplexed {
    current: ArcSwapOption<http2::SendRequest<RequestBody>>,
}

impl Multiplexed {
    pub(crate) fn new() -> Multiplexed {
        Multiplexed {
            current: ArcSwapOption::empty(),
        }
    }

    /// A handle on the shared connection, if it is still open.
    pub(crate) fn get(&self) -> Option<http2::SendRequest<RequestBody>> {
        self.current
            .load()
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .map(|sender| (**sender).clone())
    }

    /// Makes `sender` the connection later requests share.
    pub(crate) fn set(&self, sender: &http2::SendRequest<RequestBody>) {
        self.current.store(Some(Arc::new(sender.clone())));
    }

    /// Forgets a connection found broken; the next request makes a new one.
    pub(crate) fn clear(&self) {
        self.current.store(None);
    }
}
