//! One rollout clock for a fleet, with real binaries on one real etcd: three
//! replicas run one rollout whose steps the elected leader alone advances;
//! the leader killed mid-hold hands the clock to another replica without
//! restarting or skipping the hold; and a canary that starts failing is
//! reverted on every replica, stays reverted across restarts of all of them,
//! and `veer wait` against any replica exits 1. Assertions are on the order
//! of steps, on who advanced them (the log) and on the hold recorded, never
//! on a time measured. Needs etcd and `protoc`:
//! `cargo test --features fleet --test fleet_rollout`.
#![cfg(feature = "fleet")]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::binary::VeerProcess;
use support::client::{get, http1_client, send, HttpClient};
use support::config::LISTENER;
use support::etcd::Etcd;
use support::load::Load;
use support::release::{
    admin_of, finish_wait, paced_load, spawn_wait, status_at, v, version, web, web_yaml, BIN,
};
use support::upstream::Upstream;

/// Bound on each wait below (a leader, a step, a trip); never asserted as a figure.
const LIMIT: Duration = Duration::from_secs(40);

/// A replica's config: `web` with stable and canary, `service_blocks` (its
/// guard and rollout), in the fleet on `etcd` under `prefix` as `name`.
fn replica_yaml(
    name: &str,
    stable: &Upstream,
    canary: &Upstream,
    etcd: &Etcd,
    prefix: &str,
    service_blocks: &str,
    state_dir: &Path,
) -> String {
    let blocks = format!(
        "{service_blocks}\
         fleet:\n  replica: {name}\n  leader_ttl: 3s\n  \
         etcd: {{ endpoints: [\"{}\"], prefix: {prefix}, timeout: 1s }}\n",
        etcd.endpoint()
    );
    web_yaml(
        &[
            v("stable", stable.addr(), 90),
            v("canary", canary.addr(), 10),
        ],
        &blocks,
        Some(state_dir),
    )
}

/// Three replicas and what they need, started in order `r1`, `r2`, `r3`.
struct Fleet {
    etcd: Etcd,
    stable: Upstream,
    canary: Upstream,
    prefix: &'static str,
    blocks: String,
    dirs: Vec<tempfile::TempDir>,
    replicas: Vec<Option<VeerProcess>>,
    client: HttpClient,
}

impl Fleet {
    async fn start(prefix: &'static str, blocks: &str) -> Fleet {
        let mut fleet = Fleet {
            etcd: Etcd::start(),
            stable: Upstream::start("stable").await,
            canary: Upstream::start("canary").await,
            prefix,
            blocks: blocks.to_string(),
            dirs: (0..3)
                .map(|_| tempfile::tempdir().expect("state dir"))
                .collect(),
            replicas: Vec::new(),
            client: http1_client(),
        };
        for i in 0..3 {
            let replica = fleet.spawn(i);
            fleet.replicas.push(Some(replica));
        }
        fleet
    }

    fn name(i: usize) -> String {
        format!("r{}", i + 1)
    }

    fn spawn(&self, i: usize) -> VeerProcess {
        let yaml = replica_yaml(
            &Fleet::name(i),
            &self.stable,
            &self.canary,
            &self.etcd,
            self.prefix,
            &self.blocks,
            self.dirs[i].path(),
        );
        VeerProcess::start(BIN, &yaml)
    }

    fn replica(&self, i: usize) -> &VeerProcess {
        self.replicas[i].as_ref().expect("replica running")
    }

    fn admin(&self, i: usize) -> SocketAddr {
        admin_of(self.replica(i))
    }

