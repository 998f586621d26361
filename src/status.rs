//! The `/status` report as one type: what the admin API sends and what
//! `veer status` and `veer wait` read. Sender and reader share these structs,
//! so a renamed or retyped field breaks the build, not a pipeline.
//!
//! Data only: depends on serde and on `state` (latches and rollout outcomes
//! are reported as they are persisted). `admin::status` fills it in from the
//! snapshot and the control view.
//!
//! Fields are declared in alphabetical order on purpose: `/status` was first
//! written through a sorted JSON map, and scripts that diff its output keep
//! seeing the same bytes. Readers ignore fields they do not know, so a newer
//! veer can add some without breaking an older CLI.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state::{Latch, RolloutOutcome};

/// `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub config: ConfigReport,
    /// This replica's fleet; absent (not `null`) when it is in none, so a
    /// single veer's report is what it always was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetReport>,
    /// In a fleet: which replica advances the rollouts. Absent for a single
    /// veer (it is its own leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_leader: Option<RolloutLeaderReport>,
    pub services: Vec<ServiceReport>,
}

/// The fleet this replica shares its run-time state and windows with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetReport {
    /// Whether it holds a working connection to etcd now.
    pub connected: bool,
    /// When it last exchanged with etcd (RFC 3339, to the second); `null`
    /// before it ever did.
    pub last_sync: Option<String>,
    /// Its own name.
    pub replica: String,
    /// The live replicas, by name, itself included once etcd knows it.
    pub replicas: Vec<String>,
}

/// A version's figures summed over the live replicas of the fleet that run
/// its revision, over the same window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetWindowReport {
    /// The sum's errors by reason (`5xx`, `timeout`, `reset`, `connect`,
    /// `grpc_status`, `midstream`, …), reasons with a count only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors_by_reason: BTreeMap<String, u64>,
    /// How many replicas' figures are in the sum (this one included).
    pub replicas: u64,
    pub window: WindowReport,
}

/// The fleet's rollout clock as this replica sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutLeaderReport {
    /// The replica that leads; `null` while none does or etcd is away.
    pub leader: Option<String>,
    /// This replica leads: it advances steps and counts their hold.
    pub leading: bool,
    /// This replica's name in the fleet.
    pub replica: String,
}

impl StatusReport {
    /// One service by name.
    pub fn service(&self, name: &str) -> Option<&ServiceReport> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// The config in force and the last reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigReport {
    pub generation: u64,
    pub last_reload: Option<ReloadRecord>,
    /// The file the config came from; `null` for a config given in code.
    pub source: Option<String>,
}

/// The result of the last reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadRecord {
    /// RFC 3339, to the second.
    pub at: String,
    /// Every error of a refused reload, as `FILE:LINE:COL: path: reason`.
    pub errors: Vec<String>,
    pub result: ReloadResult,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadResult {
    Success,
    Failure,
}

impl ReloadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
        }
    }
}

/// Lets a result be compared with the word `/status` shows for it.
impl PartialEq<&str> for ReloadResult {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for ReloadResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// The rollout's and the guard's checks; absent when the service has
    /// none (older reports never had the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<ChecksReport>,
    /// `null` when the service has no guard block.
    pub guard: Option<GuardReport>,
    /// Absent when the service mirrors nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorReport>,
    pub name: String,
    /// `null` when the service has no rollout, or none for its candidate's
    /// current revision.
    pub rollout: Option<RolloutReport>,
    pub versions: Vec<VersionReport>,
    pub window_seconds: u64,
}

