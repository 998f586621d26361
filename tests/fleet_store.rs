//! The fleet store against a real etcd on loopback: what one replica writes
//! reaches the others, concurrent changes merge without losing a latch, and
//! etcd being away never loses a decision. Needs etcd (Debian's
//! `etcd-server`) and `protoc`: `cargo test --features fleet --test fleet_store`.
#![cfg(feature = "fleet")]

mod support;

use std::time::Duration;

use std::sync::Arc;
use support::etcd::Etcd;

use veer::fleet::etcd::{EtcdSettings, EtcdStore};
use veer::state::Changes;
use veer::state::{Latch, PersistedState, ServiceState};

fn settings(endpoints: Vec<String>, prefix: &str) -> EtcdSettings {
    EtcdSettings {
        endpoints,
        prefix: prefix.to_string(),
        username: None,
        password: None,
        tls: None,
        timeout: Duration::from_secs(2),
    }
}

/// A replica with an empty cache joining the fleet on `etcd` under `prefix`.
async fn join(etcd: &Etcd, prefix: &str) -> Replica {
    let (replica, _) = Replica::open(
        settings(vec![etcd.endpoint()], prefix),
        PersistedState::default(),
    )
    .await;
    replica
}

fn latch(version: &str, revision: &str) -> Latch {
    Latch {
        version: version.into(),
        revision: revision.into(),
        reason: "error_rate".into(),
        at_unix_ms: 1,
        id: 0,
    }
}

/// What the control plane does with the store, reduced to the layer: it
/// applies siblings' changes (as the control task's `adopt` does) and saves
/// after every change of its own.
struct Replica {
    layer: PersistedState,
    store: EtcdStore,
    changes: Changes,
}

impl Replica {
    async fn open(settings: EtcdSettings, cache: PersistedState) -> (Replica, Option<String>) {
        let mut opened = EtcdStore::open(settings, cache.clone()).await;
        let changes = opened.store.changes().expect("first call");
        let layer = opened.fleet.clone().unwrap_or(cache);
        (
            Replica {
                layer,
                store: opened.store,
                changes,
            },
            opened.warning,
        )
    }

    fn change(&mut self, service: &str, edit: impl FnOnce(&mut ServiceState)) {
        edit(self.layer.services.entry(service.to_string()).or_default());
        self.store.save(Arc::new(self.layer.clone()));
    }

    /// Takes in what siblings wrote until `cond` holds of the layer.
    async fn until(&mut self, what: &str, cond: impl Fn(&PersistedState) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !cond(&self.layer) {
            let change = tokio::time::timeout_at(deadline, self.changes.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}; layer: {:?}", self.layer))
                .expect("store task alive");
            let ours = self.layer.services.get(&change.service);
            match veer::fleet::merge::rebase(change.merged_with.as_ref(), ours, change.state) {
                Some(state) => {
                    self.layer.services.insert(change.service, state);
                }
                None => {
                    self.layer.services.remove(&change.service);
                }
            }
            self.layer.remote_applied += 1;
            self.store.save(Arc::new(self.layer.clone()));
        }
    }
}

fn latched(layer: &PersistedState, service: &str, version: &str) -> bool {
    layer
        .services
        .get(service)
        .is_some_and(|s| s.latches.iter().any(|l| l.version == version))
}

#[tokio::test]
async fn a_latch_written_by_one_replica_reaches_the_other() {
    let etcd = Etcd::start();
    let prefix = "/veer/test-a";
    let (mut a, warning) = Replica::open(
        settings(vec![etcd.endpoint()], prefix),
        PersistedState::default(),
    )
    .await;
    assert_eq!(warning, None);
    assert!(a.store.connected());
    let mut b = join(&etcd, prefix).await;
    a.change("shop", |s| s.latches.push(latch("canary", "v2")));
    b.until("the latch from a", |l| latched(l, "shop", "canary"))
        .await;

    // A third replica with an empty cache starts from the fleet's layer.
    let c = join(&etcd, prefix).await;
    assert!(latched(&c.layer, "shop", "canary"), "{:?}", c.layer);
}

