//! The clock a client connection is on while veer waits for its next request
//! head: from the moment it is accepted or its last response ended, it has
//! `limits.header_read_timeout` to deliver a complete head, or it is closed.
//! That covers a client that connects and says nothing, one that trickles its
//! head a byte at a time (slowloris), a stalled HTTP/2 preface, and idle
//! connections, HTTP/1.1 keep-alive and HTTP/2 alike: an HTTP/2 connection
//! with no stream open for that long is sent GOAWAY and closed, so an idle
//! client does not hold a `max_connections` slot forever.
//!
//! hyper's own `header_read_timeout` does the same for HTTP/1.1 but arms a
//! new boxed timer for every request and cancels it when the head arrives,
//! which profiling showed at about 1,800 instructions per request (a timer
//! wheel insert and removal, an allocation, clock reads). Here each connection
//! has one timer for its whole life, re-armed only when it fires (and polled
//! only then: `woken`): a request costs two relaxed atomic adds, two more on
//! its listener's in-flight gauge, and one clock read when its response ends
//! as the connection's last one in flight.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::telemetry::operator::ListenerGauges;

/// Shared by a connection's watchdog and its requests.
#[derive(Debug)]
pub struct IdleClock {
    limit: Duration,
    origin: Instant,
    /// Requests whose response has not ended.
    in_flight: AtomicUsize,
    /// Since `origin`, when `in_flight` last fell to 0.
    idle_since_micros: AtomicU64,
    /// HTTP/1.1 parking (`park`): the last read would block,
    read_blocked: AtomicBool,
    /// everything written was flushed,
    flushed: AtomicBool,
    /// and the last request left no body bytes or upgrade behind it.
    parkable: AtomicBool,
    /// The listener's in-flight gauge (`veer_listener_requests_in_flight`).
    listener: Arc<ListenerGauges>,
}

/// What the watchdog should do when its timer fires.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Close,
    CheckAt(Instant),
}

impl IdleClock {
    /// `listener` counts the requests in flight of the connection's listener.
    pub fn new(limit: Duration, listener: Arc<ListenerGauges>) -> IdleClock {
        IdleClock {
            listener,
            limit,
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_micros: AtomicU64::new(0),
            read_blocked: AtomicBool::new(false),
            flushed: AtomicBool::new(true),
            parkable: AtomicBool::new(true),
        }
    }

