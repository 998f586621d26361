//! The fleet's run-time layer in etcd v3: one key per service,
//! `<prefix>/state/<service>`, holding that service's `ServiceState` as JSON.
//!
//! One task owns the connection, what this replica last knew each key to hold
//! (value and `mod_revision`), and the latest layer it was asked to write. It
//! writes only the services that differ, in one transaction guarded by each
//! key's `mod_revision`; when a sibling wrote first the transaction fails, the
//! task reads the keys back, merges (`fleet::merge`) and tries again. It
//! watches the prefix and hands what siblings wrote, merged with what this
//! replica has not written yet, to the control plane as [`RemoteChange`]s.
//!
//! Nothing here is on the request path, and nothing waits on etcd but this
//! task: a save returns once the local cache is written; etcd gets the layer
//! when it can. While etcd is away the task retries with a backoff and the
//! replica serves from what it has.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions, WatchStream,
};
use tokio::sync::{mpsc, watch};

use super::leader::{Leadership, Term};
use super::merge::merge;
use crate::config::EtcdTls;
use crate::state::{
    Changes, PersistedState, RemoteChange, RolloutOutcome, RolloutProgress, ServiceState,
};

/// How to reach etcd and where veer's keys live.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    /// Every key veer reads or writes starts with this (no trailing `/`).
    pub prefix: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<EtcdTls>,
    /// Per request, and for connecting.
    pub timeout: Duration,
}

/// The handle the control plane holds.
pub struct EtcdStore {
    desired: watch::Sender<Arc<PersistedState>>,
    /// Who leads the fleet's rollouts, once the control plane runs.
    leadership: Arc<std::sync::OnceLock<Leadership>>,
    /// The lead the layers saved so far were changed under (see
    /// [`EtcdStore::save`]), shared with the task that writes them.
    fence: Arc<ArcSwapOption<Term>>,
    connected: Arc<AtomicBool>,
    changes: Option<Changes>,
    base: watch::Receiver<Option<Base>>,
}

/// What the fleet held, per service, when this replica's layer last took it
/// in: the base of its three-way merges.
pub type Base = Arc<BTreeMap<String, ServiceState>>;

impl EtcdSettings {
    /// From the config's `fleet.etcd`, with the password read from its file
    /// (trailing newline dropped, as secrets mounted from files end in one).
    pub fn from_config(etcd: &crate::config::Etcd) -> Result<EtcdSettings, String> {
        let password = match &etcd.password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        format!(
                            "etcd.password_file: cannot read {} ({e}); check the path and \
                             that veer may read it",
                            path.display()
                        )
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            None => None,
        };
        Ok(EtcdSettings {
            endpoints: etcd.endpoints.clone(),
            prefix: etcd.prefix.clone(),
            username: etcd.username.clone(),
            password,
            tls: etcd.tls.clone(),
            timeout: etcd.timeout,
        })
    }
}

/// What `open` found.
pub struct Opened {
    pub store: EtcdStore,
    /// The layer to start from: the fleet's, merged three ways with the
    /// local cache when the cache keeps the fleet's state it last took in
    /// (`fleet_base`), else the fleet's as it is; `None` when etcd could not
    /// be read in time (the caller serves from its local cache, and the task
    /// merges that cache in when etcd answers).
    pub fleet: Option<PersistedState>,
    pub warning: Option<String>,
}

/// Back-off between attempts while etcd is away.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Attempts at one write before waiting for the next change or retry tick.
const CAS_ATTEMPTS: usize = 8;

