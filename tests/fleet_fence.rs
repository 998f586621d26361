//! The leader's rollout writes are fenced by its lead, against a real etcd
//! on loopback: a replica that still believes it leads after its lease was
//! revoked (or the leader key taken over) has its hold and step moves
//! refused by etcd, stops leading, and takes the fleet's rollout back;
//! what else it changed (a latch) still lands, and the rollout neither
//! skips nor doubles a step. Needs etcd (Debian's `etcd-server`, and
//! `etcdctl`) and `protoc`: `cargo test --features fleet --test fleet_fence`.
#![cfg(feature = "fleet")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::etcd::Etcd;
use veer::fleet::etcd::{connect, EtcdSettings, EtcdStore};
use veer::fleet::leader::{Leadership, Term};
use veer::state::{Changes, Latch, PersistedState, RolloutOutcome, RolloutProgress, ServiceState};

const LIMIT: Duration = Duration::from_secs(15);

fn settings(etcd: &Etcd, prefix: &str) -> EtcdSettings {
    EtcdSettings {
        endpoints: vec![etcd.endpoint()],
        prefix: prefix.to_string(),
        username: None,
        password: None,
        tls: None,
        timeout: Duration::from_secs(2),
    }
}

fn rollout(step: usize, held_ms: u64) -> RolloutProgress {
    RolloutProgress {
        candidate: "canary".into(),
        revision: "2".into(),
        step,
        step_entered_unix_ms: 1,
        held_ms,
        paused: false,
        pause_reason: None,
        outcome: RolloutOutcome::InProgress,
    }
}

/// The control plane reduced to its layer, as in `fleet_store`.
struct Replica {
    layer: PersistedState,
    store: EtcdStore,
    changes: Changes,
}

impl Replica {
    async fn open(settings: EtcdSettings, leadership: Leadership) -> Replica {
        let mut opened = EtcdStore::open(settings, PersistedState::default()).await;
        assert!(opened.warning.is_none(), "{:?}", opened.warning);
        opened.store.follow_leadership(leadership);
        Replica {
            changes: opened.store.changes().expect("first call"),
            layer: opened.fleet.expect("etcd read"),
            store: opened.store,
        }
    }

    fn change(&mut self, edit: impl FnOnce(&mut ServiceState)) {
        edit(self.layer.services.entry("web".to_string()).or_default());
        self.store.save(Arc::new(self.layer.clone()));
    }

    /// Takes in what the store hands back until `cond` holds of `web`.
    async fn until(&mut self, what: &str, cond: impl Fn(&ServiceState) -> bool) {
        let deadline = tokio::time::Instant::now() + LIMIT;
        while !self.layer.services.get("web").is_some_and(&cond) {
            let change = tokio::time::timeout_at(deadline, self.changes.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} within {LIMIT:?}: {:?}", self.layer))
                .expect("store task alive");
            match change.state {
                Some(state) => self.layer.services.insert(change.service, state),
                None => self.layer.services.remove(&change.service),
            };
            self.layer.remote_applied += 1;
            self.store.save(Arc::new(self.layer.clone()));
        }
    }
}

/// `web`'s layer as etcd holds it.
async fn in_etcd(client: &mut etcd_client::Client, prefix: &str) -> Option<ServiceState> {
    let reply = client
        .get(format!("{prefix}/state/web"), None)
        .await
        .expect("read web's key");
    reply
        .kvs()
        .first()
        .map(|kv| serde_json::from_slice(kv.value()).expect("web's layer parses"))
}

