//! The task that owns the run-time state, and the writer that hands the layer
//! to the store.
//!
//! The actor takes one command at a time: it changes its state, publishes at
//! most one snapshot, hands at most one write to the writer, and publishes
//! one view. The snapshot goes out first: traffic leaves a tripped version
//! at once. A command that must be durable before anyone is told waits for
//! its write before the view shows it and the caller hears of it, so no
//! reader (`/status`, a pipeline) learns of a latch a crash could still lose;
//! commands behind it queue meanwhile, as they queued behind the old lock,
//! but readers never do. Hold time is the exception: it shows at once and
//! is written every few seconds without waiting.
//!
//! The writer saves in order and, when writes queue up behind a slow disk,
//! saves only the newest layer for all of them (each layer is whole, so the
//! newest contains every earlier change).
//!
//! The state is kept in `Arc`s shared with the published view: a command
//! copies only the part it changes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{overlay, ControlError, ControlView, Event, ReloadRecord, Trip};
use crate::config::{Config, OnRevert, Service};
use crate::history::Metrics as HistoryMetrics;
use crate::rollout::outcome_word;
use crate::snapshot::{Effective, Parts, Snapshot};
use crate::state::history::Actor as Who;
use crate::state::{Latch, PersistedState, RolloutOutcome, RolloutProgress, Store};
use crate::status::EventAction;
use crate::telemetry::{StatsRegistry, Telemetry};
use crate::upstream::Registry;

/// Guard events kept for `/status`, per service.
const EVENTS_KEPT: usize = 20;
/// How often hold time alone is written without a store to say otherwise
/// (see `Control::add_rollout_holds` and `Store::holds_every`).
const SAVE_HOLDS_EVERY: Duration = Duration::from_secs(5);

type Reply<T> = oneshot::Sender<Result<T, ControlError>>;
/// Sent once the write that carries a command's change finished.
type Ack = Box<dyn FnOnce() + Send>;

/// What the actor can be asked to do; [`super::Control`] has one method each.
pub(super) enum Command {
    SetWeights {
        service: String,
        weights: Vec<(String, u32)>,
        reply: Reply<()>,
    },
    ApplyConfig {
        config: Box<Config>,
        reply: oneshot::Sender<()>,
    },
    RecordReload {
        record: ReloadRecord,
        reply: oneshot::Sender<()>,
    },
    Trip {
        trips: Vec<Trip>,
        reply: oneshot::Sender<Vec<Option<Event>>>,
    },
    Rollback {
        service: String,
        reply: Reply<Vec<Event>>,
    },
    Resume {
        service: String,
        reply: Reply<usize>,
    },
    Pause {
        service: String,
        /// An operator, or a check that could not judge the candidate.
        by: Who,
        reason: Option<String>,
        reply: Reply<()>,
    },
    Promote {
        service: String,
        full: bool,
        /// The operator, or the rollout's own clock.
        by: Who,
        reply: Reply<RolloutProgress>,
    },
    Complete {
        service: String,
        reply: Reply<RolloutProgress>,
    },
    AddHolds {
        holds: Vec<(Arc<str>, Duration)>,
        reply: oneshot::Sender<()>,
    },
    SetVerdicts(Vec<(String, String, String)>),
    SetGates(Vec<(String, String)>),
    SetChecks(Vec<(String, Option<Arc<crate::status::ChecksReport>>)>),
    Republish,
    Persist {
        reply: oneshot::Sender<()>,
    },
}

/// What one command did, besides its answer.
#[derive(Default)]
struct Effect {
    /// The weights or the config changed: build and publish a snapshot.
    publish: bool,
    /// The layer changed: write it.
    write: bool,
    /// Show the change and answer only once the write finished.
    wait: bool,
    /// The answer, sent once the view shows the change.
    ack: Option<Ack>,
}

impl Effect {
    fn none() -> Effect {
        Effect::default()
    }

    /// A change of the layer the caller hears about once it is durable.
    fn durable(publish: bool, ack: Ack) -> Effect {
        Effect {
            publish,
            write: true,
            wait: true,
            ack: Some(ack),
        }
    }

    /// A refusal, or a change nothing needs to wait for: answered now.
    fn answered(ack: Ack) -> Effect {
        Effect {
            ack: Some(ack),
            ..Effect::default()
        }
    }
}

fn ack<T: Send + 'static>(reply: oneshot::Sender<T>, value: T) -> Ack {
    Box::new(move || {
        // The caller may have gone (a closed admin connection): the change
        // stands all the same.
        let _ = reply.send(value);
    })
}

