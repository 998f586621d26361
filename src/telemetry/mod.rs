//! Per-version measurement, in two forms: cumulative Prometheus metrics and
//! a sliding window held in-process for the guard and `/status`. Both live
//! in veer's own atomics: one registry (`registry`) holds every series and
//! writes all of `/metrics`' per-version text, and one bucket layout
//! (`buckets`) serves the exported histograms and the windows alike. (The
//! `metrics` exporter veer used before cost a vtable call per counter and
//! buffered every histogram sample with a clock read; see `benches/`.)
//!
//! Every series is resolved when a snapshot is built, never per request:
//! recording an outcome is one bucket search and a few relaxed atomic adds,
//! with no label formatting or map lookup. The registry is owned by one
//! `Telemetry` (nothing global) so that several proxies in one process —
//! the tests — keep separate figures. Series of versions and endpoints that
//! leave the config leave `/metrics` on the publish that removes them
//! (`Telemetry::retain`).
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
pub mod activity;
pub mod buckets;
mod exposition;
pub mod methods;
pub mod operator;
mod process;
pub mod registry;
pub mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use crate::grpc;
use crate::outcome::FailureReason;
use buckets::Bucket;
use methods::MethodTable;
pub use registry::{Counter, Gauge, Present, Registry, Shown, VersionSeries};
pub use window::{Counts, ErrorCounts, ErrorKind, Figures, Window, ERROR_KINDS};

/// The longest window kept when no guard asks for more.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);

/// The metrics of one proxy: the registry of every series, the clock the
/// windows count seconds on, and the operator's figures.
pub struct Telemetry {
    registry: Registry,
    origin: Instant,
    operator: operator::Operator,
    /// `telemetry.idle_series_after` in seconds; 0: off.
    idle_after: AtomicU64,
    /// The `le` bounds exported, bit `i` for `BOUNDS[i]`.
    buckets: AtomicU32,
    /// Which versions had requests lately (read by the guard).
    activity: Arc<activity::Activity>,
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

