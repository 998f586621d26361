//! The guard: judges every non-baseline version of every guarded service on its
//! sliding window, and when one trips, moves its traffic to the baseline at
//! once (through `control`, which latches and persists), counts it, logs it
//! and tells the webhook.
//!
//! One task ticks every 100 ms and judges each service when its own
//! `guard.interval` has passed. A trip needs `consecutive` bad verdicts in a
//! row; fewer than `min_requests` in the window is no verdict at all.
//!
//! A pass costs what had traffic: a version whose window holds no request
//! (two atomic loads tell) is judged once when it goes quiet, and then
//! skipped until its next request, so thousands of idle services cost the
//! tick next to nothing, and nothing is allocated or formatted for them.
//! The pass does not even visit them: it keeps the services that still need
//! a look, and adds those whose versions `telemetry::activity` says had a
//! request since the last tick. It visits every service after a publish (a
//! new snapshot), when the activity queue overflowed, and in a fleet (whose
//! siblings' traffic is not on the queue).

pub mod methods;
pub mod shadow;
pub mod verdict;
pub mod webhook;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::control::{Control, Measured, Trip};
use verdict::{verdict, Reason, Verdict};
use webhook::Webhooks;

const TICK: Duration = Duration::from_millis(100);

/// (service, version, revision), shared with the snapshot: no allocation.
type VersionKey = (Arc<str>, Arc<str>, Arc<str>);

pub struct GuardRunner {
    control: Arc<Control>,
    webhooks: Webhooks,
    /// Bad verdicts in a row, per (service, version, revision).
    streaks: HashMap<VersionKey, u32>,
    last_judged: HashMap<Arc<str>, Instant>,
    shadows: shadow::ShadowJudge,
    watch: Watch,
}

/// Which services a pass visits (see the module's note).
#[derive(Default)]
struct Watch {
    /// The snapshot the maps below are of; 0: none yet.
    generation: u64,
    /// A version's activity id to its service's index in that snapshot.
    by_id: HashMap<u64, usize>,
    /// Guarded services judged without traffic of their own (a shadow
    /// stage, judged on mirrored pairs): visited every pass.
    always: Vec<usize>,
    /// Services that needed a look at their last visit.
    active: std::collections::BTreeSet<usize>,
    drained: crate::telemetry::activity::Drained,
    /// The parts of that snapshot, to tell which a publish rebuilt (a
    /// `Weak` keeps the allocation, so an address is never another part's).
    parts: Vec<std::sync::Weak<crate::snapshot::ServiceSnapshot>>,
    /// Versions in that snapshot when `by_id` was last made whole: ids of
    /// rebuilt versions pile up in it until it is made whole again.
    versions: usize,
}

impl Watch {
    /// The indices of the services to visit now, in order; `None`: all.
    fn visit(
        &mut self,
        snapshot: &crate::snapshot::Snapshot,
        activity: &crate::telemetry::activity::Activity,
        everything: bool,
    ) -> Option<Vec<usize>> {
        activity.drain(&mut self.drained);
        let mut everything = everything || self.drained.overflowed;
        if snapshot.generation != self.generation {
            self.generation = snapshot.generation;
            // A publish that kept the services where they were (a weight
            // change, a health change) rebuilt a few: only those are looked
            // at again, not all of them.
            let in_place = self.parts.len() == snapshot.services.len()
                && self.by_id.len() <= 2 * self.versions.max(1);
            if in_place {
                let mut parts = std::mem::take(&mut self.parts);
                for (index, (was, now)) in parts.iter_mut().zip(&snapshot.services).enumerate() {
                    if std::ptr::eq(was.as_ptr(), Arc::as_ptr(now)) {
                        continue;
                    }
                    *was = Arc::downgrade(now);
                    self.always.retain(|&i| i != index);
                    self.watch(index, now);
                    self.active.insert(index);
                }
                self.parts = parts;
            } else {
                self.by_id.clear();
                self.always.clear();
                self.parts = snapshot.services.iter().map(Arc::downgrade).collect();
                self.versions = snapshot.services.iter().map(|s| s.versions.len()).sum();
                for (index, service) in snapshot.services.iter().enumerate() {
                    self.watch(index, service);
                }
                everything = true;
            }
        }
        if everything {
            self.active.clear();
            return None;
        }
        for id in &self.drained.ids {
            if let Some(&index) = self.by_id.get(id) {
                self.active.insert(index);
            }
        }
        self.active.extend(&self.always);
        Some(std::mem::take(&mut self.active).into_iter().collect())
    }

    /// Notes where `service`'s versions are and whether it is judged
    /// without traffic of its own.
    fn watch(&mut self, index: usize, service: &crate::snapshot::ServiceSnapshot) {
        if service.guard.is_none() {
            return;
        }
        for version in &service.versions {
            self.by_id.insert(version.stats.activity_id(), index);
        }
        if service.rollout.as_ref().is_some_and(|r| r.shadow.is_some()) {
            self.always.push(index);
        }
    }
}