struct Actor {
    config: Arc<Config>,
    /// Hold time added since it was last folded into `layer`, per service.
    /// A rollout tick touches every service ten times a second; a map of
    /// counters is cheap to copy for the view, the whole layer is not. Folded
    /// in before any other command reads or writes the layer.
    holds: Arc<HashMap<Arc<str>, u64>>,
    /// Services by name: commands and ticks name services, thousands of them.
    names: Arc<HashMap<String, usize>>,
    layer: Arc<PersistedState>,
    events: Arc<BTreeMap<String, VecDeque<Event>>>,
    verdicts: Arc<BTreeMap<String, BTreeMap<String, String>>>,
    gates: Arc<BTreeMap<String, String>>,
    last_reload: Option<Arc<ReloadRecord>>,
    checks: Arc<BTreeMap<String, Arc<crate::status::ChecksReport>>>,
    registry: Registry,
    stats: StatsRegistry,
    mirrors: crate::mirror::MirrorRegistry,
    telemetry: Arc<Telemetry>,
    generation: u64,
    /// Versions tripped with `on_revert: evict`, by service and index:
    /// their connections close once the snapshot without them is out.
    evictions: Vec<(String, usize)>,
    published: Arc<ArcSwap<Snapshot>>,
    view: Arc<ArcSwap<ControlView>>,
    /// `None` without a store: writes are acknowledged at once.
    writer: Option<mpsc::UnboundedSender<Write>>,
    /// When the layer was last handed to the writer.
    last_write: Instant,
    /// The counts of ended rollouts, for `/metrics`.
    history: Arc<HistoryMetrics>,
    /// How often hold time alone is written: the store's say.
    holds_every: Duration,
    /// The config and layer the snapshot in force was built from, to tell
    /// which services the next publish must look at.
    built_from: (Arc<Config>, Arc<PersistedState>),
    /// Configs replaced by this command, freed off the workers after it.
    retired: Vec<Arc<Config>>,
}

/// Builds the first snapshot and view, and starts the actor (and the writer,
/// with a store) on the current runtime.
pub(super) fn spawn(
    config: Config,
    telemetry: Arc<Telemetry>,
    store: Option<(Arc<dyn Store>, PersistedState)>,
    inbox: mpsc::UnboundedReceiver<Command>,
    mut registry: Registry,
    history: Arc<HistoryMetrics>,
) -> (Arc<ArcSwap<Snapshot>>, Arc<ArcSwap<ControlView>>) {
    let (store, mut layer) = match store {
        Some((store, layer)) => (Some(store), layer),
        None => (None, PersistedState::default()),
    };
    let loaded = layer.clone();
    for note in overlay::reconcile(&mut layer, &config, unix_ms()) {
        tracing::info!(
            service = note.service.as_str(),
            version = note.version.as_deref(),
            revision = note.revision.as_deref(),
            reason = note.reason,
            "state: {note}"
        );
    }
    record_start(&config, &loaded, &mut layer);
    let changes = store.as_ref().and_then(|s| s.changes());
    let holds_every = store.as_ref().map_or(SAVE_HOLDS_EVERY, |s| s.holds_every());
    let writer = store.map(|store| {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_in_order(store, rx));
        tx
    });
    let mut stats = StatsRegistry::default();
    let mut mirrors = crate::mirror::MirrorRegistry::default();
    let first = build(
        1,
        &config,
        &layer,
        Parts {
            endpoints: &mut registry,
            stats: &mut stats,
            mirrors: &mut mirrors,
            telemetry: &telemetry,
            starting: true,
            previous: None,
        },
        None,
    );
    // Series of what the first config does not name (none yet) are dropped,
    // and the rare counters of what it does are declared at 0.
    telemetry.retain(first.present());
    let (config, layer) = (Arc::new(config), Arc::new(layer));
    let names = index(&config);
    let view = ControlView {
        holds: Arc::default(),
        config: Arc::clone(&config),
        names: Arc::clone(&names),
        layer: Arc::clone(&layer),
        events: Arc::default(),
        verdicts: Arc::default(),
        gates: Arc::default(),
        last_reload: None,
        checks: Arc::default(),
    };
    let actor = Actor {
        built_from: (Arc::clone(&config), Arc::clone(&layer)),
        retired: Vec::new(),
        holds: Arc::default(),
        config,
        names,
        layer,
        events: Arc::default(),
        verdicts: Arc::default(),
        gates: Arc::default(),
        last_reload: None,
        checks: Arc::default(),
        registry,
        stats,
        mirrors,
        telemetry,
        generation: 1,
        evictions: Vec::new(),
        published: Arc::new(ArcSwap::from_pointee(first)),
        view: Arc::new(ArcSwap::from_pointee(view)),
        writer,
        last_write: Instant::now(),
        history,
        holds_every,
    };
    let handles = (Arc::clone(&actor.published), Arc::clone(&actor.view));
    tokio::spawn(actor.run(inbox, changes));
    handles
}

