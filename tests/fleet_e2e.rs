//! Replicas of the real binary sharing one etcd: an operator's rollback on
//! one replica is in force on the others, a replica started with an empty
//! `state_dir` serves the fleet's latch from its first request, and a resume
//! anywhere gives the canary its traffic back everywhere. Needs etcd and
//! `protoc`: `cargo test --features fleet --test fleet_e2e`.
#![cfg(feature = "fleet")]

mod support;

use std::time::Duration;

use support::binary::VeerProcess;
use support::client::http1_client;
use support::etcd::Etcd;
use support::release::{admin_of, admin_post, status_at, version, wait_web_at, web};
use support::upstream::Upstream;

const LIMIT: Duration = Duration::from_secs(15);

fn replica(
    stable: &Upstream,
    canary: &Upstream,
    etcd: &Etcd,
    state_dir: &std::path::Path,
) -> VeerProcess {
    support::fleet::web_replica(stable, canary, &etcd.endpoint(), "/veer/e2e", state_dir)
}

fn latched(web: &serde_json::Value) -> bool {
    version(web, "canary")["weight"] == 0
        && web["guard"]["latches"]
            .as_array()
            .is_some_and(|l| !l.is_empty())
}

#[tokio::test]
async fn a_rollback_on_one_replica_holds_on_every_replica_and_on_a_new_one() {
    let etcd = Etcd::start();
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let (dir_a, dir_b, dir_c) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let a = replica(&stable, &canary, &etcd, dir_a.path());
    let b = replica(&stable, &canary, &etcd, dir_b.path());
    let client = http1_client();
    let (admin_a, admin_b) = (admin_of(&a), admin_of(&b));

    let answer = admin_post(&client, admin_a, "/services/web/rollback", None).await;
    assert_eq!(answer.status, 200, "rollback on a: {}", answer.text());
    wait_web_at(
        &client,
        admin_b,
        LIMIT,
        "a's rollback in force on b",
        latched,
    )
    .await;

    // A replica rescheduled with an empty state_dir: the fleet's latch is in
    // force before it reports ready, so its very first /status shows it.
    drop(b);
    let c = replica(&stable, &canary, &etcd, dir_c.path());
    let first = web(&status_at(&client, admin_of(&c)).await).clone();
    assert!(latched(&first), "the new replica starts latched: {first:#}");

    // A resume on the new replica gives the canary its 10 % back on a.
    let answer = admin_post(&client, admin_of(&c), "/services/web/resume", None).await;
    assert_eq!(answer.status, 200, "resume on c: {}", answer.text());
    wait_web_at(&client, admin_a, LIMIT, "c's resume in force on a", |web| {
        version(web, "canary")["weight"] == 10
    })
    .await;
    drop(a);
    drop(c);
}
