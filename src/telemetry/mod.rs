//! Per-version measurement, in two forms: cumulative Prometheus metrics
//! (through the `metrics` facade and its Prometheus exporter) and a sliding
//! window held in-process for the guard and `/status`.
//!
//! Every metric handle is resolved when a snapshot is built, never per
//! request: recording an outcome is a few relaxed atomic adds and no label
//! formatting or map lookup. The recorder is owned by one `Telemetry` (not
//! installed globally) so that several proxies in one process — the tests —
//! keep separate figures.
//!
//! What counts: every request routed to a version, by the status class of
//! the answer the client got. An error is a 5xx answer or a failed upstream
//! attempt (connect, timeout, reset, protocol); 4xx answers are the client's
//! and are not errors. Latency (`veer_request_duration_seconds`, the window's
//! percentiles, what the guard judges) runs from the request's arrival to the
//! response head: what the version controls. The full duration, to the end of
//! the response body, is `veer_response_duration_seconds`.

pub mod histogram;
pub mod window;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::time::Instant;

use crate::upstream::error::FailureReason;
pub use window::{Figures, Window};

/// Buckets for request latencies: sub-millisecond (a proxy on loopback) up to
/// 10 s, finer where service latencies usually are.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.035, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0,
];

/// The longest window kept when no guard asks for more.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);

/// The metrics of one proxy: the recorder, the clock the windows count seconds
/// on, and the proxy-wide counters.
pub struct Telemetry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    origin: Instant,
    reloads_success: Counter,
    reloads_failure: Counter,
    unrouted: Counter,
}

/// The outcome of one request, classified once and recorded once.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// The status the client got (the upstream's or veer's own).
    pub status: StatusCode,
    /// Set when the upstream attempt failed.
    pub failure: Option<FailureReason>,
    /// From arrival to the response head.
    pub latency: Duration,
}

impl Outcome {
    pub fn is_error(&self) -> bool {
        self.failure.is_some() || self.status.is_server_error()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("duration_seconds".into()),
                LATENCY_BUCKETS,
            )
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
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
            origin: Instant::now(),
        }
    }

    /// Time since this telemetry began: the windows' clock.
    #[inline]
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.origin)
    }

    /// Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds recorded histogram samples into their buckets; run it every few
    /// seconds so memory stays flat when nobody scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
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

    pub fn count_unrouted(&self) {
        self.unrouted.increment(1);
    }

    /// Resolves every handle of one version.
    pub fn version_stats(&self, service: &str, version: &str, window: Duration) -> VersionStats {
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
        VersionStats {
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|class| counter(r, "veer_requests_total", with("code", class))),
            failures: [
                FailureReason::Connect,
                FailureReason::Timeout,
                FailureReason::Reset,
                FailureReason::Protocol,
                FailureReason::Tls,
            ]
            .map(|reason| {
                counter(
                    r,
                    "veer_upstream_failures_total",
                    with("reason", reason.as_str()),
                )
            }),
            duration: r.register_histogram(
                &Key::from_parts("veer_request_duration_seconds", labels()),
                &metadata(),
            ),
            full_duration: r.register_histogram(
                &Key::from_parts("veer_response_duration_seconds", labels()),
                &metadata(),
            ),
            weight: r.register_gauge(
                &Key::from_parts("veer_version_weight", labels()),
                &metadata(),
            ),
            window: Window::new(window),
            evictions: tokio::sync::Notify::new(),
        }
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

/// The handles and window of one version of one service.
pub struct VersionStats {
    requests: [Counter; 5],
    failures: [Counter; 5],
    duration: Histogram,
    full_duration: Histogram,
    weight: Gauge,
    window: Window,
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
    #[inline]
    pub fn record(&self, elapsed: Duration, outcome: &Outcome) {
        let class = usize::from(outcome.status.as_u16() / 100).clamp(1, 5) - 1;
        self.requests[class].increment(1);
        if let Some(reason) = outcome.failure {
            self.failures[reason as usize].increment(1);
        }
        self.duration.record(outcome.latency.as_secs_f64());
        self.window
            .record(elapsed, outcome.latency, outcome.is_error());
    }

    /// Records how long the whole response took, to the end of its body.
    #[inline]
    pub fn record_full_duration(&self, duration: Duration) {
        self.full_duration.record(duration.as_secs_f64());
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
    ) -> Arc<VersionStats> {
        let key = (
            service.to_string(),
            version.to_string(),
            revision.to_string(),
        );
        if let Some(existing) = self.stats.get(&key) {
            if existing.window.capacity() >= window {
                return Arc::clone(existing);
            }
        }
        let fresh = Arc::new(telemetry.version_stats(service, version, window));
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

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

fn counter(recorder: &PrometheusRecorder, name: &'static str, labels: Vec<Label>) -> Counter {
    recorder.register_counter(&Key::from_parts(name, labels), &metadata())
}

fn describe(recorder: &PrometheusRecorder) {
    use metrics::Unit;
    let d = |name: &'static str, unit: Option<Unit>, text: &'static str, kind: u8| {
        let name = metrics::KeyName::from_const_str(name);
        let text = metrics::SharedString::const_str(text);
        match kind {
            0 => recorder.describe_counter(name, unit, text),
            1 => recorder.describe_gauge(name, unit, text),
            _ => recorder.describe_histogram(name, unit, text),
        }
    };
    d(
        "veer_requests_total",
        None,
        "Requests served per version, by status class of the answer.",
        0,
    );
    d(
        "veer_upstream_failures_total",
        None,
        "Failed upstream attempts per version, by reason.",
        0,
    );
    d(
        "veer_config_reloads_total",
        None,
        "Config reloads, by result.",
        0,
    );
    d(
        "veer_rollout_step",
        None,
        "The rollout's current step, 1-based (0: no rollout).",
        1,
    );
    d(
        "veer_endpoint_healthy",
        None,
        "1 when the endpoint may take requests (probes pass, not ejected).",
        1,
    );
    d(
        "veer_version_unavailable_total",
        None,
        "Times a version was left with no endpoint in service (its share went to the baseline).",
        0,
    );
    d(
        "veer_endpoint_ejections_total",
        None,
        "Passive ejections of endpoints that failed on real traffic.",
        0,
    );
    d(
        "veer_guard_trips_total",
        None,
        "Versions the guard (or an operator) rolled back, by reason.",
        0,
    );
    d(
        "veer_tls_handshake_failures_total",
        None,
        "Client TLS handshakes that failed, per listener and reason.",
        0,
    );
    d(
        "veer_unrouted_requests_total",
        None,
        "Requests that matched no service (answered 404).",
        0,
    );
    d(
        "veer_version_weight",
        None,
        "The weight in force for each version.",
        1,
    );
    d(
        "veer_request_duration_seconds",
        Some(Unit::Seconds),
        "From a request's arrival to the upstream's response head.",
        2,
    );
    d(
        "veer_response_duration_seconds",
        Some(Unit::Seconds),
        "From a request's arrival to the end of the response body.",
        2,
    );
}
