//! Everything the request path reads, built off the path and published as one
//! value through one `ArcSwap` (by `control`, the only writer). A request loads
//! the snapshot once and sees one generation of routes, splits and endpoints.
//!
//! A publish costs what changed: a service whose config, effective weights,
//! latches and endpoint availability are what the previous snapshot was
//! built from keeps that snapshot's part (an `Arc`, shared), and the route
//! table is kept while no service's name, hosts or prefix moved. With
//! thousands of services, a weight change rebuilds one.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;

use crate::config::{
    Config, EndpointName, Guard, HealthCheck, Outlier, Protocol, Rollout, Service, Sticky, Timeouts,
};
use crate::mirror::{Mirror, MirrorRegistry};
use crate::routing::rules::CompiledRule;
use crate::routing::sticky::StickyTable;
use crate::routing::{RouteTable, WeightedSplit};
use crate::telemetry::{Present, StatsRegistry, Telemetry, VersionStats, DEFAULT_WINDOW};
use crate::upstream::dns::NameEntry;
use crate::upstream::{Endpoint, Registry};

#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every publish.
    pub generation: u64,
    pub routes: Arc<RouteTable>,
    pub services: Vec<Arc<ServiceSnapshot>>,
}

#[derive(Debug)]
pub struct ServiceSnapshot {
    pub name: Arc<str>,
    /// `None` when every effective weight is zero: no version takes traffic.
    pub split: Option<WeightedSplit>,
    pub versions: Vec<Arc<VersionSnapshot>>,
    pub timeouts: Timeouts,
    /// The `grpc-status` codes that count as a version's errors.
    pub grpc_errors: crate::grpc::ErrorCodes,
    /// The window the guard and `/status` read figures over.
    pub window: Duration,
    /// The guard's policy; its `baseline` indexes `versions`.
    pub guard: Option<Guard>,
    /// Boxed, as most services have neither: inline they were a third of
    /// the part's own struct, in every part.
    pub rollout: Option<Box<Rollout>>,
    pub health_check: Option<Box<HealthCheck>>,
    pub outlier: Outlier,
    /// A/B rules, first match wins, before weights.
    pub rules: Vec<CompiledRule>,
    pub sticky: Option<StickyRouting>,
    /// Copies of requests for a shadow version, when configured.
    pub mirror: Option<Arc<Mirror>>,
    /// What this part was built from, to tell whether the next build can
    /// keep it.
    built_from: BuiltFrom,
}

#[derive(Debug)]
struct BuiltFrom {
    /// The config's own `Arc`, not a copy: a reload that reused the
    /// service's model (`config::Reuse`) is told unchanged by its pointer.
    service: Arc<Service>,
    effective: Effective,
    /// Whether each endpoint could take requests, version after version in
    /// the order of their `all_endpoints`: one allocation, not one a version.
    available: Box<[bool]>,
}

/// Where a sticky user's key comes from, and its bucket table.
#[derive(Debug)]
pub struct StickyRouting {
    pub key: StickyKey,
    /// `None` when no version has weight.
    pub table: Option<StickyTable>,
}

#[derive(Debug)]
pub enum StickyKey {
    Header(HeaderName),
    Cookie {
        name: String,
        /// `Set-Cookie` attributes after the value, built once.
        attributes: String,
    },
}

/// The weights in force for one service and which versions are latched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effective {
    pub weights: Vec<u32>,
    pub latched: Vec<bool>,
}

