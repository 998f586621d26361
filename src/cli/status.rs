//! `veer status`: the admin API's `/status` as a table for people, or as the
//! JSON itself for scripts. Reads the same [`StatusReport`] type the admin
//! API writes.

use std::time::Duration;

use crate::state::RolloutOutcome;
use crate::status::{EndpointHealth, FleetReport, RolloutReport, StatusReport};

/// Reads `/status`'s body: the one report type the admin API writes.
pub fn parse(body: &str) -> Result<StatusReport, String> {
    serde_json::from_str(body).map_err(|e| {
        format!(
            "the admin API's /status is not a report this veer can read ({e}); \
             is the CLI much older or newer than the proxy?"
        )
    })
}

/// Renders the report, only `service` when given. `None` when that service
/// does not exist.
pub fn table(report: &StatusReport, service: Option<&str>) -> Option<String> {
    let mut out = String::new();
    let config = &report.config;
    match &config.last_reload {
        Some(last) => {
            out.push_str(&format!(
                "config generation {}; last reload {} at {}\n",
                config.generation, last.result, last.at,
            ));
            for e in &last.errors {
                out.push_str(&format!("  ! {e}\n"));
            }
        }
        None => out.push_str(&format!("config generation {}\n", config.generation)),
    }
    if let Some(fleet) = &report.fleet {
        out.push_str(&fleet_line(fleet));
    }
    let mut shown = 0;
    for s in &report.services {
        if service.is_some_and(|wanted| wanted != s.name) {
            continue;
        }
        shown += 1;
        out.push_str(&format!(
            "\n{}  (window {}s)\n  {:<12} {:<10} {:>6} {:>9} {:>7} {:>8} {:>8} {:>8} {:>9}\n",
            s.name,
            s.window_seconds,
            "VERSION",
            "REVISION",
            "WEIGHT",
            "RPS",
            "ERR%",
            "P50ms",
            "P95ms",
            "P99ms",
            "REQUESTS"
        ));
        for v in &s.versions {
            let w = &v.window;
            let ms = |x: Option<f64>| x.map_or("-".to_string(), |m| format!("{m:.2}"));
            out.push_str(&format!(
                "  {:<12} {:<10} {:>6} {:>9.1} {:>7.2} {:>8} {:>8} {:>8} {:>9}\n",
                v.name,
                v.revision,
                v.weight,
                w.rps,
                w.error_rate * 100.0,
                ms(w.p50_ms),
                ms(w.p95_ms),
                ms(w.p99_ms),
                w.requests,
            ));
            // In a fleet: the sum the guard judges, under this replica's row.
            if let Some(fleet) = &v.fleet {
                let w = &fleet.window;
                out.push_str(&format!(
                    "  {:<12} {:<10} {:>6} {:>9.1} {:>7.2} {:>8} {:>8} {:>8} {:>9}\n",
                    format!(" fleet of {}", fleet.replicas),
                    "",
                    "",
                    w.rps,
                    w.error_rate * 100.0,
                    ms(w.p50_ms),
                    ms(w.p95_ms),
                    ms(w.p99_ms),
                    w.requests,
                ));
            }
        }
        for v in &s.versions {
            let troubled: Vec<String> = v
                .endpoints
                .iter()
                .filter(|e| {
                    !matches!(
                        e.health,
                        EndpointHealth::Healthy | EndpointHealth::Unchecked
                    )
                })
                .map(|e| format!("{} {}", e.address, e.health.as_str()))
                .collect();
            if !troubled.is_empty() || v.unavailable {
                out.push_str(&format!(
                    "  {}: {}{}\n",
                    v.name,
                    if v.unavailable {
                        "no endpoint can serve (share moved to the baseline); "
                    } else {
                        ""
                    },
                    troubled.join(", ")
                ));
            }
        }
        // Endpoint names whose last lookup found no address: the version
        // runs on the last good ones (or on none, if it never resolved).
        for v in &s.versions {
            for name in v
                .dns
                .iter()
                .filter(|d| d.result.as_deref() != Some("success"))
            {
                out.push_str(&format!(
                    "  {}: DNS {} {}: {}; in use: {}\n",
                    v.name,
                    name.name,
                    name.result.as_deref().unwrap_or("not looked up yet"),
                    name.error.as_deref().unwrap_or("-"),
                    if name.addresses.is_empty() {
                        "no address".to_string()
                    } else {
                        name.addresses.join(", ")
                    },
                ));
            }
        }
        match &s.guard {
            None => out.push_str("  guard: none\n"),
            Some(guard) => {
                out.push_str(&format!("  guard: baseline {}\n", guard.baseline));
                for v in &s.versions {
                    if let Some(verdict) = &v.guard_verdict {
                        out.push_str(&format!("    {:<12} {verdict}\n", v.name));
                    }
                }
                for latch in &guard.latches {
                    out.push_str(&format!(
                        "    latched: {} revision {} ({}); `veer resume` clears it\n",
                        latch.version, latch.revision, latch.reason,
                    ));
                }
            }
        }
        if let Some(rollout) = &s.rollout {
            out.push_str(&format!("  rollout: {}\n", rollout_line(rollout)));
        }
        if let Some(mirror) = &s.mirror {
            out.push_str(&mirror_line(mirror));
        }
        if let Some(checks) = &s.checks {
            out.push_str(&crate::checks::describe(checks));
        }
    }
    if service.is_some() && shown == 0 {
        return None;
    }
    Some(out)
}

