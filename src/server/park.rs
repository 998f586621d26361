//! Idle HTTP/1.1 and HTTP/2 connections parked as bare sockets, with no
//! task.
//!
//! A hyper connection holds an 8 KiB read buffer (grown up to
//! `limits.max_header_bytes`), a write buffer and its dispatcher state for
//! as long as it lives, about 22 KiB in all. A keep-alive client that sends
//! nothing for minutes would keep all of it. So when an HTTP/1.1 connection
//! has nothing to do (no request in flight, every byte written and flushed,
//! the socket would block on read, and the last request could not have left
//! body bytes or an upgrade behind) and has stayed so for 50 ms (a busy
//! client's next request comes sooner and pays no rebuild), the connection
//! task takes the socket back from hyper with `into_parts`, drops hyper's
//! state, moves the socket into the `ParkingLot` and ends. When bytes
//! arrive, a new task builds a new hyper connection around it. The bytes
//! hyper had read but not parsed (a partial head) are copied out and handed
//! to the next connection first, so a head split across the park point is
//! read whole.
//!
//! An HTTP/2 connection is parked the same way once it has had no stream
//! open for 50 ms, with nothing buffered: hyper's connection (patched, see
//! `vendor/hyper`) hands back the socket and h2's compact record of the
//! connection's state (HPACK decoding table, settings, windows, stream
//! ids), and resumes from them without a handshake. A parked HTTP/2
//! connection closed by its idle deadline or the drain is resumed once
//! more to send GOAWAY.
//!
//! The conditions are tracked by `Resumable`, the I/O hyper is given, and by
//! the service (`IdleClock::set_parkable`), in relaxed atomics on the
//! connection's `IdleClock`: hyper does not say whether it is between
//! requests, so the connection is parked only when all of them hold.
//!
//! A parked connection is a slot in the lot: its socket (the `TcpStream`
//! itself, never a bare file descriptor, which the kernel could hand to
//! another connection once closed), the bytes it left unparsed, who its
//! client is, when it went idle and its hold on the listener's connection
//! count; a few hundred bytes, where a task of its own, waiting, was some
//! 650 more. Each slot's socket holds a waker that names the slot: a
//! readable socket queues its key and wakes the lot's one task (`run`),
//! which checks readiness and spawns a task to serve the connection again.
//! The same task sweeps the idle deadlines every `SWEEP`; the drain closes
//! every parked socket at once.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use slab::Slab;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
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

/// How many woken sockets the lot's task looks at before it yields: a
/// wake-up of 10,000 parked sockets at once (a load balancer's probes, a
/// network blip) must not hold a worker for all of them.
const BATCH: usize = 64;

/// A connection that can wait in the lot: what the lot needs of it.
pub trait Parkable: Send + 'static {
    /// Ready when its socket has bytes, EOF or an error to read; otherwise
    /// registers `cx`'s waker with the socket.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// It sent no request head by its deadline: close it.
    fn expire(self);

    /// The drain closes it (dropping it closes its socket; an HTTP/2
    /// connection is sent GOAWAY first).
    fn close(self);
}

/// Where parked connections wait, with no task of their own, for bytes,
/// their idle deadline or the drain. One task (`run`) serves the lot: a
/// socket that becomes readable wakes its slot's waker, which queues the
/// slot's key and wakes that task, which hands the connection back to be
/// served on a new task of its own.
pub struct ParkingLot<P> {
    /// When tick 0 began; deadlines are kept in whole `SWEEP` ticks.
    origin: Instant,
    /// Off the request path: locked when a connection parks (at most once
    /// per `PARK_AFTER` of idleness), when a parked socket wakes, by the
    /// sweep every `SWEEP`, and by the drain.
    parked: Mutex<Slots<P>>,
    ready: Arc<Ready>,
    draining: AtomicBool,
}

struct Slots<P> {
    slab: Slab<Slot<P>>,
    /// No slot is due before this tick: a sweep before it scans nothing,
    /// so a long idle limit costs one lock every `SWEEP`, not a scan of
    /// every parked connection.
    next_due: u32,
}

