//! Progressive rollouts: the candidate moves through `rollout.steps` by
//! itself. Each step holds for its hold of running time (paused time and
//! downtime do not count), or, for a `manual` step, until `veer promote`; it
//! moves on only when the candidate's window holds at least the guard's
//! `min_requests` and the guard has not tripped it, and, when `rollout.gate`
//! is set, only once the gate answers 2xx before a weight increase.
//!
//! The last step holds like the others: a rollout is completed only when all
//! traffic has been on the candidate for that hold with no trip. A trip or
//! an operator's rollback of the candidate afterwards still turns it into
//! rolled back, for that revision, until the revision changes or an operator
//! resumes. Progress lives in the run-time layer, so a restart resumes the
//! same step with the hold time already spent.
//!
//! The transitions are the pure functions below ([`decide`], [`promote`],
//! [`complete`], [`on_rollback`], [`abandon`], [`pause`], [`resume`],
//! [`hold`], [`min_remaining`]); `control`'s actor only applies them.
//!
//! One clock: in a fleet only the leader (`fleet::leader`) ticks, that is
//! adds hold time, asks the gate and moves steps; the others take its
//! progress from the shared store. A single process is its own leader. What
//! a step is judged on is the runner's [`StepFigures`]: the candidate's
//! window summed over the fleet (this replica's own outside a fleet).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::{Hold, Rollout};
use crate::control::Control;
use crate::state::{RolloutOutcome, RolloutProgress};

const TICK: Duration = Duration::from_millis(100);
/// How long a refused or unanswered gate waits before it is asked again.
const GATE_RETRY: Duration = Duration::from_secs(5);
const GATE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the rollout should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing: finished, paused, or not held long enough.
    Hold,
    /// A manual step: nothing moves it but `veer promote`.
    AwaitPromotion,
    /// Held long enough, but the window has too few requests to vouch for
    /// the step.
    AwaitTraffic { requests: u64, needed: u64 },
    /// Ready for the next step.
    Advance,
    /// The last step held: the rollout is complete.
    Complete,
}

/// The pure decision for one rollout.
pub fn decide(
    progress: &RolloutProgress,
    rollout: &Rollout,
    window_requests: u64,
    min_requests: u64,
) -> Decision {
    if progress.outcome != RolloutOutcome::InProgress || progress.paused {
        return Decision::Hold;
    }
    let Some(step) = rollout.steps.get(progress.step) else {
        // Past the end (a config that lost steps): the last step applies.
        return Decision::Complete;
    };
    match step.hold {
        Hold::Manual => return Decision::AwaitPromotion,
        Hold::For(hold) if u128::from(progress.held_ms) < hold.as_millis() => {
            return Decision::Hold
        }
        Hold::For(_) => {}
    }
    if window_requests < min_requests {
        return Decision::AwaitTraffic {
            requests: window_requests,
            needed: min_requests,
        };
    }
    if progress.step + 1 >= rollout.steps.len() {
        Decision::Complete
    } else {
        Decision::Advance
    }
}

/// The progress that applies to `service` as configured now: the one for
/// its candidate at the candidate's current revision. Progress for another
/// candidate or revision is history, not in force.
pub fn current<'a>(
    service: &crate::config::Service,
    progress: Option<&'a RolloutProgress>,
) -> Option<&'a RolloutProgress> {
    let rollout = service.rollout.as_ref()?;
    let candidate = service.versions.get(rollout.candidate)?;
    progress.filter(|p| p.candidate == candidate.name && p.revision == candidate.revision)
}

/// A new rollout of `candidate` at its revision, at the first step from `now_ms`.
pub fn start(candidate: &crate::config::Version, now_ms: u64) -> RolloutProgress {
    RolloutProgress {
        candidate: candidate.name.clone(),
        revision: candidate.revision.clone(),
        step: 0,
        step_entered_unix_ms: now_ms,
        held_ms: 0,
        paused: false,
        pause_reason: None,
        outcome: RolloutOutcome::InProgress,
    }
}

