//! The fleet's faults, each against a real etcd with replicas of the real
//! binary: etcd away at start, etcd lost while running, one member of three
//! killed, etcd paused with SIGSTOP. In each, traffic flows, decisions made
//! meanwhile are kept, and the fleet converges when etcd is back. Needs etcd
//! and `protoc`: `cargo test --features fleet --test fleet_faults`.
#![cfg(feature = "fleet")]

mod support;

use std::time::Duration;

use support::client::http1_client;
use support::etcd::Etcd;
use support::fleet::{
    connected_metric, latched, requests, status, wait_fleet, wait_status, ReplicaPlan,
};
use support::load::{tally, upstream_of_200, LoadPlan};
use support::release::{admin_of, admin_post, version, web};
use support::upstream::Upstream;

/// A guard that never trips on its own: these tests trip by hand or not at all.
const QUIET: &str = "baseline: stable, interval: 1s, window: 30s, min_requests: 100000, \
                     max_error_rate: 0.2";

#[tokio::test]
async fn etcd_away_at_start_serves_from_config_and_joins_when_it_comes() {
    let mut etcd = Etcd::unstarted();
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut plan = ReplicaPlan::new("a", vec![etcd.endpoint()]);
    plan.etcd_extra = "timeout: 1s".into();
    plan.guard = QUIET;
    plan.weights = (50, 50);
    let a = plan.start(&stable, &canary, dir_a.path());
    let client = http1_client();

    // Serving from its config, and saying it is alone.
    let first = status(&client, &a).await;
    assert_eq!(first["fleet"]["connected"], false, "{first:#}");
    assert_eq!(first["fleet"]["replica"], "a");
    assert_eq!(first["fleet"]["last_sync"], serde_json::Value::Null);
    assert_eq!(connected_metric(&client, &a).await, 0.0);
    let statuses = requests(&client, &a, 20).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert!(
        a.stderr().contains("could not be read") || a.stderr().contains("did not answer"),
        "the log says etcd is away:\n{}",
        a.stderr()
    );

    // A rollback while etcd is away holds here at once ...
    let answer = admin_post(&client, admin_of(&a), "/services/web/rollback", None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(latched(&status(&client, &a).await));

    // ... and reaches the fleet when etcd comes.
    etcd.begin();
    wait_fleet(&client, &a, &["a"]).await;
    assert_eq!(connected_metric(&client, &a).await, 1.0);
    let joined = status(&client, &a).await;
    assert!(joined["fleet"]["last_sync"].is_string(), "{joined:#}");
    let mut plan_b = ReplicaPlan::new("b", vec![etcd.endpoint()]);
    plan_b.guard = QUIET;
    plan_b.weights = (50, 50);
    let b = plan_b.start(&stable, &canary, dir_b.path());
    let first_b = status(&client, &b).await;
    assert!(
        latched(&first_b),
        "a replica started later finds the rollback a made while etcd was away: {first_b:#}"
    );
    assert!(
        a.stderr().contains("connected to etcd"),
        "the log says when etcd came:\n{}",
        a.stderr()
    );
}

#[tokio::test]
async fn etcd_lost_while_running_a_local_trip_reverts_at_once_and_reaches_the_fleet_later() {
    let mut etcd = Etcd::start();
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut plan = ReplicaPlan::new("a", vec![etcd.endpoint()]);
    plan.etcd_extra = "timeout: 1s".into();
    let a = plan.start(&stable, &canary, dir_a.path());
    plan.name = "b";
    let b = plan.start(&stable, &canary, dir_b.path());
    let client = http1_client();
    wait_fleet(&client, &a, &["a", "b"]).await;
    wait_fleet(&client, &b, &["a", "b"]).await;

    let connects = a.stderr().matches("connected to etcd").count();
    etcd.kill();
    wait_status(&client, &a, "a sees etcd gone", |s| {
        s["fleet"]["connected"] == false
    })
    .await;
    assert_eq!(connected_metric(&client, &a).await, 0.0);
    let log = a.stderr();
    assert_eq!(
        log.matches("lost etcd").count(),
        1,
        "logged once per change:\n{log}"
    );

    // The canary fails on a: a trips on its own figures, at once.
    canary.set_fail_ratio(1.0);
    requests(&client, &a, 20).await;
    wait_status(&client, &a, "a reverted while etcd is away", latched).await;
    let statuses = requests(&client, &a, 10).await;
    assert!(
        statuses.iter().all(|&s| s == 200),
        "the baseline serves: {statuses:?}"
    );
    // b cannot know yet.
    assert_eq!(
        version(web(&status(&client, &b).await), "canary")["weight"],
        100
    );

    // etcd back: a's trip reaches b, nothing lost.
    etcd.restart();
    wait_status(&client, &b, "a's trip in force on b", latched).await;
    wait_fleet(&client, &a, &["a", "b"]).await;
    assert_eq!(connected_metric(&client, &a).await, 1.0);
    let log = a.stderr();
    assert_eq!(
        log.matches("connected to etcd").count(),
        connects + 1,
        "etcd's return is logged once:\n{log}"
    );
}

#[tokio::test]
async fn one_member_of_three_killed_interrupts_nothing_and_loses_no_write() {
    let mut members = Etcd::cluster(3);
    let endpoints: Vec<String> = members.iter().map(Etcd::endpoint).collect();
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut plan = ReplicaPlan::new("a", endpoints);
    plan.guard = QUIET;
    plan.weights = (50, 50);
    let a = plan.start(&stable, &canary, dir_a.path());
    plan.name = "b";
    let b = plan.start(&stable, &canary, dir_b.path());
    let client = http1_client();
    wait_fleet(&client, &a, &["a", "b"]).await;

    let load = LoadPlan::paced(format!("http://{}/", a.listener("public")), 50)
        .max_requests(200)
        .max_run(Duration::from_secs(6))
        .answer_limit(Duration::from_secs(2))
        .start(upstream_of_200);
    members[0].kill();
    let answer = admin_post(&client, admin_of(&a), "/services/web/rollback", None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    wait_status(&client, &b, "a's rollback in force on b", latched).await;
    // And the other way, through the two members left.
    let answer = admin_post(&client, admin_of(&b), "/services/web/resume", None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    wait_status(&client, &a, "b's resume in force on a", |s| {
        version(web(s), "canary")["weight"] == 50
    })
    .await;
    let samples = load.finish().await;
    let failures: Vec<_> = samples.iter().filter(|s| s.record.is_err()).collect();
    assert!(
        failures.is_empty(),
        "no request failed: {:?}",
        tally(&samples)
    );
    // A watch held on the killed member moves to another one.
    wait_fleet(&client, &a, &["a", "b"]).await;
    wait_fleet(&client, &b, &["a", "b"]).await;
    for veer in [&a, &b] {
        let log = veer.stderr();
        assert!(
            !log.contains("another live replica has this name"),
            "a replica that reconnects keeps its name:\n{log}"
        );
    }
}

#[tokio::test]
async fn etcd_paused_stalls_no_request_path_and_the_fleet_converges_after() {
    let etcd = Etcd::start();
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut plan = ReplicaPlan::new("a", vec![etcd.endpoint()]);
    plan.etcd_extra = "timeout: 1s".into();
    plan.guard = QUIET;
    plan.weights = (50, 50);
    let a = plan.start(&stable, &canary, dir_a.path());
    plan.name = "b";
    let b = plan.start(&stable, &canary, dir_b.path());
    let client = http1_client();
    wait_fleet(&client, &a, &["a", "b"]).await;
    wait_fleet(&client, &b, &["a", "b"]).await;

    etcd.pause();
    let loads: Vec<_> = [&a, &b]
        .iter()
        .map(|veer| {
            LoadPlan::paced(format!("http://{}/", veer.listener("public")), 50)
                .max_requests(150)
                .max_run(Duration::from_secs(15))
                .answer_limit(Duration::from_secs(2))
                .start(upstream_of_200)
        })
        .collect();
    // The control plane answers too: a rollback holds on a at once.
    let answer = admin_post(&client, admin_of(&a), "/services/web/rollback", None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(latched(&status(&client, &a).await));
    for load in loads {
        let samples = load.join().await;
        let failures = samples.iter().filter(|s| s.record.is_err()).count();
        assert_eq!(failures, 0, "no request stalled: {:?}", tally(&samples));
        assert_eq!(samples.len(), 150, "the whole load ran");
    }

    etcd.resume();
    wait_status(
        &client,
        &b,
        "a's rollback in force on b after SIGCONT",
        latched,
    )
    .await;
    wait_fleet(&client, &a, &["a", "b"]).await;
    wait_fleet(&client, &b, &["a", "b"]).await;
    // Windows flow again: b's requests reach a's sum.
    requests(&client, &b, 7).await;
    wait_status(&client, &a, "b's figures in a's sum after SIGCONT", |s| {
        version(web(s), "stable")["fleet"]["replicas"] == 2
    })
    .await;
}