impl ServiceReport {
    pub fn version(&self, name: &str) -> Option<&VersionReport> {
        self.versions.iter().find(|v| v.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionReport {
    /// The endpoints written `NAME:PORT`; absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<DnsNameReport>,
    pub endpoints: Vec<EndpointReport>,
    /// In a fleet: the fleet's figures beside this replica's `window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetWindowReport>,
    /// Per gRPC method the version served (`other`: beyond the cap).
    pub grpc_methods: BTreeMap<String, WindowReport>,
    /// The guard's last verdict, in words; `null` before the first.
    pub guard_verdict: Option<String>,
    /// The guard (or an operator's rollback) holds it at weight 0.
    pub latched: bool,
    pub name: String,
    pub protocol: ProtocolName,
    pub revision: String,
    /// No endpoint can serve: its share went to the baseline.
    pub unavailable: bool,
    /// The weight in force.
    pub weight: u32,
    pub window: WindowReport,
}

/// One endpoint name of a version and what it resolves to now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsNameReport {
    /// The endpoints it gives: its last good addresses, at the port written.
    pub addresses: Vec<String>,
    /// Why the last lookup found no address; `null` after a success.
    pub error: Option<String>,
    /// Failed or empty lookups in a row.
    pub failures: u32,
    /// When the last lookup ended (RFC 3339); `null` before the first.
    pub last_lookup_at: Option<String>,
    /// As written: `NAME:PORT`.
    pub name: String,
    /// Milliseconds until the next lookup.
    pub next_lookup_in_ms: u64,
    /// The last lookup's result: `success`, `empty` (no address, or no
    /// such name) or `failure` (no answer); `null` before the first.
    pub result: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolName {
    Http1,
    Http2,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointReport {
    pub address: String,
    pub ejected_for_ms: u64,
    pub ejections: u64,
    pub health: EndpointHealth,
    pub outstanding: u64,
    pub ramping: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointHealth {
    Healthy,
    /// No health check configured: only passive ejection judges it.
    Unchecked,
    Unhealthy,
    Ejected,
}

impl EndpointHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointHealth::Healthy => "healthy",
            EndpointHealth::Unchecked => "unchecked",
            EndpointHealth::Unhealthy => "unhealthy",
            EndpointHealth::Ejected => "ejected",
        }
    }
}

/// A version's (or a method's) figures over the sliding window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowReport {
    pub error_rate: f64,
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub requests: u64,
    pub rps: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardReport {
    pub baseline: String,
    /// The last rollbacks, oldest first (a bounded number).
    pub events: Vec<GuardEvent>,
    pub interval_ms: u64,
    pub latches: Vec<Latch>,
    pub min_requests: u64,
}

/// A rollback, by the guard or an operator: also the webhook's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardEvent {
    pub action: EventAction,
    pub at: String,
    /// The judged window's errors by reason (`5xx`, `timeout`, `reset`,
    /// `grpc_status`, …; the fleet's sum in a fleet), when the trip was
    /// judged on errors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors_by_reason: BTreeMap<String, u64>,
    pub observed: Option<f64>,
    pub reason: String,
    pub revision: String,
    pub service: String,
    pub threshold: Option<f64>,
    pub version: String,
    /// The weights in force after the rollback.
    pub weights: BTreeMap<String, u32>,
    pub window_requests: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventAction {
    Rollback,
}

impl PartialEq<&str> for EventAction {
    fn eq(&self, other: &&str) -> bool {
        matches!((self, *other), (EventAction::Rollback, "rollback"))
    }
}

/// A service's mirror: where copies go, what became of them, and the pairs
/// of live and shadow answers over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorReport {
    /// Mismatches of the same status with other body bytes (routes marked
    /// deterministic).
    pub body_mismatches: u64,
    /// Copies sent since veer started (or since the shadow's revision
    /// changed), by result: `sent`, `dropped`, `failed`, `skipped`.
    pub copies: BTreeMap<String, u64>,
    pub in_flight: u64,
    /// p95 of shadow latency over live latency, pair by pair.
    pub latency_ratio_p95: Option<f64>,
    /// Pairs whose live answer was a server error (not judged).
    pub live_errors: u64,
    pub mismatch_rate: f64,
    pub mismatches: u64,
    /// Judged pairs in the window.
    pub pairs: u64,
    pub percent: u32,
    /// The shadow stage's verdict, while the rollout is in one.
    pub verdict: Option<String>,
    pub version: String,
    pub window_seconds: u64,
}

/// A service's checks: each one's latest state, and the runs counted.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChecksReport {
    /// One entry per check and version it judges (a rollout's checks judge
    /// the candidate; a guard's, every non-baseline version with traffic).
    pub results: Vec<CheckReport>,
    /// Runs since veer started, by check name: what
    /// `veer_check_runs_total` exports.
    pub runs: BTreeMap<String, CheckRuns>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CheckRuns {
    pub fail: u64,
    pub inconclusive: u64,
    pub pass: u64,
}

/// One check's latest state for one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Failed runs in a row (the version trips at `failure_limit`).
    pub consecutive_failures: u32,
    /// Inconclusive runs in a row (the rollout pauses at
    /// `inconclusive_limit`).
    pub consecutive_inconclusive: u32,
    pub failure_limit: u32,
    pub inconclusive_limit: u32,
    /// RFC 3339, to the second; `null` before the first run.
    pub last_run_at: Option<String>,
    pub max: Option<f64>,
    pub min: Option<f64>,
    pub name: String,
    /// Why the last run failed or was inconclusive, in words.
    pub reason: Option<String>,
    pub revision: String,
    /// `rollout` or `guard`: the block the check is written in.
    pub scope: CheckScope,
    /// `prometheus` or `web`.
    pub source: String,
    /// The rollout step (1-based) whose runs these are; `null` for a
    /// guard's check.
    pub step: Option<usize>,
    /// The last value read; `null` before one was read, or when the last
    /// run read none.
    pub value: Option<f64>,
    pub verdict: CheckVerdict,
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckScope {
    Rollout,
    Guard,
}

/// A check's latest verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckVerdict {
    /// No run finished yet (at this step).
    Pending,
    Pass,
    Fail,
    /// The check itself failed: unreachable, an error, no number.
    Inconclusive,
}