/// One parked connection. The connection is boxed so that the slab, which
/// keeps its largest size after a burst, holds three words a slot.
struct Slot<P> {
    /// The first tick at or after the connection's idle deadline.
    due: u32,
    waker: Arc<SlotWaker>,
    conn: Box<P>,
}

/// The keys of slots whose socket woke, for the lot's task.
struct Ready {
    keys: Mutex<Vec<usize>>,
    task: Notify,
}

/// The waker a parked socket holds: wakes the lot's task with its slot's
/// key. A waker outliving its slot (the socket moved on, the key given to
/// another connection) at worst makes the task look at a slot whose socket
/// is not readable, which costs one readiness check.
struct SlotWaker {
    key: usize,
    /// Already in `Ready::keys` and not yet looked at: a socket that wakes
    /// again meanwhile queues nothing more, so the queue holds each slot at
    /// most once.
    queued: AtomicBool,
    ready: Arc<Ready>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            lock(&self.ready.keys).push(self.key);
            self.ready.task.notify_one();
        }
    }
}

impl<P> Default for ParkingLot<P> {
    fn default() -> ParkingLot<P> {
        ParkingLot {
            origin: Instant::now(),
            parked: Mutex::new(Slots {
                slab: Slab::new(),
                next_due: u32::MAX,
            }),
            ready: Arc::new(Ready {
                keys: Mutex::new(Vec::new()),
                task: Notify::new(),
            }),
            draining: AtomicBool::new(false),
        }
    }
}

impl<P: Parkable> ParkingLot<P> {
    /// Parks `conn` until its socket is readable, `deadline` has passed
    /// (noticed within one `SWEEP`, never before) or the drain begins.
    /// Hands it back when it is readable already: serve it on. Closes it
    /// when the drain has begun or the deadline has passed.
    pub fn park(&self, conn: P, deadline: Instant) -> Option<P> {
        let due = self.tick(deadline, true);
        let mut slots = self.lock();
        if self.draining() {
            drop(slots);
            conn.close();
            return None;
        }
        if self.tick(Instant::now(), false) >= due {
            drop(slots);
            conn.expire();
            return None;
        }
        let entry = slots.slab.vacant_entry();
        let waker = Arc::new(SlotWaker {
            key: entry.key(),
            queued: AtomicBool::new(false),
            ready: Arc::clone(&self.ready),
        });
        // The slot's waker is registered with the socket before the slot is
        // filled, under the lock: bytes that arrive in between queue the key,
        // and the lot's task, which needs the lock to look, finds it filled.
        let woken = Waker::from(Arc::clone(&waker));
        if conn
            .poll_readable(&mut Context::from_waker(&woken))
            .is_ready()
        {
            return Some(conn);
        }
        entry.insert(Slot {
            due,
            waker,
            conn: Box::new(conn),
        });
        slots.next_due = slots.next_due.min(due);
        None
    }

    /// Closes every parked connection, at once, and every one parked from
    /// now on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let all = std::mem::take(&mut self.lock().slab);
        // Closed outside the lock: 10,000 sockets are 10,000 system calls.
        all.into_iter().for_each(|(_, slot)| slot.conn.close());
        self.ready.task.notify_one();
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// How many connections are parked.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().slab.len()
    }

    /// Looks at the slots whose socket woke; returns the connections that
    /// are readable, out of the lot.
    fn take_readable(&self, keys: &[usize], readable: &mut Vec<Box<P>>) {
        let mut slots = self.lock();
        for &key in keys {
            let Some(slot) = slots.slab.get(key) else {
                continue;
            };
            // Cleared before the check: a wake-up after it queues the key
            // again, one before it is seen by the check.
            slot.waker.queued.store(false, Ordering::Release);
            let waker = Waker::from(Arc::clone(&slot.waker));
            if slot
                .conn
                .poll_readable(&mut Context::from_waker(&waker))
                .is_ready()
            {
                readable.push(slots.slab.remove(key).conn);
            }
        }
    }

    /// Closes the connections whose deadline has passed by `now`.
    fn sweep(&self, now: Instant) {
        let tick = self.tick(now, false);
        let mut expired = Vec::new();
        {
            let mut slots = self.lock();
            if tick < slots.next_due {
                return;
            }
            let mut next_due = u32::MAX;
            let mut due = Vec::new();
            for (key, slot) in slots.slab.iter() {
                if slot.due <= tick {
                    due.push(key);
                } else {
                    next_due = next_due.min(slot.due);
                }
            }
            slots.next_due = next_due;
            expired.extend(due.into_iter().map(|key| slots.slab.remove(key).conn));
        }
        expired.into_iter().for_each(|conn| conn.expire());
    }

    /// `at` in ticks since `origin`, rounded up for a deadline (so the
    /// sweep never closes a connection before it).
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
}

