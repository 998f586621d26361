//! Per-version measurement, in two forms: cumulative Prometheus metrics and
//! a sliding window held in-process for the guard and `/status`. Counters and
//! gauges go through the `metrics` facade and its Prometheus exporter; the
//! latency histograms are veer's own bucket counters (`buckets`), because the
//! exporter's buffered every sample and read a clock per request.
//!
//! Every metric handle is resolved when a snapshot is built, never per
//! request: recording an outcome is a few relaxed atomic adds and no label
//! formatting or map lookup. The recorder is owned by one `Telemetry` (not
//! installed globally) so that several proxies in one process — the tests —
//! keep separate figures.
//!
//! What counts: every request routed to a version, once, when its response
//! stream ends (see `proxy::outcome`), by the exact status the client got. An
//! error is a 5xx answer, a failed upstream attempt (connect, timeout, reset,
//! protocol) or a response that broke after its head (`midstream`); 4xx
//! answers and clients that break or abandon their request
//! (`veer_client_aborts_total`) are the client's and are not errors. Latency
//! (`veer_request_duration_seconds`, the window's percentiles, what the guard
//! judges) runs from the request's arrival to the response head: what the
//! version controls. The full duration, to the end of the response stream, is
//! `veer_response_duration_seconds`.

pub mod access;
pub mod buckets;
mod exposition;
pub mod histogram;
pub mod methods;
pub mod operator;
pub mod window;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::StatusCode;
use metrics::{Counter, Gauge, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::time::Instant;

use crate::grpc;
use crate::outcome::FailureReason;
use buckets::LatencyBuckets;
use exposition::{Family, HistogramRegistry};
use methods::MethodTable;
pub use window::{Figures, Window};

const REQUEST_DURATION: Family = Family {
    name: "veer_request_duration_seconds",
    help: "From a request's arrival to the upstream's response head.",
};

const RESPONSE_DURATION: Family = Family {
    name: "veer_response_duration_seconds",
    help: "From a request's arrival to the end of the response stream (body and trailers, or its failure).",
};

/// Statuses whose `veer_requests_total` handle is resolved with the version's
/// other handles; any other status is resolved the first time it is seen.
const COMMON_STATUSES: [u16; 14] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 500, 502, 503, 504,
];

/// The longest window kept when no guard asks for more.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);

/// The metrics of one proxy: the recorder, the latency histograms, the clock
/// the windows count seconds on, and the proxy-wide counters.
pub struct Telemetry {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    histograms: HistogramRegistry,
    origin: Instant,
    reloads_success: Counter,
    reloads_failure: Counter,
    unrouted: Counter,
    operator: operator::Operator,
}

/// The outcome of one request, classified once, when its response stream
/// ended, and recorded once.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// The status the client got (the upstream's or veer's own).
    pub status: StatusCode,
    /// The version's fault: an upstream attempt failed, or the response
    /// broke after its head (`Midstream`).
    pub failure: Option<FailureReason>,
    /// The client's fault: it sent a malformed body, aborted its upload or
    /// went away before the response ended. Never an error of the version.
    pub client: Option<ClientFault>,
    /// From arrival to the response head (time to first byte).
    pub latency: Duration,
    /// From arrival to the end of the response stream.
    pub total: Duration,
    /// A gRPC call's ending: its `grpc-status` and whether that is the
    /// version's error (which then decides, not the HTTP status).
    pub grpc: Option<grpc::Ended>,
}

impl Outcome {
    /// Whether the version is to blame: a failure of its own, or a 5xx it
    /// (or veer, for want of an endpoint) answered.
    pub fn is_error(&self) -> bool {
        match self.grpc {
            Some(call) => self.failure.is_some() || call.error,
            None => self.failure.is_some() || self.status.is_server_error(),
        }
    }
}

/// What a client did wrong, the reasons of `veer_client_aborts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// The request body's framing was invalid (bad chunk size or
    /// extension): answered 400.
    Malformed = 0,
    /// The request body ended before its announced length, or the client
    /// reset the connection while sending it.
    Upload = 1,
    /// The client went away before the response stream ended.
    Disconnect = 2,
}