#[derive(Debug)]
pub struct VersionSnapshot {
    pub name: Arc<str>,
    pub revision: Arc<str>,
    /// The weight in force (the file's, a rollout step's, or a run-time
    /// override; zero while latched).
    pub weight: u32,
    /// The guard (or an operator) took this revision out of service.
    pub latched: bool,
    /// No endpoint can take requests (probes failing, ejected): its share went
    /// to the guard's baseline.
    pub unavailable: bool,
    pub protocol: Protocol,
    /// Whether the endpoints are reached over TLS (`:scheme https`).
    pub tls: bool,
    /// The endpoints that may take requests now (healthy, not ejected).
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Every endpoint the config lists (and its names resolve to), for
    /// health checks and reports.
    pub all_endpoints: Vec<Arc<Endpoint>>,
    /// The endpoints written `NAME:PORT`, with what is known of each name
    /// (`None`: not looked up yet), for reports.
    pub names: Vec<(EndpointName, Option<Arc<NameEntry>>)>,
    pub stats: Arc<VersionStats>,
}

/// What a snapshot is built from besides the config: the long-lived pieces
/// that outlast snapshots.
pub struct Parts<'a> {
    pub endpoints: &'a mut Registry,
    pub stats: &'a mut StatsRegistry,
    pub telemetry: &'a Telemetry,
    pub mirrors: &'a mut MirrorRegistry,
    /// veer is starting: endpoints count as healthy until probed (unless the
    /// health check says otherwise); endpoints a reload adds wait for a pass.
    pub starting: bool,
    /// The snapshot in force, whose unchanged parts the new one keeps.
    pub previous: Option<&'a Snapshot>,
}

impl Snapshot {
    /// Builds the snapshot for `config`, with `weights(service_index, service)`
    /// giving each service's effective weights (file or run-time), reusing
    /// endpoints and stats that earlier snapshots already had.
    pub fn build(
        generation: u64,
        config: &Config,
        parts: Parts<'_>,
        effective: impl Fn(usize, &Service) -> Effective,
    ) -> Snapshot {
        Snapshot::build_changed(generation, config, parts, effective, None)
    }

