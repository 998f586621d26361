//! The single writer of the snapshot. Config reloads, run-time weights, guard
//! trips and operator commands come here, change the desired state under a
//! mutex, and leave as one new snapshot published with one `ArcSwap` store.
//! The mutex is on the cold path only (an operator, a file change, a guard
//! verdict); requests never touch it.
//!
//! The run-time layer (weights, latches) is persisted in `state_dir` after
//! every change, before the change is announced.

pub mod overlay;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::Config;
use crate::snapshot::{Effective, Parts, Snapshot};
use crate::state::{Latch, PersistedState, RolloutOutcome, RolloutProgress, StateStore};
use crate::telemetry::{StatsRegistry, Telemetry};
use crate::upstream::Registry;

/// Guard events kept for `/status`, per service.
const EVENTS_KEPT: usize = 20;

pub struct Control {
    published: Arc<ArcSwap<Snapshot>>,
    telemetry: Arc<Telemetry>,
    /// The file the config came from; `None` for a config given in code.
    source: Option<PathBuf>,
    state: Mutex<State>,
}

struct State {
    config: Config,
    /// The run-time layer, exactly as persisted.
    layer: PersistedState,
    store: Option<StateStore>,
    last_reload: Option<ReloadRecord>,
    events: BTreeMap<String, VecDeque<Event>>,
    verdicts: BTreeMap<(String, String), String>,
    /// The rollout gate's last answer per service, for `/status`.
    gates: BTreeMap<String, String>,
    /// When the layer was last written (hold time is saved every few seconds).
    last_persist: std::time::Instant,
    registry: Registry,
    stats: StatsRegistry,
    telemetry: Arc<Telemetry>,
    generation: u64,
}

/// The result of the last reload, for `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    pub at: String,
    pub result: &'static str,
    pub errors: Vec<String>,
}

/// A rollback, by the guard or an operator: the contract's webhook event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub service: String,
    pub version: String,
    pub revision: String,
    pub action: &'static str,
    pub reason: String,
    pub observed: Option<f64>,
    pub threshold: Option<f64>,
    pub window_requests: u64,
    pub weights: BTreeMap<String, u32>,
    pub at: String,
}

/// Why run-time weights were refused; each knows its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsRefused {
    /// No such service (404).
    NoService(String),
    /// A version the guard latched was given traffic (409).
    Latched(String),
    /// An unknown version, or all weights zero (400).
    Invalid(String),
}

impl WeightsRefused {
    pub fn status(&self) -> http::StatusCode {
        match self {
            WeightsRefused::NoService(_) => http::StatusCode::NOT_FOUND,
            WeightsRefused::Latched(_) => http::StatusCode::CONFLICT,
            WeightsRefused::Invalid(_) => http::StatusCode::BAD_REQUEST,
        }
    }
}

impl std::fmt::Display for WeightsRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightsRefused::NoService(m)
            | WeightsRefused::Latched(m)
            | WeightsRefused::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for WeightsRefused {}

/// What the guard measured when it tripped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    pub observed: Option<f64>,
    pub threshold: Option<f64>,
    pub window_requests: u64,
}

impl Control {
    /// `store` is the opened state dir and what it held; the layer it held is
    /// reconciled with `config` first (a revision that changed while veer was
    /// down clears its latch).
    pub fn new(
        config: Config,
        telemetry: Arc<Telemetry>,
        source: Option<PathBuf>,
        store: Option<(StateStore, PersistedState)>,
    ) -> Control {
        let (store, mut layer) = match store {
            Some((store, layer)) => (Some(store), layer),
            None => (None, PersistedState::default()),
        };
        for note in overlay::reconcile(&mut layer, &config, unix_ms()) {
            tracing::info!("state: {note}");
        }
        let mut state = State {
            config,
            layer,
            store,
            last_reload: None,
            events: BTreeMap::new(),
            verdicts: BTreeMap::new(),
            gates: BTreeMap::new(),
            last_persist: std::time::Instant::now(),
            registry: Registry::default(),
            stats: StatsRegistry::default(),
            telemetry: Arc::clone(&telemetry),
            generation: 0,
        };
        state.persist();
        let first = state.build();
        telemetry.retain(first.present());
        Control {
            published: Arc::new(ArcSwap::from_pointee(first)),
            telemetry,
            source,
            state: Mutex::new(state),
        }
    }

