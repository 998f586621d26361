//! Idle HTTP/1.1 connections parked as bare sockets.
//!
//! A hyper connection holds an 8 KiB read buffer (grown up to
//! `limits.max_header_bytes`), a write buffer and its dispatcher state for
//! as long as it lives, about 22 KiB in all. A keep-alive client that sends
//! nothing for minutes would keep all of it. So when an HTTP/1.1 connection
//! has nothing to do (no request in flight, every byte written and flushed,
//! the socket would block on read, and the last request could not have left
//! body bytes or an upgrade behind) and has stayed so for 50 ms (a busy
//! client's next request comes sooner and pays no rebuild), the connection
//! task takes the socket back
//! from hyper with `into_parts`, drops hyper's state, and waits for
//! readability on the bare socket. When bytes arrive, a new hyper connection
//! is built around it. The bytes hyper had read but not parsed (a partial
//! head) are copied out and handed to the next connection first, so a head
//! split across the park point is read whole.
//!
//! The conditions are tracked by `Resumable`, the I/O hyper is given, and by
//! the service (`IdleClock::set_parkable`), in relaxed atomics on the
//! connection's `IdleClock`: hyper does not say whether it is between
//! requests, so the connection is parked only when all of them hold.
//!
//! A parked connection keeps only its socket, the bytes it left unparsed,
//! who its client is and when it went idle: everything a request needs
//! (the connection's shared context, its idle timer, its drain future) is
//! dropped and built again when bytes arrive. Its idle deadline and the
//! drain reach it through one `ParkingLot` shared by all connections: a
//! slot holding its task's waker and a coarse deadline, swept every
//! `SWEEP`, instead of a timer and a drain future in every connection.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use slab::Slab;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use super::idle::IdleClock;

/// A client connection's stream that can wait for bytes without reading
/// them.
pub trait Readable: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when the socket has bytes (or an error, or EOF) to read. Keeps
    /// no state of its own: the waker waits in the socket's registration.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Readable for TcpStream {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

/// Boxed, so a cleartext connection's task is not as large as a TLS one's.
/// The TLS stream is parked only after hyper's read found neither buffered
/// plaintext nor bytes on the socket, so the socket's readability is the
/// only thing that can wake it.
impl Readable for Box<TlsStream<TcpStream>> {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// The I/O one hyper connection is given: the bytes a previous connection
/// left unparsed, then the stream. Records on the connection's clock whether
/// the last read would block and whether everything written was flushed.
pub struct Resumable<I, C: AsRef<IdleClock>> {
    prefix: Bytes,
    io: I,
    owner: Arc<C>,
}

impl<I, C: AsRef<IdleClock>> Resumable<I, C> {
    pub fn new(prefix: Bytes, io: I, owner: Arc<C>) -> Resumable<I, C> {
        Resumable { prefix, io, owner }
    }

    /// The stream back; any prefix not yet read by hyper comes along.
    pub fn into_parts(self) -> (Bytes, I) {
        (self.prefix, self.io)
    }

    fn clock(&self) -> &IdleClock {
        AsRef::<IdleClock>::as_ref(&*self.owner)
    }
}

/// What the next connection must read first: what the previous one left
/// unread, then what hyper had read and not parsed. Copied, so a few bytes
/// of a partial head do not keep hyper's whole read buffer alive.
pub fn leftover(unread: Bytes, read_buf: Bytes) -> Bytes {
    match (unread.is_empty(), read_buf.is_empty()) {
        (true, true) => Bytes::new(),
        (true, false) => Bytes::copy_from_slice(&read_buf),
        (false, true) => unread,
        (false, false) => {
            let mut both = Vec::with_capacity(read_buf.len() + unread.len());
            both.extend_from_slice(&read_buf);
            both.extend_from_slice(&unread);
            Bytes::from(both)
        }
    }
}

impl<I: AsyncRead + Unpin, C: AsRef<IdleClock>> AsyncRead for Resumable<I, C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        this.clock().set_read_blocked(read.is_pending());
        read
    }
}

impl<I: AsyncWrite + Unpin, C: AsRef<IdleClock>> AsyncWrite for Resumable<I, C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.clock().set_flushed(false);
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.clock().set_flushed(false);
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            this.clock().set_flushed(true);
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// How often parked connections' idle deadlines are checked: a parked
/// connection is closed at most this long after its deadline.
pub const SWEEP: Duration = Duration::from_millis(250);

/// Where parked connections wait for their idle deadline and the drain.
pub struct ParkingLot {
    /// When tick 0 began; deadlines are kept in whole `SWEEP` ticks.
    origin: Instant,
    /// Off the request path: locked when a connection parks or unparks (at
    /// most once per `PARK_AFTER` of idleness), by the sweep every `SWEEP`,
    /// and by the drain.
    parked: Mutex<Parked>,
    draining: AtomicBool,
}

struct Parked {
    slots: Slab<Slot>,
    /// No slot is due before this tick: a sweep before it scans nothing,
    /// so a long idle limit costs one lock every `SWEEP`, not a scan of
    /// every parked connection.
    next_due: u32,
}

