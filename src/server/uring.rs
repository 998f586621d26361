//! Client connections over io_uring (feature `io-uring`, chosen at run time
//! with `VEER_IO=uring`): an experiment in fewer trips into the kernel per
//! request, measured against the default epoll path (docs/benchmarks.md,
//! "What we tried").
//!
//! The runtime is tokio-uring's: tokio's current-thread runtime with an
//! io_uring beside its epoll, so every other part of veer (timers, spawned
//! tasks, the upstream sockets, the admin API) runs on it unchanged. Only
//! cleartext client connections take the ring: the listener accepts through
//! it and each connection is served by hyper over `UringIo`, which gives hyper
//! its `Read`/`Write` traits over tokio-uring's owned-buffer reads and writes.
//! A ring's operations belong to the thread that made them, so a connection
//! is a local (`!Send`) task; listeners added by a reload, which runs on the
//! blocking pool, reach that thread through a `Spawner`.
//!
//! Depends on nothing of veer's; `listeners::uring` builds the serving on it.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};
use tokio_uring::net::TcpStream;

/// Submission queue entries: a connection has at most one read and one
/// write in flight, and a full queue is submitted early, so this bounds the
/// batch of one wake-up, not the connections.
const RING_ENTRIES: u32 = 1024;

thread_local! {
    /// The spawner of the ring this thread drives, while it drives one.
    static SPAWNER: RefCell<Option<Spawner>> = const { RefCell::new(None) };
}

/// How the ring is set up: the kernel's options that change how many calls
/// a wake-up costs, for measuring (docs/benchmarks.md).
#[derive(Debug, Default, Clone, Copy)]
pub struct RingSettings {
    /// `IORING_SETUP_SQPOLL`: a kernel thread takes submissions, so none
    /// needs a call, and sleeps after this many idle milliseconds.
    pub sqpoll_idle_ms: Option<u32>,
    /// `IORING_SETUP_COOP_TASKRUN`: completions are not pushed by an
    /// interrupt of the running thread but run at its next kernel entry.
    pub coop_taskrun: bool,
}

/// A tokio-uring runtime: a current-thread tokio runtime, a `LocalSet` for
/// the ring's `!Send` tasks, and the ring.
pub struct Runtime(tokio_uring::Runtime);

impl Runtime {
    /// Fails when io_uring cannot be set up here: an old kernel, or a seccomp
    /// profile (as container runtimes' defaults do) or
    /// `kernel.io_uring_disabled` refusing `io_uring_setup`.
    pub fn new(settings: RingSettings) -> io::Result<Runtime> {
        let mut ring = tokio_uring::uring_builder();
        if let Some(idle) = settings.sqpoll_idle_ms {
            ring.setup_sqpoll(idle);
        }
        if settings.coop_taskrun {
            ring.setup_coop_taskrun();
        }
        tokio_uring::Runtime::new(
            tokio_uring::builder()
                .entries(RING_ENTRIES)
                .uring_builder(&ring),
        )
        .map(Runtime)
        .map_err(refused)
    }

    /// Runs `future` on the ring's thread; while it runs, `Spawner::here`
    /// reaches the ring from any task of this runtime.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        struct Unset;
        impl Drop for Unset {
            fn drop(&mut self) {
                SPAWNER.with(|spawner| spawner.borrow_mut().take());
            }
        }
        self.0.block_on(async move {
            // Started here, inside tokio-uring's `LocalSet`, where local
            // tasks can be spawned; tasks of the runtime's own scheduler
            // (`tokio::spawn`) and its blocking pool cannot spawn them.
            let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
            tokio::task::spawn_local(async move {
                while let Some(job) = queue.recv().await {
                    tokio::task::spawn_local(job());
                }
            });
            SPAWNER.with(|spawner| *spawner.borrow_mut() = Some(Spawner(jobs)));
            let _unset = Unset;
            future.await
        })
    }
}

/// What `io_uring_setup`'s refusal means, and what to do about it.
fn refused(err: io::Error) -> io::Error {
    io::Error::new(
        err.kind(),
        format!(
            "VEER_IO=uring: io_uring cannot be set up here ({err}); it needs Linux 5.11 or later, \
             and container runtimes' default seccomp profiles block it; unset VEER_IO to serve with epoll"
        ),
    )
}

/// A job for the ring's thread: it builds the `!Send` future there.
type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// Starts futures that use the ring on the ring's thread, from any thread.
/// Cheap to clone; its task ends when the last clone is dropped.
#[derive(Clone)]
pub struct Spawner(mpsc::UnboundedSender<Job>);

impl Spawner {
    /// The spawner of the ring this thread drives; `None` when no
    /// tokio-uring runtime drives it (veer runs on epoll).
    pub fn here() -> Option<Spawner> {
        SPAWNER.with(|spawner| spawner.borrow().clone())
    }

    /// Runs what `make` builds as a task on the ring's thread; the returned
    /// handle ends when that task does (or when the runtime is gone).
    pub fn spawn<F, Fut>(&self, make: F) -> tokio::task::JoinHandle<()>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (done, finished) = oneshot::channel::<()>();
        let job: Job = Box::new(move || {
            Box::pin(async move {
                make().await;
                drop(done);
            })
        });
        // A send that fails drops the job, and with it `done`: the handle
        // ends at once, as the task would have with the runtime gone.
        let _ = self.0.send(job);
        tokio::spawn(async move {
            let _ = finished.await;
        })
    }
}

