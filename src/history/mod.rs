//! The release history: what each control command did to a service, as a
//! record a person can read later — a rollout with its steps and the window's
//! figures when each was left, a blue-green switch, a weight change, a trip,
//! a rollback, a resume — who did it and how it ended.
//!
//! Records are derived, not declared: the control actor hands [`observe`]
//! a service's layer before and after a command, the weights in force before
//! and after, and who sent the command; `observe` appends what changed to the
//! layer's history, bounded by `history.keep`. Deriving keeps the actor's
//! commands as they are, and catches every path a change takes (a reload
//! that starts a rollout, a trip after completion). The records are part of
//! the persisted layer, so they survive restarts and, in a fleet, are shared
//! (merged as a union by id, `state::history::union`).
//!
//! Also here: the counts behind `veer_rollouts_total` and
//! `veer_rollout_duration_seconds` ([`Metrics`]), and the figures of one
//! version's window at a moment ([`figures`]).
//!
//! Cold path only (commands, scrapes). Depends on `state` (the record
//! types), `snapshot` and `telemetry` (a version's window), `config`.

mod metrics;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::Service;
use crate::snapshot::{ServiceSnapshot, VersionSnapshot};
use crate::state::history::{bound, Actor, Figures, Kind, Outcome, Record, ShadowFigures, Step};
use crate::state::{Latch, RolloutOutcome, RolloutProgress, ServiceState};

pub use metrics::Metrics;

/// A rollout that ended, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ended {
    pub outcome: Outcome,
    pub duration: Duration,
}

/// One command's effect on one service, as [`observe`] reads it.
pub struct Change<'a> {
    /// Who sent the command. A trip's latch names its own criterion; a
    /// `manual` latch is an operator's rollback whoever relays it.
    pub actor: Actor,
    /// The service as configured after the command.
    pub service: &'a Service,
    /// The service's layer before the command (`None`: it had none).
    pub before: Option<&'a ServiceState>,
    /// The weights in force before, by version; `None` when there was no
    /// "before" to compare with (veer starting): no weight record then.
    pub weights_before: Option<BTreeMap<String, u32>>,
    pub weights_after: BTreeMap<String, u32>,
    pub now_ms: u64,
    pub keep: usize,
    /// The service's mirror pairs now ([`shadow_figures`]), for a shadow
    /// stage left by this change; `None` without a mirror.
    pub shadow: Option<ShadowFigures>,
}

/// Appends to `after.history` what the change did, and returns the rollouts
/// it ended. `figures` gives a version's window now, by name.
pub fn observe(
    change: &Change<'_>,
    after: &mut ServiceState,
    figures: &dyn Fn(&str) -> Option<Figures>,
) -> Vec<Ended> {
    let mut recorder = Recorder {
        change,
        figures,
        ended: Vec::new(),
        history: std::mem::take(&mut after.history),
    };
    let before_latches: &[Latch] = change.before.map_or(&[], |b| &b.latches);
    let new_latches: Vec<&Latch> = after
        .latches
        .iter()
        .filter(|l| !before_latches.iter().any(|b| same_latch(b, l)))
        .collect();
    let cleared: Vec<&Latch> = before_latches
        .iter()
        .filter(|b| !after.latches.iter().any(|l| same_latch(b, l)))
        .collect();

    let rollout_moved = recorder.rollout(after.rollout.as_ref(), &after.latches);
    let before_rollout = change.before.and_then(|b| b.rollout.as_ref());
    let unpaused = recorder.pause(before_rollout, after.rollout.as_ref());
    for latch in &new_latches {
        recorder.latch(latch);
    }
    // A reload clears the latch of a revision that changed: that is the new
    // revision's story (a rollout, a weight change), not a resume.
    let resumed = change.actor == Actor::Admin && !cleared.is_empty();
    if resumed {
        recorder.resume(&cleared);
    } else if let Some(progress) = unpaused {
        recorder.resume_rollout(progress);
    }
    if !rollout_moved && new_latches.is_empty() && !resumed {
        recorder.weights();
    }
    bound(&mut recorder.history, change.keep);
    after.history = recorder.history;
    recorder.ended
}

