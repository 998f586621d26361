//! The control plane's one writer. A single task (the actor, `actor.rs`) owns
//! the run-time state: the config in force, the persisted layer (run-time
//! weights, guard latches, rollout progress), the guard's events and
//! verdicts, the rollout gates' answers, the last reload, and the registries
//! the snapshot is built from. Everything that changes it — a reload, an
//! operator, a guard trip, a rollout step, endpoint health — is a
//! [`Command`](actor::Command) sent through [`Control`], a cheap handle with
//! one method per command.
//!
//! Each command (or batch: a guard pass's trips, a rollout tick's hold time
//! for every service) publishes at most one snapshot and hands at most one
//! write of the layer to the [store](crate::state::Store), which runs off the
//! tokio workers. A command whose effect must survive a restart (weights, a
//! trip, a rollback, resume, pause, promote, a reload) is answered only once
//! the write finished: persisted before anyone is told.
//!
//! Readers never queue behind commands. The request path reads the snapshot
//! through its `ArcSwap`; `/status`, `/metrics`, the guard and the rollout
//! loop read a [`ControlView`] the actor replaces after every command.
//!
//! Depends on `config`, `snapshot`, `state`, `rollout` (its pure
//! transitions), `telemetry` and `upstream` (the registries).

mod actor;
mod error;
pub mod overlay;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::snapshot::Snapshot;
use crate::state::{Latch, PersistedState, RolloutProgress, Store};
use crate::telemetry::Telemetry;

/// How a rollout's outcome reads in messages, `/status` and `/metrics`.
pub use crate::rollout::outcome_word;
/// A rollback by the guard or an operator: `/status` lists them, the
/// webhook receives each.
pub use crate::status::GuardEvent as Event;
pub use crate::status::ReloadRecord;
use actor::Command;
pub use error::ControlError;

/// The handle to the control plane. Cheap to clone; every clone talks to the
/// same actor and reads the same views.
#[derive(Clone)]
pub struct Control {
    mailbox: mpsc::UnboundedSender<Command>,
    published: Arc<ArcSwap<Snapshot>>,
    view: Arc<ArcSwap<ControlView>>,
    telemetry: Arc<Telemetry>,
    /// The file the config came from; `None` for a config given in code.
    source: Option<PathBuf>,
    /// How rollouts ended, for `/metrics`.
    history: Arc<crate::history::Metrics>,
    /// This replica's view of its fleet, set once at start when the config
    /// has a `fleet:` block (the guard judges the fleet's sum through it).
    fleet: std::sync::OnceLock<Arc<crate::fleet::windows::FleetView>>,
    /// Who advances the rollouts: this process alone, or the fleet's leader.
    leadership: crate::fleet::leader::Leadership,
    /// The endpoints' names, resolved before a config is applied.
    names: Arc<crate::upstream::Names>,
}

/// What the actor last published besides the snapshot: immutable, replaced
/// whole after every command, read without waiting.
#[derive(Debug, Clone)]
pub struct ControlView {
    /// Hold time not yet folded into `layer` (see the actor).
    holds: Arc<HashMap<Arc<str>, u64>>,
    config: Arc<Config>,
    /// The config's services by name.
    names: Arc<HashMap<String, usize>>,
    layer: Arc<PersistedState>,
    events: Arc<BTreeMap<String, VecDeque<Event>>>,
    /// By service, then version.
    verdicts: Arc<BTreeMap<String, BTreeMap<String, String>>>,
    gates: Arc<BTreeMap<String, String>>,
    last_reload: Option<Arc<ReloadRecord>>,
    /// The checks' latest states, by service (`crate::checks` reports them).
    checks: Arc<BTreeMap<String, Arc<crate::status::ChecksReport>>>,
}

impl ControlView {
    /// The configuration in force (the file's desired state).
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The rollout progress that applies to `service` now, if any, with
    /// every hold time added so far.
    pub fn rollout(&self, service: &str) -> Option<RolloutProgress> {
        let declared = self.config.services.get(*self.names.get(service)?)?;
        let progress = overlay::current_rollout(declared, self.layer.services.get(service))?;
        Some(match self.holds.get(service) {
            Some(&held) => crate::rollout::hold(progress, Duration::from_millis(held)),
            None => progress.clone(),
        })
    }

    /// Latches in force for `service`.
    pub fn latches(&self, service: &str) -> &[Latch] {
        self.layer
            .services
            .get(service)
            .map_or(&[], |s| s.latches.as_slice())
    }

    /// The last guard events of `service`, oldest first.
    pub fn events(&self, service: &str) -> impl Iterator<Item = &Event> {
        self.events.get(service).into_iter().flatten()
    }

