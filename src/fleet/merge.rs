//! Three-way merge of one service's run-time layer, for a fleet whose
//! replicas change the same service at once.
//!
//! `base` is what this replica last knew the fleet to hold, `local` what it
//! holds now, `remote` what the fleet holds now. What only one side changed
//! since `base` is taken from that side; what both changed goes to the side
//! whose change is the safer one. Latches are never lost to a merge: a latch
//! either side added stays, and one goes only when a side removed exactly the
//! latch `base` held (an operator's resume). Without a base (a replica that
//! was cut off from the store since it started) nothing can be known to be
//! removed, so latches are the union and the fleet's weights win. The
//! release history is the union of both sides' records, by id.

use crate::state::{Latch, RolloutOutcome, RolloutProgress, ServiceState};

pub fn merge(
    base: Option<&ServiceState>,
    local: &ServiceState,
    remote: &ServiceState,
) -> ServiceState {
    let empty = ServiceState::default();
    let (weights, file_weights) = match base {
        Some(base)
            if (&local.weights, &local.file_weights) == (&base.weights, &base.file_weights) =>
        {
            (remote.weights.clone(), remote.file_weights.clone())
        }
        Some(base)
            if (&remote.weights, &remote.file_weights) == (&base.weights, &base.file_weights) =>
        {
            (local.weights.clone(), local.file_weights.clone())
        }
        // Both changed, or nothing to tell: the fleet's write came first.
        _ => (remote.weights.clone(), remote.file_weights.clone()),
    };
    ServiceState {
        weights,
        file_weights,
        latches: merge_latches(
            base.map(|b| &b.latches[..]),
            &local.latches,
            &remote.latches,
        ),
        rollout: merge_rollout(
            base.map_or(&empty.rollout, |b| &b.rollout),
            base.is_some(),
            &local.rollout,
            &remote.rollout,
        ),
        // Records are facts, never undone: the union of both sides.
        history: crate::state::history::union(&local.history, &remote.history),
    }
}

/// A sibling's write (`theirs`), merged by the store with this replica's
/// layer as it was then (`merged_with`), taken in by a control plane whose
/// layer is now `ours`. When `ours` moved on meanwhile (a resume, a trip, a
/// weights command taken between the store's merge and this), what it
/// changed since is put back on top, three ways against `merged_with`:
/// replacing `ours` with `theirs` would undo a decision nobody else has
/// seen yet, and the store would never write it.
pub fn rebase(
    merged_with: Option<&ServiceState>,
    ours: Option<&ServiceState>,
    theirs: Option<ServiceState>,
) -> Option<ServiceState> {
    if ours == merged_with {
        return theirs;
    }
    match (ours, theirs) {
        (Some(ours), Some(theirs)) => {
            let empty = ServiceState::default();
            Some(merge(Some(merged_with.unwrap_or(&empty)), ours, &theirs))
        }
        // Gone from the fleet, but changed here since: kept.
        (Some(ours), None) => Some(ours.clone()),
        // Dropped here since (a reload): the fleet's stands, as in the store.
        (None, theirs) => theirs,
    }
}

fn same_latch(a: &Latch, b: &Latch) -> bool {
    a.version == b.version && a.revision == b.revision
}

fn merge_latches(base: Option<&[Latch]>, local: &[Latch], remote: &[Latch]) -> Vec<Latch> {
    let base = base.unwrap_or(&[]);
    // A side removed a latch when base held it and that side no longer does.
    let removed_by = |side: &[Latch], latch: &Latch| {
        base.iter().any(|b| b == latch) && !side.iter().any(|s| same_latch(s, latch))
    };
    let mut merged: Vec<Latch> = Vec::new();
    for latch in remote.iter().chain(local) {
        if merged.iter().any(|m| same_latch(m, latch)) {
            continue;
        }
        if removed_by(local, latch) || removed_by(remote, latch) {
            continue;
        }
        merged.push(latch.clone());
    }
    merged
}

