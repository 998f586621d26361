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
) -> Result<(Arc<dyn Store>, Loaded), StateError> {
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
    // The merge base is the store's business, not the control plane's.
    loaded.layer.fleet_base = None;
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
}

impl Store for FleetStore {
    fn load(&self) -> StoreFuture<Result<Loaded, StateError>> {
        let loaded = self.loaded.clone();
        Box::pin(async move { Ok(loaded) })
    }

    /// Durable once this replica's copy is written; etcd gets the layer as
    /// soon as it answers (never waited on here, so a lost etcd never holds
    /// a trip back).
    /// The copy keeps the merge base beside the layer, in the same file, so
    /// a restarted replica merges three ways.
    fn save(&self, layer: Arc<PersistedState>) -> StoreFuture<Result<(), StateError>> {
        self.etcd.save(Arc::clone(&layer));
        match &self.copy {
            Some(copy) => {
                let mut with_base = (*layer).clone();
                with_base.fleet_base = self.etcd.base().map(|base| (*base).clone());
                copy.save(Arc::new(with_base))
            }
            None => Box::pin(async { Ok(()) }),
        }
    }

    /// Every second: the leader's hold time in etcd is what a successor
    /// takes over from, so a leader's death costs at most that much of a hold.
    fn holds_every(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }

    fn changes(&self) -> Option<Changes> {
        self.changes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}
