//! The second stage: raw serde types -> the validated model.
//!
//! Every check runs even after one has failed, and each failure becomes an
//! [`Issue`] with the field's path, so one `veer check` shows everything that
//! is wrong. Defaults for omitted fields are applied here, in one place; the
//! model's `Default` impls are the source of the default values.
//!
//! Decisions written down here:
//! - A rollout needs a guard. The guard's baseline is where the traffic not yet
//!   given to the candidate goes, and a rollout that nothing watches would
//!   raise traffic blindly.
//! - A guard needs at least one threshold; without one it can never trip.
//! - Service and version names are limited to letters, digits, `-`, `_` and
//!   `.`: they appear in admin URLs, metric labels and `veer weights
//!   SERVICE VERSION=W` arguments.
//!
//! One file per block of the config, each adding its checks to the one
//! [`Validator`] (which only collects issues): `listeners`, `tls` (listener
//! and upstream), `admin`, `fleet`, `limits`, `access_log`, `history`, `services` (and `match`),
//! `versions`, `dns`, `sticky`, `rules`, `timeouts`, `health` (health checks and
//! outlier detection), `guard`, `rollout`, `checks` (a rollout's and a
//! guard's), `grpc`, `telemetry`, `mirror` (and the rollout's shadow stage);
//! `fields` holds the checks every
//! block shares, `parse` the pure text parsers.

mod access_log;
mod admin;
mod checks;
mod dns;
mod fields;
mod fleet;
mod grpc;
mod guard;
mod health;
mod history;
mod limits;
mod listeners;
mod mirror;
mod parse;
mod rollout;
mod rules;
mod services;
mod sticky;
mod telemetry;
mod timeouts;
mod tls;
mod versions;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::Uri;

use super::duration::parse_duration;
use super::error::Issue;
use super::model::{
    AccessLog, AccessLogTarget, Admin, CertificateFiles, Config, EndpointName, Etcd, EtcdTls,
    Fleet, Grpc, Guard, HealthCheck, Hold, HostMatch, Limits, Listener, ListenerTls, Mirror,
    OnRevert, Outlier, Protocol, Rollout, Rule, RuleMatch, Service, Shadow, Step, Sticky,
    Telemetry, Timeouts, UpstreamTls, Version, DEFAULT_MAX_METHODS, LATENCY_BOUNDS,
};
use super::raw::{
    Part, RawAccessLog, RawAdmin, RawConfig, RawDns, RawEtcd, RawFleet, RawGrpc, RawGuard,
    RawHealthCheck, RawLimits, RawListener, RawMirror, RawOutlier, RawRollout, RawRule, RawService,
    RawServiceMatch, RawShadow, RawStep, RawStepMap, RawSticky, RawTelemetry, RawTimeouts, RawTls,
    RawUpstreamTls, RawVersion, Scalar,
};
use super::units::{Fraction, Percent, Ratio, Weight};
use parse::*;

/// The admin API's address when `admin.address` is omitted.
pub const DEFAULT_ADMIN_ADDRESS: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9901);

/// The rule for a weight, in the file and at run time alike (`veer weights`,
/// `POST /services/{name}/weights`), with one message for each refusal.
/// `whole` is the value when it is a whole number (any value above the
/// maximum for one too large to hold); `written` is how it was written.
pub fn weight_rule(whole: Option<i128>, written: &str) -> Result<u32, String> {
    Weight::parse(whole, written).map(Weight::get)
}
/// hyper refuses a smaller HTTP/1 read buffer (it asserts 8192).
pub const MIN_HEADER_BYTES: i128 = 8192;
/// A request head larger than this is an attack or a bug.
pub const MAX_HEADER_BYTES: i128 = 1024 * 1024;
/// Sticky cookie lifetime when `max_age` is omitted.
pub const DEFAULT_STICKY_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

const GUARD_INTERVAL: Duration = Duration::from_secs(1);
const GUARD_WINDOW: Duration = Duration::from_secs(30);
const GUARD_MIN_REQUESTS: u64 = 50;
const GUARD_CONSECUTIVE: u32 = 2;
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

