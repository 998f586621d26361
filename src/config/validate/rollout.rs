//! `services[].rollout`: candidate, steps and holds.

use super::*;

impl Validator {
    /// `baseline`: `None` without a guard, `Some(None)` with an invalid one.
    pub(super) fn rollout(
        &mut self,
        path: &str,
        raw: RawRollout,
        known: &[String],
        baseline: Option<Option<usize>>,
    ) -> Option<Rollout> {
        let candidate = self.version_ref(
            &format!("{path}.candidate"),
            raw.candidate.as_deref(),
            "missing candidate: name the version being rolled out",
            known,
        );
        let mut ok = true;
        match (baseline, candidate) {
            (None, _) => {
                self.err(
                    path,
                    "a rollout needs a guard: add `guard:` with a baseline (where the rest of the traffic goes) and a threshold, so each step is judged",
                );
                ok = false;
            }
            (Some(Some(baseline)), Some(candidate)) if baseline == candidate => {
                self.err(
                    format!("{path}.candidate"),
                    format!(
                        "candidate `{}` is also the guard's baseline: roll out another version",
                        raw.candidate.unwrap_or_default()
                    ),
                );
                ok = false;
            }
            _ => {}
        }
        // The rollout's `hold` is the default for steps written without
        // one; it may be left out when every step carries its own.
        let default_hold = raw
            .hold
            .as_ref()
            .map(|hold| self.hold(&format!("{path}.hold"), hold).ok_or(()));
        let steps = self.steps(
            &format!("{path}.steps"),
            raw.steps,
            default_hold.and_then(Result::ok),
            path,
            default_hold.is_some(),
        );
        let shadow = raw
            .shadow
            .map(|shadow| self.shadow(&format!("{path}.shadow"), shadow));
        let gate = match raw.gate {
            None => Ok(None),
            Some(text) => self.url(&format!("{path}.gate"), &text).map(Some).ok_or(()),
        };
        let checks = self.checks(&format!("{path}.checks"), raw.checks);
        if !ok || matches!(default_hold, Some(Err(()))) {
            return None;
        }
        let shadow = optional(shadow)?;
        let mut steps = steps?;
        // The shadow stage is the rollout's first step, at 0 %: holds,
        // progress, pause and promote then treat it as any other step.
        if let Some(shadow) = &shadow {
            steps.insert(
                0,
                Step {
                    percent: 0,
                    hold: Hold::For(shadow.hold),
                },
            );
        }
        Some(Rollout {
            candidate: candidate?,
            steps,
            gate: gate.ok()?,
            shadow,
            checks: checks?,
        })
    }

    /// A hold: a positive duration, or `manual` (wait for `veer promote`).
    pub(super) fn hold(&mut self, path: &str, raw: &Scalar) -> Option<Hold> {
        if matches!(raw, Scalar::Text(text) if text == "manual") {
            return Some(Hold::Manual);
        }
        self.positive_duration(path, Some(raw), Duration::ZERO)
            .map(Hold::For)
    }

    /// `default_hold`: the rollout's own `hold`, for bare steps; `hold_written`
    /// says whether it was written at all (an invalid one is reported already).
    pub(super) fn steps(
        &mut self,
        path: &str,
        raw: Option<Vec<RawStep>>,
        default_hold: Option<Hold>,
        rollout_path: &str,
        hold_written: bool,
    ) -> Option<Vec<Step>> {
        let raw = raw.unwrap_or_default();
        if raw.is_empty() {
            self.err(
                path,
                "no steps: list the candidate's percentages of traffic, ending at 100, such as [10, 25, 50, 100]",
            );
            return None;
        }
        let mut ok = true;
        let mut missing_hold = false;
        let mut steps: Vec<Step> = Vec::new();
        for (k, step) in raw.iter().enumerate() {
            let at = format!("{path}[{k}]");
            let (percent, hold, percent_at) = match step {
                RawStep::Plain(percent) => (Some(percent), None, at.clone()),
                RawStep::Detailed(map) => {
                    if map.weight.is_none() {
                        self.err(
                            &at,
                            "missing weight: give the candidate's percentage at this step, such as {weight: 25, hold: 10m}",
                        );
                        ok = false;
                    }
                    (
                        map.weight.as_ref(),
                        map.hold.as_ref(),
                        format!("{at}.weight"),
                    )
                }
            };
            let hold = match hold {
                Some(raw) => {
                    let hold = self.hold(&format!("{at}.hold"), raw);
                    ok &= hold.is_some();
                    hold
                }
                None if default_hold.is_some() => default_hold,
                None => {
                    // Reported once, at the rollout, below.
                    missing_hold |= !hold_written;
                    ok = false;
                    None
                }
            };
            let Some(percent) = percent else { continue };
            let Some(percent) = self.int(&percent_at, percent) else {
                ok = false;
                continue;
            };
            if !(1..=100).contains(&percent) {
                self.err(
                    percent_at,
                    format!("step {percent} is outside 1..=100: steps are percentages of traffic"),
                );
                ok = false;
                continue;
            }
            let percent = u32::try_from(percent).unwrap_or(100);
            if let Some(previous) = steps.last() {
                if percent <= previous.percent {
                    self.err(
                        &percent_at,
                        format!(
                            "step {percent} is not above the previous step {}: steps must be strictly increasing",
                            previous.percent
                        ),
                    );
                    ok = false;
                }
            }
            steps.push(Step {
                percent,
                hold: hold.unwrap_or(Hold::Manual),
            });
        }
        if missing_hold {
            self.err(
                format!("{rollout_path}.hold"),
                "missing hold: say how long each step must stay healthy, such as `hold: 10m`, or give every step its own, such as {weight: 10, hold: 30m}",
            );
        }
        // Judged on the last step as written, even when earlier steps are bad.
        let (last, last_at) = match raw.last() {
            Some(RawStep::Plain(Scalar::Int(n))) => {
                (Some(*n), format!("{path}[{}]", raw.len() - 1))
            }
            Some(RawStep::Detailed(RawStepMap {
                weight: Some(Scalar::Int(n)),
                ..
            })) => (Some(*n), format!("{path}[{}].weight", raw.len() - 1)),
            _ => (None, String::new()),
        };
        if matches!(last, Some(n) if (1..100).contains(&n)) {
            self.err(
                last_at,
                "the last step must be 100: a rollout ends with all traffic on the candidate",
            );
            ok = false;
        }
        ok.then_some(steps)
    }
}
