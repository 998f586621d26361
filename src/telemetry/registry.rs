//! veer's one metrics registry: every per-version, per-endpoint and
//! proxy-wide series lives in veer's own structs as plain atomics, and one
//! renderer (`render_into`) writes them all as Prometheus text.
//!
//! Per version there is one `VersionSeries` holding every series that
//! carries its `service` and `version` labels, endpoints included, so the
//! request path reaches all of them through one pointer resolved when the
//! snapshot was built, and removing a version from the config removes all of
//! its series at once (`retain`). Series that most versions never see (rare
//! statuses, gRPC codes) are allocated on first use.
//!
//! The maps are behind a mutex taken only off the request path: snapshot
//! building, cold counts (trips, ejections), `retain` and scrapes. A scrape
//! copies the list of `Arc`s under it and writes the text after letting go.
//! May depend on nothing in veer but `telemetry`, `upstream::error` (failure
//! reasons) and `grpc` (status names).

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use http::StatusCode;

use super::buckets::{Bucket, LatencyBuckets};
use super::exposition::{Family, FamilyWriter, Kind};
use super::ClientFault;
use crate::grpc;
use crate::outcome::FailureReason;

/// A counter handle: cloning it shares the series.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    #[inline]
    pub fn increment(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge handle (an `f64` in an atomic's bits): cloning it shares the
/// series.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Statuses whose `veer_requests_total` series every version exports from
/// the start; any other status gets its series the first time it is seen.
pub const COMMON_STATUSES: [u16; 14] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 500, 502, 503, 504,
];

/// `veer_requests_total` can count every status from 100 to 999.
const STATUS_SLOTS: usize = 900;

/// Per status (`status - 100`), its slot in `COMMON_STATUSES`, or `NONE`.
const COMMON_SLOT: [u8; STATUS_SLOTS] = {
    let mut slots = [NONE; STATUS_SLOTS];
    let mut i = 0;
    while i < COMMON_STATUSES.len() {
        slots[(COMMON_STATUSES[i] - 100) as usize] = i as u8;
        i += 1;
    }
    slots
};
const NONE: u8 = u8::MAX;

const FAILURE_REASONS: [FailureReason; 6] = FailureReason::ALL;

const CLIENT_FAULTS: [ClientFault; 3] = [
    ClientFault::Malformed,
    ClientFault::Upload,
    ClientFault::Disconnect,
];

/// Every reason a trip can carry (`guard::verdict::Reason::as_str`).
pub const TRIP_REASONS: [&str; 5] = [
    "error_rate",
    "latency",
    "error_rate_increase",
    "latency_ratio",
    "manual",
];

/// Every reason an endpoint is ejected for: a failed attempt's, or `5xx`
/// with `outlier_detection.count_5xx`.
pub const EJECTION_REASONS: [&str; 7] = [
    "connect",
    "timeout",
    "reset",
    "protocol",
    "tls",
    "midstream",
    "5xx",
];

/// One configured version as `retain` needs to know it.
#[derive(Debug, Clone)]
pub struct Present<'a> {
    pub service: &'a str,
    pub version: &'a str,
    /// The guard judges it (guarded, not the baseline): its trip counters
    /// are exported at 0 before the first trip.
    pub judged: bool,
    /// Outlier detection may eject its endpoints: their ejection counters
    /// are exported at 0 before the first ejection.
    pub ejects: bool,
    /// Whether its service has a rollout block.
    pub rollout: bool,
    pub endpoints: Vec<SocketAddr>,
}

/// Every series of one version of one service.
pub struct VersionSeries {
    /// Its requests' counters, made by the first one that counts: a
    /// version that never sees a request (one of thousands) holds none. A
    /// scrape reads zeros meanwhile.
    counts: OnceLock<Box<Counts>>,
    /// The other statuses, by `status - 100`, allocated on first use.
    rare_requests: OnceLock<Box<[AtomicU64]>>,
    /// `veer_request_duration_seconds` and `veer_response_duration_seconds`,
    /// made by the first request: most of a version's weight, which a
    /// version that never sees a request (one of thousands) does not hold.
    /// A scrape reads zeros meanwhile.
    durations: OnceLock<Box<Durations>>,
    /// `veer_grpc_responses_total` by `grpc::outcome_index`, allocated on
    /// first use so a version that serves no gRPC exports none.
    grpc_codes: OnceLock<Box<[AtomicU64]>>,
    weight: Gauge,
    unavailable: AtomicU64,
    trips: [AtomicU64; TRIP_REASONS.len()],
    other_trips: Mutex<BTreeMap<String, u64>>,
    judged: AtomicBool,
    ejects: AtomicBool,
    endpoints: Mutex<EndpointMap>,
    /// The second (since the telemetry clock's origin) of its last request,
    /// plus one; zero for none yet. `/metrics` leaves out a version idle for
    /// longer than `telemetry.idle_series_after`.
    last_request: AtomicU64,
    /// Set when the version left the config: whoever still holds this
    /// (a request in flight, a snapshot being dropped) counts into series
    /// no scrape shows, and a version that comes back gets fresh ones.
    retired: AtomicBool,
}