impl EtcdStore {
    /// Connects and reads the fleet's layer within `settings.timeout`, then
    /// starts the task that keeps this replica and etcd in step. `local` is
    /// the layer this replica had (its cache): it is what the task writes when
    /// etcd could not be read now. Its `fleet_base`, when the cache kept one,
    /// is the base of the first merge, so a restarted replica merges three
    /// ways (what the fleet removed while it was down stays removed).
    pub async fn open(settings: EtcdSettings, mut local: PersistedState) -> Opened {
        let base = local.fleet_base.take();
        let synced = base.is_some();
        let seen: Base = Arc::new(base.unwrap_or_default());
        let (base_tx, base_rx) = watch::channel(synced.then(|| Arc::clone(&seen)));
        let (desired_tx, desired_rx) = watch::channel(Arc::new(local));
        let (changes_tx, changes_rx) = mpsc::unbounded_channel();
        let connected = Arc::new(AtomicBool::new(false));
        let cache = Arc::clone(&desired_tx.borrow());
        let fence = Arc::new(ArcSwapOption::empty());
        let leadership = Arc::new(std::sync::OnceLock::new());
        let mut task = Sync {
            fence: Arc::clone(&fence),
            leadership: Arc::clone(&leadership),
            refused: std::collections::BTreeSet::new(),
            settings,
            client: None,
            known: BTreeMap::new(),
            known_revision: 0,
            seen,
            synced,
            base: base_tx,
            announced: BTreeMap::new(),
            sent: 0,
            desired: desired_rx,
            changes: changes_tx,
            connected: Arc::clone(&connected),
            watch: None,
        };
        let (fleet, warning) =
            match tokio::time::timeout(task.settings.timeout, task.first_read(&cache)).await {
                Ok(Ok(fleet)) => (Some(fleet), None),
                Ok(Err(e)) => (
                    None,
                    Some(format!(
                "etcd at {} could not be read ({e}); veer serves from its config and its local \
                 copy of the fleet state, and joins the fleet when etcd answers",
                task.settings.endpoints.join(", ")
            )),
                ),
                Err(_) => (
                    None,
                    Some(format!(
                "etcd at {} did not answer within {:?}; veer serves from its config and its local \
                 copy of the fleet state, and joins the fleet when etcd answers",
                task.settings.endpoints.join(", "),
                task.settings.timeout
            )),
                ),
            };
        if let Some(fleet) = &fleet {
            // The start layer (the fleet's, merged with the cache) is what
            // this replica starts from.
            desired_tx.send_replace(Arc::new(fleet.clone()));
        }
        let store = EtcdStore {
            desired: desired_tx,
            leadership,
            fence,
            connected,
            changes: Some(changes_rx),
            base: base_rx,
        };
        tokio::spawn(task.run());
        Opened {
            store,
            fleet,
            warning,
        }
    }

    /// Hands the latest layer to the task; returns at once. The layer's
    /// `remote_applied` says which of the changes handed out it holds.
    ///
    /// A layer saved while this replica leads may hold rollout moves it
    /// made as the leader (hold time, a step): its lead goes with it, and
    /// stays with every later layer until etcd took them, so their write is
    /// fenced by that lead even when it lands after the lead was lost.
    pub fn save(&self, layer: Arc<PersistedState>) {
        tracing::debug!("fleet sync: layer saved");
        if let Some(term) = self.leadership.get().and_then(Leadership::term) {
            self.fence.store(Some(term));
        }
        self.desired.send_replace(layer);
    }

    /// Fences this replica's rollout writes by its lead from now on.
    pub fn follow_leadership(&self, leadership: Leadership) {
        let _ = self.leadership.set(leadership);
    }

    /// The changes siblings make, once; `None` after the first call.
    pub fn changes(&mut self) -> Option<Changes> {
        self.changes.take()
    }

    /// Whether the task holds a working connection to etcd now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The flag behind [`EtcdStore::connected`], for the fleet's view.
    pub fn connected_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.connected)
    }

    /// The base of this replica's merges as of the layers saved so far
    /// (never ahead of them: it may lag, which merges as if this replica
    /// changed more than it did, and so never drops a latch); `None` before
    /// the first sync. Kept in the local copy beside the layer.
    pub fn base(&self) -> Option<Base> {
        self.base.borrow().clone()
    }

    /// [`EtcdStore::base`] as it moves on.
    pub fn bases(&self) -> watch::Receiver<Option<Base>> {
        self.base.clone()
    }

    /// The newest layer handed to [`EtcdStore::save`], as it moves on.
    pub fn layers(&self) -> watch::Receiver<Arc<PersistedState>> {
        self.desired.subscribe()
    }
}

struct Known {
    value: ServiceState,
    mod_revision: i64,
}

