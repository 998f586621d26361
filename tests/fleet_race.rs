//! Decisions taken on one replica while a sibling's write is on its way to
//! it: the sibling's write, merged by the store before the decision, must
//! not undo it when the control plane takes it in afterwards. Each round is
//! an operator's rollback on one replica, a sibling writing the service back
//! (as a replica does when it reconciles what it took in), and a resume on a
//! third replica between the store's merge of that write and the control
//! plane taking it in: the interleaving that lost a resume under commands
//! sent ~50 ms apart to different replicas. Against a real etcd on
//! loopback; needs etcd and `protoc`: `cargo test --features fleet --test
//! fleet_race`.
#![cfg(feature = "fleet")]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use support::etcd::Etcd;
use veer::fleet::etcd::{EtcdSettings, EtcdStore};
use veer::state::{Changes, Latch, PersistedState, RemoteChange, ServiceState};

const SERVICE: &str = "web";
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

/// What the control plane does with the store, reduced to the layer: it
/// takes siblings' changes in as the control task does and saves after
/// every change of its own.
struct Replica {
    name: &'static str,
    layer: PersistedState,
    store: EtcdStore,
    changes: Changes,
}

impl Replica {
    async fn join(etcd: &Etcd, prefix: &str, name: &'static str) -> Replica {
        let mut opened = EtcdStore::open(settings(etcd, prefix), PersistedState::default()).await;
        assert_eq!(opened.warning, None, "{name} joins the fleet");
        let changes = opened.store.changes().expect("first call");
        Replica {
            name,
            layer: opened.fleet.clone().expect("etcd answered"),
            store: opened.store,
            changes,
        }
    }

    fn own(&self) -> Option<&ServiceState> {
        self.layer.services.get(SERVICE)
    }

    fn change(&mut self, edit: impl FnOnce(&mut ServiceState)) {
        edit(self.layer.services.entry(SERVICE.to_string()).or_default());
        self.store.save(Arc::new(self.layer.clone()));
    }

    /// The control task's `adopt`: the change applied on top of whatever
    /// this replica decided since the store merged it.
    fn adopt(&mut self, change: RemoteChange) {
        let ours = self.layer.services.get(&change.service);
        let state = veer::fleet::merge::rebase(change.merged_with.as_ref(), ours, change.state);
        match state {
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

    async fn next(&mut self, what: &str) -> RemoteChange {
        tokio::time::timeout(LIMIT, self.changes.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{}: timed out waiting for {what}; layer: {:?}",
                    self.name,
                    self.own()
                )
            })
            .expect("store task alive")
    }

    /// Takes in what siblings wrote until `cond` holds of its layer.
    async fn until(&mut self, what: &str, cond: impl Fn(Option<&ServiceState>) -> bool) {
        while !cond(self.own()) {
            let change = self.next(what).await;
            self.adopt(change);
        }
    }
}

fn latch(round: u64) -> Latch {
    Latch {
        version: "canary".into(),
        revision: "2".into(),
        reason: "manual".into(),
        at_unix_ms: 1_000 + round,
        id: 0,
    }
}

fn latched(state: Option<&ServiceState>) -> bool {
    state.is_some_and(|s| !s.latches.is_empty())
}

fn weights(stable: u32) -> Option<BTreeMap<String, u32>> {
    Some(BTreeMap::from([
        ("stable".to_string(), stable),
        ("canary".to_string(), 100 - stable),
    ]))
}

/// What a fresh replica reads from etcd now.
async fn fleet(etcd: &Etcd, prefix: &str) -> Option<ServiceState> {
    let opened = EtcdStore::open(settings(etcd, prefix), PersistedState::default()).await;
    opened
        .fleet
        .expect("etcd answered")
        .services
        .get(SERVICE)
        .cloned()
}

