//! The fleet's store as the control plane sees it (`state::Store`): etcd
//! for the fleet, and this replica's `state_dir` as its copy, to serve from
//! when etcd is away at start.
//!
//! The copy holds the layer and, beside it in the same file, the merge base
//! (what the fleet held when the layer last took it in), so a restarted
//! replica merges three ways. Both only go forward, and every write of the
//! copy takes the newest of each under one lock: the file never goes back,
//! and its base is never ahead of its layer.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::etcd::{Base, EtcdSettings, EtcdStore};
use crate::state::{open_file, Changes, Loaded, PersistedState, StateError, Store, StoreFuture};

pub struct FleetStore {
    etcd: EtcdStore,
    copy: Option<Arc<Copy>>,
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
    // The merge base is the store's business, not the control plane's.
    loaded.layer.fleet_base = None;
    if let Some(fleet) = opened.fleet {
        loaded.layer = fleet;
    }
    loaded.warnings.extend(opened.warning);
    let changes = opened.store.changes();
    let copy = copy.map(|store| {
        let copy = Arc::new(Copy {
            store,
            lock: tokio::sync::Mutex::new(None),
            layers: opened.store.layers(),
            bases: opened.store.bases(),
        });
        tokio::spawn(Arc::clone(&copy).follow_the_base());
        copy
    });
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

    /// Fences the rollout moves this replica makes as the fleet's leader
    /// by its lead (see `fleet::leader::Term`).
    pub fn follow_leadership(&self, leadership: crate::fleet::leader::Leadership) {
        self.etcd.follow_leadership(leadership);
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
    /// Durable once the copy holds this layer (or a newer one).
    fn save(&self, layer: Arc<PersistedState>) -> StoreFuture<Result<(), StateError>> {
        self.etcd.save(layer);
        match &self.copy {
            Some(copy) => {
                let copy = Arc::clone(copy);
                Box::pin(async move { copy.write().await })
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

/// A layer and the base written with it, as handed out (compared by
/// pointer: both are replaced, never changed in place).
struct Written {
    layer: Arc<PersistedState>,
    base: Option<Base>,
}

impl Written {
    fn same(&self, other: &Written) -> bool {
        Arc::ptr_eq(&self.layer, &other.layer)
            && match (&self.base, &other.base) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

/// This replica's copy in `state_dir`.
struct Copy {
    store: Arc<dyn Store>,
    /// One write at a time, each of the newest layer and base; holds the
    /// pair last written, so a write that would repeat it is skipped.
    lock: tokio::sync::Mutex<Option<Written>>,
    /// The newest layer handed to the store.
    layers: watch::Receiver<Arc<PersistedState>>,
    bases: watch::Receiver<Option<Base>>,
}

impl Copy {
    async fn write(&self) -> Result<(), StateError> {
        let mut last = self.lock.lock().await;
        let layer = Arc::clone(&self.layers.borrow());
        let base = self.bases.borrow().clone();
        let written = Written { layer, base };
        if last.as_ref().is_some_and(|last| last.same(&written)) {
            // Each decision moves the layer and then the base: when the
            // base moved before the layer's write began, that write took
            // both in, and a second one would only cost the disk a rewrite
            // and two fsyncs (beside etcd's own, on the same disk at the
            // same moment, whose commit the whole fleet waits for).
            return Ok(());
        }
        tracing::debug!("fleet copy: writing");
        let mut copy = (*written.layer).clone();
        copy.fleet_base = written.base.as_ref().map(|base| (**base).clone());
        self.store.save(Arc::new(copy)).await?;
        *last = Some(written);
        Ok(())
    }

    /// Writes the copy again when the base moves on after the layer's own
    /// write (the sync task takes a layer in after it is saved), so a
    /// restart finds the base that goes with its layer, not an older one.
    async fn follow_the_base(self: Arc<Self>) {
        let mut bases = self.bases.clone();
        while bases.changed().await.is_ok() {
            if let Err(err) = self.write().await {
                tracing::warn!("{err}; this replica's copy of the fleet state is not up to date");
            }
        }
    }
}