impl ClientFault {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientFault::Malformed => "malformed",
            ClientFault::Upload => "upload",
            ClientFault::Disconnect => "disconnect",
        }
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let recorder = Arc::new(PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        describe(&recorder);
        let reloads = |result: &'static str| {
            counter(
                &recorder,
                "veer_config_reloads_total",
                vec![Label::new("result", result)],
            )
        };
        Telemetry {
            reloads_success: reloads("success"),
            reloads_failure: reloads("failure"),
            unrouted: counter(&recorder, "veer_unrouted_requests_total", vec![]),
            handle,
            recorder,
            histograms: HistogramRegistry::default(),
            origin: Instant::now(),
            operator: operator::Operator::new(),
        }
    }

    /// The operator's gauges: process, listeners, certificates (see `operator`).
    pub fn operator(&self) -> &operator::Operator {
        &self.operator
    }

    /// The recorder, for series declared off the request path (`operator`).
    pub(crate) fn recorder(&self) -> &PrometheusRecorder {
        &self.recorder
    }

    /// Time since this telemetry began: the windows' clock.
    #[inline]
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.origin)
    }

    /// Prometheus text exposition of everything: the exporter's counters and
    /// gauges, then the histograms.
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        self.histograms.render_into(&mut text);
        self.operator.render_into(&mut text);
        text
    }

    pub fn count_reload(&self, success: bool) {
        if success {
            self.reloads_success.increment(1);
        } else {
            self.reloads_failure.increment(1);
        }
    }

    /// Counts a guard trip (cold path: the handle is resolved here).
    pub fn count_trip(&self, service: &str, version: &str, reason: &str) {
        let labels = vec![
            Label::new("service", service.to_string()),
            Label::new("version", version.to_string()),
            Label::new("reason", reason.to_string()),
        ];
        counter(&self.recorder, "veer_guard_trips_total", labels).increment(1);
    }

    /// `veer_endpoint_healthy` for one endpoint (cold path: resolved here).
    pub fn endpoint_gauge(
        &self,
        service: &str,
        version: &str,
        endpoint: std::net::SocketAddr,
    ) -> Gauge {
        let labels = vec![
            Label::new("service", service.to_string()),
            Label::new("version", version.to_string()),
            Label::new("endpoint", endpoint.to_string()),
        ];
        self.recorder.register_gauge(
            &Key::from_parts("veer_endpoint_healthy", labels),
            &metadata(),
        )
    }

    /// `veer_version_unavailable_total`: a version lost its last endpoint in
    /// service (its share went to the baseline, if there is one). Cold path.
    pub fn count_share_moved(&self, service: &str, version: &str) {
        let labels = vec![
            Label::new("service", service.to_string()),
            Label::new("version", version.to_string()),
        ];
        counter(&self.recorder, "veer_version_unavailable_total", labels).increment(1);
    }

    /// Sets `veer_rollout_step` (1-based; 0 without a rollout). Cold path.
    pub fn set_rollout_step(&self, service: &str, step: u32) {
        let labels = vec![Label::new("service", service.to_string())];
        self.recorder
            .register_gauge(&Key::from_parts("veer_rollout_step", labels), &metadata())
            .set(f64::from(step));
    }

    /// `veer_endpoint_ejections_total` (cold path).
    pub fn count_ejection(
        &self,
        service: &str,
        version: &str,
        endpoint: std::net::SocketAddr,
        reason: &str,
    ) {
        let labels = vec![
            Label::new("service", service.to_string()),
            Label::new("version", version.to_string()),
            Label::new("endpoint", endpoint.to_string()),
            Label::new("reason", reason.to_string()),
        ];
        counter(&self.recorder, "veer_endpoint_ejections_total", labels).increment(1);
    }

    /// The counter of one reason of `veer_tls_handshake_failures_total` for
    /// one listener (cold path: resolved when the listener's TLS is set up).
    pub fn tls_handshake_failure_counter(&self, listener: &str, reason: &'static str) -> Counter {
        let labels = vec![
            Label::new("listener", listener.to_string()),
            Label::new("reason", reason),
        ];
        counter(&self.recorder, "veer_tls_handshake_failures_total", labels)
    }

    /// `veer_access_log_dropped_total`: lines the access log's writer could
    /// not keep up with.
    pub fn access_log_dropped_counter(&self) -> Counter {
        counter(&self.recorder, "veer_access_log_dropped_total", vec![])
    }

    pub fn count_unrouted(&self) {
        self.unrouted.increment(1);
    }

    /// Resolves every handle of one version. Its histograms are shared with
    /// any other revision of the same version, as its counters are.
    pub fn version_stats(
        &self,
        service: &str,
        version: &str,
        window: Duration,
        max_methods: usize,
    ) -> VersionStats {
        let labels = || {
            vec![
                Label::new("service", service.to_string()),
                Label::new("version", version.to_string()),
            ]
        };
        let with = |name: &'static str, value: &'static str| {
            let mut l = labels();
            l.push(Label::new(name, value));
            l
        };
        let r = &self.recorder;
        let requests: Box<[OnceLock<Counter>]> =
            (0..STATUS_SLOTS).map(|_| OnceLock::new()).collect();
        for code in COMMON_STATUSES {
            let _ = requests[usize::from(code - 100)].set(counter(
                r,
                "veer_requests_total",
                with("code", status_label(code)),
            ));
        }
        VersionStats {
            recorder: Arc::clone(r),
            service: service.to_string(),
            version: version.to_string(),
            requests,
            client_aborts: [
                ClientFault::Malformed,
                ClientFault::Upload,
                ClientFault::Disconnect,
            ]
            .map(|fault| {
                counter(
                    r,
                    "veer_client_aborts_total",
                    with("reason", fault.as_str()),
                )
            }),
            failures: [
                FailureReason::Connect,
                FailureReason::Timeout,
                FailureReason::Reset,
                FailureReason::Protocol,
                FailureReason::Tls,
                FailureReason::Midstream,
            ]
            .map(|reason| {
                counter(
                    r,
                    "veer_upstream_failures_total",
                    with("reason", reason.as_str()),
                )
            }),
            duration: self
                .histograms
                .get_or_create(REQUEST_DURATION, histogram_labels(service, version)),
            full_duration: self
                .histograms
                .get_or_create(RESPONSE_DURATION, histogram_labels(service, version)),
            weight: r.register_gauge(
                &Key::from_parts("veer_version_weight", labels()),
                &metadata(),
            ),
            window: Window::new(window),
            grpc_codes: (0..grpc::OUTCOMES).map(|_| OnceLock::new()).collect(),
            methods: MethodTable::new(max_methods, window),
            evictions: tokio::sync::Notify::new(),
        }
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

/// `veer_requests_total` keeps one slot per status from 100 to 999.
const STATUS_SLOTS: usize = 900;

/// The `code` label of a common status, without formatting.
fn status_label(code: u16) -> &'static str {
    match code {
        200 => "200",
        201 => "201",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => "other",
    }
}