    /// As [`Snapshot::build`], told which services may have changed since
    /// `parts.previous` was built: with `Some(changed)`, a service at an
    /// index not listed there has the config and the effective weights its
    /// previous part was built from, and keeps that part without a look,
    /// when the previous snapshot has the same services in the same order.
    /// Endpoint health and names are not vouched for: a change of those is
    /// published with `None`, which looks at every service.
    pub fn build_changed(
        generation: u64,
        config: &Config,
        parts: Parts<'_>,
        effective: impl Fn(usize, &Service) -> Effective,
        changed: Option<&[usize]>,
    ) -> Snapshot {
        let Parts {
            endpoints: registry,
            stats,
            telemetry,
            mirrors,
            starting,
            previous,
        } = parts;
        telemetry.configure(&config.telemetry);
        let now_ms = crate::clock::now_ms();
        // Each service's previous part is looked for at its own index
        // first (a publish rarely moves services); by name when not there.
        let mut previous_by_name: Option<std::collections::HashMap<&str, &Arc<ServiceSnapshot>>> =
            None;
        let mut find_previous = |index: usize, name: &str| {
            let services = &previous?.services;
            if let Some(at) = services.get(index).filter(|s| &*s.name == name) {
                return Some(at);
            }
            previous_by_name
                .get_or_insert_with(|| services.iter().map(|s| (&*s.name, s)).collect())
                .get(name)
                .copied()
        };
        // The parts kept without a look: the previous snapshot's, in place.
        let unchanged: Option<(&[Arc<ServiceSnapshot>], Vec<bool>)> = previous
            .zip(changed)
            .filter(|(previous, _)| {
                previous.services.len() == config.services.len()
                    && previous
                        .services
                        .iter()
                        .zip(&config.services)
                        .all(|(part, service)| *part.name == *service.name)
            })
            .map(|(previous, changed)| {
                let mut unchanged = vec![true; config.services.len()];
                for &index in changed {
                    if let Some(slot) = unchanged.get_mut(index) {
                        *slot = false;
                    }
                }
                (previous.services.as_slice(), unchanged)
            });
        let services: Vec<Arc<ServiceSnapshot>> = config
            .services
            .iter()
            .enumerate()
            .map(|(index, service)| {
                if let Some((parts, unchanged)) = &unchanged {
                    if unchanged[index] {
                        mirrors.keep(service);
                        return Arc::clone(&parts[index]);
                    }
                }
                let inputs = effective(index, service);
                if let Some(kept) = find_previous(index, service.name.as_str())
                    .filter(|kept| kept.can_keep(service, &inputs, now_ms, registry))
                {
                    mirrors.keep(service);
                    return Arc::clone(kept);
                }
                let Effective {
                    mut weights,
                    latched,
                } = inputs.clone();
                let window = service.guard.as_ref().map_or(DEFAULT_WINDOW, |g| g.window);
                let initially_healthy = service
                    .health_check
                    .as_ref()
                    .is_none_or(|h| h.initial_healthy.unwrap_or(starting));
                let slow_start_ms = service
                    .slow_start
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                let all: Vec<Vec<Arc<Endpoint>>> = service
                    .versions
                    .iter()
                    .map(|version| {
                        addresses(version, registry)
                            .into_iter()
                            .map(|addr| {
                                let (endpoint, created) = registry.endpoint(
                                    addr,
                                    version.protocol,
                                    version.tls.as_ref(),
                                    initially_healthy,
                                );
                                endpoint.health.set_slow_start(slow_start_ms);
                                // An endpoint a reload adds in service at once
                                // (no health check) ramps up like any joiner.
                                if created && !starting && endpoint.health.probe_ok() {
                                    endpoint.health.joined(now_ms);
                                }
                                endpoint
                            })
                            .collect()
                    })
                    .collect();
                let available: Vec<Vec<Arc<Endpoint>>> = all
                    .iter()
                    .map(|eps| {
                        eps.iter()
                            .filter(|e| e.health.available(now_ms))
                            .cloned()
                            .collect()
                    })
                    .collect();
                // A version with no endpoint able to serve gives its share to
                // the baseline, as a latch does, rather than failing requests.
                let baseline = service.guard.as_ref().map(|g| g.baseline);
                let mut unavailable = vec![false; service.versions.len()];
                for v in 0..service.versions.len() {
                    if available[v].is_empty() {
                        unavailable[v] = true;
                        if let Some(b) = baseline.filter(|&b| b != v && !available[b].is_empty()) {
                            if weights[v] > 0 {
                                tracing::warn!(
                                    service = %service.name,
                                    version = %service.versions[v].name,
                                    "no endpoint can take requests; its share goes to the baseline"
                                );
                            }
                            weights[b] = weights[b].saturating_add(std::mem::take(&mut weights[v]));
                        }
                    }
                }
                let available_then = all
                    .iter()
                    .flatten()
                    .map(|e| e.health.available(now_ms))
                    .collect();
                let versions = service
                    .versions
                    .iter()
                    .zip(&weights)
                    .enumerate()
                    .map(|(v, (version, &weight))| {
                        let stats = stats.stats(
                            telemetry,
                            &service.name,
                            &version.name,
                            &version.revision,
                            window,
                            service.grpc.max_methods,
                        );
                        stats.set_weight(weight);
                        for endpoint in &all[v] {
                            stats.endpoint_healthy(endpoint.addr()).set(
                                if endpoint.health.available(now_ms) {
                                    1.0
                                } else {
                                    0.0
                                },
                            );
                        }
                        Arc::new(VersionSnapshot {
                            stats,
                            name: version.name.as_str().into(),
                            revision: version.revision.as_str().into(),
                            weight,
                            latched: latched.get(v).copied().unwrap_or(false),
                            unavailable: unavailable[v],
                            protocol: version.protocol,
                            tls: version.tls.is_some(),
                            endpoints: available[v].clone(),
                            all_endpoints: all[v].clone(),
                            names: version
                                .names
                                .iter()
                                .map(|name| (name.clone(), registry.names().get(&name.host)))
                                .collect(),
                        })
                    })
                    .collect();
                let mirror = service.mirror.as_ref().and_then(|m| {
                    mirrors.mirror(
                        service,
                        available.get(m.version).map_or(&[], Vec::as_slice),
                        latched.get(m.version).copied().unwrap_or(false),
                    )
                });
                Arc::new(ServiceSnapshot {
                    mirror,
                    name: service.name.as_str().into(),
                    split: WeightedSplit::new(&weights),
                    versions,
                    timeouts: service.timeouts.clone(),
                    window,
                    guard: service.guard.clone(),
                    rollout: service.rollout.clone().map(Box::new),
                    health_check: service.health_check.clone().map(Box::new),
                    outlier: service.outlier.clone(),
                    grpc_errors: service.grpc.error_codes,
                    rules: service
                        .rules
                        .iter()
                        .filter_map(CompiledRule::compile)
                        .collect(),
                    sticky: service.sticky.as_ref().map(|sticky| {
                        let baseline = service.guard.as_ref().map_or(0, |g| g.baseline);
                        StickyRouting {
                            key: match sticky {
                                Sticky::Header(name) => StickyKey::Header(name.clone()),
                                Sticky::Cookie { name, max_age } => StickyKey::Cookie {
                                    name: name.clone(),
                                    attributes: format!(
                                        "; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
                                        max_age.as_secs()
                                    ),
                                },
                            },
                            table: StickyTable::new(&service.name, &weights, baseline),
                        }
                    }),
                    built_from: BuiltFrom {
                        service: Arc::clone(service),
                        effective: inputs,
                        available: available_then,
                    },
                })
            })
            .collect();
        registry.retain_used();
        stats.retain_used();
        mirrors.retain_used();
        let routes = match (previous, &unchanged) {
            // Kept parts route as they did: only the others are compared.
            (Some(previous), Some((_, unchanged))) => {
                let moved = (0..services.len()).filter(|&i| !unchanged[i]).any(|i| {
                    !same_route(
                        &previous.services[i].built_from.service,
                        &config.services[i],
                    )
                });
                if moved {
                    Arc::new(RouteTable::new(&config.services))
                } else {
                    Arc::clone(&previous.routes)
                }
            }
            (Some(previous), None) if same_routes(&previous.services, &config.services) => {
                Arc::clone(&previous.routes)
            }
            _ => Arc::new(RouteTable::new(&config.services)),
        };
        Snapshot {
            generation,
            routes,
            services,
        }
    }
}