/// The candidate's percentage at the rollout's current step (all of it once
/// completed).
pub fn percent(rollout: &Rollout, progress: &RolloutProgress) -> u32 {
    match progress.outcome {
        RolloutOutcome::Completed => 100,
        _ => rollout.percent(progress.step),
    }
}

/// Why a rollout cannot move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stuck {
    /// Completed, rolled back or abandoned.
    Finished(RolloutOutcome),
}

/// The progress after a move forward at `now_ms`: one step (`full`: straight
/// to the last step, which then holds like any other). Promoting the last
/// step completes the rollout: the operator vouches for it.
pub fn promote(
    progress: &RolloutProgress,
    rollout: &Rollout,
    full: bool,
    now_ms: u64,
) -> Result<RolloutProgress, Stuck> {
    if progress.outcome != RolloutOutcome::InProgress {
        return Err(Stuck::Finished(progress.outcome));
    }
    let last = rollout.steps.len().saturating_sub(1);
    let mut next = progress.clone();
    if progress.step >= last {
        next.outcome = RolloutOutcome::Completed;
        return Ok(next);
    }
    next.step = if full { last } else { progress.step + 1 };
    next.held_ms = 0;
    next.step_entered_unix_ms = now_ms;
    Ok(next)
}

/// The last step held: the same progress, completed.
pub fn complete(progress: &RolloutProgress) -> RolloutProgress {
    let mut next = progress.clone();
    if next.outcome == RolloutOutcome::InProgress {
        next.outcome = RolloutOutcome::Completed;
    }
    next
}

/// The candidate was rolled back (a trip or an operator): a rollout in
/// progress or completed becomes rolled back. An abandoned one stays so (a
/// person set weights by hand; the rollout was over before).
pub fn on_rollback(progress: &RolloutProgress) -> RolloutProgress {
    let mut next = progress.clone();
    if matches!(
        next.outcome,
        RolloutOutcome::InProgress | RolloutOutcome::Completed
    ) {
        next.outcome = RolloutOutcome::RolledBack;
    }
    next
}

/// An operator set weights by hand: a rollout in progress (or completed,
/// whose 100 % would keep overriding them) ends where it is.
pub fn abandon(progress: &RolloutProgress) -> RolloutProgress {
    let mut next = progress.clone();
    if matches!(
        next.outcome,
        RolloutOutcome::InProgress | RolloutOutcome::Completed
    ) {
        next.outcome = RolloutOutcome::Abandoned;
    }
    next
}

/// Holds the rollout at its step until `resume`; `None` when it is not in
/// progress (nothing to pause).
pub fn pause(progress: &RolloutProgress) -> Option<RolloutProgress> {
    if progress.outcome != RolloutOutcome::InProgress {
        return None;
    }
    let mut next = progress.clone();
    next.paused = true;
    Some(next)
}

/// An operator resumed at `now_ms`: a paused rollout goes on where it was; a
/// rolled-back one starts again from its first step, with no hold time.
pub fn resume(progress: &RolloutProgress, now_ms: u64) -> RolloutProgress {
    let mut next = progress.clone();
    next.paused = false;
    next.pause_reason = None;
    if next.outcome == RolloutOutcome::RolledBack {
        next.outcome = RolloutOutcome::InProgress;
        next.step = 0;
        next.held_ms = 0;
        next.step_entered_unix_ms = now_ms;
    }
    next
}

/// `held` more running time at the current step of a running rollout (the
/// caller checks it runs: paused time does not count).
pub fn hold(progress: &RolloutProgress, held: Duration) -> RolloutProgress {
    let mut next = progress.clone();
    next.held_ms = next
        .held_ms
        .saturating_add(u64::try_from(held.as_millis()).unwrap_or(u64::MAX));
    next
}

/// How a rollout's outcome reads in messages, `/status` and `/metrics`.
pub fn outcome_word(outcome: RolloutOutcome) -> &'static str {
    match outcome {
        RolloutOutcome::InProgress => "in_progress",
        RolloutOutcome::Completed => "completed",
        RolloutOutcome::RolledBack => "rolled_back",
        RolloutOutcome::Abandoned => "abandoned",
    }
}

