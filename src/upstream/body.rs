//! The body veer sends upstream: the client's streaming body, or nothing (for
//! requests veer makes itself, such as health probes).

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
#[derive(Debug)]
pub enum ResponseBody {
    Hyper(Incoming),
    Direct(super::h1::Body),
}

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
        match self.get_mut() {
            ResponseBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
            ResponseBody::Direct(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Hyper(body) => body.is_end_stream(),
            ResponseBody::Direct(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Hyper(body) => body.size_hint(),
            ResponseBody::Direct(body) => body.size_hint(),
        }
    }
}
