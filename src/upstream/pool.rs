//! Where an endpoint's connections wait between requests, whichever client
//! speaks on them: one `IdlePool` type for HTTP/1.1 connections (veer's own
//! plain sockets, `h1`, and hyper's `SendRequest`s, kept apart because hyper's
//! connection task owns its socket), and one `Multiplexed` slot for the
//! HTTP/2 connection every request shares.
//!
//! Both kinds of HTTP/1.1 connection obey the same rules: at most
//! `MAX_IDLE_PER_ENDPOINT` wait (a surplus connection is closed when
//! returned), the oldest is taken first, and one idle longer than
//! `timeouts.idle` or found closed is dropped when it comes up. An endpoint
//! that gets no requests (a version at weight 0 after a rollback) would keep
//! its idle sockets forever, half-closed by the upstream, so a sweep
//! (`Endpoint::sweep`, run by the registry's one `Sweeper` for the
//! endpoints holding idle connections) closes them in the
//! background too. No lock: the queue is crossbeam's bounded lock-free
//! queue, and taking or returning a connection allocates nothing.
//!
//! The queue (a few kilobytes per endpoint and client, its slots written when
//! made) is made when the first connection is returned to it: an endpoint
//! that never takes a request, one of thousands in a large config, holds
//! none.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
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
    /// Made by the first `put`. Boxed: the queue's head and tail sit on
    /// cache lines of their own (hundreds of bytes inline), which an
    /// endpoint that never pools a connection should not hold.
    queue: OnceLock<Box<ArrayQueue<Idle<C>>>>,
    /// The idle limit the last request asked for, in milliseconds, for the
    /// background sweep (the limit is a service's, and an endpoint does not
    /// know its services).
    limit_ms: AtomicU64,
}

struct Idle<C> {
    connection: C,
    since: Instant,
}

impl<C: Poolable> IdlePool<C> {
    pub(crate) fn new() -> IdlePool<C> {
        IdlePool {
            queue: OnceLock::new(),
            limit_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// The oldest idle connection that is open and was idle no longer than
    /// `max_idle`; the stale ones before it are closed.
    pub(crate) fn take(&self, max_idle: Duration) -> Option<C> {
        // Written only when it changes: the line stays shared between cores.
        let limit = u64::try_from(max_idle.as_millis()).unwrap_or(u64::MAX);
        if self.limit_ms.load(Ordering::Relaxed) != limit {
            self.limit_ms.store(limit, Ordering::Relaxed);
        }
        let queue = self.queue.get()?;
        while let Some(Idle { connection, since }) = queue.pop() {
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
        let queue = self
            .queue
            .get_or_init(|| Box::new(ArrayQueue::new(MAX_IDLE_PER_ENDPOINT)));
        let _ = queue.push(Idle {
            connection,
            since: Instant::now(),
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.get().map_or(0, |queue| queue.len())
    }

    /// Closes the connections waiting that the upstream has closed, or that
    /// have waited longer than the last idle limit asked for; the others go
    /// back in the order they were in. Off the request path: a request that
    /// finds the queue empty meanwhile just connects.
    pub(crate) fn sweep(&self) {
        let Some(queue) = self.queue.get() else {
            return;
        };
        let limit = Duration::from_millis(self.limit_ms.load(Ordering::Relaxed));
        for _ in 0..queue.len() {
            let Some(idle) = queue.pop() else {
                break;
            };
            if idle.since.elapsed() <= limit && idle.connection.is_open() {
                let _ = queue.push(idle);
            }
        }
    }

    /// The idle limit the sweep applies, when a request has told one.
    pub(crate) fn limit(&self) -> Option<Duration> {
        match self.limit_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(Duration::from_millis(ms)),
        }
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

    /// Whether a shared connection is held (open or not yet found closed).
    pub(crate) fn is_set(&self) -> bool {
        self.current.load().is_some()
    }

    /// Forgets the shared connection if it has ended.
    pub(crate) fn sweep(&self) {
        if self.current.load().as_ref().is_some_and(|s| s.is_closed()) {
            self.current.store(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// A connection whose openness the test decides.
    struct Fake {
        id: usize,
        open: Arc<AtomicBool>,
    }

    impl Poolable for Fake {
        fn is_open(&self) -> bool {
            self.open.load(Ordering::Relaxed)
        }
    }

    fn fake(id: usize) -> (Fake, Arc<AtomicBool>) {
        let open = Arc::new(AtomicBool::new(true));
        (
            Fake {
                id,
                open: Arc::clone(&open),
            },
            open,
        )
    }

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn oldest_first_and_closed_ones_are_passed_over() {
        let pool = IdlePool::new();
        let (a, a_open) = fake(1);
        let (b, _) = fake(2);
        pool.put(a);
        pool.put(b);
        a_open.store(false, Ordering::Relaxed);
        assert_eq!(pool.take(LONG).map(|c| c.id), Some(2));
        assert!(pool.take(LONG).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_past_the_limit_is_closed_when_it_comes_up() {
        let pool = IdlePool::new();
        pool.put(fake(1).0);
        tokio::time::advance(Duration::from_secs(2)).await;
        pool.put(fake(2).0);
        let taken = pool.take(Duration::from_secs(1)).map(|c| c.id);
        assert_eq!(taken, Some(2), "the stale one goes, the fresh one serves");
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweep_closes_stale_and_closed_connections_and_keeps_the_order() {
        let pool = IdlePool::new();
        pool.put(fake(1).0);
        // No request has told a limit yet: only closed ones go.
        assert_eq!(pool.limit(), None);
        pool.sweep();
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.take(Duration::from_secs(10)).map(|c| c.id), Some(1));
        assert_eq!(pool.limit(), Some(Duration::from_secs(10)));
        pool.put(fake(2).0);
        tokio::time::advance(Duration::from_secs(11)).await;
        let (three, three_open) = fake(3);
        pool.put(three);
        pool.put(fake(4).0);
        pool.put(fake(5).0);
        three_open.store(false, Ordering::Relaxed);
        pool.sweep();
        // 2 waited too long, 3 was closed by the upstream.
        assert_eq!(pool.len(), 2);
        assert_eq!(pool.take(LONG).map(|c| c.id), Some(4));
        assert_eq!(pool.take(LONG).map(|c| c.id), Some(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_pool_closes_the_surplus() {
        let pool = IdlePool::new();
        for id in 0..MAX_IDLE_PER_ENDPOINT + 3 {
            pool.put(fake(id).0);
        }
        assert_eq!(pool.len(), MAX_IDLE_PER_ENDPOINT);
        assert_eq!(pool.take(LONG).map(|c| c.id), Some(0));
    }
}