/// The mirror's lines: copies by result, then the pairs of the window.
pub fn mirror_line(m: &crate::status::MirrorReport) -> String {
    let copies: Vec<String> = m
        .copies
        .iter()
        .map(|(result, count)| format!("{result} {count}"))
        .collect();
    let ratio = m
        .latency_ratio_p95
        .map_or("-".to_string(), |r| format!("{r:.2}"));
    let mut out = format!(
        "  mirror: {}% to {} ({}; {} in flight)\n    pairs {} in {}s: mismatch {:.2}% ({}), latency ratio p95 {ratio}, live 5xx {}\n",
        m.percent,
        m.version,
        copies.join(", "),
        m.in_flight,
        m.pairs,
        m.window_seconds,
        m.mismatch_rate * 100.0,
        m.mismatches,
        m.live_errors,
    );
    if let Some(verdict) = &m.verdict {
        out.push_str(&format!("    {verdict}\n"));
    }
    out
}

/// The fleet's line: `fleet: replica edge-1, connected to etcd (last sync
/// ...); live replicas: edge-1, edge-2`.
pub fn fleet_line(fleet: &FleetReport) -> String {
    let connection = if fleet.connected {
        "connected to etcd"
    } else {
        "NOT connected to etcd (serving from its last fleet state)"
    };
    let sync = match &fleet.last_sync {
        Some(at) => format!("last sync {at}"),
        None => "never synced".to_string(),
    };
    let replicas = if fleet.replicas.is_empty() {
        "none known".to_string()
    } else {
        fleet.replicas.join(", ")
    };
    format!(
        "fleet: replica {}, {connection}, {sync}; live replicas: {replicas}\n",
        fleet.replica
    )
}

/// One line for a rollout: `canary 1.2.0: step 2/4 at 25%, 12s of hold left,
/// in_progress; gate: ...`.
pub fn rollout_line(r: &RolloutReport) -> String {
    let mut line = format!(
        "{} {}: step {}/{} at {}%",
        r.candidate, r.revision, r.step, r.steps, r.percent,
    );
    if r.state == RolloutOutcome::InProgress {
        match r.hold_remaining_ms {
            Some(left) => line.push_str(&format!(
                ", {} of hold left",
                human_duration(Duration::from_millis(left))
            )),
            None => line.push_str(", waiting for `veer promote`"),
        }
    }
    line.push_str(&format!(", {}", crate::rollout::outcome_word(r.state)));
    // A check's pause also leaves its words as the gate's while veer runs;
    // said once.
    let reason = r
        .pause_reason
        .as_deref()
        .filter(|reason| r.gate.as_deref().is_none_or(|g| !g.contains(reason)));
    match (r.paused, reason) {
        (true, Some(reason)) => line.push_str(&format!(" (paused: {reason})")),
        (true, None) => line.push_str(" (paused)"),
        _ => {}
    }
    if let Some(gate) = &r.gate {
        line.push_str(&format!("; {gate}"));
    }
    line
}

/// A duration as people read it: `9m 54s`, `1h 5m`, `3s`, `0s`; seconds
/// rounded up, so a hold with 400 ms left does not read as done.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m, s) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

#[cfg(test)]
mod fleet_tests {
    use super::*;
    use crate::status::FleetWindowReport;

    #[test]
    fn the_fleet_shows_above_the_services_and_its_sums_under_each_version() {
        let mut report: StatusReport = serde_json::from_str(
            r#"{"config": {"generation": 1, "last_reload": null, "source": null},
                "services": [{"guard": null, "name": "web", "rollout": null, "window_seconds": 30,
                  "versions": [{"endpoints": [], "grpc_methods": {}, "guard_verdict": null,
                    "latched": false, "name": "canary", "protocol": "http1", "revision": "2",
                    "unavailable": false, "weight": 10,
                    "window": {"error_rate": 0.0, "errors": 0, "p50_ms": 1.0, "p95_ms": 2.0,
                               "p99_ms": 3.0, "requests": 100, "rps": 3.3}}]}]}"#,
        )
        .expect("sample");
        let plain = table(&report, None).expect("table");
        assert!(
            !plain.contains("fleet"),
            "no fleet, no fleet lines: {plain}"
        );
        report.fleet = Some(FleetReport {
            connected: false,
            last_sync: Some("2026-12-07T05:00:00Z".into()),
            replica: "edge-1".into(),
            replicas: vec!["edge-1".into(), "edge-2".into()],
        });
        let mut window = report.services[0].versions[0].window.clone();
        window.requests = 300;
        report.services[0].versions[0].fleet = Some(FleetWindowReport {
            replicas: 2,
            window,
        });
        let text = table(&report, None).expect("table");
        assert!(
            text.contains(
                "fleet: replica edge-1, NOT connected to etcd (serving from its last fleet state), \
                 last sync 2026-12-07T05:00:00Z; live replicas: edge-1, edge-2"
            ),
            "{text}"
        );
        let row = text
            .lines()
            .find(|l| l.contains("fleet of 2"))
            .expect("a fleet row");
        assert!(row.trim_end().ends_with("300"), "{row}");
    }
}

#[cfg(test)]
mod duration_tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        let read = |ms: u64| human_duration(Duration::from_millis(ms));
        assert_eq!(read(594_000), "9m 54s");
        assert_eq!(read(593_001), "9m 54s");
        assert_eq!(read(0), "0s");
        assert_eq!(read(400), "1s");
        assert_eq!(read(600_000), "10m");
        assert_eq!(read(3_900_000), "1h 5m");
        assert_eq!(read(7_200_000), "2h");
    }
}
