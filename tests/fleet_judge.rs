//! Fleet-wide judgement with three real replicas on one real etcd: each
//! publishes its windows under a lease and the guard judges the fleet's sum,
//! so a canary whose traffic is spread too thin for any one replica to judge
//! is still judged, trips, and every replica reverts; a replica killed takes
//! its figures out of the sum when its lease ends. Needs etcd and `protoc`:
//! `cargo test --features fleet --test fleet_judge`.
#![cfg(feature = "fleet")]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::binary::VeerProcess;
use support::client::{get, http1_client, send, HttpClient};
use support::etcd::Etcd;
use support::release::{admin_of, status_at, v, version, wait_web_at, web_yaml, BIN};
use support::upstream::Upstream;

const LIMIT: Duration = Duration::from_secs(20);

fn replica(
    name: &str,
    stable: &Upstream,
    canary: &Upstream,
    etcd: &Etcd,
    guard: &str,
    dir: &std::path::Path,
) -> VeerProcess {
    let blocks = format!(
        "    guard: {{ {guard} }}\n\
         fleet:\n  replica: {name}\n  etcd: {{ endpoints: [\"{}\"], prefix: /veer/judge }}\n",
        etcd.endpoint()
    );
    // Every request goes to the canary: the counts per replica are exact.
    let yaml = web_yaml(
        &[
            v("stable", stable.addr(), 0),
            v("canary", canary.addr(), 100),
        ],
        &blocks,
        Some(dir),
    );
    VeerProcess::start(BIN, &yaml)
}

async fn requests(client: &HttpClient, veer: &VeerProcess, n: usize) {
    let url = format!("http://{}/", veer.listener("public"));
    for _ in 0..n {
        send(client, get(&url, None)).await;
    }
}

async fn status(client: &HttpClient, veer: &VeerProcess) -> Value {
    status_at(client, admin_of(veer)).await
}