impl ServiceSnapshot {
    /// Whether a build for `service` with `effective` weights would make
    /// this same part: same config, same weights and latches, and every
    /// endpoint as available as it was.
    fn can_keep(
        &self,
        service: &Arc<Service>,
        effective: &Effective,
        now_ms: u64,
        registry: &Registry,
    ) -> bool {
        let from = &self.built_from;
        from.effective == *effective
            && (Arc::ptr_eq(&from.service, service) || *from.service == **service)
            // A name's answer may have changed since: its addresses must be
            // the ones built.
            && service
                .versions
                .iter()
                .zip(&self.versions)
                .filter(|(version, _)| !version.names.is_empty())
                .all(|(version, built)| {
                    addresses(version, registry)
                        .into_iter()
                        .eq(built.all_endpoints.iter().map(|e| e.addr()))
                })
            // The endpoints are this part's own, built with `available`.
            && self
                .versions
                .iter()
                .flat_map(|version| version.all_endpoints.iter())
                .map(|e| e.health.available(now_ms))
                .eq(from.available.iter().copied())
    }
}

/// A version's endpoint addresses: those written, then those of its names,
/// in their last good answer (none before the first).
fn addresses(version: &crate::config::Version, registry: &Registry) -> Vec<std::net::SocketAddr> {
    let mut addresses = version.endpoints.clone();
    for name in &version.names {
        if let Some(entry) = registry.names().get(&name.host) {
            for ip in entry.addresses() {
                let addr = std::net::SocketAddr::new(ip, name.port);
                if !addresses.contains(&addr) {
                    addresses.push(addr);
                }
            }
        }
    }
    addresses
}

