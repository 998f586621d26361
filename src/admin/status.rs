//! The `/status` report: every service with its versions' weights, revisions,
//! endpoints and window figures, plus the config's generation and the last
//! reload's result. Built from the snapshot in force, so it shows what the
//! request path sees.

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::control::Control;
use crate::telemetry::Figures;

pub fn report(control: &Control) -> Value {
    let snapshot = control.snapshot();
    let elapsed = control.telemetry().elapsed(Instant::now());
    let now_ms = crate::clock::now_ms();
    let services: Vec<Value> = snapshot
        .services
        .iter()
        .map(|service| {
            let versions: Vec<Value> = service
                .versions
                .iter()
                .map(|version| {
                    let figures = version.stats.window().figures(elapsed, service.window);
                    json!({
                        "name": &*version.name,
                        "revision": &*version.revision,
                        "weight": version.weight,
                        "protocol": match version.protocol {
                            crate::config::Protocol::Http1 => "http1",
                            crate::config::Protocol::Http2 => "http2",
                        },
                        "latched": version.latched,
                        "unavailable": version.unavailable,
                        "endpoints": version.all_endpoints.iter().map(|e| {
                            let until = e.health.ejected_until_ms();
                            let health = if until > now_ms {
                                "ejected"
                            } else if !e.health.probe_ok() {
                                "unhealthy"
                            } else if service.health_check.is_none() {
                                "unchecked"
                            } else {
                                "healthy"
                            };
                            json!({
                                "address": e.addr().to_string(),
                                "health": health,
                                "ejected_for_ms": until.saturating_sub(now_ms),
                                "ejections": e.health.ejections(),
                                "ramping": e.health.is_ramping(),
                                "outstanding": e.outstanding(),
                            })
                        }).collect::<Vec<_>>(),
                        "window": window_json(&figures),
                        "grpc_methods": methods_json(version, elapsed, service.window),
                        "guard_verdict": control.verdict(&service.name, &version.name),
                    })
                })
                .collect();
            json!({
                "name": &*service.name,
                "window_seconds": service.window.as_secs(),
                "versions": versions,
                "rollout": rollout_json(control, &service.name, service.rollout.as_ref()),
                "guard": service.guard.as_ref().map(|g| json!({
                    "baseline": &*service.versions[g.baseline].name,
                    "interval_ms": g.interval.as_millis() as u64,
                    "min_requests": g.min_requests,
                    "latches": control.latches(&service.name),
                    "events": control.events(&service.name),
                })),
            })
        })
        .collect();
    json!({
        "config": {
            "generation": snapshot.generation,
            "source": control.source().map(|p| p.display().to_string()),
            "last_reload": control.last_reload(),
        },
        "services": services,
    })
}

/// The rollout of one service for `/status` (`null` without a rollout).
pub fn rollout_json(
    control: &Control,
    service: &str,
    config: Option<&crate::config::Rollout>,
) -> Value {
    let (Some(config), Some(progress)) = (config, control.rollout(service)) else {
        return Value::Null;
    };
    let percent = match progress.outcome {
        crate::state::RolloutOutcome::Completed => 100,
        _ => config.percent(progress.step),
    };
    let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    // `null` for a manual step: it waits for `veer promote`, not for time.
    let hold_ms = match config.steps.get(progress.step).map(|s| s.hold) {
        Some(crate::config::Hold::For(hold)) => Some(millis(hold)),
        _ => None,
    };
    json!({
        "candidate": progress.candidate,
        "revision": progress.revision,
        "state": crate::control::outcome_word(progress.outcome),
        "paused": progress.paused,
        "step": progress.step + 1,
        "steps": config.steps.len(),
        "percent": percent,
        "manual": hold_ms.is_none(),
        "hold_ms": hold_ms,
        "held_ms": progress.held_ms,
        "hold_remaining_ms": hold_ms.map(|h| h.saturating_sub(progress.held_ms)),
        // The least running time left before completion, and the whole
        // rollout's: what a pipeline sizes `veer wait --timeout` from.
        // `null` while a manual step lies ahead.
        "min_remaining_ms": crate::rollout::min_remaining(&progress, config).map(millis),
        "min_total_ms": crate::rollout::min_total(config).map(millis),
        "gate": control.gate_status(service),
    })
}

/// `{"service": .., "rollout": ..}` for the rollout commands' answers.
pub fn service_rollout(control: &Control, service: &str) -> Value {
    let snapshot = control.snapshot();
    let config = snapshot
        .services
        .iter()
        .find(|s| &*s.name == service)
        .and_then(|s| s.rollout.clone());
    json!({
        "service": service,
        "rollout": rollout_json(control, service, config.as_ref()),
        "weights": service_weights(control, service)["weights"],
    })
}

/// The window figures of each gRPC method a version served (`other`: the
/// methods beyond the cap, and paths that are no method name).
fn methods_json(
    version: &crate::snapshot::VersionSnapshot,
    elapsed: std::time::Duration,
    window: std::time::Duration,
) -> Value {
    let mut methods = serde_json::Map::new();
    version.stats.methods().each(|method| {
        let figures = method.window().figures(elapsed, window);
        if figures.requests > 0 || method.name() != crate::grpc::methods::OTHER {
            methods.insert(method.name().to_string(), window_json(&figures));
        }
    });
    Value::Object(methods)
}

fn window_json(figures: &Figures) -> Value {
    // Microseconds to milliseconds, keeping microsecond precision.
    let ms = |us: Option<f64>| us.map(|v| v.round() / 1000.0);
    json!({
        "requests": figures.requests,
        "errors": figures.errors,
        "rps": (figures.rps() * 100.0).round() / 100.0,
        "error_rate": figures.error_rate(),
        "p50_ms": ms(figures.p50_us),
        "p95_ms": ms(figures.p95_us),
        "p99_ms": ms(figures.p99_us),
    })
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