/// The size of a connection's read buffer, which the kernel fills.
const READ_BUFFER: usize = 16 * 1024;

type Read = Pin<Box<dyn Future<Output = (io::Result<usize>, Vec<u8>)>>>;
type Write = Pin<Box<dyn Future<Output = (io::Result<()>, Vec<u8>)>>>;

/// hyper's I/O over a tokio-uring stream. A read hands the kernel the
/// connection's one read buffer and copies what it filled into hyper's; a
/// write copies hyper's bytes (every slice of a vectored write) into the
/// connection's one write buffer and hands that over whole. At most one of
/// each is in flight: a write waits for the last to finish, so hyper's
/// back-pressure is the socket's.
pub struct UringIo {
    stream: Rc<TcpStream>,
    /// Bytes the kernel read and hyper has not taken: `buffer[taken..]`.
    buffer: Vec<u8>,
    taken: usize,
    reading: Option<Read>,
    /// The write buffer, back from the kernel; empty while a write is out.
    spare: Vec<u8>,
    writing: Option<Write>,
}

impl UringIo {
    pub fn new(stream: TcpStream) -> UringIo {
        UringIo {
            stream: Rc::new(stream),
            buffer: Vec::new(),
            taken: 0,
            reading: None,
            spare: Vec::new(),
            writing: None,
        }
    }

    /// The bytes read and not yet taken (none while a read is in flight:
    /// the kernel has the buffer).
    pub fn buffered(&self) -> &[u8] {
        self.buffer.get(self.taken..).unwrap_or_default()
    }

    /// Reads once more, keeping what is buffered in front of it: for a look
    /// at a connection's first bytes before hyper takes it. `Ok(0)` at EOF
    /// or when the buffer is full.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx, true)).await
    }

    /// Polls a read into the buffer, starting it if none is in flight;
    /// `append` keeps the unread bytes in front, otherwise the buffer is
    /// refilled from its start (only when all was taken).
    fn poll_fill(&mut self, cx: &mut Context<'_>, append: bool) -> Poll<io::Result<usize>> {
        let reading = match &mut self.reading {
            Some(reading) => reading,
            None => {
                let mut buffer = std::mem::take(&mut self.buffer);
                if !append {
                    buffer.clear();
                    self.taken = 0;
                }
                if buffer.capacity() == 0 {
                    buffer.reserve_exact(READ_BUFFER);
                }
                let start = buffer.len();
                if start == buffer.capacity() {
                    self.buffer = buffer;
                    return Poll::Ready(Ok(0));
                }
                let stream = Rc::clone(&self.stream);
                self.reading.insert(Box::pin(async move {
                    use tokio_uring::buf::BoundedBuf as _;
                    let (read, slice) = stream.read(buffer.slice(start..)).await;
                    (read, slice.into_inner())
                }))
            }
        };
        let (read, buffer) = std::task::ready!(reading.as_mut().poll(cx));
        self.reading = None;
        self.buffer = buffer;
        Poll::Ready(read)
    }

    /// Waits for the write in flight, if any; its buffer comes back.
    fn poll_written(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(writing) = &mut self.writing else {
            return Poll::Ready(Ok(()));
        };
        let (written, buffer) = std::task::ready!(writing.as_mut().poll(cx));
        self.writing = None;
        self.spare = buffer;
        Poll::Ready(written)
    }

    fn start_write(&mut self, bufs: &[IoSlice<'_>]) -> usize {
        let mut buffer = std::mem::take(&mut self.spare);
        buffer.clear();
        for buf in bufs {
            buffer.extend_from_slice(buf);
        }
        let len = buffer.len();
        if len == 0 {
            self.spare = buffer;
            return 0;
        }
        let stream = Rc::clone(&self.stream);
        self.writing = Some(Box::pin(async move { stream.write_all(buffer).await }));
        len
    }
}

impl hyper::rt::Read for UringIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.reading.is_some() || this.taken >= this.buffer.len() {
            // Nothing buffered: read. Zero bytes is the end of the stream,
            // which hyper reads as a cursor left empty.
            if std::task::ready!(this.poll_fill(cx, false))? == 0 {
                return Poll::Ready(Ok(()));
            }
        }
        let unread = &this.buffer[this.taken..];
        let n = unread.len().min(buf.remaining());
        buf.put_slice(&unread[..n]);
        this.taken += n;
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for UringIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_written(cx))?;
        Poll::Ready(Ok(this.start_write(bufs)))
    }

    fn is_write_vectored(&self) -> bool {
        // hyper then hands over a response's head and body chunks at once,
        // and they leave in one write.
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_written(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_written(cx))?;
        Poll::Ready(match this.stream.shutdown(std::net::Shutdown::Write) {
            Err(err) if err.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        })
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        // A read in flight keeps the socket open until it completes, which
        // for an idle client may be never: shutting down its reading side
        // ends that read at once, and the socket closes when the ring is
        // done with it (after any write still in flight).
        if self.reading.take().is_some() {
            let _ = self.stream.shutdown(std::net::Shutdown::Read);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_ring_says_why_and_what_to_do() {
        // What a seccomp filter or `kernel.io_uring_disabled` answers.
        let err = refused(io::Error::from_raw_os_error(1));
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(
            err.to_string(),
            "VEER_IO=uring: io_uring cannot be set up here (Operation not permitted (os error 1)); \
             it needs Linux 5.11 or later, and container runtimes' default seccomp profiles block it; \
             unset VEER_IO to serve with epoll"
        );
    }
}
