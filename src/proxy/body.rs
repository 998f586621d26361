//! The body veer answers with: the upstream's, streamed frame by frame (with
//! backpressure, never buffered whole), or a short one veer wrote itself.
//! An enum rather than a boxed body, so answering allocates nothing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use std::sync::Arc;

use tokio::time::Instant;

use crate::telemetry::VersionStats;
use crate::upstream::body::BoxError;
use crate::upstream::{Lease, ResponseBody};

#[derive(Debug)]
pub enum ProxyBody {
    Upstream {
        body: ResponseBody,
        /// Released as soon as the body ends, so the connection returns to
        /// the pool before the client has even read the last frame.
        lease: Option<Lease>,
        /// Records the full duration when the body ends or is dropped.
        finish: Option<Finish>,
    },
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub fn upstream(mut body: ResponseBody, lease: Lease, finish: Option<Finish>) -> ProxyBody {
        // A response without a body (HEAD, 204, 304) may never be polled:
        // its connection goes back to the pool now.
        let lease = if body.is_end_stream() {
            body.release(lease);
            None
        } else {
            Some(lease)
        };
        ProxyBody::Upstream {
            body,
            lease,
            finish,
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
            } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                let ended = match &polled {
                    Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    Poll::Pending => false,
                };
                if ended {
                    if let Some(lease) = lease.take() {
                        body.release(lease);
                    }
                    drop(finish.take());
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

/// Records a response's full duration (to the end of its body, or to the
/// moment the client went away) when dropped.
pub struct Finish {
    stats: Arc<VersionStats>,
    started: Instant,
}

impl Finish {
    pub fn new(stats: Arc<VersionStats>, started: Instant) -> Finish {
        Finish { stats, started }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.stats.record_full_duration(self.started.elapsed());
    }
}

impl std::fmt::Debug for Finish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finish").finish_non_exhaustive()
    }
}
