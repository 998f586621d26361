use std::collections::BTreeMap;

use super::*;
use crate::config::Config;
use crate::state::history::{Actor, Kind, Outcome};

fn config() -> Config {
    let yaml = "listeners: [{name: l, address: '127.0.0.1:0'}]\n\
         services:\n  - name: svc\n    versions:\n\
         \x20     - {name: stable, revision: '1', endpoints: ['127.0.0.1:1'], weight: 100}\n\
         \x20     - {name: canary, revision: '2', endpoints: ['127.0.0.1:2'], weight: 0}\n\
         \x20   guard: {baseline: stable, max_error_rate: 0.05}\n\
         \x20   rollout: {candidate: canary, steps: [10, 50, 100], hold: 1s}\n";
    crate::config::parse_str(yaml, "t.yaml").expect("valid")
}

fn weights(stable: u32, canary: u32) -> BTreeMap<String, u32> {
    BTreeMap::from([("stable".into(), stable), ("canary".into(), canary)])
}

fn some_figures(version: &str) -> Option<Figures> {
    Some(Figures {
        version: version.to_string(),
        requests: 100,
        rps: 10.0,
        error_rate: if version == "canary" { 0.5 } else { 0.0 },
        p50_ms: Some(1.0),
        p95_ms: Some(2.0),
        p99_ms: Some(3.0),
    })
}

/// Applies `step` to a copy of `before` and observes it.
fn run(
    actor: Actor,
    before: &ServiceState,
    w: (BTreeMap<String, u32>, BTreeMap<String, u32>),
    now_ms: u64,
    step: impl FnOnce(&mut ServiceState),
) -> (ServiceState, Vec<Ended>) {
    let config = config();
    let mut after = before.clone();
    step(&mut after);
    let change = Change {
        actor,
        service: &config.services[0],
        before: Some(before),
        weights_before: Some(w.0),
        weights_after: w.1,
        now_ms,
        keep: 50,
        shadow: None,
    };
    let ended = observe(&change, &mut after, &some_figures);
    (after, ended)
}

#[test]
fn a_rollout_is_one_record_with_its_steps_and_their_figures() {
    let config = config();
    let candidate = &config.services[0].versions[1];
    let rollout = config.services[0].rollout.clone().expect("rollout");
    let empty = ServiceState::default();
    let (s, _) = run(
        Actor::Reload,
        &empty,
        (weights(100, 0), weights(90, 10)),
        1_000,
        |s| {
            s.rollout = Some(crate::rollout::start(candidate, 1_000));
        },
    );
    assert_eq!(s.history.len(), 1);
    assert_eq!(s.history[0].kind, Kind::Rollout);
    assert_eq!(s.history[0].outcome, Outcome::InProgress);
    assert_eq!(s.history[0].steps.len(), 1);
    assert_eq!(s.history[0].steps[0].percent, 10);

    let (s, ended) = run(
        Actor::Rollout,
        &s,
        (weights(90, 10), weights(50, 50)),
        2_000,
        |s| {
            let p = s.rollout.as_ref().expect("progress");
            s.rollout = Some(crate::rollout::promote(p, &rollout, false, 2_000).expect("promote"));
        },
    );
    assert!(ended.is_empty());
    assert_eq!(s.history.len(), 1, "a step is not a record of its own");
    let steps = &s.history[0].steps;
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].left_unix_ms, Some(2_000));
    assert_eq!(steps[0].left_by, Some(Actor::Rollout));
    let names: Vec<&str> = steps[0]
        .figures
        .iter()
        .map(|f| f.version.as_str())
        .collect();
    assert_eq!(
        names,
        ["canary", "stable"],
        "the candidate's and the baseline's window"
    );
    assert_eq!(steps[1].percent, 50);

    let (s, ended) = run(
        Actor::Rollout,
        &s,
        (weights(50, 50), weights(50, 50)),
        5_000,
        |s| {
            let p = s.rollout.as_ref().expect("progress");
            s.rollout = Some(crate::rollout::complete(p));
        },
    );
    assert_eq!(
        ended,
        vec![Ended {
            outcome: Outcome::Completed,
            duration: Duration::from_millis(4_000)
        }]
    );
    let record = &s.history[0];
    assert_eq!(record.outcome, Outcome::Completed);
    assert_eq!(record.ended_unix_ms, Some(5_000));
    assert!(record.steps.iter().all(|s| !s.figures.is_empty()));
}

