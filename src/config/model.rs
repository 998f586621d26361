//! The validated configuration, built by `config::validate` from the raw
//! serde types; everything downstream (snapshot, server, guard) reads these.
//! Weights, fractions, percents and ratios are `units` newtypes that cannot
//! hold an invalid value; the rest (a rollout's ordered steps, indexes in
//! range, the access log's sample in 0..=1) is what `validate` guarantees.
//! The fields are public so that tests and the demo can write a config in
//! code; such a config is trusted as written.
//!
//! References between parts of a service (a rule's version, the guard's
//! baseline, the rollout's candidate) are resolved to indexes into
//! `Service::versions`, so no consumer has to look a name up again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;

use super::units::{Fraction, Percent, Ratio, Weight};
use crate::grpc::ErrorCodes;

/// A whole, valid veer configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listeners: Vec<Listener>,
    pub admin: Admin,
    /// Where run-time state (weights, latches, rollout progress) persists.
    pub state_dir: Option<PathBuf>,
    /// Run-time state shared with the other replicas through etcd; `None`:
    /// this veer keeps its own (in `state_dir`).
    pub fleet: Option<Fleet>,
    pub limits: Limits,
    /// Where each request's JSON line goes, if anywhere.
    pub access_log: Option<AccessLog>,
    /// How much release history each service keeps.
    pub history: History,
    /// Shared, not copied: the snapshot's parts and a reload's `Reuse` hold
    /// the same `Arc`s, so an unchanged service is in memory once and is
    /// told unchanged by a pointer comparison.
    pub services: Vec<Arc<Service>>,
    /// How endpoints written as `NAME:PORT` are resolved.
    pub dns: Dns,
    /// What `/metrics` exports.
    pub telemetry: Telemetry,
}

impl Config {
    /// Takes `previous`'s `Arc` for every service that is unchanged (equal)
    /// but was read anew (a file read whole, or a read without `Reuse`), so
    /// that the old model is freed instead of living on beside the new one
    /// in the snapshot's kept parts, and the next build tells it unchanged
    /// by its pointer. Services already shared cost a pointer comparison.
    pub fn share_unchanged(&mut self, previous: &Config) {
        let in_place = self.services.len() == previous.services.len()
            && self
                .services
                .iter()
                .zip(&previous.services)
                .all(|(now, before)| Arc::ptr_eq(now, before) || now.name == before.name);
        let by_name: std::collections::HashMap<&str, &Arc<Service>> = if in_place {
            std::collections::HashMap::new()
        } else {
            previous
                .services
                .iter()
                .map(|s| (s.name.as_str(), s))
                .collect()
        };
        for (index, service) in self.services.iter_mut().enumerate() {
            let before = if in_place {
                previous.services.get(index)
            } else {
                by_name.get(service.name.as_str()).copied()
            };
            if let Some(before) = before {
                if !Arc::ptr_eq(before, service) && **before == **service {
                    *service = Arc::clone(before);
                }
            }
        }
    }
}

/// The release history's bound (`history: { keep: N }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// Records kept per service, newest kept; at least 1. Default 50.
    pub keep: usize,
}

impl History {
    /// The most records a service may keep: each is written with the whole
    /// run-time layer on every change.
    pub const MAX_KEEP: usize = 1000;
}

impl Default for History {
    fn default() -> Self {
        History { keep: 50 }
    }
}

/// What `/metrics` exports (`telemetry:` in the file).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Telemetry {
    /// A version with no request for this long leaves `/metrics` (its series,
    /// its endpoints', its release gauges) until its next request; `None`:
    /// every configured version is exported.
    pub idle_series_after: Option<Duration>,
    /// The `le` bounds the latency histograms export, a subset of
    /// [`LATENCY_BOUNDS`] in increasing order; `None`: all of them.
    pub buckets: Option<Vec<Duration>>,
}

/// The latency bucket bounds veer counts in (`le`): sub-millisecond (a proxy
/// on loopback) up to 10 s, finer where service latencies usually are.
/// `telemetry.buckets` exports a subset of them.
pub const LATENCY_BOUNDS: [Duration; 24] = [
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2_500),
    Duration::from_millis(5),
    Duration::from_micros(7_500),
    Duration::from_millis(10),
    Duration::from_millis(15),
    Duration::from_millis(25),
    Duration::from_millis(35),
    Duration::from_millis(50),
    Duration::from_millis(75),
    Duration::from_millis(100),
    Duration::from_millis(150),
    Duration::from_millis(250),
    Duration::from_millis(350),
    Duration::from_millis(500),
    Duration::from_millis(750),
    Duration::from_secs(1),
    Duration::from_millis(1_500),
    Duration::from_millis(2_500),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