const NAME_RULE: &str = "use only letters, digits, `-`, `_` and `.` (names appear in admin URLs, metric labels and `veer weights` arguments)";
const URL_EXAMPLE: &str =
    "expected an http:// or https:// URL such as http://127.0.0.1:9000/hooks/veer";

/// Checks `raw` and builds the model. Returns `None` if any issue was pushed
/// (by this stage or by deserialization before it).
pub(crate) fn validate(raw: RawConfig, issues: &mut Vec<Issue>) -> Option<Config> {
    validate_with(raw, issues, |v, services| v.services(services))
}

/// As [`validate`], for a file whose services were each checked already
/// ([`service_alone`]): only the checks across services (names, routes) run
/// over them, unless `across` is false (the caller checks them with an
/// [`Across`] of the services it knows). `raw.services` is ignored.
pub(crate) fn validate_prepared(
    raw: RawConfig,
    services: Vec<Arc<Service>>,
    across: bool,
    issues: &mut Vec<Issue>,
) -> Option<Config> {
    validate_with(raw, issues, |v, _| {
        if across {
            v.across_services(&services);
        } else if services.is_empty() {
            v.err("services", "no services");
        }
        services
    })
}

pub(crate) use services::{service_alone, Across};

fn validate_with(
    raw: RawConfig,
    issues: &mut Vec<Issue>,
    services: impl FnOnce(&mut Validator, Option<Vec<Part<RawService>>>) -> Vec<Arc<Service>>,
) -> Option<Config> {
    let mut v = Validator { issues: Vec::new() };
    let listeners = v.listeners(raw.listeners);
    let admin = v.admin(raw.admin, &listeners);
    let state_dir = match raw.state_dir {
        None => Some(None),
        Some(Err(_)) => None,
        Some(Ok(dir)) => v
            .path_field("state_dir", &dir, "remove state_dir or name a directory")
            .map(Some),
    };
    let fleet = match raw.fleet {
        None => Some(None),
        Some(Err(_)) => None,
        Some(Ok(fleet)) => v.fleet(fleet).map(Some),
    };
    let limits = v.limits(raw.limits);
    let access_log = match raw.access_log {
        None => Some(None),
        Some(Err(_)) => None,
        Some(Ok(log)) => v.access_log(log).map(Some),
    };
    let history = v.history(raw.history);
    let services = services(&mut v, raw.services);
    let dns = match raw.dns {
        None => Some(Default::default()),
        Some(Err(_)) => None,
        Some(Ok(dns)) => v.dns(dns),
    };
    let telemetry = match raw.telemetry {
        None => Some(Telemetry::default()),
        Some(Err(_)) => None,
        Some(Ok(part)) => v.telemetry(part),
    };

    let clean = v.issues.is_empty() && issues.is_empty();
    issues.append(&mut v.issues);
    if !clean {
        return None;
    }
    Some(Config {
        listeners: listeners
            .into_iter()
            .map(|(_, listener)| listener)
            .collect(),
        admin: admin?,
        state_dir: state_dir?,
        fleet: fleet?,
        limits: limits?,
        access_log: access_log?,
        history: history?,
        services,
        dns: dns?,
        telemetry: telemetry?,
    })
}

struct Validator {
    issues: Vec<Issue>,
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.issues.push(Issue::at(path, reason));
    }

    /// A field that must be present; `reason` says what to write.
    fn required<T>(&mut self, path: &str, value: Option<T>, reason: &str) -> Option<T> {
        if value.is_none() {
            self.err(path, reason);
        }
        value
    }
}

/// An optional part: omitted (`None`) is fine, present and invalid
/// (`Some(None)`) is not.
fn optional<T>(part: Option<Option<T>>) -> Option<Option<T>> {
    match part {
        None => Some(None),
        Some(inner) => inner.map(Some),
    }
}
