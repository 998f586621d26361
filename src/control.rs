//! The single writer of the snapshot. Config reloads and run-time weight changes
//! come here, are applied to the desired state under a mutex, and leave as one
//! new snapshot published with one `ArcSwap` store. The mutex is on the cold
//! path only (an operator or a file change); requests never touch it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::config::{self, Config};
use crate::snapshot::{Parts, Snapshot};
use crate::telemetry::{StatsRegistry, Telemetry};
use crate::upstream::Registry;

pub struct Control {
    published: Arc<ArcSwap<Snapshot>>,
    telemetry: Arc<Telemetry>,
    /// The file the config came from; `None` for a config given in code.
    source: Option<PathBuf>,
    state: Mutex<State>,
}

struct State {
    config: Config,
    /// Run-time weights per service name, on top of the file's.
    weights: HashMap<String, Vec<u32>>,
    last_reload: Option<ReloadRecord>,
    registry: Registry,
    stats: StatsRegistry,
    telemetry: Arc<Telemetry>,
    generation: u64,
}

/// The result of the last reload, for `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadRecord {
    pub at: String,
    pub result: &'static str,
    pub errors: Vec<String>,
}

impl Control {
    pub fn new(config: Config, telemetry: Arc<Telemetry>, source: Option<PathBuf>) -> Control {
        let mut state = State {
            config,
            weights: HashMap::new(),
            last_reload: None,
            registry: Registry::default(),
            stats: StatsRegistry::default(),
            telemetry: Arc::clone(&telemetry),
            generation: 0,
        };
        let first = state.build();
        Control {
            published: Arc::new(ArcSwap::from_pointee(first)),
            telemetry,
            source,
            state: Mutex::new(state),
        }
    }

    /// The config file, when there is one.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// The last reload's result, if there was a reload.
    pub fn last_reload(&self) -> Option<ReloadRecord> {
        self.lock().last_reload.clone()
    }

    /// Reads the config file again and applies it if it is valid; otherwise
    /// changes nothing and returns every error (`FILE:LINE:COL: path: reason`).
    pub fn reload(&self) -> Result<(), Vec<String>> {
        let Some(path) = &self.source else {
            return Err(vec!["this proxy was started without a config file".into()]);
        };
        let loaded = config::load_file(path);
        let outcome = match loaded {
            Ok(new) => {
                self.apply_config(new);
                Ok(())
            }
            Err(errors) => Err(errors.0.iter().map(ToString::to_string).collect::<Vec<_>>()),
        };
        self.telemetry.count_reload(outcome.is_ok());
        let record = ReloadRecord {
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            result: if outcome.is_ok() {
                "success"
            } else {
                "failure"
            },
            errors: outcome.as_ref().err().cloned().unwrap_or_default(),
        };
        match &outcome {
            Ok(()) => tracing::info!(file = %path.display(), "config reloaded"),
            Err(errors) => {
                for error in errors {
                    tracing::error!("reload refused, the previous config keeps serving: {error}");
                }
            }
        }
        self.lock().last_reload = Some(record);
        outcome
    }

    /// What the request path reads.
    pub fn published(&self) -> Arc<ArcSwap<Snapshot>> {
        Arc::clone(&self.published)
    }

    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The snapshot in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.published.load_full()
    }

    /// The configuration in force (the file's desired state).
    pub fn config(&self) -> Config {
        self.lock().config.clone()
    }

    /// Sets run-time weights for some versions of `service` (others keep
    /// theirs). Takes effect for the very next request.
    pub fn set_weights(&self, service: &str, weights: &[(&str, u32)]) -> Result<(), String> {
        let mut state = self.lock();
        let Some(index) = state.config.services.iter().position(|s| s.name == service) else {
            return Err(format!("no service named `{service}` in the config"));
        };
        let declared = &state.config.services[index];
        let mut next = state
            .weights
            .get(service)
            .cloned()
            .unwrap_or_else(|| declared.versions.iter().map(|v| v.weight).collect());
        for &(name, weight) in weights {
            let Some(v) = declared.versions.iter().position(|v| v.name == name) else {
                let known: Vec<&str> = declared.versions.iter().map(|v| v.name.as_str()).collect();
                return Err(format!(
                    "service `{service}` has no version `{name}` (versions: {})",
                    known.join(", ")
                ));
            };
            next[v] = weight;
        }
        if next.iter().all(|&w| w == 0) {
            return Err(format!(
                "refusing weights that are all zero for `{service}`: every request would fail; \
                 give at least one version a weight above 0"
            ));
        }
        state.weights.insert(service.to_string(), next);
        self.publish(&mut state);
        Ok(())
    }

    /// Replaces the configuration. A service whose file weights changed drops
    /// its run-time weights (the file is the desired state).
    pub fn apply_config(&self, config: Config) {
        let mut state = self.lock();
        let old = std::mem::replace(&mut state.config, config);
        let State {
            config, weights, ..
        } = &mut *state;
        weights.retain(|name, _| {
            let file_weights = |c: &Config| {
                c.services.iter().find(|s| &s.name == name).map(|s| {
                    s.versions
                        .iter()
                        .map(|v| (v.name.clone(), v.weight))
                        .collect::<Vec<_>>()
                })
            };
            let now = file_weights(config);
            now.is_some() && now == file_weights(&old)
        });
        self.publish(&mut state);
    }

    /// Keeps the sliding windows moving (each version's next slot emptied
    /// ahead of time) and folds Prometheus histograms, until `stop` changes.
    pub async fn tick(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        const TICK: std::time::Duration = std::time::Duration::from_millis(250);
        const UPKEEP_EVERY: u32 = 20;
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            let elapsed = self.telemetry.elapsed(tokio::time::Instant::now());
            for version in self.published.load().versions() {
                version.stats.window().advance(elapsed);
            }
            ticks += 1;
            if ticks % UPKEEP_EVERY == 0 {
                self.telemetry.upkeep();
            }
        }
    }

    fn publish(&self, state: &mut State) {
        let snapshot = state.build();
        self.published.store(Arc::new(snapshot));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent `State` (every
        // mutation is a whole replace), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    fn build(&mut self) -> Snapshot {
        self.generation += 1;
        let State {
            config,
            weights,
            last_reload: _,
            registry,
            stats,
            telemetry,
            generation,
        } = self;
        let parts = Parts {
            endpoints: registry,
            stats,
            telemetry,
        };
        Snapshot::build(*generation, config, parts, |_, service| {
            weights
                .get(&service.name)
                .cloned()
                .unwrap_or_else(|| service.versions.iter().map(|v| v.weight).collect())
        })
    }
}