/// A fleet of replicas sharing their run-time layer through etcd v3.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    pub etcd: Etcd,
    /// This replica's name among the fleet's: letters, digits, `-`, `_`, `.`.
    /// Default: the host name (a pod's name on Kubernetes).
    pub replica: Option<String>,
    /// The lease of the replica that leads the rollout clock: when the
    /// leader dies, another leads within this. Whole seconds (etcd leases
    /// count in seconds). Default 5s.
    pub leader_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Etcd {
    /// `http://host:port` or `https://host:port`, at least one.
    pub endpoints: Vec<String>,
    /// Every key veer reads or writes is under it: starts with `/`, no
    /// trailing `/`. Default `/veer`; one per fleet.
    pub prefix: String,
    pub username: Option<String>,
    /// The file holding the password (for `username`).
    pub password_file: Option<PathBuf>,
    pub tls: Option<EtcdTls>,
    /// Per request to etcd, and for connecting. Default 2s.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA that signed etcd's server certificates.
    pub ca: Option<PathBuf>,
    /// A client certificate and its key, when etcd asks for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The access log: one JSON line per request (or per sampled request),
/// written when its response stream ends.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    pub target: AccessLogTarget,
    /// The share of requests logged, in 0..=1.
    pub sample: f64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub tls: Option<ListenerTls>,
}

/// TLS termination on a listener.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenerTls {
    /// At least one. The first is the default, served when the client's SNI
    /// names none of the others' hosts (or names nothing): the plain
    /// `tls: {cert, key}` when written, else the first of `certificates`.
    pub certificates: Vec<CertificateFiles>,
    /// Client certificates are required and verified against these roots.
    pub client_ca: Option<PathBuf>,
    /// The verified client identity is passed upstream in this header (and a
    /// header of that name from the client is always removed). Only with
    /// `client_ca`.
    pub identity_header: Option<HeaderName>,
}

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The SNI names this certificate is served for; empty for the default.
    pub hosts: Vec<HostMatch>,
}

/// TLS from veer to a version's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct UpstreamTls {
    /// The name sent as SNI and checked against the endpoint's certificate;
    /// `None`: the endpoint's IP address.
    pub server_name: Option<String>,
    /// Roots to verify the endpoint with; `None`: the public web roots.
    pub ca: Option<PathBuf>,
    /// No verification at all (test setups only; logged loudly).
    pub insecure_skip_verify: bool,
    /// A client certificate for upstream mTLS, with its key.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// Default `127.0.0.1:9901`.
    pub address: SocketAddr,
    pub token_file: Option<PathBuf>,
}

/// Protection against bad or too many clients. All have defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Open downstream connections beyond this wait in the accept backlog.
    /// Default 10,000.
    pub max_connections: usize,
    /// A client must finish sending a request head within this. Default 10s.
    pub header_read_timeout: Duration,
    /// Total size of a request head (request line and headers). Default 64 KiB.
    pub max_header_bytes: usize,
    /// How long in-flight requests may take to finish on shutdown. Default 30s.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    /// Empty: any host.
    pub hosts: Vec<HostMatch>,
    /// Always starts with `/`. Default `/`.
    pub path_prefix: String,
    /// At least one; names unique; at least one weight above zero.
    pub versions: Vec<Version>,
    pub sticky: Option<Sticky>,
    pub rules: Vec<Rule>,
    pub timeouts: Timeouts,
    pub health_check: Option<HealthCheck>,
    /// Passive ejection on failures seen in real traffic.
    pub outlier: Outlier,
    /// An endpoint that joins (or returns from ejection) ramps its share up
    /// over this long. `None`: at once.
    pub slow_start: Option<Duration>,
    pub guard: Option<Guard>,
    pub rollout: Option<Rollout>,
    /// How gRPC calls are judged (defaults when the block is omitted).
    pub grpc: Grpc,
    /// Copies of live requests sent to a shadow version.
    pub mirror: Option<Mirror>,
}

/// `services[].mirror`: a share of the service's requests is copied to a
/// shadow version, whose answers are compared with the live ones and thrown
/// away.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    /// Index into `Service::versions`.
    pub version: usize,
    /// Share of eligible requests copied. Default 100.
    pub percent: Percent,
    /// Methods copied. Default `GET`, `HEAD`; others need `allow_unsafe`.
    pub methods: Vec<http::Method>,
    /// A request body larger than this is not copied (the copy is skipped
    /// and counted). Default 64 KiB.
    pub max_body: usize,
    /// Copies in flight at once; beyond it copies are dropped. Default 64.
    pub concurrency: usize,
    /// Budget of one copy, body wait included. Default 5s.
    pub timeout: Duration,
    /// Path prefixes whose answers must be the same bytes: there the live
    /// and the shadow bodies are digested and compared too.
    pub deterministic: Vec<String>,
}