struct Sync {
    settings: EtcdSettings,
    client: Option<Client>,
    /// What etcd holds, as far as this replica knows.
    known: BTreeMap<String, Known>,
    /// The store revision `known` is complete up to; the watch starts after it.
    known_revision: i64,
    /// What the fleet held when this replica's layer last took it in: the
    /// base of every merge. Empty until the first full read, unless the
    /// local cache kept one.
    seen: Base,
    /// `seen` is meaningful (a full read happened, or the cache kept a
    /// base); else merges have no base.
    synced: bool,
    /// `seen` as published for the local copy (see [`EtcdStore::base`]).
    base: watch::Sender<Option<Base>>,
    /// Merges handed to the control plane and not yet in a save: the fleet
    /// value each took in, and its number among the changes sent.
    announced: BTreeMap<String, (Option<ServiceState>, u64)>,
    /// Changes sent to the control plane so far.
    sent: u64,
    desired: watch::Receiver<Arc<PersistedState>>,
    changes: mpsc::UnboundedSender<RemoteChange>,
    connected: Arc<AtomicBool>,
    watch: Option<WatchStream>,
    /// Shared with [`EtcdStore`]: the lead to fence rollout moves with.
    fence: Arc<ArcSwapOption<Term>>,
    leadership: Arc<std::sync::OnceLock<Leadership>>,
    /// Services whose rollout move etcd refused (this replica had lost the
    /// lead): their rollout is the fleet's until the control plane holds it.
    refused: std::collections::BTreeSet<String>,
}

impl Sync {
    fn state_prefix(&self) -> String {
        format!("{}/state/", self.settings.prefix)
    }

    fn key(&self, service: &str) -> String {
        format!("{}{service}", self.state_prefix())
    }

    async fn connect(&self) -> Result<Client, etcd_client::Error> {
        connect(&self.settings).await
    }

    fn client(&mut self) -> Result<&mut Client, etcd_client::Error> {
        self.client
            .as_mut()
            .ok_or_else(|| etcd_client::Error::InvalidArgs("not connected to etcd".into()))
    }

    /// Reads every service key into `known`.
    async fn read_all(&mut self) -> Result<(), etcd_client::Error> {
        let prefix = self.state_prefix();
        let response = self
            .client()?
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await?;
        self.known_revision = response.header().map_or(0, |h| h.revision());
        self.known.clear();
        for kv in response.kvs() {
            let Some(service) = kv.key_str().ok().and_then(|k| k.strip_prefix(&prefix)) else {
                continue;
            };
            if let Some(value) = parse(kv.key(), kv.value()) {
                self.known.insert(
                    service.to_string(),
                    Known {
                        value,
                        mod_revision: kv.mod_revision(),
                    },
                );
            }
        }
        Ok(())
    }

    /// Connects and reads the fleet's layer; merged with `local` (when a
    /// base says how), it becomes this replica's.
    async fn first_read(
        &mut self,
        local: &PersistedState,
    ) -> Result<PersistedState, etcd_client::Error> {
        self.client = Some(self.connect().await?);
        self.read_all().await?;
        let fleet: BTreeMap<String, ServiceState> = self
            .known
            .iter()
            .map(|(name, known)| (name.clone(), known.value.clone()))
            .collect();
        let services = if self.synced {
            start_layer(&self.seen, &local.services, &fleet)
        } else {
            fleet.clone()
        };
        // The start layer took all of the fleet in; where it differs, the
        // task writes it back.
        self.seen = Arc::new(fleet);
        self.synced = true;
        self.publish_base();
        self.connected.store(true, Ordering::Relaxed);
        tracing::info!(
            endpoints = %self.settings.endpoints.join(", "),
            "connected to etcd: this replica follows the fleet's run-time state"
        );
        Ok(PersistedState {
            services,
            ..PersistedState::default()
        })
    }

    fn publish_base(&self) {
        let base = self.synced.then(|| Arc::clone(&self.seen));
        self.base.send_if_modified(|published| {
            let same = match (published.as_ref(), base.as_ref()) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if !same {
                *published = base;
            }
            !same
        });
    }