#[test]
fn a_trip_rolls_the_rollout_back_with_its_reason_and_is_a_record_of_its_own() {
    let config = config();
    let candidate = &config.services[0].versions[1];
    let mut before = ServiceState {
        rollout: Some(crate::rollout::start(candidate, 0)),
        ..ServiceState::default()
    };
    let (s, _) = run(
        Actor::Reload,
        &ServiceState::default(),
        (weights(100, 0), weights(90, 10)),
        0,
        |s| {
            *s = before.clone();
        },
    );
    before = s;
    let (s, ended) = run(
        Actor::Guard,
        &before,
        (weights(90, 10), weights(100, 0)),
        3_000,
        |s| {
            s.latches.push(Latch {
                version: "canary".into(),
                revision: "2".into(),
                reason: "error_rate".into(),
                at_unix_ms: 3_000,
                id: 0,
            });
            let p = s.rollout.as_ref().expect("progress");
            s.rollout = Some(crate::rollout::on_rollback(p));
        },
    );
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].outcome, Outcome::RolledBack);
    assert_eq!(s.history.len(), 2);
    assert_eq!(s.history[0].outcome, Outcome::RolledBack);
    assert_eq!(s.history[0].reason.as_deref(), Some("error_rate"));
    let trip = &s.history[1];
    assert_eq!((trip.kind, trip.actor), (Kind::Trip, Actor::Guard));
    assert_eq!(trip.figures[0].error_rate, 0.5);
    assert_eq!(trip.weights_after, weights(100, 0));

    // The operator resumes: a resume record, and the rollout starts over as
    // a new record.
    let (s, _) = run(
        Actor::Admin,
        &s,
        (weights(100, 0), weights(90, 10)),
        9_000,
        |s| {
            s.latches.clear();
            let p = s.rollout.as_ref().expect("progress");
            s.rollout = Some(crate::rollout::resume(p, 9_000));
        },
    );
    let kinds: Vec<Kind> = s.history.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [Kind::Rollout, Kind::Trip, Kind::Rollout, Kind::Resume]
    );
    assert_eq!(s.history[3].actor, Actor::Admin);
}

#[test]
fn weights_by_hand_are_a_switch_when_the_majority_moves() {
    let empty = ServiceState::default();
    let (s, _) = run(
        Actor::Admin,
        &empty,
        (weights(100, 0), weights(80, 20)),
        1,
        |_| {},
    );
    assert_eq!(s.history[0].kind, Kind::Weights);
    assert_eq!(s.history[0].version, "canary");
    let (s, _) = run(
        Actor::Admin,
        &s,
        (weights(80, 20), weights(0, 100)),
        2,
        |_| {},
    );
    assert_eq!(s.history[1].kind, Kind::Switch);
    assert_eq!(s.history[1].version, "canary");
    assert_eq!(s.history[1].revision, "2");
    assert_eq!(s.history[1].figures.len(), 2);
    let (s, _) = run(
        Actor::Admin,
        &s,
        (weights(0, 100), weights(0, 100)),
        3,
        |_| {},
    );
    assert_eq!(s.history.len(), 2, "no change, no record");
}

#[test]
fn manual_weights_abandon_a_rollout_and_history_is_bounded() {
    let config = config();
    let candidate = &config.services[0].versions[1];
    let (mut s, _) = run(
        Actor::Reload,
        &ServiceState::default(),
        (weights(100, 0), weights(90, 10)),
        0,
        |s| {
            s.rollout = Some(crate::rollout::start(candidate, 0));
        },
    );
    let (next, ended) = run(
        Actor::Admin,
        &s,
        (weights(90, 10), weights(70, 30)),
        10,
        |s| {
            let p = s.rollout.as_ref().expect("progress");
            s.rollout = Some(crate::rollout::abandon(p));
        },
    );
    assert_eq!(ended[0].outcome, Outcome::Abandoned);
    assert_eq!(
        next.history[0].reason.as_deref(),
        Some("weights set by hand")
    );
    assert_eq!(next.history[1].kind, Kind::Weights);
    s = next;
    for i in 0..60 {
        let (a, b) = if i % 2 == 0 { (70, 30) } else { (60, 40) };
        let (next, _) = run(
            Actor::Admin,
            &s,
            (weights(b, a), weights(a, b)),
            20 + i,
            |_| {},
        );
        s = next;
    }
    assert_eq!(s.history.len(), 50);
    assert_eq!(s.history.last().map(|r| r.started_unix_ms), Some(79));
}