/// `rollout.shadow`: the rollout's first stage, in which the candidate takes
/// no live traffic and is judged on mirrored copies, pair by pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shadow {
    pub hold: Duration,
    /// Share of pairs where the shadow failed and the live answer did not.
    pub max_mismatch_rate: Fraction,
    /// p95 of shadow latency over live latency, pair by pair.
    pub max_latency_ratio: Option<Ratio>,
    /// Pairs needed for a verdict. Default: the guard's `min_requests`.
    pub min_requests: Option<u64>,
}

/// How a request's host (port stripped, lowercased) is matched.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// `agent-match`: that host only.
    Exact(String),
    /// `*.example.com`: stored as `.example.com`; matches any host ending with it
    /// (and longer than it), not `example.com` itself.
    Suffix(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    #[default]
    Http1,
    Http2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    pub name: String,
    /// Identity of what runs; a new revision clears guard latches. Default "".
    pub revision: String,
    /// No duplicates; with `names`, at least one endpoint.
    pub endpoints: Vec<SocketAddr>,
    /// Endpoints written `NAME:PORT`: every address the name resolves to
    /// (A and AAAA) is an endpoint, re-resolved in the background (`dns`).
    pub names: Vec<EndpointName>,
    pub weight: Weight,
    pub protocol: Protocol,
    /// `None`: cleartext.
    pub tls: Option<UpstreamTls>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Sticky {
    /// Requests carrying this header keep one version per header value.
    Header(HeaderName),
    /// Requests keep one version per cookie value; one is minted when absent.
    Cookie { name: String, max_age: Duration },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub matcher: RuleMatch,
    /// Index into `Service::versions`.
    pub version: usize,
}

/// Every condition present must hold (an empty matcher matches everything).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuleMatch {
    /// Header equal to the value.
    pub headers: Vec<(HeaderName, String)>,
    /// Header present, whatever its value.
    pub present: Vec<HeaderName>,
    /// Header matching the regex (checked to compile).
    pub regex: Vec<(HeaderName, String)>,
    pub cookies: Vec<(String, String)>,
    pub path_prefix: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    /// TCP connect to an endpoint. Default 1s.
    pub connect: Duration,
    /// From sending the request to the upstream's response head. Default 15s.
    pub request: Duration,
    /// How long a pooled upstream connection may sit idle. Default 60s.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(1),
            request: Duration::from_secs(15),
            idle: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// Starts with `/`.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Passing probes in a row before an endpoint enters service. Default 1.
    pub healthy_threshold: u32,
    /// Failing probes in a row before it leaves. Default 3.
    pub unhealthy_threshold: u32,
    /// Inclusive status ranges that pass. Default 200..=399.
    pub expected_statuses: Vec<(u16, u16)>,
    /// Whether an endpoint counts as healthy before its first probe. `None`:
    /// healthy when veer starts (it probes at once), not ready when a reload
    /// adds it.
    pub initial_healthy: Option<bool>,
}

/// Passive ejection (like Envoy's outlier detection): after
/// `consecutive_failures` failures in a row on real traffic an endpoint is
/// ejected for `base_ejection` times the number of its ejections so far (up to
/// `max_ejection`), but never so many that more than `max_ejected_percent` of
/// a version's endpoints are out at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Outlier {
    /// 0 turns passive ejection off. Default 5.
    pub consecutive_failures: u32,
    /// Whether 5xx answers count as failures (connect errors, resets and
    /// timeouts always do). Default false.
    pub count_5xx: bool,
    /// Default 5s.
    pub base_ejection: Duration,
    /// Default 5m.
    pub max_ejection: Duration,
    /// Default 50.
    pub max_ejected_percent: Percent,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive_failures: 5,
            count_5xx: false,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: Percent::saturating(50),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRevert {
    #[default]
    Drain,
    Evict,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    /// Index into `Service::versions`.
    pub baseline: usize,
    pub interval: Duration,
    pub window: Duration,
    pub min_requests: u64,
    pub max_error_rate: Option<Fraction>,
    pub max_p95_latency: Option<Duration>,
    pub max_p99_latency: Option<Duration>,
    /// Allowed excess of the version's error rate over the baseline's, in [0, 1].
    pub max_error_rate_increase: Option<Fraction>,
    /// Allowed ratio of the version's p95 to the baseline's, at least 1.
    pub max_latency_ratio: Option<Ratio>,
    /// Bad verdicts in a row before a trip; at least 1.
    pub consecutive: u32,
    pub on_revert: OnRevert,
    pub webhook: Option<http::Uri>,
    /// `error_rate_test: wilson`: trip on the error rate only when the lower
    /// bound of its 95 % Wilson interval is above `max_error_rate`, so few
    /// requests need a clearer signal. Default: the plain rate.
    pub wilson: bool,
    /// `per_method: true`: each gRPC method is also judged on its own, so
    /// one broken method trips the version even when the others drown it in
    /// successes. Default false.
    pub per_method: bool,
    /// Checks of what the proxy cannot see, run for every non-baseline
    /// version with traffic, in steady state too.
    pub checks: Vec<super::check::Check>,
}

