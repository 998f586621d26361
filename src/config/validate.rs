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

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::Uri;

use super::duration::parse_duration;
use super::error::Issue;
use super::model::{
    AccessLog, AccessLogTarget, Admin, CertificateFiles, Config, Guard, HealthCheck, Hold,
    HostMatch, Limits, Listener, ListenerTls, OnRevert, Outlier, Protocol, Rollout, Rule,
    RuleMatch, Service, Step, Sticky, Timeouts, UpstreamTls, Version,
};
use super::raw::{
    Part, RawAccessLog, RawAdmin, RawConfig, RawGuard, RawHealthCheck, RawLimits, RawListener,
    RawOutlier, RawRollout, RawRule, RawService, RawServiceMatch, RawStep, RawStepMap, RawSticky,
    RawTimeouts, RawTls, RawUpstreamTls, RawVersion, Scalar,
};

/// The admin API's address when `admin.address` is omitted.
pub const DEFAULT_ADMIN_ADDRESS: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9901);
/// A weight above this is surely a mistake, and keeps sums far from overflow.
pub const MAX_WEIGHT: i128 = 1_000_000;

/// The rule for a weight, in the file and at run time alike (`veer weights`,
/// `POST /services/{name}/weights`), with one message for each refusal.
/// `whole` is the value when it is a whole number (any value above the
/// maximum for one too large to hold); `written` is how it was written.
pub fn weight_rule(whole: Option<i128>, written: &str) -> Result<u32, String> {
    match whole {
        Some(w) if w < 0 => Err(format!(
            "weight {written} is negative: weights are whole numbers from 0 to {MAX_WEIGHT}"
        )),
        Some(w) if w > MAX_WEIGHT => Err(format!(
            "weight {written} is above the maximum {MAX_WEIGHT}: weights are relative, so scale them all down"
        )),
        Some(w) => u32::try_from(w).map_err(|_| format!("weight {w} is out of range")),
        None => Err(format!(
            "`{written}` is not a whole number: weights are whole numbers from 0 to {MAX_WEIGHT}"
        )),
    }
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
    let limits = v.limits(raw.limits);
    let access_log = match raw.access_log {
        None => Some(None),
        Some(Err(_)) => None,
        Some(Ok(log)) => v.access_log(log).map(Some),
    };
    let services = v.services(raw.services);

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
        limits: limits?,
        access_log: access_log?,
        services,
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

    // ----- top level ---------------------------------------------------------

    /// The valid listeners, each with its index in the file.
    fn listeners(&mut self, raw: Option<Vec<Part<RawListener>>>) -> Vec<(usize, Listener)> {
        let raw = raw.unwrap_or_default();
        if raw.is_empty() {
            self.err(
                "listeners",
                "no listeners: add at least one, such as `- { name: public, address: 127.0.0.1:8080 }`",
            );
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut valid: Vec<(usize, Listener)> = Vec::new();
        for (i, listener) in raw.into_iter().enumerate() {
            let Ok(listener) = listener else { continue };
            let path = format!("listeners[{i}]");
            let name_path = format!("{path}.name");
            let name = self.required(
                &name_path,
                listener.name,
                "missing name: give the listener a name, such as public",
            );
            if let Some(name) = &name {
                if self.name(&name_path, name, "listener") {
                    if let Some(first) = names.get(name) {
                        self.err(
                            &name_path,
                            format!(
                                "duplicate listener name `{name}` (also listeners[{first}]): give each listener its own name"
                            ),
                        );
                    } else {
                        names.insert(name.clone(), i);
                    }
                }
            }
            let address_path = format!("{path}.address");
            let address = self
                .required(
                    &address_path,
                    listener.address,
                    "missing address: give the IP:PORT to listen on, such as 127.0.0.1:8080",
                )
                .and_then(|text| match parse_listen_address(&text.to_string()) {
                    Ok(address) => Some(address),
                    Err(reason) => {
                        self.err(&address_path, reason);
                        None
                    }
                });
            let tls = listener
                .tls
                .map(|tls| self.listener_tls(&format!("{path}.tls"), tls));
            let Some(address) = address else { continue };
            for (j, other) in &valid {
                if overlaps(address, other.address) {
                    self.err(
                        format!("{path}.address"),
                        format!(
                            "`{address}` overlaps listeners[{j}] (`{}`): two listeners cannot bind the same port on the same address; change one of the ports",
                            other.address
                        ),
                    );
                }
            }
            valid.push((
                i,
                Listener {
                    name: name.unwrap_or_default(),
                    address,
                    // An invalid TLS block is reported; the listener is kept
                    // only so that overlaps with it are still found.
                    tls: tls.flatten(),
                },
            ));
        }
        valid
    }

    /// A listener's `tls` block: the plain `cert`/`key` pair and/or
    /// `certificates` by SNI; the first pair is the default.
    fn listener_tls(&mut self, path: &str, raw: RawTls) -> Option<ListenerTls> {
        let mut ok = true;
        let mut certificates = Vec::new();
        match (raw.cert, raw.key) {
            (None, None) => {
                if raw.certificates.as_ref().is_none_or(Vec::is_empty) {
                    self.err(
                        path,
                        "no certificate: set cert and key (PEM files), or list certificates",
                    );
                    ok = false;
                }
            }
            (cert, key) => match self.pair(path, cert, key) {
                Some((cert, key)) => certificates.push(CertificateFiles {
                    cert,
                    key,
                    hosts: Vec::new(),
                }),
                None => ok = false,
            },
        }
        // SNI name -> where it was first given, to refuse duplicates.
        let mut seen: HashMap<HostMatch, String> = HashMap::new();
        for (k, entry) in raw.certificates.unwrap_or_default().into_iter().enumerate() {
            let at = format!("{path}.certificates[{k}]");
            let pair = self.pair(&at, entry.cert, entry.key);
            let mut hosts = Vec::new();
            let raw_hosts = entry.hosts.unwrap_or_default();
            if raw_hosts.is_empty() {
                self.err(
                    format!("{at}.hosts"),
                    "no hosts: list the SNI names this certificate is for, such as [api.example.com, \"*.example.com\"]",
                );
                ok = false;
            }
            for (h, text) in raw_hosts.iter().enumerate() {
                let host_path = format!("{at}.hosts[{h}]");
                match parse_host(text) {
                    Ok(host) => {
                        if let Some(first) = seen.get(&host) {
                            self.err(
                                &host_path,
                                format!("`{text}` is already given at {first}: each SNI name picks one certificate"),
                            );
                            ok = false;
                        } else {
                            seen.insert(host.clone(), host_path);
                            hosts.push(host);
                        }
                    }
                    Err(reason) => {
                        self.err(host_path, reason);
                        ok = false;
                    }
                }
            }
            match pair {
                Some((cert, key)) => certificates.push(CertificateFiles { cert, key, hosts }),
                None => ok = false,
            }
        }
        let client_ca = raw.client_ca.and_then(|ca| {
            let ca = self.path_field(
                &format!("{path}.client_ca"),
                &ca,
                "name the PEM file of the CA certificates that sign client certificates",
            );
            ok &= ca.is_some();
            ca
        });
        let identity_header = raw.identity_header.and_then(|name| {
            let at = format!("{path}.identity_header");
            let header = self.header_name(&at, &name);
            if header.is_some() && client_ca.is_none() {
                self.err(
                    at,
                    "identity_header needs client_ca: without verified client certificates there is no identity to pass",
                );
                ok = false;
                return None;
            }
            ok &= header.is_some();
            header
        });
        ok.then_some(ListenerTls {
            certificates,
            client_ca,
            identity_header,
        })
    }

    /// A certificate chain file and its key file: both or neither.
    fn pair(
        &mut self,
        path: &str,
        cert: Option<String>,
        key: Option<String>,
    ) -> Option<(PathBuf, PathBuf)> {
        let cert = self
            .required(
                &format!("{path}.cert"),
                cert,
                "missing cert: name the PEM certificate chain file",
            )
            .and_then(|cert| {
                self.path_field(
                    &format!("{path}.cert"),
                    &cert,
                    "name the PEM certificate chain file",
                )
            });
        let key = self
            .required(
                &format!("{path}.key"),
                key,
                "missing key: name the PEM private key file",
            )
            .and_then(|key| {
                self.path_field(
                    &format!("{path}.key"),
                    &key,
                    "name the PEM private key file",
                )
            });
        Some((cert?, key?))
    }

    /// A version's `tls` block (origination).
    fn upstream_tls(&mut self, path: &str, raw: RawUpstreamTls) -> Option<UpstreamTls> {
        let mut ok = true;
        let server_name = raw
            .server_name
            .and_then(|name| match check_server_name(&name) {
                Ok(()) => Some(name),
                Err(reason) => {
                    self.err(format!("{path}.server_name"), reason);
                    ok = false;
                    None
                }
            });
        let insecure_skip_verify = match raw.insecure_skip_verify {
            None => false,
            Some(Scalar::Bool(b)) => b,
            Some(other) => {
                self.err(
                    format!("{path}.insecure_skip_verify"),
                    format!("`{other}` is not true or false"),
                );
                ok = false;
                false
            }
        };
        let ca = raw.ca.and_then(|ca| {
            let ca = self.path_field(
                &format!("{path}.ca"),
                &ca,
                "name the PEM file of the CA certificates to verify the endpoints with, or remove ca to use the public roots",
            );
            ok &= ca.is_some();
            ca
        });
        if ca.is_some() && insecure_skip_verify {
            self.err(
                format!("{path}.insecure_skip_verify"),
                "insecure_skip_verify turns off the verification that ca is for: remove one of them",
            );
            ok = false;
        }
        let client_cert = match (raw.client_cert, raw.client_key) {
            (None, None) => None,
            (Some(_), None) => {
                self.err(
                    format!("{path}.client_key"),
                    "missing client_key: client_cert needs the PEM file of its private key",
                );
                ok = false;
                None
            }
            (None, Some(_)) => {
                self.err(
                    format!("{path}.client_cert"),
                    "missing client_cert: client_key needs the PEM certificate chain it belongs to",
                );
                ok = false;
                None
            }
            (Some(cert), Some(key)) => {
                let cert = self.path_field(
                    &format!("{path}.client_cert"),
                    &cert,
                    "name the PEM certificate chain file",
                );
                let key = self.path_field(
                    &format!("{path}.client_key"),
                    &key,
                    "name the PEM private key file",
                );
                match (cert, key) {
                    (Some(cert), Some(key)) => Some((cert, key)),
                    _ => {
                        ok = false;
                        None
                    }
                }
            }
        };
        ok.then_some(UpstreamTls {
            server_name,
            ca,
            insecure_skip_verify,
            client_cert,
        })
    }

    fn admin(
        &mut self,
        raw: Option<Part<RawAdmin>>,
        listeners: &[(usize, Listener)],
    ) -> Option<Admin> {
        let raw = match raw {
            Some(Ok(admin)) => Some(admin),
            Some(Err(_)) => return None,
            None => None,
        };
        let (address, token_file) = match raw {
            Some(admin) => (admin.address, admin.token_file),
            None => (None, None),
        };
        let token_file = token_file.and_then(|file| {
            self.path_field(
                "admin.token_file",
                &file,
                "name the file holding the admin token, or remove token_file",
            )
        });
        let explicit = address.is_some();
        let address = match address {
            None => DEFAULT_ADMIN_ADDRESS,
            Some(text) => match parse_listen_address(&text.to_string()) {
                Ok(address) => address,
                Err(reason) => {
                    self.err("admin.address", reason);
                    return None;
                }
            },
        };
        if !address.ip().is_loopback() && token_file.is_none() {
            self.err(
                "admin.address",
                format!(
                    "`{address}` is not a loopback address: set admin.token_file: the admin API must not be open without a token"
                ),
            );
        }
        for (i, listener) in listeners {
            if overlaps(address, listener.address) {
                if explicit {
                    self.err(
                        "admin.address",
                        format!(
                            "`{address}` overlaps listeners[{i}] (`{}`): the admin API needs a port of its own",
                            listener.address
                        ),
                    );
                } else {
                    self.err(
                        format!("listeners[{i}].address"),
                        format!(
                            "`{}` overlaps the admin API's default address {DEFAULT_ADMIN_ADDRESS}: change this port or set admin.address",
                            listener.address
                        ),
                    );
                }
            }
        }
        Some(Admin {
            address,
            token_file,
        })
    }

    fn access_log(&mut self, raw: RawAccessLog) -> Option<AccessLog> {
        let target = match raw.path.as_deref() {
            None => {
                self.err(
                    "access_log.path",
                    "missing: name a file to append JSON lines to, or `stdout`",
                );
                None
            }
            Some("stdout" | "-") => Some(AccessLogTarget::Stdout),
            Some(path) => self
                .path_field(
                    "access_log.path",
                    path,
                    "name a file to append JSON lines to, or `stdout`",
                )
                .map(AccessLogTarget::File),
        };
        let sample = self.fraction("access_log.sample", raw.sample.as_ref());
        Some(AccessLog {
            target: target?,
            sample: sample.ok()?.unwrap_or(1.0),
        })
    }

    fn limits(&mut self, raw: Option<Part<RawLimits>>) -> Option<Limits> {
        let defaults = Limits::default();
        let raw = match raw {
            None => return Some(defaults),
            Some(Err(_)) => return None,
            Some(Ok(raw)) => raw,
        };
        let max_connections = match raw.max_connections {
            None => Some(defaults.max_connections),
            Some(n) => self.int_in(
                "limits.max_connections",
                &n,
                1,
                1_000_000,
                "open client connections",
            ),
        };
        let max_header_bytes = match raw.max_header_bytes {
            None => Some(defaults.max_header_bytes),
            Some(n) => self.int_in(
                "limits.max_header_bytes",
                &n,
                MIN_HEADER_BYTES,
                MAX_HEADER_BYTES,
                "bytes in a request head; hyper needs at least 8192",
            ),
        };
        let header_read_timeout = self.positive_duration(
            "limits.header_read_timeout",
            raw.header_read_timeout.as_ref(),
            defaults.header_read_timeout,
        );
        let drain_timeout = self.positive_duration(
            "limits.drain_timeout",
            raw.drain_timeout.as_ref(),
            defaults.drain_timeout,
        );
        Some(Limits {
            max_connections: max_connections?,
            header_read_timeout: header_read_timeout?,
            max_header_bytes: max_header_bytes?,
            drain_timeout: drain_timeout?,
        })
    }

    fn services(&mut self, raw: Option<Vec<Part<RawService>>>) -> Vec<Service> {
        let raw = raw.unwrap_or_default();
        if raw.is_empty() {
            self.err(
                "services",
                "no services: add at least one, with a name and versions to route to",
            );
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        // (host or None for any host, path_prefix) -> (service index, name).
        let mut routes: HashMap<(Option<HostMatch>, String), (usize, String)> = HashMap::new();
        let mut services = Vec::new();
        for (i, service) in raw.into_iter().enumerate() {
            let Ok(service) = service else { continue };
            let path = format!("services[{i}]");
            let name_path = format!("{path}.name");
            let name = self.required(
                &name_path,
                service.name.clone(),
                "missing name: give the service a name, such as agent-match",
            );
            if let Some(name) = &name {
                if self.name(&name_path, name, "service") {
                    if let Some(first) = names.get(name) {
                        self.err(
                            &name_path,
                            format!(
                                "duplicate service name `{name}` (also services[{first}]): give each service its own name"
                            ),
                        );
                    } else {
                        names.insert(name.clone(), i);
                    }
                }
            }
            let Some(service) = self.service(&path, service) else {
                continue;
            };
            // Routes are claimed only by services that are otherwise valid,
            // so one broken service does not cause a second, misleading error.
            let any_host = [None];
            let hosts: Vec<Option<HostMatch>> = service.hosts.iter().cloned().map(Some).collect();
            let claimed = if hosts.is_empty() {
                &any_host[..]
            } else {
                &hosts[..]
            };
            for (k, host) in claimed.iter().enumerate() {
                let key = (host.clone(), service.path_prefix.clone());
                match routes.get(&key) {
                    Some((first, first_name)) => {
                        let (at, what) = match host {
                            Some(h) => (
                                format!("{path}.match.hosts[{k}]"),
                                format!("host `{}`", host_text(h)),
                            ),
                            None => (format!("{path}.match"), "any host".to_string()),
                        };
                        self.err(
                            at,
                            format!(
                                "{what} with path_prefix `{}` is already routed to service `{first_name}` (services[{first}]): routing would be ambiguous; change the host or the path_prefix",
                                service.path_prefix
                            ),
                        );
                    }
                    None => {
                        routes.insert(key, (i, service.name.clone()));
                    }
                }
            }
            services.push(service);
        }
        services
    }

    // ----- one service -------------------------------------------------------

    fn service(&mut self, path: &str, raw: RawService) -> Option<Service> {
        let (hosts, path_prefix) = self.service_match(path, raw.matcher);
        let (versions, versions_ok) = self.versions(path, raw.versions);
        // References resolve against every version named in the file, valid
        // or not: a rule naming a version with a bad endpoint should report
        // the endpoint, not an "unknown version".
        let known: Vec<String> = versions.iter().map(|(name, _)| name.clone()).collect();
        let sticky = raw
            .sticky
            .map(|sticky| self.sticky(&format!("{path}.sticky"), sticky));
        let rules: Vec<Option<Rule>> = raw
            .rules
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(k, rule)| self.rule(&format!("{path}.rules[{k}]"), rule, &known))
            .collect();
        let timeouts = self.timeouts(&format!("{path}.timeouts"), raw.timeouts);
        let health_check = raw
            .health_check
            .map(|check| self.health_check(&format!("{path}.health_check"), check));
        let outlier = self.outlier(&format!("{path}.outlier_detection"), raw.outlier_detection);
        let slow_start =
            self.optional_positive_duration(&format!("{path}.slow_start"), raw.slow_start.as_ref());
        // The rollout checks its candidate against the baseline as written,
        // even if the guard has other errors.
        let baseline = raw.guard.as_ref().map(|guard| {
            guard
                .baseline
                .as_ref()
                .and_then(|name| known.iter().position(|k| k == name))
        });
        let guard = raw
            .guard
            .map(|guard| self.guard(&format!("{path}.guard"), guard, &known));
        let rollout = raw
            .rollout
            .map(|rollout| self.rollout(&format!("{path}.rollout"), rollout, &known, baseline));

        Some(Service {
            name: raw.name?,
            hosts: hosts?,
            path_prefix: path_prefix?,
            versions: if versions_ok {
                versions
                    .into_iter()
                    .map(|(_, version)| version)
                    .collect::<Option<Vec<_>>>()?
            } else {
                return None;
            },
            sticky: optional(sticky)?,
            rules: rules.into_iter().collect::<Option<Vec<_>>>()?,
            timeouts: timeouts?,
            health_check: optional(health_check)?,
            outlier: outlier?,
            slow_start: slow_start.ok()?,
            guard: optional(guard)?,
            rollout: optional(rollout)?,
        })
    }

    fn service_match(
        &mut self,
        path: &str,
        raw: Option<RawServiceMatch>,
    ) -> (Option<Vec<HostMatch>>, Option<String>) {
        let Some(raw) = raw else {
            return (Some(Vec::new()), Some("/".to_string()));
        };
        let mut ok = true;
        let mut hosts: Vec<(usize, HostMatch)> = Vec::new();
        for (k, text) in raw.hosts.unwrap_or_default().iter().enumerate() {
            let at = format!("{path}.match.hosts[{k}]");
            match parse_host(text) {
                Ok(host) => {
                    if let Some((first, _)) = hosts.iter().find(|(_, h)| *h == host) {
                        self.err(
                            at,
                            format!("duplicate host `{text}` (also hosts[{first}]): remove one"),
                        );
                        ok = false;
                    } else {
                        hosts.push((k, host));
                    }
                }
                Err(reason) => {
                    self.err(at, reason);
                    ok = false;
                }
            }
        }
        let prefix = match raw.path_prefix {
            None => Some("/".to_string()),
            Some(prefix) => match check_path_prefix(&prefix) {
                Ok(()) => Some(prefix),
                Err(reason) => {
                    self.err(format!("{path}.match.path_prefix"), reason);
                    None
                }
            },
        };
        let hosts = ok.then(|| hosts.into_iter().map(|(_, host)| host).collect());
        (hosts, prefix)
    }

    /// Each version's name as written and the version, `None` where it is
    /// invalid; and whether the set as a whole is valid.
    fn versions(
        &mut self,
        path: &str,
        raw: Option<Vec<RawVersion>>,
    ) -> (Vec<(String, Option<Version>)>, bool) {
        let raw = raw.unwrap_or_default();
        if raw.is_empty() {
            self.err(
                format!("{path}.versions"),
                "no versions: add at least one, with a name, endpoints and a weight",
            );
            return (Vec::new(), false);
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut all_weights_known = true;
        let mut total: i128 = 0;
        let mut versions = Vec::new();
        for (j, raw) in raw.into_iter().enumerate() {
            let at = format!("{path}.versions[{j}]");
            let name_path = format!("{at}.name");
            let name = self.required(
                &name_path,
                raw.name,
                "missing name: give the version a name, such as stable",
            );
            let mut ok = false;
            if let Some(name) = &name {
                ok = self.name(&name_path, name, "version");
                if ok {
                    if let Some(first) = names.get(name) {
                        self.err(
                            &name_path,
                            format!(
                                "duplicate version name `{name}` (also versions[{first}]): give each version of a service its own name"
                            ),
                        );
                        ok = false;
                    } else {
                        names.insert(name.clone(), j);
                    }
                }
            }
            let endpoints = self.endpoints(&at, raw.endpoints);
            let weight = match raw.weight {
                None => {
                    self.err(
                        format!("{at}.weight"),
                        "missing weight: give every version a weight (0 for no weighted traffic)",
                    );
                    None
                }
                Some(raw) => {
                    let whole = match &raw {
                        Scalar::Int(w) => Some(*w),
                        _ => None,
                    };
                    match weight_rule(whole, &raw.to_string()) {
                        Ok(w) => Some(w),
                        Err(reason) => {
                            self.err(format!("{at}.weight"), reason);
                            None
                        }
                    }
                }
            };
            match weight {
                Some(w) => total += i128::from(w),
                None => all_weights_known = false,
            }
            let protocol = match raw.protocol {
                None => Some(Protocol::default()),
                Some(word) => self
                    .word(
                        &format!("{at}.protocol"),
                        &word,
                        "protocol",
                        &["http1", "http2"],
                    )
                    .map(|i| {
                        if i == 0 {
                            Protocol::Http1
                        } else {
                            Protocol::Http2
                        }
                    }),
            };
            let revision = match raw.revision {
                None => Some(String::new()),
                Some(revision) => self.text(&format!("{at}.revision"), &revision),
            };
            let tls = optional(
                raw.tls
                    .map(|tls| self.upstream_tls(&format!("{at}.tls"), tls)),
            );
            let name = name.unwrap_or_default();
            let version = match (ok, endpoints, weight, protocol, revision, tls) {
                (
                    true,
                    Some(endpoints),
                    Some(weight),
                    Some(protocol),
                    Some(revision),
                    Some(tls),
                ) => Some(Version {
                    name: name.clone(),
                    revision,
                    endpoints,
                    weight,
                    protocol,
                    tls,
                }),
                _ => None,
            };
            versions.push((name, version));
        }
        let mut set_ok = true;
        if all_weights_known && total == 0 {
            self.err(
                format!("{path}.versions"),
                "every version has weight 0: at least one version needs a weight above 0",
            );
            set_ok = false;
        }
        (versions, set_ok)
    }

    fn endpoints(&mut self, at: &str, raw: Option<Vec<Scalar>>) -> Option<Vec<SocketAddr>> {
        let raw = raw.unwrap_or_default();
        if raw.is_empty() {
            self.err(
                format!("{at}.endpoints"),
                "no endpoints: list at least one IP:PORT, such as [127.0.0.1:18081]",
            );
            return None;
        }
        let mut ok = true;
        // With each one's index in the file, for the duplicate message.
        let mut endpoints: Vec<(usize, SocketAddr)> = Vec::new();
        for (k, text) in raw.iter().enumerate() {
            let path = format!("{at}.endpoints[{k}]");
            match parse_endpoint(&text.to_string()) {
                Ok(address) => {
                    if let Some((first, _)) = endpoints.iter().find(|(_, e)| *e == address) {
                        self.err(
                            path,
                            format!(
                                "duplicate endpoint `{address}` (also endpoints[{first}]): list each endpoint once"
                            ),
                        );
                        ok = false;
                    } else {
                        endpoints.push((k, address));
                    }
                }
                Err(reason) => {
                    self.err(path, reason);
                    ok = false;
                }
            }
        }
        ok.then(|| endpoints.into_iter().map(|(_, address)| address).collect())
    }

    fn sticky(&mut self, path: &str, raw: RawSticky) -> Option<Sticky> {
        match (raw.header, raw.cookie) {
            (Some(_), Some(_)) => {
                self.err(
                    path,
                    "both header and cookie are set: keep one (`{ header: x-user-id }` or `{ cookie: session }`)",
                );
                None
            }
            (None, None) => {
                self.err(
                    path,
                    "neither header nor cookie is set: add one (`{ header: x-user-id }` or `{ cookie: session }`)",
                );
                None
            }
            (Some(header), None) => {
                if raw.max_age.is_some() {
                    self.err(
                        format!("{path}.max_age"),
                        "max_age applies only to a sticky cookie: remove it, or use `cookie:` instead of `header:`",
                    );
                }
                let name = self.header_name(&format!("{path}.header"), &header);
                if raw.max_age.is_some() {
                    return None;
                }
                Some(Sticky::Header(name?))
            }
            (None, Some(cookie)) => {
                let name_ok = self.cookie_name(&format!("{path}.cookie"), &cookie);
                let max_age = self.positive_duration(
                    &format!("{path}.max_age"),
                    raw.max_age.as_ref(),
                    DEFAULT_STICKY_MAX_AGE,
                );
                if !name_ok {
                    return None;
                }
                Some(Sticky::Cookie {
                    name: cookie,
                    max_age: max_age?,
                })
            }
        }
    }

    fn rule(&mut self, path: &str, raw: RawRule, known: &[String]) -> Option<Rule> {
        let mut ok = true;
        let mut matcher = RuleMatch::default();
        if let Some(raw_match) = raw.matcher {
            for (name, value) in raw_match.headers.unwrap_or_default() {
                let at = format!("{path}.match.headers.{name}");
                let header = self.header_name(&at, &name);
                let value = self.text(&at, &value);
                if let Some(text) = &value {
                    if HeaderValue::from_str(text).is_err() {
                        self.err(
                            at.clone(),
                            format!(
                                "`{text}` is not a valid header value: use visible ASCII characters and spaces"
                            ),
                        );
                        ok = false;
                    }
                }
                match header {
                    Some(header) if matcher.headers.iter().any(|(h, _)| *h == header) => {
                        self.err(
                            at,
                            format!(
                                "header `{name}` is listed twice (header names ignore case): keep one"
                            ),
                        );
                        ok = false;
                    }
                    Some(header) => match value {
                        Some(value) => matcher.headers.push((header, value)),
                        None => ok = false,
                    },
                    None => ok = false,
                }
            }
            for (index, name) in raw_match
                .headers_present
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let at = format!("{path}.match.headers_present[{index}]");
                match self.header_name(&at, name) {
                    Some(header) => matcher.present.push(header),
                    None => ok = false,
                }
            }
            for (name, value) in raw_match.headers_regex.unwrap_or_default() {
                let at = format!("{path}.match.headers_regex.{name}");
                let header = self.header_name(&at, &name);
                let pattern = self.text(&at, &value);
                if let Some(pattern) = &pattern {
                    if let Err(err) = regex::Regex::new(pattern) {
                        let first = err.to_string();
                        let first = first.lines().last().unwrap_or("invalid").trim().to_string();
                        self.err(
                            at.clone(),
                            format!("`{pattern}` is not a valid regex: {first}"),
                        );
                        ok = false;
                    }
                }
                match (header, pattern) {
                    (Some(header), Some(pattern)) => matcher.regex.push((header, pattern)),
                    _ => ok = false,
                }
            }
            for (name, value) in raw_match.cookies.unwrap_or_default() {
                let at = format!("{path}.match.cookies.{name}");
                ok &= self.cookie_name(&at, &name);
                match self.text(&at, &value) {
                    Some(value) => matcher.cookies.push((name, value)),
                    None => ok = false,
                }
            }
            if let Some(prefix) = raw_match.path_prefix {
                match check_path_prefix(&prefix) {
                    Ok(()) => matcher.path_prefix = Some(prefix),
                    Err(reason) => {
                        self.err(format!("{path}.match.path_prefix"), reason);
                        ok = false;
                    }
                }
            }
        }
        let version = self.version_ref(
            &format!("{path}.version"),
            raw.version.as_deref(),
            "missing version: name the version that matching requests go to",
            known,
        );
        if !ok {
            return None;
        }
        Some(Rule {
            matcher,
            version: version?,
        })
    }

    fn timeouts(&mut self, path: &str, raw: Option<RawTimeouts>) -> Option<Timeouts> {
        let defaults = Timeouts::default();
        let Some(raw) = raw else {
            return Some(defaults);
        };
        let connect = self.positive_duration(
            &format!("{path}.connect"),
            raw.connect.as_ref(),
            defaults.connect,
        );
        let request = self.positive_duration(
            &format!("{path}.request"),
            raw.request.as_ref(),
            defaults.request,
        );
        let idle =
            self.positive_duration(&format!("{path}.idle"), raw.idle.as_ref(), defaults.idle);
        Some(Timeouts {
            connect: connect?,
            request: request?,
            idle: idle?,
        })
    }

    fn health_check(&mut self, path: &str, raw: RawHealthCheck) -> Option<HealthCheck> {
        let probe_path = match self.required(
            &format!("{path}.path"),
            raw.path,
            "missing path: give the path the probe requests, such as /health/readiness",
        ) {
            Some(probe) if probe.starts_with('/') => Some(probe),
            Some(probe) => {
                self.err(
                    format!("{path}.path"),
                    format!(
                        "`{probe}` does not start with `/`: write the path the probe requests, such as /health/readiness"
                    ),
                );
                None
            }
            None => None,
        };
        let interval = self.positive_duration(
            &format!("{path}.interval"),
            raw.interval.as_ref(),
            HEALTH_INTERVAL,
        );
        let timeout = self.positive_duration(
            &format!("{path}.timeout"),
            raw.timeout.as_ref(),
            HEALTH_TIMEOUT,
        );
        if let (Some(interval), Some(timeout)) = (interval, timeout) {
            if timeout > interval {
                self.err(
                    format!("{path}.timeout"),
                    format!(
                        "timeout ({}) is longer than interval ({}): a probe must end before the next one starts; shorten timeout or lengthen interval",
                        humantime::format_duration(timeout),
                        humantime::format_duration(interval)
                    ),
                );
                return None;
            }
        }
        let threshold = |this: &mut Self, name: &str, raw: Option<Scalar>, default: u32| match raw {
            None => Some(default),
            Some(n) => this.int_in(&format!("{path}.{name}"), &n, 1, 100, "probes in a row"),
        };
        let healthy_threshold = threshold(self, "healthy_threshold", raw.healthy_threshold, 1);
        let unhealthy_threshold =
            threshold(self, "unhealthy_threshold", raw.unhealthy_threshold, 3);
        let mut expected_statuses = Vec::new();
        let mut statuses_ok = true;
        for (k, status) in raw.expected_statuses.unwrap_or_default().iter().enumerate() {
            match status_range(status) {
                Some(range) => expected_statuses.push(range),
                None => {
                    self.err(
                        format!("{path}.expected_statuses[{k}]"),
                        format!("`{status}` is not a status (200) or a range (200-299) within 100..=599"),
                    );
                    statuses_ok = false;
                }
            }
        }
        if expected_statuses.is_empty() {
            expected_statuses.push((200, 399));
        }
        let initial_healthy = match raw.initial {
            None => Some(None),
            Some(word) => self
                .word(
                    &format!("{path}.initial"),
                    &word,
                    "initial state",
                    &["healthy", "unhealthy"],
                )
                .map(|i| Some(i == 0)),
        };
        if !statuses_ok {
            return None;
        }
        Some(HealthCheck {
            path: probe_path?,
            interval: interval?,
            timeout: timeout?,
            healthy_threshold: healthy_threshold?,
            unhealthy_threshold: unhealthy_threshold?,
            expected_statuses,
            initial_healthy: initial_healthy?,
        })
    }

    fn outlier(&mut self, path: &str, raw: Option<RawOutlier>) -> Option<Outlier> {
        let defaults = Outlier::default();
        let Some(raw) = raw else {
            return Some(defaults);
        };
        let consecutive_failures = match raw.consecutive_failures {
            None => Some(defaults.consecutive_failures),
            Some(n) => self.int_in(
                &format!("{path}.consecutive_failures"),
                &n,
                0,
                10_000,
                "failures in a row before an ejection; 0 turns ejection off",
            ),
        };
        let base_ejection = self.positive_duration(
            &format!("{path}.base_ejection"),
            raw.base_ejection.as_ref(),
            defaults.base_ejection,
        );
        let max_ejection = self.positive_duration(
            &format!("{path}.max_ejection"),
            raw.max_ejection.as_ref(),
            defaults.max_ejection,
        );
        let max_ejected_percent = match raw.max_ejected_percent {
            None => Some(defaults.max_ejected_percent),
            Some(n) => self.int_in(
                &format!("{path}.max_ejected_percent"),
                &n,
                0,
                100,
                "percent of a version's endpoints that may be ejected at once",
            ),
        };
        if let (Some(base), Some(max)) = (base_ejection, max_ejection) {
            if max < base {
                self.err(
                    format!("{path}.max_ejection"),
                    format!(
                        "max_ejection ({}) is shorter than base_ejection ({}): make it at least as long",
                        humantime::format_duration(max),
                        humantime::format_duration(base)
                    ),
                );
                return None;
            }
        }
        Some(Outlier {
            consecutive_failures: consecutive_failures?,
            count_5xx: raw.count_5xx.unwrap_or(defaults.count_5xx),
            base_ejection: base_ejection?,
            max_ejection: max_ejection?,
            max_ejected_percent: max_ejected_percent?,
        })
    }

    fn guard(&mut self, path: &str, raw: RawGuard, known: &[String]) -> Option<Guard> {
        let baseline = self.version_ref(
            &format!("{path}.baseline"),
            raw.baseline.as_deref(),
            "missing baseline: name the version that traffic goes back to when another one trips",
            known,
        );
        let interval = self.positive_duration(
            &format!("{path}.interval"),
            raw.interval.as_ref(),
            GUARD_INTERVAL,
        );
        let window =
            self.positive_duration(&format!("{path}.window"), raw.window.as_ref(), GUARD_WINDOW);
        let mut ok = true;
        if let (Some(interval), Some(window)) = (interval, window) {
            if window < interval {
                self.err(
                    format!("{path}.window"),
                    format!(
                        "window ({}) is shorter than interval ({}): each verdict would miss requests; make window at least interval",
                        humantime::format_duration(window),
                        humantime::format_duration(interval)
                    ),
                );
                ok = false;
            }
        }
        let min_requests = match raw.min_requests {
            None => Some(GUARD_MIN_REQUESTS),
            Some(n) => self.int_in(
                &format!("{path}.min_requests"),
                &n,
                1,
                1_000_000_000,
                "requests in the window before the guard gives a verdict",
            ),
        };
        let consecutive = match raw.consecutive {
            None => Some(GUARD_CONSECUTIVE),
            Some(n) => self.int_in(
                &format!("{path}.consecutive"),
                &n,
                1,
                1000,
                "bad verdicts in a row before a trip",
            ),
        };
        let max_error_rate = self.fraction(
            &format!("{path}.max_error_rate"),
            raw.max_error_rate.as_ref(),
        );
        let max_error_rate_increase = self.fraction(
            &format!("{path}.max_error_rate_increase"),
            raw.max_error_rate_increase.as_ref(),
        );
        let ratio_path = format!("{path}.max_latency_ratio");
        let max_latency_ratio = match raw.max_latency_ratio.as_ref() {
            None => Ok(None),
            Some(raw) => match self.number(&ratio_path, raw, "write a ratio such as 1.5") {
                None => Err(()),
                Some(ratio) if ratio >= 1.0 => Ok(Some(ratio)),
                Some(_) => {
                    self.err(
                        ratio_path,
                        format!(
                            "`{raw}` is below 1: max_latency_ratio is the version's p95 over the baseline's, such as 1.5 for 50% slower"
                        ),
                    );
                    Err(())
                }
            },
        };
        let max_p95_latency = self.optional_positive_duration(
            &format!("{path}.max_p95_latency"),
            raw.max_p95_latency.as_ref(),
        );
        let max_p99_latency = self.optional_positive_duration(
            &format!("{path}.max_p99_latency"),
            raw.max_p99_latency.as_ref(),
        );
        let thresholds = [
            raw.max_error_rate.is_some(),
            raw.max_p95_latency.is_some(),
            raw.max_p99_latency.is_some(),
            raw.max_error_rate_increase.is_some(),
            raw.max_latency_ratio.is_some(),
        ];
        if !thresholds.contains(&true) {
            self.err(
                path,
                "no thresholds: set at least one of max_error_rate, max_p95_latency, max_p99_latency, max_error_rate_increase or max_latency_ratio, or the guard can never trip",
            );
            ok = false;
        }
        let on_revert = match raw.on_revert {
            None => Some(OnRevert::default()),
            Some(word) => self
                .word(
                    &format!("{path}.on_revert"),
                    &word,
                    "on_revert",
                    &["drain", "evict"],
                )
                .map(|i| {
                    if i == 0 {
                        OnRevert::Drain
                    } else {
                        OnRevert::Evict
                    }
                }),
        };
        let wilson = match raw.error_rate_test {
            None => Some(false),
            Some(word) => self
                .word(
                    &format!("{path}.error_rate_test"),
                    &word,
                    "error_rate_test",
                    &["threshold", "wilson"],
                )
                .map(|i| i == 1),
        };
        let webhook = match raw.webhook {
            None => Ok(None),
            Some(text) => self
                .url(&format!("{path}.webhook"), &text)
                .map(Some)
                .ok_or(()),
        };
        if !ok {
            return None;
        }
        Some(Guard {
            baseline: baseline?,
            interval: interval?,
            window: window?,
            min_requests: min_requests?,
            max_error_rate: max_error_rate.ok()?,
            max_p95_latency: max_p95_latency.ok()?,
            max_p99_latency: max_p99_latency.ok()?,
            max_error_rate_increase: max_error_rate_increase.ok()?,
            max_latency_ratio: max_latency_ratio.ok()?,
            consecutive: consecutive?,
            on_revert: on_revert?,
            webhook: webhook.ok()?,
            wilson: wilson?,
        })
    }

    /// `baseline`: `None` without a guard, `Some(None)` with an invalid one.
    fn rollout(
        &mut self,
        path: &str,
        raw: RawRollout,
        known: &[String],
        baseline: Option<Option<usize>>,
    ) -> Option<Rollout> {
        let candidate = self.version_ref(
            &format!("{path}.candidate"),
            raw.candidate.as_deref(),
            "missing candidate: name the version being rolled out",
            known,
        );
        let mut ok = true;
        match (baseline, candidate) {
            (None, _) => {
                self.err(
                    path,
                    "a rollout needs a guard: add `guard:` with a baseline (where the rest of the traffic goes) and a threshold, so each step is judged",
                );
                ok = false;
            }
            (Some(Some(baseline)), Some(candidate)) if baseline == candidate => {
                self.err(
                    format!("{path}.candidate"),
                    format!(
                        "candidate `{}` is also the guard's baseline: roll out another version",
                        raw.candidate.unwrap_or_default()
                    ),
                );
                ok = false;
            }
            _ => {}
        }
        // The rollout's `hold` is the default for steps written without
        // one; it may be left out when every step carries its own.
        let default_hold = raw
            .hold
            .as_ref()
            .map(|hold| self.hold(&format!("{path}.hold"), hold).ok_or(()));
        let steps = self.steps(
            &format!("{path}.steps"),
            raw.steps,
            default_hold.and_then(Result::ok),
            path,
            default_hold.is_some(),
        );
        let gate = match raw.gate {
            None => Ok(None),
            Some(text) => self.url(&format!("{path}.gate"), &text).map(Some).ok_or(()),
        };
        if !ok || matches!(default_hold, Some(Err(()))) {
            return None;
        }
        Some(Rollout {
            candidate: candidate?,
            steps: steps?,
            gate: gate.ok()?,
        })
    }

    /// A hold: a positive duration, or `manual` (wait for `veer promote`).
    fn hold(&mut self, path: &str, raw: &Scalar) -> Option<Hold> {
        if matches!(raw, Scalar::Text(text) if text == "manual") {
            return Some(Hold::Manual);
        }
        self.positive_duration(path, Some(raw), Duration::ZERO)
            .map(Hold::For)
    }

    /// `default_hold`: the rollout's own `hold`, for bare steps; `hold_written`
    /// says whether it was written at all (an invalid one is reported already).
    fn steps(
        &mut self,
        path: &str,
        raw: Option<Vec<RawStep>>,
        default_hold: Option<Hold>,
        rollout_path: &str,
        hold_written: bool,
    ) -> Option<Vec<Step>> {
        let raw = raw.unwrap_or_default();
        if raw.is_empty() {
            self.err(
                path,
                "no steps: list the candidate's percentages of traffic, ending at 100, such as [10, 25, 50, 100]",
            );
            return None;
        }
        let mut ok = true;
        let mut missing_hold = false;
        let mut steps: Vec<Step> = Vec::new();
        for (k, step) in raw.iter().enumerate() {
            let at = format!("{path}[{k}]");
            let (percent, hold, percent_at) = match step {
                RawStep::Plain(percent) => (Some(percent), None, at.clone()),
                RawStep::Detailed(map) => {
                    if map.weight.is_none() {
                        self.err(
                            &at,
                            "missing weight: give the candidate's percentage at this step, such as {weight: 25, hold: 10m}",
                        );
                        ok = false;
                    }
                    (
                        map.weight.as_ref(),
                        map.hold.as_ref(),
                        format!("{at}.weight"),
                    )
                }
            };
            let hold = match hold {
                Some(raw) => {
                    let hold = self.hold(&format!("{at}.hold"), raw);
                    ok &= hold.is_some();
                    hold
                }
                None if default_hold.is_some() => default_hold,
                None => {
                    // Reported once, at the rollout, below.
                    missing_hold |= !hold_written;
                    ok = false;
                    None
                }
            };
            let Some(percent) = percent else { continue };
            let Some(percent) = self.int(&percent_at, percent) else {
                ok = false;
                continue;
            };
            if !(1..=100).contains(&percent) {
                self.err(
                    percent_at,
                    format!("step {percent} is outside 1..=100: steps are percentages of traffic"),
                );
                ok = false;
                continue;
            }
            let percent = u32::try_from(percent).unwrap_or(100);
            if let Some(previous) = steps.last() {
                if percent <= previous.percent {
                    self.err(
                        &percent_at,
                        format!(
                            "step {percent} is not above the previous step {}: steps must be strictly increasing",
                            previous.percent
                        ),
                    );
                    ok = false;
                }
            }
            steps.push(Step {
                percent,
                hold: hold.unwrap_or(Hold::Manual),
            });
        }
        if missing_hold {
            self.err(
                format!("{rollout_path}.hold"),
                "missing hold: say how long each step must stay healthy, such as `hold: 10m`, or give every step its own, such as {weight: 10, hold: 30m}",
            );
        }
        // Judged on the last step as written, even when earlier steps are bad.
        let (last, last_at) = match raw.last() {
            Some(RawStep::Plain(Scalar::Int(n))) => {
                (Some(*n), format!("{path}[{}]", raw.len() - 1))
            }
            Some(RawStep::Detailed(RawStepMap {
                weight: Some(Scalar::Int(n)),
                ..
            })) => (Some(*n), format!("{path}[{}].weight", raw.len() - 1)),
            _ => (None, String::new()),
        };
        if matches!(last, Some(n) if (1..100).contains(&n)) {
            self.err(
                last_at,
                "the last step must be 100: a rollout ends with all traffic on the candidate",
            );
            ok = false;
        }
        ok.then_some(steps)
    }

    // ----- field helpers -----------------------------------------------------

    /// Checks a service, version or listener name; true when valid.
    fn name(&mut self, path: &str, name: &str, what: &str) -> bool {
        if name.is_empty() {
            self.err(path, format!("empty {what} name: {NAME_RULE}"));
            return false;
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            self.err(
                path,
                format!("{what} name `{name}` contains `{bad}`: {NAME_RULE}"),
            );
            return false;
        }
        true
    }

    /// Resolves a reference to a version; `missing` is the reason when the
    /// field is absent.
    fn version_ref(
        &mut self,
        path: &str,
        name: Option<&str>,
        missing: &str,
        known: &[String],
    ) -> Option<usize> {
        let name = self.required(path, name, missing)?;
        if let Some(index) = known.iter().position(|k| k == name) {
            return Some(index);
        }
        let mut listed: Vec<String> = Vec::new();
        for k in known.iter().filter(|k| !k.is_empty()) {
            let quoted = format!("`{k}`");
            if !listed.contains(&quoted) {
                listed.push(quoted);
            }
        }
        let listed = listed.join(", ");
        let reason = if listed.is_empty() {
            format!("unknown version `{name}`: this service has no valid versions")
        } else {
            format!("unknown version `{name}`: this service's versions are {listed}")
        };
        self.err(path, reason);
        None
    }

    fn header_name(&mut self, path: &str, name: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) => Some(header),
            Err(_) => {
                self.err(
                    path,
                    format!(
                        "`{name}` is not a valid header name: use letters, digits and `-`, such as x-user-id"
                    ),
                );
                None
            }
        }
    }

    fn cookie_name(&mut self, path: &str, name: &str) -> bool {
        // RFC 6265: a cookie name is an RFC 7230 token.
        let is_token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !is_token {
            self.err(
                path,
                format!(
                    "`{name}` is not a valid cookie name: use letters, digits and `-` or `_`, such as session"
                ),
            );
        }
        is_token
    }

    /// A non-empty filesystem path.
    fn path_field(&mut self, path: &str, value: &str, hint: &str) -> Option<PathBuf> {
        if value.trim().is_empty() {
            self.err(path, format!("empty path: {hint}"));
            return None;
        }
        Some(PathBuf::from(value))
    }

    /// Text that must be written as text: `revision: 1.10` would be read as
    /// the number 1.1, so numbers and booleans are refused.
    fn text(&mut self, path: &str, raw: &Scalar) -> Option<String> {
        match raw {
            Scalar::Text(text) => Some(text.clone()),
            other => {
                self.err(
                    path,
                    format!(
                        "`{other}` was read as a {}, not text: put it in quotes so it is kept exactly as written",
                        if matches!(other, Scalar::Bool(_)) { "boolean" } else { "number" }
                    ),
                );
                None
            }
        }
    }

    fn int(&mut self, path: &str, raw: &Scalar) -> Option<i128> {
        match raw {
            Scalar::Int(n) => Some(*n),
            other => {
                self.err(path, format!("`{other}` is not a whole number"));
                None
            }
        }
    }

    /// A finite number; integers are taken as floats. `hint` says what to
    /// write instead.
    fn number(&mut self, path: &str, raw: &Scalar, hint: &str) -> Option<f64> {
        match raw {
            // Precision beyond 2^53 does not matter for a threshold.
            #[allow(clippy::cast_precision_loss)]
            Scalar::Int(n) => Some(*n as f64),
            Scalar::Float(n) if n.is_finite() => Some(*n),
            other => {
                self.err(path, format!("`{other}` is not a number: {hint}"));
                None
            }
        }
    }

    /// One of `choices`, by index.
    fn word(&mut self, path: &str, raw: &Scalar, what: &str, choices: &[&str]) -> Option<usize> {
        if let Scalar::Text(text) = raw {
            if let Some(index) = choices.iter().position(|c| c == text) {
                return Some(index);
            }
        }
        let listed = choices
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(" or ");
        self.err(path, format!("unknown {what} `{raw}`: expected {listed}"));
        None
    }

    fn duration(&mut self, path: &str, raw: &Scalar) -> Option<Duration> {
        match parse_duration(&raw.to_string()) {
            Ok(duration) => Some(duration),
            Err(reason) => {
                self.err(path, reason);
                None
            }
        }
    }

    /// A duration above zero, or `default` when omitted.
    fn positive_duration(
        &mut self,
        path: &str,
        raw: Option<&Scalar>,
        default: Duration,
    ) -> Option<Duration> {
        match raw {
            None => Some(default),
            Some(raw) => match self.duration(path, raw)? {
                Duration::ZERO => {
                    self.err(
                        path,
                        format!("`{raw}` is zero: this needs a duration above 0"),
                    );
                    None
                }
                duration => Some(duration),
            },
        }
    }

    /// An optional duration above zero: `Err` when present and invalid.
    fn optional_positive_duration(
        &mut self,
        path: &str,
        raw: Option<&Scalar>,
    ) -> Result<Option<Duration>, ()> {
        match raw {
            None => Ok(None),
            Some(raw) => self
                .positive_duration(path, Some(raw), Duration::ZERO)
                .map(Some)
                .ok_or(()),
        }
    }

    /// An optional fraction in [0, 1]: `Err` when present and invalid.
    fn fraction(&mut self, path: &str, raw: Option<&Scalar>) -> Result<Option<f64>, ()> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        match self.number(path, raw, "write a fraction, such as 0.05 for 5%") {
            None => Err(()),
            Some(n) if (0.0..=1.0).contains(&n) => Ok(Some(n)),
            Some(_) => {
                self.err(
                    path,
                    format!("`{raw}` is outside 0..=1: write a fraction, such as 0.05 for 5%"),
                );
                Err(())
            }
        }
    }

    /// A whole number in `min..=max`, converted to the field's type.
    fn int_in<T: TryFrom<i128>>(
        &mut self,
        path: &str,
        raw: &Scalar,
        min: i128,
        max: i128,
        what: &str,
    ) -> Option<T> {
        let n = self.int(path, raw)?;
        if n < min || n > max {
            self.err(path, format!("{n} is outside {min}..={max} ({what})"));
            return None;
        }
        T::try_from(n).ok()
    }

    fn url(&mut self, path: &str, text: &str) -> Option<Uri> {
        match parse_http_url(text) {
            Ok(uri) => Some(uri),
            Err(reason) => {
                self.err(path, reason);
                None
            }
        }
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

// ----- free parsers (pure, unit-tested) ---------------------------------------

/// Whether two bound addresses would collide: same port and the same IP, or
/// either is a wildcard (`0.0.0.0`, `[::]`), which also takes the port on
/// every address. Port 0 asks the OS for a free port and never collides.
pub(crate) fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// An address to listen on: `IP:PORT`, any IP (wildcards too), port 0 allowed.
pub(crate) fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse::<SocketAddr>()
        .map_err(|_| address_error(text, "127.0.0.1:8080"))
}