#[test]
fn a_new_revision_replaces_the_rollout_in_progress() {
    let config = config();
    let candidate = &config.services[0].versions[1];
    let (s, _) = run(
        Actor::Reload,
        &ServiceState::default(),
        (weights(100, 0), weights(90, 10)),
        0,
        |s| {
            s.rollout = Some(crate::rollout::start(candidate, 0));
        },
    );
    let mut next = candidate.clone();
    next.revision = "3".into();
    let (s, ended) = run(
        Actor::Reload,
        &s,
        (weights(90, 10), weights(90, 10)),
        50,
        |s| {
            s.rollout = Some(crate::rollout::start(&next, 50));
        },
    );
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].outcome, Outcome::Abandoned);
    assert_eq!(s.history.len(), 2);
    assert_eq!(
        s.history[0].reason.as_deref(),
        Some("replaced by the rollout of canary 3")
    );
    assert_eq!(s.history[1].revision, "3");
    assert!(s.history[1].is_open());
}

fn shadow_config() -> Config {
    let yaml = "listeners: [{name: l, address: '127.0.0.1:0'}]\n\
         services:\n  - name: svc\n    versions:\n\
         \x20     - {name: stable, revision: '1', endpoints: ['127.0.0.1:1'], weight: 100}\n\
         \x20     - {name: canary, revision: '2', endpoints: ['127.0.0.1:2'], weight: 0}\n\
         \x20   guard: {baseline: stable, max_error_rate: 0.05}\n\
         \x20   mirror: {version: canary}\n\
         \x20   rollout: {candidate: canary, steps: [10, 100], hold: 1s, shadow: {hold: 1s, max_mismatch_rate: 0.01}}\n";
    crate::config::parse_str(yaml, "t.yaml").expect("valid")
}

fn pairs(verdict: &str) -> ShadowFigures {
    ShadowFigures {
        version: "canary".into(),
        pairs: 200,
        mismatches: 40,
        mismatch_rate: 0.2,
        latency_ratio_p95: Some(1.1),
        copies: BTreeMap::from([("sent".into(), 200)]),
        verdict: verdict.into(),
    }
}

#[test]
fn a_pause_is_a_record_with_its_reason_and_its_resume_is_another() {
    let config = config();
    let candidate = &config.services[0].versions[1];
    let before = ServiceState {
        rollout: Some(crate::rollout::start(candidate, 0)),
        ..ServiceState::default()
    };
    let (paused, _) = run(
        Actor::Check,
        &before,
        (weights(90, 10), weights(90, 10)),
        1_000,
        |s| {
            let p = s.rollout.as_ref().expect("progress");
            let mut next = crate::rollout::pause(p).expect("in progress");
            next.pause_reason = Some("check `conversion` was inconclusive".into());
            s.rollout = Some(next);
        },
    );
    let record = paused.history.last().expect("a pause record");
    assert_eq!(record.kind, Kind::Pause);
    assert_eq!(record.actor, Actor::Check);
    assert_eq!(record.version, "canary");
    assert_eq!(
        record.reason.as_deref(),
        Some("check `conversion` was inconclusive")
    );
    let kinds = |s: &ServiceState| s.history.iter().map(|r| r.kind).collect::<Vec<_>>();
    assert_eq!(
        kinds(&paused),
        [Kind::Rollout, Kind::Pause],
        "no weight record: none moved"
    );

    // Paused again: still one pause.
    let (again, _) = run(
        Actor::Admin,
        &paused,
        (weights(90, 10), weights(90, 10)),
        1_500,
        |s| {
            let p = s.rollout.as_ref().expect("progress");
            s.rollout = crate::rollout::pause(p);
        },
    );
    assert_eq!(kinds(&again), [Kind::Rollout, Kind::Pause], "one pause");

    let (resumed, _) = run(
        Actor::Admin,
        &again,
        (weights(90, 10), weights(90, 10)),
        2_000,
        |s| {
            let p = s.rollout.as_ref().expect("progress");
            s.rollout = Some(crate::rollout::resume(p, 2_000));
        },
    );
    let record = resumed.history.last().expect("a resume record");
    assert_eq!(record.kind, Kind::Resume);
    assert_eq!(record.actor, Actor::Admin);
    assert_eq!(record.version, "canary");
    assert_eq!(
        resumed
            .rollout
            .as_ref()
            .and_then(|p| p.pause_reason.clone()),
        None,
        "a resume clears the reason with the pause"
    );
}