/// Methods with their own figures when `grpc.max_methods` is omitted.
pub const DEFAULT_MAX_METHODS: usize = 16;

/// How a service's gRPC calls are judged.
#[derive(Debug, Clone, PartialEq)]
pub struct Grpc {
    /// The codes that count as the version's errors (a call that ends with
    /// no `grpc-status` always does). Default: UNKNOWN, DEADLINE_EXCEEDED,
    /// INTERNAL, UNAVAILABLE, DATA_LOSS.
    pub error_codes: ErrorCodes,
    /// Distinct methods with their own figures per version; the rest are
    /// counted under `other`. Default 16.
    pub max_methods: usize,
}

impl Default for Grpc {
    fn default() -> Self {
        Grpc {
            error_codes: ErrorCodes::default(),
            max_methods: DEFAULT_MAX_METHODS,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Index into `Service::versions`; never the guard's baseline.
    pub candidate: usize,
    /// Percentages strictly increasing, each in 1..=100, the last one 100.
    pub steps: Vec<Step>,
    pub gate: Option<http::Uri>,
    /// A shadow stage first: then `steps[0]` is that stage, at 0 %.
    pub shadow: Option<Shadow>,
    /// Checks run on the candidate while a step holds; a step advances only
    /// once each has passed since the step began.
    pub checks: Vec<super::check::Check>,
}

impl Rollout {
    /// The candidate's percentage at step `index` (the last step past the end).
    pub fn percent(&self, index: usize) -> u32 {
        self.steps
            .get(index)
            .or(self.steps.last())
            .map_or(100, |step| step.percent)
    }
}

/// One step of a rollout: the candidate's share and how long it must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub percent: u32,
    pub hold: Hold,
}

/// How a step ends: after a time healthy, or when an operator promotes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Running time healthy at the step, with enough traffic to judge.
    For(Duration),
    /// Waits for `veer promote`, however long (the guard still watches).
    Manual,
}

/// An endpoint written `NAME:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointName {
    /// Lowercase. A trailing dot makes it absolute: no search domain is tried.
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for EndpointName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// How names are resolved (`dns`): the nameservers, search domains and
/// `ndots` of a resolv.conf unless written here, and the bounds the records'
/// TTLs are held within.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// The resolv.conf to read. `None`: `/etc/resolv.conf` (what Kubernetes
    /// writes into every pod) when `nameservers` is empty, no file otherwise.
    pub resolv_conf: Option<PathBuf>,
    /// Replace the file's nameservers when not empty; port 53 unless written.
    pub nameservers: Vec<SocketAddr>,
    /// Replace the file's search domains when set.
    pub search: Option<Vec<String>>,
    /// Replaces the file's `ndots` when set.
    pub ndots: Option<u8>,
    /// Per query to a nameserver. Default 2s.
    pub timeout: Duration,
    /// A name is asked again no sooner than this, whatever its TTL. Default 1s.
    pub min_ttl: Duration,
    /// ... and no later than this. Default 30s.
    pub max_ttl: Duration,
}

impl Dns {
    /// The resolv.conf read, if any (see `resolv_conf`).
    pub fn resolv_conf_file(&self) -> Option<PathBuf> {
        match &self.resolv_conf {
            Some(file) => Some(file.clone()),
            None if self.nameservers.is_empty() => Some(PathBuf::from("/etc/resolv.conf")),
            None => None,
        }
    }
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            resolv_conf: None,
            nameservers: Vec::new(),
            search: None,
            ndots: None,
            timeout: Duration::from_secs(2),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(30),
        }
    }
}
