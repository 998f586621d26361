//! The one retry loop: a request's attempts on the endpoints of one version,
//! whichever client (`h1`, hyper's HTTP/1.1 or HTTP/2) carries each.
//!
//! Every attempt ends in a response head or a [`Failed`], classified by
//! `error` in the same terms for every client: what went wrong, and how far
//! the request got ([`Delivery`]). [`Budget::decide`] alone answers what
//! happens next:
//!
//! - a request is sent again only when the upstream cannot have acted on it
//!   (nothing reached it) or it is safe to repeat (RFC 9110 §9.2.2 method,
//!   no body) and nothing came back; never after part of an answer, never
//!   when the client's own body broke;
//! - a pooled connection that died while idle is nobody's fault: the same
//!   endpoint is tried again, a few times at most, and the failure is not
//!   counted against it;
//! - otherwise the failure counts against the endpoint (passive ejection,
//!   `veer_upstream_failures_total`), and the request goes to one other
//!   endpoint of the version, once;
//! - a request that was never delivered is handed back to the caller, which
//!   may give it to the baseline version.
//!
//! `timeouts.request` bounds each attempt's wait for the response head, and a
//! gRPC caller's deadline all of them.

use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use tokio::time::Instant;

use super::body::{ClientBodyFault, ClientBodyWatch};
use super::error::{Delivery, FailureReason};
use super::{balance, Endpoint, Lease, RequestBody, ResponseBody, UpstreamError};
use crate::config::Timeouts;

/// Tries on a fresh connection after pooled connections died while idle;
/// after that the failure is the endpoint's.
const MAX_STALE_RETRIES: u8 = 3;

/// A connection's timer for `timeouts.request`, lent to one request at a
/// time. Reset for each attempt rather than made anew: a tokio timer whose
/// deadline only moves later is updated in place, while making and dropping
/// one per request costs a timer-wheel insert and removal (about 1,900
/// instructions per request in callgrind).
pub type RequestTimer = Pin<Box<tokio::time::Sleep>>;

/// One failed attempt on one endpoint.
pub struct Failed {
    pub error: UpstreamError,
    /// How far the request got before the failure.
    pub delivery: Delivery,
    /// The request, or a copy of it, when veer still holds one to send
    /// again; whether it may be is [`Budget::decide`]'s call.
    pub request: Option<Request<RequestBody>>,
    /// Whether the attempt was made on a pooled connection.
    pub reused: bool,
}

/// What the attempts of one request may still do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    stale: u8,
    other_endpoint: bool,
}

/// What follows a failed attempt.
#[derive(Debug)]
pub(crate) enum Next {
    /// The same endpoint again: a pooled connection had died while idle.
    Again(Request<RequestBody>),
    /// Another endpoint of the version.
    Other(Request<RequestBody>),
    /// No further attempt; the request is given back when it was never
    /// delivered (the caller may try another version with it).
    Stop(Option<Request<RequestBody>>),
}

/// A failed attempt's verdict.
#[derive(Debug)]
pub(crate) struct Decision {
    /// The endpoint's failure, counted for passive ejection and the
    /// metrics; `None` when the endpoint is not to blame (a stale pooled
    /// connection, or the client's own fault).
    pub blame: Option<FailureReason>,
    pub next: Next,
}

impl Budget {
    /// The budget of a request to a version with `endpoints` endpoints.
    pub(crate) fn new(endpoints: usize) -> Budget {
        Budget {
            stale: MAX_STALE_RETRIES,
            other_endpoint: endpoints > 1,
        }
    }

    /// Decides what follows `failed`, and spends the budget accordingly.
    pub(crate) fn decide(&mut self, failed: Failed) -> (UpstreamError, Decision) {
        let Failed {
            error,
            delivery,
            request,
            reused,
        } = failed;
        let again = request.filter(|request| match delivery {
            _ if error.is_client() => false,
            Delivery::Unsent => true,
            Delivery::Unanswered => safe_to_repeat(request),
            Delivery::Partial => false,
        });
        let blame = error.reason();
        let decision = match again {
            Some(request) if reused && self.stale > 0 => {
                self.stale -= 1;
                Decision {
                    blame: None,
                    next: Next::Again(request),
                }
            }
            Some(request) if self.other_endpoint => {
                self.other_endpoint = false;
                Decision {
                    blame,
                    next: Next::Other(request),
                }
            }
            again => Decision {
                blame,
                next: Next::Stop(again),
            },
        };
        (error, decision)
    }
}

