//! One outcome per request, classified and recorded once, when the response
//! stream ends: the body's last frame or its trailers were handed to the
//! client, the stream failed, or the client went away. Every path ends here
//! (the HTTP/1.1 fast path, hyper's client, HTTP/2, an upgrade at its `101`,
//! an answer veer made itself, a failed attempt before the fallback to the
//! baseline), and everything that judges a version reads what is recorded
//! here: the Prometheus counters and histograms, the guard's window (and so
//! `/status`), and the endpoint's failure streak (passive ejection).
//!
//! A version is only blamed for what it did: a response that breaks after
//! its head is its error (`midstream`), a client that sends a malformed body,
//! aborts its upload or leaves is the client's (`veer_client_aborts_total`).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use super::Shared;
use crate::grpc;
use crate::outcome::FailureReason;
use crate::snapshot::Snapshot;
use crate::telemetry::access::Entry;
use crate::telemetry::{ClientFault, Outcome, VersionStats};
use crate::upstream::body::{ClientBodyFault, ClientBodyWatch};
use crate::upstream::Endpoint;

/// How a response stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The last frame (data or trailers) was handed to the client.
    Complete,
    /// The upstream's body failed after the head was sent.
    Failed,
    /// The client went away before the stream ended.
    ClientGone,
}

/// The verdict on how a stream ended: the version's failure and the
/// client's fault, if any. A gRPC call's verdict in its `grpc-status` (in the
/// head of a trailers-only answer or in the trailers frame) is taken beside
/// it, in `Finish::end`, by `grpc::Call::end`.
pub fn classify(end: End) -> (Option<FailureReason>, Option<ClientFault>) {
    match end {
        End::Complete => (None, None),
        End::Failed => (Some(FailureReason::Midstream), None),
        End::ClientGone => (None, Some(ClientFault::Disconnect)),
    }
}

/// A request's pending outcome; recorded by `end`, or on drop as `on_drop`.
pub struct Finish {
    shared: Arc<Shared>,
    snapshot: Arc<Snapshot>,
    service: usize,
    version: usize,
    /// The endpoint that answered (its failure streak hears of the outcome);
    /// `None` when no endpoint answered (attempt failures are counted on the
    /// endpoint as they happen).
    endpoint: Option<Arc<Endpoint>>,
    started: Instant,
    /// From arrival to the response head.
    latency: Duration,
    status: StatusCode,
    /// Known before the stream: an attempt that failed, a client whose body
    /// broke.
    failure: Option<FailureReason>,
    client: Option<ClientFault>,
    /// Hears of the client's body failing after the head was sent.
    body_watch: Option<ClientBodyWatch>,
    /// Set for a gRPC call: judged by its `grpc-status` when it ends.
    grpc: Option<grpc::Call>,
    /// Response body bytes handed to the client (for the access log).
    bytes: u64,
    /// This request's access log entry, when it is logged.
    log: Option<Box<Entry>>,
    on_drop: End,
    done: bool,
}

/// Who answered and how, for a new `Finish`.
pub struct Answered {
    pub status: StatusCode,
    pub endpoint: Option<Arc<Endpoint>>,
    pub failure: Option<FailureReason>,
    pub client: Option<ClientFault>,
    pub latency: Duration,
}

