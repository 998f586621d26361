//! The release history's records, as persisted with each service's layer:
//! what a rollout, a switch, a weight change, a trip, a rollback or a resume
//! did, who did it, and how it ended. `crate::history` writes them; this is
//! only their shape, kept here so the layer stays one serde type.
//!
//! Every record carries an `id` unique across a fleet (its start in
//! milliseconds and a random suffix), so the layers of two replicas can be
//! merged as a union of records ([`union`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One release event of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unique across replicas: `<started_unix_ms in hex>-<8 random hex digits>`.
    pub id: String,
    pub kind: Kind,
    /// The version concerned: a rollout's candidate, the version a trip or
    /// rollback took traffic from, the version a switch gave the majority to;
    /// for a weight change, the version whose weight rose most.
    pub version: String,
    pub revision: String,
    pub actor: Actor,
    pub started_unix_ms: u64,
    /// `None` while a rollout is in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_unix_ms: Option<u64>,
    pub outcome: Outcome,
    /// Why it ended as it did: a trip's criterion, `manual`, what abandoned
    /// a rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The weights in force before and after, by version.
    #[serde(default)]
    pub weights_before: BTreeMap<String, u32>,
    #[serde(default)]
    pub weights_after: BTreeMap<String, u32>,
    /// A rollout's steps, in order; empty for other kinds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// The window's figures when it happened (a trip, a rollback, a switch):
    /// the version concerned and the baseline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub figures: Vec<Figures>,
}

impl Record {
    /// Still going: a rollout not yet completed, rolled back or abandoned.
    pub fn is_open(&self) -> bool {
        self.outcome == Outcome::InProgress
    }

    /// How long it took, once ended.
    pub fn duration_ms(&self) -> Option<u64> {
        self.ended_unix_ms
            .map(|end| end.saturating_sub(self.started_unix_ms))
    }
}

/// What kind of change a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A rollout of a candidate revision, step by step.
    Rollout,
    /// A weight change that gave the majority of traffic to another version
    /// (blue-green).
    Switch,
    /// Any other weight change.
    Weights,
    /// The guard (or a check) took traffic from a version.
    Trip,
    /// An operator sent every request to the baseline.
    Rollback,
    /// An operator cleared the latches, or let a paused rollout go on.
    Resume,
    /// A rollout held where it was: by an operator, or by a check that
    /// could not judge the candidate (the record's `reason` says which).
    Pause,
}

impl Kind {
    pub fn word(self) -> &'static str {
        match self {
            Kind::Rollout => "rollout",
            Kind::Switch => "switch",
            Kind::Weights => "weights",
            Kind::Trip => "trip",
            Kind::Rollback => "rollback",
            Kind::Resume => "resume",
            Kind::Pause => "pause",
        }
    }
}

/// Who or what made the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// The guard's verdicts (a trip).
    Guard,
    /// The rollout's own clock (a step held, a rollout completed).
    Rollout,
    /// An external check (Prometheus or web) at a rollout step.
    Check,
    /// An operator through the admin API (or the CLI, or the page).
    Admin,
    /// A new config file.
    Reload,
}

impl Actor {
    pub fn word(self) -> &'static str {
        match self {
            Actor::Guard => "guard",
            Actor::Rollout => "rollout",
            Actor::Check => "check",
            Actor::Admin => "admin",
            Actor::Reload => "reload",
        }
    }
}

/// How a record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A rollout still going.
    InProgress,
    /// A rollout whose last step held; any other change, applied.
    Completed,
    /// Traffic went back to the baseline (a trip, a rollback, a rollout
    /// that tripped).
    RolledBack,
    /// A rollout ended by hand (manual weights) or replaced by a new one.
    Abandoned,
}

impl Outcome {
    pub fn word(self) -> &'static str {
        match self {
            Outcome::InProgress => "in_progress",
            Outcome::Completed => "completed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Abandoned => "abandoned",
        }
    }
}