    /// The guard's last verdict on a version, in words.
    pub fn verdict(&self, service: &str, version: &str) -> Option<&str> {
        self.verdicts.get(service)?.get(version).map(String::as_str)
    }

    /// The gate's last answer for a service's rollout.
    pub fn gate(&self, service: &str) -> Option<&str> {
        self.gates.get(service).map(String::as_str)
    }

    pub fn last_reload(&self) -> Option<&ReloadRecord> {
        self.last_reload.as_deref()
    }

    /// The checks of `service` as last reported.
    pub fn checks(&self, service: &str) -> Option<&Arc<crate::status::ChecksReport>> {
        self.checks.get(service)
    }

    /// Every service's checks as last reported.
    pub fn all_checks(&self) -> impl Iterator<Item = (&String, &Arc<crate::status::ChecksReport>)> {
        self.checks.iter()
    }
}

/// What the guard measured when it tripped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    pub observed: Option<f64>,
    pub threshold: Option<f64>,
    pub window_requests: u64,
    /// The judged window's errors by reason (empty for a trip not judged
    /// on errors: an operator's, a check's).
    pub errors: crate::telemetry::ErrorCounts,
}

/// One trip the guard asks for.
#[derive(Debug, Clone)]
pub struct Trip {
    pub service: String,
    pub version: String,
    pub reason: String,
    pub measured: Measured,
}

impl Control {
    /// Starts the actor on the current runtime. `store` is where the layer
    /// lives and what it held; that layer is reconciled with `config` first
    /// (a revision that changed while veer was down clears its latch) and
    /// written back before this returns.
    pub async fn start(
        config: Config,
        telemetry: Arc<Telemetry>,
        source: Option<PathBuf>,
        store: Option<(Arc<dyn Store>, PersistedState)>,
    ) -> Control {
        let (mailbox, inbox) = mpsc::unbounded_channel();
        // The first snapshot has the names' addresses, if they resolve.
        let names = Arc::new(crate::upstream::Names::default());
        names.prime(&config, &telemetry).await;
        let registry = crate::upstream::Registry::with_names(Arc::clone(&names));
        let history = Arc::new(crate::history::Metrics::default());
        let (published, view) = actor::spawn(
            config,
            Arc::clone(&telemetry),
            store,
            inbox,
            registry,
            Arc::clone(&history),
        );
        let control = Control {
            mailbox,
            published,
            view,
            telemetry,
            source,
            history,
            fleet: std::sync::OnceLock::new(),
            leadership: crate::fleet::leader::Leadership::solo(),
            names,
        };
        control.persist_now().await;
        control
    }

    /// Joins this replica to a fleet's view (once; later calls are ignored).
    pub fn set_fleet(&self, fleet: Arc<crate::fleet::windows::FleetView>) {
        let _ = self.fleet.set(fleet);
    }

    /// This replica's view of its fleet, when it is in one.
    pub fn fleet(&self) -> Option<&Arc<crate::fleet::windows::FleetView>> {
        self.fleet.get()
    }

    /// The same control plane, with the fleet's rollout leadership in place
    /// of leading alone.
    pub fn with_leadership(mut self, leadership: crate::fleet::leader::Leadership) -> Control {
        self.leadership = leadership;
        self
    }

    /// Who advances the rollouts.
    pub fn leadership(&self) -> &crate::fleet::leader::Leadership {
        &self.leadership
    }

    /// The config file, when there is one.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// What the request path reads.
    pub fn published(&self) -> Arc<ArcSwap<Snapshot>> {
        Arc::clone(&self.published)
    }

    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The counts behind `veer_rollouts_total` and
    /// `veer_rollout_duration_seconds`.
    pub fn history_metrics(&self) -> &crate::history::Metrics {
        &self.history
    }

    /// The release history of `service`, oldest first; `None` when the
    /// config has no such service.
    pub fn history(&self, service: &str) -> Option<Vec<crate::state::history::Record>> {
        let view = self.view.load();
        view.names.get(service)?;
        Some(
            view.layer
                .services
                .get(service)
                .map(|s| s.history.clone())
                .unwrap_or_default(),
        )
    }