impl GuardRunner {
    pub fn new(control: Arc<Control>, webhooks: Webhooks) -> GuardRunner {
        GuardRunner {
            control,
            webhooks,
            streaks: HashMap::new(),
            last_judged: HashMap::new(),
            shadows: shadow::ShadowJudge::default(),
            watch: Watch::default(),
        }
    }

    /// Judges until `stop` changes.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            self.judge(Instant::now()).await;
        }
    }

    /// One pass over every guarded service that is due. The pass's trips
    /// go to `control` as one change (one publish, one write), then its
    /// verdicts, so that a thousand services judged at once cost one of each.
    pub async fn judge(&mut self, now: Instant) {
        let snapshot = self.control.snapshot();
        let mut trips = Vec::new();
        // Per trip: the service as judged (for the audit's "before"), the
        // verdict in words, and where to announce it.
        let mut tripped = Vec::new();
        let mut verdicts = Vec::new();
        let elapsed = self.control.telemetry().elapsed(now);
        // The siblings' windows, read once per pass (in a fleet).
        let siblings = self.control.fleet().map(|fleet| fleet.siblings());
        let visit = self.watch.visit(
            &snapshot,
            self.control.telemetry().activity(),
            siblings.is_some(),
        );
        let all = 0..snapshot.services.len();
        let visit: &mut dyn Iterator<Item = usize> = match &visit {
            Some(listed) => &mut listed.iter().copied(),
            None => &mut all.into_iter(),
        };
        for index in visit {
            let service = &snapshot.services[index];
            let Some(policy) = &service.guard else {
                continue;
            };
            // In a fleet whose siblings send this service traffic, the
            // fleet's sum is judged too (after this replica's own figures,
            // the fast path): `min_requests` counts the whole fleet.
            let fleet = siblings.as_deref().filter(|s| s.has(&service.name));
            // A shadow stage is judged on mirrored pairs, not on the window.
            let shadowed = service.rollout.as_ref().is_some_and(|r| r.shadow.is_some());
            let skips = |version: &crate::snapshot::VersionSnapshot| {
                fleet.is_none() && !shadowed && version.stats.quiet_over(elapsed, policy.window)
            };
            let needs_look = service.versions.iter().enumerate().any(|(index, version)| {
                index != policy.baseline && (!skips(version) || version.stats.quiet_is_new())
            });
            if !needs_look {
                continue;
            }
            // Visited again next pass, until it needs no look.
            self.watch.active.insert(index);
            match self.last_judged.get_mut(&*service.name) {
                Some(last) if now.duration_since(*last) < policy.interval => continue,
                Some(last) => *last = now,
                None => {
                    self.last_judged.insert(Arc::clone(&service.name), now);
                }
            }
            let baseline = &service.versions[policy.baseline];
            let base_counts = baseline.stats.window().counts(elapsed, policy.window);
            let base_figures = base_counts.figures();
            let fleet_base = fleet.map(|siblings| {
                let mut counts = base_counts;
                siblings.add_to(
                    &service.name,
                    &baseline.name,
                    &baseline.revision,
                    &mut counts,
                );
                counts.figures()
            });
            for (index, version) in service.versions.iter().enumerate() {
                if index == policy.baseline {
                    continue;
                }
                // Quiet and already judged so: the same verdict again.
                if skips(version) && !version.stats.first_look_at_quiet() {
                    continue;
                }
                let key = (
                    Arc::clone(&service.name),
                    Arc::clone(&version.name),
                    Arc::clone(&version.revision),
                );
                if version.weight == 0 {
                    // Latched or given no traffic: nothing to judge, unless
                    // it is in a shadow stage, judged on mirrored pairs.
                    self.streaks.remove(&key);
                    if let Some((words, trip)) = self.shadows.judge(service, index) {
                        if let Some(trip) = trip {
                            trips.push(trip);
                            tripped.push((service, words.clone(), policy.webhook.as_ref()));
                        }
                        verdicts.push((service.name.to_string(), version.name.to_string(), words));
                    }
                    continue;
                }
                let counts = version.stats.window().counts(elapsed, policy.window);
                let mut figures = counts.figures();
                // The judged window's errors by reason, for a trip's event.
                let mut errors = counts.kinds;
                let mut judged = verdict(&figures, Some(&base_figures), policy);
                // How many replicas the judged figures are of (1: this one).
                let mut replicas = 1;
                if let (Some(siblings), Some(fleet_base)) = (fleet, &fleet_base) {
                    if !matches!(judged, Verdict::Bad { .. }) {
                        let mut sum = counts;
                        let added = siblings.add_to(
                            &service.name,
                            &version.name,
                            &version.revision,
                            &mut sum,
                        );
                        if added > 0 {
                            figures = sum.figures();
                            errors = sum.kinds;
                            judged = verdict(&figures, Some(fleet_base), policy);
                            replicas += added;
                        }
                    }
                }
                // Asked to, one bad method condemns the version its other
                // methods make look healthy.
                let mut method = None;
                if policy.per_method && !matches!(judged, Verdict::Bad { .. }) {
                    if let Some(bad) = methods::worst(
                        version.stats.methods(),
                        baseline.stats.methods(),
                        elapsed,
                        policy,
                    ) {
                        judged = bad.verdict;
                        figures = bad.figures;
                        method = Some(bad.method);
                    }
                }
                let words = match &judged {
                    Verdict::Healthy => {
                        self.streaks.remove(&key);
                        "healthy".to_string()
                    }
                    Verdict::Insufficient { requests, needed } => {
                        self.streaks.remove(&key);
                        format!("insufficient data: {requests}/{needed} requests")
                    }
                    Verdict::Bad {
                        reason,
                        observed,
                        threshold,
                        figure,
                    } => {
                        let streak = self.streaks.entry(key.clone()).or_insert(0);
                        *streak += 1;
                        let words = match &method {
                            Some(method) => format!(
                                "bad: method {method}: {figure} {observed:.4} > {threshold:.4} ({}/{} in a row)",
                                streak, policy.consecutive
                            ),
                            None => format!(
                                "bad: {figure} {observed:.4} > {threshold:.4} ({}/{} in a row)",
                                streak, policy.consecutive
                            ),
                        };
                        if *streak >= policy.consecutive {
                            self.streaks.remove(&key);
                            let measured = Measured {
                                observed: Some(*observed),
                                threshold: Some(*threshold),
                                window_requests: figures.requests,
                                errors: match reason {
                                    Reason::ErrorRate | Reason::ErrorRateIncrease => errors,
                                    _ => Default::default(),
                                },
                            };
                            if let Some(method) = &method {
                                tracing::warn!(
                                    service = %service.name,
                                    version = %version.name,
                                    method = %method,
                                    reason = reason.as_str(),
                                    observed = *observed,
                                    threshold = *threshold,
                                    "guard: one method of the version is bad ({figure} {observed:.4} > {threshold:.4})"
                                );
                            }
                            trips.push(Trip {
                                service: service.name.to_string(),
                                version: version.name.to_string(),
                                reason: reason.as_str().to_string(),
                                measured,
                            });
                            let judged_on = if replicas > 1 {
                                format!("fleet of {replicas}: {words}")
                            } else {
                                words.clone()
                            };
                            tripped.push((service, judged_on, policy.webhook.as_ref()));
                        }
                        words
                    }
                };
                let words = if replicas > 1 {
                    format!("fleet of {replicas}: {words}")
                } else {
                    words
                };
                verdicts.push((service.name.to_string(), version.name.to_string(), words));
            }
        }
        let events = self.control.trips(trips).await;
        for (event, (service, words, webhook)) in events.iter().zip(&tripped) {
            if let Some(event) = event {
                audit_trip(service, event, words);
                self.announce(event, *webhook);
            }
        }
        self.control.set_verdicts(verdicts);
    }

    fn announce(&self, event: &crate::control::Event, webhook: Option<&http::Uri>) {
        announce(&self.control, &self.webhooks, event, webhook);
    }
}

