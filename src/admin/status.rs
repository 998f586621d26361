//! The `/status` report: every service with its versions' weights, revisions,
//! endpoints and window figures, plus the config's generation and the last
//! reload's result. Built from the snapshot in force, so it shows what the
//! request path sees, and from the control view (latches, events, verdicts,
//! rollouts), read without waiting on the control task.

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::control::{Control, ControlView};
use crate::status::{
    ConfigReport, DnsNameReport, EndpointHealth, EndpointReport, FleetReport, FleetWindowReport,
    GuardReport, ProtocolName, RolloutReport, ServiceReport, StatusReport, VersionReport,
    WindowReport,
};
use crate::telemetry::Figures;

/// `/status`'s body: the report as JSON, one line.
pub fn body(control: &Control) -> Result<String, serde_json::Error> {
    let mut body = serde_json::to_string(&report(control))?;
    body.push('\n');
    Ok(body)
}

pub fn report(control: &Control) -> StatusReport {
    let snapshot = control.snapshot();
    let view = control.view();
    let elapsed = control.telemetry().elapsed(Instant::now());
    let now_ms = crate::clock::now_ms();
    let fleet = control.fleet();
    let siblings = fleet.map(|f| f.siblings());
    let services = snapshot
        .services
        .iter()
        .map(|service| {
            let versions = service
                .versions
                .iter()
                .map(|version| {
                    let counts = version.stats.window().counts(elapsed, service.window);
                    let figures = counts.figures();
                    let fleet = siblings.as_ref().map(|siblings| {
                        let mut sum = counts;
                        let added = siblings.add_to(
                            &service.name,
                            &version.name,
                            &version.revision,
                            &mut sum,
                        );
                        FleetWindowReport {
                            errors_by_reason: sum.kinds.by_word(),
                            replicas: 1 + added as u64,
                            window: window(&sum.figures()),
                        }
                    });
                    VersionReport {
                        fleet,
                        dns: version
                            .names
                            .iter()
                            .map(|(name, entry)| dns_report(name, entry.as_deref()))
                            .collect(),
                        endpoints: version
                            .all_endpoints
                            .iter()
                            .map(|e| {
                                let until = e.health.ejected_until_ms();
                                let health = if until > now_ms {
                                    EndpointHealth::Ejected
                                } else if !e.health.probe_ok() {
                                    EndpointHealth::Unhealthy
                                } else if service.health_check.is_none() {
                                    EndpointHealth::Unchecked
                                } else {
                                    EndpointHealth::Healthy
                                };
                                EndpointReport {
                                    address: e.addr().to_string(),
                                    ejected_for_ms: until.saturating_sub(now_ms),
                                    ejections: u64::from(e.health.ejections()),
                                    health,
                                    outstanding: u64::try_from(e.outstanding()).unwrap_or(u64::MAX),
                                    ramping: e.health.is_ramping(),
                                }
                            })
                            .collect(),
                        grpc_methods: methods(version, elapsed, service.window),
                        guard_verdict: view
                            .verdict(&service.name, &version.name)
                            .map(str::to_string),
                        latched: version.latched,
                        name: version.name.to_string(),
                        protocol: match version.protocol {
                            crate::config::Protocol::Http1 => ProtocolName::Http1,
                            crate::config::Protocol::Http2 => ProtocolName::Http2,
                        },
                        revision: version.revision.to_string(),
                        unavailable: version.unavailable,
                        weight: version.weight,
                        window: window(&figures),
                    }
                })
                .collect();
            ServiceReport {
                mirror: service.mirror.as_deref().map(|m| mirror_report(service, m)),
                checks: view.checks(&service.name).map(|c| (**c).clone()),
                guard: service.guard.as_ref().map(|g| GuardReport {
                    baseline: service.versions[g.baseline].name.to_string(),
                    events: view.events(&service.name).cloned().collect(),
                    interval_ms: u64::try_from(g.interval.as_millis()).unwrap_or(u64::MAX),
                    latches: view.latches(&service.name).to_vec(),
                    min_requests: g.min_requests,
                }),
                name: service.name.to_string(),
                rollout: rollout(&view, &service.name, service.rollout.as_deref()),
                versions,
                window_seconds: service.window.as_secs(),
            }
        })
        .collect();
    StatusReport {
        config: ConfigReport {
            generation: snapshot.generation,
            last_reload: view.last_reload().cloned(),
            source: control.source().map(|p| p.display().to_string()),
        },
        fleet: fleet.map(|fleet| FleetReport {
            connected: fleet.connected(),
            last_sync: fleet.last_sync_ms().map(|ms| {
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                )
                .to_string()
            }),
            replica: fleet.replica().to_string(),
            replicas: siblings
                .as_ref()
                .map(|s| s.replicas.iter().cloned().collect())
                .unwrap_or_default(),
        }),
        rollout_leader: {
            let leadership = control.leadership();
            leadership
                .in_fleet()
                .then(|| crate::status::RolloutLeaderReport {
                    leader: leadership.leader(),
                    leading: leadership.is_leader(),
                    replica: leadership.replica().to_string(),
                })
        },
        services,
    }
}

