//! An HTTP/2 connection's streams, run inside the connection's own task.
//!
//! hyper's HTTP/2 server hands each new stream's future to its executor;
//! with tokio's, that is a task per stream. A proxied request then took four
//! task polls over its two wake-ups (the connection reads HEADERS and spawns;
//! the stream writes upstream; the stream answers and wakes the connection;
//! the connection writes the frames), one task allocated and scheduled, and
//! a wake across tasks each way. Here the executor leaves each stream with
//! the connection that made it ([`InConnection`]), and [`Multiplexed`] polls
//! the connection and its streams as one future: one poll per wake-up, the
//! connection polled only when something woke it (its own streams handing
//! it frames included, served within the same poll), a stream only when its
//! own waker fired.
//!
//! Not `FuturesUnordered`: it wakes its task again whenever it has polled
//! every future once, which with one stream in flight is every time: a
//! third task poll per request.
//!
//! The price: one connection's streams share its task, so they run on one
//! worker at a time, as NGINX and Envoy serve a connection on one thread.
//! Many connections still spread over the workers.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// A stream's future (or a CONNECT tunnel's), type-erased: hyper's type
/// for it names the executor, which cannot name it back.
type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

thread_local! {
    /// Whether a `Multiplexed` is being polled on this thread.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
    /// Streams handed over while it was, for it to take once its connection
    /// or stream returns: per thread, so that an idle connection holds no
    /// queue of its own and a hand-over is neither a lock nor an atomic.
    static HANDED: RefCell<Vec<Stream>> = const { RefCell::new(Vec::new()) };
}

/// hyper's executor for HTTP/2 streams: keeps each with the connection
/// being polled. Outside a `Multiplexed` (nothing in veer does that) it
/// spawns a task, as tokio's executor would.
#[derive(Clone, Copy, Debug, Default)]
pub struct InConnection;

impl<F> hyper::rt::Executor<F> for InConnection
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        if INSIDE.with(Cell::get) {
            HANDED.with(|handed| handed.borrow_mut().push(Box::pin(future)));
        } else {
            tokio::spawn(future);
        }
    }
}

/// What woke, shared by the connection's waker and its streams' wakers.
/// A wake records what has work, and wakes the task only when the task is
/// not polling already: a stream that queues its response frames wakes the
/// connection from inside the task's own poll, where tokio would poll the
/// task once more for it, and the poll loop sees the flag instead.
struct Shared {
    connection: AtomicBool,
    streams: AtomicBool,
    polling: AtomicBool,
    task: AtomicWaker,
}

impl Shared {
    fn nudge(&self) {
        // SeqCst with the poll loop's pair (`polling` stored false, then the
        // flags read): either this sees the loop still polling, or the loop
        // sees the flag.
        if !self.polling.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

/// The connection's waker.
impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.connection.store(true, Ordering::SeqCst);
        self.nudge();
    }
}

/// A stream slot's waker. Slots are reused, so a waker lives as long as
/// its connection and a stream costs no allocation but its own box; a
/// late wake meant for a slot's last stream polls the next one once more,
/// which a future allows.
struct Slot {
    woken: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for Slot {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        self.shared.streams.store(true, Ordering::SeqCst);
        self.shared.nudge();
    }
}

struct Entry {
    stream: Option<Stream>,
    slot: Arc<Slot>,
    waker: Waker,
}

/// Rounds of one poll past which the task yields to the others: a stream
/// that keeps waking itself (tokio's budget spent) is polled again on the
/// task's next turn rather than in a loop here.
const ROUNDS: usize = 16;

/// Slots an idle connection keeps for its next streams.
const KEPT_SLOTS: usize = 4;

/// An HTTP/2 connection with its streams, polled together.
pub struct Multiplexed<C> {
    connection: C,
    shared: Arc<Shared>,
    waker: Waker,
    /// Empty, and unallocated, until the first stream.
    entries: Vec<Entry>,
    live: usize,
    /// The connection's end, held while streams it left still run.
    ended: Option<hyper::Result<()>>,
}

