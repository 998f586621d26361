//! The config file as written: serde types that mirror the YAML field for
//! field and refuse unknown fields, so a typo is an error and not a silently
//! ignored setting.
//!
//! Nothing here is checked beyond its shape. Numbers, durations and enum-like
//! words are kept as written ([`Scalar`]) so that `validate` can say
//! precisely what is wrong with a value, in the field's own terms, instead of
//! serde's "invalid value: integer `-1`, expected u32"; omitted fields are
//! `None` and get their defaults there too.
//!
//! The top level keeps its parts as untyped YAML values ([`RawDocument`]):
//! each part, and each listener and service, is deserialized on its own, so
//! one typo does not hide the errors in the rest of the file. For the same
//! reason, fields that are required are `Option`s here: a missing one is a
//! validation error, reported with the others, not a serde error that would
//! stop its whole service from being checked.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::yaml::Node;

/// The top level of the file, with its parts still untyped.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with listeners, services and optionally admin, state_dir, fleet, limits, access_log, dns, telemetry and history"
)]
pub(crate) struct RawDocument {
    pub listeners: Option<Node>,
    pub admin: Option<Node>,
    pub state_dir: Option<Node>,
    pub fleet: Option<Node>,
    pub limits: Option<Node>,
    pub access_log: Option<Node>,
    pub dns: Option<Node>,
    pub services: Option<Node>,
    pub telemetry: Option<Node>,
    pub history: Option<Node>,
}

/// A part of the file that did not deserialize; its error is already reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Invalid;

/// A part of the file, deserialized or already reported.
pub(crate) type Part<T> = Result<T, Invalid>;

/// The whole file, each part typed (or reported as invalid). A list that is
/// not a list at all is held as one invalid item, so it is neither checked
/// further nor taken as empty.
#[derive(Debug)]
pub(crate) struct RawConfig {
    pub listeners: Option<Vec<Part<RawListener>>>,
    pub dns: Option<Part<RawDns>>,
    pub admin: Option<Part<RawAdmin>>,
    pub state_dir: Option<Part<String>>,
    pub fleet: Option<Part<RawFleet>>,
    pub limits: Option<Part<RawLimits>>,
    pub access_log: Option<Part<RawAccessLog>>,
    pub history: Option<Part<RawHistory>>,
    pub services: Option<Vec<Part<RawService>>>,
    pub telemetry: Option<Part<RawTelemetry>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with idle_series_after and buckets, both optional"
)]
pub(crate) struct RawTelemetry {
    pub idle_series_after: Option<Scalar>,
    pub buckets: Option<Vec<Scalar>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with optionally resolv_conf, nameservers, search, ndots, timeout, min_ttl and max_ttl"
)]
pub(crate) struct RawDns {
    pub resolv_conf: Option<String>,
    pub nameservers: Option<Vec<Scalar>>,
    pub search: Option<Vec<Scalar>>,
    pub ndots: Option<Scalar>,
    pub timeout: Option<Scalar>,
    pub min_ttl: Option<Scalar>,
    pub max_ttl: Option<Scalar>,
}

