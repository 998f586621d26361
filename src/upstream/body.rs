//! The body veer sends upstream: the client's streaming body (optionally
//! teed into a bounded copy for a mirror), a copy held whole (a mirrored
//! request), or nothing (for requests veer makes itself, such as health
//! probes).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

#[derive(Debug)]
pub enum RequestBody {
    /// The client's body; `watch` (set when the body is not empty) hears of
    /// it failing, so the failure is put on the client and not on the
    /// upstream that was reading it.
    Client {
        body: Incoming,
        watch: Option<ClientBodyWatch>,
        /// A bounded copy for a mirrored request, taken as the body streams.
        tee: Option<Box<BodyTee>>,
    },
    Empty,
    /// A body held whole: a mirrored copy's, in order, last chunk first.
    Copied(Vec<Bytes>),
}

impl RequestBody {
    pub fn client(body: Incoming) -> RequestBody {
        // A body-less request (the common GET) allocates no watch.
        let watch = (!body.is_end_stream()).then(ClientBodyWatch::default);
        RequestBody::Client {
            body,
            watch,
            tee: None,
        }
    }

    /// A body of `chunks`, sent in order.
    pub fn copied(mut chunks: Vec<Bytes>) -> RequestBody {
        chunks.retain(|c| !c.is_empty());
        chunks.reverse();
        RequestBody::Copied(chunks)
    }

    /// Copies the client's body into `tee` as it streams to the upstream.
    /// `Err` gives the tee back when this body is not the client's.
    pub fn tee(&mut self, new: BodyTee) -> Result<(), BodyTee> {
        match self {
            RequestBody::Client { tee, .. } => {
                *tee = Some(Box::new(new));
                Ok(())
            }
            _ => Err(new),
        }
    }

    pub fn watch(&self) -> Option<&ClientBodyWatch> {
        match self {
            RequestBody::Client { watch, .. } => watch.as_ref(),
            RequestBody::Empty | RequestBody::Copied(_) => None,
        }
    }
}

/// Why a tee's copy of a body was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeeEnd {
    /// The body grew past the cap.
    TooLarge,
    /// The client's body failed, or the request was dropped before its body
    /// was read.
    Incomplete,
}

/// A bounded copy of a request body taken as it streams past: the frames go
/// on to the upstream unchanged, the copy keeps the same `Bytes` (reference
/// counted, not copied) until the body ends, and is handed over then. A body
/// that outgrows `cap` gives the copy up at once: the live request never
/// waits for, or buffers on behalf of, a copy.
#[derive(Debug)]
pub struct BodyTee {
    chunks: Vec<Bytes>,
    len: usize,
    cap: usize,
    done: Option<tokio::sync::oneshot::Sender<Result<Vec<Bytes>, TeeEnd>>>,
}

impl BodyTee {
    /// A tee holding at most `cap` bytes; its copy (or why there is none)
    /// arrives on the receiver.
    pub fn new(
        cap: usize,
    ) -> (
        BodyTee,
        tokio::sync::oneshot::Receiver<Result<Vec<Bytes>, TeeEnd>>,
    ) {
        let (done, copy) = tokio::sync::oneshot::channel();
        let tee = BodyTee {
            chunks: Vec::new(),
            len: 0,
            cap,
            done: Some(done),
        };
        (tee, copy)
    }

    fn data(&mut self, data: &Bytes) {
        if self.done.is_none() {
            return;
        }
        self.len = self.len.saturating_add(data.len());
        if self.len > self.cap {
            self.chunks = Vec::new();
            self.end(Err(TeeEnd::TooLarge));
        } else {
            self.chunks.push(data.clone());
        }
    }

    fn end(&mut self, result: Result<Vec<Bytes>, TeeEnd>) {
        if let Some(done) = self.done.take() {
            let _ = done.send(result);
        }
    }

    fn finish(&mut self) {
        let chunks = std::mem::take(&mut self.chunks);
        self.end(Ok(chunks));
    }
}

impl Drop for BodyTee {
    fn drop(&mut self) {
        self.end(Err(TeeEnd::Incomplete));
    }
}

/// How the client's request body failed, if it did; shared between the body
/// (which the upstream connection reads) and the request's outcome.
#[derive(Debug, Clone, Default)]
pub struct ClientBodyWatch(Arc<AtomicU8>);

/// How a client's request body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBodyFault {
    /// Invalid framing: a bad chunk size, chunk extension or line ending.
    Malformed,
    /// The body ended early or the client reset the connection or stream.
    Aborted,
    /// The body was still arriving when `timeouts.request` ran out.
    Slow,
}

const MALFORMED: u8 = 1;
const ABORTED: u8 = 2;
const COMPLETE: u8 = 3;

impl ClientBodyWatch {
    pub fn fault(&self) -> Option<ClientBodyFault> {
        match self.0.load(Ordering::Relaxed) {
            MALFORMED => Some(ClientBodyFault::Malformed),
            ABORTED => Some(ClientBodyFault::Aborted),
            _ => None,
        }
    }

    /// Whether the whole body was read from the client.
    pub fn is_complete(&self) -> bool {
        self.0.load(Ordering::Relaxed) == COMPLETE
    }