fn live_replicas(status: &Value) -> Vec<String> {
    status["fleet"]["replicas"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_for_replicas(client: &HttpClient, veer: &VeerProcess, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let status = status(client, veer).await;
        if live_replicas(&status) == want && status["fleet"]["connected"] == true {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fleet did not become {want:?}: {:#}",
            status["fleet"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_canary_too_thin_on_every_replica_is_judged_on_the_fleets_sum() {
    let etcd = Etcd::start();
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    canary.set_fail_ratio(1.0);
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("state dir"))
        .collect();
    // 25 requests a replica: below min_requests on each, 75 in the fleet.
    let guard = "baseline: stable, interval: 1s, window: 60s, min_requests: 60, \
                 max_error_rate: 0.2, consecutive: 1";
    let replicas: Vec<VeerProcess> = ["a", "b", "c"]
        .iter()
        .zip(&dirs)
        .map(|(name, dir)| replica(name, &stable, &canary, &etcd, guard, dir.path()))
        .collect();
    let client = http1_client();
    wait_for_replicas(&client, &replicas[0], &["a", "b", "c"]).await;

    // One replica alone does not reach min_requests: no verdict either way.
    requests(&client, &replicas[0], 25).await;
    let alone = wait_web_at(
        &client,
        admin_of(&replicas[0]),
        LIMIT,
        "a's own verdict",
        |web| version(web, "canary")["guard_verdict"] == "insufficient data: 25/60 requests",
    )
    .await;
    assert_eq!(version(&alone, "canary")["weight"], 100, "{alone:#}");

    for veer in &replicas[1..] {
        requests(&client, veer, 25).await;
    }
    // The fleet's 75 requests are judged: one replica trips, and its latch
    // reaches the others through the shared state.
    for veer in &replicas {
        wait_web_at(
            &client,
            admin_of(veer),
            LIMIT,
            "the canary reverted on every replica",
            |web| {
                version(web, "canary")["weight"] == 0
                    && web["guard"]["latches"]
                        .as_array()
                        .is_some_and(|l| !l.is_empty())
            },
        )
        .await;
    }
    // The trip was judged on the fleet's figures: its event counts more
    // requests than any one replica ever had.
    let mut events = Vec::new();
    for veer in &replicas {
        let status = status(&client, veer).await;
        let web = &status["services"][0];
        events.extend(
            web["guard"]["events"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
    }
    assert!(!events.is_empty(), "some replica tripped");
    for event in &events {
        assert_eq!(event["reason"], "error_rate", "{event:#}");
        let judged = event["window_requests"].as_u64().expect("window_requests");
        assert!(judged >= 60, "judged on the fleet's sum: {event:#}");
        // Every judged request failed with a 500: the event says so.
        assert_eq!(
            event["errors_by_reason"],
            serde_json::json!({ "5xx": judged }),
            "{event:#}"
        );
    }
    // Each replica shows the fleet's sum beside its own figures. A replica
    // publishes once per guard interval, so the latch (written at once) can
    // reach the others before the last replica's final figures do: wait for
    // the sum to hold all 75, then look at it whole.
    let web = wait_web_at(
        &client,
        admin_of(&replicas[1]),
        LIMIT,
        "the fleet's sum of all 75 requests",
        |web| version(web, "canary")["fleet"]["window"]["requests"] == 75,
    )
    .await;
    let fleet = &version(&web, "canary")["fleet"];
    assert_eq!(fleet["replicas"], 3, "{web:#}");
    // Errors by reason, published by every replica and summed.
    assert_eq!(
        fleet["errors_by_reason"],
        serde_json::json!({ "5xx": 75 }),
        "{web:#}"
    );
    assert_eq!(version(&web, "canary")["window"]["requests"], 25, "{web:#}");
}

#[tokio::test]
async fn a_killed_replicas_figures_leave_the_sum_with_its_lease() {
    let etcd = Etcd::start();
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("state dir"))
        .collect();
    let guard = "baseline: stable, interval: 1s, window: 60s, min_requests: 100000, \
                 max_error_rate: 0.2";
    let mut replicas: Vec<VeerProcess> = ["a", "b", "c"]
        .iter()
        .zip(&dirs)
        .map(|(name, dir)| replica(name, &stable, &canary, &etcd, guard, dir.path()))
        .collect();
    let client = http1_client();
    wait_for_replicas(&client, &replicas[0], &["a", "b", "c"]).await;
    for (veer, n) in replicas.iter().zip([10, 20, 30]) {
        requests(&client, veer, n).await;
    }
    let admin_a = admin_of(&replicas[0]);
    wait_web_at(&client, admin_a, LIMIT, "the fleet's sum on a", |web| {
        version(web, "canary")["fleet"]["window"]["requests"] == 60
            && version(web, "canary")["fleet"]["replicas"] == 3
    })
    .await;
    // The guard judges the sum (at its next pass after the siblings' figures came).
    wait_web_at(&client, admin_a, LIMIT, "a's verdict on the sum", |web| {
        version(web, "canary")["guard_verdict"]
            == "fleet of 3: insufficient data: 60/100000 requests"
    })
    .await;

    // Killed without a goodbye: only its lease's end takes its figures out.
    drop(replicas.pop());
    wait_web_at(
        &client,
        admin_a,
        LIMIT,
        "c's figures gone from a's sum",
        |web| {
            version(web, "canary")["fleet"]["window"]["requests"] == 30
                && version(web, "canary")["fleet"]["replicas"] == 2
        },
    )
    .await;
    wait_for_replicas(&client, &replicas[0], &["a", "b"]).await;

    // Stopped cleanly, a replica leaves at once (it revokes its lease).
    replicas[1].signal("TERM");
    wait_web_at(
        &client,
        admin_a,
        LIMIT,
        "b's figures gone from a's sum",
        |web| {
            version(web, "canary")["fleet"]["window"]["requests"] == 10
                && version(web, "canary")["fleet"]["replicas"] == 1
        },
    )
    .await;
}

#[tokio::test]
async fn two_replicas_under_one_name_are_told_and_never_counted_twice() {
    let etcd = Etcd::start();
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let guard = "baseline: stable, interval: 1s, window: 60s, min_requests: 100000, \
                 max_error_rate: 0.2";
    let first = replica("same", &stable, &canary, &etcd, guard, dir_a.path());
    let client = http1_client();
    wait_for_replicas(&client, &first, &["same"]).await;
    let second = replica("same", &stable, &canary, &etcd, guard, dir_b.path());
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !second
        .stderr()
        .contains("another live replica has this name")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second replica says its name is taken:\n{}",
            second.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its requests are not summed into the first one's figures.
    requests(&client, &second, 10).await;
    requests(&client, &first, 5).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = status(&client, &first).await;
    let fleet = &version(&status["services"][0], "canary")["fleet"];
    assert_eq!(fleet["replicas"], 1, "{status:#}");
    assert_eq!(fleet["window"]["requests"], 5, "{status:#}");
}
