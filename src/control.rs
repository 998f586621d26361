//! The single writer of the snapshot. Config reloads and run-time weight changes
//! come here, are applied to the desired state under a mutex, and leave as one
//! new snapshot published with one `ArcSwap` store. The mutex is on the cold
//! path only (an operator or a file change); requests never touch it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::snapshot::Snapshot;
use crate::upstream::Registry;

pub struct Control {
    published: Arc<ArcSwap<Snapshot>>,
    state: Mutex<State>,
}

struct State {
    config: Config,
    /// Run-time weights per service name, on top of the file's.
    weights: HashMap<String, Vec<u32>>,
    registry: Registry,
    generation: u64,
}

impl Control {
    pub fn new(config: Config) -> Control {
        let mut state = State {
            config,
            weights: HashMap::new(),
            registry: Registry::default(),
            generation: 0,
        };
        let first = state.build();
        Control {
            published: Arc::new(ArcSwap::from_pointee(first)),
            state: Mutex::new(state),
        }
    }

    /// What the request path reads.
    pub fn published(&self) -> Arc<ArcSwap<Snapshot>> {
        Arc::clone(&self.published)
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
            registry,
            generation,
        } = self;
        Snapshot::build(*generation, config, registry, |_, service| {
            weights
                .get(&service.name)
                .cloned()
                .unwrap_or_else(|| service.versions.iter().map(|v| v.weight).collect())
        })
    }
}