#[tokio::test]
async fn concurrent_trips_on_two_replicas_keep_both_latches() {
    let etcd = Etcd::start();
    let prefix = "/veer/test-b";
    let mut a = join(&etcd, prefix).await;
    let mut b = join(&etcd, prefix).await;
    // Both change the same service before either hears of the other.
    a.change("shop", |s| s.latches.push(latch("canary", "v2")));
    b.change("shop", |s| s.latches.push(latch("beta", "b7")));
    let both = |l: &PersistedState| latched(l, "shop", "canary") && latched(l, "shop", "beta");
    a.until("both latches on a", both).await;
    b.until("both latches on b", both).await;
    // And etcd holds both: a fresh replica reads them.
    let fresh = join(&etcd, prefix).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut fresh = fresh;
    while !both(&fresh.layer) && tokio::time::Instant::now() < deadline {
        drop(fresh);
        tokio::time::sleep(Duration::from_millis(50)).await;
        fresh = join(&etcd, prefix).await;
    }
    assert!(both(&fresh.layer), "{:?}", fresh.layer);
}

#[tokio::test]
async fn a_resume_on_one_replica_clears_the_latch_everywhere() {
    let etcd = Etcd::start();
    let prefix = "/veer/test-c";
    let mut a = join(&etcd, prefix).await;
    let mut b = join(&etcd, prefix).await;
    a.change("shop", |s| s.latches.push(latch("canary", "v2")));
    b.until("the latch", |l| latched(l, "shop", "canary")).await;
    b.change("shop", |s| s.latches.clear());
    a.until("the resume", |l| !latched(l, "shop", "canary"))
        .await;
}

#[tokio::test]
async fn etcd_away_at_start_serves_the_cache_and_writes_it_when_etcd_comes() {
    let mut etcd = Etcd::start();
    let endpoint = etcd.endpoint();
    let prefix = "/veer/test-d";
    // A sibling's latch is in the fleet before etcd goes away.
    let (mut sibling, _) = Replica::open(
        settings(vec![endpoint.clone()], prefix),
        PersistedState::default(),
    )
    .await;
    sibling.change("shop", |s| s.latches.push(latch("beta", "b7")));
    sibling.until("the write to land", |_| true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.kill();

    let mut cache = PersistedState::default();
    cache
        .services
        .entry("shop".into())
        .or_default()
        .latches
        .push(latch("canary", "v2"));
    let (mut away, warning) = Replica::open(settings(vec![endpoint.clone()], prefix), cache).await;
    let warning = warning.expect("a warning when etcd is away");
    assert!(
        warning.contains("local copy of the fleet state"),
        "{warning}"
    );
    assert!(!away.store.connected());
    assert!(
        latched(&away.layer, "shop", "canary"),
        "serves from its cache"
    );

    etcd.restart();
    // The cached latch and the sibling's both survive the reunion.
    away.until("the sibling's latch", |l| latched(l, "shop", "beta"))
        .await;
    assert!(latched(&away.layer, "shop", "canary"));
    sibling
        .until("the cached latch", |l| latched(l, "shop", "canary"))
        .await;
    assert!(away.store.connected());
}

#[tokio::test]
async fn a_trip_while_etcd_is_down_is_written_when_it_returns() {
    let mut etcd = Etcd::start();
    let prefix = "/veer/test-e";
    let mut a = join(&etcd, prefix).await;
    let mut b = join(&etcd, prefix).await;
    etcd.kill();
    a.change("shop", |s| s.latches.push(latch("canary", "v2")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.restart();
    b.until("the latch decided while etcd was down", |l| {
        latched(l, "shop", "canary")
    })
    .await;
}

#[tokio::test]
async fn a_value_veer_cannot_read_is_ignored_and_keys_outside_the_prefix_untouched() {
    let etcd = Etcd::start();
    let prefix = "/veer/test-f";
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("etcd answers");
    raw.put(format!("{prefix}/state/broken"), "{not json", None)
        .await
        .expect("etcd answers");
    raw.put("/other/app/key", "theirs", None)
        .await
        .expect("etcd answers");
    let (mut a, warning) = Replica::open(
        settings(vec![etcd.endpoint()], prefix),
        PersistedState::default(),
    )
    .await;
    assert_eq!(warning, None);
    assert!(!a.layer.services.contains_key("broken"));
    let mut b = join(&etcd, prefix).await;
    raw.put(format!("{prefix}/state/shop"), "[1,2", None)
        .await
        .expect("etcd answers");
    a.change("cart", |s| s.latches.push(latch("canary", "v2")));
    b.until("a good write after a bad one", |l| {
        latched(l, "cart", "canary")
    })
    .await;
    let other = raw.get("/other/app/key", None).await.expect("etcd answers");
    assert_eq!(other.kvs()[0].value(), b"theirs");
    let broken = raw
        .get(format!("{prefix}/state/broken"), None)
        .await
        .expect("etcd answers");
    assert_eq!(
        broken.kvs()[0].value(),
        b"{not json",
        "veer never rewrites what it cannot read"
    );
}