/// The guard's own trip in the audit trail: the weights before (the
/// snapshot it judged) and after (the event's).
fn audit_trip(
    before: &crate::snapshot::ServiceSnapshot,
    event: &crate::control::Event,
    verdict: &str,
) {
    let after = WeightsField(&event.weights).to_string();
    let detail = format!("{} {}: {verdict}", event.version, event.revision);
    crate::audit::system(
        "guard",
        crate::audit::Action {
            action: "rollback",
            service: Some(&event.service),
            before: &crate::audit::service_weights(before),
            after: &after,
            result: "ok",
            status: None,
            detail: Some(&detail),
        },
    );
}

/// Weights as `stable=100 canary=0` in a log field.
struct WeightsField<'a>(&'a std::collections::BTreeMap<String, u32>);

impl std::fmt::Display for WeightsField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (version, weight)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{version}={weight}")?;
        }
        Ok(())
    }
}

/// Counts, logs and sends one rollback event (the guard's or an operator's).
pub fn announce(
    control: &Control,
    webhooks: &Webhooks,
    event: &crate::control::Event,
    webhook: Option<&http::Uri>,
) {
    control
        .telemetry()
        .count_trip(&event.service, &event.version, &event.reason);
    tracing::warn!(
        service = %event.service,
        version = %event.version,
        revision = %event.revision,
        reason = %event.reason,
        observed = event.observed,
        threshold = event.threshold,
        window_requests = event.window_requests,
        errors_by_reason = ?event.errors_by_reason,
        weights = %WeightsField(&event.weights),
        "guard: traffic moved back to the baseline"
    );
    if let Some(url) = webhook {
        match serde_json::to_value(event) {
            Ok(body) => webhooks.send(url, body),
            Err(err) => tracing::error!(error = %err, "cannot encode the webhook event"),
        }
    }
}
