//! Endpoint health: active probes per endpoint (jittered, with thresholds in
//! both directions) and passive ejection of endpoints that fail on real
//! traffic, with a growing back-off and a cap on how many of a version's
//! endpoints may be out at once. Every change of an endpoint's availability
//! republishes the snapshot, whose version lists name available endpoints
//! only: the request path never checks health itself.
//!
//! Every health decision is made here (the probes in `probe`); the flags it
//! sets, and the channel the request path reports failing endpoints on, live
//! on the endpoint (`upstream::health`), below the request path, which this
//! module sits above.

mod probe;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::clock::now_ms;
use crate::config::{HealthCheck, Protocol};
use crate::control::Control;
// Defined beside the endpoint, where the request path reports from.
pub use crate::upstream::health::{HealthEvent, HealthSender};
use crate::upstream::Endpoint;
use probe::probe;

const TICK: Duration = Duration::from_millis(100);

pub struct HealthRunner {
    control: Arc<Control>,
    events: mpsc::UnboundedReceiver<HealthEvent>,
    sender: HealthSender,
    probers: HashMap<(String, SocketAddr, Protocol), (HealthCheck, JoinHandle<()>)>,
    generation: u64,
    /// The endpoints ejected (only this runner ejects) whose time is not up:
    /// the tick looks at these, not at every endpoint of every service.
    ejected: Vec<Ejected>,
    /// When each ejected endpoint came back, to forgive old ejections.
    returned_at: HashMap<SocketAddr, Returned>,
}

struct Ejected {
    endpoint: Arc<Endpoint>,
    /// The ejecting service's `outlier_detection.max_ejection`, in ms: how
    /// long back in service before the endpoint's ejections are forgiven.
    forgive_after: u64,
}

struct Returned {
    at: u64,
    forgive_after: u64,
    endpoint: Arc<Endpoint>,
}