/// The handles and window of one version of one service.
pub struct VersionStats {
    /// Resolves the handle of a status seen for the first time (cold).
    recorder: Arc<PrometheusRecorder>,
    service: String,
    version: String,
    /// `veer_requests_total` by exact status, indexed by `status - 100`;
    /// the common ones resolved up front, the rest on first use.
    requests: Box<[OnceLock<Counter>]>,
    client_aborts: [Counter; 3],
    failures: [Counter; 6],
    duration: Arc<LatencyBuckets>,
    full_duration: Arc<LatencyBuckets>,
    weight: Gauge,
    window: Window,
    /// `veer_grpc_responses_total` by `grpc_code` (`grpc::outcome_index`),
    /// resolved on first use so a version that serves no gRPC shows none.
    grpc_codes: Box<[OnceLock<Counter>]>,
    /// Per-method windows of gRPC calls, bounded.
    methods: MethodTable,
    /// Wakes the long-lived connections (upgraded tunnels) of this version
    /// when it is reverted with `on_revert: evict`. It lives here because
    /// this is the one per-(version, revision) object that outlasts
    /// snapshots.
    evictions: tokio::sync::Notify,
}

impl VersionStats {
    /// Closes this version's long-lived connections.
    pub fn evict(&self) {
        self.evictions.notify_waiters();
    }

    /// Completes when `evict` is called.
    pub async fn evicted(&self) {
        self.evictions.notified().await;
    }

    /// Records one request's outcome; `elapsed` is `Telemetry::elapsed(now)`.
    /// A client that went away before any answer (`status` is `None`) is
    /// counted as an abort and in nothing else.
    #[inline]
    pub fn record(&self, elapsed: Duration, outcome: &Outcome) {
        self.requests_counter(outcome.status).increment(1);
        if let Some(reason) = outcome.failure {
            self.failures[reason as usize].increment(1);
        }
        if let Some(fault) = outcome.client {
            self.client_aborts[fault as usize].increment(1);
        }
        self.duration.record(outcome.latency);
        self.full_duration.record(outcome.total);
        let error = outcome.is_error();
        self.window.record(elapsed, outcome.latency, error);
        if let Some(call) = outcome.grpc {
            let index = grpc::outcome_index(call.status);
            self.grpc_codes[index]
                .get_or_init(|| self.resolve_grpc_code(call.status))
                .increment(1);
            self.methods
                .stats(call.method)
                .window()
                .record(elapsed, outcome.latency, error);
        }
    }