/// One parked connection: 24 bytes, where a timer and a drain future in
/// the connection's own task were some 300.
struct Slot {
    /// The first tick at or after the connection's idle deadline.
    due: u32,
    waker: Waker,
}

impl Default for ParkingLot {
    fn default() -> ParkingLot {
        ParkingLot {
            origin: Instant::now(),
            parked: Mutex::new(Parked {
                slots: Slab::new(),
                next_due: u32::MAX,
            }),
            draining: AtomicBool::new(false),
        }
    }
}

impl ParkingLot {
    /// Wakes every parked connection for good: each closes its socket.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = self
            .lock()
            .slots
            .iter()
            .map(|(_, s)| s.waker.clone())
            .collect();
        wakers.into_iter().for_each(Waker::wake);
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// How many connections are parked.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    /// Wakes the connections whose deadline has passed by `now`; they see it
    /// and close.
    fn sweep(&self, now: Instant) {
        let tick = self.tick(now, false);
        let due: Vec<Waker> = {
            let mut parked = self.lock();
            if tick < parked.next_due {
                return;
            }
            let mut next_due = u32::MAX;
            let mut due = Vec::new();
            for (_, slot) in parked.slots.iter() {
                if slot.due <= tick {
                    due.push(slot.waker.clone());
                }
                // A woken slot stays until its connection takes it out: it
                // keeps `next_due` low so a later sweep wakes it again if
                // that has not happened yet.
                next_due = next_due.min(slot.due);
            }
            parked.next_due = next_due;
            due
        };
        due.into_iter().for_each(Waker::wake);
    }

    /// `at` in ticks since `origin`, rounded up for a deadline (so the
    /// sweep never wakes a connection before it).
    fn tick(&self, at: Instant, up: bool) -> u32 {
        let since = at.saturating_duration_since(self.origin).as_millis();
        let step = SWEEP.as_millis();
        let ticks = if up {
            since.div_ceil(step)
        } else {
            since / step
        };
        u32::try_from(ticks).unwrap_or(u32::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Parked> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sweeps `lot` every `SWEEP` until the drain begins or the lot is gone.
pub async fn sweep(lot: Weak<ParkingLot>) {
    let mut ticks = tokio::time::interval(SWEEP);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(lot) = lot.upgrade() else { return };
        if lot.draining() {
            return;
        }
        lot.sweep(Instant::now());
    }
}

/// Why a parked connection stopped waiting.
#[derive(Debug, PartialEq, Eq)]
pub enum Woke {
    /// Bytes (or EOF) to read: serve it again.
    Readable,
    /// The socket failed.
    Failed,
    /// No request head by `deadline`.
    Expired,
    Drained,
}

/// Waits on a parked connection's bare socket until it is readable, its
/// idle deadline passes or the drain begins. A socket already readable
/// returns at once, without taking a slot in the lot. Four words: this is
/// what an idle connection's task holds besides its socket.
pub struct Wait<'a, I> {
    io: &'a I,
    lot: &'a ParkingLot,
    /// The tick the deadline falls in (rounded up).
    due: u32,
    /// Its slot in the lot; `NO_SLOT` until it has one.
    key: usize,
}

/// Waits on `io` until it is readable, `deadline` has passed (noticed
/// within one `SWEEP`, never before) or the drain begins.
pub fn wait<'a, I: Readable>(io: &'a I, lot: &'a ParkingLot, deadline: Instant) -> Wait<'a, I> {
    Wait {
        io,
        lot,
        due: lot.tick(deadline, true),
        key: NO_SLOT,
    }
}

/// A `Wait` that holds no slot (a slab never hands out this key: its
/// entries would not fit in memory).
const NO_SLOT: usize = usize::MAX;

impl<I: Readable> Wait<'_, I> {
    fn hold(&mut self, waker: &Waker) {
        let mut parked = self.lot.lock();
        match parked.slots.get_mut(self.key) {
            Some(slot) => {
                if !slot.waker.will_wake(waker) {
                    slot.waker = waker.clone();
                }
            }
            None => {
                self.key = parked.slots.insert(Slot {
                    due: self.due,
                    waker: waker.clone(),
                });
                parked.next_due = parked.next_due.min(self.due);
            }
        }
    }
}

impl<I: Readable> std::future::Future for Wait<'_, I> {
    type Output = Woke;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Woke> {
        let this = self.get_mut();
        match this.io.poll_readable(cx) {
            Poll::Ready(Ok(())) => return Poll::Ready(Woke::Readable),
            Poll::Ready(Err(_)) => return Poll::Ready(Woke::Failed),
            Poll::Pending => {}
        }
        if this.lot.draining() {
            return Poll::Ready(Woke::Drained);
        }
        if this.lot.tick(Instant::now(), false) >= this.due {
            return Poll::Ready(Woke::Expired);
        }
        this.hold(cx.waker());
        // Read after the slot is held: a drain that began in between
        // either saw the slot and woke it, or is seen here.
        if this.lot.draining() {
            return Poll::Ready(Woke::Drained);
        }
        Poll::Pending
    }
}