/// An upstream endpoint: `IP:PORT` that can be connected to.
pub(crate) fn parse_endpoint(text: &str) -> Result<SocketAddr, String> {
    let address = text
        .trim()
        .parse::<SocketAddr>()
        .map_err(|_| address_error(text, "127.0.0.1:18081"))?;
    if address.port() == 0 {
        return Err(format!(
            "`{text}` has port 0: give the port the endpoint listens on"
        ));
    }
    if address.ip().is_unspecified() {
        return Err(format!(
            "`{text}` is a wildcard address, which cannot be connected to: use the endpoint's own IP, such as 127.0.0.1"
        ));
    }
    Ok(address)
}

/// Explains why `text` is not `IP:PORT`, guessing the usual mistakes.
fn address_error(text: &str, example: &str) -> String {
    let text = text.trim();
    if text.contains("://") {
        return format!(
            "`{text}` has a scheme: expected IP:PORT such as {example}, without http://"
        );
    }
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        return format!("`{text}` is only a port: expected IP:PORT such as {example}");
    }
    if text.parse::<IpAddr>().is_ok() {
        return format!(
            "`{text}` has no port: expected IP:PORT such as {example} (IPv6 as [::1]:8080)"
        );
    }
    if let Some((host, port)) = text.rsplit_once(':') {
        let is_name = !host.is_empty()
            && host.chars().any(|c| c.is_ascii_alphabetic())
            && !host.contains(':');
        if is_name && port.parse::<u16>().is_ok() {
            return format!(
                "`{text}` names a host: DNS names are not supported, expected IP:PORT such as {example}"
            );
        }
    }
    format!("`{text}` is not an address: expected IP:PORT such as {example}")
}