/// One step of a rollout: entered at `percent`, left (advanced, completed
/// or ended) with the window's figures at that moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// 1-based, as `/status` and the CLI count steps.
    pub step: usize,
    pub percent: u32,
    pub entered_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_unix_ms: Option<u64>,
    /// Who moved the rollout on from this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_by: Option<Actor>,
    /// The candidate's and the baseline's window when the step was left.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub figures: Vec<Figures>,
    /// A shadow stage's pairs when it was left: what let the rollout on to
    /// its first live step, or what rolled it back before any user was
    /// served by the candidate. `None` for a live step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowFigures>,
}

/// A shadow stage's paired figures at a moment: the copies' fate and the
/// pairs of live and shadow answers over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowFigures {
    /// The version the copies went to.
    pub version: String,
    /// Judged pairs in the window.
    pub pairs: u64,
    pub mismatches: u64,
    pub mismatch_rate: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ratio_p95: Option<f64>,
    /// Copies since veer started, by result (`sent`, `dropped`, `failed`,
    /// `skipped`).
    #[serde(default)]
    pub copies: BTreeMap<String, u64>,
    /// The stage's verdict on these pairs, in words (`healthy`, or what was
    /// over its bound).
    pub verdict: String,
}

/// One version's sliding-window figures at a moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub version: String,
    pub requests: u64,
    pub rps: f64,
    pub error_rate: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

/// Keeps at most `keep` records, the newest: closed records go first, so a
/// rollout still in progress keeps its record however busy its service is.
pub fn bound(records: &mut Vec<Record>, keep: usize) {
    while records.len() > keep.max(1) {
        let oldest_closed = records.iter().position(|r| !r.is_open()).unwrap_or(0);
        records.remove(oldest_closed);
    }
}

/// Two replicas' histories of one service as one: every record of either,
/// by id (where both hold a record, the one that has come further: ended,
/// or with more steps), in order of start. Not bounded here: the merge does
/// not know `history.keep`; the control task bounds what it adopts.
pub fn union(local: &[Record], remote: &[Record]) -> Vec<Record> {
    if local == remote {
        return local.to_vec();
    }
    let mut by_id: BTreeMap<&str, &Record> = BTreeMap::new();
    for record in remote.iter().chain(local) {
        let entry = by_id.entry(record.id.as_str()).or_insert(record);
        let further = |r: &Record| (r.ended_unix_ms.is_some(), r.steps.len());
        if further(record) > further(entry) {
            *entry = record;
        }
    }
    let mut merged: Vec<Record> = by_id.into_values().cloned().collect();
    merged.sort_by(|a, b| (a.started_unix_ms, &a.id).cmp(&(b.started_unix_ms, &b.id)));
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, started: u64, outcome: Outcome) -> Record {
        Record {
            id: id.into(),
            kind: Kind::Trip,
            version: "canary".into(),
            revision: "v2".into(),
            actor: Actor::Guard,
            started_unix_ms: started,
            ended_unix_ms: (outcome != Outcome::InProgress).then_some(started),
            outcome,
            reason: None,
            weights_before: BTreeMap::new(),
            weights_after: BTreeMap::new(),
            steps: Vec::new(),
            figures: Vec::new(),
        }
    }

    #[test]
    fn bound_drops_the_oldest_closed_records_first() {
        let mut records = vec![
            record("a", 1, Outcome::InProgress),
            record("b", 2, Outcome::Completed),
            record("c", 3, Outcome::Completed),
            record("d", 4, Outcome::Completed),
        ];
        bound(&mut records, 2);
        let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "d"]);
        bound(&mut records, 0);
        assert_eq!(records.len(), 1, "at least one record is kept");
    }

    #[test]
    fn union_keeps_every_record_once_in_order_and_the_further_copy() {
        let open = record("r", 5, Outcome::InProgress);
        let mut ended = open.clone();
        ended.outcome = Outcome::Completed;
        ended.ended_unix_ms = Some(9);
        let local = vec![record("a", 1, Outcome::Completed), open];
        let remote = vec![ended.clone(), record("b", 7, Outcome::Completed)];
        let merged = union(&local, &remote);
        let ids: Vec<&str> = merged.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "r", "b"]);
        assert_eq!(merged[1], ended);
        assert_eq!(
            union(&remote, &local),
            merged,
            "the same whichever side is local"
        );
    }
}