/// The least running time left before the rollout can complete: the rest of
/// the current step's hold and every later step's. `None` when a manual step
/// is still ahead (it waits for a person), or when the rollout is over.
pub fn min_remaining(progress: &RolloutProgress, rollout: &Rollout) -> Option<Duration> {
    if progress.outcome != RolloutOutcome::InProgress {
        return None;
    }
    let mut total = Duration::ZERO;
    for (index, step) in rollout.steps.iter().enumerate().skip(progress.step) {
        let Hold::For(hold) = step.hold else {
            return None;
        };
        let held = if index == progress.step {
            Duration::from_millis(progress.held_ms)
        } else {
            Duration::ZERO
        };
        total += hold.saturating_sub(held);
    }
    Some(total)
}

/// The least running time the whole rollout takes; `None` with a manual step.
pub fn min_total(rollout: &Rollout) -> Option<Duration> {
    rollout
        .steps
        .iter()
        .try_fold(Duration::ZERO, |total, step| match step.hold {
            Hold::For(hold) => Some(total + hold),
            Hold::Manual => None,
        })
}

/// What the rollout judges a step on: the candidate's figures over the
/// guard's window. The runner asks it once per tick and rollout.
pub trait StepFigures: Send + Sync {
    fn figures(
        &self,
        service: &crate::snapshot::ServiceSnapshot,
        candidate: usize,
        window: Duration,
        elapsed: Duration,
    ) -> crate::telemetry::Figures;
}

/// The candidate's window summed over the fleet's live replicas that run
/// its revision (this replica's own alone outside a fleet): the leader
/// judges a step on the traffic of the whole fleet, as the guard does.
pub struct FleetFigures(pub Arc<Control>);

impl StepFigures for FleetFigures {
    fn figures(
        &self,
        service: &crate::snapshot::ServiceSnapshot,
        candidate: usize,
        window: Duration,
        elapsed: Duration,
    ) -> crate::telemetry::Figures {
        let version = &service.versions[candidate];
        let mut counts = version.stats.window().counts(elapsed, window);
        if let Some(fleet) = self.0.fleet() {
            fleet
                .siblings()
                .add_to(&service.name, &version.name, &version.revision, &mut counts);
        }
        counts.figures()
    }
}

/// Why the rollout's checks do not let its step end yet, in words; `None`
/// once every check has passed on the candidate since the step began (its
/// latest run at this step passed: a failure within `failure_limit` or an
/// inconclusive run holds the step until a pass follows).
pub fn checks_waiting(
    rollout: &Rollout,
    progress: &RolloutProgress,
    reports: Option<&crate::status::ChecksReport>,
) -> Option<String> {
    use crate::status::{CheckScope, CheckVerdict};
    let step = progress.step + 1;
    for check in &rollout.checks {
        let latest = reports.into_iter().flat_map(|r| &r.results).find(|r| {
            r.scope == CheckScope::Rollout
                && r.name == check.name
                && r.version == progress.candidate
                && r.revision == progress.revision
                && r.step == Some(step)
        });
        match latest.map(|r| (r.verdict, r.reason.as_deref())) {
            Some((CheckVerdict::Pass, _)) => {}
            Some((verdict @ (CheckVerdict::Fail | CheckVerdict::Inconclusive), reason)) => {
                return Some(format!(
                    "waiting for checks: `{}` was {} at step {step}{}",
                    check.name,
                    verdict.as_str(),
                    reason.map(|r| format!(" ({r})")).unwrap_or_default()
                ));
            }
            Some((CheckVerdict::Pending, _)) | None => {
                return Some(format!(
                    "waiting for checks: `{}` has not run since step {step} began",
                    check.name
                ));
            }
        }
    }
    None
}

struct GateCall {
    step: usize,
    answer: oneshot::Receiver<Result<(), String>>,
}

pub struct RolloutRunner {
    control: Arc<Control>,
    figures: Arc<dyn StepFigures>,
    pending_gates: HashMap<String, GateCall>,
    gate_retry_at: HashMap<String, Instant>,
    /// The indices of the services with a rollout (and a guard) in the
    /// snapshot of this generation: a tick walks those, not thousands of
    /// services without one.
    rolling: (u64, Arc<[usize]>),
}