/// A service host pattern: `name`, `*.suffix`, an IP or a bracketed IPv6.
/// Lowercased, since hosts compare without case.
pub(crate) fn parse_host(text: &str) -> Result<HostMatch, String> {
    let host = text.to_ascii_lowercase();
    if host.is_empty() {
        return Err("empty host: remove it (omit hosts to match any host)".to_string());
    }
    if host == "*" {
        return Err("`*` alone is not a host pattern: omit hosts to match any host".to_string());
    }
    if host.contains("://") {
        return Err(format!(
            "`{text}` has a scheme: write the host name alone, such as example.com"
        ));
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match inner.parse::<Ipv6Addr>() {
            Ok(_) => Ok(HostMatch::Exact(host)),
            Err(_) => Err(format!(
                "`{text}` is not a bracketed IPv6 address such as [::1]"
            )),
        };
    }
    if host.parse::<Ipv6Addr>().is_ok() {
        return Err(format!(
            "`{text}`: write an IPv6 host in brackets, as in [{host}]"
        ));
    }
    if let Some((name, port)) = host.rsplit_once(':') {
        if port.parse::<u16>().is_ok() {
            return Err(format!(
                "`{text}` has a port: hosts are matched without the port; write `{name}`"
            ));
        }
    }
    let (suffix, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host.as_str()),
    };
    if name.contains('*') {
        return Err(format!(
            "`{text}`: `*` is allowed only as the whole first label, as in *.example.com"
        ));
    }
    let labels_ok = name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !labels_ok {
        return Err(format!(
            "`{text}` is not a host name: use letters, digits, `-` and dots, such as api.example.com"
        ));
    }
    Ok(if suffix {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_string())
    })
}

