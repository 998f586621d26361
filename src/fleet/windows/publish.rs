//! The task that keeps this replica's windows in etcd and its siblings' in
//! the [`FleetView`]: one lease (kept alive every third of its TTL), one
//! presence key, one transaction per guard interval holding the windows
//! that changed, and one watch on the siblings' keys.
//!
//! It reads the snapshot and the windows as the guard does; it never holds
//! anything the request path waits on. While etcd is away it retries with a
//! back-off; the siblings' figures it last read are dropped then (they could
//! be of replicas long dead), so the guard judges on this replica's alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{lease_ttl, read_key, FleetKey, FleetView, Published, PublishedVersion, Siblings};
use crate::fleet::etcd::{connect, EtcdSettings};
use crate::snapshot::Snapshot;
use crate::telemetry::Telemetry;

/// How often windows are published when no service has a guard.
const DEFAULT_PERIOD: Duration = Duration::from_secs(1);
/// Never more often than this, whatever a guard's interval.
const MIN_PERIOD: Duration = Duration::from_millis(100);
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// etcd refuses a transaction of more operations than its `--max-txn-ops`
/// (128 by default): the windows go in chunks below it.
const TXN_OPS: usize = 100;
/// Earlier leases remembered as this replica's own.
const RETIRED: usize = 8;

pub struct Publisher {
    settings: EtcdSettings,
    view: Arc<FleetView>,
    published: Arc<ArcSwap<Snapshot>>,
    telemetry: Arc<Telemetry>,
    /// What this replica's keys hold now, by service: skip a write that
    /// would change nothing.
    written: BTreeMap<String, Vec<u8>>,
    /// Siblings as read, kept whole here and handed to the view per change.
    siblings: Siblings,
    /// The duplicate-name warning was logged (once per name conflict).
    warned_duplicate: bool,
    /// Leases of this replica's earlier sessions, newest last.
    retired: Vec<i64>,
}

impl Publisher {
    pub fn new(
        settings: EtcdSettings,
        view: Arc<FleetView>,
        published: Arc<ArcSwap<Snapshot>>,
        telemetry: Arc<Telemetry>,
    ) -> Publisher {
        Publisher {
            settings,
            view,
            published,
            telemetry,
            written: BTreeMap::new(),
            siblings: Siblings::default(),
            warned_duplicate: false,
            retired: Vec::new(),
        }
    }