    /// A request head arrived: the clock stops until its response ends.
    #[inline]
    pub fn request_started(&self) {
        self.listener.request_started();
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A response ended (or was abandoned): the clock restarts when it was
    /// the last one.
    #[inline]
    pub fn request_ended(&self) {
        self.listener.request_ended();
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            let since = self.origin.elapsed().as_micros();
            self.idle_since_micros
                .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }

    /// Set by the service for each HTTP/1.1 request: whether, once its
    /// response is written, the connection is between requests with nothing
    /// of this one left to read (no body, no upgrade, keep-alive).
    #[inline]
    pub fn set_parkable(&self, parkable: bool) {
        self.parkable.store(parkable, Ordering::Relaxed);
    }

    #[inline]
    pub fn set_read_blocked(&self, blocked: bool) {
        self.read_blocked.store(blocked, Ordering::Relaxed);
    }

    #[inline]
    pub fn set_flushed(&self, flushed: bool) {
        self.flushed.store(flushed, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub fn read_blocked(&self) -> bool {
        self.read_blocked.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub fn flushed(&self) -> bool {
        self.flushed.load(Ordering::Relaxed)
    }

    /// Whether an HTTP/1.1 connection whose future just returned `Pending`
    /// may be parked: nothing in flight, nothing unwritten, waiting on the
    /// socket for the next head. Read by the connection task only, after
    /// polling hyper, so the flags were set by that same poll.
    #[inline]
    pub fn may_park(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && self.read_blocked.load(Ordering::Relaxed)
            && self.flushed.load(Ordering::Relaxed)
            && self.parkable.load(Ordering::Relaxed)
    }

    /// When the connection last had no request in flight: its start, or
    /// the end of its last response.
    #[inline]
    pub fn idle_since(&self) -> Instant {
        self.origin + Duration::from_micros(self.idle_since_micros.load(Ordering::Relaxed))
    }

    /// How long a connection may wait for a request head.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    pub fn verdict(&self, now: Instant) -> Verdict {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Verdict::CheckAt(now + self.limit);
        }
        let idle_since = Duration::from_micros(self.idle_since_micros.load(Ordering::Relaxed));
        let deadline = self.origin + idle_since + self.limit;
        if now >= deadline {
            Verdict::Close
        } else {
            Verdict::CheckAt(deadline)
        }
    }

    /// Completes when the connection has waited too long for a request
    /// head with no request in flight.
    pub async fn expired(&self) {
        let sleep = tokio::time::sleep_until(self.origin + self.limit);
        tokio::pin!(sleep);
        loop {
            sleep.as_mut().await;
            match self.verdict(Instant::now()) {
                Verdict::Close => return,
                Verdict::CheckAt(at) => sleep.as_mut().reset(at),
            }
        }
    }
}

impl AsRef<IdleClock> for IdleClock {
    fn as_ref(&self) -> &IdleClock {
        self
    }
}

/// One request's hold on its connection's clock, from its head to the end
/// of its response (or until it is dropped unfinished). It owns the
/// connection's shared state `C`, so the request needs no other handle.
pub struct InFlight<C: AsRef<IdleClock>>(Arc<C>);

impl<C: AsRef<IdleClock>> InFlight<C> {
    #[inline]
    pub fn start(owner: Arc<C>) -> InFlight<C> {
        AsRef::<IdleClock>::as_ref(&*owner).request_started();
        InFlight(owner)
    }
}

impl<C: AsRef<IdleClock>> std::ops::Deref for InFlight<C> {
    type Target = C;

    fn deref(&self) -> &C {
        &self.0
    }
}

impl<C: AsRef<IdleClock>> Drop for InFlight<C> {
    fn drop(&mut self) {
        AsRef::<IdleClock>::as_ref(&*self.0).request_ended();
    }
}

/// A response body that holds its request's `InFlight` until hyper drops it,
/// after the last frame or when the client went away.
pub struct Tracked<B, C: AsRef<IdleClock>> {
    body: B,
    _in_flight: InFlight<C>,
}

impl<B, C: AsRef<IdleClock>> Tracked<B, C> {
    pub fn new(body: B, in_flight: InFlight<C>) -> Tracked<B, C> {
        Tracked {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin, C: AsRef<IdleClock>> Body for Tracked<B, C> {
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_runs_only_while_no_request_is_in_flight() {
        let clock = IdleClock::new(Duration::from_secs(10), Arc::default());
        let start = Instant::now();
        assert_eq!(
            clock.verdict(start),
            Verdict::CheckAt(start + Duration::from_secs(10))
        );
        assert_eq!(
            clock.verdict(start + Duration::from_secs(10)),
            Verdict::Close
        );

        clock.request_started();
        let later = start + Duration::from_secs(60);
        assert_eq!(
            clock.verdict(later),
            Verdict::CheckAt(later + Duration::from_secs(10))
        );

        tokio::time::advance(Duration::from_secs(30)).await;
        clock.request_ended();
        let ended = start + Duration::from_secs(30);
        assert_eq!(
            clock.verdict(ended + Duration::from_secs(5)),
            Verdict::CheckAt(ended + Duration::from_secs(10))
        );
        assert_eq!(
            clock.verdict(ended + Duration::from_secs(10)),
            Verdict::Close
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_request_stops_the_clock_until_it_ends() {
        let clock = IdleClock::new(Duration::from_secs(1), Arc::default());
        clock.request_started();
        let busy = Instant::now() + Duration::from_secs(3600);
        assert_eq!(
            clock.verdict(busy),
            Verdict::CheckAt(busy + Duration::from_secs(1)),
            "an open stream stops the clock"
        );
        clock.request_ended();
        assert_eq!(
            clock.verdict(Instant::now() + Duration::from_secs(1)),
            Verdict::Close
        );
    }

    #[test]
    fn parks_only_when_idle_flushed_blocked_and_parkable() {
        let clock = IdleClock::new(Duration::from_secs(1), Arc::default());
        assert!(!clock.may_park(), "nothing read yet");
        clock.set_read_blocked(true);
        assert!(
            clock.may_park(),
            "a fresh connection has nothing left behind"
        );
        clock.request_started();
        assert!(!clock.may_park(), "a request in flight");
        clock.request_ended();
        clock.set_parkable(false);
        assert!(
            !clock.may_park(),
            "the last request had a body or an upgrade"
        );
        clock.set_parkable(true);
        clock.set_flushed(false);
        assert!(!clock.may_park(), "bytes not yet flushed");
        clock.set_flushed(true);
        clock.set_read_blocked(false);
        assert!(!clock.may_park(), "hyper did not ask the socket for more");
    }

    #[tokio::test(start_paused = true)]
    async fn expired_completes_after_the_idle_limit() {
        let clock = Arc::new(IdleClock::new(Duration::from_secs(2), Arc::default()));
        let watched = Arc::clone(&clock);
        let watchdog = tokio::spawn(async move { watched.expired().await });
        clock.request_started();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !watchdog.is_finished(),
            "a request in flight stops the clock"
        );
        clock.request_ended();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!watchdog.is_finished());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(watchdog.is_finished(), "idle for longer than the limit");
    }
}