    fn running(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|&i| self.replicas[i].is_some())
            .collect()
    }

    async fn status(&self, i: usize) -> Value {
        status_at(&self.client, self.admin(i)).await
    }

    /// Paced GETs through every running replica's proxy, bounded in count
    /// and time.
    fn load(&self) -> Vec<Load<String>> {
        self.running()
            .into_iter()
            .map(|i| {
                let url = format!("http://{}/", self.replica(i).listener(LISTENER));
                paced_load(self.client.clone(), url, 25, 2_500, Duration::from_secs(90))
                    .start(support::load::status_and_upstream)
            })
            .collect()
    }

    /// The index of the replica that says it leads, once exactly one does
    /// and every running replica names it.
    async fn leader(&self, what: &str) -> usize {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let mut leading = Vec::new();
            let mut named = BTreeSet::new();
            for i in self.running() {
                let report = self.status(i).await["rollout_leader"].clone();
                assert_eq!(report["replica"], Fleet::name(i), "{report:#}");
                if report["leading"] == true {
                    leading.push(i);
                }
                named.insert(report["leader"].as_str().map(str::to_string));
            }
            if let ([i], 1) = (&leading[..], named.len()) {
                if named.contains(&Some(Fleet::name(*i))) {
                    return *i;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: no single leader within {LIMIT:?} (leading: {leading:?}, named: {named:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every log line saying `words`, over every replica that ran.
    fn log_lines(&self, words: &str, also: &[&VeerProcess]) -> Vec<String> {
        self.replicas
            .iter()
            .flatten()
            .chain(also.iter().copied())
            .flat_map(|r| {
                r.stderr()
                    .lines()
                    .filter(|l| l.contains(words))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// `web`'s rollout as one replica's `/status` shows it: (step, state, held_ms).
fn rollout_of(status: &Value) -> (u64, String, u64) {
    let r = &web(status)["rollout"];
    (
        r["step"].as_u64().unwrap_or(0),
        r["state"].as_str().unwrap_or("none").to_string(),
        r["held_ms"].as_u64().unwrap_or(0),
    )
}

/// Polls every running replica's `/status` until `done` holds of one, and
/// returns each replica's readings in order.
async fn watch_until(
    fleet: &Fleet,
    what: &str,
    done: impl Fn(&(u64, String, u64)) -> bool,
) -> Vec<Vec<(u64, String, u64)>> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut readings = vec![Vec::new(); fleet.replicas.len()];
    loop {
        let mut finished = false;
        for i in fleet.running() {
            let reading = rollout_of(&fleet.status(i).await);
            finished |= done(&reading);
            readings[i].push(reading);
        }
        if finished {
            return readings;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached within {LIMIT:?}; last readings: {:?}",
            readings.iter().map(|r| r.last()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The steps one replica was seen at go up one at a time, never back.
#[track_caller]
fn steps_in_order(readings: &[(u64, String, u64)], replica: usize) {
    for pair in readings.windows(2) {
        let (before, after) = (pair[0].0, pair[1].0);
        assert!(
            after == before || after == before + 1,
            "replica {replica} went from step {before} to {after}: {readings:?}"
        );
    }
}

async fn fleet_leader_gauge(client: &HttpClient, admin: SocketAddr) -> String {
    let answer = send(client, get(&format!("http://{admin}/metrics"), None)).await;
    assert_eq!(answer.status, 200);
    answer
        .text()
        .lines()
        .find(|l| l.starts_with("veer_fleet_leader{"))
        .unwrap_or_else(|| panic!("no veer_fleet_leader in /metrics:\n{}", answer.text()))
        .to_string()
}

const ROLLOUT: &str =
    "    guard: { baseline: stable, window: 5s, min_requests: 1, max_error_rate: 0.5 }\n\
     \x20   rollout: { candidate: canary, steps: [10, 50, 100], hold: 3s }\n";

#[tokio::test]
async fn three_replicas_run_one_rollout_on_one_clock() {
    let fleet = Fleet::start("/veer/clock-a", ROLLOUT).await;
    let load = fleet.load();
    let leader = fleet.leader("a leader among three").await;

    let readings = watch_until(&fleet, "the rollout to complete", |r| r.1 == "completed").await;
    for (i, replica) in readings.iter().enumerate() {
        steps_in_order(replica, i);
        let steps: BTreeSet<u64> = replica.iter().map(|r| r.0).collect();
        assert!(steps.is_subset(&BTreeSet::from([1, 2, 3])), "{replica:?}");
    }
    // Every replica ends where the leader put it.
    for i in fleet.running() {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let (step, state, held) = rollout_of(&fleet.status(i).await);
            if state == "completed" {
                assert_eq!(step, 3);
                assert!(held >= 3_000, "the last step held its hold: {held} ms");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica {i}: {state}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // One clock: each step was advanced once, by the leader only.
    let advanced = fleet.log_lines("rollout advanced", &[]);
    let completed = fleet.log_lines("rollout completed", &[]);
    assert_eq!(advanced.len(), 2, "two advances in all: {advanced:#?}");
    assert_eq!(completed.len(), 1, "one completion in all: {completed:#?}");
    let leader_log = fleet.replica(leader).stderr();
    for line in advanced.iter().chain(&completed) {
        assert!(
            leader_log.contains(line.as_str()),
            "not the leader's: {line}"
        );
    }
    assert_eq!(
        fleet.leader("the same leader at the end").await,
        leader,
        "no change of leader in a quiet fleet"
    );
    for i in fleet.running() {
        let gauge = fleet_leader_gauge(&fleet.client, fleet.admin(i)).await;
        let expected = format!(
            "veer_fleet_leader{{replica=\"{}\"}} {}",
            Fleet::name(i),
            u8::from(i == leader)
        );
        assert_eq!(gauge, expected);
    }
    assert!(
        fleet
            .replica(leader)
            .stderr()
            .contains("this replica leads the fleet's rollout clock"),
        "the leader says so in its log"
    );
    for load in load {
        load.finish().await;
    }

    // A clean shutdown gives the lead back: another replica leads, and the
    // one that left says it handed over.
    let mut fleet = fleet;
    let mut gone = fleet.replicas[leader].take().expect("the leader");
    gone.signal("TERM");
    assert!(
        gone.wait_exit(LIMIT).await.is_some_and(|s| s.success()),
        "the leader exits cleanly: {}",
        gone.output()
    );
    assert!(
        gone.stderr()
            .contains("rollout leader: this replica gave the lead back"),
        "{}",
        gone.output()
    );
    let next = fleet.leader("a leader after the clean shutdown").await;
    assert_ne!(next, leader);
}

#[tokio::test]
async fn the_leader_killed_mid_hold_neither_restarts_nor_skips_the_hold() {
    let blocks =
        "    guard: { baseline: stable, window: 5s, min_requests: 1, max_error_rate: 0.5 }\n\
                  \x20   rollout: { candidate: canary, steps: [10, 50, 100], hold: 6s }\n";
    let mut fleet = Fleet::start("/veer/clock-b", blocks).await;
    let load = fleet.load();
    let leader = fleet.leader("a first leader").await;
    let follower = (leader + 1) % 3;

    // Mid-hold of step 2, as the fleet (etcd, through a follower) records it.
    let before = watch_until(&fleet, "step 2 held for a while", |r| {
        r.0 == 2 && r.2 >= 2_000
    })
    .await;
    let (_, _, held_before) = rollout_of(&fleet.status(follower).await);
    let dead = fleet.replicas[leader].take().expect("the leader");
    dead.signal("KILL");
    let killed = std::time::Instant::now();

    let successor = fleet.leader("a new leader after the kill").await;
    // Reported, never asserted: the machine may be loaded.
    eprintln!(
        "fleet_rollout: a new leader {:?} after the kill (leader_ttl 3s); step 2 had {held_before} ms held",
        killed.elapsed()
    );
    assert_ne!(successor, leader);
    let after = watch_until(&fleet, "the rollout to complete", |r| r.1 == "completed").await;

    for i in fleet.running() {
        let seen: Vec<_> = before[i].iter().chain(&after[i]).cloned().collect();
        steps_in_order(&seen, i);
        // The hold of step 2 after the kill went on from what was recorded,
        // never back to the start.
        let step2_after: Vec<u64> = after[i]
            .iter()
            .filter(|r| r.0 == 2 && r.1 == "in_progress")
            .map(|r| r.2)
            .collect();
        assert!(
            step2_after.iter().all(|&held| held >= held_before),
            "replica {i}: step 2's hold restarted below {held_before} ms: {step2_after:?}"
        );
        assert!(
            step2_after.windows(2).all(|w| w[1] >= w[0]),
            "replica {i}: step 2's hold went back: {step2_after:?}"
        );
        assert!(
            seen.iter().any(|r| r.0 == 3),
            "replica {i} saw step 3: no step skipped: {seen:?}"
        );
    }
    // Each step was advanced once: steps 1 → 2 by the dead leader, 2 → 3
    // and the completion by its successor.
    let advanced = fleet.log_lines("rollout advanced", &[&dead]);
    assert_eq!(advanced.len(), 2, "{advanced:#?}");
    let successor_log = fleet.replica(successor).stderr();
    let completed = fleet.log_lines("rollout completed", &[&dead]);
    assert_eq!(completed.len(), 1, "{completed:#?}");
    assert!(successor_log.contains(completed[0].as_str()));
    assert!(
        dead.stderr().contains("step=2"),
        "the first leader advanced to step 2: {}",
        dead.output()
    );
    assert!(
        successor_log
            .lines()
            .any(|l| l.contains("rollout advanced") && l.contains("step=3")),
        "the successor advanced to step 3: {}",
        fleet.replica(successor).output()
    );
    drop(dead);
    for load in load {
        load.finish().await;
    }
}

#[tokio::test]
async fn a_leader_stopped_past_its_lease_comes_back_as_a_follower_not_a_second_clock() {
    let blocks =
        "    guard: { baseline: stable, window: 5s, min_requests: 1, max_error_rate: 0.5 }\n\
                  \x20   rollout: { candidate: canary, steps: [10, 50, 100], hold: 6s }\n";
    let fleet = Fleet::start("/veer/clock-d", blocks).await;
    let load = fleet.load();
    let first = fleet.leader("a first leader").await;
    watch_until(&fleet, "step 2 under way", |r| r.0 == 2).await;

    // Stopped (SIGSTOP) for longer than its lease: another replica leads
    // meanwhile, and the stopped one must not act on its old lead when it
    // runs again.
    fleet.replica(first).signal("STOP");
    let others: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    let deadline = tokio::time::Instant::now() + LIMIT;
    let second = loop {
        let mut leading = None;
        for &i in &others {
            if fleet.status(i).await["rollout_leader"]["leading"] == true {
                leading = Some(i);
            }
        }
        if let Some(i) = leading {
            break i;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no other leader while the first is stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    fleet.replica(first).signal("CONT");
    let after_cont = fleet
        .leader("one leader once the stopped one runs again")
        .await;
    assert_eq!(
        after_cont, second,
        "the stopped leader does not take back the lead"
    );

    let readings = watch_until(&fleet, "the rollout to complete", |r| r.1 == "completed").await;
    for (i, replica) in readings.iter().enumerate() {
        steps_in_order(replica, i);
    }
    let advanced = fleet.log_lines("rollout advanced", &[]);
    assert_eq!(advanced.len(), 2, "each step advanced once: {advanced:#?}");
    let completed = fleet.log_lines("rollout completed", &[]);
    assert_eq!(completed.len(), 1, "{completed:#?}");
    assert!(fleet
        .replica(second)
        .stderr()
        .contains(completed[0].as_str()));
    assert!(
        fleet
            .replica(first)
            .stderr()
            .contains("rollout leader: this replica stopped leading"),
        "the stopped leader knows it lost the lead: {}",
        fleet.replica(first).output()
    );
    for load in load {
        load.finish().await;
    }
}

#[tokio::test]
async fn a_failing_canary_is_reverted_everywhere_for_good_and_wait_exits_1_on_any_replica() {
    let blocks =
        "    guard: { baseline: stable, window: 5s, min_requests: 5, max_error_rate: 0.2 }\n\
                  \x20   rollout: { candidate: canary, steps: [50, 100], hold: 1h }\n";
    let mut fleet = Fleet::start("/veer/clock-c", blocks).await;
    let load = fleet.load();
    fleet.leader("a leader").await;
    fleet.canary.set_fail_ratio(1.0);

    let reverted = |status: &Value| {
        let web = web(status);
        version(web, "canary")["weight"] == 0
            && version(web, "canary")["latched"] == true
            && web["rollout"]["state"] == "rolled_back"
    };
    for i in 0..3 {
        let deadline = tokio::time::Instant::now() + LIMIT;
        while !reverted(&fleet.status(i).await) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica {i} did not revert: {:#}",
                web(&fleet.status(i).await)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for load in load {
        load.finish().await;
    }

    // Every replica restarted: the latch is in force on each from its
    // first /status.
    for i in 0..3 {
        drop(fleet.replicas[i].take());
    }
    fleet.canary.set_fail_ratio(0.0);
    for i in 0..3 {
        let replica = fleet.spawn(i);
        fleet.replicas[i] = Some(replica);
        let first = fleet.status(i).await;
        assert!(reverted(&first), "replica {i} after restart: {first:#}");
    }
    for i in 0..3 {
        let url = format!("http://{}", fleet.admin(i));
        let (code, output) = finish_wait(spawn_wait(&url, "10s")).await;
        assert_eq!(code, Some(1), "veer wait against replica {i}:\n{output}");
        assert!(output.contains("rolled back"), "{output}");
    }
}

/// `fleet.leader_ttl` in `veer check`'s words.
mod leader_ttl {
    use veer::config::parse_str;

    const BASE: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
services:
  - name: app
    versions:
      - name: stable
        endpoints: [127.0.0.1:18081]
        weight: 1
";

    fn errors(fleet: &str) -> Vec<String> {
        match parse_str(&format!("{BASE}{fleet}"), "test.yaml") {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn defaults_to_five_seconds() {
        let config = parse_str(
            &format!("{BASE}fleet:\n  etcd: {{ endpoints: [http://127.0.0.1:2379] }}\n"),
            "test.yaml",
        )
        .expect("valid");
        let fleet = config.fleet.expect("a fleet");
        assert_eq!(fleet.leader_ttl, std::time::Duration::from_secs(5));
        let config = parse_str(
            &format!(
                "{BASE}fleet:\n  leader_ttl: 1m\n  etcd: {{ endpoints: [http://127.0.0.1:2379] }}\n"
            ),
            "test.yaml",
        )
        .expect("valid");
        assert_eq!(
            config.fleet.expect("a fleet").leader_ttl,
            std::time::Duration::from_secs(60)
        );
    }

    #[test]
    fn bad_values_are_refused_with_what_to_write() {
        let etcd = "  etcd: { endpoints: [http://127.0.0.1:2379] }\n";
        assert_eq!(
            errors(&format!("fleet:\n  leader_ttl: 2500ms\n{etcd}")),
            ["test.yaml:11:15: fleet.leader_ttl: 2.5s is not whole seconds: etcd leases count in seconds; write e.g. 2s"]
        );
        assert_eq!(
            errors(&format!("fleet:\n  leader_ttl: 1s\n{etcd}")),
            ["test.yaml:11:15: fleet.leader_ttl: 1s is out of range: use 2s to 300s (shorter, etcd raises it anyway; longer, a dead leader's rollouts stand still that long)"]
        );
        assert_eq!(
            errors(&format!("fleet:\n  leader_ttl: 10m\n{etcd}")),
            ["test.yaml:11:15: fleet.leader_ttl: 600s is out of range: use 2s to 300s (shorter, etcd raises it anyway; longer, a dead leader's rollouts stand still that long)"]
        );
        assert_eq!(
            errors(&format!("fleet:\n  leader_ttl: 0s\n{etcd}")),
            ["test.yaml:11:15: fleet.leader_ttl: `0s` is zero: this needs a duration above 0"]
        );
        assert_eq!(
            errors(
                "fleet:\n  leader_ttl: 3s\n  etcd: { endpoints: [http://127.0.0.1:2379], timeout: 3s }\n"
            ),
            ["test.yaml:11:15: fleet.leader_ttl: 3s is not longer than fleet.etcd.timeout (3s): the leader could lose its lease while one request waits; make leader_ttl longer than the timeout"]
        );
        let unknown = errors(&format!("fleet:\n  leader_tll: 3s\n{etcd}"));
        assert_eq!(unknown.len(), 1, "{unknown:?}");
        assert!(unknown[0].contains("leader_tll"), "{unknown:?}");
    }
}

/// The merge base a replica keeps in its `state_dir` copy: after a restart
/// its first merge is three-way, so what the fleet removed while it was down
/// stays removed, and what it decided alone while etcd was away is kept.
mod merge_base {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use super::support::etcd::Etcd;
    use veer::fleet::etcd::EtcdSettings;
    use veer::state::{Changes, Latch, PersistedState, ServiceState, Store};

    fn settings(etcd: &Etcd, prefix: &str) -> EtcdSettings {
        EtcdSettings {
            endpoints: vec![etcd.endpoint()],
            prefix: prefix.to_string(),
            username: None,
            password: None,
            tls: None,
            timeout: Duration::from_secs(1),
        }
    }

    fn latch(version: &str) -> Latch {
        Latch {
            version: version.into(),
            revision: "2".into(),
            reason: "error_rate".into(),
            at_unix_ms: 7,
            id: 0,
        }
    }

    fn latched(layer: &PersistedState, service: &str, version: &str) -> bool {
        layer
            .services
            .get(service)
            .is_some_and(|s| s.latches.iter().any(|l| l.version == version))
    }

    /// A replica reduced to its layer, through the fleet store the binary
    /// uses (etcd, and a copy when it has a `state_dir`).
    struct Member {
        store: Arc<dyn Store>,
        layer: PersistedState,
        changes: Changes,
        warnings: Vec<String>,
    }

    impl Member {
        async fn open(etcd: &Etcd, prefix: &str, dir: Option<&Path>) -> Member {
            let (store, loaded) = veer::fleet::store::open(settings(etcd, prefix), dir)
                .await
                .expect("open the fleet store");
            let changes = store.changes().expect("the first call");
            let member = Member {
                store,
                layer: loaded.layer,
                changes,
                warnings: loaded.warnings,
            };
            member.save().await;
            member
        }

        async fn save(&self) {
            self.store
                .save(Arc::new(self.layer.clone()))
                .await
                .expect("save");
        }

        async fn change(&mut self, service: &str, edit: impl FnOnce(&mut ServiceState)) {
            edit(self.layer.services.entry(service.to_string()).or_default());
            self.save().await;
        }

        /// Takes in what siblings write until `cond` holds.
        async fn until(&mut self, what: &str, cond: impl Fn(&PersistedState) -> bool) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while !cond(&self.layer) {
                let change = tokio::time::timeout_at(deadline, self.changes.recv())
                    .await
                    .unwrap_or_else(|_| panic!("{what}: not within 15s; layer {:?}", self.layer))
                    .expect("the store's task runs");
                match change.state {
                    Some(state) => self.layer.services.insert(change.service, state),
                    None => self.layer.services.remove(&change.service),
                };
                self.layer.remote_applied += 1;
                self.save().await;
            }
        }
    }

    /// What the copy in `dir` holds as the fleet's state for `service`.
    fn copy_base_latched(dir: &Path, service: &str, version: &str) -> bool {
        let text = std::fs::read_to_string(dir.join(veer::state::STATE_FILE)).unwrap_or_default();
        let copy: PersistedState = serde_json::from_str(&text).unwrap_or_default();
        copy.fleet_base.is_some_and(|base| {
            base.get(service)
                .is_some_and(|s| s.latches.iter().any(|l| l.version == version))
        })
    }

    #[tokio::test]
    async fn a_resume_made_while_a_replica_was_down_stays_made_when_it_returns() {
        let mut etcd = Etcd::start();
        let prefix = "/veer/base-a";
        let dir = tempfile::tempdir().expect("state dir");
        let mut a = Member::open(&etcd, prefix, Some(dir.path())).await;
        let mut b = Member::open(&etcd, prefix, None).await;
        b.change("web", |s| s.latches.push(latch("canary"))).await;
        a.until("b's latch on a", |l| latched(l, "web", "canary"))
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !copy_base_latched(dir.path(), "web", "canary") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a's copy never kept the fleet's latch as its base"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(a);

        // While a is down, an operator resumes on b.
        b.change("web", |s| s.latches.clear()).await;
        let mut c = Member::open(&etcd, prefix, None).await;
        c.until("the resume in etcd", |l| !latched(l, "web", "canary"))
            .await;

        // a comes back while etcd is away: it serves its copy...
        etcd.kill();
        let mut a = Member::open(&etcd, prefix, Some(dir.path())).await;
        assert!(
            a.warnings
                .iter()
                .any(|w| w.contains("local copy of the fleet state")),
            "{:?}",
            a.warnings
        );
        assert!(latched(&a.layer, "web", "canary"), "serves from its copy");
        // ...and when etcd is back, the resume it missed wins: its copy's
        // latch is the one the fleet removed, not a new one of its own.
        etcd.restart();
        a.until("the resume on a", |l| !latched(l, "web", "canary"))
            .await;
        let back = tokio::time::timeout(Duration::from_secs(2), c.changes.recv()).await;
        if let Ok(Some(change)) = back {
            assert!(
                change.state.is_none_or(|s| s.latches.is_empty()),
                "the resumed latch came back to the fleet"
            );
        }
        c.save().await;
    }

    #[tokio::test]
    async fn a_trip_made_while_etcd_was_away_survives_a_restart_with_etcd_back() {
        let mut etcd = Etcd::start();
        let prefix = "/veer/base-b";
        let dir = tempfile::tempdir().expect("state dir");
        let mut a = Member::open(&etcd, prefix, Some(dir.path())).await;
        let mut b = Member::open(&etcd, prefix, None).await;
        etcd.kill();
        a.change("shop", |s| s.latches.push(latch("beta"))).await;
        drop(a);
        etcd.restart();

        let a = Member::open(&etcd, prefix, Some(dir.path())).await;
        assert!(a.warnings.is_empty(), "{:?}", a.warnings);
        assert!(
            latched(&a.layer, "shop", "beta"),
            "its own trip is in the layer it starts from: {:?}",
            a.layer
        );
        b.until("a's trip reaches b", |l| latched(l, "shop", "beta"))
            .await;
    }
}