/// Polls etcd until `web` satisfies `cond`; its last value.
async fn etcd_until(
    client: &mut etcd_client::Client,
    prefix: &str,
    what: &str,
    cond: impl Fn(&ServiceState) -> bool,
) -> ServiceState {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let value = in_etcd(client, prefix).await;
        if let Some(value) = value.filter(|v| cond(v)) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "etcd: no {what} within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Takes the lead for `replica` as the campaign does: a lease, and the
/// leader key created under it. A leadership that believes in it for `valid`.
async fn take_lead(
    client: &mut etcd_client::Client,
    prefix: &str,
    replica: &str,
    valid: Duration,
) -> (Leadership, Term) {
    let lease = client.lease_grant(30, None).await.expect("lease").id();
    let key = format!("{prefix}/leader");
    client
        .put(
            key.clone(),
            replica,
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("put the leader key");
    let term = Term { key, lease };
    (Leadership::holding(replica, term.clone(), valid), term)
}

fn latch() -> Latch {
    Latch {
        version: "canary".into(),
        revision: "2".into(),
        reason: "error_rate".into(),
        at_unix_ms: 7,
        id: 0,
    }
}

#[tokio::test]
async fn a_leader_whose_lease_was_revoked_cannot_move_a_step() {
    let etcd = Etcd::start();
    let prefix = "/veer/fence-revoked";
    let mut client = connect(&settings(&etcd, prefix)).await.expect("client");
    let (leadership, term) = take_lead(&mut client, prefix, "r1", Duration::from_secs(60)).await;
    let mut leader = Replica::open(settings(&etcd, prefix), leadership.clone()).await;

    // While it leads, its hold and its step move are written.
    leader.change(|web| web.rollout = Some(rollout(1, 0)));
    leader.change(|web| web.rollout = Some(rollout(1, 2_000)));
    etcd_until(&mut client, prefix, "the leader's hold", |web| {
        web.rollout.as_ref().is_some_and(|r| r.held_ms == 2_000)
    })
    .await;

    // Its lease is revoked (an operator, or etcd expiring it while the
    // replica was stopped); the replica has not noticed: it still leads.
    let revoked = etcd.etcdctl(&["lease", "revoke", &format!("{:x}", term.lease)]);
    assert!(revoked.contains("revoked"), "{revoked}");
    assert!(leadership.is_leader(), "nothing told the replica yet");

    // Its next step move, and a trip in the same layer.
    leader.change(|web| {
        web.rollout = Some(rollout(2, 0));
        web.latches.push(latch());
    });
    // etcd refused the move: the replica takes the fleet's rollout back,
    // and stops leading.
    leader
        .until("the fleet's rollout back", |web| {
            web.rollout.as_ref().is_some_and(|r| r.step == 1)
        })
        .await;
    assert!(!leadership.is_leader(), "a refused leader stops leading");
    assert!(leadership.term().is_none());
    // The latch is no rollout move: it lands all the same.
    let web = etcd_until(&mut client, prefix, "the latch", |web| {
        !web.latches.is_empty()
    })
    .await;
    let progress = web.rollout.expect("the rollout stays");
    assert_eq!(
        (progress.step, progress.held_ms),
        (1, 2_000),
        "step 1 with its hold: the deposed leader moved nothing"
    );
    assert_eq!(web.latches, vec![latch()]);
}

#[tokio::test]
async fn a_leader_whose_key_was_taken_over_cannot_add_hold_and_the_new_leader_moves_once() {
    let etcd = Etcd::start();
    let prefix = "/veer/fence-taken";
    let mut client = connect(&settings(&etcd, prefix)).await.expect("client");
    let (old_lead, _) = take_lead(&mut client, prefix, "r1", Duration::from_secs(60)).await;
    let mut old = Replica::open(settings(&etcd, prefix), old_lead.clone()).await;
    old.change(|web| web.rollout = Some(rollout(1, 1_000)));
    etcd_until(&mut client, prefix, "the first leader's hold", |web| {
        web.rollout.as_ref().is_some_and(|r| r.held_ms == 1_000)
    })
    .await;

    // Another replica's campaign takes the key over under its own lease
    // (its old holder's lease not yet expired, as after a long pause).
    let (new_lead, _) = take_lead(&mut client, prefix, "r2", Duration::from_secs(60)).await;
    let mut new = Replica::open(settings(&etcd, prefix), new_lead.clone()).await;
    assert_eq!(
        new.layer.services["web"].rollout,
        Some(rollout(1, 1_000)),
        "the new leader starts from the hold kept in etcd"
    );

    // The old leader, unaware, adds hold and moves to step 2; the new one
    // moves to step 2 on its own clock.
    old.change(|web| web.rollout = Some(rollout(2, 0)));
    old.until("the fleet's rollout back", |web| {
        web.rollout.as_ref().is_some_and(|r| r.step == 1)
    })
    .await;
    assert!(!old_lead.is_leader());
    new.change(|web| web.rollout = Some(rollout(2, 0)));
    let web = etcd_until(&mut client, prefix, "the new leader's step", |web| {
        web.rollout.as_ref().is_some_and(|r| r.step == 2)
    })
    .await;
    assert_eq!(web.rollout, Some(rollout(2, 0)));
    // The old replica follows the new leader's step, and adds nothing.
    old.until("the new leader's step", |web| {
        web.rollout.as_ref().is_some_and(|r| r.step == 2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        in_etcd(&mut client, prefix).await.and_then(|w| w.rollout),
        Some(rollout(2, 0)),
        "one step 2, not a step 3 from two clocks"
    );
    assert!(
        new_lead.is_leader(),
        "the new leader's writes pass its fence"
    );
}

#[tokio::test]
async fn a_follower_that_never_led_writes_its_operators_promote_unfenced() {
    let etcd = Etcd::start();
    let prefix = "/veer/fence-follower";
    let mut client = connect(&settings(&etcd, prefix)).await.expect("client");
    // Someone else leads; this replica does not (a lead of zero length).
    let (_, _) = take_lead(&mut client, prefix, "r2", Duration::from_secs(60)).await;
    let (follower_lead, _) = {
        let lease = client.lease_grant(30, None).await.expect("lease").id();
        let term = Term {
            key: format!("{prefix}/leader"),
            lease,
        };
        (
            Leadership::holding("r1", term.clone(), Duration::ZERO),
            term,
        )
    };
    let mut follower = Replica::open(settings(&etcd, prefix), follower_lead).await;
    follower.change(|web| web.rollout = Some(rollout(1, 0)));
    // `veer promote` on a follower: a step move, but no leader's.
    follower.change(|web| web.rollout = Some(rollout(2, 0)));
    etcd_until(&mut client, prefix, "the operator's promote", |web| {
        web.rollout.as_ref().is_some_and(|r| r.step == 2)
    })
    .await;
}