/// The mirror's counts and pairs, with the shadow stage's verdict while the
/// rollout is in one.
fn mirror_report(
    service: &crate::snapshot::ServiceSnapshot,
    mirror: &crate::mirror::Mirror,
) -> crate::status::MirrorReport {
    let figures = mirror.figures();
    let copies = crate::mirror::RESULTS
        .iter()
        .zip(mirror.state.counts.get())
        .map(|(result, count)| ((*result).to_string(), count))
        .collect();
    crate::status::MirrorReport {
        body_mismatches: figures.body_mismatches,
        copies,
        in_flight: u64::try_from(mirror.in_flight()).unwrap_or(u64::MAX),
        latency_ratio_p95: figures.latency_ratio_p95,
        live_errors: figures.live_errors,
        mismatch_rate: figures.mismatch_rate(),
        mismatches: figures.mismatches,
        pairs: figures.pairs,
        percent: mirror.percent,
        verdict: crate::guard::shadow::stage_verdict(service, mirror.version)
            .map(|(verdict, _)| verdict.to_string()),
        version: mirror.version_name.to_string(),
        window_seconds: mirror.window.as_secs(),
    }
}

/// One endpoint name: its addresses and its last lookup.
fn dns_report(
    name: &crate::config::EndpointName,
    entry: Option<&crate::upstream::dns::NameEntry>,
) -> DnsNameReport {
    let known = entry.map(|e| e.resolution()).unwrap_or_default();
    let at = |ms: u64| {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        humantime::format_rfc3339_millis(time).to_string()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    DnsNameReport {
        addresses: known
            .addresses
            .iter()
            .map(|&ip| std::net::SocketAddr::new(ip, name.port).to_string())
            .collect(),
        error: known
            .last
            .as_ref()
            .and_then(|l| l.error())
            .map(str::to_string),
        failures: known.failures,
        last_lookup_at: known.last.is_some().then(|| at(known.last_at_unix_ms)),
        name: name.to_string(),
        next_lookup_in_ms: known.next_at_unix_ms.saturating_sub(now),
        result: known.last.as_ref().map(|l| l.word().to_string()),
    }
}

/// The rollout of one service (`None` without a rollout).
pub fn rollout(
    view: &ControlView,
    service: &str,
    config: Option<&crate::config::Rollout>,
) -> Option<RolloutReport> {
    let (config, progress) = (config?, view.rollout(service)?);
    let progress = &progress;
    let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    // `None` for a manual step: it waits for `veer promote`, not for time.
    let hold_ms = match config.steps.get(progress.step).map(|s| s.hold) {
        Some(crate::config::Hold::For(hold)) => Some(millis(hold)),
        _ => None,
    };
    Some(RolloutReport {
        candidate: progress.candidate.clone(),
        gate: view.gate(service).map(str::to_string),
        hold_ms,
        hold_remaining_ms: hold_ms.map(|h| h.saturating_sub(progress.held_ms)),
        held_ms: progress.held_ms,
        manual: hold_ms.is_none(),
        min_remaining_ms: crate::rollout::min_remaining(progress, config).map(millis),
        min_total_ms: crate::rollout::min_total(config).map(millis),
        paused: progress.paused,
        pause_reason: progress.pause_reason.clone().filter(|_| progress.paused),
        percent: crate::rollout::percent(config, progress),
        revision: progress.revision.clone(),
        state: progress.outcome,
        step: progress.step + 1,
        steps: config.steps.len(),
    })
}

/// `{"service": .., "rollout": .., "weights": ..}` for the rollout commands'
/// answers.
pub fn service_rollout(control: &Control, service: &str) -> Value {
    let snapshot = control.snapshot();
    let config = snapshot
        .services
        .iter()
        .find(|s| &*s.name == service)
        .and_then(|s| s.rollout.as_deref());
    json!({
        "service": service,
        "rollout": rollout(&control.view(), service, config),
        "weights": service_weights(control, service)["weights"],
    })
}

/// The window figures of each gRPC method a version served (`other`: the
/// methods beyond the cap, and paths that are no method name).
fn methods(
    version: &crate::snapshot::VersionSnapshot,
    elapsed: std::time::Duration,
    span: std::time::Duration,
) -> std::collections::BTreeMap<String, WindowReport> {
    let mut methods = std::collections::BTreeMap::new();
    version.stats.methods().each(|method| {
        let figures = method.window().figures(elapsed, span);
        if figures.requests > 0 || method.name() != crate::grpc::methods::OTHER {
            methods.insert(method.name().to_string(), window(&figures));
        }
    });
    methods
}

fn window(figures: &Figures) -> WindowReport {
    // Microseconds to milliseconds, keeping microsecond precision.
    let ms = |us: Option<f64>| us.map(|v| v.round() / 1000.0);
    WindowReport {
        error_rate: figures.error_rate(),
        errors: figures.errors,
        p50_ms: ms(figures.p50_us),
        p95_ms: ms(figures.p95_us),
        p99_ms: ms(figures.p99_us),
        requests: figures.requests,
        rps: (figures.rps() * 100.0).round() / 100.0,
    }
}

/// The weights in force for one service, as `{"version": weight}`.
pub fn service_weights(control: &Control, service: &str) -> Value {
    let snapshot = control.snapshot();
    let weights: serde_json::Map<String, Value> = snapshot
        .services
        .iter()
        .filter(|s| &*s.name == service)
        .flat_map(|s| s.versions.iter())
        .map(|v| (v.name.to_string(), json!(v.weight)))
        .collect();
    json!({ "service": service, "weights": weights })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;

    const CONFIG: &str = "listeners: [{name: l, address: '127.0.0.1:0'}]\n\
        services:\n  - name: web\n    versions:\n\
        \x20     - {name: stable, revision: '1', endpoints: ['127.0.0.1:1'], weight: 90}\n\
        \x20     - {name: canary, revision: '2', endpoints: ['127.0.0.1:2'], weight: 10}\n\
        \x20   guard: {baseline: stable, max_error_rate: 0.05}\n\
        \x20   rollout: {candidate: canary, steps: [{weight: 10, hold: 1m}, {weight: 100, hold: manual}]}\n";

    async fn control() -> Control {
        let config = crate::config::parse_str(CONFIG, "t.yaml").expect("valid");
        Control::start(
            config,
            Arc::new(crate::telemetry::Telemetry::new()),
            None,
            None,
        )
        .await
    }

    /// What the admin API writes is what the CLI reads, value for value,
    /// with a latch, an event, a verdict, a gate and a reload in it.
    #[tokio::test]
    async fn the_cli_reads_what_the_admin_api_writes() {
        let control = control().await;
        control.rollback("web").await.expect("rollback");
        control.set_verdicts(vec![("web".into(), "canary".into(), "healthy".into())]);
        control.set_gate_status("web", "asking the gate for step 2".into());
        control
            .record_reload(&Err(vec!["t.yaml:1:1: bad".into()]))
            .await;
        let written = report(&control);
        assert!(written.services[0]
            .guard
            .as_ref()
            .is_some_and(|g| g.events.len() == 1));
        assert!(written.services[0]
            .rollout
            .as_ref()
            .is_some_and(|r| r.gate.is_some()));
        assert_eq!(
            written.services[0].versions[1].guard_verdict.as_deref(),
            Some("healthy")
        );

        let sent = body(&control).expect("encode");
        let read = crate::cli::status::parse(&sent).expect("the CLI reads it");
        assert_eq!(read, written);
        let table = crate::cli::status::table(&read, Some("web")).expect("web is shown");
        assert!(
            table.contains("latched: canary revision 2 (manual)"),
            "{table}"
        );
        assert!(table.contains("last reload failure"), "{table}");
    }

    /// The field names scripts rely on (the contract's `/status`): renaming
    /// one in the shared type must fail here, not in a pipeline.
    #[tokio::test]
    async fn the_status_fields_are_the_contracts() {
        let control = control().await;
        control.rollback("web").await.expect("rollback");
        control.record_reload(&Ok(())).await;
        let value: serde_json::Value =
            serde_json::from_str(&body(&control).expect("encode")).expect("json");
        let mut paths = BTreeSet::new();
        collect(&value, "", &mut paths);
        let expected = [
            "config",
            "config.generation",
            "config.last_reload",
            "config.last_reload.at",
            "config.last_reload.errors",
            "config.last_reload.result",
            "config.source",
            "services",
            "services.guard",
            "services.guard.baseline",
            "services.guard.events",
            "services.guard.events.action",
            "services.guard.events.at",
            "services.guard.events.observed",
            "services.guard.events.reason",
            "services.guard.events.revision",
            "services.guard.events.service",
            "services.guard.events.threshold",
            "services.guard.events.version",
            "services.guard.events.weights",
            "services.guard.events.weights.canary",
            "services.guard.events.weights.stable",
            "services.guard.events.window_requests",
            "services.guard.interval_ms",
            "services.guard.latches",
            "services.guard.latches.at_unix_ms",
            "services.guard.latches.id",
            "services.guard.latches.reason",
            "services.guard.latches.revision",
            "services.guard.latches.version",
            "services.guard.min_requests",
            "services.name",
            "services.rollout",
            "services.rollout.candidate",
            "services.rollout.gate",
            "services.rollout.held_ms",
            "services.rollout.hold_ms",
            "services.rollout.hold_remaining_ms",
            "services.rollout.manual",
            "services.rollout.min_remaining_ms",
            "services.rollout.min_total_ms",
            "services.rollout.paused",
            "services.rollout.percent",
            "services.rollout.revision",
            "services.rollout.state",
            "services.rollout.step",
            "services.rollout.steps",
            "services.versions",
            "services.versions.endpoints",
            "services.versions.endpoints.address",
            "services.versions.endpoints.ejected_for_ms",
            "services.versions.endpoints.ejections",
            "services.versions.endpoints.health",
            "services.versions.endpoints.outstanding",
            "services.versions.endpoints.ramping",
            "services.versions.grpc_methods",
            "services.versions.guard_verdict",
            "services.versions.latched",
            "services.versions.name",
            "services.versions.protocol",
            "services.versions.revision",
            "services.versions.unavailable",
            "services.versions.weight",
            "services.versions.window",
            "services.versions.window.error_rate",
            "services.versions.window.errors",
            "services.versions.window.p50_ms",
            "services.versions.window.p95_ms",
            "services.versions.window.p99_ms",
            "services.versions.window.requests",
            "services.versions.window.rps",
            "services.window_seconds",
        ];
        let expected: BTreeSet<String> = expected.iter().map(|p| p.to_string()).collect();
        assert_eq!(paths, expected);
        assert_eq!(value["services"][0]["rollout"]["state"], "rolled_back");
        assert_eq!(value["config"]["last_reload"]["result"], "success");
    }

    fn collect(value: &serde_json::Value, at: &str, paths: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, inner) in map {
                    let path = if at.is_empty() {
                        key.clone()
                    } else {
                        format!("{at}.{key}")
                    };
                    paths.insert(path.clone());
                    collect(inner, &path, paths);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    collect(item, at, paths);
                }
            }
            _ => {}
        }
    }
}