/// The mirror's pairs of `service` now, with the shadow stage's verdict on
/// them (`None` without a mirror). The verdict is the stage's policy's, or
/// `not judged` for a mirror with no shadow stage.
pub fn shadow_figures(service: &ServiceSnapshot) -> Option<ShadowFigures> {
    let mirror = service.mirror.as_ref()?;
    let figures = mirror.figures();
    let policy = service
        .rollout
        .as_ref()
        .and_then(|r| r.shadow.as_ref())
        .zip(service.guard.as_ref())
        .map(|(shadow, guard)| crate::mirror::policy(shadow, guard.min_requests));
    let verdict = policy.map_or_else(
        || "not judged".to_string(),
        |policy| crate::mirror::pairs::verdict(&figures, &policy).to_string(),
    );
    Some(ShadowFigures {
        version: mirror.version_name.to_string(),
        pairs: figures.pairs,
        mismatches: figures.mismatches,
        mismatch_rate: (figures.mismatch_rate() * 10_000.0).round() / 10_000.0,
        latency_ratio_p95: figures
            .latency_ratio_p95
            .map(|r| (r * 100.0).round() / 100.0),
        copies: crate::mirror::RESULTS
            .iter()
            .zip(mirror.state.counts.get())
            .map(|(result, count)| ((*result).to_string(), count))
            .collect(),
        verdict,
    })
}

/// One version's window now, as a record keeps it.
pub fn figures(version: &VersionSnapshot, elapsed: Duration, window: Duration) -> Figures {
    let window = version.stats.window().figures(elapsed, window);
    let ms = |us: Option<f64>| us.map(|v| (v / 10.0).round() / 100.0);
    Figures {
        version: version.name.to_string(),
        requests: window.requests,
        rps: (window.rps() * 100.0).round() / 100.0,
        error_rate: (window.error_rate() * 10_000.0).round() / 10_000.0,
        p50_ms: ms(window.p50_us),
        p95_ms: ms(window.p95_us),
        p99_ms: ms(window.p99_us),
    }
}

fn same_latch(a: &Latch, b: &Latch) -> bool {
    a.version == b.version && a.revision == b.revision
}

struct Recorder<'a> {
    change: &'a Change<'a>,
    figures: &'a dyn Fn(&str) -> Option<Figures>,
    ended: Vec<Ended>,
    history: Vec<Record>,
}

