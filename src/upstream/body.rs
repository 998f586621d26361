//! The body veer sends upstream: the client's streaming body, or nothing (for
//! requests veer makes itself, such as health probes).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

#[derive(Debug)]
pub enum RequestBody {
    Client(Incoming),
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Client(body) => Pin::new(body).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(body) => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(body) => body.size_hint(),
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