impl Actor {
    async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<Command>,
        mut changes: Option<crate::state::Changes>,
    ) {
        let names = Arc::clone(self.registry.names());
        loop {
            let command = tokio::select! {
                command = inbox.recv() => command,
                // A name's addresses changed: its endpoints join or drain.
                () = names.changed() => {
                    self.publish();
                    self.publish_view();
                    continue;
                }
                Some(change) = next_change(&mut changes) => {
                    self.adopt(change);
                    continue;
                }
            };
            // Every handle is gone: the process is ending.
            let Some(command) = command else { return };
            let observed = observed(&command).map(|(actor, service)| {
                (
                    actor,
                    service,
                    Arc::clone(&self.layer),
                    self.published.load_full(),
                )
            });
            // A bug in one command must not end the control plane (no more
            // trips, no reloads) while the request path goes on: the caller
            // hears nothing (its reply is dropped) and the next command runs.
            // A reload's stages are timed for the debug log (see `reload`).
            let timed =
                matches!(command, Command::ApplyConfig { .. }).then(std::time::Instant::now);
            // A republish is about endpoint health, which only a look at
            // every service sees.
            let republish = matches!(command, Command::Republish);
            let applied =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.apply(command)));
            let apply_us = timed.map(crate::clock::took_us);
            // After a panic, everything is looked at again.
            let changed = (applied.is_ok() && !republish)
                .then(|| self.changed())
                .flatten();
            let effect = match applied {
                Ok(effect) => effect,
                Err(_) => {
                    tracing::error!(
                        "a control command failed (a bug in veer, the panic is logged above); \
                         the change it was making may be in force in part"
                    );
                    Effect {
                        publish: true,
                        ..Effect::none()
                    }
                }
            };
            if effect.publish {
                self.publish_changed(changed.as_deref());
            }
            let publish_us = timed.map(crate::clock::took_us);
            if let (Some((actor, service, layer, snapshot)), true) = (observed, effect.write) {
                self.record_history(actor, service.as_deref(), &layer, &snapshot);
            }
            let history_us = timed.map(crate::clock::took_us);
            if effect.write {
                let written = self.write();
                if let (true, Some(written)) = (effect.wait, written) {
                    // An error is logged by the writer; the change stands.
                    let _ = written.await;
                }
            }
            self.publish_view();
            if !self.retired.is_empty() {
                // Thousands of services take milliseconds to free: not on a
                // worker that requests wait for.
                let retired = std::mem::take(&mut self.retired);
                tokio::task::spawn_blocking(move || drop(retired));
            }
            if let (Some(timed), Some(apply_us), Some(publish_us), Some(history_us)) =
                (timed, apply_us, publish_us, history_us)
            {
                // Each figure from the command's start: the config taken
                // in, the snapshot published (requests see it from then),
                // the history recorded, the layer written and the view out.
                tracing::debug!(
                    apply_us,
                    publish_us,
                    history_us,
                    written_us = crate::clock::took_us(timed),
                    "control: config applied"
                );
            }
            if let Some(ack) = effect.ack {
                ack();
            }
        }
    }

    fn apply(&mut self, command: Command) -> Effect {
        if !matches!(
            command,
            Command::AddHolds { .. }
                | Command::SetVerdicts(_)
                | Command::SetGates(_)
                | Command::SetChecks(_)
                | Command::RecordReload { .. }
                | Command::Republish
        ) {
            self.fold_holds();
        }
        match command {
            Command::SetWeights {
                service,
                weights,
                reply,
            } => match self.set_weights(&service, &weights) {
                Ok(()) => Effect::durable(true, ack(reply, Ok(()))),
                Err(refused) => Effect::answered(ack(reply, Err(refused))),
            },
            Command::ApplyConfig { config, reply } => {
                let layer = Arc::make_mut(&mut self.layer);
                for note in overlay::reconcile(layer, &config, unix_ms()) {
                    tracing::info!(
                        service = note.service.as_str(),
                        version = note.version.as_deref(),
                        revision = note.revision.as_deref(),
                        reason = note.reason,
                        "reload: {note}"
                    );
                }
                // The index stays while every service keeps its place.
                let same_places = config.services.len() == self.config.services.len()
                    && config
                        .services
                        .iter()
                        .zip(&self.config.services)
                        .all(|(new, old)| Arc::ptr_eq(new, old) || new.name == old.name);
                if !same_places {
                    self.names = index(&config);
                }
                let mut config = *config;
                config.share_unchanged(&self.config);
                let replaced = std::mem::replace(&mut self.config, Arc::new(config));
                self.retired.push(replaced);
                Effect::durable(true, ack(reply, ()))
            }
            Command::RecordReload { record, reply } => {
                self.last_reload = Some(Arc::new(record));
                Effect::answered(ack(reply, ()))
            }
            Command::Trip { trips, reply } => {
                let events: Vec<Option<Event>> = trips
                    .into_iter()
                    .map(|t| self.trip(&t.service, &t.version, &t.reason, t.measured))
                    .collect();
                self.after_trips(&events);
                let tripped = events.iter().any(Option::is_some);
                Effect {
                    publish: tripped,
                    write: tripped,
                    wait: tripped,
                    ack: Some(ack(reply, events)),
                }
            }
            Command::Rollback { service, reply } => match self.rollback(&service) {
                Ok(events) => {
                    self.after_trips(&events);
                    let any = events.iter().any(Option::is_some);
                    let events: Vec<Event> = events.into_iter().flatten().collect();
                    Effect {
                        publish: any,
                        write: any,
                        wait: any,
                        ack: Some(ack(reply, Ok(events))),
                    }
                }
                Err(refused) => Effect::answered(ack(reply, Err(refused))),
            },
            Command::Resume { service, reply } => match self.resume(&service) {
                Ok(cleared) => Effect::durable(true, ack(reply, Ok(cleared))),
                Err(refused) => Effect::answered(ack(reply, Err(refused))),
            },
            Command::Pause {
                service,
                reason,
                reply,
                ..
            } => match self.pause(&service, reason) {
                // Pausing changes no weight: nothing to publish.
                Ok(()) => Effect::durable(false, ack(reply, Ok(()))),
                Err(refused) => Effect::answered(ack(reply, Err(refused))),
            },
            Command::Promote {
                service,
                full,
                by: _,
                reply,
            } => match self.promote(&service, full) {
                Ok(after) => Effect::durable(true, ack(reply, Ok(after))),
                Err(refused) => Effect::answered(ack(reply, Err(refused))),
            },
            Command::Complete { service, reply } => match self.complete(&service) {
                Ok(after) => Effect::durable(true, ack(reply, Ok(after))),
                Err(refused) => Effect::answered(ack(reply, Err(refused))),
            },
            Command::AddHolds { holds, reply } => {
                let held = self.add_holds(&holds);
                let write = held && self.last_write.elapsed() >= self.holds_every;
                if write {
                    self.fold_holds();
                }
                Effect {
                    write,
                    ack: Some(ack(reply, ())),
                    ..Effect::none()
                }
            }
            Command::SetVerdicts(verdicts) => {
                let map = Arc::make_mut(&mut self.verdicts);
                for (service, version, words) in verdicts {
                    map.entry(service).or_default().insert(version, words);
                }
                Effect::none()
            }
            Command::SetGates(gates) => {
                Arc::make_mut(&mut self.gates).extend(gates);
                Effect::none()
            }
            Command::SetChecks(checks) => {
                let map = Arc::make_mut(&mut self.checks);
                for (service, report) in checks {
                    match report {
                        Some(report) => map.insert(service, report),
                        None => map.remove(&service),
                    };
                }
                Effect::none()
            }
            Command::Republish => Effect {
                publish: true,
                ..Effect::none()
            },
            Command::Persist { reply } => Effect::durable(false, ack(reply, ())),
        }
    }

    fn service(&self, name: &str) -> Result<&Service, ControlError> {
        self.names
            .get(name)
            .and_then(|&i| self.config.services.get(i))
            .map(|service| &**service)
            .ok_or_else(|| ControlError::NoService(name.to_string()))
    }

    fn set_weights(
        &mut self,
        service: &str,
        weights: &[(String, u32)],
    ) -> Result<(), ControlError> {
        let declared = self.service(service)?;
        // Everything is checked before anything changes: a refused change
        // leaves no trace.
        let own = self.layer.services.get(service);
        for (name, weight) in weights {
            let latch = own.and_then(|layer| {
                let version = declared.versions.iter().find(|v| v.name == *name)?;
                layer
                    .latches
                    .iter()
                    .find(|l| l.version == *name && l.revision == version.revision)
            });
            if let (Some(latch), true) = (latch, *weight > 0) {
                return Err(ControlError::Latched {
                    service: service.to_string(),
                    version: name.clone(),
                    revision: latch.revision.clone(),
                    reason: latch.reason.clone(),
                });
            }
        }
        let file = overlay::file_weights(declared);
        let mut next = file.clone();
        if let Some(current) = own.and_then(|l| l.weights.as_ref()) {
            next.extend(current.iter().map(|(k, v)| (k.clone(), *v)));
        }
        for (name, weight) in weights {
            if !declared.versions.iter().any(|v| v.name == *name) {
                let known: Vec<&str> = declared.versions.iter().map(|v| v.name.as_str()).collect();
                return Err(ControlError::UnknownVersion {
                    service: service.to_string(),
                    version: name.clone(),
                    known: known.join(", "),
                });
            }
            next.insert(name.clone(), *weight);
        }
        if next.values().all(|&w| w == 0) {
            return Err(ControlError::AllZero(service.to_string()));
        }
        let layer = Arc::make_mut(&mut self.layer)
            .services
            .entry(service.to_string())
            .or_default();
        layer.weights = Some(next);
        layer.file_weights = Some(file);
        // A person took over: the automatic rollout ends where it is (a
        // completed one too, or its 100 % would keep overriding them).
        if let Some(progress) = layer.rollout.as_mut() {
            let before = progress.outcome;
            *progress = crate::rollout::abandon(progress);
            if before != progress.outcome {
                tracing::info!(service, "manual weights end the rollout");
            }
        }
        Ok(())
    }

    /// Latches one version; the caller publishes and writes. `None` when it
    /// was latched already, is the baseline, or there is no guard.
    fn trip(
        &mut self,
        service: &str,
        version: &str,
        reason: &str,
        measured: super::Measured,
    ) -> Option<Event> {
        let declared = self.service(service).ok()?;
        let guard = declared.guard.as_ref()?;
        let (index, target) = declared
            .versions
            .iter()
            .enumerate()
            .find(|(_, v)| v.name == version)?;
        if index == guard.baseline {
            return None;
        }
        if self
            .layer
            .services
            .get(service)
            .is_some_and(|l| overlay::is_latched(l, version, &target.revision))
        {
            return None;
        }
        let revision = target.revision.clone();
        if guard.on_revert == OnRevert::Evict {
            self.evictions.push((service.to_string(), index));
        }
        let config = Arc::clone(&self.config);
        let layer = Arc::make_mut(&mut self.layer)
            .services
            .entry(service.to_string())
            .or_default();
        layer.latches.push(Latch {
            version: version.to_string(),
            revision: revision.clone(),
            reason: reason.to_string(),
            at_unix_ms: unix_ms(),
            id: Latch::fresh_id(),
        });
        // After completion too: a pipeline must not take a revision that
        // tripped at 100 % for a good one.
        if let Some(progress) = layer
            .rollout
            .as_mut()
            .filter(|p| p.candidate == version && p.revision == revision)
        {
            let before = progress.outcome;
            *progress = crate::rollout::on_rollback(progress);
            if before != progress.outcome {
                tracing::warn!(
                    service,
                    version,
                    revision = revision.as_str(),
                    was = outcome_word(before),
                    reason,
                    "rollout rolled back"
                );
            }
        }
        let declared = config.services.get(*self.names.get(service)?)?;
        let weights = overlay::effective_weights(declared, Some(layer));
        Some(Event {
            service: service.to_string(),
            version: version.to_string(),
            revision,
            action: EventAction::Rollback,
            reason: reason.to_string(),
            observed: measured.observed,
            threshold: measured.threshold,
            window_requests: measured.window_requests,
            errors_by_reason: measured.errors.by_word(),
            weights: declared
                .versions
                .iter()
                .zip(weights)
                .map(|(v, w)| (v.name.clone(), w))
                .collect(),
            at: now_rfc3339(),
        })
    }

    /// Keeps the events of the trips that happened. The weights an event
    /// shows are those after its own trip; a later trip in the same command
    /// may move more.
    fn after_trips(&mut self, events: &[Option<Event>]) {
        if events.iter().all(Option::is_none) {
            return;
        }
        let kept = Arc::make_mut(&mut self.events);
        for event in events.iter().flatten() {
            let list = kept.entry(event.service.clone()).or_default();
            list.push_back(event.clone());
            while list.len() > EVENTS_KEPT {
                list.pop_front();
            }
        }
    }

    fn rollback(&mut self, service: &str) -> Result<Vec<Option<Event>>, ControlError> {
        let declared = self.service(service)?;
        let Some(guard) = &declared.guard else {
            return Err(ControlError::NoGuard(service.to_string()));
        };
        let others: Vec<String> = declared
            .versions
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != guard.baseline)
            .map(|(_, v)| v.name.clone())
            .collect();
        Ok(others
            .iter()
            .map(|version| self.trip(service, version, "manual", super::Measured::default()))
            .collect())
    }

    fn resume(&mut self, service: &str) -> Result<usize, ControlError> {
        self.service(service)?;
        let Some(own) = self.layer.services.get(service) else {
            return Ok(0);
        };
        // The latched versions' windows start afresh: the figures that
        // tripped them would trip them again at once.
        if let Some(snapshot) = self
            .published
            .load()
            .services
            .iter()
            .find(|s| &*s.name == service)
        {
            for version in &snapshot.versions {
                if own
                    .latches
                    .iter()
                    .any(|l| *l.version == *version.name && *l.revision == *version.revision)
                {
                    version.stats.reset();
                }
            }
        }
        let layer = Arc::make_mut(&mut self.layer)
            .services
            .get_mut(service)
            .map(|own| {
                if let Some(progress) = own.rollout.as_mut() {
                    *progress = crate::rollout::resume(progress, unix_ms());
                }
                std::mem::take(&mut own.latches).len()
            });
        Ok(layer.unwrap_or(0))
    }

    fn pause(&mut self, service: &str, reason: Option<String>) -> Result<(), ControlError> {
        self.service(service)?;
        let mut paused = self
            .layer
            .services
            .get(service)
            .and_then(|l| l.rollout.as_ref())
            .and_then(crate::rollout::pause)
            .ok_or_else(|| ControlError::NothingToPause(service.to_string()))?;
        paused.pause_reason = Some(reason.unwrap_or_else(|| "by an operator".to_string()));
        if let Some(own) = Arc::make_mut(&mut self.layer).services.get_mut(service) {
            own.rollout = Some(paused);
        }
        Ok(())
    }

    /// The rollout of `service` that applies now, for a command that moves it.
    fn current_rollout(&self, service: &str) -> Result<RolloutProgress, ControlError> {
        let declared = self.service(service)?;
        overlay::current_rollout(declared, self.layer.services.get(service))
            .cloned()
            .ok_or_else(|| ControlError::NotInProgress(service.to_string()))
    }

    fn set_rollout(&mut self, service: &str, progress: RolloutProgress) {
        Arc::make_mut(&mut self.layer)
            .services
            .entry(service.to_string())
            .or_default()
            .rollout = Some(progress);
        // The gate's answer was about the step just left.
        if self.gates.contains_key(service) {
            Arc::make_mut(&mut self.gates).remove(service);
        }
    }

    fn promote(&mut self, service: &str, full: bool) -> Result<RolloutProgress, ControlError> {
        let declared = self.service(service)?;
        let Some(config) = declared.rollout.clone() else {
            return Err(ControlError::NoRollout(service.to_string()));
        };
        let progress = self.current_rollout(service)?;
        let after = crate::rollout::promote(&progress, &config, full, unix_ms()).map_err(
            |crate::rollout::Stuck::Finished(outcome)| ControlError::Finished {
                service: service.to_string(),
                outcome,
            },
        )?;
        tracing::info!(
            service,
            step = after.step + 1,
            percent = config.percent(after.step),
            outcome = outcome_word(after.outcome),
            "rollout advanced"
        );
        self.set_rollout(service, after.clone());
        Ok(after)
    }

    fn complete(&mut self, service: &str) -> Result<RolloutProgress, ControlError> {
        let progress = self.current_rollout(service)?.clone();
        if progress.outcome != RolloutOutcome::InProgress {
            return Err(ControlError::NotInProgress(service.to_string()));
        }
        let after = crate::rollout::complete(&progress);
        tracing::info!(
            service,
            candidate = after.candidate.as_str(),
            revision = after.revision.as_str(),
            "rollout completed: the last step held with no trip"
        );
        self.set_rollout(service, after.clone());
        Ok(after)
    }

    /// Whether any rollout took the time.
    fn add_holds(&mut self, holds: &[(Arc<str>, Duration)]) -> bool {
        let running = |service: &str| {
            self.service(service).is_ok_and(|declared| {
                overlay::current_rollout(declared, self.layer.services.get(service))
                    .is_some_and(|p| p.outcome == RolloutOutcome::InProgress && !p.paused)
            })
        };
        let running: Vec<(&Arc<str>, u64)> = holds
            .iter()
            .filter(|(service, _)| running(service))
            .map(|(service, held)| (service, u64::try_from(held.as_millis()).unwrap_or(u64::MAX)))
            .collect();
        if running.is_empty() {
            return false;
        }
        let extra = Arc::make_mut(&mut self.holds);
        for (service, held) in running {
            let total = extra.entry(Arc::clone(service)).or_default();
            *total = total.saturating_add(held);
        }
        true
    }

    /// Moves the hold time kept aside into the layer's rollout progress.
    fn fold_holds(&mut self) {
        if self.holds.is_empty() {
            return;
        }
        let holds = std::mem::take(&mut self.holds);
        let layer = Arc::make_mut(&mut self.layer);
        for (service, held) in holds.iter() {
            if let Some(progress) = layer
                .services
                .get_mut(&**service)
                .and_then(|own| own.rollout.as_mut())
            {
                *progress = crate::rollout::hold(progress, Duration::from_millis(*held));
            }
        }
    }

    /// A service's layer as the shared store holds it now (a sibling's
    /// write, merged with ours by the store): it replaces ours (with what
    /// we decided since the store's merge put back on top), reconciled
    /// with our config, and is saved so the local copy follows the fleet.
    fn adopt(&mut self, mut change: crate::state::RemoteChange) {
        change.state = crate::fleet::merge::rebase(
            change.merged_with.as_ref(),
            self.layer.services.get(&change.service),
            change.state,
        );
        // Only the fleet's leader holds rollouts, so the hold time this
        // replica added since its last write is not in theirs: it stays
        // while the rollout stands at the same step; a rollout that moved,
        // ended or restarted elsewhere drops it.
        let same_step = |ours: Option<&RolloutProgress>, theirs: Option<&RolloutProgress>| {
            matches!((ours, theirs), (Some(a), Some(b))
                if (&a.candidate, &a.revision, a.step) == (&b.candidate, &b.revision, b.step)
                    && b.outcome == RolloutOutcome::InProgress)
        };
        let ours = self
            .layer
            .services
            .get(&change.service)
            .and_then(|s| s.rollout.as_ref());
        let theirs = change.state.as_ref().and_then(|s| s.rollout.as_ref());
        if !same_step(ours, theirs) {
            Arc::make_mut(&mut self.holds).remove(change.service.as_str());
        }
        let mut layer = (*self.layer).clone();
        match change.state {
            Some(mut state) => {
                // A merge is the union of two histories: keep the newest.
                crate::state::history::bound(&mut state.history, self.config.history.keep);
                layer.services.insert(change.service, state);
            }
            None => {
                layer.services.remove(&change.service);
            }
        }
        layer.remote_applied += 1;
        for note in overlay::reconcile(&mut layer, &self.config, unix_ms()) {
            tracing::info!("store: {note}");
        }
        self.layer = Arc::new(layer);
        self.publish();
        self.publish_view();
        let _ = self.write();
    }

    /// Hands the layer to the writer; the receiver answers once it is
    /// stored (`None` without a store: nothing to wait for).
    fn write(&mut self) -> Option<oneshot::Receiver<()>> {
        self.last_write = Instant::now();
        let writer = self.writer.as_ref()?;
        let (done, written) = oneshot::channel();
        let write = Write {
            layer: Arc::clone(&self.layer),
            done,
        };
        if writer.send(write).is_err() {
            // The writer ended (it never does before the actor): nobody
            // would answer.
            tracing::error!(
                "the state writer is gone; the change is in force but will not survive a restart"
            );
            return None;
        }
        Some(written)
    }

    /// Adds to the history what the command just applied did to `only`
    /// (every service: a reload), before the layer is written.
    fn record_history(
        &mut self,
        actor: Who,
        only: Option<&[String]>,
        before: &PersistedState,
        was: &Snapshot,
    ) {
        let now = self.published.load_full();
        let config = Arc::clone(&self.config);
        let elapsed = self.telemetry.elapsed(Instant::now());
        let unix = unix_ms();
        // A reload that kept the services where they were changed those
        // whose part it rebuilt and those whose run-time state moved: only
        // they are looked at. Otherwise every service is, the old ones found
        // by name once.
        let in_place = only.is_none()
            && was.services.len() == now.services.len()
            && was
                .services
                .iter()
                .zip(&now.services)
                .all(|(a, b)| Arc::ptr_eq(a, b) || a.name == b.name);
        let old: Option<HashMap<&str, &crate::snapshot::ServiceSnapshot>> = (only.is_none()
            && !in_place)
            .then(|| was.services.iter().map(|s| (&*s.name, &**s)).collect());
        let indices: Vec<usize> = match only {
            Some(names) => names
                .iter()
                .filter_map(|n| self.names.get(n).copied())
                .collect(),
            None if in_place => {
                let mut indices: std::collections::BTreeSet<usize> = (0..now.services.len())
                    .filter(|&i| !Arc::ptr_eq(&now.services[i], &was.services[i]))
                    .collect();
                let moved = self
                    .layer
                    .services
                    .iter()
                    .filter(|(name, state)| before.services.get(*name) != Some(*state))
                    .map(|(name, _)| name)
                    .chain(
                        before
                            .services
                            .keys()
                            .filter(|name| !self.layer.services.contains_key(*name)),
                    );
                indices.extend(moved.filter_map(|name| self.names.get(name).copied()));
                indices.into_iter().collect()
            }
            None => (0..config.services.len()).collect(),
        };
        for index in indices {
            let Some(declared) = config.services.get(index) else {
                continue;
            };
            let name = declared.name.as_str();
            // The snapshot lists services in the config's order.
            let Some(service) = now
                .services
                .get(index)
                .filter(|s| &*s.name == name)
                .or_else(|| now.services.iter().find(|s| &*s.name == name))
            else {
                continue;
            };
            let previous = match &old {
                Some(old) => old.get(name).copied(),
                None if in_place => was.services.get(index).map(|s| &**s),
                None => was.services.iter().find(|s| &*s.name == name).map(|s| &**s),
            };
            let own = before.services.get(name);
            let same_weights = previous.is_some_and(|p| {
                p.versions.len() == service.versions.len()
                    && p.versions
                        .iter()
                        .zip(&service.versions)
                        .all(|(a, b)| a.name == b.name && a.weight == b.weight)
            });
            if same_weights && own == self.layer.services.get(name) {
                continue;
            }
            let change = crate::history::Change {
                actor,
                service: declared,
                before: own,
                weights_before: Some(previous.map(snapshot_weights).unwrap_or_default()),
                weights_after: snapshot_weights(service),
                now_ms: unix,
                keep: config.history.keep,
                shadow: crate::history::shadow_figures(service),
            };
            let figures = |version: &str| {
                service
                    .versions
                    .iter()
                    .find(|v| &*v.name == version)
                    .map(|v| crate::history::figures(v, elapsed, service.window))
            };
            let state = Arc::make_mut(&mut self.layer)
                .services
                .entry(name.to_string())
                .or_default();
            let ended = crate::history::observe(&change, state, &figures);
            self.history.count(name, &ended);
        }
    }

    fn publish_view(&self) {
        self.view.store(Arc::new(ControlView {
            holds: Arc::clone(&self.holds),
            config: Arc::clone(&self.config),
            names: Arc::clone(&self.names),
            layer: Arc::clone(&self.layer),
            events: Arc::clone(&self.events),
            verdicts: Arc::clone(&self.verdicts),
            gates: Arc::clone(&self.gates),
            last_reload: self.last_reload.clone(),
            checks: Arc::clone(&self.checks),
        }));
    }

    /// The indices of the services whose config or run-time state differ
    /// from what the snapshot in force was built from; `None` when the
    /// services moved (then every one is looked at).
    fn changed(&self) -> Option<Vec<usize>> {
        let (config, layer) = &self.built_from;
        let mut changed = std::collections::BTreeSet::new();
        if !Arc::ptr_eq(config, &self.config) {
            let (old, new) = (&config.services, &self.config.services);
            if old.len() != new.len() {
                return None;
            }
            // `Service` is not `Eq`, so `Arc`'s `!=` compares contents even
            // of one shared `Arc`: the pointer first.
            changed.extend(
                (0..new.len()).filter(|&i| !Arc::ptr_eq(&old[i], &new[i]) && old[i] != new[i]),
            );
        }
        if !Arc::ptr_eq(layer, &self.layer) {
            let now = &self.layer.services;
            let moved = now
                .iter()
                .filter(|(name, state)| layer.services.get(*name) != Some(*state))
                .map(|(name, _)| name)
                .chain(
                    layer
                        .services
                        .keys()
                        .filter(|name| !now.contains_key(*name)),
                );
            changed.extend(moved.filter_map(|name| self.names.get(name).copied()));
        }
        Some(changed.into_iter().collect())
    }

    /// Publishes a snapshot that looks at every service.
    fn publish(&mut self) {
        self.publish_changed(None);
    }

    /// Publishes a snapshot; with `Some(changed)`, the services not listed
    /// keep their parts without a look (see `Snapshot::build_changed`).
    fn publish_changed(&mut self, changed: Option<&[usize]>) {
        let started = std::time::Instant::now();
        let snapshot = Arc::new(self.build(changed));
        self.built_from = (Arc::clone(&self.config), Arc::clone(&self.layer));
        let build_us = crate::clock::took_us(started);
        let previous = self.published.swap(Arc::clone(&snapshot));
        // Series of versions and endpoints that left the config leave /metrics.
        // Only what this publish rebuilt: a one-weight change among 10,000
        // services touches one service's series.
        let changes = snapshot.changes_since(&previous);
        self.telemetry
            .retain_changed(&changes.present, &changes.gone, &changes.gone_services);
        // A version that just lost its last endpoint in service, and had
        // traffic, had its share moved to the baseline: count it.
        for (service, before) in snapshot.services.iter().zip(&previous.services) {
            if service.name != before.name || Arc::ptr_eq(service, before) {
                continue;
            }
            for (version, was) in service.versions.iter().zip(&before.versions) {
                if version.unavailable && !was.unavailable && version.name == was.name {
                    self.telemetry
                        .count_share_moved(&service.name, &version.name);
                }
            }
        }
        // A version reverted with `on_revert: evict` loses its open tunnels
        // and streams now, not at their end.
        for (service, index) in std::mem::take(&mut self.evictions) {
            if let Some(version) = snapshot
                .services
                .iter()
                .find(|s| *s.name == *service)
                .and_then(|s| s.versions.get(index))
            {
                version.stats.evict();
            }
        }
        tracing::debug!(
            generation = snapshot.generation,
            build_us,
            took_us = crate::clock::took_us(started),
            "control: snapshot published"
        );
    }

    fn build(&mut self, changed: Option<&[usize]>) -> Snapshot {
        self.generation += 1;
        // The services that did not change keep their part of it.
        let previous = self.published.load_full();
        build(
            self.generation,
            &self.config,
            &self.layer,
            Parts {
                endpoints: &mut self.registry,
                stats: &mut self.stats,
                mirrors: &mut self.mirrors,
                telemetry: &self.telemetry,
                starting: self.generation == 1,
                previous: Some(&previous),
            },
            changed,
        )
    }
}

