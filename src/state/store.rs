//! The seam between the control plane and where the run-time layer lives.
//!
//! `control` holds one `Arc<dyn Store>` and knows nothing else about it: it
//! loads the layer once at start, saves the whole layer after a change (one
//! save at a time, in order, from its writer task), and listens to
//! [`Store::changes`] for layers other writers put there. [`FileStore`]
//! (`state_dir/veer-state.json`, this veer only) is the one store today; a
//! shared store for a fleet (etcd, Consul) is another implementation beside
//! it, chosen where the server is composed, with no caller changed.
//!
//! The methods return boxed `'static` futures rather than borrowing `self`:
//! the trait stays object-safe without a macro crate, a network client can
//! clone its handle into the future, and the file store runs its blocking
//! calls on tokio's blocking pool, never on a worker thread.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{PersistedState, StateError, StateStore};

/// A store's answer, some time later.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What other veers sharing the store wrote, in order: one service's layer
/// each (`None`: the service's layer is gone).
pub type Changes = mpsc::UnboundedReceiver<RemoteChange>;

/// One service's layer as the shared store now holds it (already merged with
/// what this veer had not written yet).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteChange {
    pub service: String,
    pub state: Option<super::ServiceState>,
    /// This veer's layer of the service that `state` was merged with (`None`:
    /// it had none). A control task whose layer moved on since (a command it
    /// took meanwhile) applies the change on top of its own, three ways
    /// against this (`fleet::merge::rebase`), so the merge never undoes it.
    pub merged_with: Option<super::ServiceState>,
}

/// What a store held at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub layer: PersistedState,
    /// What went wrong but did not stop the load (a file set aside, a format
    /// from a newer veer): each says what happened and what to do.
    pub warnings: Vec<String>,
}

/// Where the run-time layer (weights, latches, rollout progress) lives.
///
/// What an implementation owes the control task:
/// - `load` finishes before veer serves: a replica must not send traffic a
///   fleet has rolled back. A store whose backend is away loads what it can
///   (a local copy) and says so in a warning rather than failing.
/// - `save` is called one at a time, in order, and the control task waits
///   for it before it tells anyone of a trip or a rollback; so it must not
///   hang on a backend that is away: keep the layer locally, return, and
///   catch the backend up later.
/// - A shared store merges a concurrent writer's layer with ours itself
///   (a latch is never dropped by a merge), and hands what others wrote to
///   `changes`; the control task applies each change to its layer as it
///   takes it, counts it in `PersistedState::remote_applied`, reconciles
///   with its config and saves (so a local copy follows the fleet; the
///   count tells the store which of its merges a save holds).
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Reads the layer. An error means veer must not start on this store (it
    /// could neither read nor set aside what it holds).
    fn load(&self) -> StoreFuture<Result<Loaded, StateError>>;

    /// Replaces the layer with `layer`, whole; done once it is durable.
    fn save(&self, layer: Arc<PersistedState>) -> StoreFuture<Result<(), StateError>>;

    /// Layers written by others, as they land; `None` when nobody else
    /// writes (the file store). Taken once, by the control task.
    fn changes(&self) -> Option<Changes>;

    /// How often rollout hold time alone is saved while a step holds: what
    /// a crash (or, in a fleet, the leader's death) can cost of a hold.
    fn holds_every(&self) -> Duration {
        Duration::from_secs(5)
    }
}

/// The state file in one `state_dir`, for this veer alone.
#[derive(Debug, Clone)]
pub struct FileStore {
    file: StateStore,
}

impl FileStore {
    /// Creates `dir` if missing and checks it can be written (see
    /// [`StateStore::create`]); reads nothing yet.
    pub fn open(dir: &Path) -> Result<FileStore, StateError> {
        Ok(FileStore {
            file: StateStore::create(dir)?,
        })
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

impl Store for FileStore {
    fn load(&self) -> StoreFuture<Result<Loaded, StateError>> {
        let file = self.file.clone();
        Box::pin(async move {
            let path = file.path().to_path_buf();
            let (layer, warning) = blocking(path, move || file.read()).await?;
            Ok(Loaded {
                layer,
                warnings: warning.into_iter().collect(),
            })
        })
    }

    fn save(&self, layer: Arc<PersistedState>) -> StoreFuture<Result<(), StateError>> {
        let file = self.file.clone();
        Box::pin(blocking(file.path().to_path_buf(), move || {
            file.save(&layer)
        }))
    }

    fn changes(&self) -> Option<Changes> {
        None
    }
}

/// Runs file I/O (fsync included) on the blocking pool.
async fn blocking<T: Send + 'static>(
    path: std::path::PathBuf,
    work: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|err| {
            Err(StateError::Task {
                path,
                reason: err.to_string(),
            })
        })
}

/// Opens the file store in `dir` and loads it: the store, what it held, and
/// the warnings to log.
pub async fn open_file(dir: &Path) -> Result<(Arc<dyn Store>, Loaded), StateError> {
    let store = FileStore::open(dir)?;
    let loaded = store.load().await?;
    Ok((Arc::new(store), loaded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_store_saves_and_loads_through_the_trait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, loaded) = open_file(dir.path()).await.expect("open");
        assert_eq!(loaded.layer, PersistedState::default());
        assert!(loaded.warnings.is_empty());
        assert!(store.changes().is_none(), "nobody else writes a state_dir");

        let mut layer = PersistedState::default();
        layer
            .services
            .insert("web".into(), super::super::ServiceState::default());
        store.save(Arc::new(layer.clone())).await.expect("save");
        let (_, again) = open_file(dir.path()).await.expect("reopen");
        assert_eq!(again.layer, layer);
    }

    #[tokio::test]
    async fn a_file_set_aside_comes_back_as_a_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(super::super::STATE_FILE), b"{not json").expect("write");
        let (_, loaded) = open_file(dir.path()).await.expect("open");
        assert_eq!(loaded.layer, PersistedState::default());
        assert_eq!(loaded.warnings.len(), 1);
        assert!(
            loaded.warnings[0].contains("not valid veer state"),
            "{:?}",
            loaded.warnings
        );
    }
}
