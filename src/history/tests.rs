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
