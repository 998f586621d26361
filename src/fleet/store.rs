//! The fleet's store as the control plane sees it (`state::Store`): etcd
//! for the fleet, and this replica's `state_dir` as its copy, to serve from
//! when etcd is away at start.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::etcd::{EtcdSettings, EtcdStore};
use crate::state::{open_file, Changes, Loaded, PersistedState, StateError, Store, StoreFuture};

pub struct FleetStore {
    etcd: EtcdStore,
    copy: Option<Arc<dyn Store>>,
    loaded: Loaded,
    changes: Mutex<Option<Changes>>,
    describe: String,
}

impl std::fmt::Debug for FleetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

/// Opens this replica's copy in `state_dir` (if any), then etcd: the store,
/// what it holds (the fleet's layer, or the copy when etcd did not answer
/// within its timeout) and the warnings to log.
pub async fn open(
    settings: EtcdSettings,
    state_dir: Option<&Path>,
) -> Result<(Arc<FleetStore>, Loaded), StateError> {
    let (copy, mut loaded) = match state_dir {
        Some(dir) => {
            let (store, loaded) = open_file(dir).await?;
            (Some(store), loaded)
        }
        None => (
            None,
            Loaded {
                layer: PersistedState::default(),
                warnings: vec![
                    "fleet: no state_dir, so this replica keeps no copy of the fleet's state: \
                     if etcd is away when it starts, it serves from its config alone; set \
                     state_dir to keep one"
                        .to_string(),
                ],
            },
        ),
    };
    let describe = format!(
        "etcd {} under {}",
        settings.endpoints.join(","),
        settings.prefix
    );
    let mut opened = EtcdStore::open(settings, loaded.layer.clone()).await;
    if let Some(fleet) = opened.fleet {
        loaded.layer = fleet;
    }
    loaded.warnings.extend(opened.warning);
    let changes = opened.store.changes();
    let store = FleetStore {
        etcd: opened.store,
        copy,
        loaded: loaded.clone(),
        changes: Mutex::new(changes),
        describe,
    };
    Ok((Arc::new(store), loaded))
}

impl FleetStore {
    pub fn connected(&self) -> bool {
        self.etcd.connected()
    }

    /// The state sync's connection flag, for the fleet's view.
    pub fn connected_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.etcd.connected_flag()
    }
}

impl Store for FleetStore {
    fn load(&self) -> StoreFuture<Result<Loaded, StateError>> {
        let loaded = self.loaded.clone();
        Box::pin(async move { Ok(loaded) })
    }

    /// Durable once this replica's copy is written; etcd gets the layer as
    /// soon as it answers (never waited on here, so a lost etcd never holds
    /// a trip back).
    fn save(&self, layer: Arc<PersistedState>) -> StoreFuture<Result<(), StateError>> {
        self.etcd.save(Arc::clone(&layer));
        match &self.copy {
            Some(copy) => copy.save(layer),
            None => Box::pin(async { Ok(()) }),
        }
    }

    fn changes(&self) -> Option<Changes> {
        self.changes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}
