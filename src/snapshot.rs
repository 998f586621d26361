//! Everything the request path reads, built off the path and published as one
//! value through one `ArcSwap` (by `control`, the only writer). A request loads
//! the snapshot once and sees one generation of routes, splits and endpoints.

use std::sync::Arc;

use std::time::Duration;

use crate::config::{Config, Guard, Protocol, Service, Timeouts};
use crate::routing::{RouteTable, WeightedSplit};
use crate::telemetry::{StatsRegistry, Telemetry, VersionStats, DEFAULT_WINDOW};
use crate::upstream::{Endpoint, Registry};

#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every publish.
    pub generation: u64,
    pub routes: RouteTable,
    pub services: Vec<ServiceSnapshot>,
}

#[derive(Debug)]
pub struct ServiceSnapshot {
    pub name: Arc<str>,
    /// `None` when every effective weight is zero: no version takes traffic.
    pub split: Option<WeightedSplit>,
    pub versions: Vec<Arc<VersionSnapshot>>,
    pub timeouts: Timeouts,
    /// The window the guard and `/status` read figures over.
    pub window: Duration,
    /// The guard's policy; its `baseline` indexes `versions`.
    pub guard: Option<Guard>,
}

#[derive(Debug)]
pub struct VersionSnapshot {
    pub name: Arc<str>,
    pub revision: Arc<str>,
    /// The weight in force (the file's, or a run-time override).
    pub weight: u32,
    pub protocol: Protocol,
    /// Whether the endpoints are reached over TLS (`:scheme https`).
    pub tls: bool,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub stats: Arc<VersionStats>,
}

/// What a snapshot is built from besides the config: the long-lived pieces
/// that outlast snapshots.
pub struct Parts<'a> {
    pub endpoints: &'a mut Registry,
    pub stats: &'a mut StatsRegistry,
    pub telemetry: &'a Telemetry,
}

impl Snapshot {
    /// Builds the snapshot for `config`, with `weights(service_index, service)`
    /// giving each service's effective weights (file or run-time), reusing
    /// endpoints and stats that earlier snapshots already had.
    pub fn build(
        generation: u64,
        config: &Config,
        parts: Parts<'_>,
        weights: impl Fn(usize, &Service) -> Vec<u32>,
    ) -> Snapshot {
        let Parts {
            endpoints: registry,
            stats,
            telemetry,
        } = parts;
        let services = config
            .services
            .iter()
            .enumerate()
            .map(|(index, service)| {
                let weights = weights(index, service);
                let window = service.guard.as_ref().map_or(DEFAULT_WINDOW, |g| g.window);
                let versions = service
                    .versions
                    .iter()
                    .zip(&weights)
                    .map(|(version, &weight)| {
                        let stats = stats.stats(
                            telemetry,
                            &service.name,
                            &version.name,
                            &version.revision,
                            window,
                        );
                        stats.set_weight(weight);
                        Arc::new(VersionSnapshot {
                            stats,
                            name: version.name.as_str().into(),
                            revision: version.revision.as_str().into(),
                            weight,
                            protocol: version.protocol,
                            tls: version.tls.is_some(),
                            endpoints: version
                                .endpoints
                                .iter()
                                .map(|&addr| {
                                    registry.endpoint(addr, version.protocol, version.tls.as_ref())
                                })
                                .collect(),
                        })
                    })
                    .collect();
                ServiceSnapshot {
                    name: service.name.as_str().into(),
                    split: WeightedSplit::new(&weights),
                    versions,
                    timeouts: service.timeouts.clone(),
                    window,
                    guard: service.guard.clone(),
                }
            })
            .collect();
        registry.retain_used();
        stats.retain_used();
        Snapshot {
            generation,
            routes: RouteTable::new(&config.services),
            services,
        }
    }
}

impl Snapshot {
    /// Every version of every service, for tickers and reports.
    pub fn versions(&self) -> impl Iterator<Item = &Arc<VersionSnapshot>> {
        self.services.iter().flat_map(|s| s.versions.iter())
    }
}