#[test]
fn a_shadow_stage_left_for_the_first_live_step_keeps_its_pairs() {
    let config = shadow_config();
    let service = &config.services[0];
    let rollout = service.rollout.clone().expect("rollout");
    let before = ServiceState {
        rollout: Some(crate::rollout::start(&service.versions[1], 0)),
        ..ServiceState::default()
    };
    let mut after = before.clone();
    let mut with_record = before.clone();
    let start = Change {
        actor: Actor::Reload,
        service,
        before: Some(&ServiceState::default()),
        weights_before: Some(weights(100, 0)),
        weights_after: weights(100, 0),
        now_ms: 0,
        keep: 50,
        shadow: Some(pairs("insufficient data: 0/50 pairs")),
    };
    observe(&start, &mut with_record, &some_figures);
    assert_eq!(with_record.history[0].steps[0].percent, 0);
    assert_eq!(with_record.history[0].steps[0].shadow, None, "not left yet");

    after.history = with_record.history.clone();
    let p = after.rollout.as_ref().expect("progress");
    after.rollout = Some(crate::rollout::promote(p, &rollout, false, 1_000).expect("promote"));
    let step = Change {
        actor: Actor::Rollout,
        service,
        before: Some(&with_record),
        weights_before: Some(weights(100, 0)),
        weights_after: weights(90, 10),
        now_ms: 1_000,
        keep: 50,
        shadow: Some(pairs("healthy")),
    };
    observe(&step, &mut after, &some_figures);
    let steps = &after.history[0].steps;
    assert_eq!(steps.len(), 2);
    let stage = steps[0].shadow.as_ref().expect("the stage's pairs");
    assert_eq!(stage.verdict, "healthy");
    assert_eq!(stage.pairs, 200);
    assert_eq!(steps[0].left_by, Some(Actor::Rollout));
}

#[test]
fn a_failed_shadow_stage_closes_the_rollout_rolled_back_with_its_pairs() {
    let config = shadow_config();
    let service = &config.services[0];
    let mut before = ServiceState {
        rollout: Some(crate::rollout::start(&service.versions[1], 0)),
        ..ServiceState::default()
    };
    let start = Change {
        actor: Actor::Reload,
        service,
        before: Some(&ServiceState::default()),
        weights_before: Some(weights(100, 0)),
        weights_after: weights(100, 0),
        now_ms: 0,
        keep: 50,
        shadow: None,
    };
    observe(&start, &mut before, &some_figures);
    let mut after = before.clone();
    after.latches.push(crate::state::Latch {
        at_unix_ms: 1_000,
        id: 0,
        reason: "shadow_mismatch".into(),
        revision: "2".into(),
        version: "canary".into(),
    });
    let p = after.rollout.as_ref().expect("progress");
    after.rollout = Some(crate::rollout::on_rollback(p));
    let trip = Change {
        actor: Actor::Guard,
        service,
        before: Some(&before),
        weights_before: Some(weights(100, 0)),
        weights_after: weights(100, 0),
        now_ms: 1_000,
        keep: 50,
        shadow: Some(pairs("bad: shadow_mismatch 0.2000 > 0.0100")),
    };
    observe(&trip, &mut after, &some_figures);
    let rollout = after
        .history
        .iter()
        .find(|r| r.kind == Kind::Rollout)
        .expect("the rollout record");
    assert_eq!(rollout.outcome, Outcome::RolledBack);
    assert_eq!(rollout.reason.as_deref(), Some("shadow_mismatch"));
    assert_eq!(rollout.steps.len(), 1, "never reached a live step");
    let stage = rollout.steps[0].shadow.as_ref().expect("the stage's pairs");
    assert_eq!(stage.mismatch_rate, 0.2);
    assert!(stage.verdict.starts_with("bad: shadow_mismatch"));
    assert!(after.history.iter().any(|r| r.kind == Kind::Trip));
}