/// The snapshot for `config` with the layer's weights and latches on top.
fn build(
    generation: u64,
    config: &Config,
    layer: &PersistedState,
    parts: Parts<'_>,
    changed: Option<&[usize]>,
) -> Snapshot {
    for service in &config.services {
        if service.rollout.is_some() {
            let step = overlay::current_rollout(service, layer.services.get(&service.name))
                .map_or(0, |p| u32::try_from(p.step + 1).unwrap_or(u32::MAX));
            parts.telemetry.set_rollout_step(&service.name, step);
        }
    }
    let effective = |_, service: &Service| {
        let own = layer.services.get(&service.name);
        Effective {
            weights: overlay::effective_weights(service, own),
            latched: service
                .versions
                .iter()
                .map(|v| own.is_some_and(|l| overlay::is_latched(l, &v.name, &v.revision)))
                .collect(),
        }
    };
    Snapshot::build_changed(generation, config, parts, effective, changed)
}

/// Who sent a command that may change a service's release (and which
/// service: `None` for all); `None` for commands that never do.
fn observed(command: &Command) -> Option<(Who, Option<Vec<String>>)> {
    Some(match command {
        Command::SetWeights { service, .. }
        | Command::Rollback { service, .. }
        | Command::Resume { service, .. } => (Who::Admin, Some(vec![service.clone()])),
        Command::Pause { service, by, .. } => (*by, Some(vec![service.clone()])),
        Command::Promote { service, by, .. } => (*by, Some(vec![service.clone()])),
        Command::Complete { service, .. } => (Who::Rollout, Some(vec![service.clone()])),
        // A trip's latch says whether a check or the guard asked.
        Command::Trip { trips, .. } => {
            let mut services: Vec<String> = trips.iter().map(|t| t.service.clone()).collect();
            services.sort_unstable();
            services.dedup();
            (Who::Guard, Some(services))
        }
        Command::ApplyConfig { .. } => (Who::Reload, None),
        _ => return None,
    })
}