impl<P> ParkingLot<P> {
    fn lock(&self) -> MutexGuard<'_, Slots<P>> {
        lock(&self.parked)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The lot's task: hands each parked connection whose socket is readable
/// to `resume` (which serves it on a task of its own) and sweeps the idle
/// deadlines every `SWEEP`, until the drain begins or the lot is gone.
pub async fn run<P: Parkable>(lot: Weak<ParkingLot<P>>, mut resume: impl FnMut(P)) {
    let Some(ready) = lot.upgrade().map(|lot| Arc::clone(&lot.ready)) else {
        return;
    };
    let mut ticks = tokio::time::interval(SWEEP);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut keys = Vec::new();
    let mut readable = Vec::with_capacity(BATCH);
    loop {
        let swept = tokio::select! {
            () = ready.task.notified() => false,
            _ = ticks.tick() => true,
        };
        let Some(lot) = lot.upgrade() else { return };
        if lot.draining() {
            return;
        }
        if swept {
            lot.sweep(Instant::now());
        }
        loop {
            std::mem::swap(&mut keys, &mut *lock(&ready.keys));
            if keys.is_empty() {
                break;
            }
            for batch in keys.chunks(BATCH) {
                lot.take_readable(batch, &mut readable);
                readable.drain(..).for_each(|conn| resume(*conn));
                tokio::task::yield_now().await;
            }
            keys.clear();
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

    /// What happened to a parked test connection.
    #[derive(Debug, PartialEq, Eq)]
    enum Fate {
        Resumed(usize),
        Expired(usize),
    }

    /// A parked test connection: its socket (none: never readable), and
    /// where it reports its fate; counts itself out when dropped.
    struct Probe {
        io: Option<TcpStream>,
        id: usize,
        fate: tokio::sync::mpsc::UnboundedSender<Fate>,
        alive: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Probe {
        fn new(
            io: Option<TcpStream>,
            id: usize,
            fate: &tokio::sync::mpsc::UnboundedSender<Fate>,
            alive: &Arc<std::sync::atomic::AtomicUsize>,
        ) -> Probe {
            alive.fetch_add(1, Ordering::SeqCst);
            Probe {
                io,
                id,
                fate: fate.clone(),
                alive: Arc::clone(alive),
            }
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.alive.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Parkable for Probe {
        fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match &self.io {
                Some(io) => io.poll_readable(cx),
                None => Poll::Pending,
            }
        }

        fn expire(self) {
            let _ = self.fate.send(Fate::Expired(self.id));
        }

        fn close(self) {}
    }

    struct Fixture {
        lot: Arc<ParkingLot<Probe>>,
        fates: tokio::sync::mpsc::UnboundedReceiver<Fate>,
        fate: tokio::sync::mpsc::UnboundedSender<Fate>,
        alive: Arc<std::sync::atomic::AtomicUsize>,
        /// Resumed connections, kept open and unread: their sockets still
        /// hold their slot's waker.
        resumed: Arc<Mutex<Vec<Probe>>>,
    }

    /// A lot and its task; a resumed connection reports and is kept.
    fn fixture() -> Fixture {
        let lot = Arc::new(ParkingLot::default());
        let (fate, fates) = tokio::sync::mpsc::unbounded_channel();
        let resumed: Arc<Mutex<Vec<Probe>>> = Arc::default();
        let kept = Arc::clone(&resumed);
        tokio::spawn(run(Arc::downgrade(&lot), move |probe: Probe| {
            let _ = probe.fate.send(Fate::Resumed(probe.id));
            lock(&kept).push(probe);
        }));
        Fixture {
            lot,
            fates,
            fate,
            alive: Arc::default(),
            resumed,
        }
    }

    impl Fixture {
        fn probe(&self, io: Option<TcpStream>, id: usize) -> Probe {
            Probe::new(io, id, &self.fate, &self.alive)
        }

        fn alive(&self) -> usize {
            self.alive.load(Ordering::SeqCst)
        }
    }

    /// `n` connected pairs on loopback: (client, server side).
    async fn pairs(n: usize) -> Vec<(TcpStream, TcpStream)> {
        // Two descriptors a pair, beside other tests' in this process.
        let limit = rlimit::increase_nofile_limit(16_384).expect("raise RLIMIT_NOFILE");
        assert!(limit >= 4 * n as u64, "RLIMIT_NOFILE only {limit}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            let client = TcpStream::connect(addr).await.expect("connect");
            let (server, _) = listener.accept().await.expect("accept");
            // A new socket reads as ready until a read would block, as it
            // has by the time a connection parks.
            let would_block = server.try_read(&mut [0u8; 1]).expect_err("no bytes yet");
            assert_eq!(would_block.kind(), io::ErrorKind::WouldBlock);
            all.push((client, server));
        }
        all
    }

    #[tokio::test(start_paused = true)]
    async fn a_parked_connection_expires_after_its_deadline_within_a_sweep() {
        let mut f = fixture();
        let deadline = Instant::now() + Duration::from_millis(1100);
        assert!(f.lot.park(f.probe(None, 1), deadline).is_none());
        assert_eq!(f.lot.len(), 1);
        assert_eq!(f.fates.recv().await, Some(Fate::Expired(1)));
        let now = Instant::now();
        assert!(now >= deadline, "never before its deadline");
        assert!(now <= deadline + SWEEP, "noticed by the next sweep");
        assert_eq!(f.lot.len(), 0, "its slot was given back");
        assert_eq!(f.alive(), 0, "and the connection closed");
    }

    #[tokio::test(start_paused = true)]
    async fn each_parked_connection_expires_at_its_own_deadline() {
        let mut f = fixture();
        let start = Instant::now();
        assert!(f
            .lot
            .park(f.probe(None, 1), start + Duration::from_secs(5))
            .is_none());
        assert!(f
            .lot
            .park(f.probe(None, 2), start + Duration::from_millis(600))
            .is_none());
        assert_eq!(f.fates.recv().await, Some(Fate::Expired(2)));
        assert_eq!(f.lot.len(), 1, "the later one still waits");
        assert_eq!(f.fates.recv().await, Some(Fate::Expired(1)));
        assert!(Instant::now() >= start + Duration::from_secs(5));
        assert_eq!(f.lot.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_past_its_deadline_is_not_parked() {
        let mut f = fixture();
        tokio::time::advance(Duration::from_secs(1)).await;
        let past = Instant::now() - Duration::from_millis(500);
        assert!(f.lot.park(f.probe(None, 7), past).is_none());
        assert_eq!(f.lot.len(), 0);
        assert_eq!(f.fates.recv().await, Some(Fate::Expired(7)));
    }

    #[tokio::test]
    async fn the_drain_closes_every_parked_connection_at_once() {
        let f = fixture();
        let far = Instant::now() + Duration::from_secs(3600);
        let sockets = pairs(1000).await;
        let mut clients = Vec::new();
        for (id, (client, server)) in sockets.into_iter().enumerate() {
            assert!(f.lot.park(f.probe(Some(server), id), far).is_none());
            clients.push(client);
        }
        assert_eq!(f.lot.len(), 1000);
        assert_eq!(f.alive(), 1000);
        f.lot.drain();
        assert_eq!(f.lot.len(), 0);
        assert_eq!(f.alive(), 0, "every parked connection was closed");
        for client in &mut clients {
            let mut buf = [0u8; 8];
            let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
                .await
                .expect("closed at once")
                .expect("read");
            assert_eq!(n, 0, "EOF");
        }
        assert!(
            f.lot.park(f.probe(None, 1), far).is_none(),
            "a park after the drain"
        );
        assert_eq!(f.lot.len(), 0, "is closed at once");
        assert_eq!(f.alive(), 0);
    }

    #[tokio::test]
    async fn a_socket_readable_at_park_time_is_handed_back() {
        let f = fixture();
        let (mut client, server) = pairs(1).await.pop().expect("a pair");
        client.write_all(b"GET").await.expect("write");
        server.readable().await.expect("bytes arrive");
        let far = Instant::now() + Duration::from_secs(3600);
        let back = f.lot.park(f.probe(Some(server), 1), far);
        assert_eq!(back.map(|probe| probe.id), Some(1), "served on at once");
        assert_eq!(f.lot.len(), 0, "it took no slot");
    }

    #[tokio::test]
    async fn a_parked_socket_that_becomes_readable_is_resumed() {
        let mut f = fixture();
        let mut sockets = pairs(3).await;
        let far = Instant::now() + Duration::from_secs(3600);
        let (mut first, server) = sockets.remove(0);
        assert!(f.lot.park(f.probe(Some(server), 0), far).is_none());
        let (mut second, server) = sockets.remove(0);
        assert!(f.lot.park(f.probe(Some(server), 1), far).is_none());
        let (_third, server) = sockets.remove(0);
        assert!(f.lot.park(f.probe(Some(server), 2), far).is_none());
        assert_eq!(f.lot.len(), 3);

        second.write_all(b"GET").await.expect("write");
        assert_eq!(f.fates.recv().await, Some(Fate::Resumed(1)));
        assert_eq!(f.lot.len(), 2, "only the readable one left the lot");
        drop(first.shutdown().await);
        assert_eq!(
            f.fates.recv().await,
            Some(Fate::Resumed(0)),
            "EOF is for the connection to read"
        );
        assert_eq!(f.lot.len(), 1);
        assert_eq!(lock(&f.resumed).len(), 2);
        assert_eq!(f.alive(), 3, "none was closed");
    }

    #[tokio::test]
    async fn a_wake_storm_resumes_every_socket() {
        let mut f = fixture();
        let far = Instant::now() + Duration::from_secs(3600);
        let mut clients = Vec::new();
        for (id, (client, server)) in pairs(1000).await.into_iter().enumerate() {
            assert!(f.lot.park(f.probe(Some(server), id), far).is_none());
            clients.push(client);
        }
        for client in &mut clients {
            client.write_all(b"G").await.expect("write");
        }
        let mut resumed = vec![false; clients.len()];
        for _ in 0..clients.len() {
            match f.fates.recv().await {
                Some(Fate::Resumed(id)) => {
                    assert!(!resumed[id], "{id} resumed twice");
                    resumed[id] = true;
                }
                other => panic!("expected a resumption, got {other:?}"),
            }
        }
        assert_eq!(f.lot.len(), 0);
        assert_eq!(lock(&f.resumed).len(), 1000);
    }

    #[tokio::test]
    async fn a_slot_reused_after_its_socket_left_is_not_confused() {
        let mut f = fixture();
        let far = Instant::now() + Duration::from_secs(3600);
        let mut sockets = pairs(2).await;
        let (mut first, server) = sockets.remove(0);
        assert!(f.lot.park(f.probe(Some(server), 0), far).is_none());
        first.write_all(b"G").await.expect("write");
        assert_eq!(f.fates.recv().await, Some(Fate::Resumed(0)));
        // The same key, another socket; a stale wake-up of the old waker
        // makes the lot look at it, and it is not readable.
        let (mut second, server) = sockets.remove(0);
        assert!(f.lot.park(f.probe(Some(server), 1), far).is_none());
        assert_eq!(f.lot.len(), 1);
        first.write_all(b"G").await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(f.fates.try_recv().is_err(), "nothing resumed");
        assert_eq!(f.lot.len(), 1);
        second.write_all(b"G").await.expect("write");
        assert_eq!(f.fates.recv().await, Some(Fate::Resumed(1)));
    }
}