/// Whether the route table of `previous` still routes `services`: the same
/// services in the same order with the same names, hosts and prefixes.
fn same_routes(previous: &[Arc<ServiceSnapshot>], services: &[Arc<Service>]) -> bool {
    previous.len() == services.len()
        && previous.iter().zip(services).all(|(before, now)| {
            Arc::ptr_eq(&before.built_from.service, now)
                || same_route(&before.built_from.service, now)
        })
}

/// Whether two services claim the same routes.
fn same_route(before: &Service, now: &Service) -> bool {
    before.name == now.name && before.hosts == now.hosts && before.path_prefix == now.path_prefix
}

impl Snapshot {
    /// Every version of every service, for tickers and reports.
    pub fn versions(&self) -> impl Iterator<Item = &Arc<VersionSnapshot>> {
        self.services.iter().flat_map(|s| s.versions.iter())
    }

    /// Every version and endpoint this snapshot routes to, as telemetry
    /// keeps their series (`Telemetry::retain`).
    pub fn present(&self) -> impl Iterator<Item = Present<'_>> {
        self.services.iter().flat_map(|service| service.present())
    }

    /// What this snapshot changed since `previous`, for telemetry to update
    /// only that (`Telemetry::retain_changed`): a service kept from
    /// `previous` (the same part, shared) has the same series, so only the
    /// services built anew, and those that left, are visited beyond a
    /// pointer comparison.
    pub fn changes_since<'a>(&'a self, previous: &'a Snapshot) -> Changes<'a> {
        let mut changes = Changes::default();
        // Usually the services are in the same order: compare them in
        // place; otherwise by name.
        let in_place = self.services.len() == previous.services.len()
            && self
                .services
                .iter()
                .zip(&previous.services)
                .all(|(now, before)| now.name == before.name);
        let by_name: std::collections::HashMap<&str, &ServiceSnapshot> = if in_place {
            std::collections::HashMap::new()
        } else {
            self.services.iter().map(|s| (&*s.name, &**s)).collect()
        };
        let mut seen = 0;
        for (index, before) in previous.services.iter().enumerate() {
            let now = if in_place {
                self.services.get(index).map(|s| &**s)
            } else {
                by_name.get(&*before.name).copied()
            };
            let Some(now) = now else {
                changes.gone_services.push(&before.name);
                for version in &before.versions {
                    changes.gone.push((&before.name, &version.name));
                }
                continue;
            };
            seen += 1;
            if std::ptr::eq(now, &**before) {
                continue;
            }
            for version in &before.versions {
                if !now.versions.iter().any(|v| v.name == version.name) {
                    changes.gone.push((&before.name, &version.name));
                }
            }
            changes.present.extend(now.present());
        }
        if seen < self.services.len() {
            let before: std::collections::HashSet<&str> =
                previous.services.iter().map(|s| &*s.name).collect();
            for service in &self.services {
                if !before.contains(&*service.name) {
                    changes.present.extend(service.present());
                }
            }
        }
        changes
    }
}

/// See [`Snapshot::changes_since`].
#[derive(Default)]
pub struct Changes<'a> {
    /// Every version of the services built anew or added.
    pub present: Vec<Present<'a>>,
    /// (service, version) of the versions that left.
    pub gone: Vec<(&'a str, &'a str)>,
    /// The services that left.
    pub gone_services: Vec<&'a str>,
}

impl ServiceSnapshot {
    /// This service's versions and endpoints as telemetry keeps them.
    pub fn present(&self) -> impl Iterator<Item = Present<'_>> {
        self.versions
            .iter()
            .enumerate()
            .map(move |(index, version)| Present {
                service: &self.name,
                version: &version.name,
                judged: self.guard.as_ref().is_some_and(|g| g.baseline != index),
                ejects: self.outlier.consecutive_failures > 0,
                rollout: self.rollout.is_some(),
                endpoints: version.all_endpoints.iter().map(|e| e.addr()).collect(),
            })
    }
}