impl<C> Multiplexed<C>
where
    C: Future<Output = hyper::Result<()>> + Unpin,
{
    pub fn new(connection: C) -> Multiplexed<C> {
        let shared = Arc::new(Shared {
            // The first poll must poll the connection.
            connection: AtomicBool::new(true),
            streams: AtomicBool::new(false),
            polling: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        Multiplexed {
            connection,
            waker: Waker::from(Arc::clone(&shared)),
            shared,
            entries: Vec::new(),
            live: 0,
            ended: None,
        }
    }

    /// The connection itself (for its graceful shutdown); it is polled on
    /// the next poll whatever was done to it.
    pub fn connection(&mut self) -> &mut C {
        self.shared.connection.store(true, Ordering::SeqCst);
        &mut self.connection
    }

    /// The connection alone, to be parked, when no stream (or tunnel) it
    /// made is running and it has not ended; otherwise itself.
    pub fn into_connection(self) -> Result<C, Self> {
        if self.live == 0 && self.ended.is_none() {
            Ok(self.connection)
        } else {
            Err(self)
        }
    }

    /// Takes the streams handed over during the last poll of the
    /// connection or of a stream, each marked to be polled; whether there
    /// were any.
    fn adopt(&mut self) -> bool {
        HANDED.with(|handed| {
            let mut handed = handed.borrow_mut();
            if handed.is_empty() {
                return false;
            }
            for stream in handed.drain(..) {
                self.live += 1;
                let free = self.entries.iter().position(|entry| entry.stream.is_none());
                let index = free.unwrap_or_else(|| {
                    let slot = Arc::new(Slot {
                        woken: AtomicBool::new(false),
                        shared: Arc::clone(&self.shared),
                    });
                    self.entries.push(Entry {
                        stream: None,
                        waker: Waker::from(Arc::clone(&slot)),
                        slot,
                    });
                    self.entries.len() - 1
                });
                let entry = &mut self.entries[index];
                entry.stream = Some(stream);
                entry.slot.woken.store(true, Ordering::SeqCst);
            }
            self.shared.streams.store(true, Ordering::SeqCst);
            true
        })
    }

    /// Polls the streams whose wakers fired.
    fn poll_streams(&mut self) {
        for entry in &mut self.entries {
            let Some(stream) = &mut entry.stream else {
                continue;
            };
            if !entry.slot.woken.swap(false, Ordering::SeqCst) {
                continue;
            }
            let mut cx = Context::from_waker(&entry.waker);
            if stream.as_mut().poll(&mut cx).is_ready() {
                entry.stream = None;
                self.live -= 1;
            }
        }
    }

    fn poll_inside(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        self.shared.task.register(cx.waker());
        let mut rounds = 0;
        loop {
            self.shared.polling.store(true, Ordering::SeqCst);
            if self.ended.is_none() && self.shared.connection.swap(false, Ordering::SeqCst) {
                let mut own = Context::from_waker(&self.waker);
                if let Poll::Ready(result) = Pin::new(&mut self.connection).poll(&mut own) {
                    self.ended = Some(result);
                }
                self.adopt();
            }
            if self.shared.streams.swap(false, Ordering::SeqCst) {
                self.poll_streams();
                // A stream that ended may have handed over a tunnel.
                self.adopt();
            }
            self.shared.polling.store(false, Ordering::SeqCst);
            let more = (self.ended.is_none() && self.shared.connection.load(Ordering::SeqCst))
                || self.shared.streams.load(Ordering::SeqCst);
            if !more {
                break;
            }
            rounds += 1;
            if rounds == ROUNDS {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        if self.live == 0 {
            if let Some(result) = self.ended.take() {
                return Poll::Ready(result);
            }
            // A burst of streams does not leave its slots to an idle
            // connection (some 80 bytes each).
            self.entries.truncate(KEPT_SLOTS);
        }
        Poll::Pending
    }
}

impl<C> Future for Multiplexed<C>
where
    C: Future<Output = hyper::Result<()>> + Unpin,
{
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let _inside = Inside::enter();
        self.get_mut().poll_inside(cx)
    }
}

/// Marks this thread as inside a `Multiplexed` poll until dropped, and
/// restores what it was (also when a stream panics, in a test).
struct Inside(bool);

impl Inside {
    fn enter() -> Inside {
        Inside(INSIDE.with(|inside| inside.replace(true)))
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        INSIDE.with(|inside| inside.set(self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor as _;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    /// Stands in for hyper's connection: hands over `streams` on its first
    /// poll, keeps the waker it was polled with, counts its polls and ends
    /// when told.
    struct Connection {
        streams: Vec<Stream>,
        polls: Arc<AtomicUsize>,
        waker: Arc<Mutex<Option<Waker>>>,
        end: Arc<AtomicBool>,
    }

    impl Future for Connection {
        type Output = hyper::Result<()>;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            for stream in std::mem::take(&mut self.streams) {
                InConnection.execute(stream);
            }
            *self.waker.lock().expect("not poisoned") = Some(cx.waker().clone());
            if self.end.load(Ordering::SeqCst) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
    }

    /// The fake connection, its poll count, the waker it was last polled
    /// with, and its switch to end.
    type Handles = (
        Connection,
        Arc<AtomicUsize>,
        Arc<Mutex<Option<Waker>>>,
        Arc<AtomicBool>,
    );

    fn connection(streams: Vec<Stream>) -> Handles {
        let polls = Arc::new(AtomicUsize::new(0));
        let waker = Arc::new(Mutex::new(None));
        let end = Arc::new(AtomicBool::new(false));
        let fake = Connection {
            streams,
            polls: Arc::clone(&polls),
            waker: Arc::clone(&waker),
            end: Arc::clone(&end),
        };
        (fake, polls, waker, end)
    }

    /// Counts the wake-ups of the task polling the `Multiplexed`.
    struct Task(AtomicUsize);

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn streams_run_in_the_connection_task_and_the_connection_ends_after_them() {
        // Spawned: a task of its own, whose id the stream must see.
        tokio::spawn(async move {
            let task = tokio::task::id();
            let ran_in = Arc::new(Mutex::new(Vec::new()));
            let (release, released) = tokio::sync::oneshot::channel::<()>();
            let stream = {
                let ran_in = Arc::clone(&ran_in);
                Box::pin(async move {
                    ran_in.lock().expect("not poisoned").push(tokio::task::id());
                    let _ = released.await;
                }) as Stream
            };
            let (fake, _, _, end) = connection(vec![stream]);
            let mut multiplexed = Multiplexed::new(fake);
            let polled =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut multiplexed).poll(cx))).await;
            assert!(polled.is_pending());
            assert_eq!(*ran_in.lock().expect("not poisoned"), vec![task]);

            // The connection ends while its stream still runs: it is not done.
            end.store(true, Ordering::SeqCst);
            multiplexed.connection();
            let polled =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut multiplexed).poll(cx))).await;
            assert!(polled.is_pending(), "ended while a stream was left");
            release.send(()).expect("stream waiting");
            multiplexed.await.expect("connection ended well");
        })
        .await
        .expect("no panic");
    }

    #[test]
    fn the_connection_is_polled_only_when_woken() {
        let (fake, polls, waker, _) = connection(Vec::new());
        let mut multiplexed = Multiplexed::new(fake);
        let task = Arc::new(Task(AtomicUsize::new(0)));
        let outer = Waker::from(Arc::clone(&task));
        let mut cx = Context::from_waker(&outer);
        for _ in 0..3 {
            assert!(Pin::new(&mut multiplexed).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);

        // A wake from outside (its socket) wakes the task.
        waker
            .lock()
            .expect("not poisoned")
            .clone()
            .expect("registered")
            .wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert!(Pin::new(&mut multiplexed).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_wake_from_a_stream_inside_the_poll_does_not_wake_the_task() {
        let (fake, polls, waker, _) = connection(Vec::new());
        let mut multiplexed = Multiplexed::new(fake);
        let task = Arc::new(Task(AtomicUsize::new(0)));
        let outer = Waker::from(Arc::clone(&task));
        let mut cx = Context::from_waker(&outer);
        assert!(Pin::new(&mut multiplexed).poll(&mut cx).is_pending());

        // A stream handed over later, which wakes the connection when polled.
        let connection = waker
            .lock()
            .expect("not poisoned")
            .clone()
            .expect("registered");
        let stream = Box::pin(async move {
            connection.wake();
        }) as Stream;
        let _inside = Inside::enter();
        InConnection.execute(stream);
        assert!(multiplexed.adopt());
        drop(_inside);
        assert!(Pin::new(&mut multiplexed).poll(&mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            2,
            "polled again in the same run"
        );
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            0,
            "the task was not woken for it"
        );
    }

    #[test]
    fn a_stream_that_keeps_waking_itself_yields_the_task() {
        let polls = Arc::new(AtomicUsize::new(0));
        let stream = {
            let polls = Arc::clone(&polls);
            Box::pin(std::future::poll_fn(move |cx| {
                polls.fetch_add(1, Ordering::SeqCst);
                cx.waker().wake_by_ref();
                Poll::<()>::Pending
            })) as Stream
        };
        let (fake, _, _, _) = connection(vec![stream]);
        let mut multiplexed = Multiplexed::new(fake);
        let task = Arc::new(Task(AtomicUsize::new(0)));
        let outer = Waker::from(Arc::clone(&task));
        let mut cx = Context::from_waker(&outer);
        assert!(Pin::new(&mut multiplexed).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), ROUNDS);
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "woken to come back");
    }

    #[test]
    fn a_future_handed_over_by_a_stream_runs_and_slots_are_reused() {
        let ran = Arc::new(AtomicUsize::new(0));
        // Each stream hands over another as it ends, as an HTTP/2 CONNECT
        // hands over its tunnel.
        let stream = {
            let ran = Arc::clone(&ran);
            Box::pin(async move {
                ran.fetch_add(1, Ordering::SeqCst);
                let ran = Arc::clone(&ran);
                InConnection.execute(async move {
                    ran.fetch_add(1, Ordering::SeqCst);
                });
            }) as Stream
        };
        let (fake, _, _, end) = connection(vec![stream]);
        end.store(true, Ordering::SeqCst);
        let mut multiplexed = Multiplexed::new(fake);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut multiplexed).poll(&mut cx).is_ready());
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        assert_eq!(
            multiplexed.entries.len(),
            1,
            "the tunnel took the stream's slot"
        );
        assert_eq!(multiplexed.live, 0);
    }

    #[tokio::test]
    async fn outside_a_connection_the_executor_spawns() {
        let (done, finished) = tokio::sync::oneshot::channel();
        InConnection.execute(async move {
            let _ = done.send(());
        });
        finished.await.expect("spawned and run");
    }
}