/// `history`: how many release records each service keeps.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with keep")]
pub(crate) struct RawHistory {
    pub keep: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with etcd and optionally replica and leader_ttl"
)]
pub(crate) struct RawFleet {
    pub etcd: Option<RawEtcd>,
    pub replica: Option<Scalar>,
    pub leader_ttl: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with endpoints and optionally prefix, username, password_file, tls and timeout"
)]
pub(crate) struct RawEtcd {
    pub endpoints: Option<Vec<Scalar>>,
    pub prefix: Option<Scalar>,
    pub username: Option<Scalar>,
    pub password_file: Option<String>,
    pub tls: Option<RawEtcdTls>,
    pub timeout: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with ca, and cert and key for a client certificate"
)]
pub(crate) struct RawEtcdTls {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with path and optionally sample"
)]
pub(crate) struct RawAccessLog {
    pub path: Option<String>,
    pub sample: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a listener: a mapping with name, address and optionally tls"
)]
pub(crate) struct RawListener {
    pub name: Option<String>,
    /// A scalar, so that `address: 8080` gets an address error, not a type error.
    pub address: Option<Scalar>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with cert and key, or certificates, and optionally client_ca and identity_header"
)]
pub(crate) struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub certificates: Option<Vec<RawCertificate>>,
    pub client_ca: Option<String>,
    pub identity_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a certificate: a mapping with cert, key and hosts"
)]
pub(crate) struct RawCertificate {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub hosts: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with optionally server_name, ca, insecure_skip_verify, client_cert and client_key"
)]
pub(crate) struct RawUpstreamTls {
    pub server_name: Option<String>,
    pub ca: Option<String>,
    pub insecure_skip_verify: Option<Scalar>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with address and optionally token_file"
)]
pub(crate) struct RawAdmin {
    pub address: Option<Scalar>,
    pub token_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of max_connections, header_read_timeout, max_header_bytes and drain_timeout"
)]
pub(crate) struct RawLimits {
    pub max_connections: Option<Scalar>,
    pub header_read_timeout: Option<Scalar>,
    pub max_header_bytes: Option<Scalar>,
    pub drain_timeout: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a service: a mapping with name, versions and optionally match, sticky, rules, timeouts, health_check, guard, rollout and grpc"
)]
pub(crate) struct RawService {
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: Option<RawServiceMatch>,
    pub versions: Option<Vec<RawVersion>>,
    pub sticky: Option<RawSticky>,
    pub rules: Option<Vec<RawRule>>,
    pub timeouts: Option<RawTimeouts>,
    pub health_check: Option<RawHealthCheck>,
    pub outlier_detection: Option<RawOutlier>,
    pub slow_start: Option<Scalar>,
    pub guard: Option<RawGuard>,
    pub rollout: Option<RawRollout>,
    pub grpc: Option<RawGrpc>,
    pub mirror: Option<RawMirror>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mirror: a mapping with version and optionally percent, methods, allow_unsafe, max_body, concurrency, timeout and deterministic"
)]
pub(crate) struct RawMirror {
    pub version: Option<String>,
    pub percent: Option<Scalar>,
    pub methods: Option<Vec<Scalar>>,
    pub allow_unsafe: Option<bool>,
    pub max_body: Option<Scalar>,
    pub concurrency: Option<Scalar>,
    pub timeout: Option<Scalar>,
    pub deterministic: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a shadow stage: a mapping with hold, max_mismatch_rate and optionally max_latency_ratio and min_requests"
)]
pub(crate) struct RawShadow {
    pub hold: Option<Scalar>,
    pub max_mismatch_rate: Option<Scalar>,
    pub max_latency_ratio: Option<Scalar>,
    pub min_requests: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with hosts and path_prefix"
)]
pub(crate) struct RawServiceMatch {
    pub hosts: Option<Vec<String>>,
    pub path_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a version: a mapping with name, endpoints, weight and optionally revision, protocol and tls"
)]
pub(crate) struct RawVersion {
    pub name: Option<String>,
    pub revision: Option<Scalar>,
    pub endpoints: Option<Vec<Scalar>>,
    pub weight: Option<Scalar>,
    pub protocol: Option<Scalar>,
    pub tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with either header, or cookie and optionally max_age"
)]
pub(crate) struct RawSticky {
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub max_age: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a rule: a mapping with match and version"
)]
pub(crate) struct RawRule {
    #[serde(rename = "match")]
    pub matcher: Option<RawRuleMatch>,
    pub version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with headers, headers_present, headers_regex, cookies and path_prefix"
)]
pub(crate) struct RawRuleMatch {
    /// Sorted by name: every condition must hold, so order carries nothing,
    /// and a stable order makes error order stable.
    pub headers: Option<BTreeMap<String, Scalar>>,
    pub headers_present: Option<Vec<String>>,
    pub headers_regex: Option<BTreeMap<String, Scalar>>,
    pub cookies: Option<BTreeMap<String, Scalar>>,
    pub path_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with connect, request and idle"
)]
pub(crate) struct RawTimeouts {
    pub connect: Option<Scalar>,
    pub request: Option<Scalar>,
    pub idle: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with path and optionally interval and timeout"
)]
pub(crate) struct RawHealthCheck {
    pub path: Option<String>,
    pub interval: Option<Scalar>,
    pub timeout: Option<Scalar>,
    pub healthy_threshold: Option<Scalar>,
    pub unhealthy_threshold: Option<Scalar>,
    pub expected_statuses: Option<Vec<Scalar>>,
    pub initial: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with consecutive_failures, count_5xx, base_ejection, max_ejection and max_ejected_percent"
)]
pub(crate) struct RawOutlier {
    pub consecutive_failures: Option<Scalar>,
    pub count_5xx: Option<bool>,
    pub base_ejection: Option<Scalar>,
    pub max_ejection: Option<Scalar>,
    pub max_ejected_percent: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a guard: a mapping with baseline and thresholds"
)]
pub(crate) struct RawGuard {
    pub baseline: Option<String>,
    pub interval: Option<Scalar>,
    pub window: Option<Scalar>,
    pub min_requests: Option<Scalar>,
    pub max_error_rate: Option<Scalar>,
    pub max_p95_latency: Option<Scalar>,
    pub max_p99_latency: Option<Scalar>,
    pub max_error_rate_increase: Option<Scalar>,
    pub max_latency_ratio: Option<Scalar>,
    pub consecutive: Option<Scalar>,
    pub on_revert: Option<Scalar>,
    pub error_rate_test: Option<Scalar>,
    pub webhook: Option<String>,
    pub per_method: Option<bool>,
    pub checks: Option<Vec<RawCheck>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with optionally error_codes and max_methods"
)]
pub(crate) struct RawGrpc {
    pub error_codes: Option<Vec<Scalar>>,
    pub max_methods: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a rollout: a mapping with candidate, steps, hold and optionally gate"
)]
pub(crate) struct RawRollout {
    pub candidate: Option<String>,
    pub steps: Option<Vec<RawStep>>,
    pub hold: Option<Scalar>,
    pub gate: Option<String>,
    pub shadow: Option<RawShadow>,
    pub checks: Option<Vec<RawCheck>>,
}