    /// The config file, when there is one.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// The last reload's result, if there was a reload.
    pub fn last_reload(&self) -> Option<ReloadRecord> {
        self.lock().last_reload.clone()
    }

    /// Notes a reload's result for `/status` and the metrics.
    pub fn record_reload(&self, result: &Result<(), Vec<String>>) {
        self.telemetry.count_reload(result.is_ok());
        let record = ReloadRecord {
            at: now_rfc3339(),
            result: if result.is_ok() { "success" } else { "failure" },
            errors: result.as_ref().err().cloned().unwrap_or_default(),
        };
        self.lock().last_reload = Some(record);
    }

    /// What the request path reads.
    pub fn published(&self) -> Arc<ArcSwap<Snapshot>> {
        Arc::clone(&self.published)
    }

    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The snapshot in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.published.load_full()
    }

    /// The configuration in force (the file's desired state).
    pub fn config(&self) -> Config {
        self.lock().config.clone()
    }

    /// Sets run-time weights for some versions of `service` (others keep
    /// theirs). Takes effect for the very next request, and persists.
    ///
    /// A weight above 0 for a version the guard latched is refused, not
    /// quietly turned into 0: the latch holds until the version's revision
    /// changes or an operator runs `veer resume`.
    pub fn set_weights(
        &self,
        service: &str,
        weights: &[(&str, u32)],
    ) -> Result<(), WeightsRefused> {
        let mut state = self.lock();
        let declared = state
            .service(service)
            .map_err(WeightsRefused::NoService)?
            .clone();
        for &(name, weight) in weights {
            let latch = state.layer.services.get(service).and_then(|layer| {
                let version = declared.versions.iter().find(|v| v.name == name)?;
                layer
                    .latches
                    .iter()
                    .find(|l| l.version == name && l.revision == version.revision)
            });
            if let (Some(latch), true) = (latch, weight > 0) {
                return Err(WeightsRefused::Latched(format!(
                    "version `{name}` of `{service}` is latched at revision `{}` ({}): it gets no traffic \
                     until its revision changes or an operator runs `veer resume {service}`; \
                     give it weight 0 or resume first",
                    latch.revision, latch.reason
                )));
            }
        }
        let layer = state.layer.services.entry(service.to_string()).or_default();
        let mut next = overlay::file_weights(&declared);
        if let Some(current) = &layer.weights {
            next.extend(current.iter().map(|(k, v)| (k.clone(), *v)));
        }
        for &(name, weight) in weights {
            if !declared.versions.iter().any(|v| v.name == name) {
                let known: Vec<&str> = declared.versions.iter().map(|v| v.name.as_str()).collect();
                return Err(WeightsRefused::Invalid(format!(
                    "service `{service}` has no version `{name}` (versions: {})",
                    known.join(", ")
                )));
            }
            next.insert(name.to_string(), weight);
        }
        if next.values().all(|&w| w == 0) {
            return Err(WeightsRefused::Invalid(format!(
                "refusing weights that are all zero for `{service}`: every request would fail; \
                 give at least one version a weight above 0"
            )));
        }
        layer.weights = Some(next);
        layer.file_weights = Some(overlay::file_weights(&declared));
        // A person took over: the automatic rollout ends where it is (a
        // completed one too, or its 100 % would keep overriding them).
        if let Some(progress) = layer.rollout.as_mut().filter(|p| {
            matches!(
                p.outcome,
                RolloutOutcome::InProgress | RolloutOutcome::Completed
            )
        }) {
            progress.outcome = RolloutOutcome::Abandoned;
            tracing::info!(service, "manual weights end the rollout");
        }
        self.publish(&mut state);
        state.persist();
        Ok(())
    }

    /// Replaces the configuration; the run-time layer keeps what the new
    /// file does not override (see `overlay::reconcile`).
    pub fn apply_config(&self, config: Config) {
        let mut state = self.lock();
        for note in overlay::reconcile(&mut state.layer, &config, unix_ms()) {
            tracing::info!("reload: {note}");
        }
        state.config = config;
        self.publish(&mut state);
        state.persist();
    }

    /// Latches `version` of `service` at its current revision: its weight
    /// goes to the guard's baseline in the same publish. `None` when it was
    /// already latched, or has no baseline to fall back to.
    pub fn trip(
        &self,
        service: &str,
        version: &str,
        reason: &str,
        measured: Measured,
    ) -> Option<Event> {
        let mut state = self.lock();
        let declared = state.service(service).ok()?.clone();
        let guard = declared.guard.as_ref()?;
        let (index, target) = declared
            .versions
            .iter()
            .enumerate()
            .find(|(_, v)| v.name == version)?;
        if index == guard.baseline {
            return None;
        }
        let layer = state.layer.services.entry(service.to_string()).or_default();
        if overlay::is_latched(layer, version, &target.revision) {
            return None;
        }
        layer.latches.push(Latch {
            version: version.to_string(),
            revision: target.revision.clone(),
            reason: reason.to_string(),
            at_unix_ms: unix_ms(),
        });
        // After completion too: a pipeline must not take a revision that
        // tripped at 100 % for a good one.
        if let Some(progress) = layer
            .rollout
            .as_mut()
            .filter(|p| p.candidate == version && p.revision == target.revision)
        {
            let before = progress.outcome;
            *progress = crate::rollout::on_rollback(progress);
            if before != progress.outcome {
                tracing::warn!(
                    service,
                    version,
                    revision = target.revision.as_str(),
                    was = outcome_word(before),
                    reason,
                    "rollout rolled back"
                );
            }
        }
        let layer = layer.clone();
        self.publish(&mut state);
        // Persisted before anyone is told.
        state.persist();
        if guard.on_revert == crate::config::OnRevert::Evict {
            if let Some(stats) = self
                .published
                .load()
                .services
                .iter()
                .find(|s| &*s.name == service)
                .and_then(|s| s.versions.get(index))
            {
                stats.stats.evict();
            }
        }
        let weights = overlay::effective_weights(&declared, Some(&layer));
        let event = Event {
            service: service.to_string(),
            version: version.to_string(),
            revision: target.revision.clone(),
            action: "rollback",
            reason: reason.to_string(),
            observed: measured.observed,
            threshold: measured.threshold,
            window_requests: measured.window_requests,
            weights: declared
                .versions
                .iter()
                .zip(weights)
                .map(|(v, w)| (v.name.clone(), w))
                .collect(),
            at: now_rfc3339(),
        };
        let events = state.events.entry(service.to_string()).or_default();
        events.push_back(event.clone());
        while events.len() > EVENTS_KEPT {
            events.pop_front();
        }
        Some(event)
    }

    /// An operator's rollback: every version but the baseline is latched
    /// (reason `manual`), so every request goes to the baseline now.
    pub fn rollback(&self, service: &str) -> Result<Vec<Event>, String> {
        let declared = self.lock().service(service)?.clone();
        let Some(guard) = &declared.guard else {
            return Err(format!(
                "service `{service}` has no guard block, so no baseline to roll back to; \
                 add `guard: {{baseline: VERSION}}` or set weights with `veer weights`"
            ));
        };
        let events = declared
            .versions
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != guard.baseline)
            .filter_map(|(_, v)| self.trip(service, &v.name, "manual", Measured::default()))
            .collect();
        Ok(events)
    }

    /// Clears every latch of `service` (its versions get their weights back)
    /// and lets its rollout go on: a paused one continues, a rolled-back one
    /// starts again from its first step.
    pub fn resume(&self, service: &str) -> Result<usize, String> {
        let mut state = self.lock();
        state.service(service)?;
        let latched: Vec<(String, String)> = state
            .layer
            .services
            .get(service)
            .map(|l| {
                l.latches
                    .iter()
                    .map(|latch| (latch.version.clone(), latch.revision.clone()))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(snapshot) = self
            .published
            .load()
            .services
            .iter()
            .find(|s| &*s.name == service)
        {
            for version in &snapshot.versions {
                if latched
                    .iter()
                    .any(|(v, r)| **v == *version.name && **r == *version.revision)
                {
                    version.stats.reset();
                }
            }
        }
        let cleared = match state.layer.services.get_mut(service) {
            Some(layer) => {
                if let Some(progress) = layer.rollout.as_mut() {
                    progress.paused = false;
                    if progress.outcome == RolloutOutcome::RolledBack {
                        progress.outcome = RolloutOutcome::InProgress;
                        progress.step = 0;
                        progress.held_ms = 0;
                        progress.step_entered_unix_ms = unix_ms();
                    }
                }
                std::mem::take(&mut layer.latches).len()
            }
            None => 0,
        };
        self.publish(&mut state);
        state.persist();
        Ok(cleared)
    }

    /// The rollout progress that applies to `service` now, if any.
    pub fn rollout(&self, service: &str) -> Option<RolloutProgress> {
        let state = self.lock();
        let declared = state.service(service).ok()?;
        overlay::current_rollout(declared, state.layer.services.get(service)).cloned()
    }

    /// Adds time held at the current step of a running, unpaused rollout.
    /// Written to disk every few seconds rather than every tick: a restart
    /// loses at most that much hold time, and so never skips ahead.
    pub fn add_rollout_hold(&self, service: &str, held: Duration) {
        const SAVE_EVERY: Duration = Duration::from_secs(5);
        let mut state = self.lock();
        // Runs ten times a second per service: look, don't clone the config.
        let running = state.service(service).is_ok_and(|declared| {
            overlay::current_rollout(declared, state.layer.services.get(service))
                .is_some_and(|p| p.outcome == RolloutOutcome::InProgress && !p.paused)
        });
        let progress = state
            .layer
            .services
            .get_mut(service)
            .and_then(|layer| layer.rollout.as_mut());
        if let (true, Some(progress)) = (running, progress) {
            progress.held_ms = progress
                .held_ms
                .saturating_add(u64::try_from(held.as_millis()).unwrap_or(u64::MAX));
            if state.last_persist.elapsed() >= SAVE_EVERY {
                state.persist();
            }
        }
    }

    /// Moves the rollout to its next step (`full`: to its last step, which
    /// still holds); at the last step, completes it. Returns the progress
    /// after the move.
    pub fn advance_rollout(&self, service: &str, full: bool) -> Result<RolloutProgress, String> {
        let mut state = self.lock();
        let declared = state.service(service)?.clone();
        let Some(config) = &declared.rollout else {
            return Err(format!("service `{service}` has no rollout block"));
        };
        let layer = state.layer.services.entry(service.to_string()).or_default();
        let is_current = overlay::current_rollout(&declared, Some(layer)).is_some();
        let Some(progress) = layer.rollout.as_mut().filter(|_| is_current) else {
            return Err(format!("service `{service}` has no rollout in progress"));
        };
        *progress = crate::rollout::promote(progress, config, full, unix_ms()).map_err(
            |crate::rollout::Stuck::Finished(outcome)| {
                format!(
                    "the rollout of `{service}` is {}, not in progress; `veer resume {service}` restarts a rolled-back one",
                    outcome_word(outcome)
                )
            },
        )?;
        let after = progress.clone();
        state.gates.remove(service);
        tracing::info!(
            service,
            step = after.step + 1,
            percent = config.percent(after.step),
            outcome = outcome_word(after.outcome),
            "rollout advanced"
        );
        self.publish(&mut state);
        state.persist();
        Ok(after)
    }

    /// The last step held with no trip: the rollout is completed.
    pub fn complete_rollout(&self, service: &str) -> Result<RolloutProgress, String> {
        let mut state = self.lock();
        let declared = state.service(service)?.clone();
        let layer = state.layer.services.entry(service.to_string()).or_default();
        let is_current = overlay::current_rollout(&declared, Some(layer)).is_some();
        let Some(progress) = layer
            .rollout
            .as_mut()
            .filter(|p| is_current && p.outcome == RolloutOutcome::InProgress)
        else {
            return Err(format!("service `{service}` has no rollout in progress"));
        };
        *progress = crate::rollout::complete(progress);
        let after = progress.clone();
        state.gates.remove(service);
        tracing::info!(
            service,
            candidate = after.candidate.as_str(),
            revision = after.revision.as_str(),
            "rollout completed: the last step held with no trip"
        );
        self.publish(&mut state);
        state.persist();
        Ok(after)
    }

    /// Writes the run-time layer now (on shutdown: keeps the hold time).
    pub fn persist_now(&self) {
        self.lock().persist();
    }

    /// Holds the rollout at its current step until `resume`.
    pub fn pause(&self, service: &str) -> Result<(), String> {
        let mut state = self.lock();
        state.service(service)?;
        let paused = state
            .layer
            .services
            .get_mut(service)
            .and_then(|l| l.rollout.as_mut())
            .filter(|p| p.outcome == RolloutOutcome::InProgress)
            .map(|p| p.paused = true)
            .is_some();
        if !paused {
            return Err(format!(
                "service `{service}` has no rollout in progress to pause"
            ));
        }
        state.persist();
        Ok(())
    }

    /// The gate's last answer for a service's rollout.
    pub fn set_gate_status(&self, service: &str, status: String) {
        self.lock().gates.insert(service.to_string(), status);
    }

    pub fn gate_status(&self, service: &str) -> Option<String> {
        self.lock().gates.get(service).cloned()
    }

    /// Latches in force for `service`.
    pub fn latches(&self, service: &str) -> Vec<Latch> {
        self.lock()
            .layer
            .services
            .get(service)
            .map(|s| s.latches.clone())
            .unwrap_or_default()
    }

    /// The last guard events of `service`, oldest first.
    pub fn events(&self, service: &str) -> Vec<Event> {
        self.lock()
            .events
            .get(service)
            .map(|e| e.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The guard's last verdict on a version, in words, for `/status`.
    pub fn set_verdict(&self, service: &str, version: &str, verdict: String) {
        self.lock()
            .verdicts
            .insert((service.to_string(), version.to_string()), verdict);
    }

    pub fn verdict(&self, service: &str, version: &str) -> Option<String> {
        self.lock()
            .verdicts
            .get(&(service.to_string(), version.to_string()))
            .cloned()
    }

    /// Keeps the sliding windows moving (each version's next slot emptied
    /// ahead of time) until `stop` changes.
    pub async fn tick(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        const TICK: Duration = Duration::from_millis(250);
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            let elapsed = self.telemetry.elapsed(tokio::time::Instant::now());
            for version in self.published.load().versions() {
                version.stats.advance(elapsed);
            }
        }
    }

    /// Publishes the same desired state again: endpoint health changed.
    pub fn republish(&self) {
        let mut state = self.lock();
        self.publish(&mut state);
    }

    fn publish(&self, state: &mut State) {
        let snapshot = Arc::new(state.build());
        let previous = self.published.swap(Arc::clone(&snapshot));
        self.telemetry.retain(snapshot.present());
        // A version that just lost its last endpoint in service, and had
        // traffic, had its share moved to the baseline: count it.
        for (service, before) in snapshot.services.iter().zip(&previous.services) {
            if service.name != before.name {
                continue;
            }
            for (version, was) in service.versions.iter().zip(&before.versions) {
                if version.unavailable && !was.unavailable && version.name == was.name {
                    self.telemetry
                        .count_share_moved(&service.name, &version.name);
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation under this lock leaves `State` whole, so a panic
        // elsewhere while it was held does not make it unusable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    fn service(&self, name: &str) -> Result<&crate::config::Service, String> {
        self.config
            .services
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("no service named `{name}` in the config"))
    }

    fn persist(&mut self) {
        self.last_persist = std::time::Instant::now();
        if let Some(store) = &self.store {
            if let Err(err) = store.save(&self.layer) {
                tracing::error!("{err}; the change is in force but will not survive a restart");
            }
        }
    }

    fn build(&mut self) -> Snapshot {
        self.generation += 1;
        for service in &self.config.services {
            if service.rollout.is_some() {
                let step =
                    overlay::current_rollout(service, self.layer.services.get(&service.name))
                        .map_or(0, |p| u32::try_from(p.step + 1).unwrap_or(u32::MAX));
                self.telemetry.set_rollout_step(&service.name, step);
            }
        }
        let State {
            config,
            layer,
            registry,
            stats,
            telemetry,
            generation,
            ..
        } = self;
        let parts = Parts {
            endpoints: registry,
            stats,
            telemetry,
            starting: *generation == 1,
        };
        Snapshot::build(*generation, config, parts, |_, service| {
            let own = layer.services.get(&service.name);
            Effective {
                weights: overlay::effective_weights(service, own),
                latched: service
                    .versions
                    .iter()
                    .map(|v| own.is_some_and(|l| overlay::is_latched(l, &v.name, &v.revision)))
                    .collect(),
            }
        })
    }
}

/// How a rollout's outcome reads in messages and `/status`.
pub fn outcome_word(outcome: RolloutOutcome) -> &'static str {
    match outcome {
        RolloutOutcome::InProgress => "in_progress",
        RolloutOutcome::Completed => "completed",
        RolloutOutcome::RolledBack => "rolled_back",
        RolloutOutcome::Abandoned => "abandoned",
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
