//! An HTTP/2 connection's streams, run inside the connection's own task.
//!
//! hyper's HTTP/2 server hands each new stream's future to its executor;
//! with tokio's, that is a task per stream. A proxied request then took four
//! task runs over its two wake-ups (the connection reads HEADERS and spawns;
//! the stream writes upstream; the stream answers and wakes the connection;
//! the connection writes the frames), one task allocated and scheduled, and
//! a wake across tasks each way. Here the executor leaves each stream with
//! the connection that made it ([`InConnection`]), and [`Multiplexed`] polls
//! the connection and its streams as one future: two runs per request, and
//! the connection is polled only when something woke it, which includes its
//! own streams handing it frames within the same run.
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

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use futures_util::task::AtomicWaker;

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

/// The connection's waker: records that the connection has work, and wakes
/// the task only when the task is not running already. A stream that
/// queues its response frames wakes the connection from inside the task's
/// own poll; tokio would run the task once more for that, where the poll
/// loop below sees the flag and polls the connection at once.
struct Nudge {
    woken: AtomicBool,
    polling: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Nudge {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // SeqCst with the poll loop's pair below: either this sees the loop
        // still polling, or the loop sees `woken` after it stopped.
        self.woken.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

/// An HTTP/2 connection with its streams, polled together.
pub struct Multiplexed<C> {
    connection: C,
    /// `None` until the first stream: a connection that never carries one
    /// allocates nothing for them.
    streams: Option<FuturesUnordered<Stream>>,
    nudge: Arc<Nudge>,
    waker: Waker,
    /// The connection's end, held while streams it left still run.
    ended: Option<hyper::Result<()>>,
}

impl<C> Multiplexed<C>
where
    C: Future<Output = hyper::Result<()>> + Unpin,
{
    pub fn new(connection: C) -> Multiplexed<C> {
        let nudge = Arc::new(Nudge {
            // The first poll must poll the connection.
            woken: AtomicBool::new(true),
            polling: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        Multiplexed {
            connection,
            streams: None,
            waker: Waker::from(Arc::clone(&nudge)),
            nudge,
            ended: None,
        }
    }

    /// The connection itself (for its graceful shutdown); it is polled on
    /// the next poll whatever was done to it.
    pub fn connection(&mut self) -> &mut C {
        self.nudge.woken.store(true, Ordering::SeqCst);
        &mut self.connection
    }

    /// Takes the streams handed over during the last poll of the
    /// connection or of a stream; whether there were any.
    fn adopt(&mut self) -> bool {
        HANDED.with(|handed| {
            let mut handed = handed.borrow_mut();
            if handed.is_empty() {
                return false;
            }
            let streams = self.streams.get_or_insert_with(FuturesUnordered::new);
            for stream in handed.drain(..) {
                streams.push(stream);
            }
            true
        })
    }

    fn poll_inside(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        self.nudge.task.register(cx.waker());
        loop {
            self.nudge.polling.store(true, Ordering::SeqCst);
            if self.ended.is_none() && self.nudge.woken.swap(false, Ordering::SeqCst) {
                let mut own = Context::from_waker(&self.waker);
                if let Poll::Ready(result) = Pin::new(&mut self.connection).poll(&mut own) {
                    self.ended = Some(result);
                }
                self.adopt();
            }
            if let Some(streams) = &mut self.streams {
                // Each stream that ends may have handed over a tunnel.
                while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
            }
            if self.adopt() {
                continue;
            }
            self.nudge.polling.store(false, Ordering::SeqCst);
            if self.ended.is_none() && self.nudge.woken.load(Ordering::SeqCst) {
                continue;
            }
            let idle = self.streams.as_ref().is_none_or(FuturesUnordered::is_empty);
            if idle {
                if let Some(result) = self.ended.take() {
                    return Poll::Ready(result);
                }
            }
            return Poll::Pending;
        }
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

    fn connection(
        streams: Vec<Stream>,
    ) -> (
        Connection,
        Arc<AtomicUsize>,
        Arc<Mutex<Option<Waker>>>,
        Arc<AtomicBool>,
    ) {
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

    #[tokio::test]
    async fn outside_a_connection_the_executor_spawns() {
        let (done, finished) = tokio::sync::oneshot::channel();
        InConnection.execute(async move {
            let _ = done.send(());
        });
        finished.await.expect("spawned and run");
    }
}