impl HealthRunner {
    pub fn new(control: Arc<Control>) -> (HealthRunner, HealthSender) {
        let (sender, events) = mpsc::unbounded_channel();
        let runner = HealthRunner {
            control,
            events,
            sender: sender.clone(),
            probers: HashMap::new(),
            generation: 0,
            ejected: Vec::new(),
            returned_at: HashMap::new(),
        };
        (runner, sender)
    }

    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = interval.tick() => self.tick(),
                Some(event) = self.events.recv() => self.handle(event),
                _ = stop.changed() => break,
            }
        }
        for (_, (_, prober)) in self.probers.drain() {
            prober.abort();
        }
    }

    fn handle(&mut self, event: HealthEvent) {
        match event {
            HealthEvent::Changed => self.control.republish(),
            HealthEvent::Failing {
                service,
                endpoint,
                reason,
            } => self.eject(&service, &endpoint, reason),
        }
    }

    /// Starts and stops probers as the config changes; ends ejections whose
    /// time is up.
    fn tick(&mut self) {
        let snapshot = self.control.snapshot();
        if snapshot.generation != self.generation {
            self.generation = snapshot.generation;
            self.reconcile_probers();
        }
        let now = now_ms();
        let mut returned = false;
        let returned_at = &mut self.returned_at;
        self.ejected.retain(|ejected| {
            let endpoint = &ejected.endpoint;
            let until = endpoint.health.ejected_until_ms();
            if until != 0 && until > now {
                return true;
            }
            if until != 0 {
                endpoint.health.return_from_ejection(now);
                tracing::info!(endpoint = %endpoint.addr(), "ejection over: the endpoint is back in service");
                returned = true;
            }
            returned_at.insert(
                endpoint.addr(),
                Returned {
                    at: now,
                    forgive_after: ejected.forgive_after,
                    endpoint: Arc::clone(endpoint),
                },
            );
            false
        });
        // Ejections are forgiven after a long stretch in service.
        self.returned_at.retain(|_, back| {
            if back.endpoint.health.ejected_until_ms() != 0 {
                // Ejected again meanwhile: that ejection's return counts.
                return false;
            }
            if now.saturating_sub(back.at) >= back.forgive_after {
                back.endpoint.health.forgive();
                return false;
            }
            true
        });
        if returned {
            self.control.republish();
        }
    }

    fn reconcile_probers(&mut self) {
        let snapshot = self.control.snapshot();
        let mut wanted: HashMap<(String, SocketAddr, Protocol), (HealthCheck, Arc<Endpoint>)> =
            HashMap::new();
        for service in &snapshot.services {
            let Some(check) = &service.health_check else {
                continue;
            };
            for version in &service.versions {
                for endpoint in &version.all_endpoints {
                    wanted.insert(
                        (
                            service.name.to_string(),
                            endpoint.addr(),
                            endpoint.protocol(),
                        ),
                        ((**check).clone(), Arc::clone(endpoint)),
                    );
                }
            }
        }
        self.probers.retain(|key, (check, prober)| {
            let keep = wanted.get(key).is_some_and(|(c, _)| c == check);
            if !keep {
                prober.abort();
            }
            keep
        });
        for (key, (check, endpoint)) in wanted {
            if self.probers.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(prober(check.clone(), endpoint, self.sender.clone()));
            self.probers.insert(key, (check, task));
        }
    }

    fn eject(&mut self, service_name: &str, endpoint: &Arc<Endpoint>, reason: &'static str) {
        let snapshot = self.control.snapshot();
        let Some(service) = snapshot.services.iter().find(|s| &*s.name == service_name) else {
            return;
        };
        let Some(version) = service
            .versions
            .iter()
            .find(|v| v.all_endpoints.iter().any(|e| Arc::ptr_eq(e, endpoint)))
        else {
            return;
        };
        let now = now_ms();
        if endpoint.health.ejected_until_ms() > now {
            return;
        }
        let total = version.all_endpoints.len();
        let out = version
            .all_endpoints
            .iter()
            .filter(|e| !e.health.available(now))
            .count();
        let cap = u64::from(service.outlier.max_ejected_percent);
        if ((out + 1) as u64) * 100 > cap * total as u64 {
            tracing::warn!(
                service = service_name,
                version = %version.name,
                endpoint = %endpoint.addr(),
                "failing, but not ejected: {out} of {total} endpoints are already out \
                 (outlier_detection.max_ejected_percent: {cap})"
            );
            return;
        }
        let base = service.outlier.base_ejection;
        let factor = endpoint.health.ejections().saturating_add(1);
        let duration = base
            .saturating_mul(factor)
            .min(service.outlier.max_ejection);
        let until = now.saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        endpoint.health.eject(until);
        self.ejected.push(Ejected {
            endpoint: Arc::clone(endpoint),
            forgive_after: u64::try_from(service.outlier.max_ejection.as_millis())
                .unwrap_or(u64::MAX),
        });
        self.control.telemetry().count_ejection(
            service_name,
            &version.name,
            endpoint.addr(),
            reason,
        );
        tracing::warn!(
            service = service_name,
            version = %version.name,
            endpoint = %endpoint.addr(),
            reason,
            ejection = ?duration,
            ejections = factor,
            "endpoint ejected after failing on real traffic"
        );
        self.control.republish();
    }
}

/// Probes one endpoint forever (until aborted): first at once if it is not in
/// service yet, else after a random part of the interval, then every interval
/// ± 10 %, so a fleet of sidecars does not probe in lockstep.
async fn prober(check: HealthCheck, endpoint: Arc<Endpoint>, events: HealthSender) {
    let mut passes = 0u32;
    let mut failures = 0u32;
    if endpoint.health.probe_ok() {
        tokio::time::sleep(check.interval.mul_f64(fastrand::f64())).await;
    }
    loop {
        let result = probe(
            &endpoint,
            &check.path,
            check.timeout,
            &check.expected_statuses,
        )
        .await;
        match result {
            Ok(_) => {
                failures = 0;
                passes = passes.saturating_add(1);
                if passes >= check.healthy_threshold && endpoint.health.set_probe_ok(true, now_ms())
                {
                    tracing::info!(endpoint = %endpoint.addr(), "health check passes: in service");
                    let _ = events.send(HealthEvent::Changed);
                }
            }
            Err(reason) => {
                passes = 0;
                failures = failures.saturating_add(1);
                if failures >= check.unhealthy_threshold
                    && endpoint.health.set_probe_ok(false, now_ms())
                {
                    tracing::warn!(endpoint = %endpoint.addr(), %reason, "health check fails: out of service");
                    let _ = events.send(HealthEvent::Changed);
                }
            }
        }
        let jitter = 0.9 + fastrand::f64() * 0.2;
        tokio::time::sleep(check.interval.mul_f64(jitter)).await;
    }
}
