//! Endpoints written `NAME:PORT`: every address the name resolves to (A and
//! AAAA) is an endpoint. Each name has one refresh task that asks again when
//! the answer's TTL runs out, held within `dns.min_ttl..=dns.max_ttl` (the
//! reference points: NGINX's `resolver valid=`, which replaces the TTL, and
//! Envoy's `STRICT_DNS` with `respect_dns_ttl`, which follows it above a
//! floor). A lookup that fails or finds no address keeps the last good
//! addresses and is asked again sooner (from `min_ttl`, doubling to
//! `max_ttl`); a name that never resolved has no address.
//!
//! When a name's addresses change, `Names::changed` wakes the control actor,
//! which publishes a snapshot built from the new set: new addresses join as
//! endpoints a reload adds would, gone ones drain as a reload's removals do.
//! Nothing here is on the request path: the snapshot holds the endpoints.
//!
//! Names are resolved once before the first snapshot and before a reload's
//! (`Names::prime`), so a version named by DNS has its endpoints from its
//! first request on. Depends on `config` and `telemetry` (the lookup
//! counters), and on hickory-resolver.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol as Transport;
use hickory_resolver::{Name, ResolveError, TokioResolver};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::config::{Config, Dns};
use crate::telemetry::{Counter, Telemetry};

/// Every name the config lists, with its last answer. One per control
/// plane; shared by the snapshot's builder, the refresh tasks and `/status`.
#[derive(Default)]
pub struct Names {
    // Taken by `prime` (start and reloads), by the snapshot's builder, and
    // by a refresh task when a lookup ends: never by a request.
    inner: Mutex<Inner>,
    changed: Notify,
}

#[derive(Default)]
struct Inner {
    /// The settings the resolver was built from, and the resolver.
    resolving: Option<(Dns, Arc<Resolving>)>,
    names: HashMap<String, Arc<NameEntry>>,
}

/// A resolver and the TTL bounds it is used with.
struct Resolving {
    /// `Err`: the resolver could not be set up (resolv.conf unreadable and
    /// no `nameservers`); every lookup fails with that reason.
    resolver: Result<TokioResolver, String>,
    min_ttl: Duration,
    max_ttl: Duration,
}

/// One name: its last answer, and its refresh task.
#[derive(Debug)]
pub struct NameEntry {
    host: String,
    // Written by the name's task after each lookup, read by the snapshot's
    // builder and `/status`: never by a request.
    state: Mutex<Resolution>,
    task: Mutex<Option<AbortHandle>>,
}

/// What is known of one name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolution {
    /// The last good addresses, sorted; empty until the name first resolved.
    pub addresses: Vec<IpAddr>,
    /// The last lookup's result; `None` before the first ended.
    pub last: Option<Lookup>,
    /// When the last lookup ended (Unix ms).
    pub last_at_unix_ms: u64,
    /// When the next lookup starts (Unix ms).
    pub next_at_unix_ms: u64,
    /// Failed or empty lookups in a row.
    pub failures: u32,
}

/// How one lookup ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Success,
    /// The name exists with no A or AAAA record, or does not exist.
    Empty(String),
    /// No answer (timeout, SERVFAIL, refused, no nameserver).
    Failure(String),
}

impl Lookup {
    /// The `result` label and `/status` word.
    pub fn word(&self) -> &'static str {
        match self {
            Lookup::Success => "success",
            Lookup::Empty(_) => "empty",
            Lookup::Failure(_) => "failure",
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            Lookup::Success => None,
            Lookup::Empty(reason) | Lookup::Failure(reason) => Some(reason),
        }
    }
}

impl NameEntry {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn resolution(&self) -> Resolution {
        lock(&self.state).clone()
    }

    /// The last good addresses.
    pub fn addresses(&self) -> Vec<IpAddr> {
        lock(&self.state).addresses.clone()
    }

