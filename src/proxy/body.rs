//! The body veer answers with: the upstream's, streamed frame by frame (with
//! backpressure, never buffered whole), or a short one veer wrote itself.
//! An enum rather than a boxed body, so answering allocates nothing. Either
//! carries the request's pending outcome (`Finish`), recorded when the
//! stream ends: its last frame or trailers, its failure, or its drop.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::outcome::{End, Finish};
use crate::mirror::BodyDigest;
use crate::upstream::body::BoxError;
use crate::upstream::{Lease, ResponseBody};

#[derive(Debug)]
pub enum ProxyBody {
    Upstream {
        body: ResponseBody,
        /// Released as soon as the body ends, so the connection returns to
        /// the pool before the client has even read the last frame.
        lease: Option<Lease>,
        finish: Option<Finish>,
        /// A mirrored request on a deterministic route: the live body's
        /// digest, for the pair.
        digest: Option<Box<BodyDigest>>,
    },
    Full {
        bytes: Option<Bytes>,
        finish: Option<Finish>,
    },
}

impl ProxyBody {
    pub fn upstream(mut body: ResponseBody, lease: Lease, finish: Option<Finish>) -> ProxyBody {
        // A response without a body (HEAD, 204, 304) may never be polled:
        // its connection goes back to the pool, and its outcome is
        // recorded, now.
        let (lease, finish) = if body.is_end_stream() {
            body.release(lease);
            if let Some(mut finish) = finish {
                finish.end(None, End::Complete);
            }
            (None, None)
        } else {
            (Some(lease), finish)
        };
        ProxyBody::Upstream {
            body,
            lease,
            finish,
            digest: None,
        }
    }

    /// Feeds the body to `with` as it streams (a mirrored request's pair).
    pub fn with_digest(mut self, with: Option<BodyDigest>) -> ProxyBody {
        if let (ProxyBody::Upstream { body, digest, .. }, Some(with)) = (&mut self, with) {
            if body.is_end_stream() {
                with.end();
            } else {
                *digest = Some(Box::new(with));
            }
        }
        self
    }

    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full {
            bytes: Some(bytes.into()),
            finish: None,
        }
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::Full {
            bytes: None,
            finish: None,
        }
    }

    /// An answer veer made itself, with the outcome it ends: held in memory,
    /// it is complete whether or not the client reads it.
    pub fn with_finish(mut self, mut with: Finish) -> ProxyBody {
        with.drop_means(End::Complete);
        if let ProxyBody::Full { finish, .. } = &mut self {
            *finish = Some(with);
        }
        self
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // HTTP/1.1 stops reading a body once its content-length is written,
        // and an HTTP/2 upstream may send its end of stream only after the
        // last byte: a body dropped with nothing left to send was delivered
        // whole, not abandoned.
        if let ProxyBody::Upstream {
            body,
            finish: Some(finish),
            ..
        } = self
        {
            if body.size_hint().exact() == Some(0) {
                finish.end(None, End::Complete);
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream {
                body,
                lease,
                finish,
                digest,
            } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    if let Some(data) = frame.data_ref() {
                        if let Some(finish) = finish.as_mut() {
                            finish.sent(data.len());
                        }
                        if let Some(digest) = digest.as_mut() {
                            digest.data(data);
                        }
                    }
                }
                let end = match &polled {
                    Poll::Ready(None) => Some(End::Complete),
                    Poll::Ready(Some(Err(_))) => Some(End::Failed),
                    // Trailers are always the last frame.
                    Poll::Ready(Some(Ok(frame))) if frame.is_trailers() || body.is_end_stream() => {
                        Some(End::Complete)
                    }
                    Poll::Ready(Some(Ok(_))) | Poll::Pending => None,
                };
                if let Some(end) = end {
                    if let (Some(digest), End::Complete) = (digest.take(), end) {
                        digest.end();
                    }
                    if let Some(lease) = lease.take() {
                        body.release(lease);
                    }
                    if let Some(mut finish) = finish.take() {
                        let trailers = match &polled {
                            Poll::Ready(Some(Ok(frame))) => frame.trailers_ref(),
                            _ => None,
                        };
                        finish.end(trailers, end);
                    }
                }
                polled
            }
            ProxyBody::Full { bytes, finish } => {
                let frame = bytes.take().map(|b| {
                    if let Some(finish) = finish.as_mut() {
                        finish.sent(b.len());
                    }
                    Ok(Frame::data(b))
                });
                drop(finish.take());
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Full { bytes, .. } => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Full {
                bytes: Some(bytes), ..
            } => SizeHint::with_exact(bytes.len() as u64),
            ProxyBody::Full { bytes: None, .. } => SizeHint::with_exact(0),
        }
    }
}
