//! The run-time layer on top of the config file, as pure functions: which
//! weights are in force, and what of the layer survives a new config.
//!
//! Precedence (the contract's): the file is the desired state; a rollout in
//! progress (or completed) for the candidate's revision sets the candidate's
//! and the baseline's weights from its step; otherwise run-time weights lie
//! on top until the file's own weights for that service change; a guard latch
//! holds a (version, revision) at zero until that version's revision changes
//! or an operator resumes, and its share goes to the guard's baseline.

use std::collections::BTreeMap;

use crate::config::{Config, Service};
use crate::state::{PersistedState, RolloutOutcome, RolloutProgress, ServiceState};

/// The file's weights of a service, by version name.
pub fn file_weights(service: &Service) -> BTreeMap<String, u32> {
    service
        .versions
        .iter()
        .map(|v| (v.name.clone(), v.weight.get()))
        .collect()
}

/// The rollout progress that applies to `service` as configured now (see
/// [`crate::rollout::current`]).
pub fn current_rollout<'a>(
    service: &Service,
    layer: Option<&'a ServiceState>,
) -> Option<&'a RolloutProgress> {
    crate::rollout::current(service, layer?.rollout.as_ref())
}

/// The weights in force, by version index.
pub fn effective_weights(service: &Service, layer: Option<&ServiceState>) -> Vec<u32> {
    let rollout = current_rollout(service, layer)
        .filter(|p| p.outcome != RolloutOutcome::Abandoned)
        .zip(service.rollout.as_ref())
        .zip(service.guard.as_ref());
    let mut weights: Vec<u32> = match rollout {
        Some(((progress, config), guard)) => {
            let percent = crate::rollout::percent(config, progress);
            (0..service.versions.len())
                .map(|i| {
                    if i == config.candidate {
                        percent
                    } else if i == guard.baseline {
                        100 - percent
                    } else {
                        0
                    }
                })
                .collect()
        }
        None => service
            .versions
            .iter()
            .map(|v| {
                layer
                    .and_then(|l| l.weights.as_ref())
                    .and_then(|w| w.get(&v.name).copied())
                    .unwrap_or(v.weight.get())
            })
            .collect(),
    };
    let (Some(layer), Some(guard)) = (layer, &service.guard) else {
        return weights;
    };
    for (index, version) in service.versions.iter().enumerate() {
        if index == guard.baseline {
            continue;
        }
        if is_latched(layer, &version.name, &version.revision) {
            let moved = std::mem::take(&mut weights[index]);
            weights[guard.baseline] = weights[guard.baseline].saturating_add(moved);
        }
    }
    // A latch must never leave a service with no weighted version at all:
    // the baseline is where traffic goes.
    if weights.iter().all(|&w| w == 0) {
        weights[guard.baseline] = 1;
    }
    weights
}

pub fn is_latched(layer: &ServiceState, version: &str, revision: &str) -> bool {
    layer
        .latches
        .iter()
        .any(|l| l.version == version && l.revision == revision)
}

/// One change a new config made to the run-time layer: the line for people,
/// and the service, version, revision and a reason word as fields, so that a
/// JSON log carries them without a pattern to pull them out of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub service: String,
    pub version: Option<String>,
    pub revision: Option<String>,
    /// `rollout_started`, `revision_changed`, `service_removed`,
    /// `file_weights_replace_runtime`, `file_weights_replace_rollout`,
    /// `rollout_changed`.
    pub reason: &'static str,
    text: String,
}