/// A version's request counters (see `VersionSeries::counts`).
struct Counts {
    /// `veer_requests_total` of the common statuses, by `COMMON_SLOT`.
    requests: [AtomicU64; COMMON_STATUSES.len()],
    client_aborts: [AtomicU64; CLIENT_FAULTS.len()],
    failures: [AtomicU64; FAILURE_REASONS.len()],
}

impl Counts {
    const fn zero() -> Counts {
        Counts {
            requests: [const { AtomicU64::new(0) }; COMMON_STATUSES.len()],
            client_aborts: [const { AtomicU64::new(0) }; CLIENT_FAULTS.len()],
            failures: [const { AtomicU64::new(0) }; FAILURE_REASONS.len()],
        }
    }
}

/// What a scrape reads for a version that has counted nothing yet.
static NO_COUNTS: Counts = Counts::zero();

/// A version's two latency histograms (see `VersionSeries::durations`).
#[derive(Default)]
struct Durations {
    /// To the response head.
    head: LatencyBuckets,
    /// To the end of the response body.
    end: LatencyBuckets,
}

/// A version's endpoints' series by address, in address order: a sorted
/// vector, not a `BTreeMap`, whose first node alone (room for eleven
/// addresses) outweighs the two or three endpoints a version has, times
/// thousands of versions.
#[derive(Default)]
struct EndpointMap(Vec<(SocketAddr, Arc<EndpointSeries>)>);

impl EndpointMap {
    fn entry(&mut self, addr: SocketAddr) -> &Arc<EndpointSeries> {
        let at = match self.0.binary_search_by_key(&addr, |(a, _)| *a) {
            Ok(at) => at,
            Err(at) => {
                // Grown one at a time while small, not doubled: a version
                // has a few endpoints, and thousands of versions keep a map.
                if self.0.len() < 8 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(at, (addr, Arc::default()));
                at
            }
        };
        &self.0[at].1
    }

    fn contains_key(&self, addr: &SocketAddr) -> bool {
        self.0.binary_search_by_key(addr, |(a, _)| *a).is_ok()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn retain(&mut self, mut keep: impl FnMut(&SocketAddr) -> bool) {
        self.0.retain(|(addr, _)| keep(addr));
    }

    fn iter(&self) -> impl Iterator<Item = (&SocketAddr, &Arc<EndpointSeries>)> {
        self.0.iter().map(|(addr, series)| (addr, series))
    }
}

#[derive(Default)]
struct EndpointSeries {
    healthy: Gauge,
    /// Made by its first ejection: most endpoints are never ejected, and
    /// tens of thousands of them each held the counters inline.
    ejections: OnceLock<Box<Ejections>>,
}

#[derive(Default)]
struct Ejections {
    counts: [AtomicU64; EJECTION_REASONS.len()],
    other: Mutex<BTreeMap<String, u64>>,
}

impl Default for VersionSeries {
    fn default() -> Self {
        VersionSeries {
            counts: OnceLock::new(),
            rare_requests: OnceLock::new(),
            durations: OnceLock::new(),
            grpc_codes: OnceLock::new(),
            weight: Gauge::default(),
            unavailable: AtomicU64::new(0),
            trips: Default::default(),
            other_trips: Mutex::new(BTreeMap::new()),
            judged: AtomicBool::new(false),
            ejects: AtomicBool::new(false),
            endpoints: Mutex::new(EndpointMap::default()),
            last_request: AtomicU64::new(0),
            retired: AtomicBool::new(false),
        }
    }
}

impl VersionSeries {
    /// Takes what a snapshot says of this version: whether it is judged,
    /// whether it ejects, and which endpoints it has.
    fn follow(&self, p: &Present<'_>) {
        self.judged.store(p.judged, Ordering::Relaxed);
        self.ejects.store(p.ejects, Ordering::Relaxed);
        let mut endpoints = lock(&self.endpoints);
        if endpoints.len() != p.endpoints.len()
            || !p.endpoints.iter().all(|a| endpoints.contains_key(a))
        {
            endpoints.retain(|addr| p.endpoints.contains(addr));
            for addr in &p.endpoints {
                endpoints.entry(*addr);
            }
        }
    }