/// Whether `request` may be sent again after it was written and nothing came
/// back: a method safe to repeat (RFC 9110 §9.2.2) and no body, which was
/// streamed and is gone.
pub(crate) fn safe_to_repeat(request: &Request<RequestBody>) -> bool {
    request.method().is_idempotent() && http_body::Body::is_end_stream(request.body())
}

/// A copy of `request`, for a client that gives the request away when it
/// sends it: only when [`safe_to_repeat`] would let it be sent again.
pub(crate) fn replay_copy(request: &Request<RequestBody>) -> Option<Request<RequestBody>> {
    if !safe_to_repeat(request) {
        return None;
    }
    let mut copy = Request::new(RequestBody::Empty);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// A send that got no response. `error` is `None` when the version had no
/// endpoint; `unsent` gives the request back when it was never delivered.
pub struct SendFailure {
    pub error: Option<UpstreamError>,
    pub unsent: Option<Request<RequestBody>>,
}

/// What the attempts of one request to one version share.
pub(crate) struct Attempts<'a> {
    pub endpoints: &'a [Arc<Endpoint>],
    pub timeouts: &'a Timeouts,
    pub upgrade: bool,
    /// A gRPC caller's deadline, across every attempt.
    pub call_deadline: Option<Instant>,
    /// Hears of the client's request body failing.
    pub body_watch: Option<&'a ClientBodyWatch>,
}