fn merge_rollout(
    base: &Option<RolloutProgress>,
    has_base: bool,
    local: &Option<RolloutProgress>,
    remote: &Option<RolloutProgress>,
) -> Option<RolloutProgress> {
    if has_base && local == base {
        return remote.clone();
    }
    if has_base && remote == base {
        return local.clone();
    }
    match (local, remote) {
        (Some(l), Some(r)) if l.candidate == r.candidate && l.revision == r.revision => {
            // A rollback anywhere in the fleet is a rollback everywhere.
            if l.outcome == RolloutOutcome::RolledBack && r.outcome != RolloutOutcome::RolledBack {
                return Some(l.clone());
            }
            if r.outcome == RolloutOutcome::RolledBack {
                return Some(r.clone());
            }
            // Otherwise the one further along, and never less hold time.
            let (ahead, behind) = if (l.step, l.held_ms) > (r.step, r.held_ms) {
                (l, r)
            } else {
                (r, l)
            };
            let mut merged = ahead.clone();
            merged.paused = l.paused || r.paused;
            if ahead.step == behind.step {
                merged.held_ms = ahead.held_ms.max(behind.held_ms);
            }
            Some(merged)
        }
        (_, Some(r)) => Some(r.clone()),
        (Some(l), None) => Some(l.clone()),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn latch(version: &str, revision: &str, at: u64) -> Latch {
        Latch {
            version: version.into(),
            revision: revision.into(),
            reason: "error_rate".into(),
            at_unix_ms: at,
            id: 0,
        }
    }

    fn progress(step: usize, held_ms: u64, outcome: RolloutOutcome) -> RolloutProgress {
        RolloutProgress {
            candidate: "canary".into(),
            revision: "v2".into(),
            step,
            step_entered_unix_ms: 1,
            held_ms,
            paused: false,
            pause_reason: None,
            outcome,
        }
    }

    fn weights(pairs: &[(&str, u32)]) -> Option<BTreeMap<String, u32>> {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    #[test]
    fn a_latch_added_on_either_side_survives() {
        let base = ServiceState::default();
        let local = ServiceState {
            latches: vec![latch("canary", "v2", 10)],
            ..Default::default()
        };
        let remote = ServiceState {
            weights: weights(&[("stable", 50), ("canary", 50)]),
            latches: vec![latch("beta", "b1", 11)],
            ..Default::default()
        };
        let merged = merge(Some(&base), &local, &remote);
        assert_eq!(merged.latches.len(), 2);
        assert_eq!(merged.weights, remote.weights);
    }

    #[test]
    fn a_resume_removes_the_latch_it_saw_and_only_that_one() {
        let old = latch("canary", "v2", 10);
        let base = ServiceState {
            latches: vec![old.clone()],
            ..Default::default()
        };
        let resumed = ServiceState::default();
        // The fleet still holds the latch the resume saw: it goes.
        let merged = merge(Some(&base), &resumed, &base);
        assert!(merged.latches.is_empty());
        // Another replica tripped the same revision again since (a new
        // latch, not the one the operator saw)... still the same version
        // and revision, so the operator's resume of it wins only over the
        // exact latch; the fresh trip stays.
        let tripped_again = ServiceState {
            latches: vec![latch("canary", "v2", 99)],
            ..Default::default()
        };
        let merged = merge(Some(&base), &resumed, &tripped_again);
        assert_eq!(merged.latches, tripped_again.latches);
    }

    #[test]
    fn a_trip_identical_to_the_resumed_latch_but_for_its_id_stays() {
        // Two replicas tripped the same revision for the same reason in the
        // same millisecond; an operator resumed the one they saw.
        let seen = Latch {
            id: 1,
            ..latch("canary", "v2", 10)
        };
        let other = Latch {
            id: 2,
            ..latch("canary", "v2", 10)
        };
        let base = ServiceState {
            latches: vec![seen],
            ..Default::default()
        };
        let resumed = ServiceState::default();
        let tripped = ServiceState {
            latches: vec![other.clone()],
            ..Default::default()
        };
        let merged = merge(Some(&base), &resumed, &tripped);
        assert_eq!(merged.latches, vec![other]);
    }

    #[test]
    fn a_latch_id_is_written_and_a_latch_without_one_still_reads() {
        let fresh = Latch {
            id: Latch::fresh_id(),
            ..latch("canary", "v2", 10)
        };
        assert_ne!(fresh.id, 0);
        let json = serde_json::to_string(&fresh).expect("encode");
        assert!(json.contains("\"id\":"), "{json}");
        let old: Latch = serde_json::from_str(
            r#"{"at_unix_ms":10,"reason":"error_rate","revision":"v2","version":"canary"}"#,
        )
        .expect("a latch written before ids existed");
        assert_eq!(old, latch("canary", "v2", 10));
        let old_json = serde_json::to_string(&old).expect("encode");
        assert!(!old_json.contains("\"id\""), "{old_json}");
    }

    #[test]
    fn without_a_base_latches_are_the_union_and_the_fleet_weights_win() {
        let local = ServiceState {
            weights: weights(&[("stable", 0), ("canary", 100)]),
            latches: vec![latch("canary", "v2", 10)],
            ..Default::default()
        };
        let remote = ServiceState {
            weights: weights(&[("stable", 90), ("canary", 10)]),
            latches: vec![latch("beta", "b1", 11)],
            ..Default::default()
        };
        let merged = merge(None, &local, &remote);
        assert_eq!(merged.latches.len(), 2);
        assert_eq!(merged.weights, remote.weights);
    }

    #[test]
    fn weights_changed_only_here_are_kept() {
        let base = ServiceState {
            weights: weights(&[("stable", 90), ("canary", 10)]),
            ..Default::default()
        };
        let local = ServiceState {
            weights: weights(&[("stable", 50), ("canary", 50)]),
            ..Default::default()
        };
        let remote = ServiceState {
            latches: vec![latch("canary", "v1", 3)],
            ..base.clone()
        };
        let merged = merge(Some(&base), &local, &remote);
        assert_eq!(merged.weights, local.weights);
        assert_eq!(merged.latches, remote.latches);
    }

    #[test]
    fn a_rollback_anywhere_wins_over_progress_elsewhere() {
        let base = ServiceState {
            rollout: Some(progress(1, 0, RolloutOutcome::InProgress)),
            ..Default::default()
        };
        let local = ServiceState {
            rollout: Some(progress(2, 500, RolloutOutcome::InProgress)),
            ..Default::default()
        };
        let remote = ServiceState {
            rollout: Some(progress(1, 300, RolloutOutcome::RolledBack)),
            ..Default::default()
        };
        let merged = merge(Some(&base), &local, &remote);
        assert_eq!(
            merged.rollout.map(|p| p.outcome),
            Some(RolloutOutcome::RolledBack)
        );
    }

    #[test]
    fn hold_time_is_never_lost_and_the_step_never_goes_back() {
        let base = ServiceState {
            rollout: Some(progress(1, 100, RolloutOutcome::InProgress)),
            ..Default::default()
        };
        let local = ServiceState {
            rollout: Some(progress(1, 900, RolloutOutcome::InProgress)),
            ..Default::default()
        };
        let mut remote_progress = progress(1, 400, RolloutOutcome::InProgress);
        remote_progress.paused = true;
        let remote = ServiceState {
            rollout: Some(remote_progress),
            ..Default::default()
        };
        let merged = merge(Some(&base), &local, &remote)
            .rollout
            .expect("a rollout");
        assert_eq!((merged.step, merged.held_ms, merged.paused), (1, 900, true));
        let ahead = ServiceState {
            rollout: Some(progress(3, 0, RolloutOutcome::InProgress)),
            ..Default::default()
        };
        let merged = merge(Some(&base), &local, &ahead)
            .rollout
            .expect("a rollout");
        assert_eq!(merged.step, 3);
    }

    #[test]
    fn a_resume_taken_after_the_stores_merge_survives_taking_it_in() {
        let latched = ServiceState {
            latches: vec![latch("canary", "v2", 10)],
            ..Default::default()
        };
        // A sibling's write, merged with the latched layer.
        let theirs = ServiceState {
            weights: weights(&[("stable", 60), ("canary", 40)]),
            ..latched.clone()
        };
        // Meanwhile the operator resumed here.
        let ours = ServiceState::default();
        let taken = rebase(Some(&latched), Some(&ours), Some(theirs.clone())).expect("a layer");
        assert!(taken.latches.is_empty(), "the resume holds");
        assert_eq!(taken.weights, theirs.weights, "the sibling's change is in");
        // Nothing decided here since: the store's merge as it is.
        let taken = rebase(Some(&latched), Some(&latched), Some(theirs.clone()));
        assert_eq!(taken, Some(theirs));
    }

    #[test]
    fn a_trip_taken_after_the_stores_merge_of_a_resume_stays() {
        let old = ServiceState {
            latches: vec![latch("canary", "v2", 10)],
            ..Default::default()
        };
        // The fleet resumed the old latch; here the canary tripped again.
        let ours = ServiceState {
            latches: vec![latch("canary", "v2", 20)],
            ..Default::default()
        };
        let taken = rebase(Some(&old), Some(&ours), Some(ServiceState::default()));
        assert_eq!(taken.map(|s| s.latches), Some(ours.latches.clone()));
        // The fleet dropped the service; a trip here since keeps it.
        let taken = rebase(Some(&old), Some(&ours), None);
        assert_eq!(taken, Some(ours));
    }

    #[test]
    fn the_history_is_the_union_of_both_sides() {
        use crate::state::history::{Actor, Kind, Outcome, Record};
        let record = |id: &str, at: u64| Record {
            id: id.into(),
            kind: Kind::Weights,
            version: "canary".into(),
            revision: "v2".into(),
            actor: Actor::Admin,
            started_unix_ms: at,
            ended_unix_ms: Some(at),
            outcome: Outcome::Completed,
            reason: None,
            weights_before: BTreeMap::new(),
            weights_after: BTreeMap::new(),
            steps: Vec::new(),
            figures: Vec::new(),
        };
        let base = ServiceState {
            history: vec![record("a", 1)],
            ..ServiceState::default()
        };
        let local = ServiceState {
            history: vec![record("a", 1), record("l", 3)],
            ..ServiceState::default()
        };
        let remote = ServiceState {
            history: vec![record("a", 1), record("r", 2)],
            ..ServiceState::default()
        };
        let merged = merge(Some(&base), &local, &remote);
        let ids: Vec<&str> = merged.history.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "r", "l"], "every record once, in order of start");
    }
}