    #[inline]
    pub fn count_status(&self, status: StatusCode) {
        let index = usize::from(status.as_u16().saturating_sub(100)).min(STATUS_SLOTS - 1);
        match COMMON_SLOT[index] {
            NONE => self.count_rare_status(index),
            slot => {
                self.counting().requests[usize::from(slot)].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    #[cold]
    fn count_rare_status(&self, index: usize) {
        self.rare_requests.get_or_init(|| zeros(STATUS_SLOTS))[index]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Records both durations of one request: to the head (already mapped
    /// to its bucket, which the window takes too) and to the end.
    #[inline]
    pub fn record_durations(&self, head: Bucket, latency: Duration, total: Duration) {
        let durations = self.durations.get_or_init(Box::default);
        durations.head.record_in(head, latency);
        durations.end.record(total);
    }

    #[inline]
    pub fn count_failure(&self, reason: FailureReason) {
        self.counting().failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn count_client_fault(&self, fault: ClientFault) {
        self.counting().client_aborts[fault as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Its counters, made now if this is the first count.
    #[inline]
    fn counting(&self) -> &Counts {
        self.counts.get_or_init(|| Box::new(Counts::zero()))
    }

    /// Its counters as they are (zeros before the first count).
    fn counted(&self) -> &Counts {
        self.counts.get().map_or(&NO_COUNTS, |counts| counts)
    }

    #[inline]
    pub fn count_grpc(&self, status: grpc::Status) {
        self.grpc_codes.get_or_init(|| zeros(grpc::OUTCOMES))[grpc::outcome_index(status)]
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_weight(&self, weight: u32) {
        self.weight.set(f64::from(weight));
    }

    pub fn count_unavailable(&self) {
        self.unavailable.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_trip(&self, reason: &str) {
        match TRIP_REASONS.iter().position(|r| *r == reason) {
            Some(i) => {
                self.trips[i].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                *lock(&self.other_trips)
                    .entry(reason.to_string())
                    .or_default() += 1
            }
        }
    }

    fn endpoint(&self, addr: SocketAddr) -> Arc<EndpointSeries> {
        Arc::clone(lock(&self.endpoints).entry(addr))
    }

    /// The gauge `veer_endpoint_healthy` of one of its endpoints.
    pub fn endpoint_healthy(&self, addr: SocketAddr) -> Gauge {
        self.endpoint(addr).healthy.clone()
    }

    pub fn count_ejection(&self, addr: SocketAddr, reason: &str) {
        let endpoint = self.endpoint(addr);
        let ejections = endpoint.ejections.get_or_init(Box::default);
        match EJECTION_REASONS.iter().position(|r| *r == reason) {
            Some(i) => {
                ejections.counts[i].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                *lock(&ejections.other)
                    .entry(reason.to_string())
                    .or_default() += 1
            }
        }
    }

    /// Notes a request in second `tag - 1` (see `last_request`); written
    /// only when the second changed, so a busy version's line stays shared.
    /// Whether it changed: the version's first request of this second.
    #[inline]
    pub fn touch(&self, tag: u64) -> bool {
        if self.last_request.load(Ordering::Relaxed) != tag {
            self.last_request.store(tag, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// The second of the last request plus one; zero for none yet.
    #[inline]
    pub fn last_request(&self) -> u64 {
        self.last_request.load(Ordering::Relaxed)
    }

    /// Whether `/metrics` shows this version: it had a request at or after
    /// second `since` (`Shown`).
    pub fn shown(&self, shown: &Shown) -> bool {
        shown
            .idle_from
            .is_none_or(|from| self.last_request.load(Ordering::Relaxed) > from)
    }

    /// Whether the version left the config (see `retired`).
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }
}

enum Either<A, B> {
    Common(A),
    All(B),
}

impl<A: Iterator<Item = usize>, B: Iterator<Item = usize>> Iterator for Either<A, B> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Either::Common(a) => a.next(),
            Either::All(b) => b.next(),
        }
    }
}

/// A status's three digits (100..=999), without formatting.
fn status_digits(code: usize) -> [u8; 3] {
    let digit = |n: usize| b'0' + (n % 10) as u8;
    [digit(code / 100), digit(code / 10), digit(code)]
}

fn zeros(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

/// What one scrape shows: the versions with a request in the last
/// `idle_series_after`, and the `le` bounds picked.
#[derive(Debug, Clone, Copy)]
pub struct Shown {
    /// A version whose `last_request` is at or below this is left out (one
    /// never requested too); `None`: every version is shown.
    pub idle_from: Option<u64>,
    /// Bit `i` set: `BOUNDS[i]` is exported.
    pub buckets: u32,
}

impl Shown {
    /// Every version, every bound.
    pub const ALL: Shown = Shown {
        idle_from: None,
        buckets: u32::MAX,
    };
}

/// Every series of one proxy.
pub struct Registry {
    inner: Mutex<Inner>,
    reloads_success: Counter,
    reloads_failure: Counter,
    unrouted: Counter,
    access_log_dropped: OnceLock<Counter>,
}

#[derive(Default)]
struct Inner {
    versions: BTreeMap<(String, String), Arc<VersionSeries>>,
    rollout_steps: BTreeMap<String, Gauge>,
    tls_failures: BTreeMap<(String, &'static str), Counter>,
    /// `veer_dns_resolutions_total` by (name, result).
    dns: BTreeMap<(String, &'static str), Counter>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            inner: Mutex::new(Inner::default()),
            reloads_success: Counter::default(),
            reloads_failure: Counter::default(),
            unrouted: Counter::default(),
            access_log_dropped: OnceLock::new(),
        }
    }
}

impl Registry {
    /// The series of one version, created at zero if it has none (yet, or
    /// any more).
    pub fn version(&self, service: &str, version: &str) -> Arc<VersionSeries> {
        let mut inner = lock(&self.inner);
        let key = (service.to_string(), version.to_string());
        Arc::clone(inner.versions.entry(key).or_default())
    }

    /// The series of one version if it is configured: a cold count for a
    /// version a reload just removed goes nowhere rather than bringing its
    /// series back.
    pub fn existing(&self, service: &str, version: &str) -> Option<Arc<VersionSeries>> {
        let inner = lock(&self.inner);
        inner
            .versions
            .get(&(service.to_string(), version.to_string()))
            .cloned()
    }

    pub fn rollout_step(&self, service: &str) -> Gauge {
        let mut inner = lock(&self.inner);
        inner
            .rollout_steps
            .entry(service.to_string())
            .or_default()
            .clone()
    }

    pub fn tls_handshake_failures(&self, listener: &str, reason: &'static str) -> Counter {
        let mut inner = lock(&self.inner);
        inner
            .tls_failures
            .entry((listener.to_string(), reason))
            .or_default()
            .clone()
    }

    /// The counters of one name's lookups, by result (`DNS_RESULTS`), all
    /// declared at 0 (cold path: a name's refresh task resolves them once).
    pub fn dns_resolutions(&self, name: &str) -> [Counter; 3] {
        let mut inner = lock(&self.inner);
        DNS_RESULTS.map(|result| {
            inner
                .dns
                .entry((name.to_string(), result))
                .or_default()
                .clone()
        })
    }

    /// Drops the lookup counters of names no longer configured.
    pub fn retain_dns(&self, names: &[&str]) {
        lock(&self.inner)
            .dns
            .retain(|(name, _), _| names.contains(&name.as_str()));
    }

    pub fn reloads(&self, success: bool) -> &Counter {
        if success {
            &self.reloads_success
        } else {
            &self.reloads_failure
        }
    }

    pub fn unrouted(&self) -> &Counter {
        &self.unrouted
    }

    pub fn access_log_dropped(&self) -> Counter {
        self.access_log_dropped
            .get_or_init(Counter::default)
            .clone()
    }

    /// Keeps the series of the versions, endpoints and services in
    /// `present` and drops every other: a version a reload removed leaves
    /// `/metrics` with all its series, counters included, and starts from
    /// zero if it comes back (a counter reset, to Prometheus). Also declares
    /// at zero the rare counters of what is present.
    pub fn retain<'a>(&self, present: impl IntoIterator<Item = Present<'a>>) {
        let present: HashMap<(&str, &str), Present<'a>> = present
            .into_iter()
            .map(|p| ((p.service, p.version), p))
            .collect();
        let mut inner = lock(&self.inner);
        // Normally the snapshot's build created them all already: the keys
        // are made (two strings each) only when one is missing. This runs at
        // every publish, with thousands of versions.
        let keep = |versions: &mut BTreeMap<(String, String), Arc<VersionSeries>>| {
            let mut kept = 0;
            versions.retain(|(service, version), series| {
                let Some(p) = present.get(&(service.as_str(), version.as_str())) else {
                    series.retired.store(true, Ordering::Relaxed);
                    return false;
                };
                kept += 1;
                series.follow(p);
                true
            });
            kept
        };
        if keep(&mut inner.versions) < present.len() {
            for (service, version) in present.keys() {
                inner
                    .versions
                    .entry((service.to_string(), version.to_string()))
                    .or_default();
            }
            keep(&mut inner.versions);
        }
        // Every service exports its step: 0 without a rollout (also once the
        // rollout block is removed); the snapshot's writer sets the others.
        let services: std::collections::HashSet<&str> = present.keys().map(|(s, _)| *s).collect();
        inner
            .rollout_steps
            .retain(|service, _| services.contains(service.as_str()));
        for p in present.values().filter(|p| !p.rollout) {
            match inner.rollout_steps.get(p.service) {
                Some(step) => step.set(0.0),
                None => inner
                    .rollout_steps
                    .entry(p.service.to_string())
                    .or_default()
                    .set(0.0),
            }
        }
    }

    /// What [`Registry::retain`] does, for a publish that changed only some
    /// services: `present` holds every version of the services built anew
    /// (others keep their series as they are), `gone` the versions that
    /// left, `gone_services` the services that left. Costs what changed, not
    /// the number of services: a one-weight change at 10,000 services
    /// touches one service's series.
    pub fn retain_changed(
        &self,
        present: &[Present<'_>],
        gone: &[(&str, &str)],
        gone_services: &[&str],
    ) {
        let mut inner = lock(&self.inner);
        for (service, version) in gone {
            if let Some(series) = inner
                .versions
                .remove(&(service.to_string(), version.to_string()))
            {
                series.retired.store(true, Ordering::Relaxed);
            }
        }
        for service in gone_services {
            inner.rollout_steps.remove(*service);
        }
        for p in present {
            inner
                .versions
                .entry((p.service.to_string(), p.version.to_string()))
                .or_default()
                .follow(p);
            if !p.rollout {
                inner
                    .rollout_steps
                    .entry(p.service.to_string())
                    .or_default()
                    .set(0.0);
            }
        }
    }

    /// Drops the TLS handshake counters of listeners no longer configured.
    pub fn retain_listeners(&self, configured: &[&str]) {
        lock(&self.inner)
            .tls_failures
            .retain(|(listener, _), _| configured.contains(&listener.as_str()));
    }

    /// Writes every series `shown` picks as Prometheus text.
    pub fn render_into<W: Write>(&self, out: &mut W, shown: &Shown) -> fmt::Result {
        let dns = lock(&self.inner).dns.clone();
        let (versions, rollout_steps, tls_failures) = {
            let inner = lock(&self.inner);
            let versions = inner
                .versions
                .iter()
                .filter(|(_, v)| v.shown(shown))
                .map(|(k, v)| (k.clone(), Arc::clone(v)))
                .collect::<Vec<_>>();
            // A service's step goes with its versions.
            let rollout_steps: BTreeMap<String, Gauge> = if shown.idle_from.is_none() {
                inner.rollout_steps.clone()
            } else {
                let services: std::collections::HashSet<&str> =
                    versions.iter().map(|((s, _), _)| s.as_str()).collect();
                inner
                    .rollout_steps
                    .iter()
                    .filter(|(s, _)| services.contains(s.as_str()))
                    .map(|(s, g)| (s.clone(), g.clone()))
                    .collect()
            };
            (versions, rollout_steps, inner.tls_failures.clone())
        };

        let mut f = FamilyWriter::new(out, RELOADS);
        f.counter(&[("result", "success")], self.reloads_success.get())?;
        f.counter(&[("result", "failure")], self.reloads_failure.get())?;
        f.finish()?;

        let mut f = FamilyWriter::new(out, UNROUTED);
        f.counter(&[], self.unrouted.get())?;
        f.finish()?;

        if let Some(dropped) = self.access_log_dropped.get() {
            let mut f = FamilyWriter::new(out, ACCESS_LOG_DROPPED);
            f.counter(&[], dropped.get())?;
            f.finish()?;
        }

        let mut f = FamilyWriter::new(out, REQUESTS);
        for ((service, version), s) in &versions {
            let rare = s.rare_requests.get();
            // Without a rare status seen, only the common ones are walked.
            let indices = match rare {
                None => Either::Common(COMMON_STATUSES.iter().map(|c| usize::from(c - 100))),
                Some(_) => Either::All(0..STATUS_SLOTS),
            };
            for index in indices {
                let value = match (COMMON_SLOT[index], rare) {
                    (NONE, None) => continue,
                    (NONE, Some(rare)) => match rare[index].load(Ordering::Relaxed) {
                        0 => continue,
                        v => v,
                    },
                    (slot, _) => s.counted().requests[usize::from(slot)].load(Ordering::Relaxed),
                };
                let digits = status_digits(index + 100);
                let code = std::str::from_utf8(&digits).unwrap_or("other");
                let labels = [
                    ("service", &**service),
                    ("version", &**version),
                    ("code", code),
                ];
                f.counter(&labels, value)?;
            }
        }
        f.finish()?;

        let mut f = FamilyWriter::new(out, CLIENT_ABORTS);
        for ((service, version), s) in &versions {
            for (fault, count) in CLIENT_FAULTS.iter().zip(&s.counted().client_aborts) {
                let labels = [
                    ("service", &**service),
                    ("version", &**version),
                    ("reason", fault.as_str()),
                ];
                f.counter(&labels, count.load(Ordering::Relaxed))?;
            }
        }
        f.finish()?;

        let mut f = FamilyWriter::new(out, UPSTREAM_FAILURES);
        for ((service, version), s) in &versions {
            for (reason, count) in FAILURE_REASONS.iter().zip(&s.counted().failures) {
                let labels = [
                    ("service", &**service),
                    ("version", &**version),
                    ("reason", reason.as_str()),
                ];
                f.counter(&labels, count.load(Ordering::Relaxed))?;
            }
        }
        f.finish()?;

        let mut f = FamilyWriter::new(out, GRPC_RESPONSES);
        for ((service, version), s) in &versions {
            let Some(codes) = s.grpc_codes.get() else {
                continue;
            };
            for (index, count) in codes.iter().enumerate() {
                let value = count.load(Ordering::Relaxed);
                if value == 0 {
                    continue;
                }
                let status = grpc::Code::ALL.get(index).copied();
                let labels = [
                    ("service", &**service),
                    ("version", &**version),
                    ("grpc_code", grpc::outcome_name(status)),
                ];
                f.counter(&labels, value)?;
            }
        }
        f.finish()?;

        let mut f = FamilyWriter::new(out, VERSION_WEIGHT);
        for ((service, version), s) in &versions {
            let labels = [("service", &**service), ("version", &**version)];
            f.gauge(&labels, s.weight.get())?;
        }
        f.finish()?;

        let mut f = FamilyWriter::new(out, VERSION_UNAVAILABLE);
        for ((service, version), s) in &versions {
            let labels = [("service", &**service), ("version", &**version)];
            f.counter(&labels, s.unavailable.load(Ordering::Relaxed))?;
        }
        f.finish()?;

        let mut f = FamilyWriter::new(out, GUARD_TRIPS);
        for ((service, version), s) in &versions {
            let judged = s.judged.load(Ordering::Relaxed);
            for (reason, count) in TRIP_REASONS.iter().zip(&s.trips) {
                let value = count.load(Ordering::Relaxed);
                if judged || value > 0 {
                    let labels = [
                        ("service", &**service),
                        ("version", &**version),
                        ("reason", *reason),
                    ];
                    f.counter(&labels, value)?;
                }
            }
            for (reason, value) in lock(&s.other_trips).iter() {
                let labels = [
                    ("service", &**service),
                    ("version", &**version),
                    ("reason", reason.as_str()),
                ];
                f.counter(&labels, *value)?;
            }
        }
        f.finish()?;

        let endpoints: Vec<_> = versions
            .iter()
            .map(|(key, s)| {
                let list: Vec<_> = lock(&s.endpoints)
                    .iter()
                    .map(|(addr, e)| (addr.to_string(), Arc::clone(e)))
                    .collect();
                (key, s.ejects.load(Ordering::Relaxed), list)
            })
            .collect();

        let mut f = FamilyWriter::new(out, ENDPOINT_HEALTHY);
        for ((service, version), _, list) in &endpoints {
            for (addr, e) in list {
                let labels = [
                    ("service", &**service),
                    ("version", &**version),
                    ("endpoint", addr.as_str()),
                ];
                f.gauge(&labels, e.healthy.get())?;
            }
        }
        f.finish()?;

        let mut f = FamilyWriter::new(out, ENDPOINT_EJECTIONS);
        for ((service, version), ejects, list) in &endpoints {
            for (addr, e) in list {
                let labels = |reason| {
                    [
                        ("service", &**service),
                        ("version", &**version),
                        ("endpoint", addr.as_str()),
                        ("reason", reason),
                    ]
                };
                let ejections = e.ejections.get();
                for (i, reason) in EJECTION_REASONS.iter().enumerate() {
                    let value = ejections.map_or(0, |ej| ej.counts[i].load(Ordering::Relaxed));
                    if *ejects || value > 0 {
                        f.counter(&labels(reason), value)?;
                    }
                }
                if let Some(ejections) = ejections {
                    for (reason, value) in lock(&ejections.other).iter() {
                        f.counter(&labels(reason), *value)?;
                    }
                }
            }
        }
        f.finish()?;

        let mut f = FamilyWriter::new(out, ROLLOUT_STEP);
        for (service, step) in &rollout_steps {
            f.gauge(&[("service", service.as_str())], step.get())?;
        }
        f.finish()?;

        let mut f = FamilyWriter::new(out, TLS_HANDSHAKE_FAILURES);
        for ((listener, reason), count) in &tls_failures {
            f.counter(
                &[("listener", listener.as_str()), ("reason", reason)],
                count.get(),
            )?;
        }
        f.finish()?;

        if !dns.is_empty() {
            let mut f = FamilyWriter::new(out, DNS_RESOLUTIONS);
            for ((name, result), count) in &dns {
                f.counter(&[("name", name.as_str()), ("result", result)], count.get())?;
            }
            f.finish()?;
        }

        for (family, pick) in [
            (REQUEST_DURATION, Which::ToHead),
            (RESPONSE_DURATION, Which::ToEnd),
        ] {
            let mut f = FamilyWriter::new(out, family);
            for ((service, version), s) in &versions {
                let reading = match (s.durations.get(), pick) {
                    (Some(d), Which::ToHead) => d.head.read(),
                    (Some(d), Which::ToEnd) => d.end.read(),
                    (None, _) => LatencyBuckets::EMPTY_READING,
                };
                let labels = [("service", &**service), ("version", &**version)];
                f.histogram(&labels, &reading, shown.buckets)?;
            }
            f.finish()?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Which {
    ToHead,
    ToEnd,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every holder leaves the map whole: a panic elsewhere does not spoil it.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

const fn counter(name: &'static str, help: &'static str) -> Family<'static> {
    Family {
        name,
        kind: Kind::Counter,
        help,
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Family<'static> {
    Family {
        name,
        kind: Kind::Gauge,
        help,
    }
}

/// The results of a lookup of an endpoint's name.
pub const DNS_RESULTS: [&str; 3] = ["success", "empty", "failure"];
const DNS_RESOLUTIONS: Family<'static> = counter(
    "veer_dns_resolutions_total",
    "Lookups of endpoint names, by name and result (success, empty: no address, failure).",
);
const RELOADS: Family<'static> = counter("veer_config_reloads_total", "Config reloads, by result.");
const UNROUTED: Family<'static> = counter(
    "veer_unrouted_requests_total",
    "Requests that matched no service (answered 404).",
);
const ACCESS_LOG_DROPPED: Family<'static> = counter(
    "veer_access_log_dropped_total",
    "Access log lines dropped because the writer fell behind.",
);
const REQUESTS: Family<'static> = counter(
    "veer_requests_total",
    "Requests served per version, by the exact status of the answer, counted when the response stream ends.",
);
const CLIENT_ABORTS: Family<'static> = counter(
    "veer_client_aborts_total",
    "Requests the client broke or abandoned (malformed body, aborted upload, disconnect before the response ended); never a version's error.",
);
const UPSTREAM_FAILURES: Family<'static> = counter(
    "veer_upstream_failures_total",
    "Failed upstream attempts per version, by reason.",
);
const GRPC_RESPONSES: Family<'static> = counter(
    "veer_grpc_responses_total",
    "gRPC calls per version, by the grpc-status they ended with (NO_STATUS: none).",
);
const VERSION_WEIGHT: Family<'static> = gauge(
    "veer_version_weight",
    "The weight in force for each version.",
);
const VERSION_UNAVAILABLE: Family<'static> = counter(
    "veer_version_unavailable_total",
    "Times a version was left with no endpoint in service (its share went to the baseline).",
);
const GUARD_TRIPS: Family<'static> = counter(
    "veer_guard_trips_total",
    "Versions the guard (or an operator) rolled back, by reason.",
);
const ENDPOINT_HEALTHY: Family<'static> = gauge(
    "veer_endpoint_healthy",
    "1 when the endpoint may take requests (probes pass, not ejected).",
);
const ENDPOINT_EJECTIONS: Family<'static> = counter(
    "veer_endpoint_ejections_total",
    "Passive ejections of endpoints that failed on real traffic.",
);
const ROLLOUT_STEP: Family<'static> = gauge(
    "veer_rollout_step",
    "The rollout's current step, 1-based (0: no rollout).",
);
const TLS_HANDSHAKE_FAILURES: Family<'static> = counter(
    "veer_tls_handshake_failures_total",
    "Client TLS handshakes that failed, per listener and reason.",
);
pub(super) const REQUEST_DURATION: Family<'static> = Family {
    name: "veer_request_duration_seconds",
    kind: Kind::Histogram,
    help: "From a request's arrival to the upstream's response head.",
};
pub(super) const RESPONSE_DURATION: Family<'static> = Family {
    name: "veer_response_duration_seconds",
    kind: Kind::Histogram,
    help: "From a request's arrival to the end of the response stream (body and trailers, or its failure).",
};

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn an_idle_version_holds_no_counters_until_its_first_count() {
        let series = VersionSeries::default();
        assert!(series.counts.get().is_none());
        assert_eq!(series.counted().requests[0].load(Ordering::Relaxed), 0);
        series.count_status(StatusCode::OK);
        series.count_failure(FailureReason::ALL[0]);
        assert!(series.counts.get().is_some());
        let slot = usize::from(COMMON_SLOT[200 - 100]);
        assert_eq!(series.counted().requests[slot].load(Ordering::Relaxed), 1);
        assert_eq!(series.counted().failures[0].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_endpoint_map_holds_no_spare_room() {
        let mut map = EndpointMap::default();
        for port in [3, 1, 2] {
            map.entry(addr(port));
        }
        assert_eq!(map.0.capacity(), 3);
        assert!(map.0.windows(2).all(|w| w[0].0 < w[1].0));
    }

    fn present<'a>(service: &'a str, version: &'a str, endpoints: &[u16]) -> Present<'a> {
        Present {
            service,
            version,
            judged: true,
            ejects: true,
            rollout: false,
            endpoints: endpoints.iter().map(|&p| addr(p)).collect(),
        }
    }

    fn render(registry: &Registry) -> String {
        let mut text = String::new();
        registry
            .render_into(&mut text, &Shown::ALL)
            .expect("render");
        // Every rendering must parse, whatever it holds.
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .unwrap_or_else(|e| panic!("does not parse ({e}):\n{text}"));
        text
    }

    #[test]
    fn rare_statuses_appear_once_seen_in_code_order() {
        let registry = Registry::default();
        let series = registry.version("web", "stable");
        for code in [200, 299, 200, 599] {
            series.count_status(StatusCode::from_u16(code).expect("status"));
        }
        let text = render(&registry);
        let codes: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("veer_requests_total{"))
            .map(|l| {
                l.split("code=\"")
                    .nth(1)
                    .unwrap_or("")
                    .get(..3)
                    .unwrap_or("")
            })
            .collect();
        assert_eq!(
            codes,
            [
                "200", "201", "204", "299", "301", "302", "304", "400", "401", "403", "404", "500",
                "502", "503", "504", "599"
            ]
        );
        assert!(text
            .contains("veer_requests_total{service=\"web\",version=\"stable\",code=\"200\"} 2\n"));
        assert!(text
            .contains("veer_requests_total{service=\"web\",version=\"stable\",code=\"599\"} 1\n"));
        assert!(!text.contains("code=\"100\""), "{text}");
    }

    #[test]
    fn grpc_codes_appear_only_once_seen() {
        let registry = Registry::default();
        let series = registry.version("rpc", "v1");
        assert!(!render(&registry).contains("veer_grpc_responses_total"));
        series.count_grpc(Some(grpc::Code::Unavailable));
        series.count_grpc(None);
        let text = render(&registry);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("veer_grpc_responses_total{"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(text.contains("grpc_code=\"UNAVAILABLE\"} 1\n"), "{text}");
        assert!(text.contains("grpc_code=\"NO_STATUS\"} 1\n"), "{text}");
    }

    #[test]
    fn retain_drops_removed_versions_and_endpoints_and_a_return_starts_at_zero() {
        let registry = Registry::default();
        let stable = registry.version("web", "stable");
        let canary = registry.version("web", "canary");
        registry.retain([
            present("web", "stable", &[1, 2]),
            present("web", "canary", &[3]),
        ]);
        canary.count_status(StatusCode::OK);
        stable.count_status(StatusCode::OK);
        stable.count_ejection(addr(2), "connect");
        let text = render(&registry);
        assert!(text.contains("endpoint=\"127.0.0.1:2\",reason=\"connect\"} 1\n"));
        assert!(text.contains("version=\"canary\""));

        registry.retain([present("web", "stable", &[1])]);
        assert!(canary.is_retired() && !stable.is_retired());
        // A request in flight on the removed version counts where no one looks.
        canary.count_status(StatusCode::OK);
        let text = render(&registry);
        assert!(!text.contains("canary"), "{text}");
        assert!(!text.contains("127.0.0.1:2"), "{text}");
        assert!(text.contains("endpoint=\"127.0.0.1:1\""), "{text}");
        assert!(text
            .contains("veer_requests_total{service=\"web\",version=\"stable\",code=\"200\"} 1\n"));

        registry.retain([
            present("web", "stable", &[1]),
            present("web", "canary", &[3]),
        ]);
        let back = registry.version("web", "canary");
        assert!(!Arc::ptr_eq(&back, &canary));
        let text = render(&registry);
        assert!(
            text.contains(
                "veer_requests_total{service=\"web\",version=\"canary\",code=\"200\"} 0\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn retain_changed_updates_the_changed_services_and_leaves_the_others_alone() {
        let registry = Registry::default();
        registry.retain([
            present("web", "stable", &[1, 2]),
            present("web", "canary", &[3]),
            present("api", "stable", &[4]),
            present("old", "stable", &[5]),
        ]);
        let api = registry.version("api", "stable");
        api.count_status(StatusCode::OK);
        let old = registry.version("old", "stable");
        let canary = registry.version("web", "canary");

        // `web` rebuilt without its canary and one endpoint, `old` removed,
        // `new` added; `api` not named: kept as it was.
        let mut added = present("new", "stable", &[6]);
        added.rollout = true;
        registry.retain_changed(
            &[present("web", "stable", &[1]), added],
            &[("web", "canary"), ("old", "stable")],
            &["old"],
        );
        assert!(canary.is_retired() && old.is_retired() && !api.is_retired());
        let text = render(&registry);
        assert!(
            !text.contains("canary") && !text.contains("\"old\""),
            "{text}"
        );
        assert!(!text.contains("127.0.0.1:2\""), "{text}");
        assert!(text.contains("endpoint=\"127.0.0.1:6\""), "{text}");
        assert!(
            text.contains(
                "veer_requests_total{service=\"api\",version=\"stable\",code=\"200\"} 1\n"
            ),
            "{text}"
        );
        assert!(Arc::ptr_eq(&api, &registry.version("api", "stable")));
        // A service without a rollout exports step 0; the one with a rollout
        // gets its step from the snapshot's writer, not from here.
        assert!(
            text.contains("veer_rollout_step{service=\"web\"} 0\n"),
            "{text}"
        );
        assert!(
            !text.contains("veer_rollout_step{service=\"old\"}"),
            "{text}"
        );
        assert!(
            !text.contains("veer_rollout_step{service=\"new\"}"),
            "{text}"
        );
    }

    #[test]
    fn rare_counters_are_declared_only_where_they_can_count() {
        let registry = Registry::default();
        let mut baseline = present("web", "stable", &[1]);
        baseline.judged = false;
        baseline.ejects = false;
        registry.retain([baseline.clone(), present("web", "canary", &[3])]);
        let text = render(&registry);
        let trips = |version: &str| {
            text.lines()
                .filter(|l| {
                    l.starts_with("veer_guard_trips_total{")
                        && l.contains(&format!("version=\"{version}\""))
                })
                .count()
        };
        assert_eq!(trips("canary"), TRIP_REASONS.len(), "{text}");
        assert_eq!(trips("stable"), 0, "{text}");
        let ejections = |endpoint: &str| {
            text.lines()
                .filter(|l| {
                    l.starts_with("veer_endpoint_ejections_total{")
                        && l.contains(&format!("endpoint=\"{endpoint}\""))
                })
                .count()
        };
        assert_eq!(ejections("127.0.0.1:3"), EJECTION_REASONS.len());
        assert_eq!(ejections("127.0.0.1:1"), 0);
        // A count under a reason veer does not know yet is still exported.
        let stable = registry.version("web", "stable");
        stable.count_trip("something_new");
        stable.count_ejection(addr(1), "something_new");
        let text = render(&registry);
        assert!(text.contains("version=\"stable\",reason=\"something_new\"} 1\n"));
        assert!(text.contains("endpoint=\"127.0.0.1:1\",reason=\"something_new\"} 1\n"));
        // Every service has a rollout step; 0 without a rollout.
        assert!(
            text.contains("veer_rollout_step{service=\"web\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn tls_counters_of_a_removed_listener_go() {
        let registry = Registry::default();
        registry
            .tls_handshake_failures("secure", "timeout")
            .increment(2);
        registry.tls_handshake_failures("other", "timeout");
        assert!(render(&registry).contains("listener=\"secure\",reason=\"timeout\"} 2\n"));
        registry.retain_listeners(&["other"]);
        let text = render(&registry);
        assert!(!text.contains("secure"), "{text}");
        assert!(text.contains("listener=\"other\""), "{text}");
    }
}