/// The host pattern as the user would write it.
fn host_text(host: &HostMatch) -> String {
    match host {
        HostMatch::Exact(name) => name.clone(),
        HostMatch::Suffix(suffix) => format!("*{suffix}"),
    }
}

/// A path prefix for matching requests.
fn check_path_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!(
            "`{prefix}` does not start with `/`: write a path prefix such as /api"
        ));
    }
    if let Some(bad) = prefix
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#'))
    {
        return Err(format!(
            "`{prefix}` contains {bad:?}: a path prefix is a URL path, without query, fragment or spaces"
        ));
    }
    Ok(())
}

/// A TLS server name for origination: a DNS name or an IP address.
fn check_server_name(text: &str) -> Result<(), String> {
    if text.contains("://") || text.contains('/') {
        return Err(format!(
            "`{text}` is not a server name: write the name alone, such as api.internal"
        ));
    }
    if let Some((name, port)) = text.rsplit_once(':') {
        if port.parse::<u16>().is_ok() && !name.contains(':') {
            return Err(format!(
                "`{text}` has a port: write the name alone, such as `{name}`"
            ));
        }
    }
    match rustls::pki_types::ServerName::try_from(text) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "`{text}` is not a DNS name or IP address: write the name the endpoints' certificates carry, such as api.internal"
        )),
    }
}