impl CheckVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckVerdict::Pending => "pending",
            CheckVerdict::Pass => "pass",
            CheckVerdict::Fail => "fail",
            CheckVerdict::Inconclusive => "inconclusive",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutReport {
    pub candidate: String,
    /// The gate's (or the step's) last word: why the rollout is waiting.
    pub gate: Option<String>,
    pub held_ms: u64,
    /// `null` for a manual step: it waits for `veer promote`, not for time.
    pub hold_ms: Option<u64>,
    pub hold_remaining_ms: Option<u64>,
    pub manual: bool,
    /// The least running time left before completion; `null` while a manual
    /// step lies ahead. What a pipeline sizes `veer wait --timeout` from.
    pub min_remaining_ms: Option<u64>,
    /// The least running time of the whole rollout; `null` with a manual step.
    pub min_total_ms: Option<u64>,
    pub paused: bool,
    /// Why it is paused, in words (kept across restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
    /// The candidate's share at this step (100 once completed).
    pub percent: u32,
    pub revision: String,
    pub state: RolloutOutcome,
    /// 1-based.
    pub step: usize,
    pub steps: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> StatusReport {
        let window = WindowReport {
            error_rate: 0.25,
            errors: 1,
            p50_ms: Some(1.5),
            p95_ms: None,
            p99_ms: Some(12.345),
            requests: 4,
            rps: 0.13,
        };
        StatusReport {
            config: ConfigReport {
                generation: 3,
                last_reload: Some(ReloadRecord {
                    at: "2026-12-07T01:00:00Z".into(),
                    errors: vec!["veer.yaml:3:5: services: bad".into()],
                    result: ReloadResult::Failure,
                }),
                source: Some("/etc/veer.yaml".into()),
            },
            fleet: None,
            rollout_leader: Some(RolloutLeaderReport {
                leader: Some("edge-2".into()),
                leading: false,
                replica: "edge-1".into(),
            }),
            services: vec![ServiceReport {
                checks: Some(ChecksReport {
                    results: vec![CheckReport {
                        consecutive_failures: 1,
                        consecutive_inconclusive: 0,
                        failure_limit: 2,
                        inconclusive_limit: 3,
                        last_run_at: Some("2026-12-07T01:00:02Z".into()),
                        max: Some(0.02),
                        min: None,
                        name: "conversion".into(),
                        reason: Some("0.05 is above max 0.02".into()),
                        revision: "2".into(),
                        scope: CheckScope::Rollout,
                        source: "prometheus".into(),
                        step: Some(1),
                        value: Some(0.05),
                        verdict: CheckVerdict::Fail,
                        version: "canary".into(),
                    }],
                    runs: BTreeMap::from([(
                        "conversion".into(),
                        CheckRuns {
                            fail: 1,
                            inconclusive: 0,
                            pass: 4,
                        },
                    )]),
                }),
                guard: Some(GuardReport {
                    baseline: "stable".into(),
                    events: vec![GuardEvent {
                        action: EventAction::Rollback,
                        at: "2026-12-07T01:00:01Z".into(),
                        errors_by_reason: BTreeMap::from([("5xx".into(), 20)]),
                        observed: Some(0.5),
                        reason: "error_rate".into(),
                        revision: "2".into(),
                        service: "web".into(),
                        threshold: Some(0.05),
                        version: "canary".into(),
                        weights: BTreeMap::from([("canary".into(), 0), ("stable".into(), 100)]),
                        window_requests: 40,
                    }],
                    interval_ms: 1000,
                    latches: vec![Latch {
                        version: "canary".into(),
                        revision: "2".into(),
                        reason: "error_rate".into(),
                        at_unix_ms: 5,
                        id: 0,
                    }],
                    min_requests: 20,
                }),
                mirror: None,
                name: "web".into(),
                rollout: Some(RolloutReport {
                    candidate: "canary".into(),
                    gate: Some("waiting for traffic: 3/20 requests in the window".into()),
                    hold_ms: Some(60_000),
                    hold_remaining_ms: Some(59_000),
                    held_ms: 1_000,
                    manual: false,
                    min_remaining_ms: Some(119_000),
                    min_total_ms: Some(120_000),
                    paused: false,
                    pause_reason: None,
                    percent: 10,
                    revision: "2".into(),
                    state: RolloutOutcome::RolledBack,
                    step: 1,
                    steps: 2,
                }),
                versions: vec![VersionReport {
                    dns: Vec::new(),
                    endpoints: vec![EndpointReport {
                        address: "127.0.0.1:8081".into(),
                        ejected_for_ms: 0,
                        ejections: 2,
                        health: EndpointHealth::Unchecked,
                        outstanding: 1,
                        ramping: true,
                    }],
                    fleet: None,
                    grpc_methods: BTreeMap::from([("/a.B/C".into(), window.clone())]),
                    guard_verdict: Some("healthy".into()),
                    latched: true,
                    name: "canary".into(),
                    protocol: ProtocolName::Http2,
                    revision: "2".into(),
                    unavailable: false,
                    weight: 0,
                    window,
                }],
                window_seconds: 30,
            }],
        }
    }

    /// A single veer's `/status` has no `rollout_leader` key at all.
    #[test]
    fn the_rollout_leader_is_left_out_outside_a_fleet() {
        let mut report = sample();
        let text = serde_json::to_string(&report).expect("serialize");
        assert!(text.contains(
            r#""rollout_leader":{"leader":"edge-2","leading":false,"replica":"edge-1"}"#
        ));
        report.rollout_leader = None;
        let text = serde_json::to_string(&report).expect("serialize");
        assert!(!text.contains("rollout_leader"), "{text}");
        let back: StatusReport = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, report);
    }

    #[test]
    fn a_report_round_trips_through_json() {
        let report = sample();
        let text = serde_json::to_string(&report).expect("serialize");
        let back: StatusReport = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, report);
    }

    /// Every object's keys come out sorted, as `/status` always sent them.
    #[test]
    fn keys_come_out_in_the_order_status_always_had() {
        let text = serde_json::to_string(&sample()).expect("serialize");
        let sorted: serde_json::Value = serde_json::from_str(&text).expect("json");
        // serde_json's own map sorts keys: the same bytes mean the same order.
        assert_eq!(sorted.to_string(), text);
    }

    /// The words scripts match on: enum values as the contract spells them.
    #[test]
    fn enum_values_read_as_the_contract_spells_them() {
        let value = serde_json::to_value(sample()).expect("json");
        let service = &value["services"][0];
        assert_eq!(service["rollout"]["state"], "rolled_back");
        assert_eq!(service["versions"][0]["protocol"], "http2");
        assert_eq!(
            service["versions"][0]["endpoints"][0]["health"],
            "unchecked"
        );
        assert_eq!(service["guard"]["events"][0]["action"], "rollback");
        assert_eq!(value["config"]["last_reload"]["result"], "failure");
    }

    /// Outside a fleet the report has no `fleet` keys at all; in one, they
    /// round-trip and keep the sorted order.
    #[test]
    fn fleet_fields_appear_only_in_a_fleet() {
        let text = serde_json::to_string(&sample()).expect("serialize");
        assert!(!text.contains("\"fleet\""), "{text}");
        let mut report = sample();
        report.fleet = Some(FleetReport {
            connected: false,
            last_sync: None,
            replica: "edge-1".into(),
            replicas: vec!["edge-1".into(), "edge-2".into()],
        });
        let window = report.services[0].versions[0].window.clone();
        report.services[0].versions[0].fleet = Some(FleetWindowReport {
            errors_by_reason: BTreeMap::from([("5xx".into(), 3), ("timeout".into(), 1)]),
            replicas: 2,
            window,
        });
        let text = serde_json::to_string(&report).expect("serialize");
        let sorted: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(sorted.to_string(), text);
        let back: StatusReport = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, report);
    }

    /// A newer veer may add fields; an older CLI still reads the report.
    #[test]
    fn unknown_fields_are_ignored() {
        let mut value = serde_json::to_value(sample()).expect("json");
        value["config"]["cluster"] = serde_json::json!("eu-1");
        value["services"][0]["sidecar"] = serde_json::json!({"to": "shadow"});
        let back: StatusReport = serde_json::from_value(value).expect("still readable");
        assert_eq!(back, sample());
    }

    /// A service without checks reads as it did before checks existed.
    #[test]
    fn a_service_without_checks_has_no_checks_field() {
        let mut report = sample();
        report.services[0].checks = None;
        let value = serde_json::to_value(&report).expect("json");
        assert!(value["services"][0].get("checks").is_none());
        assert_eq!(
            sample_value()["services"][0]["checks"]["results"][0]["verdict"],
            "fail"
        );
    }

    fn sample_value() -> serde_json::Value {
        serde_json::to_value(sample()).expect("json")
    }
}