impl<I> Drop for Wait<'_, I> {
    fn drop(&mut self) {
        if self.key != NO_SLOT {
            self.lot.lock().slots.try_remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn clock() -> Arc<IdleClock> {
        Arc::new(IdleClock::new(Duration::from_secs(10), Arc::default()))
    }

    #[test]
    fn leftover_copies_only_what_is_unread() {
        assert!(leftover(Bytes::new(), Bytes::new()).is_empty());
        let mut big = bytes::BytesMut::with_capacity(8192);
        big.extend_from_slice(b"GET / HT");
        let kept = leftover(Bytes::new(), big.freeze());
        assert_eq!(&kept[..], b"GET / HT");
        assert_eq!(
            &leftover(
                Bytes::from_static(b"TP/1.1"),
                Bytes::from_static(b"GET / HT")
            )[..],
            b"GET / HTTP/1.1",
            "hyper's bytes were read before the ones it never saw"
        );
    }

    #[tokio::test]
    async fn the_prefix_is_read_before_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.expect("write");
        let mut io = Resumable::new(Bytes::from_static(b"hello"), server, clock());
        let mut got = [0u8; 11];
        io.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello world");
    }

    #[tokio::test]
    async fn records_a_blocked_read_and_a_flush() {
        let (mut client, server) = tokio::io::duplex(64);
        let owner = clock();
        let mut io = Resumable::new(Bytes::new(), server, Arc::clone(&owner));
        let mut buf = [0u8; 8];
        let blocked = tokio::time::timeout(Duration::from_millis(20), io.read(&mut buf)).await;
        assert!(blocked.is_err());
        assert!(owner.read_blocked());
        client.write_all(b"x").await.expect("write");
        assert_eq!(io.read(&mut buf).await.expect("read"), 1);
        assert!(!owner.read_blocked());

        io.write_all(b"y").await.expect("write");
        assert!(!owner.flushed());
        io.flush().await.expect("flush");
        assert!(owner.flushed());
    }

    /// A socket that never has bytes.
    struct Silent;

    impl AsyncRead for Silent {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Silent {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Readable for Silent {
        fn poll_readable(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_parked_wait_expires_after_its_deadline_within_a_sweep() {
        let lot = Arc::new(ParkingLot::default());
        tokio::spawn(sweep(Arc::downgrade(&lot)));
        let deadline = Instant::now() + Duration::from_millis(1100);
        let woke = wait(&Silent, &lot, deadline).await;
        assert_eq!(woke, Woke::Expired);
        let now = Instant::now();
        assert!(now >= deadline, "never before its deadline");
        assert!(now <= deadline + SWEEP, "noticed by the next sweep");
        assert_eq!(lot.len(), 0, "its slot was given back");
    }

    #[tokio::test(start_paused = true)]
    async fn each_parked_wait_expires_at_its_own_deadline() {
        let lot = Arc::new(ParkingLot::default());
        tokio::spawn(sweep(Arc::downgrade(&lot)));
        let start = Instant::now();
        let later = {
            let lot = Arc::clone(&lot);
            tokio::spawn(async move { wait(&Silent, &lot, start + Duration::from_secs(5)).await })
        };
        let sooner = wait(&Silent, &lot, start + Duration::from_millis(600)).await;
        assert_eq!(sooner, Woke::Expired);
        assert_eq!(lot.len(), 1, "the later one still waits");
        assert!(!later.is_finished());
        assert_eq!(later.await.expect("wait task"), Woke::Expired);
        assert!(Instant::now() >= start + Duration::from_secs(5));
        assert_eq!(lot.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_wakes_every_parked_wait() {
        let lot = Arc::new(ParkingLot::default());
        let far = Instant::now() + Duration::from_secs(3600);
        let waits: Vec<_> = (0..3)
            .map(|_| {
                let lot = Arc::clone(&lot);
                tokio::spawn(async move { wait(&Silent, &lot, far).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(lot.len(), 3, "each parked wait holds one slot");
        lot.drain();
        for waiting in waits {
            assert_eq!(waiting.await.expect("wait task"), Woke::Drained);
        }
        assert_eq!(lot.len(), 0);
        let late = wait(&Silent, &lot, far).await;
        assert_eq!(late, Woke::Drained, "a park after the drain ends at once");
    }

    #[tokio::test]
    async fn a_readable_socket_takes_no_slot() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let lot = ParkingLot::default();
        let far = Instant::now() + Duration::from_secs(3600);
        client.write_all(b"GET").await.expect("write");
        assert_eq!(wait(&server, &lot, far).await, Woke::Readable);
        assert_eq!(lot.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_dropped_unfinished_gives_its_slot_back() {
        let lot = ParkingLot::default();
        let far = Instant::now() + Duration::from_secs(3600);
        let timed_out =
            tokio::time::timeout(Duration::from_millis(10), wait(&Silent, &lot, far)).await;
        assert!(timed_out.is_err());
        assert_eq!(lot.len(), 0);
    }
}