impl Note {
    fn service(name: &str, reason: &'static str, text: String) -> Note {
        Note {
            service: name.to_string(),
            version: None,
            revision: None,
            reason,
            text,
        }
    }
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Drops what a new config overrides: run-time weights of services whose file
/// weights changed since they were set, latches of versions whose revision
/// changed (or that are gone), rollout progress for another candidate or
/// revision, and services that are gone; starts the rollouts the config asks
/// for that have no progress yet (at `now_ms`). Returns one note per change,
/// for the log.
pub fn reconcile(layer: &mut PersistedState, config: &Config, now_ms: u64) -> Vec<Note> {
    let mut notes = Vec::new();
    for service in &config.services {
        let (Some(rollout), Some(candidate)) = (
            &service.rollout,
            service
                .rollout
                .as_ref()
                .and_then(|r| service.versions.get(r.candidate)),
        ) else {
            continue;
        };
        let state = layer.services.entry(service.name.clone()).or_default();
        let current = state
            .rollout
            .as_ref()
            .is_some_and(|p| p.candidate == candidate.name && p.revision == candidate.revision);
        if !current {
            notes.push(Note {
                service: service.name.clone(),
                version: Some(candidate.name.clone()),
                revision: Some(candidate.revision.clone()),
                reason: "rollout_started",
                text: format!(
                    "service `{}`: rollout of `{}` revision `{}` starts at {}%",
                    service.name,
                    candidate.name,
                    candidate.revision,
                    rollout.percent(0)
                ),
            });
            // Remember the file's weights the rollout started from: if a
            // reload changes them later, the file takes over again.
            if state.weights.is_none() {
                state.file_weights = Some(file_weights(service));
            }
            state.rollout = Some(crate::rollout::start(candidate, now_ms));
        }
    }
    // With run-time state for many services, find each by name once (a
    // scan per entry would cost services × entries).
    let by_name: Option<std::collections::HashMap<&str, &Service>> = (layer.services.len() > 8)
        .then(|| {
            config
                .services
                .iter()
                .map(|s| (s.name.as_str(), &**s))
                .collect()
        });
    layer.services.retain(|name, state| {
        let found = match &by_name {
            Some(by_name) => by_name.get(name.as_str()).copied(),
            None => config
                .services
                .iter()
                .find(|s| &s.name == name)
                .map(|s| &**s),
        };
        let Some(service) = found else {
            notes.push(Note::service(
                name,
                "service_removed",
                format!("service `{name}` left the config: its run-time state is dropped"),
            ));
            return false;
        };
        let now = file_weights(service);
        if state.weights.is_some() && state.file_weights.as_ref() != Some(&now) {
            notes.push(Note::service(
                name,
                "file_weights_replace_runtime",
                format!(
                    "service `{name}`: the file's weights changed, they replace the run-time weights"
                ),
            ));
            state.weights = None;
            state.file_weights = None;
        }
        if state.weights.is_none() && state.file_weights.as_ref().is_some_and(|w| *w != now) {
            if let Some(progress) = state.rollout.as_mut().filter(|p| {
                matches!(p.outcome, RolloutOutcome::InProgress | RolloutOutcome::Completed)
            }) {
                notes.push(Note::service(
                    name,
                    "file_weights_replace_rollout",
                    format!(
                        "service `{name}`: the file's weights changed, they replace the rollout's"
                    ),
                ));
                progress.outcome = RolloutOutcome::Abandoned;
            }
            state.file_weights = Some(now.clone());
        }
        if state.rollout.is_some() && current_rollout(service, Some(state)).is_none() {
            notes.push(Note::service(
                name,
                "rollout_changed",
                format!(
                    "service `{name}`: the rollout in the config changed; the old progress is dropped"
                ),
            ));
            state.rollout = None;
        }
        state.latches.retain(|latch| {
            let current = service.versions.iter().find(|v| v.name == latch.version);
            match current {
                Some(v) if v.revision == latch.revision => true,
                Some(v) => {
                    notes.push(Note {
                        service: name.clone(),
                        version: Some(latch.version.clone()),
                        revision: Some(v.revision.clone()),
                        reason: "revision_changed",
                        text: format!(
                            "service `{name}`: version `{}` moved from revision `{}` to `{}`: its guard latch is cleared",
                            latch.version, latch.revision, v.revision
                        ),
                    });
                    false
                }
                None => false,
            }
        });
        *state != ServiceState::default()
    });
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Latch;

    fn config(stable: u32, canary: u32, canary_revision: &str) -> Config {
        let yaml = format!(
            "listeners: [{{name: l, address: '127.0.0.1:0'}}]\n\
             services:\n  - name: svc\n    versions:\n\
             \x20     - {{name: stable, revision: '1', endpoints: ['127.0.0.1:1'], weight: {stable}}}\n\
             \x20     - {{name: canary, revision: '{canary_revision}', endpoints: ['127.0.0.1:2'], weight: {canary}}}\n\
             \x20   guard: {{baseline: stable, max_error_rate: 0.05}}\n"
        );
        crate::config::parse_str(&yaml, "t.yaml").expect("valid")
    }

    fn latch(revision: &str) -> Latch {
        Latch {
            version: "canary".into(),
            revision: revision.into(),
            reason: "error_rate".into(),
            at_unix_ms: 0,
            id: 0,
        }
    }

    #[test]
    fn a_latch_moves_the_share_to_the_baseline() {
        let c = config(75, 25, "2");
        let layer = ServiceState {
            latches: vec![latch("2")],
            ..Default::default()
        };
        assert_eq!(
            effective_weights(&c.services[0], Some(&layer)),
            vec![100, 0]
        );
        // A latch on another revision does nothing.
        let other = ServiceState {
            latches: vec![latch("1")],
            ..Default::default()
        };
        assert_eq!(
            effective_weights(&c.services[0], Some(&other)),
            vec![75, 25]
        );
        // Blue-green: all on the canary, canary latched: all on the baseline.
        let c = config(0, 100, "2");
        assert_eq!(
            effective_weights(&c.services[0], Some(&layer)),
            vec![100, 0]
        );
    }

    #[test]
    fn a_new_revision_clears_the_latch_and_new_file_weights_replace_runtime_ones() {
        let mut layer = PersistedState::default();
        layer.services.insert(
            "svc".into(),
            ServiceState {
                weights: Some(BTreeMap::from([
                    ("stable".into(), 0),
                    ("canary".into(), 100),
                ])),
                file_weights: Some(BTreeMap::from([
                    ("stable".into(), 90),
                    ("canary".into(), 10),
                ])),
                latches: vec![latch("2")],
                rollout: None,
                history: Vec::new(),
            },
        );
        // Same file: everything stays.
        assert!(reconcile(&mut layer, &config(90, 10, "2"), 0).is_empty());
        assert!(layer.services["svc"].weights.is_some());
        // New revision: the latch goes, the run-time weights stay.
        let notes = reconcile(&mut layer, &config(90, 10, "3"), 0);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(layer.services["svc"].latches.is_empty());
        assert!(layer.services["svc"].weights.is_some());
        // New file weights: the run-time weights go, and so does the service's
        // now empty entry.
        reconcile(&mut layer, &config(50, 50, "3"), 0);
        assert!(!layer.services.contains_key("svc"));
    }
}