    fn stop(&self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = lock(&self.inner);
        f.debug_struct("Names")
            .field("names", &inner.names.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Names {
    /// Resolves every name of `config` not known yet (all of them when the
    /// `dns` block changed) once, waiting for the answers (each bounded by
    /// the resolver's timeouts), and starts their refresh tasks; stops those
    /// of names `config` no longer lists. Called before the snapshot for
    /// `config` is built, off the request path.
    pub async fn prime(self: &Arc<Self>, config: &Config, telemetry: &Arc<Telemetry>) {
        let wanted: HashSet<String> = config
            .services
            .iter()
            .flat_map(|s| s.versions.iter())
            .flat_map(|v| v.names.iter().map(|n| n.host.clone()))
            .collect();
        let current = lock(&self.inner)
            .resolving
            .as_ref()
            .filter(|(dns, _)| *dns == config.dns)
            .map(|(_, resolving)| Arc::clone(resolving));
        let (resolving, renewed) = match current {
            Some(resolving) => (resolving, false),
            None if wanted.is_empty() => {
                // Nothing to resolve: no resolver (and no read of
                // resolv.conf) for a config of addresses only.
                self.retain(&wanted, telemetry);
                return;
            }
            None => (Arc::new(Resolving::new(&config.dns).await), true),
        };
        let fresh: Vec<Arc<NameEntry>> = {
            let mut inner = lock(&self.inner);
            inner.resolving = Some((config.dns.clone(), Arc::clone(&resolving)));
            wanted
                .iter()
                .filter_map(|host| match inner.names.get(host) {
                    Some(_) if !renewed => None,
                    Some(entry) => {
                        // New settings: ask again now, with the new resolver.
                        entry.stop();
                        Some(Arc::clone(entry))
                    }
                    None => {
                        let entry = Arc::new(NameEntry {
                            host: host.clone(),
                            state: Mutex::new(Resolution::default()),
                            task: Mutex::new(None),
                        });
                        inner.names.insert(host.clone(), Arc::clone(&entry));
                        Some(entry)
                    }
                })
                .collect()
        };
        self.retain(&wanted, telemetry);
        let mut first = Vec::new();
        for entry in fresh {
            let refresh = Refresh {
                counters: telemetry.dns_resolutions(&entry.host),
                entry: Arc::clone(&entry),
                resolving: Arc::clone(&resolving),
                names: Arc::downgrade(self),
            };
            let (done, answered) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(refresh.run(Some(done)));
            *lock(&entry.task) = Some(task.abort_handle());
            // Removed by a later prime meanwhile: its task goes too.
            if !lock(&self.inner)
                .names
                .get(&entry.host)
                .is_some_and(|e| Arc::ptr_eq(e, &entry))
            {
                entry.stop();
            }
            first.push(answered);
        }
        // A nameserver that does not answer must not hold veer's start (or
        // a reload) for long: the names still unanswered then are published
        // when their answer comes.
        let deadline = tokio::time::Instant::now() + first_answer_limit(&config.dns);
        for answered in first {
            let _ = tokio::time::timeout_at(deadline, answered).await;
        }
    }

    /// Stops the names not in `wanted`.
    fn retain(&self, wanted: &HashSet<String>, telemetry: &Telemetry) {
        let mut inner = lock(&self.inner);
        inner.names.retain(|host, entry| {
            let keep = wanted.contains(host);
            if !keep {
                entry.stop();
            }
            keep
        });
        let hosts: Vec<&str> = inner.names.keys().map(String::as_str).collect();
        telemetry.retain_dns(&hosts);
    }

    /// The name's entry, if the config lists it.
    pub fn get(&self, host: &str) -> Option<Arc<NameEntry>> {
        lock(&self.inner).names.get(host).cloned()
    }

    /// Completes once some name's addresses changed since the last time it
    /// completed (a change before anyone waits is kept).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

impl Resolving {
    async fn new(dns: &Dns) -> Resolving {
        let settings = dns.clone();
        // resolv.conf and /etc/hosts are read with blocking calls.
        let resolver = tokio::task::spawn_blocking(move || resolver(&settings))
            .await
            .unwrap_or_else(|e| Err(format!("the resolver's set-up failed: {e}")));
        if let Err(reason) = &resolver {
            tracing::error!("DNS names cannot be resolved: {reason}");
        }
        Resolving {
            resolver,
            min_ttl: dns.min_ttl,
            max_ttl: dns.max_ttl,
        }
    }
}

/// hickory's resolver for `dns`: resolv.conf's nameservers, search domains,
/// `ndots` and attempts, each replaced by what the `dns` block writes.
fn resolver(dns: &Dns) -> Result<TokioResolver, String> {
    let path = dns.resolv_conf_file();
    let file = match &path {
        None => None,
        Some(path) => match std::fs::read(path) {
            Ok(data) => Some(resolv_conf::Config::parse(&data).map_err(|e| {
                format!(
                    "{} is not a valid resolv.conf ({e}): fix it, or set dns.resolv_conf",
                    path.display()
                )
            })?),
            Err(e) => {
                return Err(format!(
                "cannot read {} ({e}): set dns.nameservers, or dns.resolv_conf to a readable file",
                path.display()
            ))
            }
        },
    };
    let servers: Vec<SocketAddr> = if dns.nameservers.is_empty() {
        file.iter()
            .flat_map(|f| f.nameservers.iter())
            .map(|ip| SocketAddr::new(IpAddr::from(ip), 53))
            .collect()
    } else {
        dns.nameservers.clone()
    };
    if servers.is_empty() {
        return Err(format!(
            "{} names no nameserver: add one there, or set dns.nameservers",
            path.as_deref()
                .unwrap_or(std::path::Path::new("resolv.conf"))
                .display()
        ));
    }
    let search: Vec<String> = match &dns.search {
        Some(search) => search.clone(),
        None => file
            .iter()
            .flat_map(|f| f.get_last_search_or_domain())
            .filter(|d| d.as_str() != "--")
            .cloned()
            .collect(),
    };
    let mut config = ResolverConfig::new();
    for server in servers {
        for transport in [Transport::Udp, Transport::Tcp] {
            let mut server = NameServerConfig::new(server, transport);
            // One nameserver's "no such name" is the answer (as glibc takes
            // it), not a reason to ask the next.
            server.trust_negative_responses = true;
            config.add_name_server(server);
        }
    }
    for domain in search {
        let name = Name::from_str_relaxed(&domain)
            .map_err(|e| format!("search domain `{domain}` is not a DNS name: {e}"))?;
        config.add_search(name);
    }
    let mut options = ResolverOpts::default();
    options.ndots = dns
        .ndots
        .map(usize::from)
        .or(file.as_ref().map(|f| f.ndots as usize))
        .unwrap_or(1);
    options.attempts = file.as_ref().map_or(2, |f| f.attempts.max(1) as usize);
    options.timeout = dns.timeout;
    // Both families: every address is an endpoint.
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // The refresh follows the TTL itself: a cache would only answer a
    // refresh with what it already knew.
    options.cache_size = 0;
    options.use_hosts_file = ResolveHosts::Always;
    let mut builder =
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
    *builder.options_mut() = options;
    Ok(builder.build())
}

/// One name's refresh task.
struct Refresh {
    entry: Arc<NameEntry>,
    resolving: Arc<Resolving>,
    names: Weak<Names>,
    /// success, empty, failure.
    counters: [Counter; 3],
}

impl Refresh {
    /// Looks the name up now (then tells `first`), and again each time the
    /// last answer runs out.
    async fn run(self, first: Option<tokio::sync::oneshot::Sender<()>>) {
        self.once().await;
        if let Some(first) = first {
            let _ = first.send(());
        }
        loop {
            let wait = {
                let state = lock(&self.entry.state);
                Duration::from_millis(state.next_at_unix_ms.saturating_sub(unix_ms()))
            };
            tokio::time::sleep(wait).await;
            if self.names.upgrade().is_none() {
                return;
            }
            self.once().await;
        }
    }

    /// One lookup: records its result, wakes the control plane if the
    /// addresses changed, and sets when to ask again.
    async fn once(&self) {
        let outcome = match &self.resolving.resolver {
            Ok(resolver) => lookup(resolver, &self.entry.host).await,
            Err(reason) => Err(Lookup::Failure(reason.clone())),
        };
        let counter = match &outcome {
            Ok(_) => &self.counters[0],
            Err(Lookup::Empty(_)) => &self.counters[1],
            Err(_) => &self.counters[2],
        };
        counter.increment(1);
        let now = unix_ms();
        let (changed, before, after) = {
            let mut state = lock(&self.entry.state);
            let before = state.clone();
            let wait = match outcome {
                Ok((addresses, ttl)) => {
                    state.addresses = addresses;
                    state.last = Some(Lookup::Success);
                    state.failures = 0;
                    ttl.clamp(self.resolving.min_ttl, self.resolving.max_ttl)
                }
                Err(lookup) => {
                    state.last = Some(lookup);
                    state.failures = state.failures.saturating_add(1);
                    retry_after(
                        state.failures,
                        self.resolving.min_ttl,
                        self.resolving.max_ttl,
                    )
                }
            };
            state.last_at_unix_ms = now;
            state.next_at_unix_ms =
                now.saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
            (state.addresses != before.addresses, before, state.clone())
        };
        self.log(&before, &after);
        if changed {
            if let Some(names) = self.names.upgrade() {
                names.changed.notify_one();
            }
        }
    }

    /// Logs a change (of addresses, or of the result), never a repeat.
    fn log(&self, before: &Resolution, after: &Resolution) {
        let name = self.entry.host.as_str();
        let addresses = Shown(&after.addresses);
        match (&before.last, &after.last) {
            (None, Some(Lookup::Success)) => {
                tracing::info!(name, addresses = %addresses, "DNS: the name resolved");
            }
            (_, Some(Lookup::Success)) if before.addresses != after.addresses => {
                tracing::info!(name, addresses = %addresses, "DNS: the name's addresses changed");
            }
            (Some(Lookup::Success), Some(Lookup::Success)) => {}
            (Some(_), Some(Lookup::Success)) => {
                tracing::info!(name, addresses = %addresses, "DNS: the name resolves again");
            }
            (was, Some(now)) if was.as_ref().map(Lookup::word) != Some(now.word()) => {
                let reason = now.error().unwrap_or_default();
                if after.addresses.is_empty() {
                    tracing::warn!(
                        name,
                        result = now.word(),
                        "DNS: the name does not resolve ({reason}); it has no endpoint until it does"
                    );
                } else {
                    tracing::warn!(
                        name,
                        result = now.word(),
                        addresses = %addresses,
                        "DNS: the lookup failed ({reason}); the last good addresses stay in use"
                    );
                }
            }
            _ => {}
        }
    }
}

/// The addresses and TTL of `host`, or why there are none.
async fn lookup(resolver: &TokioResolver, host: &str) -> Result<(Vec<IpAddr>, Duration), Lookup> {
    match resolver.lookup_ip(host).await {
        Ok(found) => {
            let mut addresses: Vec<IpAddr> = found.iter().collect();
            addresses.sort_unstable();
            addresses.dedup();
            if addresses.is_empty() {
                return Err(Lookup::Empty(format!("`{host}` has no A or AAAA record")));
            }
            let ttl = found
                .valid_until()
                .saturating_duration_since(Instant::now());
            Ok((addresses, ttl))
        }
        Err(error) => Err(classify(host, &error)),
    }
}

fn classify(host: &str, error: &ResolveError) -> Lookup {
    use hickory_resolver::proto::op::ResponseCode;
    use hickory_resolver::proto::ProtoErrorKind;
    // An answer that says "no such name" or "no such record" is empty; any
    // other code (SERVFAIL, REFUSED) and no answer at all are failures.
    match error.proto().map(|e| e.kind()) {
        Some(ProtoErrorKind::NoRecordsFound {
            response_code: ResponseCode::NXDomain,
            ..
        }) => Lookup::Empty(format!("`{host}` does not exist (NXDOMAIN)")),
        Some(ProtoErrorKind::NoRecordsFound {
            response_code: ResponseCode::NoError,
            ..
        }) => Lookup::Empty(format!("`{host}` has no A or AAAA record")),
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => Lookup::Failure(format!(
            "lookup of `{host}` failed: the nameserver answered {}",
            response_code.to_str()
        )),
        _ => Lookup::Failure(format!("lookup of `{host}` failed: {error}")),
    }
}

/// How long `prime` waits for first answers: four times the query timeout
/// (a short name may be tried under a few search domains in turn).
fn first_answer_limit(dns: &Dns) -> Duration {
    dns.timeout.saturating_mul(4)
}

/// After `failures` failed lookups in a row: `min_ttl`, doubling, at most
/// `max_ttl`.
fn retry_after(failures: u32, min_ttl: Duration, max_ttl: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    min_ttl.saturating_mul(1 << doublings).min(max_ttl)
}

struct Shown<'a>(&'a [IpAddr]);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, ip) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{ip}")?;
        }
        Ok(())
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every holder leaves the value whole: a panic elsewhere does not spoil it.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_from_min_to_max() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(30));
        let waits: Vec<u64> = (1..=7)
            .map(|n| retry_after(n, min, max).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(retry_after(u32::MAX, min, max), max);
    }

    #[test]
    fn resolver_needs_a_nameserver() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = Dns {
            resolv_conf: Some(dir.path().join("absent.conf")),
            ..Dns::default()
        };
        let err = resolver(&missing).expect_err("no file, no nameservers");
        assert!(
            err.starts_with("cannot read ")
                && err.ends_with("set dns.nameservers, or dns.resolv_conf to a readable file"),
            "{err}"
        );
        let empty = dir.path().join("empty.conf");
        std::fs::write(&empty, "search example.com\n").expect("write");
        let err = resolver(&Dns {
            resolv_conf: Some(empty.clone()),
            ..Dns::default()
        })
        .expect_err("no nameserver line");
        assert!(
            err.ends_with("names no nameserver: add one there, or set dns.nameservers"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn resolv_conf_gives_search_and_ndots() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("resolv.conf");
        std::fs::write(
            &file,
            "nameserver 10.96.0.10\nsearch prod.svc.cluster.local svc.cluster.local\noptions ndots:5\n",
        )
        .expect("write");
        let dns = Dns {
            resolv_conf: Some(file),
            ..Dns::default()
        };
        let built = resolver(&dns).expect("resolver");
        assert_eq!(built.options().ndots, 5);
        let search: Vec<String> = built
            .config()
            .search()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(search, ["prod.svc.cluster.local", "svc.cluster.local"]);
        let servers: Vec<SocketAddr> = built
            .config()
            .name_servers()
            .iter()
            .map(|s| s.socket_addr)
            .collect();
        assert!(servers
            .iter()
            .all(|s| *s == "10.96.0.10:53".parse().expect("addr")));
        // What the block writes replaces the file's.
        let dns = Dns {
            nameservers: vec!["127.0.0.1:5353".parse().expect("addr")],
            search: Some(vec!["example.com".into()]),
            ndots: Some(2),
            ..dns
        };
        let built = resolver(&dns).expect("resolver");
        assert_eq!(built.options().ndots, 2);
        assert_eq!(built.config().search().len(), 1);
        assert!(built
            .config()
            .name_servers()
            .iter()
            .all(|s| s.socket_addr.port() == 5353));
    }
}
