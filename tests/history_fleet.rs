//! The release history in a fleet: replicas of the real binary sharing one
//! etcd show the same records, with the same ids, whichever replica made
//! the change — and a replica started with an empty `state_dir` shows them
//! too. Needs etcd and `protoc`: `cargo test --features fleet --test
//! history_fleet` (`.ci/fleet`).
#![cfg(feature = "fleet")]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::binary::VeerProcess;
use support::client::{get, http1_client, send, HttpClient};
use support::etcd::Etcd;
use support::release::{admin_of, admin_post};
use support::upstream::Upstream;

const LIMIT: Duration = Duration::from_secs(15);

fn replica(
    stable: &Upstream,
    canary: &Upstream,
    etcd: &Etcd,
    dir: &std::path::Path,
) -> VeerProcess {
    support::fleet::web_replica(stable, canary, &etcd.endpoint(), "/veer/history", dir)
}

/// `(kind, id)` of each record, newest first.
async fn records(client: &HttpClient, admin: std::net::SocketAddr) -> Vec<(String, String)> {
    let answer = send(
        client,
        get(&format!("http://{admin}/services/web/history"), None),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body: Value = serde_json::from_slice(&answer.body).expect("JSON");
    body["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap_or("?").into(),
                r["id"].as_str().unwrap_or("?").into(),
            )
        })
        .collect()
}

async fn until_kinds(
    client: &HttpClient,
    admin: std::net::SocketAddr,
    kinds: &[&str],
) -> Vec<(String, String)> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let seen = records(client, admin).await;
        if seen
            .iter()
            .map(|(k, _)| k.as_str())
            .eq(kinds.iter().copied())
        {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{kinds:?} not seen on {admin} within {LIMIT:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_replica_shows_the_fleets_history() {
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

    let body = serde_json::json!({"stable": 80, "canary": 20});
    let answer = admin_post(&client, admin_a, "/services/web/weights", Some(body)).await;
    assert_eq!(answer.status, 200, "weights on a: {}", answer.text());
    until_kinds(&client, admin_b, &["weights"]).await;
    let answer = admin_post(&client, admin_b, "/services/web/rollback", None).await;
    assert_eq!(answer.status, 200, "rollback on b: {}", answer.text());
    let on_a = until_kinds(&client, admin_a, &["rollback", "weights"]).await;
    let on_b = until_kinds(&client, admin_b, &["rollback", "weights"]).await;
    assert_eq!(on_a, on_b, "the same records, the same ids");

    drop(b);
    let c = replica(&stable, &canary, &etcd, dir_c.path());
    let on_c = until_kinds(&client, admin_of(&c), &["rollback", "weights"]).await;
    assert_eq!(on_c, on_a, "a new replica starts with the fleet's history");
    drop(a);
    drop(c);
}