/// A service's weights in force, by version.
fn snapshot_weights(service: &crate::snapshot::ServiceSnapshot) -> BTreeMap<String, u32> {
    service
        .versions
        .iter()
        .map(|v| (v.name.to_string(), v.weight))
        .collect()
}

/// At start, the rollouts the config starts (or restarts) are recorded; the
/// weights are what they were, not a change.
fn record_start(config: &Config, loaded: &PersistedState, layer: &mut PersistedState) {
    let unix = unix_ms();
    for declared in &config.services {
        let own = loaded.services.get(&declared.name);
        let Some(state) = layer.services.get_mut(&declared.name) else {
            continue;
        };
        if own == Some(&*state) {
            continue;
        }
        let change = crate::history::Change {
            actor: Who::Reload,
            service: declared,
            before: own,
            weights_before: None,
            weights_after: BTreeMap::new(),
            now_ms: unix,
            keep: config.history.keep,
            shadow: None,
        };
        crate::history::observe(&change, state, &|_| None);
    }
}

/// The config's services by name.
fn index(config: &Config) -> Arc<HashMap<String, usize>> {
    Arc::new(
        config
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect(),
    )
}

async fn next_change(
    changes: &mut Option<crate::state::Changes>,
) -> Option<crate::state::RemoteChange> {
    match changes {
        Some(stream) => stream.recv().await,
        None => std::future::pending().await,
    }
}

/// One layer for the writer, and who to tell once it is stored.
struct Write {
    layer: Arc<PersistedState>,
    done: oneshot::Sender<()>,
}

/// Saves layers in the order they come; when several wait, only the newest
/// is saved, and all their senders are told after it.
async fn write_in_order(store: Arc<dyn Store>, mut writes: mpsc::UnboundedReceiver<Write>) {
    while let Some(first) = writes.recv().await {
        let mut layer = first.layer;
        let mut waiting = vec![first.done];
        while let Ok(next) = writes.try_recv() {
            layer = next.layer;
            waiting.push(next.done);
        }
        if let Err(err) = store.save(layer).await {
            tracing::error!("{err}; the change is in force but will not survive a restart");
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}

pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(super) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