    /// The snapshot in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.published.load_full()
    }

    /// The control view in force now.
    pub fn view(&self) -> Arc<ControlView> {
        self.view.load_full()
    }

    /// The configuration in force (the file's desired state).
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.view.load().config)
    }

    /// The last reload's result, if there was a reload.
    pub fn last_reload(&self) -> Option<ReloadRecord> {
        self.view.load().last_reload().cloned()
    }

    /// The rollout progress that applies to `service` now, if any.
    pub fn rollout(&self, service: &str) -> Option<RolloutProgress> {
        self.view.load().rollout(service)
    }

    /// Latches in force for `service`.
    pub fn latches(&self, service: &str) -> Vec<Latch> {
        self.view.load().latches(service).to_vec()
    }

    /// The last guard events of `service`, oldest first.
    pub fn events(&self, service: &str) -> Vec<Event> {
        self.view.load().events(service).cloned().collect()
    }

    /// The guard's last verdict on a version, in words, for `/status`.
    pub fn verdict(&self, service: &str, version: &str) -> Option<String> {
        self.view
            .load()
            .verdict(service, version)
            .map(str::to_string)
    }

    /// The gate's last answer for a service's rollout.
    pub fn gate_status(&self, service: &str) -> Option<String> {
        self.view.load().gate(service).map(str::to_string)
    }

    /// Sets run-time weights for some versions of `service` (others keep
    /// theirs). Takes effect for the very next request; answered once
    /// persisted.
    ///
    /// A weight above 0 for a version the guard latched is refused, not
    /// quietly turned into 0: the latch holds until the version's revision
    /// changes or an operator runs `veer resume`.
    pub async fn set_weights(
        &self,
        service: &str,
        weights: &[(&str, u32)],
    ) -> Result<(), ControlError> {
        let weights = weights.iter().map(|&(v, w)| (v.to_string(), w)).collect();
        self.ask(|reply| Command::SetWeights {
            service: service.to_string(),
            weights,
            reply,
        })
        .await?
    }

    /// Replaces the configuration; the run-time layer keeps what the new
    /// file does not override (see `overlay::reconcile`).
    pub async fn apply_config(&self, config: Config) -> Result<(), ControlError> {
        // Names the new config adds are looked up first, so that their
        // versions have endpoints from the first snapshot on.
        self.names.prime(&config, &self.telemetry).await;
        self.ask(|reply| Command::ApplyConfig {
            config: Box::new(config),
            reply,
        })
        .await
    }

    /// Notes a reload's result for `/status` and the metrics.
    pub async fn record_reload(&self, result: &Result<(), Vec<String>>) {
        self.telemetry.count_reload(result.is_ok());
        let record = ReloadRecord {
            at: actor::now_rfc3339(),
            result: if result.is_ok() {
                crate::status::ReloadResult::Success
            } else {
                crate::status::ReloadResult::Failure
            },
            errors: result.as_ref().err().cloned().unwrap_or_default(),
        };
        let _ = self
            .ask(|reply| Command::RecordReload { record, reply })
            .await;
    }

    /// Latches `version` of `service` at its current revision: its weight
    /// goes to the guard's baseline in the same publish. `None` when it was
    /// already latched, or has no baseline to fall back to.
    pub async fn trip(
        &self,
        service: &str,
        version: &str,
        reason: &str,
        measured: Measured,
    ) -> Option<Event> {
        let trip = Trip {
            service: service.to_string(),
            version: version.to_string(),
            reason: reason.to_string(),
            measured,
        };
        self.trips(vec![trip]).await.pop().flatten()
    }

    /// Several trips as one change: one publish, one write. The answer has
    /// one entry per trip, in order.
    pub async fn trips(&self, trips: Vec<Trip>) -> Vec<Option<Event>> {
        if trips.is_empty() {
            return Vec::new();
        }
        self.ask(|reply| Command::Trip { trips, reply })
            .await
            .unwrap_or_default()
    }

    /// An operator's rollback: every version but the baseline is latched
    /// (reason `manual`), so every request goes to the baseline now. One
    /// publish and one write, one event per version it took traffic from.
    pub async fn rollback(&self, service: &str) -> Result<Vec<Event>, ControlError> {
        self.ask(|reply| Command::Rollback {
            service: service.to_string(),
            reply,
        })
        .await?
    }

    /// Clears every latch of `service` (its versions get their weights back)
    /// and lets its rollout go on: a paused one continues, a rolled-back one
    /// starts again from its first step. Returns how many latches it cleared.
    pub async fn resume(&self, service: &str) -> Result<usize, ControlError> {
        self.ask(|reply| Command::Resume {
            service: service.to_string(),
            reply,
        })
        .await?
    }

    /// Holds the rollout at its current step until `resume`.
    pub async fn pause(&self, service: &str) -> Result<(), ControlError> {
        self.pause_because(service, crate::state::history::Actor::Admin, None)
            .await
    }

    /// Holds the rollout at its current step until `resume`, saying who and
    /// why: the reason is persisted with the pause (`/status` still shows it
    /// after a restart) and written in the history's pause record.
    pub async fn pause_because(
        &self,
        service: &str,
        by: crate::state::history::Actor,
        reason: Option<String>,
    ) -> Result<(), ControlError> {
        self.ask(|reply| Command::Pause {
            service: service.to_string(),
            by,
            reason,
            reply,
        })
        .await?
    }

    /// Moves the rollout to its next step (`full`: to its last step, which
    /// still holds); at the last step, completes it. Returns the progress
    /// after the move.
    pub async fn advance_rollout(
        &self,
        service: &str,
        full: bool,
    ) -> Result<RolloutProgress, ControlError> {
        self.advance_rollout_by(service, full, crate::state::history::Actor::Admin)
            .await
    }

    /// [`Control::advance_rollout`], saying who moved it for the history
    /// (the rollout's clock, a check, an operator).
    pub async fn advance_rollout_by(
        &self,
        service: &str,
        full: bool,
        by: crate::state::history::Actor,
    ) -> Result<RolloutProgress, ControlError> {
        self.ask(|reply| Command::Promote {
            service: service.to_string(),
            full,
            by,
            reply,
        })
        .await?
    }

    /// The last step held with no trip: the rollout is completed.
    pub async fn complete_rollout(&self, service: &str) -> Result<RolloutProgress, ControlError> {
        self.ask(|reply| Command::Complete {
            service: service.to_string(),
            reply,
        })
        .await?
    }

    /// Adds time held at the current step of every running, unpaused rollout
    /// named, as one change. Written to the store every few seconds rather
    /// than every tick: a restart loses at most that much hold time, and so
    /// never skips ahead. Answered once the view shows the new hold time.
    pub async fn add_rollout_holds(&self, holds: Vec<(Arc<str>, Duration)>) {
        if holds.is_empty() {
            return;
        }
        let _ = self.ask(|reply| Command::AddHolds { holds, reply }).await;
    }

    /// The guard's last verdicts, `(service, version, words)`, for `/status`.
    /// Not waited for: they are words, and the next pass brings new ones.
    pub fn set_verdicts(&self, verdicts: Vec<(String, String, String)>) {
        if !verdicts.is_empty() {
            self.tell(Command::SetVerdicts(verdicts));
        }
    }

    /// The gates' last answers, `(service, words)`. Not waited for; applied
    /// in order with the commands sent after it.
    pub fn set_gate_statuses(&self, gates: Vec<(String, String)>) {
        if !gates.is_empty() {
            self.tell(Command::SetGates(gates));
        }
    }

    /// The checks' latest states, by service (`None`: the service has no
    /// checks any more). Not waited for, like the verdicts.
    pub fn set_checks(&self, checks: Vec<(String, Option<Arc<crate::status::ChecksReport>>)>) {
        if !checks.is_empty() {
            self.tell(Command::SetChecks(checks));
        }
    }

    /// One gate's answer (see [`Control::set_gate_statuses`]).
    pub fn set_gate_status(&self, service: &str, status: String) {
        self.set_gate_statuses(vec![(service.to_string(), status)]);
    }

    /// Publishes the same desired state again: endpoint health changed. Not
    /// waited for; health's callers are not async.
    pub fn republish(&self) {
        self.tell(Command::Republish);
    }

    /// Writes the run-time layer now and waits for it (at start, and on
    /// shutdown: keeps the hold time).
    pub async fn persist_now(&self) {
        let _ = self.ask(|reply| Command::Persist { reply }).await;
    }

    /// Keeps the sliding windows moving (each version's next slot emptied
    /// ahead of time) until `stop` changes.
    pub async fn tick(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        const TICK: Duration = Duration::from_millis(250);
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Only a window that had a request has a ring to advance: of
        // thousands of versions, the tick visits those, found again when a
        // publish or a version's first request changes the set.
        let mut active: Vec<Arc<crate::telemetry::VersionStats>> = Vec::new();
        let mut seen = (0, u64::MAX);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            let snapshot = self.published.load();
            let now = (snapshot.generation, crate::telemetry::window::rings_made());
            if now != seen {
                seen = now;
                active.clear();
                active.extend(
                    snapshot
                        .versions()
                        .filter(|v| v.stats.window().is_allocated())
                        .map(|v| Arc::clone(&v.stats)),
                );
            }
            let elapsed = self.telemetry.elapsed(tokio::time::Instant::now());
            for stats in &active {
                stats.advance(elapsed);
            }
        }
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.mailbox
            .send(command(reply))
            .map_err(|_| ControlError::Stopped)?;
        answer.await.map_err(|_| ControlError::Stopped)
    }

    fn tell(&self, command: Command) {
        // Only fails once the actor is gone, at the end of the process:
        // there is nothing left to tell.
        let _ = self.mailbox.send(command);
    }
}