impl Attempts<'_> {
    /// Sends `request` to an endpoint chosen by the balancer, and on as
    /// [`Budget::decide`] says. `blame` hears of every failure the endpoint
    /// is to blame for (passive ejection). The first attempt's clock started
    /// at `attempt_at`.
    pub(crate) async fn send(
        &self,
        mut request: Request<RequestBody>,
        timer: &mut Option<RequestTimer>,
        mut attempt_at: Instant,
        mut blame: impl FnMut(&Arc<Endpoint>, FailureReason),
    ) -> Result<(Response<ResponseBody>, Lease), SendFailure> {
        let endpoints = self.endpoints;
        let Some(mut chosen) = balance::pick(endpoints, None) else {
            return Err(SendFailure {
                error: None,
                unsent: Some(request),
            });
        };
        let mut budget = Budget::new(endpoints.len());
        loop {
            let endpoint = &endpoints[chosen];
            let deadline = match self.call_deadline {
                Some(call) => call.min(attempt_at + self.timeouts.request),
                None => attempt_at + self.timeouts.request,
            };
            let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            timer.as_mut().reset(deadline);
            let attempt = tokio::select! {
                biased;
                sent = endpoint.send(request, self.timeouts, self.upgrade) => sent,
                () = timer.as_mut() => Err(self.timed_out(endpoint)),
            };
            let mut failed = match attempt {
                // The endpoint's streak hears of this answer when its
                // stream ends (`proxy::outcome`).
                Ok(sent) => return Ok(sent),
                Err(failed) => failed,
            };
            failed.error = failed.error.or_client(self.body_watch);
            let (error, decision) = budget.decide(failed);
            if let Some(reason) = decision.blame {
                blame(endpoint, reason);
            }
            match decision.next {
                Next::Again(again) => {
                    tracing::debug!(%error, "pooled connection had closed; trying a fresh one");
                    request = again;
                }
                Next::Other(again) => {
                    tracing::debug!(%error, "retrying on another endpoint");
                    request = again;
                    attempt_at = Instant::now();
                    chosen = balance::pick(endpoints, Some(chosen)).unwrap_or(chosen);
                }
                Next::Stop(unsent) => {
                    return Err(SendFailure {
                        error: Some(error),
                        unsent,
                    })
                }
            }
        }
    }

    /// The attempt's wait ran out. When the client had not finished sending
    /// its body, the wait was for the client, not the upstream.
    fn timed_out(&self, endpoint: &Endpoint) -> Failed {
        let error = if self.body_watch.is_some_and(|w| !w.is_complete()) {
            UpstreamError::ClientBody {
                fault: ClientBodyFault::Slow,
                cause: format!("request body incomplete after {:?}", self.timeouts.request),
            }
        } else {
            UpstreamError::Timeout {
                addr: endpoint.addr(),
            }
        };
        Failed {
            error,
            delivery: Delivery::Partial,
            request: None,
            reused: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> std::net::SocketAddr {
        "127.0.0.1:9".parse().expect("addr")
    }

    fn get() -> Request<RequestBody> {
        Request::new(RequestBody::Empty)
    }

    fn post() -> Request<RequestBody> {
        let mut request = get();
        *request.method_mut() = http::Method::POST;
        request
    }

    fn reset() -> UpstreamError {
        UpstreamError::Reset {
            addr: addr(),
            cause: "closed".to_string(),
        }
    }

    fn failed(delivery: Delivery, request: Request<RequestBody>, reused: bool) -> Failed {
        Failed {
            error: reset(),
            delivery,
            request: Some(request),
            reused,
        }
    }

    fn next(budget: &mut Budget, failed: Failed) -> (&'static str, Option<FailureReason>) {
        let (_, decision) = budget.decide(failed);
        let next = match decision.next {
            Next::Again(_) => "again",
            Next::Other(_) => "other",
            Next::Stop(Some(_)) => "stop, given back",
            Next::Stop(None) => "stop",
        };
        (next, decision.blame)
    }

    #[test]
    fn a_stale_pooled_connection_is_tried_again_a_few_times_and_blames_nobody() {
        let mut budget = Budget::new(2);
        for _ in 0..MAX_STALE_RETRIES {
            assert_eq!(
                next(&mut budget, failed(Delivery::Unanswered, get(), true)),
                ("again", None)
            );
        }
        // Then it is the endpoint's failure, and the other endpoint's turn.
        assert_eq!(
            next(&mut budget, failed(Delivery::Unanswered, get(), true)),
            ("other", Some(FailureReason::Reset))
        );
    }

    #[test]
    fn another_endpoint_once_then_the_request_goes_back_to_the_caller() {
        let mut budget = Budget::new(3);
        let reset = Some(FailureReason::Reset);
        let unsent = || failed(Delivery::Unsent, post(), false);
        assert_eq!(next(&mut budget, unsent()), ("other", reset));
        assert_eq!(next(&mut budget, unsent()), ("stop, given back", reset));
        // A version with one endpoint has nowhere else to go.
        assert_eq!(
            next(&mut Budget::new(1), unsent()),
            ("stop, given back", reset)
        );
    }

    #[test]
    fn a_written_request_goes_again_only_when_safe_to_repeat() {
        // (how far it got, the request, on a pooled connection, what next)
        let cases = [
            // POST may have been acted on; GET may be repeated.
            (Delivery::Unanswered, post(), false, "stop"),
            (Delivery::Unanswered, post(), true, "stop"),
            (Delivery::Unanswered, get(), false, "other"),
            // Part of an answer came: never again, whatever the method.
            (Delivery::Partial, get(), true, "stop"),
            (Delivery::Partial, get(), false, "stop"),
        ];
        for (delivery, request, reused, expected) in cases {
            let what = format!("{delivery:?} {} reused={reused}", request.method());
            let got = next(&mut Budget::new(2), failed(delivery, request, reused));
            assert_eq!(got, (expected, Some(FailureReason::Reset)), "{what}");
        }
    }

    #[test]
    fn the_clients_fault_is_never_retried_nor_blamed_on_the_endpoint() {
        let failed = Failed {
            error: UpstreamError::ClientBody {
                fault: ClientBodyFault::Aborted,
                cause: "gone".to_string(),
            },
            delivery: Delivery::Unsent,
            request: Some(get()),
            reused: true,
        };
        assert_eq!(next(&mut Budget::new(2), failed), ("stop", None));
    }

    #[test]
    fn a_timeout_is_the_endpoints_and_final() {
        let failed = Failed {
            error: UpstreamError::Timeout { addr: addr() },
            delivery: Delivery::Partial,
            request: None,
            reused: false,
        };
        assert_eq!(
            next(&mut Budget::new(2), failed),
            ("stop", Some(FailureReason::Timeout))
        );
    }

    #[test]
    fn only_requests_safe_to_repeat_are_copied() {
        assert!(replay_copy(&get()).is_some());
        assert!(replay_copy(&post()).is_none());
        let mut put = get();
        *put.method_mut() = http::Method::PUT;
        put.headers_mut()
            .insert("x-a", http::HeaderValue::from_static("1"));
        let copy = replay_copy(&put).expect("PUT without a body is safe to repeat");
        assert_eq!(copy.method(), http::Method::PUT);
        assert_eq!(copy.headers()["x-a"], "1");
    }
}