impl Recorder<'_> {
    fn baseline(&self) -> Option<&str> {
        let service = self.change.service;
        let guard = service.guard.as_ref()?;
        service
            .versions
            .get(guard.baseline)
            .map(|v| v.name.as_str())
    }

    fn revision_of(&self, version: &str) -> String {
        self.change
            .service
            .versions
            .iter()
            .find(|v| v.name == version)
            .map(|v| v.revision.clone())
            .unwrap_or_default()
    }

    /// The window of `version` and of the baseline, in that order.
    fn figures_of(&self, version: &str) -> Vec<Figures> {
        let mut out: Vec<Figures> = (self.figures)(version).into_iter().collect();
        if let Some(baseline) = self.baseline().filter(|b| *b != version) {
            out.extend((self.figures)(baseline));
        }
        out
    }

    fn record(&self, kind: Kind, version: &str, outcome: Outcome) -> Record {
        let now = self.change.now_ms;
        Record {
            id: new_id(now),
            kind,
            version: version.to_string(),
            revision: self.revision_of(version),
            actor: self.change.actor,
            started_unix_ms: now,
            ended_unix_ms: (outcome != Outcome::InProgress).then_some(now),
            outcome,
            reason: None,
            weights_before: self.change.weights_before.clone().unwrap_or_default(),
            weights_after: self.change.weights_after.clone(),
            steps: Vec::new(),
            figures: Vec::new(),
        }
    }

    /// Follows the rollout: a start, a step, an end. Whether it started or
    /// stepped (then the weights moved because of it, not by hand).
    fn rollout(&mut self, progress: Option<&RolloutProgress>, latches: &[Latch]) -> bool {
        let open = self
            .history
            .iter()
            .rposition(|r| r.kind == Kind::Rollout && r.is_open());
        let Some(progress) = progress else {
            if let Some(index) = open {
                self.close(index, Outcome::Abandoned, "the rollout left the config");
            }
            return false;
        };
        let mut open = open;
        if let Some(index) = open {
            let record = &self.history[index];
            if record.version != progress.candidate || record.revision != progress.revision {
                let reason = format!(
                    "replaced by the rollout of {} {}",
                    progress.candidate, progress.revision
                );
                self.close(index, Outcome::Abandoned, &reason);
                open = None;
            }
        }
        let step = progress.step + 1;
        let percent = self.percent(progress);
        match (open, progress.outcome) {
            (None, RolloutOutcome::InProgress) => {
                let mut record =
                    self.record(Kind::Rollout, &progress.candidate, Outcome::InProgress);
                record.revision.clone_from(&progress.revision);
                record.steps.push(Step {
                    step,
                    percent,
                    entered_unix_ms: self.change.now_ms,
                    left_unix_ms: None,
                    left_by: None,
                    figures: Vec::new(),
                    shadow: None,
                });
                self.history.push(record);
                true
            }
            (None, _) => false,
            (Some(index), RolloutOutcome::InProgress) => {
                let at = self.history[index].steps.last().map(|s| s.step);
                if at == Some(step) {
                    return false;
                }
                self.leave_step(index);
                self.history[index].steps.push(Step {
                    step,
                    percent,
                    entered_unix_ms: self.change.now_ms,
                    left_unix_ms: None,
                    left_by: None,
                    figures: Vec::new(),
                    shadow: None,
                });
                true
            }
            (Some(index), outcome) => {
                let (outcome, reason) = match outcome {
                    RolloutOutcome::Completed => (Outcome::Completed, None),
                    RolloutOutcome::RolledBack => (
                        Outcome::RolledBack,
                        latches
                            .iter()
                            .find(|l| {
                                l.version == progress.candidate && l.revision == progress.revision
                            })
                            .map(|l| l.reason.clone()),
                    ),
                    _ => (
                        Outcome::Abandoned,
                        Some(
                            match self.change.actor {
                                Actor::Reload => "the file's weights changed",
                                _ => "weights set by hand",
                            }
                            .to_string(),
                        ),
                    ),
                };
                self.close(index, outcome, reason.as_deref().unwrap_or(""));
                false
            }
        }
    }

    fn percent(&self, progress: &RolloutProgress) -> u32 {
        self.change
            .service
            .rollout
            .as_ref()
            .map_or(0, |config| crate::rollout::percent(config, progress))
    }

    /// The open step of record `index` is left now, with the window's
    /// figures, and the pairs' when it was the shadow stage.
    fn leave_step(&mut self, index: usize) {
        let version = self.history[index].version.clone();
        let figures = self.figures_of(&version);
        let (now, actor) = (self.change.now_ms, self.change.actor);
        let shadow_stage = self
            .change
            .service
            .rollout
            .as_ref()
            .is_some_and(|r| r.shadow.is_some());
        let shadow = self
            .change
            .shadow
            .clone()
            .filter(|s| shadow_stage && s.version == version);
        if let Some(step) = self.history[index]
            .steps
            .last_mut()
            .filter(|s| s.left_unix_ms.is_none())
        {
            step.left_unix_ms = Some(now);
            step.left_by = Some(actor);
            step.figures = figures;
            // The shadow stage is always the first step.
            if step.step == 1 {
                step.shadow = shadow;
            }
        }
    }

    /// A rollout paused by this change gets a record (who, and why); returns
    /// the progress of a rollout this change let go on after a pause.
    fn pause<'p>(
        &mut self,
        before: Option<&RolloutProgress>,
        after: Option<&'p RolloutProgress>,
    ) -> Option<&'p RolloutProgress> {
        let (before, after) = (before?, after?);
        let same = before.candidate == after.candidate && before.revision == after.revision;
        if !same || after.outcome != RolloutOutcome::InProgress {
            return None;
        }
        match (before.paused, after.paused) {
            (false, true) => {
                let mut record = self.record(Kind::Pause, &after.candidate, Outcome::Completed);
                record.revision.clone_from(&after.revision);
                record.reason.clone_from(&after.pause_reason);
                record.figures = self.figures_of(&after.candidate);
                self.history.push(record);
                None
            }
            (true, false) if self.change.actor == Actor::Admin => Some(after),
            _ => None,
        }
    }

    /// An operator let a paused rollout go on (no latch to clear).
    fn resume_rollout(&mut self, progress: &RolloutProgress) {
        let mut record = self.record(Kind::Resume, &progress.candidate, Outcome::Completed);
        record.revision.clone_from(&progress.revision);
        record.reason = Some("the paused rollout goes on".to_string());
        self.history.push(record);
    }

    fn close(&mut self, index: usize, outcome: Outcome, reason: &str) {
        self.leave_step(index);
        let now = self.change.now_ms;
        let weights = self.change.weights_after.clone();
        let record = &mut self.history[index];
        record.outcome = outcome;
        record.ended_unix_ms = Some(now);
        record.weights_after = weights;
        if !reason.is_empty() {
            record.reason = Some(reason.to_string());
        }
        self.ended.push(Ended {
            outcome,
            duration: Duration::from_millis(record.duration_ms().unwrap_or(0)),
        });
    }

    fn latch(&mut self, latch: &Latch) {
        let manual = latch.reason == "manual";
        let kind = if manual { Kind::Rollback } else { Kind::Trip };
        let mut record = self.record(kind, &latch.version, Outcome::RolledBack);
        if manual {
            record.actor = Actor::Admin;
        } else if latch.reason.starts_with("check") {
            record.actor = Actor::Check;
        }
        record.revision.clone_from(&latch.revision);
        record.reason = Some(latch.reason.clone());
        record.figures = self.figures_of(&latch.version);
        self.history.push(record);
    }

    fn resume(&mut self, cleared: &[&Latch]) {
        let names: Vec<&str> = cleared.iter().map(|l| l.version.as_str()).collect();
        let revisions: Vec<&str> = cleared.iter().map(|l| l.revision.as_str()).collect();
        let mut record = self.record(Kind::Resume, &names.join(", "), Outcome::Completed);
        record.revision = revisions.join(", ");
        self.history.push(record);
    }

    fn weights(&mut self) {
        let Some(before) = &self.change.weights_before else {
            return;
        };
        let after = &self.change.weights_after;
        if before == after {
            return;
        }
        let (was, now) = (majority(before), majority(after));
        let (kind, version) = match (was, now) {
            (Some(was), Some(now)) if was != now => (Kind::Switch, now.to_string()),
            _ => {
                // The version whose weight rose most (or fell least).
                let risen = after
                    .iter()
                    .max_by_key(|(name, w)| {
                        i64::from(**w) - i64::from(before.get(*name).copied().unwrap_or(0))
                    })
                    .map(|(name, _)| name.clone())
                    .unwrap_or_default();
                (Kind::Weights, risen)
            }
        };
        let mut record = self.record(kind, &version, Outcome::Completed);
        if kind == Kind::Switch {
            let mut figures: Vec<Figures> = (self.figures)(&version).into_iter().collect();
            if let Some(was) = was {
                figures.extend((self.figures)(was));
            }
            record.figures = figures;
        }
        self.history.push(record);
    }
}

/// The version with more than half of the weight, if one has.
fn majority(weights: &BTreeMap<String, u32>) -> Option<&str> {
    let total: u64 = weights.values().map(|&w| u64::from(w)).sum();
    weights
        .iter()
        .find(|(_, &w)| u64::from(w) * 2 > total)
        .map(|(name, _)| name.as_str())
}

/// A record id: its start and 32 random bits, unique across a fleet.
fn new_id(now_ms: u64) -> String {
    format!("{now_ms:x}-{:08x}", fastrand::u32(..))
}

#[cfg(test)]
mod tests;