    /// Why this is the version's error, as the windows count it; `None`
    /// exactly when [`Outcome::is_error`] is false.
    #[inline]
    pub fn error_kind(&self) -> Option<ErrorKind> {
        if let Some(reason) = self.failure {
            return Some(ErrorKind::Failure(reason));
        }
        match self.grpc {
            Some(call) => call.error.then_some(ErrorKind::Grpc),
            None => self
                .status
                .is_server_error()
                .then_some(ErrorKind::Status5xx),
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
        Telemetry {
            registry: Registry::default(),
            origin: Instant::now(),
            operator: operator::Operator::new(),
            idle_after: AtomicU64::new(0),
            buckets: AtomicU32::new(u32::MAX),
            activity: Arc::default(),
        }
    }

    /// Which versions had requests lately: for the guard, the one reader.
    pub fn activity(&self) -> &activity::Activity {
        &self.activity
    }

    /// Takes the config's `telemetry` block (at every publish: it may have
    /// changed with a reload).
    pub fn configure(&self, settings: &crate::config::Telemetry) {
        let idle = settings.idle_series_after.map_or(0, |d| d.as_secs().max(1));
        self.idle_after.store(idle, Ordering::Relaxed);
        let buckets = settings.buckets.as_ref().map_or(u32::MAX, |picked| {
            buckets::BOUNDS
                .iter()
                .enumerate()
                .filter(|(_, bound)| picked.contains(bound))
                .fold(0, |mask, (i, _)| mask | (1 << i))
        });
        self.buckets.store(buckets, Ordering::Relaxed);
    }

    /// What a scrape now shows (see `Shown`).
    pub fn shown(&self) -> Shown {
        let idle = self.idle_after.load(Ordering::Relaxed);
        let now = self.elapsed(Instant::now()).as_secs() + 1;
        Shown {
            idle_from: (idle > 0).then(|| now.saturating_sub(idle + 1)),
            buckets: self.buckets.load(Ordering::Relaxed),
        }
    }

    /// Whether a scrape showing `shown` includes this version.
    pub fn is_shown(&self, stats: &VersionStats, shown: &Shown) -> bool {
        stats.series.shown(shown)
    }

    /// The operator's gauges: process, listeners, certificates (see `operator`).
    pub fn operator(&self) -> &operator::Operator {
        &self.operator
    }

    /// Time since this telemetry began: the windows' clock.
    #[inline]
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.origin)
    }

    /// Prometheus text exposition of everything: the registry's series,
    /// then the operator's figures.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = self.render_into(&mut text, &self.shown());
        text
    }

    /// As `render`, into any writer (a scrape streams it in pieces), showing
    /// what `shown` picks.
    pub fn render_into<W: std::fmt::Write>(&self, out: &mut W, shown: &Shown) -> std::fmt::Result {
        self.registry.render_into(out, shown)?;
        // A few lines: built whole, then written.
        let mut operator = String::new();
        self.operator.render_into(&mut operator);
        out.write_str(&operator)
    }

    /// Drops the series of every version, endpoint and service that is not
    /// in `present` (what the snapshot just published holds), and declares
    /// at 0 the rare counters of those that are. Call it after each publish.
    pub fn retain<'a>(&self, present: impl IntoIterator<Item = Present<'a>>) {
        self.registry.retain(present);
    }

    /// [`Telemetry::retain`] for a publish that rebuilt only some services
    /// (see [`Registry::retain_changed`]).
    pub fn retain_changed(
        &self,
        present: &[Present<'_>],
        gone: &[(&str, &str)],
        gone_services: &[&str],
    ) {
        self.registry.retain_changed(present, gone, gone_services);
    }

    /// Drops the series of listeners (and their certificates) that are no
    /// longer configured.
    pub fn retain_listeners(&self, configured: &[&str]) {
        self.registry.retain_listeners(configured);
        self.operator.retain_listeners(configured);
    }

    pub fn count_reload(&self, success: bool) {
        self.registry.reloads(success).increment(1);
    }

    /// Counts a guard trip (cold path). A version no longer configured is
    /// not counted: its series are gone.
    pub fn count_trip(&self, service: &str, version: &str, reason: &str) {
        if let Some(series) = self.registry.existing(service, version) {
            series.count_trip(reason);
        }
    }

    /// `veer_version_unavailable_total`: a version lost its last endpoint in
    /// service (its share went to the baseline, if there is one). Cold path.
    pub fn count_share_moved(&self, service: &str, version: &str) {
        if let Some(series) = self.registry.existing(service, version) {
            series.count_unavailable();
        }
    }

    /// Sets `veer_rollout_step` (1-based; 0 without a rollout). Cold path.
    pub fn set_rollout_step(&self, service: &str, step: u32) {
        self.registry.rollout_step(service).set(f64::from(step));
    }

    /// `veer_endpoint_ejections_total` (cold path).
    pub fn count_ejection(
        &self,
        service: &str,
        version: &str,
        endpoint: std::net::SocketAddr,
        reason: &str,
    ) {
        if let Some(series) = self.registry.existing(service, version) {
            series.count_ejection(endpoint, reason);
        }
    }

    /// The counter of one reason of `veer_tls_handshake_failures_total` for
    /// one listener (cold path: resolved when the listener's TLS is set up).
    pub fn tls_handshake_failure_counter(&self, listener: &str, reason: &'static str) -> Counter {
        self.registry.tls_handshake_failures(listener, reason)
    }

    /// `veer_access_log_dropped_total`: lines the access log's writer could
    /// not keep up with.
    pub fn access_log_dropped_counter(&self) -> Counter {
        self.registry.access_log_dropped()
    }

    /// `veer_dns_resolutions_total` of one name: its counters for
    /// `success`, `empty` and `failure`, in that order (cold path).
    pub fn dns_resolutions(&self, name: &str) -> [Counter; 3] {
        self.registry.dns_resolutions(name)
    }

    /// Drops the lookup counters of names no longer configured.
    pub fn retain_dns(&self, names: &[&str]) {
        self.registry.retain_dns(names);
    }

    pub fn count_unrouted(&self) {
        self.registry.unrouted().increment(1);
    }

    /// Resolves every series of one version. Its series are shared with
    /// any other revision of the same version; its windows are its own.
    pub fn version_stats(
        &self,
        service: &str,
        version: &str,
        window: Duration,
        max_methods: usize,
    ) -> VersionStats {
        VersionStats {
            series: self.registry.version(service, version),
            window: Window::new(window),
            methods: MethodTable::new(max_methods, window),
            evictions: tokio::sync::Notify::new(),
            quiet_seen: AtomicU64::new(u64::MAX),
            id: self.activity.id(),
            activity: Arc::clone(&self.activity),
        }
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

/// The series and windows of one revision of one version of one service.
pub struct VersionStats {
    series: Arc<VersionSeries>,
    window: Window,
    /// Per-method windows of gRPC calls, bounded.
    methods: MethodTable,
    /// Wakes the long-lived connections (upgraded tunnels) of this version
    /// when it is reverted with `on_revert: evict`. It lives here because
    /// this is the one per-(version, revision) object that outlasts
    /// snapshots.
    evictions: tokio::sync::Notify,
    /// The `last_request` tag of the quiet stretch the guard last looked at
    /// (`u64::MAX`: none), so it looks once per stretch, not every tick.
    quiet_seen: AtomicU64,
    /// This version's id on `activity`, unique in the process.
    id: u64,
    activity: Arc<activity::Activity>,
}

impl VersionStats {
    /// This version's id on [`Telemetry::activity`].
    pub fn activity_id(&self) -> u64 {
        self.id
    }

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
        let series = &*self.series;
        if series.touch(elapsed.as_secs() + 1) {
            self.activity.note(self.id);
        }
        series.count_status(outcome.status);
        if let Some(reason) = outcome.failure {
            series.count_failure(reason);
        }
        if let Some(fault) = outcome.client {
            series.count_client_fault(fault);
        }
        // One bucket search serves the histogram and the window.
        let bucket = Bucket::of(outcome.latency);
        series.record_durations(bucket, outcome.latency, outcome.total);
        let kind = outcome.error_kind();
        let error = kind.is_some();
        self.window.record_kind(elapsed, bucket, kind);
        if let Some(call) = outcome.grpc {
            series.count_grpc(call.status);
            self.methods
                .stats(call.method)
                .window()
                .record_in(elapsed, bucket, error);
        }
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
        self.series.count_client_fault(ClientFault::Disconnect);
    }

    pub fn set_weight(&self, weight: u32) {
        self.series.set_weight(weight);
    }

    /// `veer_endpoint_healthy` of one of this version's endpoints (cold:
    /// set when a snapshot is built).
    pub fn endpoint_healthy(&self, endpoint: std::net::SocketAddr) -> Gauge {
        self.series.endpoint_healthy(endpoint)
    }

    pub fn window(&self) -> &Window {
        &self.window
    }

    /// Whether no request was recorded over the last `window` (counting the
    /// second in progress): its figures are all zeros. Two atomic loads, no
    /// walk over the window's slots, so a reader of thousands of quiet
    /// versions pays next to nothing for each.
    #[inline]
    pub fn quiet_over(&self, elapsed: Duration, window: Duration) -> bool {
        let last = self.series.last_request();
        let oldest = elapsed
            .as_secs()
            .saturating_sub(window.as_secs().max(1) - 1);
        last == 0 || last - 1 < oldest
    }

    /// For the one reader that judges quiet versions (the guard): whether
    /// this quiet stretch is new to it (`true` once per stretch; a request
    /// ends the stretch). Without it, a quiet version's verdict, the same
    /// every time, would be recomputed and re-sent every interval.
    pub fn first_look_at_quiet(&self) -> bool {
        let last = self.series.last_request();
        self.quiet_seen.swap(last, Ordering::Relaxed) != last
    }

    /// Whether [`VersionStats::first_look_at_quiet`] would answer `true`,
    /// without noting the look.
    pub fn quiet_is_new(&self) -> bool {
        self.quiet_seen.load(Ordering::Relaxed) != self.series.last_request()
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
    /// By [`stats_key`]: one allocation per version, not three strings.
    stats: HashMap<Box<str>, Arc<VersionStats>>,
}

/// Service, version and revision in one string, each name led by its length
/// so that no two triples give the same key.
fn stats_key(service: &str, version: &str, revision: &str) -> String {
    use std::fmt::Write as _;
    let mut key = String::with_capacity(service.len() + version.len() + revision.len() + 8);
    let _ = write!(
        key,
        "{}:{service}{}:{version}{revision}",
        service.len(),
        version.len()
    );
    key
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
        let key = stats_key(service, version, revision);
        if let Some(existing) = self.stats.get(key.as_str()) {
            // A version that left the config and came back starts afresh:
            // its old series are no longer exported.
            if existing.window.capacity() >= window
                && existing.methods.cap() == max_methods
                && !existing.series.is_retired()
            {
                return Arc::clone(existing);
            }
        }
        let fresh = Arc::new(telemetry.version_stats(service, version, window, max_methods));
        self.stats.insert(key.into_boxed_str(), Arc::clone(&fresh));
        fresh
    }

    /// Forgets stats that no snapshot uses any more.
    pub fn retain_used(&mut self) {
        self.stats.retain(|_, s| Arc::strong_count(s) > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_keys_do_not_run_into_each_other() {
        assert_ne!(stats_key("a", "bc", ""), stats_key("ab", "c", ""));
        assert_ne!(stats_key("a", "b", "c"), stats_key("a", "bc", ""));
        assert_eq!(stats_key("svc", "stable", "1.0"), "3:svc6:stable1.0");
    }

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
    fn an_error_is_counted_by_the_most_specific_reason_and_a_success_by_none() {
        let at = |status: u16, failure, grpc| Outcome {
            status: StatusCode::from_u16(status).expect("status"),
            failure,
            grpc,
            ..ok(Duration::from_millis(1))
        };
        let grpc = |error| {
            Some(grpc::Ended {
                status: Some(grpc::Code::Unavailable),
                error,
                method: 0,
            })
        };
        let cases = [
            (at(200, None, None), None),
            (at(404, None, None), None),
            (at(503, None, None), Some(ErrorKind::Status5xx)),
            (
                at(504, Some(FailureReason::Timeout), None),
                Some(ErrorKind::Failure(FailureReason::Timeout)),
            ),
            (
                at(200, Some(FailureReason::Midstream), None),
                Some(ErrorKind::Failure(FailureReason::Midstream)),
            ),
            (at(200, None, grpc(true)), Some(ErrorKind::Grpc)),
            (at(200, None, grpc(false)), None),
            // A gRPC call's own status decides, not the HTTP one.
            (at(503, None, grpc(false)), None),
        ];
        for (outcome, kind) in cases {
            assert_eq!(outcome.error_kind(), kind, "{outcome:?}");
            assert_eq!(outcome.is_error(), kind.is_some(), "{outcome:?}");
        }
        // Recorded, the window counts them by kind.
        let telemetry = Telemetry::new();
        let stats = StatsRegistry::default().stats(
            &telemetry,
            "web",
            "canary",
            "1",
            Duration::from_secs(10),
            0,
        );
        let now = Duration::from_secs(1);
        stats.record(now, &at(503, None, None));
        stats.record(now, &at(502, Some(FailureReason::Connect), None));
        stats.record(now, &at(200, None, None));
        let counts = stats.window().counts(now, Duration::from_secs(10));
        assert_eq!(counts.errors, 2);
        assert_eq!(counts.kinds.named(), vec![("connect", 1), ("5xx", 1)]);
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
        for name in [
            registry::REQUEST_DURATION.name,
            registry::RESPONSE_DURATION.name,
        ] {
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
            .filter(|s| s.metric == registry::REQUEST_DURATION.name)
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
        // The counters are shared across revisions too.
        assert!(
            text.contains(
                "veer_requests_total{service=\"web\",version=\"stable\",code=\"200\"} 2\n"
            ),
            "{text}"
        );
    }
}
