//! `GET /metrics`: the telemetry's text, then the gauges that describe the
//! release state of each service — the share of traffic each version gets,
//! its latch, the guard's verdict, the rollout's state — written from the
//! snapshot and `control` at scrape time, so a version or service removed
//! from the config drops out of them at once.
//!
//! The exporter's own gauges of a removed version or endpoint
//! (`veer_version_weight`, `veer_endpoint_healthy`, `veer_rollout_step` of a
//! removed service) are left out of its text, so they do not show a stale
//! value forever.
//!
//! Before rendering, the counters an alert may compare against
//! (`veer_guard_trips_total`, `veer_version_unavailable_total`,
//! `veer_endpoint_ejections_total`) are declared
//! at 0 for every configured version, so `increase(...)` and `absent(...)`
//! work before the first trip; and `veer_rollout_step` is set to 0 for a
//! service whose rollout block is gone.

use metrics::{Key, Label, Metadata, Recorder};

use crate::control::{outcome_word, Control};
use crate::guard::verdict::Reason;
use crate::snapshot::Snapshot;
use crate::state::RolloutOutcome;
use crate::telemetry::operator::{gauge_family, sample};

/// Every reason a trip can carry (`Reason::as_str`).
const TRIP_REASONS: [Reason; 5] = [
    Reason::ErrorRate,
    Reason::Latency,
    Reason::ErrorRateIncrease,
    Reason::LatencyRatio,
    Reason::Manual,
];

/// Every reason an endpoint is ejected for: a failed attempt's, or `5xx`
/// with `outlier_detection.count_5xx`.
const EJECTION_REASONS: [&str; 7] = [
    "connect",
    "timeout",
    "reset",
    "protocol",
    "tls",
    "midstream",
    "5xx",
];

const VERDICTS: [&str; 4] = ["healthy", "insufficient", "bad", "none"];

const ROLLOUT_STATES: [&str; 6] = [
    "in_progress",
    "paused",
    "completed",
    "rolled_back",
    "abandoned",
    "none",
];

pub fn render(control: &Control) -> String {
    let telemetry = control.telemetry();
    let snapshot = control.snapshot();
    declare_counters(control);
    let listeners: Vec<String> = control
        .config()
        .listeners
        .iter()
        .map(|l| l.name.clone())
        .collect();
    let listeners: Vec<&str> = listeners.iter().map(String::as_str).collect();
    telemetry.operator().retain_listeners(&listeners);
    for service in snapshot.services.iter().filter(|s| s.rollout.is_none()) {
        telemetry.set_rollout_step(&service.name, 0);
    }

    let mut text = drop_removed(telemetry.render(), &snapshot);

    gauge_family(
        &mut text,
        "veer_version_weight_percent",
        "Each version's share of its service's weighted traffic, in percent (0-100).",
    );
    for service in &snapshot.services {
        let total: u64 = service.versions.iter().map(|v| u64::from(v.weight)).sum();
        for version in &service.versions {
            let percent = if total == 0 {
                0.0
            } else {
                f64::from(version.weight) * 100.0 / total as f64
            };
            sample(
                &mut text,
                "veer_version_weight_percent",
                &[("service", &service.name), ("version", &version.name)],
                percent,
            );
        }
    }

    gauge_family(
        &mut text,
        "veer_version_latched",
        "1 while the guard's latch keeps this revision of the version at weight 0.",
    );
    for service in &snapshot.services {
        for version in &service.versions {
            sample(
                &mut text,
                "veer_version_latched",
                &[
                    ("service", &service.name),
                    ("version", &version.name),
                    ("revision", &version.revision),
                ],
                if version.latched { 1.0 } else { 0.0 },
            );
        }
    }

    gauge_family(
        &mut text,
        "veer_guard_verdict",
        "The guard's last verdict on each judged version: 1 on the current one of healthy, insufficient, bad, none.",
    );
    for service in &snapshot.services {
        let Some(guard) = &service.guard else {
            continue;
        };
        for (index, version) in service.versions.iter().enumerate() {
            if index == guard.baseline {
                continue;
            }
            let words = control.verdict(&service.name, &version.name);
            let current = match words.as_deref() {
                Some(w) if w.starts_with("healthy") => "healthy",
                Some(w) if w.starts_with("insufficient") => "insufficient",
                Some(w) if w.starts_with("bad") => "bad",
                _ => "none",
            };
            for verdict in VERDICTS {
                sample(
                    &mut text,
                    "veer_guard_verdict",
                    &[
                        ("service", &service.name),
                        ("version", &version.name),
                        ("verdict", verdict),
                    ],
                    if verdict == current { 1.0 } else { 0.0 },
                );
            }
        }
    }

    gauge_family(
        &mut text,
        "veer_rollout_state",
        "Each rollout's state: 1 on the current one of in_progress, paused, completed, rolled_back, abandoned, none.",
    );
    for service in snapshot.services.iter().filter(|s| s.rollout.is_some()) {
        let current = match control.rollout(&service.name) {
            None => "none",
            Some(p) if p.paused && p.outcome == RolloutOutcome::InProgress => "paused",
            Some(p) => outcome_word(p.outcome),
        };
        for state in ROLLOUT_STATES {
            sample(
                &mut text,
                "veer_rollout_state",
                &[("service", &service.name), ("state", state)],
                if state == current { 1.0 } else { 0.0 },
            );
        }
        if !ROLLOUT_STATES.contains(&current) {
            sample(
                &mut text,
                "veer_rollout_state",
                &[("service", &service.name), ("state", current)],
                1.0,
            );
        }
    }
    text
}

