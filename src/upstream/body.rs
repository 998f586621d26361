//! The body veer sends upstream: the client's streaming body, or nothing (for
//! requests veer makes itself, such as health probes).

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
    },
    Empty,
}

impl RequestBody {
    pub fn client(body: Incoming) -> RequestBody {
        // A body-less request (the common GET) allocates no watch.
        let watch = (!body.is_end_stream()).then(ClientBodyWatch::default);
        RequestBody::Client { body, watch }
    }

    pub fn watch(&self) -> Option<&ClientBodyWatch> {
        match self {
            RequestBody::Client { watch, .. } => watch.as_ref(),
            RequestBody::Empty => None,
        }
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
            RequestBody::Client { body, watch } => match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Err(error))) => {
                    if let Some(watch) = watch {
                        watch.set(&error);
                    }
                    Poll::Ready(Some(Err(ClientBodyError(error))))
                }
                Poll::Ready(None) => {
                    if let Some(watch) = watch {
                        watch.complete();
                    }
                    Poll::Ready(None)
                }
                polled => {
                    if let (Some(watch), Poll::Ready(Some(Ok(_)))) = (watch.as_ref(), &polled) {
                        if body.is_end_stream() {
                            watch.complete();
                        }
                    }
                    polled.map_err(ClientBodyError)
                }
            },
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client { body, .. } => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client { body, .. } => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
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