    #[cold]
    fn resolve_grpc_code(&self, status: grpc::Status) -> Counter {
        let labels = vec![
            Label::new("service", self.service.clone()),
            Label::new("version", self.version.clone()),
            Label::new("grpc_code", grpc::outcome_name(status)),
        ];
        counter(&self.recorder, "veer_grpc_responses_total", labels)
    }

    /// The per-method figures of this version's gRPC calls.
    pub fn methods(&self) -> &MethodTable {
        &self.methods
    }

    /// Empties the next second of every window ahead of time (the ticker's job).
    pub fn advance(&self, elapsed: Duration) {
        self.window.advance(elapsed);
        self.methods.advance(elapsed);
    }

    /// Forgets every figure of the windows: a resumed version is judged on
    /// fresh requests only, not on those that got it rolled back.
    pub fn reset(&self) {
        self.window.reset();
        self.methods.reset();
    }

    /// Counts a client that went away before veer had an answer for it: no
    /// status was sent, so nothing else is recorded.
    pub fn record_client_gone(&self) {
        self.client_aborts[ClientFault::Disconnect as usize].increment(1);
    }

    #[inline]
    fn requests_counter(&self, status: StatusCode) -> &Counter {
        let code = status.as_u16();
        let slot = usize::from(code.saturating_sub(100)).min(STATUS_SLOTS - 1);
        self.requests[slot].get_or_init(|| self.resolve_status(status))
    }

    /// A status outside `COMMON_STATUSES`, the first time it is seen.
    #[cold]
    fn resolve_status(&self, status: StatusCode) -> Counter {
        let labels = vec![
            Label::new("service", self.service.clone()),
            Label::new("version", self.version.clone()),
            Label::new("code", status.as_str().to_string()),
        ];
        counter(&self.recorder, "veer_requests_total", labels)
    }

    pub fn set_weight(&self, weight: u32) {
        self.weight.set(f64::from(weight));
    }

    pub fn window(&self) -> &Window {
        &self.window
    }
}

impl std::fmt::Debug for VersionStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionStats").finish_non_exhaustive()
    }
}

/// Keeps one `VersionStats` per (service, version, revision) across snapshots,
/// so a reload that leaves a version alone keeps its window. Used only by the
/// snapshot's writer.
#[derive(Default)]
pub struct StatsRegistry {
    stats: HashMap<(String, String, String), Arc<VersionStats>>,
}

impl StatsRegistry {
    pub fn stats(
        &mut self,
        telemetry: &Telemetry,
        service: &str,
        version: &str,
        revision: &str,
        window: Duration,
        max_methods: usize,
    ) -> Arc<VersionStats> {
        let key = (
            service.to_string(),
            version.to_string(),
            revision.to_string(),
        );
        if let Some(existing) = self.stats.get(&key) {
            if existing.window.capacity() >= window && existing.methods.cap() == max_methods {
                return Arc::clone(existing);
            }
        }
        let fresh = Arc::new(telemetry.version_stats(service, version, window, max_methods));
        self.stats.insert(key, Arc::clone(&fresh));
        fresh
    }

    /// Forgets stats that no snapshot uses any more.
    pub fn retain_used(&mut self) {
        self.stats.retain(|_, s| Arc::strong_count(s) > 1);
    }

    /// Runs `f` over every live version's window (the ticker's job).
    pub fn for_each(&self, mut f: impl FnMut(&VersionStats)) {
        self.stats.values().for_each(|s| f(s));
    }
}