/// A webhook or gate URL.
pub(crate) fn parse_http_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|_| format!("`{text}` is not a URL: {URL_EXAMPLE}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(format!("`{text}` has scheme `{other}`: {URL_EXAMPLE}"));
        }
        None => return Err(format!("`{text}` has no scheme: {URL_EXAMPLE}")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host: {URL_EXAMPLE}"));
    }
    Ok(uri)
}

/// `200` or `"200-299"` as an inclusive range within 100..=599.
fn status_range(raw: &Scalar) -> Option<(u16, u16)> {
    let (low, high) = match raw {
        Scalar::Int(n) => (u16::try_from(*n).ok()?, u16::try_from(*n).ok()?),
        Scalar::Text(text) => {
            let (a, b) = text.split_once('-')?;
            (a.trim().parse().ok()?, b.trim().parse().ok()?)
        }
        _ => return None,
    };
    ((100..=599).contains(&low) && (100..=599).contains(&high) && low <= high)
        .then_some((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn overlap_rules() {
        assert!(overlaps(addr("127.0.0.1:80"), addr("127.0.0.1:80")));
        assert!(overlaps(addr("0.0.0.0:80"), addr("127.0.0.1:80")));
        assert!(overlaps(addr("127.0.0.1:80"), addr("[::]:80")));
        assert!(!overlaps(addr("127.0.0.1:80"), addr("127.0.0.2:80")));
        assert!(!overlaps(addr("127.0.0.1:80"), addr("127.0.0.1:81")));
        assert!(!overlaps(addr("127.0.0.1:0"), addr("127.0.0.1:0")));
        assert!(!overlaps(addr("0.0.0.0:0"), addr("0.0.0.0:0")));
    }

    #[test]
    fn hosts() {
        assert_eq!(
            parse_host("Agent-Match"),
            Ok(HostMatch::Exact("agent-match".into()))
        );
        assert_eq!(
            parse_host("*.Example.com"),
            Ok(HostMatch::Suffix(".example.com".into()))
        );
        assert_eq!(parse_host("[::1]"), Ok(HostMatch::Exact("[::1]".into())));
        assert_eq!(
            parse_host("10.0.0.1"),
            Ok(HostMatch::Exact("10.0.0.1".into()))
        );
        for bad in [
            "", "*", "a.*.com", "*a.com", "a..b", "x:80", "::1", "http://x", "a b",
        ] {
            assert!(parse_host(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            parse_host("example.com:8080"),
            Err("`example.com:8080` has a port: hosts are matched without the port; write `example.com`".into())
        );
    }

    #[test]
    fn endpoints() {
        assert_eq!(parse_endpoint("127.0.0.1:80"), Ok(addr("127.0.0.1:80")));
        assert_eq!(parse_endpoint("[::1]:80"), Ok(addr("[::1]:80")));
        assert_eq!(
            parse_endpoint("backend:8080"),
            Err("`backend:8080` names a host: DNS names are not supported, expected IP:PORT such as 127.0.0.1:18081".into())
        );
        assert_eq!(
            parse_endpoint("127.0.0.1"),
            Err("`127.0.0.1` has no port: expected IP:PORT such as 127.0.0.1:18081 (IPv6 as [::1]:8080)".into())
        );
        assert_eq!(
            parse_endpoint("http://127.0.0.1:80"),
            Err("`http://127.0.0.1:80` has a scheme: expected IP:PORT such as 127.0.0.1:18081, without http://".into())
        );
        assert!(parse_endpoint("127.0.0.1:0").is_err());
        assert!(parse_endpoint("0.0.0.0:80").is_err());
        assert!(parse_endpoint("127.0.0.1:99999").is_err());
    }

    #[test]
    fn urls() {
        assert!(parse_http_url("http://127.0.0.1:9000/hooks/veer").is_ok());
        assert!(parse_http_url("https://example.com/x").is_ok());
        assert_eq!(
            parse_http_url("ftp://x/y"),
            Err("`ftp://x/y` has scheme `ftp`: expected an http:// or https:// URL such as http://127.0.0.1:9000/hooks/veer".into())
        );
        assert!(parse_http_url("/hooks/veer").is_err());
        assert!(parse_http_url("not a url").is_err());
    }

    #[test]
    fn path_prefixes() {
        assert!(check_path_prefix("/").is_ok());
        assert!(check_path_prefix("/api/v1").is_ok());
        assert!(check_path_prefix("api").is_err());
        assert!(check_path_prefix("/a?b").is_err());
        assert!(check_path_prefix("/a b").is_err());
    }
}
