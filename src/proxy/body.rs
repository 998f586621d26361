//! The body veer answers with: the upstream's, streamed frame by frame (with
//! backpressure, never buffered whole), or a short one veer wrote itself.
//! An enum rather than a boxed body, so answering allocates nothing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::upstream::Lease;

#[derive(Debug)]
pub enum ProxyBody {
    Upstream {
        body: Incoming,
        /// Released as soon as the body ends, so the connection returns to
        /// the pool before the client has even read the last frame.
        lease: Option<Lease>,
    },
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub fn upstream(body: Incoming, lease: Lease) -> ProxyBody {
        ProxyBody::Upstream {
            body,
            lease: Some(lease),
        }
    }

    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Some(bytes.into()))
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream { body, lease } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) | Poll::Ready(Some(Err(_))) => drop(lease.take()),
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => drop(lease.take()),
                    _ => {}
                }
                polled
            }
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}