fn histogram_labels(service: &str, version: &str) -> exposition::Labels {
    vec![
        ("service", service.to_string()),
        ("version", version.to_string()),
    ]
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

fn counter(recorder: &PrometheusRecorder, name: &'static str, labels: Vec<Label>) -> Counter {
    recorder.register_counter(&Key::from_parts(name, labels), &metadata())
}

fn describe(recorder: &PrometheusRecorder) {
    // Not the histograms: they are veer's own, with their help text in
    // `REQUEST_DURATION` and `RESPONSE_DURATION`.
    let d = |name: &'static str, text: &'static str, kind: u8| {
        let name = metrics::KeyName::from_const_str(name);
        let text = metrics::SharedString::const_str(text);
        match kind {
            0 => recorder.describe_counter(name, None, text),
            _ => recorder.describe_gauge(name, None, text),
        }
    };
    d(
        "veer_requests_total",
        "Requests served per version, by the exact status of the answer, counted when the response stream ends.",
        0,
    );
    d(
        "veer_client_aborts_total",
        "Requests the client broke or abandoned (malformed body, aborted upload, disconnect before the response ended); never a version's error.",
        0,
    );
    d(
        "veer_grpc_responses_total",
        "gRPC calls per version, by the grpc-status they ended with (NO_STATUS: none).",
        0,
    );
    d(
        "veer_upstream_failures_total",
        "Failed upstream attempts per version, by reason.",
        0,
    );
    d("veer_config_reloads_total", "Config reloads, by result.", 0);
    d(
        "veer_access_log_dropped_total",
        "Access log lines dropped because the writer fell behind.",
        0,
    );
    d(
        "veer_rollout_step",
        "The rollout's current step, 1-based (0: no rollout).",
        1,
    );
    d(
        "veer_endpoint_healthy",
        "1 when the endpoint may take requests (probes pass, not ejected).",
        1,
    );
    d(
        "veer_version_unavailable_total",
        "Times a version was left with no endpoint in service (its share went to the baseline).",
        0,
    );
    d(
        "veer_endpoint_ejections_total",
        "Passive ejections of endpoints that failed on real traffic.",
        0,
    );
    d(
        "veer_guard_trips_total",
        "Versions the guard (or an operator) rolled back, by reason.",
        0,
    );
    d(
        "veer_tls_handshake_failures_total",
        "Client TLS handshakes that failed, per listener and reason.",
        0,
    );
    d(
        "veer_unrouted_requests_total",
        "Requests that matched no service (answered 404).",
        0,
    );
    d(
        "veer_version_weight",
        "The weight in force for each version.",
        1,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(latency: Duration) -> Outcome {
        Outcome {
            status: StatusCode::OK,
            failure: None,
            client: None,
            latency,
            total: latency + Duration::from_millis(1),
            grpc: None,
        }
    }

    #[test]
    fn two_revisions_of_a_version_share_one_histogram_and_the_text_parses() {
        let telemetry = Telemetry::new();
        let mut registry = StatsRegistry::default();
        let window = Duration::from_secs(10);
        let first = registry.stats(&telemetry, "web", "stable", "1", window, 0);
        let second = registry.stats(&telemetry, "web", "stable", "2", window, 0);
        assert!(
            !Arc::ptr_eq(&first, &second),
            "one VersionStats per revision"
        );
        let now = telemetry.elapsed(Instant::now());
        first.record(now, &ok(Duration::from_millis(1)));
        let mut slow = ok(Duration::from_millis(40));
        slow.total = Duration::from_millis(45);
        second.record(now, &slow);

        let text = telemetry.render();
        for name in [REQUEST_DURATION.name, RESPONSE_DURATION.name] {
            let help = format!("# HELP {name} ");
            let kind = format!("# TYPE {name} histogram");
            assert_eq!(
                text.lines().filter(|l| l.starts_with(&help)).count(),
                1,
                "{text}"
            );
            assert_eq!(text.lines().filter(|l| *l == kind).count(), 1, "{text}");
        }
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("parses as Prometheus text");
        let series: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == REQUEST_DURATION.name)
            .collect();
        assert_eq!(series.len(), 1, "one series for both revisions: {text}");
        let prometheus_parse::Value::Histogram(buckets) = &series[0].value else {
            panic!("not a histogram: {:?}", series[0]);
        };
        let at = |le: f64| buckets.iter().find(|b| b.less_than == le).map(|b| b.count);
        assert_eq!(at(0.001), Some(1.0));
        assert_eq!(at(0.05), Some(2.0));
        assert_eq!(at(f64::INFINITY), Some(2.0));
        let labels = [("service", "web"), ("version", "stable")];
        let value = |metric: &str| {
            scrape
                .samples
                .iter()
                .find(|s| {
                    s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
                })
                .map(|s| match s.value {
                    prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                })
        };
        assert_eq!(
            value("veer_request_duration_seconds_count"),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            value("veer_request_duration_seconds_sum"),
            Some(0.041),
            "{text}"
        );
        assert_eq!(
            value("veer_response_duration_seconds_sum"),
            Some(0.047),
            "{text}"
        );
        // The exporter's counters are still there, counted across revisions too.
        assert!(
            text.contains(
                "veer_requests_total{service=\"web\",version=\"stable\",code=\"200\"} 2\n"
            ),
            "{text}"
        );
    }
}