#[tokio::test]
async fn a_resume_taken_while_a_siblings_merge_is_on_its_way_is_never_undone() {
    let etcd = Etcd::start();
    let prefix = "/veer/race-a";
    let mut replicas = [
        Replica::join(&etcd, prefix, "a").await,
        Replica::join(&etcd, prefix, "b").await,
        Replica::join(&etcd, prefix, "c").await,
    ];
    for round in 0..12u64 {
        // The replicas' parts turn round the three, as in the bench.
        let turn = round as usize;
        let (origin, echo, resumer) = (turn % 3, (turn + 1) % 3, (turn + 2) % 3);
        replicas[origin].change(|s| s.latches.push(latch(round)));
        for replica in replicas.iter_mut() {
            replica.until("the rollback", latched).await;
        }
        // A sibling writes the service back (here: weights of its own).
        let stable = 50 + round as u32;
        replicas[echo].change(|s| s.weights = weights(stable));
        // The resumer's store merges that write with its layer (still
        // latched) and hands it over; before the control plane takes it in,
        // the operator's resume lands on that replica.
        let resumer = &mut replicas[resumer];
        let held = loop {
            let change = resumer.next("the sibling's write").await;
            if change
                .state
                .as_ref()
                .is_some_and(|s| s.weights == weights(stable))
            {
                break change;
            }
            resumer.adopt(change);
        };
        assert!(
            latched(held.state.as_ref()),
            "the merge was made before the resume"
        );
        resumer.change(|s| s.latches.clear());
        resumer.adopt(held);
        assert!(
            !latched(resumer.own()),
            "round {round}: taking the merge in undid the resume on {}: {:?}",
            resumer.name,
            resumer.own()
        );
        // Every replica ends with the last decision, and the sibling's weights.
        let settled = |s: Option<&ServiceState>| {
            !latched(s) && s.is_some_and(|s| s.weights == weights(stable))
        };
        for replica in replicas.iter_mut() {
            replica.until("the resume", settled).await;
        }
        let stored = fleet(&etcd, prefix).await;
        assert!(
            settled(stored.as_ref()),
            "round {round}: etcd holds {stored:?}"
        );
    }
}

#[tokio::test]
async fn a_latch_made_while_an_older_resume_is_merged_stays() {
    // The other way round: a replica trips again while an operator's resume
    // of the previous latch is on its way to it; the new latch is a new
    // decision, and the resume of the old one must not take it away.
    let etcd = Etcd::start();
    let prefix = "/veer/race-b";
    let mut a = Replica::join(&etcd, prefix, "a").await;
    let mut b = Replica::join(&etcd, prefix, "b").await;
    a.change(|s| s.latches.push(latch(0)));
    b.until("the first latch", latched).await;
    a.change(|s| s.latches.clear());
    let held = b.next("the resume").await;
    assert!(!latched(held.state.as_ref()), "{held:?}");
    // b trips again before it takes the resume in.
    b.change(|s| {
        s.latches.clear();
        s.latches.push(latch(1));
    });
    b.adopt(held);
    assert_eq!(
        b.own().map(|s| s.latches.clone()),
        Some(vec![latch(1)]),
        "the new trip stands on b"
    );
    a.until("the new trip", |s| {
        s.is_some_and(|s| s.latches == vec![latch(1)])
    })
    .await;
    let stored = fleet(&etcd, prefix).await;
    assert_eq!(stored.map(|s| s.latches), Some(vec![latch(1)]));
}

/// Polls `admin` until the canary's weight in force is `want`.
async fn until_canary(
    client: &support::client::HttpClient,
    admin: std::net::SocketAddr,
    want: u64,
    what: &str,
) {
    use support::release::{status_at, version, web};
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let status = status_at(client, admin).await;
        let web = web(&status);
        if version(web, "canary")["weight"].as_u64() == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: canary weight not {want} within {LIMIT:?}; /status of web:\n{web:#}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn rollbacks_and_resumes_sent_to_different_replicas_in_quick_succession_all_hold() {
    use support::binary::VeerProcess;
    use support::client::http1_client;
    use support::fleet::{wait_fleet, ReplicaPlan};
    use support::release::{admin_of, admin_post};
    use support::upstream::Upstream;

    let etcd = Etcd::start();
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("state dir"))
        .collect();
    let names = ["a", "b", "c"];
    let replicas: Vec<VeerProcess> = names
        .iter()
        .zip(&dirs)
        .map(|(name, dir)| {
            let mut plan = ReplicaPlan::new(name, vec![etcd.endpoint()]);
            plan.prefix = "/veer/race-e2e";
            // Only the operator decides here: no traffic, no trips.
            plan.guard = "baseline: stable, interval: 1s, window: 30s, min_requests: 100000, \
                          max_error_rate: 0.2";
            plan.weights = (90, 10);
            plan.start(&stable, &canary, dir.path())
        })
        .collect();
    let client = http1_client();
    wait_fleet(&client, &replicas[0], &names).await;
    let admins: Vec<_> = replicas.iter().map(admin_of).collect();
    // Each round: a rollback on one replica, and as soon as every replica
    // holds it, a resume on the same replica or the next (the siblings are
    // writing back what they took in just then); every replica must end
    // with each decision.
    for round in 0..30 {
        let origin = round % 3;
        let resumer = (origin + round / 3 % 2) % 3;
        for (action, on, want) in [("rollback", origin, 0), ("resume", resumer, 10)] {
            let path = format!("/services/web/{action}");
            let answer = admin_post(&client, admins[on], &path, None).await;
            assert_eq!(answer.status, 200, "{action}: {}", answer.text());
            for (i, admin) in admins.iter().enumerate() {
                let what = format!(
                    "round {round}: the {action} on {} in force on {}",
                    names[on], names[i]
                );
                until_canary(&client, *admin, want, &what).await;
            }
        }
    }
}
