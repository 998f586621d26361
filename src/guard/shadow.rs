//! The shadow stage's judge: a rollout that starts with `shadow:` keeps its
//! candidate at 0 % of live traffic while the mirror sends it copies, and the
//! candidate is judged on the pairs (`mirror::pairs`) instead of a window of
//! its own traffic, with the guard's `consecutive` and interval. A bad
//! verdict trips the candidate like any other trip (latch, webhook, a
//! rolled-back rollout) before a user was served by it; the rollout leaves
//! the stage only on a healthy verdict.

use std::collections::HashMap;

use crate::control::{Measured, Trip};
use crate::mirror::{pairs, ShadowVerdict};
use crate::snapshot::ServiceSnapshot;

/// The shadow stage's verdict on version `index` of `service`, when that
/// version is in a shadow stage now: a rollout with `shadow`, the mirror
/// sending to its candidate, and no live traffic on it.
pub fn stage_verdict(service: &ServiceSnapshot, index: usize) -> Option<(ShadowVerdict, u64)> {
    let rollout = service.rollout.as_ref()?;
    let shadow = rollout.shadow.as_ref()?;
    let mirror = service.mirror.as_ref()?;
    let guard = service.guard.as_ref()?;
    let version = service.versions.get(index)?;
    if rollout.candidate != index || mirror.version != index || version.latched {
        return None;
    }
    let figures = mirror.figures();
    let policy = crate::mirror::policy(shadow, guard.min_requests);
    Some((pairs::verdict(&figures, &policy), figures.pairs))
}

/// For the rollout runner at step `step`: `None` outside a shadow stage;
/// `Ok(pairs)` when the stage's verdict is healthy (the pairs stand for the
/// requests a live step needs, at least `min_requests`); `Err(why)` while it
/// is not.
pub fn stage_gate(
    service: &ServiceSnapshot,
    step: usize,
    min_requests: u64,
) -> Option<Result<u64, String>> {
    let rollout = service.rollout.as_ref()?;
    if step != 0 || rollout.shadow.is_none() {
        return None;
    }
    let Some((verdict, pairs)) = stage_verdict(service, rollout.candidate) else {
        return Some(Err(
            "shadow stage: no mirror is sending copies to the candidate".to_string(),
        ));
    };
    match verdict {
        ShadowVerdict::Healthy => Some(Ok(pairs.max(min_requests))),
        other => Some(Err(format!("shadow stage: {other}"))),
    }
}

/// Bad verdicts in a row, per service, version and revision.
#[derive(Debug, Default)]
pub struct ShadowJudge {
    streaks: HashMap<(String, String, String), u32>,
}

impl ShadowJudge {
    /// Judges version `index` when it is in a shadow stage: the verdict in
    /// words, and the trip when the streak reached the guard's
    /// `consecutive`.
    pub fn judge(
        &mut self,
        service: &ServiceSnapshot,
        index: usize,
    ) -> Option<(String, Option<Trip>)> {
        let version = service.versions.get(index)?;
        let key = (
            service.name.to_string(),
            version.name.to_string(),
            version.revision.to_string(),
        );
        let Some((verdict, pairs)) = stage_verdict(service, index) else {
            self.streaks.remove(&key);
            return None;
        };
        let consecutive = service.guard.as_ref().map_or(1, |g| g.consecutive);
        let ShadowVerdict::Bad {
            reason,
            observed,
            threshold,
        } = verdict
        else {
            self.streaks.remove(&key);
            return Some((format!("shadow: {verdict}"), None));
        };
        let streak = self.streaks.entry(key.clone()).or_insert(0);
        *streak += 1;
        let words = format!("shadow: {verdict} ({streak}/{consecutive} in a row)");
        if *streak < consecutive {
            return Some((words, None));
        }
        self.streaks.remove(&key);
        let trip = Trip {
            service: key.0,
            version: key.1,
            reason: reason.to_string(),
            measured: Measured {
                observed: Some(observed),
                threshold: Some(threshold),
                window_requests: pairs,
                ..Measured::default()
            },
        };
        Some((words, Some(trip)))
    }
}