    async fn run(mut self) {
        let mut backoff = RETRY_MIN;
        loop {
            let stepped = self.step().await;
            self.publish_base();
            match stepped {
                Ok(true) => backoff = RETRY_MIN,
                // The store was dropped: nothing more to keep in step.
                Ok(false) => return,
                Err(e) => {
                    if self.connected.swap(false, Ordering::Relaxed) {
                        tracing::warn!(
                            error = %e,
                            "lost etcd: serving from the last fleet state; decisions made here \
                             are kept and written when etcd answers"
                        );
                    }
                    self.client = None;
                    self.watch = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// One turn: (re)connect if needed, write what differs, then wait for a
    /// local change or a sibling's. `false` when the store is gone.
    async fn step(&mut self) -> Result<bool, etcd_client::Error> {
        if self.client.is_none() {
            self.client = Some(self.connect().await?);
        }
        if self.watch.is_none() {
            self.read_all().await?;
            let from = self.known_revision + 1;
            let prefix = self.state_prefix();
            let stream = self
                .client()?
                .watch(
                    prefix,
                    Some(WatchOptions::new().with_prefix().with_start_revision(from)),
                )
                .await?;
            self.watch = Some(stream);
            if !self.connected.swap(true, Ordering::Relaxed) {
                tracing::info!(
                    endpoints = %self.settings.endpoints.join(", "),
                    "connected to etcd: this replica follows the fleet's run-time state"
                );
            }
        }
        self.write_differences().await?;
        self.publish_base();
        let Some(watch) = self.watch.as_mut() else {
            return Ok(true);
        };
        tokio::select! {
            changed = self.desired.changed() => {
                if changed.is_err() {
                    return Ok(false);
                }
            }
            message = watch.message() => {
                match message? {
                    Some(response) if response.canceled() || response.compact_revision() > 0 => {
                        // History the watch needed was compacted: read it all again.
                        self.watch = None;
                    }
                    Some(response) => {
                        let prefix = self.state_prefix();
                        let mut changed = Vec::new();
                        for event in response.events() {
                            let Some(kv) = event.kv() else { continue };
                            let Some(service) = kv.key_str().ok().and_then(|k| k.strip_prefix(&prefix)) else {
                                continue;
                            };
                            let remote = match event.event_type() {
                                EventType::Delete => None,
                                EventType::Put => match parse(kv.key(), kv.value()) {
                                    Some(value) => Some(value),
                                    None => continue,
                                },
                            };
                            changed.push((service.to_string(), remote, kv.mod_revision()));
                        }
                        tracing::debug!(events = changed.len(), "fleet sync: watch");
                        for (service, remote, mod_revision) in changed {
                            self.remote_changed(service, remote, mod_revision);
                        }
                    }
                    None => self.watch = None,
                }
            }
        }
        Ok(true)
    }

    /// A sibling wrote `service`.
    fn remote_changed(&mut self, service: String, remote: Option<ServiceState>, mod_revision: i64) {
        if self
            .known
            .get(&service)
            .is_some_and(|k| k.mod_revision >= mod_revision)
        {
            return; // Our own write, already known.
        }
        match remote {
            Some(value) => {
                self.known.insert(
                    service.clone(),
                    Known {
                        value,
                        mod_revision,
                    },
                );
            }
            None => {
                self.known.remove(&service);
            }
        }
        let desired = Arc::clone(&self.desired.borrow());
        self.target(&service, &desired);
    }

    /// What `service` should hold in the fleet, given what this replica holds
    /// (`local`) and what the fleet holds; hands the result to the control
    /// plane when it differs from `local`.
    fn target(&mut self, service: &str, desired: &PersistedState) -> Option<ServiceState> {
        let local = desired.services.get(service);
        if let Some((remote, number)) = self.announced.get(service) {
            if desired.remote_applied >= *number {
                // The save holds the merge: the fleet value it took in is
                // the base from now on.
                self.seen_set(service, remote.clone());
                self.announced.remove(service);
            } else {
                // The control plane has not taken the merge in yet; it will
                // come back in a later save.
                return self.known.get(service).map(|k| k.value.clone());
            }
        }
        let empty = ServiceState::default();
        let remote = self.known.get(service).map(|k| &k.value);
        if self.refused.contains(service) && local.map(|l| &l.rollout) == remote.map(|r| &r.rollout)
        {
            // The control plane took the fleet's rollout in.
            self.refused.remove(service);
        }
        let seen = self.seen.get(service);
        let base = self.synced.then_some(seen.unwrap_or(&empty));
        let target = match (local, remote) {
            (local, remote) if self.synced && remote == seen => local.cloned(),
            (Some(local), Some(remote)) => Some(merge(base, local, remote)),
            // New in the fleet, or changed there after this replica dropped
            // it: the fleet's stands.
            (None, Some(remote)) => Some(remote.clone()),
            // Deleted in the fleet; kept only if changed here since.
            (Some(local), None) => (!self.synced || seen != Some(local)).then(|| local.clone()),
            (None, None) => None,
        };
        let target = match target {
            // This replica's rollout move was refused (it had lost the
            // lead): the fleet's rollout stands, the rest goes on.
            Some(mut target) if self.refused.contains(service) => {
                target.rollout = remote.and_then(|r| r.rollout.clone());
                Some(target)
            }
            target => target,
        };
        if target.as_ref() != local {
            tracing::debug!(service, "fleet sync: change to the control plane");
            let _ = self.changes.send(RemoteChange {
                service: service.to_string(),
                state: target.clone(),
                merged_with: local.cloned(),
            });
            self.sent += 1;
            self.announced
                .insert(service.to_string(), (remote.cloned(), self.sent));
        }
        target
    }

    fn seen_set(&mut self, service: &str, value: Option<ServiceState>) {
        if self.seen.get(service) == value.as_ref() {
            return;
        }
        let seen = Arc::make_mut(&mut self.seen);
        match value {
            Some(value) => {
                seen.insert(service.to_string(), value);
            }
            None => {
                seen.remove(service);
            }
        }
    }

    /// Everything saved is in etcd: a lead held no longer fences later
    /// writes (a former leader's operator commands are no leader's moves).
    fn fence_done(&mut self) {
        let leading = self.leadership.get().and_then(Leadership::term);
        if leading.is_none() && self.fence.load().is_some() {
            self.fence.store(None);
        }
    }

    /// Writes every service whose target differs from what etcd holds, in one
    /// transaction guarded by each key's `mod_revision`.
    async fn write_differences(&mut self) -> Result<(), etcd_client::Error> {
        for _ in 0..CAS_ATTEMPTS {
            let desired = Arc::clone(&self.desired.borrow_and_update());
            let names: std::collections::BTreeSet<String> = desired
                .services
                .keys()
                .chain(self.known.keys())
                .cloned()
                .collect();
            let mut compares = Vec::new();
            let mut writes = Vec::new();
            let mut reads = Vec::new();
            let mut written: Vec<(String, Option<ServiceState>)> = Vec::new();
            let term = self.fence.load_full();
            let mut fenced = Vec::new();
            for service in names {
                let local = desired.services.get(&service);
                let target = self.target(&service, &desired);
                let known = self.known.get(&service);
                if known.map(|k| &k.value) == target.as_ref() {
                    if target.as_ref() == local {
                        self.seen_set(&service, target);
                    }
                    continue;
                }
                tracing::trace!(
                    service = service.as_str(),
                    known = ?known.map(|k| &k.value),
                    target = ?target,
                    "fleet sync: differs"
                );
                let key = self.key(&service);
                if term.is_some()
                    && leader_move(
                        known.and_then(|k| k.value.rollout.as_ref()),
                        target.as_ref().and_then(|t| t.rollout.as_ref()),
                    )
                {
                    fenced.push(service.clone());
                }
                compares.push(Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    known.map_or(0, |k| k.mod_revision),
                ));
                match &target {
                    Some(state) => {
                        let json = serde_json::to_vec(state).map_err(|e| {
                            etcd_client::Error::InvalidArgs(format!(
                                "cannot encode the state of `{service}`: {e}"
                            ))
                        })?;
                        writes.push(TxnOp::put(key.clone(), json, None));
                    }
                    None => writes.push(TxnOp::delete(key.clone(), None)),
                }
                reads.push(TxnOp::get(key, None));
                written.push((service, target));
            }
            if writes.is_empty() {
                self.synced = true;
                self.fence_done();
                return Ok(());
            }
            let fence = term.filter(|_| !fenced.is_empty());
            if let Some(term) = &fence {
                // The leader's own moves: applied only while the leader key
                // is still bound to the lease they were made under.
                compares.push(Compare::lease(
                    term.key.clone(),
                    CompareOp::Equal,
                    term.lease,
                ));
                reads.push(TxnOp::get(term.key.clone(), None));
            }
            tracing::debug!(services = written.len(), "fleet sync: writing");
            let response = self
                .client()?
                .txn(Txn::new().when(compares).and_then(writes).or_else(reads))
                .await?;
            tracing::debug!(succeeded = response.succeeded(), "fleet sync: written");
            if response.succeeded() {
                let revision = response.header().map_or(0, |h| h.revision());
                for (service, state) in written {
                    let local = desired.services.get(&service);
                    if state.as_ref() == local {
                        self.seen_set(&service, state.clone());
                    }
                    match state {
                        Some(value) => {
                            self.known.insert(
                                service,
                                Known {
                                    value,
                                    mod_revision: revision,
                                },
                            );
                        }
                        None => {
                            self.known.remove(&service);
                        }
                    }
                }
                self.synced = true;
                self.fence_done();
                return Ok(());
            }
            let replies = response.op_responses();
            if let Some(term) = &fence {
                let holder = match replies.last() {
                    Some(TxnOpResponse::Get(get)) => get.kvs().first().map(|kv| kv.lease()),
                    _ => None,
                };
                if holder != Some(term.lease) {
                    tracing::warn!(
                        services = %fenced.join(", "),
                        "fleet: etcd refused a rollout move this replica made as the leader, \
                         because it no longer leads; the fleet's rollout stands"
                    );
                    self.refused.extend(fenced);
                    self.fence.store(None);
                    if let Some(leadership) = self.leadership.get() {
                        leadership.deposed(term);
                    }
                }
            }
            // A sibling wrote first: what it wrote becomes `known`, and the
            // next attempt merges with it.
            for (reply, (service, _)) in replies.into_iter().zip(&written) {
                let TxnOpResponse::Get(get) = reply else {
                    continue;
                };
                match get.kvs().first() {
                    Some(kv) => {
                        if let Some(value) = parse(kv.key(), kv.value()) {
                            self.known.insert(
                                service.clone(),
                                Known {
                                    value,
                                    mod_revision: kv.mod_revision(),
                                },
                            );
                        }
                    }
                    None => {
                        self.known.remove(service);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether going from the fleet's rollout (`known`) to `target` is what
/// only the leader does: more hold time, a later step, completion.
fn leader_move(known: Option<&RolloutProgress>, target: Option<&RolloutProgress>) -> bool {
    let (Some(known), Some(target)) = (known, target) else {
        return false;
    };
    if (&known.candidate, &known.revision) != (&target.candidate, &target.revision) {
        return false;
    }
    target.step > known.step
        || (target.step == known.step && target.held_ms > known.held_ms)
        || (known.outcome == RolloutOutcome::InProgress
            && target.outcome == RolloutOutcome::Completed)
}

/// The layer a replica starts from when it kept a base: per service, what
/// the sync task's `target` would make of its cache (`local`) and the fleet's
/// (`fleet`), three ways against `base`.
fn start_layer(
    base: &BTreeMap<String, ServiceState>,
    local: &BTreeMap<String, ServiceState>,
    fleet: &BTreeMap<String, ServiceState>,
) -> BTreeMap<String, ServiceState> {
    let empty = ServiceState::default();
    let names: std::collections::BTreeSet<&String> = local.keys().chain(fleet.keys()).collect();
    names
        .into_iter()
        .filter_map(|name| {
            let (seen, local, remote) = (base.get(name), local.get(name), fleet.get(name));
            let state = match (local, remote) {
                (local, remote) if remote == seen => local.cloned(),
                (Some(local), Some(remote)) => {
                    Some(merge(Some(seen.unwrap_or(&empty)), local, remote))
                }
                (None, Some(remote)) => Some(remote.clone()),
                // Deleted in the fleet; kept only if changed here since.
                (Some(local), None) => (seen != Some(local)).then(|| local.clone()),
                (None, None) => None,
            };
            state.map(|s| (name.clone(), s))
        })
        .collect()
}

/// A client for `settings`: its credentials and TLS, every request bounded
/// by its timeout, on one endpoint that answers. With several endpoints,
/// each connect starts at the next one and takes the first that answers a
/// read under the prefix: a client balanced over every endpoint keeps
/// sending some requests to a member that is down, so a replica would flap
/// between connected and not for as long as the member stays down.
pub async fn connect(settings: &EtcdSettings) -> Result<Client, etcd_client::Error> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let count = settings.endpoints.len();
    if count <= 1 {
        return connect_to(settings, &settings.endpoints).await;
    }
    let start = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut last = None;
    for i in 0..count {
        let endpoint = &settings.endpoints[(start + i) % count];
        let probe = async {
            let mut client = connect_to(settings, std::slice::from_ref(endpoint)).await?;
            client
                .get(
                    format!("{}/", settings.prefix),
                    Some(GetOptions::new().with_keys_only().with_limit(1)),
                )
                .await?;
            Ok::<Client, etcd_client::Error>(client)
        };
        match tokio::time::timeout(settings.timeout, probe).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(etcd_client::Error::InvalidArgs(format!(
                    "{endpoint} did not answer within {:?}",
                    settings.timeout
                )))
            }
        }
    }
    Err(last.unwrap_or_else(|| etcd_client::Error::InvalidArgs("no etcd endpoint".into())))
}

async fn connect_to(
    settings: &EtcdSettings,
    endpoints: &[String],
) -> Result<Client, etcd_client::Error> {
    let mut options = ConnectOptions::new()
        .with_timeout(settings.timeout)
        .with_connect_timeout(settings.timeout)
        .with_keep_alive(Duration::from_secs(5), settings.timeout);
    if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
        options = options.with_user(user.clone(), password.clone());
    }
    if let Some(tls) = &settings.tls {
        options = options.with_tls(tls_options(tls)?);
    }
    Client::connect(endpoints, Some(options)).await
}

/// A service's layer as etcd holds it; a value veer cannot read is logged and
/// skipped, never fatal.
fn parse(key: &[u8], value: &[u8]) -> Option<ServiceState> {
    match serde_json::from_slice::<ServiceState>(value) {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::warn!(
                key = %String::from_utf8_lossy(key),
                error = %e,
                "etcd holds a value veer cannot read; ignored (fix or delete the key)"
            );
            None
        }
    }
}

fn tls_options(tls: &EtcdTls) -> Result<etcd_client::TlsOptions, etcd_client::Error> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| {
            etcd_client::Error::InvalidArgs(format!("cannot read {}: {e}", path.display()))
        })
    };
    let mut options = etcd_client::TlsOptions::new();
    if let Some(ca) = &tls.ca {
        options = options.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        options = options.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Latch;

    fn latched(version: &str) -> ServiceState {
        ServiceState {
            latches: vec![Latch {
                version: version.into(),
                revision: "2".into(),
                reason: "error_rate".into(),
                at_unix_ms: 1,
                id: 0,
            }],
            ..ServiceState::default()
        }
    }

    fn layer(pairs: &[(&str, ServiceState)]) -> BTreeMap<String, ServiceState> {
        pairs
            .iter()
            .map(|(name, state)| (name.to_string(), state.clone()))
            .collect()
    }

    #[test]
    fn a_restarted_replica_keeps_what_the_fleet_removed_removed_and_its_own_news() {
        // When it went down, the fleet and the replica both held a latch on
        // `web`; meanwhile an operator resumed it in the fleet. The replica
        // had also tripped `shop` on its own while etcd was away.
        let base = layer(&[("web", latched("canary"))]);
        let local = layer(&[("web", latched("canary")), ("shop", latched("beta"))]);
        let fleet = layer(&[("web", ServiceState::default())]);
        let start = start_layer(&base, &local, &fleet);
        assert_eq!(start["web"], ServiceState::default(), "the resume holds");
        assert_eq!(start["shop"], latched("beta"), "its own trip is kept");
    }

    #[test]
    fn a_service_the_fleet_dropped_goes_unless_changed_here_since() {
        let base = layer(&[("a", latched("x")), ("b", latched("y"))]);
        let local = layer(&[("a", latched("x")), ("b", latched("z"))]);
        let start = start_layer(&base, &local, &BTreeMap::new());
        assert!(!start.contains_key("a"));
        assert_eq!(start["b"], latched("z"));
    }
}