    fn set(&self, error: &hyper::Error) {
        let fault = if is_malformed(error) {
            MALFORMED
        } else {
            ABORTED
        };
        self.0.store(fault, Ordering::Relaxed);
    }

    fn complete(&self) {
        self.0.store(COMPLETE, Ordering::Relaxed);
    }
}

/// hyper reports a body that breaks HTTP/1.1's framing as an I/O error of
/// kind `InvalidData` or `InvalidInput` under its body error; everything else
/// (early end, reset, an HTTP/2 stream reset) is the client stopping.
fn is_malformed(error: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            );
        }
        source = cause.source();
    }
    false
}

/// The client's body failed while it was being sent upstream; found in the
/// upstream connection's error chain, it marks that error as the client's.
#[derive(Debug)]
pub struct ClientBodyError(pub hyper::Error);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client's request body failed: {}", self.0)
    }
}

impl ClientBodyError {
    pub fn is_malformed(&self) -> bool {
        is_malformed(&self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            RequestBody::Client { body, watch, tee } => match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Err(error))) => {
                    if let Some(watch) = watch {
                        watch.set(&error);
                    }
                    if let Some(mut tee) = tee.take() {
                        tee.end(Err(TeeEnd::Incomplete));
                    }
                    Poll::Ready(Some(Err(ClientBodyError(error))))
                }
                Poll::Ready(None) => {
                    if let Some(watch) = watch {
                        watch.complete();
                    }
                    if let Some(tee) = tee {
                        tee.finish();
                    }
                    Poll::Ready(None)
                }
                polled => {
                    if let Poll::Ready(Some(Ok(frame))) = &polled {
                        let end = body.is_end_stream();
                        if let Some(tee) = tee {
                            if let Some(data) = frame.data_ref() {
                                tee.data(data);
                            }
                            if end {
                                tee.finish();
                            }
                        }
                        if let (Some(watch), true) = (watch.as_ref(), end) {
                            watch.complete();
                        }
                    }
                    polled.map_err(ClientBodyError)
                }
            },
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Copied(chunks) => Poll::Ready(chunks.pop().map(|c| Ok(Frame::data(c)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client { body, .. } => body.is_end_stream(),
            RequestBody::Empty => true,
            RequestBody::Copied(chunks) => chunks.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client { body, .. } => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Copied(chunks) => {
                SizeHint::with_exact(chunks.iter().map(|c| c.len() as u64).sum())
            }
        }
    }
}

/// The body an upstream answers with: read by hyper's client connection, or
/// by the request's own task (`h1`, the plain HTTP/1.1 fast path).
///
/// A body that fails (short, cut off, reset) gives its error a moment late.
/// hyper's HTTP/1.1 server drops the connection the moment a body errors,
/// with whatever it has buffered unsent, and its HTTP/2 server resets the
/// stream, which discards the frames still queued for it: an error right
/// after the last bytes (or right after the head) would leave the client
/// with nothing, not even a status line. Held back for `FAILURE_GRACE`, the
/// error lets the connection flush the head and every byte that arrived
/// before it; then the client sees the body cut off (a close, or
/// `RST_STREAM`), never one that looks complete.
#[derive(Debug)]
pub enum ResponseBody {
    Hyper(Incoming),
    Direct(super::h1::Body),
    /// The body failed; its error is still to be given (`None` once given)
    /// when the grace ends.
    Failed(Option<BoxError>, Pin<Box<tokio::time::Sleep>>),
}

/// How long a failed body's error waits for the bytes before it to be
/// flushed. A connection ready to write flushes in microseconds; this only
/// needs to outlast one turn of the scheduler, and costs a failed response
/// nothing a client could notice.
const FAILURE_GRACE: std::time::Duration = std::time::Duration::from_millis(2);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ResponseBody {
    /// Ends the request's hold on its endpoint once the body has ended: a
    /// fast-path connection read exactly to its end goes back to the pool
    /// with the lease (hyper's connections return on their own).
    pub fn release(&mut self, mut lease: super::Lease) {
        if let ResponseBody::Direct(direct) = self {
            lease.release_direct(direct.take_reusable());
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match this {
            ResponseBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
            ResponseBody::Direct(body) => Pin::new(body).poll_frame(cx),
            ResponseBody::Failed(error, grace) => {
                std::task::ready!(grace.as_mut().poll(cx));
                return Poll::Ready(error.take().map(Err));
            }
        };
        match polled {
            Poll::Ready(Some(Err(error))) => {
                // Dropping the upstream body here closes its connection.
                let mut grace = Box::pin(tokio::time::sleep(FAILURE_GRACE));
                // Registers the wake-up; the sleep cannot have ended yet.
                let _ = grace.as_mut().poll(cx);
                *this = ResponseBody::Failed(Some(error), grace);
                Poll::Pending
            }
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Hyper(body) => body.is_end_stream(),
            ResponseBody::Direct(body) => body.is_end_stream(),
            ResponseBody::Failed(error, _) => error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Hyper(body) => body.size_hint(),
            ResponseBody::Direct(body) => body.size_hint(),
            ResponseBody::Failed(..) => SizeHint::default(),
        }
    }
}
