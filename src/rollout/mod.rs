//! Progressive rollouts: the candidate moves through `rollout.steps` by
//! itself. Each step holds for `rollout.hold` of running time (paused time and
//! downtime do not count); it advances only when the candidate's window holds
//! at least the guard's `min_requests` and the guard has not tripped it, and,
//! when `rollout.gate` is set, only once the gate answers 2xx. A trip ends the
//! rollout as rolled back (in `control`). Progress lives in the run-time
//! layer, so a restart resumes the same step with the hold time already
//! spent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::Rollout;
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
    /// Held long enough, but the window has too few requests to vouch for
    /// the step.
    AwaitTraffic { requests: u64, needed: u64 },
    /// Ready for the next step.
    Advance,
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
    if u128::from(progress.held_ms) < rollout.hold.as_millis() {
        return Decision::Hold;
    }
    if window_requests < min_requests {
        return Decision::AwaitTraffic {
            requests: window_requests,
            needed: min_requests,
        };
    }
    Decision::Advance
}

struct GateCall {
    step: usize,
    answer: oneshot::Receiver<Result<(), String>>,
}

pub struct RolloutRunner {
    control: Arc<Control>,
    pending_gates: HashMap<String, GateCall>,
    gate_retry_at: HashMap<String, Instant>,
}

impl RolloutRunner {
    pub fn new(control: Arc<Control>) -> RolloutRunner {
        RolloutRunner {
            control,
            pending_gates: HashMap::new(),
            gate_retry_at: HashMap::new(),
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
            self.step(now, now.duration_since(last));
            last = now;
        }
    }

    fn step(&mut self, now: Instant, since_last: Duration) {
        let snapshot = self.control.snapshot();
        let elapsed = self.control.telemetry().elapsed(now);
        for service in &snapshot.services {
            let (Some(rollout), Some(guard)) = (&service.rollout, &service.guard) else {
                continue;
            };
            let name = &*service.name;
            self.control.add_rollout_hold(name, since_last);
            let Some(progress) = self.control.rollout(name) else {
                continue;
            };
            let candidate = &service.versions[rollout.candidate];
            let figures = candidate.stats.window().figures(elapsed, guard.window);
            let requests = figures.requests;
            match decide(&progress, rollout, requests, guard.min_requests) {
                Decision::Hold => {
                    self.pending_gates.remove(name);
                }
                Decision::AwaitTraffic { requests, needed } => {
                    self.control.set_gate_status(
                        name,
                        format!("waiting for traffic: {requests}/{needed} requests in the window"),
                    );
                }
                Decision::Advance => match &rollout.gate {
                    None => self.advance(name),
                    Some(gate) => self.ask_gate(name, gate, &progress, rollout, &figures, now),
                },
            }
        }
    }

    fn advance(&mut self, service: &str) {
        self.pending_gates.remove(service);
        let before = self.control.snapshot();
        let advanced = self.control.advance_rollout(service, false);
        crate::audit::rollout_step(service, &before, &self.control.snapshot(), &advanced);
        if let Err(reason) = advanced {
            tracing::warn!(service, "rollout could not advance: {reason}");
        }
    }

    /// Asks the gate before a weight increase, without blocking the loop.
    fn ask_gate(
        &mut self,
        service: &str,
        gate: &http::Uri,
        progress: &RolloutProgress,
        rollout: &Rollout,
        figures: &crate::telemetry::Figures,
        now: Instant,
    ) {
        if let Some(call) = self.pending_gates.get_mut(service) {
            if call.step != progress.step {
                self.pending_gates.remove(service);
                return;
            }
            match call.answer.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => {}
                Ok(Ok(())) => {
                    self.control
                        .set_gate_status(service, format!("approved step {}", progress.step + 2));
                    self.advance(service);
                }
                Ok(Err(reason)) => {
                    self.pending_gates.remove(service);
                    self.gate_retry_at
                        .insert(service.to_string(), now + GATE_RETRY);
                    self.control.set_gate_status(
                        service,
                        format!("holding: the gate refused the next step: {reason}"),
                    );
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
            "from_percent": rollout.steps.get(progress.step),
            "to_percent": rollout.steps.get(next),
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
        self.control
            .set_gate_status(service, format!("asking the gate for step {}", next + 1));
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

    fn rollout() -> Rollout {
        Rollout {
            candidate: 1,
            steps: vec![10, 50, 100],
            hold: Duration::from_secs(2),
            gate: None,
        }
    }

    fn progress(held_ms: u64) -> RolloutProgress {
        RolloutProgress {
            candidate: "canary".into(),
            revision: "2".into(),
            step: 0,
            step_entered_unix_ms: 0,
            held_ms,
            paused: false,
            outcome: RolloutOutcome::InProgress,
        }
    }

    #[test]
    fn holds_then_needs_traffic_then_advances() {
        assert_eq!(
            decide(&progress(1_999), &rollout(), 500, 50),
            Decision::Hold
        );
        assert_eq!(
            decide(&progress(2_000), &rollout(), 12, 50),
            Decision::AwaitTraffic {
                requests: 12,
                needed: 50
            }
        );
        assert_eq!(
            decide(&progress(2_000), &rollout(), 50, 50),
            Decision::Advance
        );
    }

    #[test]
    fn paused_and_finished_rollouts_hold() {
        let mut p = progress(10_000);
        p.paused = true;
        assert_eq!(decide(&p, &rollout(), 500, 50), Decision::Hold);
        for outcome in [
            RolloutOutcome::Completed,
            RolloutOutcome::RolledBack,
            RolloutOutcome::Abandoned,
        ] {
            let mut p = progress(10_000);
            p.outcome = outcome;
            assert_eq!(decide(&p, &rollout(), 500, 50), Decision::Hold);
        }
    }
}