    /// Publishes until `stop` changes; then revokes the lease, so this
    /// replica's figures leave the fleet's sum at once rather than at the
    /// lease's end.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = RETRY_MIN;
        let mut lease = None;
        loop {
            let session = tokio::select! {
                result = self.session(&mut lease) => result,
                _ = stop.changed() => break,
            };
            if let Err(e) = session {
                tracing::debug!(error = %e, "fleet windows: etcd away; retrying");
                self.forget_siblings();
                self.written.clear();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(RETRY_MAX);
            } else {
                backoff = RETRY_MIN;
            }
        }
        if let Some((mut client, id)) = lease {
            let _ = tokio::time::timeout(self.settings.timeout, client.lease_revoke(id)).await;
        }
    }

    fn prefix(&self) -> &str {
        &self.settings.prefix
    }

    fn presence_key(&self) -> String {
        format!("{}/replicas/{}", self.prefix(), self.view.replica())
    }

    fn window_key(&self, service: &str) -> String {
        format!(
            "{}/windows/{service}/{}",
            self.prefix(),
            self.view.replica()
        )
    }

    /// The shortest guard interval of the services now configured.
    fn period(snapshot: &Snapshot) -> Duration {
        snapshot
            .services
            .iter()
            .filter_map(|s| s.guard.as_ref().map(|g| g.interval))
            .min()
            .unwrap_or(DEFAULT_PERIOD)
            .max(MIN_PERIOD)
    }

    /// One connection's life: a lease, the presence, the siblings read and
    /// watched, the windows published every period. Returns only on error.
    async fn session(
        &mut self,
        lease: &mut Option<(Client, i64)>,
    ) -> Result<(), etcd_client::Error> {
        let mut client = connect(&self.settings).await?;
        if let Some((_, previous)) = lease.take() {
            // The last session's lease may outlive it (the error was this
            // side's): revoke it so its keys go, and own its presence key
            // if they have not gone yet.
            let _ = client.lease_revoke(previous).await;
            if self.retired.len() == RETIRED {
                self.retired.remove(0);
            }
            self.retired.push(previous);
        }
        let mut period = Self::period(&self.published.load());
        let ttl = lease_ttl(period);
        let id = client
            .lease_grant(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX), None)
            .await?
            .id();
        *lease = Some((client.clone(), id));
        let (mut keeper, mut kept) = client.lease_keep_alive(id).await?;
        let mut claimed = self.claim(&mut client, id).await?;

        // Everything from `replicas/` to `windows/` (the state keys between
        // are skipped when read).
        let from = format!("{}/replicas/", self.prefix());
        let to = format!("{}/windows0", self.prefix());
        let all = client
            .get(from.clone(), Some(GetOptions::new().with_range(to.clone())))
            .await?;
        let revision = all.header().map_or(0, |h| h.revision());
        self.siblings = Siblings::default();
        for kv in all.kvs() {
            self.apply_put(kv);
        }
        self.view.set_siblings(self.siblings.clone());
        self.view.synced_now();
        let mut watch = client
            .watch(
                from,
                Some(
                    WatchOptions::new()
                        .with_range(to)
                        .with_start_revision(revision + 1),
                ),
            )
            .await?;

        let mut keep_alive = tokio::time::interval(ttl / 3);
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {
                    if !claimed {
                        claimed = self.claim(&mut client, id).await?;
                    }
                    if claimed {
                        self.publish(&mut client, id).await?;
                        self.view.synced_now();
                    }
                    let now_period = Self::period(&self.published.load());
                    if now_period != period && lease_ttl(now_period) > ttl {
                        // A reload made the intervals longer than the lease
                        // allows for: start again with a longer lease.
                        return Err(etcd_client::Error::InvalidArgs(
                            "guard interval changed; renewing the lease".into(),
                        ));
                    }
                    period = now_period;
                    next = Instant::now() + period;
                }
                _ = keep_alive.tick() => {
                    keeper.keep_alive().await?;
                }
                message = kept.message() => {
                    match message? {
                        Some(reply) if reply.ttl() > 0 => {}
                        _ => {
                            // The lease ended (etcd was away longer than its
                            // TTL): this replica's keys are gone; start over.
                            return Err(etcd_client::Error::InvalidArgs(
                                "the fleet lease expired".into(),
                            ));
                        }
                    }
                }
                message = watch.message() => {
                    let Some(reply) = message? else {
                        return Err(etcd_client::Error::InvalidArgs("the watch ended".into()));
                    };
                    if reply.canceled() || reply.compact_revision() > 0 {
                        return Err(etcd_client::Error::InvalidArgs(
                            "the watch was cancelled; reading again".into(),
                        ));
                    }
                    for event in reply.events() {
                        let Some(kv) = event.kv() else { continue };
                        match event.event_type() {
                            EventType::Put => self.apply_put(kv),
                            EventType::Delete => self.apply_delete(kv),
                        }
                    }
                    self.view.set_siblings(self.siblings.clone());
                    self.view.synced_now();
                }
            }
        }
    }

    /// Puts the presence key unless a live replica of the same name holds
    /// it: two replicas under one name would each count the other's traffic
    /// as their own, so this one publishes nothing until the name is free.
    async fn claim(&mut self, client: &mut Client, lease: i64) -> Result<bool, etcd_client::Error> {
        let key = self.presence_key();
        let value =
            serde_json::json!({ "pid": std::process::id(), "version": env!("CARGO_PKG_VERSION") })
                .to_string();
        let put = TxnOp::put(
            key.clone(),
            value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        );
        let reply = client
            .txn(
                Txn::new()
                    .when(vec![Compare::create_revision(
                        key.clone(),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then(vec![put.clone()])
                    .or_else(vec![TxnOp::get(key.clone(), None)]),
            )
            .await?;
        if reply.succeeded() {
            self.warned_duplicate = false;
            return Ok(true);
        }
        // Held already: by this replica's lease, one of its earlier ones
        // (a session that ended on this side), or another replica's.
        let holder = reply.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(get) => get.kvs().first().map(KeyValue::lease),
            _ => None,
        });
        match holder {
            Some(holder) if holder == lease => return Ok(true),
            Some(holder) if self.retired.contains(&holder) => {
                client
                    .put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await?;
                self.warned_duplicate = false;
                return Ok(true);
            }
            // Gone between the two reads: try again next period.
            None => return Ok(false),
            Some(_) => {}
        }
        if !self.warned_duplicate {
            self.warned_duplicate = true;
            tracing::warn!(
                replica = self.view.replica(),
                key = %key,
                "fleet: another live replica has this name; this one publishes no figures until \
                 the name is free (a replica restarted within its lease waits a few seconds; \
                 otherwise give each replica its own `fleet.replica`)"
            );
        }
        Ok(false)
    }

    /// Writes the windows that changed since the last write, and deletes the
    /// keys of services left with nothing in their window.
    async fn publish(&mut self, client: &mut Client, lease: i64) -> Result<(), etcd_client::Error> {
        let snapshot = self.published.load_full();
        let elapsed = self.telemetry.elapsed(Instant::now());
        let mut ops = Vec::new();
        let mut changed: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        let mut present = std::collections::BTreeSet::new();
        for service in &snapshot.services {
            present.insert(&*service.name);
            let mut versions = BTreeMap::new();
            for version in &service.versions {
                let counts = version.stats.window().counts(elapsed, service.window);
                if counts.requests > 0 {
                    versions.insert(
                        version.name.to_string(),
                        PublishedVersion::from_counts(&version.revision, &counts),
                    );
                }
            }
            let name = service.name.to_string();
            if versions.is_empty() {
                if self.written.contains_key(&name) {
                    ops.push(TxnOp::delete(self.window_key(&name), None));
                    changed.push((name, None));
                }
                continue;
            }
            let value = Published {
                window_ms: u64::try_from(service.window.as_millis()).unwrap_or(u64::MAX),
                versions,
            };
            let bytes = serde_json::to_vec(&value).map_err(|e| {
                etcd_client::Error::InvalidArgs(format!(
                    "cannot encode the windows of `{name}`: {e}"
                ))
            })?;
            if self.written.get(&name) == Some(&bytes) {
                continue;
            }
            ops.push(TxnOp::put(
                self.window_key(&name),
                bytes.clone(),
                Some(PutOptions::new().with_lease(lease)),
            ));
            changed.push((name, Some(bytes)));
        }
        // Services removed from the config: their keys go too.
        let gone: Vec<String> = self
            .written
            .keys()
            .filter(|s| !present.contains(s.as_str()))
            .cloned()
            .collect();
        for name in gone {
            ops.push(TxnOp::delete(self.window_key(&name), None));
            changed.push((name, None));
        }
        for chunk in ops.chunks(TXN_OPS) {
            client.txn(Txn::new().and_then(chunk.to_vec())).await?;
        }
        for (name, bytes) in changed {
            match bytes {
                Some(bytes) => {
                    self.written.insert(name, bytes);
                }
                None => {
                    self.written.remove(&name);
                }
            }
        }
        Ok(())
    }

    fn relative<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(key)
            .ok()?
            .strip_prefix(self.prefix())?
            .strip_prefix('/')
    }

    fn apply_put(&mut self, kv: &KeyValue) {
        let Some(relative) = self.relative(kv.key()) else {
            return;
        };
        match read_key(relative) {
            FleetKey::Replica(replica) => {
                self.siblings.replicas.insert(replica.to_string());
            }
            FleetKey::Window { service, replica } if replica != self.view.replica() => {
                match serde_json::from_slice::<Published>(kv.value()) {
                    Ok(published) => {
                        self.siblings
                            .windows
                            .entry(service.to_string())
                            .or_default()
                            .insert(replica.to_string(), Arc::new(published));
                    }
                    Err(e) => {
                        // Dropped from the sum: a value that cannot be read
                        // is no figure to judge on.
                        self.remove_window(service, replica);
                        tracing::warn!(
                            key = %String::from_utf8_lossy(kv.key()),
                            error = %e,
                            "etcd holds a value veer cannot read; ignored (fix or delete the key)"
                        );
                    }
                }
            }
            FleetKey::Window { .. } | FleetKey::Other => {}
        }
    }

    fn apply_delete(&mut self, kv: &KeyValue) {
        let Some(relative) = self.relative(kv.key()) else {
            return;
        };
        match read_key(relative) {
            FleetKey::Replica(replica) => {
                self.siblings.replicas.remove(replica);
            }
            FleetKey::Window { service, replica } => self.remove_window(service, replica),
            FleetKey::Other => {}
        }
    }

    fn remove_window(&mut self, service: &str, replica: &str) {
        if let Some(replicas) = self.siblings.windows.get_mut(service) {
            replicas.remove(replica);
            if replicas.is_empty() {
                self.siblings.windows.remove(service);
            }
        }
    }

    fn forget_siblings(&mut self) {
        if self.siblings != Siblings::default() {
            self.siblings = Siblings::default();
            self.view.set_siblings(Siblings::default());
        }
    }
}