impl RolloutRunner {
    /// A runner that judges steps on this replica's own windows.
    pub fn new(control: Arc<Control>) -> RolloutRunner {
        let figures = Arc::new(FleetFigures(Arc::clone(&control)));
        RolloutRunner::judging_on(control, figures)
    }

    /// A runner that judges steps on `figures`.
    pub fn judging_on(control: Arc<Control>, figures: Arc<dyn StepFigures>) -> RolloutRunner {
        RolloutRunner {
            control,
            figures,
            pending_gates: HashMap::new(),
            gate_retry_at: HashMap::new(),
            rolling: (0, Arc::from([])),
        }
    }

    /// Drives every rollout until `stop` changes.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            let now = Instant::now();
            self.step(now, now.duration_since(last)).await;
            last = now;
        }
    }

    /// One tick over every rollout: the hold time for all of them as one
    /// change, then each one's decision. The gates' words go out in one
    /// batch, sent ahead of any step so they land in the order they were said.
    async fn step(&mut self, now: Instant, since_last: Duration) {
        if !self.control.leadership().is_leader() {
            // A follower: the leader's progress reaches it through the
            // store. A gate call under way is the old leader's business.
            self.pending_gates.clear();
            return;
        }
        let snapshot = self.control.snapshot();
        if self.rolling.0 != snapshot.generation {
            let rolling = snapshot
                .services
                .iter()
                .enumerate()
                .filter(|(_, s)| s.rollout.is_some() && s.guard.is_some())
                .map(|(i, _)| i);
            self.rolling = (snapshot.generation, rolling.collect());
        }
        let rolling = Arc::clone(&self.rolling.1);
        let services = || rolling.iter().filter_map(|&i| snapshot.services.get(i));
        let elapsed = self.control.telemetry().elapsed(now);
        let holds = services()
            .map(|s| (Arc::clone(&s.name), since_last))
            .collect();
        self.control.add_rollout_holds(holds).await;
        let view = self.control.view();
        let mut gates = Vec::new();
        for service in services() {
            let (Some(rollout), Some(guard)) = (&service.rollout, &service.guard) else {
                continue;
            };
            let name = &*service.name;
            let Some(progress) = view.rollout(name) else {
                continue;
            };
            let figures = self
                .figures
                .figures(service, rollout.candidate, guard.window, elapsed);
            let mut requests = figures.requests;
            // A shadow stage is vouched for by its pairs, and only while
            // their verdict is healthy.
            match crate::guard::shadow::stage_gate(service, progress.step, guard.min_requests) {
                None => {}
                Some(Ok(pairs)) => requests = pairs,
                Some(Err(why)) => {
                    gates.push((name.to_string(), why));
                    continue;
                }
            }
            let progress = &progress;
            let mut decision = decide(progress, rollout, requests, guard.min_requests);
            if matches!(decision, Decision::Advance | Decision::Complete) {
                let reports = view.checks(name).map(|c| &**c);
                if let Some(words) = checks_waiting(rollout, progress, reports) {
                    gates.push((name.to_string(), words));
                    decision = Decision::Hold;
                }
            }
            match decision {
                Decision::Hold => {
                    self.pending_gates.remove(name);
                }
                Decision::AwaitPromotion => {
                    self.pending_gates.remove(name);
                    gates.push((
                        name.to_string(),
                        format!(
                            "waiting for `veer promote {name}`: step {} is manual",
                            progress.step + 1
                        ),
                    ));
                }
                Decision::Complete => {
                    self.pending_gates.remove(name);
                    self.control.set_gate_statuses(std::mem::take(&mut gates));
                    if !self.control.leadership().is_leader() {
                        return;
                    }
                    let completed = self.control.complete_rollout(name).await;
                    let after = self.control.snapshot();
                    crate::audit::rollout("complete", name, &snapshot, &after, &completed);
                    if let Err(reason) = completed {
                        tracing::warn!(service = name, %reason, "rollout could not complete");
                    }
                }
                Decision::AwaitTraffic { requests, needed } => {
                    gates.push((
                        name.to_string(),
                        format!("waiting for traffic: {requests}/{needed} requests in the window"),
                    ));
                }
                Decision::Advance => match &rollout.gate {
                    None => {
                        self.control.set_gate_statuses(std::mem::take(&mut gates));
                        self.advance(name).await;
                    }
                    Some(gate) => {
                        self.ask_gate(name, gate, progress, rollout, &figures, now, &mut gates)
                            .await;
                    }
                },
            }
        }
        self.control.set_gate_statuses(gates);
    }

    async fn advance(&mut self, service: &str) {
        self.pending_gates.remove(service);
        // The lead may have gone while this tick waited on the actor: a
        // step is moved only by a replica that leads when it moves it.
        if !self.control.leadership().is_leader() {
            return;
        }
        let before = self.control.snapshot();
        let advanced = self
            .control
            .advance_rollout_by(service, false, crate::state::history::Actor::Rollout)
            .await;
        crate::audit::rollout(
            "promote",
            service,
            &before,
            &self.control.snapshot(),
            &advanced,
        );
        if let Err(reason) = advanced {
            tracing::warn!(service, %reason, "rollout could not advance");
        }
    }

    /// Asks the gate before a weight increase, without blocking the loop.
    /// What the gate says goes to `gates`.
    #[allow(clippy::too_many_arguments)]
    async fn ask_gate(
        &mut self,
        service: &str,
        gate: &http::Uri,
        progress: &RolloutProgress,
        rollout: &Rollout,
        figures: &crate::telemetry::Figures,
        now: Instant,
        gates: &mut Vec<(String, String)>,
    ) {
        if let Some(call) = self.pending_gates.get_mut(service) {
            if call.step != progress.step {
                self.pending_gates.remove(service);
                return;
            }
            match call.answer.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => {}
                Ok(Ok(())) => {
                    gates.push((
                        service.to_string(),
                        format!("approved step {}", progress.step + 2),
                    ));
                    self.control.set_gate_statuses(std::mem::take(gates));
                    self.advance(service).await;
                }
                Ok(Err(reason)) => {
                    self.pending_gates.remove(service);
                    self.gate_retry_at
                        .insert(service.to_string(), now + GATE_RETRY);
                    gates.push((
                        service.to_string(),
                        format!("holding: the gate refused the next step: {reason}"),
                    ));
                }
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.pending_gates.remove(service);
                }
            }
            return;
        }
        if self.gate_retry_at.get(service).is_some_and(|at| now < *at) {
            return;
        }
        let next = progress.step + 1;
        let event = serde_json::json!({
            "service": service,
            "candidate": progress.candidate,
            "revision": progress.revision,
            "from_step": progress.step + 1,
            "to_step": next + 1,
            "steps": rollout.steps.len(),
            "from_percent": rollout.steps.get(progress.step).map(|s| s.percent),
            "to_percent": rollout.steps.get(next).map(|s| s.percent),
            "window_requests": figures.requests,
            "error_rate": figures.error_rate(),
            "p50_ms": figures.p50_us.map(|us| us / 1000.0),
            "p95_ms": figures.p95_us.map(|us| us / 1000.0),
            "p99_ms": figures.p99_us.map(|us| us / 1000.0),
        });
        let (reply, answer) = oneshot::channel();
        let url = gate.clone();
        tokio::spawn(async move {
            let result = match tokio::time::timeout(
                GATE_TIMEOUT,
                crate::guard::webhook::post(&url, bytes::Bytes::from(event.to_string())),
            )
            .await
            {
                Ok(Ok(status)) if status.is_success() => Ok(()),
                Ok(Ok(status)) => Err(format!("it answered {status}")),
                Ok(Err(err)) => Err(format!("unreachable: {err}")),
                Err(_) => Err(format!("no answer within {GATE_TIMEOUT:?}")),
            };
            let _ = reply.send(result);
        });
        gates.push((
            service.to_string(),
            format!("asking the gate for step {}", next + 1),
        ));
        self.pending_gates.insert(
            service.to_string(),
            GateCall {
                step: progress.step,
                answer,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Step;

    fn step(percent: u32, hold: Hold) -> Step {
        Step { percent, hold }
    }

    fn rollout() -> Rollout {
        let two = Hold::For(Duration::from_secs(2));
        Rollout {
            candidate: 1,
            steps: vec![step(10, two), step(50, two), step(100, two)],
            gate: None,
            shadow: None,
            checks: Vec::new(),
        }
    }

    fn progress(step: usize, held_ms: u64) -> RolloutProgress {
        RolloutProgress {
            candidate: "canary".into(),
            revision: "2".into(),
            step,
            step_entered_unix_ms: 0,
            held_ms,
            paused: false,
            pause_reason: None,
            outcome: RolloutOutcome::InProgress,
        }
    }

    #[test]
    fn holds_then_needs_traffic_then_advances() {
        assert_eq!(
            decide(&progress(0, 1_999), &rollout(), 500, 50),
            Decision::Hold
        );
        assert_eq!(
            decide(&progress(0, 2_000), &rollout(), 12, 50),
            Decision::AwaitTraffic {
                requests: 12,
                needed: 50
            }
        );
        assert_eq!(
            decide(&progress(0, 2_000), &rollout(), 50, 50),
            Decision::Advance
        );
    }

    #[test]
    fn the_last_step_holds_before_the_rollout_completes() {
        assert_eq!(
            decide(&progress(2, 1_999), &rollout(), 500, 50),
            Decision::Hold
        );
        assert_eq!(
            decide(&progress(2, 2_000), &rollout(), 10, 50),
            Decision::AwaitTraffic {
                requests: 10,
                needed: 50
            }
        );
        assert_eq!(
            decide(&progress(2, 2_000), &rollout(), 50, 50),
            Decision::Complete
        );
        assert_eq!(
            complete(&progress(2, 2_000)).outcome,
            RolloutOutcome::Completed
        );
    }

    #[test]
    fn a_manual_step_waits_for_promote_whatever_the_hold_time() {
        let mut r = rollout();
        r.steps[1].hold = Hold::Manual;
        assert_eq!(
            decide(&progress(1, u64::MAX), &r, 500, 50),
            Decision::AwaitPromotion
        );
        let next = promote(&progress(1, 0), &r, false, 7).expect("in progress");
        assert_eq!(
            (next.step, next.held_ms, next.step_entered_unix_ms),
            (2, 0, 7)
        );
        assert_eq!(next.outcome, RolloutOutcome::InProgress);
    }

    #[test]
    fn promote_full_goes_to_the_last_step_which_still_holds() {
        let next = promote(&progress(0, 900), &rollout(), true, 1).expect("in progress");
        assert_eq!((next.step, next.held_ms), (2, 0));
        assert_eq!(next.outcome, RolloutOutcome::InProgress);
        // Promoting the last step is the operator vouching for it.
        let done = promote(&next, &rollout(), false, 2).expect("in progress");
        assert_eq!(done.outcome, RolloutOutcome::Completed);
        assert_eq!(
            promote(&done, &rollout(), false, 3),
            Err(Stuck::Finished(RolloutOutcome::Completed))
        );
    }

    #[test]
    fn a_rollback_after_completion_counts_as_rolled_back() {
        let done = complete(&progress(2, 2_000));
        assert_eq!(on_rollback(&done).outcome, RolloutOutcome::RolledBack);
        assert_eq!(
            on_rollback(&progress(1, 0)).outcome,
            RolloutOutcome::RolledBack
        );
        let mut abandoned = progress(1, 0);
        abandoned.outcome = RolloutOutcome::Abandoned;
        assert_eq!(on_rollback(&abandoned).outcome, RolloutOutcome::Abandoned);
    }

    #[test]
    fn remaining_time_counts_every_hold_left_and_none_past_a_manual_step() {
        assert_eq!(min_total(&rollout()), Some(Duration::from_secs(6)));
        assert_eq!(
            min_remaining(&progress(1, 500), &rollout()),
            Some(Duration::from_millis(3_500))
        );
        let mut r = rollout();
        r.steps[2].hold = Hold::Manual;
        assert_eq!(min_total(&r), None);
        assert_eq!(min_remaining(&progress(0, 0), &r), None);
        assert_eq!(min_remaining(&complete(&progress(2, 0)), &rollout()), None);
    }

    #[test]
    fn resume_restarts_a_rolled_back_rollout_and_unpauses_a_running_one() {
        let mut rolled = on_rollback(&progress(2, 1_500));
        rolled.paused = true;
        let again = resume(&rolled, 42);
        assert_eq!(again.outcome, RolloutOutcome::InProgress);
        assert_eq!(
            (
                again.step,
                again.held_ms,
                again.step_entered_unix_ms,
                again.paused
            ),
            (0, 0, 42, false)
        );
        let paused = pause(&progress(1, 700)).expect("in progress");
        assert!(paused.paused);
        let going = resume(&paused, 42);
        assert_eq!((going.step, going.held_ms, going.paused), (1, 700, false));
        assert_eq!(pause(&complete(&progress(2, 0))), None);
    }

    #[test]
    fn manual_weights_end_a_running_or_completed_rollout_only() {
        assert_eq!(abandon(&progress(1, 0)).outcome, RolloutOutcome::Abandoned);
        assert_eq!(
            abandon(&complete(&progress(2, 0))).outcome,
            RolloutOutcome::Abandoned
        );
        let rolled = on_rollback(&progress(1, 0));
        assert_eq!(abandon(&rolled).outcome, RolloutOutcome::RolledBack);
        assert_eq!(
            hold(&progress(1, 100), Duration::from_millis(250)).held_ms,
            350
        );
    }

    #[test]
    fn a_step_waits_for_each_check_to_pass_at_that_step() {
        use crate::config::check::{Check, CheckSource, Template};
        use crate::status::{CheckReport, CheckScope, CheckVerdict, ChecksReport};
        let mut r = rollout();
        r.checks = vec![Check {
            name: "conversion".into(),
            source: CheckSource::Prometheus {
                address: http::Uri::from_static("http://127.0.0.1:9090"),
                query: Template::parse("x").expect("valid"),
            },
            min: None,
            max: Some(0.02),
            failure_limit: 2,
            inconclusive_limit: 3,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }];
        let report = |step: usize, verdict: CheckVerdict| ChecksReport {
            results: vec![CheckReport {
                consecutive_failures: 0,
                consecutive_inconclusive: 0,
                failure_limit: 2,
                inconclusive_limit: 3,
                last_run_at: None,
                max: Some(0.02),
                min: None,
                name: "conversion".into(),
                reason: Some("down".into()),
                revision: "2".into(),
                scope: CheckScope::Rollout,
                source: "prometheus".into(),
                step: Some(step),
                value: None,
                verdict,
                version: "canary".into(),
            }],
            runs: Default::default(),
        };
        let p = progress(1, 2_000);
        assert_eq!(
            checks_waiting(&r, &p, None).as_deref(),
            Some("waiting for checks: `conversion` has not run since step 2 began")
        );
        // A pass at the step before does not count for this one.
        assert!(checks_waiting(&r, &p, Some(&report(1, CheckVerdict::Pass))).is_some());
        assert_eq!(
            checks_waiting(&r, &p, Some(&report(2, CheckVerdict::Inconclusive))).as_deref(),
            Some("waiting for checks: `conversion` was inconclusive at step 2 (down)")
        );
        assert_eq!(
            checks_waiting(&r, &p, Some(&report(2, CheckVerdict::Pass))),
            None
        );
        assert_eq!(checks_waiting(&rollout(), &p, None), None);
    }

    #[test]
    fn paused_and_finished_rollouts_hold() {
        let mut p = progress(0, 10_000);
        p.paused = true;
        assert_eq!(decide(&p, &rollout(), 500, 50), Decision::Hold);
        for outcome in [
            RolloutOutcome::Completed,
            RolloutOutcome::RolledBack,
            RolloutOutcome::Abandoned,
        ] {
            let mut p = progress(2, 10_000);
            p.outcome = outcome;
            assert_eq!(decide(&p, &rollout(), 500, 50), Decision::Hold);
        }
    }
}
