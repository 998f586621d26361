//! `GET /metrics`: the telemetry's text, then the gauges that describe the
//! release state of each service — the share of traffic each version gets,
//! its latch, the guard's verdict, the rollout's state — written from the
//! snapshot and `control` at scrape time, so a version or service removed
//! from the config drops out of them at once. (The telemetry's own series
//! of removed versions and endpoints left on the publish that removed them,
//! and the rare counters of present ones were declared at 0 then: see
//! `Telemetry::retain`.)

use crate::control::{outcome_word, Control};
use crate::state::RolloutOutcome;
use crate::telemetry::operator::{gauge_family, sample};

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
    let listeners: Vec<String> = control
        .config()
        .listeners
        .iter()
        .map(|l| l.name.clone())
        .collect();
    let listeners: Vec<&str> = listeners.iter().map(String::as_str).collect();
    telemetry.retain_listeners(&listeners);

    let mut text = telemetry.render();

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
    crate::checks::render_metrics(&mut text, &control.view());
    text
}

#[cfg(test)]
mod tests {
    use crate::guard::verdict::Reason;
    use crate::telemetry::registry::TRIP_REASONS;

    #[test]
    fn telemetry_knows_every_trip_reason() {
        for reason in [
            Reason::ErrorRate,
            Reason::Latency,
            Reason::ErrorRateIncrease,
            Reason::LatencyRatio,
            Reason::Manual,
        ] {
            assert!(TRIP_REASONS.contains(&reason.as_str()), "{reason:?}");
        }
    }
}