/// One check of a rollout or a guard (`config/validate/checks.rs`).
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a check: a mapping with name, prometheus or web, and max or min"
)]
pub(crate) struct RawCheck {
    pub name: Option<String>,
    pub prometheus: Option<RawPrometheusCheck>,
    pub web: Option<RawWebCheck>,
    pub min: Option<Scalar>,
    pub max: Option<Scalar>,
    pub failure_limit: Option<Scalar>,
    pub inconclusive_limit: Option<Scalar>,
    pub interval: Option<Scalar>,
    pub timeout: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a Prometheus check: a mapping with address and query"
)]
pub(crate) struct RawPrometheusCheck {
    pub address: Option<String>,
    pub query: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a web check: a mapping with url, json_path or field, and optionally method, headers, body and token_file"
)]
pub(crate) struct RawWebCheck {
    pub url: Option<String>,
    pub method: Option<Scalar>,
    pub headers: Option<BTreeMap<String, String>>,
    pub body: Option<String>,
    pub json_path: Option<String>,
    pub field: Option<String>,
    pub token_file: Option<String>,
}

/// One rollout step: a bare percentage (`25`, held for the rollout's `hold`)
/// or a mapping with its own hold (`{weight: 25, hold: 30m}`, or
/// `hold: manual` to wait for `veer promote`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RawStep {
    Plain(Scalar),
    Detailed(RawStepMap),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a step: a mapping with weight and optionally hold"
)]
pub(crate) struct RawStepMap {
    pub weight: Option<Scalar>,
    pub hold: Option<Scalar>,
}

impl<'de> Deserialize<'de> for RawStep {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StepVisitor;
        impl<'de> Visitor<'de> for StepVisitor {
            type Value = RawStep;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a step: a percentage such as 25, or a mapping such as {weight: 25, hold: 10m}",
                )
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<RawStep, E> {
                Ok(RawStep::Plain(Scalar::Text(text.to_string())))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<RawStep, E> {
                Ok(RawStep::Plain(Scalar::Int(i128::from(n))))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RawStep, E> {
                Ok(RawStep::Plain(Scalar::Int(i128::from(n))))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<RawStep, E> {
                Ok(RawStep::Plain(Scalar::Float(n)))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<RawStep, E> {
                Ok(RawStep::Plain(Scalar::Bool(b)))
            }
            // Through the caller's map access, so that an unknown key inside
            // a step is reported at its own path (`steps[1].wieght`).
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawStep, A::Error> {
                RawStepMap::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawStep::Detailed)
            }
        }
        deserializer.deserialize_any(StepVisitor)
    }
}

/// A single YAML value as written, for a field whose type `validate` checks:
/// durations, numbers, and text that must not be read as a number. Taking any
/// scalar here means `request: 5` or `weight: 1.5` is a validation error,
/// reported together with the others, rather than a deserialization error
/// that would stop the rest of its service from being checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Text(String),
    Int(i128),
    Float(f64),
    Bool(bool),
}

impl fmt::Display for Scalar {
    /// As the user (most likely) wrote it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Text(text) => f.write_str(text),
            Scalar::Int(n) => write!(f, "{n}"),
            // Debug keeps the point: `1.0`, where Display would print `1`.
            Scalar::Float(n) => write!(f, "{n:?}"),
            Scalar::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a single value, not a list or mapping")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(text.to_string()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(i128::from(n)))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Scalar, E> {
                Ok(Scalar::Int(i128::from(n)))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(n))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(b))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}