/// The gauges the exporter keeps per version or endpoint, which would go on
/// showing the last value of a version or endpoint the config no longer
/// has. (The exporter cannot forget a series; its counters of removed
/// versions are left, as counters of a restarted target would be.)
const CONFIG_GAUGES: [&str; 3] = [
    "veer_version_weight{",
    "veer_endpoint_healthy{",
    "veer_rollout_step{",
];

/// Drops, from the exporter's text, the samples of `CONFIG_GAUGES` whose
/// service, version or endpoint is not in the snapshot.
fn drop_removed(text: String, snapshot: &Snapshot) -> String {
    if !text.lines().any(is_config_gauge) {
        return text;
    }
    let mut kept = String::with_capacity(text.len());
    for line in text.lines() {
        if !is_config_gauge(line) || configured(line, snapshot) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept
}

fn is_config_gauge(line: &str) -> bool {
    CONFIG_GAUGES.iter().any(|g| line.starts_with(g))
}

/// Whether every service, version and endpoint label of `line` names one in
/// the snapshot. Names in the config cannot hold quotes or backslashes, so
/// the label values need no unescaping.
fn configured(line: &str, snapshot: &Snapshot) -> bool {
    let label = |name: &str| {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        let len = line[start..].find('"')?;
        Some(&line[start..start + len])
    };
    let Some(service) =
        label("service").and_then(|name| snapshot.services.iter().find(|s| &*s.name == name))
    else {
        return false;
    };
    let Some(name) = label("version") else {
        return true;
    };
    let Some(version) = service.versions.iter().find(|v| &*v.name == name) else {
        return false;
    };
    match label("endpoint") {
        None => true,
        Some(endpoint) => version
            .all_endpoints
            .iter()
            .any(|e| e.addr().to_string() == endpoint),
    }
}

/// Registers, at 0, the counters of every configured version that only
/// count rare events. Registering an existing series changes nothing.
fn declare_counters(control: &Control) {
    let recorder = control.telemetry().recorder();
    let metadata = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
    let snapshot = control.snapshot();
    for service in &snapshot.services {
        for (index, version) in service.versions.iter().enumerate() {
            let labels = || {
                vec![
                    Label::new("service", service.name.to_string()),
                    Label::new("version", version.name.to_string()),
                ]
            };
            let _ = recorder.register_counter(
                &Key::from_parts("veer_version_unavailable_total", labels()),
                &metadata,
            );
            if service.outlier.consecutive_failures > 0 {
                for endpoint in &version.all_endpoints {
                    let endpoint = endpoint.addr().to_string();
                    for reason in EJECTION_REASONS {
                        let mut with_reason = labels();
                        with_reason.push(Label::new("endpoint", endpoint.clone()));
                        with_reason.push(Label::new("reason", reason));
                        let _ = recorder.register_counter(
                            &Key::from_parts("veer_endpoint_ejections_total", with_reason),
                            &metadata,
                        );
                    }
                }
            }
            let Some(guard) = &service.guard else {
                continue;
            };
            if index == guard.baseline {
                continue;
            }
            for reason in TRIP_REASONS {
                let mut with_reason = labels();
                with_reason.push(Label::new("reason", reason.as_str()));
                let _ = recorder.register_counter(
                    &Key::from_parts("veer_guard_trips_total", with_reason),
                    &metadata,
                );
            }
        }
    }
}