impl Finish {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        shared: Arc<Shared>,
        snapshot: Arc<Snapshot>,
        service: usize,
        version: usize,
        started: Instant,
        answered: Answered,
        body_watch: Option<ClientBodyWatch>,
        log: Option<Box<Entry>>,
    ) -> Finish {
        Finish {
            shared,
            snapshot,
            service,
            version,
            endpoint: answered.endpoint,
            started,
            latency: answered.latency,
            status: answered.status,
            failure: answered.failure,
            client: answered.client,
            body_watch,
            grpc: None,
            bytes: 0,
            log,
            on_drop: End::ClientGone,
            done: false,
        }
    }

    /// Makes this a gRPC call's outcome: judged by the `grpc-status` it
    /// ends with (see `grpc::Call::end`), not by its HTTP `200`.
    pub fn grpc(&mut self, call: grpc::Call) {
        self.grpc = Some(call);
    }

    /// What dropping this unfinished means (by default the client went
    /// away): an answer veer made itself, held in memory, is complete whether
    /// or not the client read it.
    pub fn drop_means(&mut self, end: End) {
        self.on_drop = end;
    }

    /// Counts body bytes handed to the client.
    #[inline]
    pub fn sent(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }

    fn stats(&self) -> &VersionStats {
        &self.snapshot.services[self.service].versions[self.version].stats
    }

    /// Classifies and records the outcome, once: later calls do nothing.
    pub fn end(&mut self, trailers: Option<&HeaderMap>, end: End) {
        if self.done {
            return;
        }
        self.done = true;
        let now = Instant::now();
        let (mut failure, mut client) = (self.failure, self.client);
        if failure.is_none() && client.is_none() {
            (failure, client) = classify(end);
            // The upstream's answer broke because the client's upload did
            // (hyper tears the exchange down): the client's fault.
            if let Some(fault) = self.body_watch.as_ref().and_then(ClientBodyWatch::fault) {
                if failure.is_some() {
                    failure = None;
                    client = Some(client_fault(fault));
                }
            }
        }
        let grpc = self
            .grpc
            .map(|call| call.end(trailers, failure.is_some(), client.is_some()));
        let outcome = Outcome {
            status: self.status,
            failure,
            client,
            latency: self.latency,
            total: now.saturating_duration_since(self.started),
            grpc,
        };
        let elapsed = self.shared.telemetry.elapsed(now);
        self.stats().record(elapsed, &outcome);
        if let Some(endpoint) = &self.endpoint {
            let service = &self.snapshot.services[self.service];
            match (failure, client) {
                (Some(FailureReason::Midstream), _) => {
                    self.shared.count_failure(service, endpoint, "midstream");
                }
                // Attempt failures were counted on the endpoint when they
                // happened; a client's fault is never the endpoint's.
                (Some(_), _) | (None, Some(_)) => {}
                (None, None) if service.outlier.count_5xx && outcome.is_error() => {
                    let reason = if grpc.is_some() { "grpc" } else { "5xx" };
                    self.shared.count_failure(service, endpoint, reason);
                }
                (None, None) => endpoint.health.record_success(),
            }
        }
        if let (Some(mut entry), Some(access)) = (self.log.take(), &self.shared.access) {
            let service = &self.snapshot.services[self.service];
            entry.at = std::time::SystemTime::now();
            entry.service = Arc::clone(&service.name);
            entry.version = Arc::clone(&service.versions[self.version].name);
            entry.endpoint = self.endpoint.as_ref().map(|e| e.addr());
            entry.status = self.status.as_u16();
            (entry.outcome, entry.reason) = match (failure, client) {
                (Some(reason), _) => ("error", Some(reason.as_str())),
                (None, Some(fault)) => ("client", Some(fault.as_str())),
                // A gRPC call's error is its status: `INTERNAL`, `NO_STATUS`.
                (None, None) if outcome.is_error() => {
                    ("error", grpc.map(|call| grpc::outcome_name(call.status)))
                }
                (None, None) => ("ok", None),
            };
            entry.bytes = self.bytes;
            entry.ttfb = outcome.latency;
            entry.total = outcome.total;
            access.log(entry);
        }
    }
}

pub fn client_fault(fault: ClientBodyFault) -> ClientFault {
    match fault {
        ClientBodyFault::Malformed => ClientFault::Malformed,
        ClientBodyFault::Aborted | ClientBodyFault::Slow => ClientFault::Upload,
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.end(None, self.on_drop);
    }
}

impl std::fmt::Debug for Finish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finish")
            .field("status", &self.status)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// Counts a client that went away while veer waited for the upstream (the
/// request's future was dropped before it had an answer), unless disarmed.
pub(super) struct GoneBeforeAnswer<'a>(pub Option<&'a VersionStats>);

impl Drop for GoneBeforeAnswer<'_> {
    fn drop(&mut self) {
        if let Some(stats) = self.0 {
            stats.record_client_gone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_judged_by_how_it_ended() {
        assert_eq!(classify(End::Complete), (None, None));
        assert_eq!(
            classify(End::Failed),
            (Some(FailureReason::Midstream), None),
            "a 200 whose body broke is the version's"
        );
        assert_eq!(
            classify(End::ClientGone),
            (None, Some(ClientFault::Disconnect)),
            "leaving is the client's, whatever the status"
        );
    }

    #[test]
    fn a_broken_upload_is_the_clients_fault() {
        assert_eq!(
            client_fault(ClientBodyFault::Malformed),
            ClientFault::Malformed
        );
        assert_eq!(client_fault(ClientBodyFault::Aborted), ClientFault::Upload);
        assert_eq!(client_fault(ClientBodyFault::Slow), ClientFault::Upload);
    }
}
