//! The fleet's safety against a real etcd: TLS with a client certificate,
//! a user whose password is read from a file (and whose role reaches only
//! veer's prefix), values veer cannot read under the prefix, and no key
//! touched outside it. Needs etcd, etcdctl and `protoc`:
//! `cargo test --features fleet --test fleet_safety`.
#![cfg(feature = "fleet")]

mod support;

use support::client::http1_client;
use support::etcd::{Etcd, EtcdTls};
use support::fleet::{latched, requests, status, wait_fleet, wait_status, ReplicaPlan};
use support::release::{admin_of, admin_post, version, web};
use support::tls::Ca;
use support::upstream::Upstream;

const QUIET: &str = "baseline: stable, interval: 1s, window: 30s, min_requests: 100000, \
                     max_error_rate: 0.2";

fn quote(path: &std::path::Path) -> String {
    serde_json::Value::String(path.display().to_string()).to_string()
}

#[tokio::test]
async fn etcd_over_tls_with_a_client_certificate() {
    let pki = tempfile::tempdir().expect("pki dir");
    let ca = Ca::new("etcd test CA");
    let ca_file = ca.write(pki.path(), "ca");
    let (server_cert, server_key) = ca
        .leaf(&["127.0.0.1", "localhost"])
        .write(pki.path(), "etcd");
    let (client_cert, client_key) = ca.leaf(&["veer"]).write(pki.path(), "veer");
    let etcd = Etcd::start_tls(EtcdTls {
        ca: ca_file.clone(),
        cert: server_cert,
        key: server_key,
    });
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let (dir_a, dir_b, dir_c) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut plan = ReplicaPlan::new("a", vec![etcd.endpoint()]);
    plan.guard = QUIET;
    plan.weights = (50, 50);
    plan.etcd_extra = format!(
        "tls: {{ ca: {}, cert: {}, key: {} }}",
        quote(&ca_file),
        quote(&client_cert),
        quote(&client_key)
    );
    let a = plan.start(&stable, &canary, dir_a.path());
    plan.name = "b";
    let b = plan.start(&stable, &canary, dir_b.path());
    let client = http1_client();
    wait_fleet(&client, &a, &["a", "b"]).await;
    let answer = admin_post(&client, admin_of(&a), "/services/web/rollback", None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    wait_status(&client, &b, "a's rollback in force on b over TLS", latched).await;

    // Without a client certificate etcd refuses it: the replica serves
    // alone, and says so.
    plan.name = "c";
    plan.etcd_extra = format!("tls: {{ ca: {} }}, timeout: 1s", quote(&ca_file));
    let c = plan.start(&stable, &canary, dir_c.path());
    let alone = status(&client, &c).await;
    assert_eq!(alone["fleet"]["connected"], false, "{alone:#}");
    assert!(requests(&client, &c, 5).await.iter().all(|&s| s == 200));
    assert!(
        c.stderr().contains("veer serves from its config"),
        "{}",
        c.stderr()
    );
}

#[tokio::test]
async fn etcd_with_auth_a_user_whose_password_is_in_a_file() {
    let etcd = Etcd::start();
    let prefix = "/veer/safe";
    etcd.etcdctl(&["user", "add", "root:root-secret"]);
    etcd.etcdctl(&["user", "add", "veer:veer-secret"]);
    etcd.etcdctl(&["role", "add", "veer"]);
    // veer's user may touch its prefix and nothing else: a key read or
    // written outside it would fail, and the fleet would not work.
    etcd.etcdctl(&[
        "role",
        "grant-permission",
        "veer",
        "--prefix=true",
        "readwrite",
        &format!("{prefix}/"),
    ]);
    etcd.etcdctl(&["user", "grant-role", "veer", "veer"]);
    etcd.etcdctl(&["auth", "enable"]);

    let secrets = tempfile::tempdir().expect("secrets");
    let good = secrets.path().join("password");
    std::fs::write(&good, "veer-secret\n").expect("write password");
    let bad = secrets.path().join("wrong");
    std::fs::write(&bad, "not-it\n").expect("write password");

    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let (dir_a, dir_b, dir_c) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut plan = ReplicaPlan::new("a", vec![etcd.endpoint()]);
    plan.prefix = prefix;
    plan.guard = QUIET;
    plan.weights = (50, 50);
    plan.etcd_extra = format!("username: veer, password_file: {}", quote(&good));
    let a = plan.start(&stable, &canary, dir_a.path());
    plan.name = "b";
    let b = plan.start(&stable, &canary, dir_b.path());
    let client = http1_client();
    wait_fleet(&client, &a, &["a", "b"]).await;
    // Windows published and read under the user's permissions.
    requests(&client, &b, 10).await;
    wait_status(&client, &a, "b's figures in a's sum", |s| {
        version(web(s), "stable")["fleet"]["replicas"] == 2
            || version(web(s), "canary")["fleet"]["replicas"] == 2
    })
    .await;
    let answer = admin_post(&client, admin_of(&a), "/services/web/rollback", None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    wait_status(&client, &b, "a's rollback in force on b", latched).await;
    let keys = etcd.etcdctl(&[
        "--user",
        "root:root-secret",
        "get",
        "--prefix",
        "--keys-only",
        &format!("{prefix}/state/"),
    ]);
    assert!(keys.contains(&format!("{prefix}/state/web")), "{keys}");

    // A wrong password: refused, said in the log, and traffic still flows.
    plan.name = "c";
    plan.etcd_extra = format!(
        "username: veer, password_file: {}, timeout: 1s",
        quote(&bad)
    );
    let c = plan.start(&stable, &canary, dir_c.path());
    assert_eq!(status(&client, &c).await["fleet"]["connected"], false);
    assert!(requests(&client, &c, 5).await.iter().all(|&s| s == 200));
    let log = c.stderr();
    assert!(log.contains("authentication failed"), "{log}");
}

#[tokio::test]
async fn values_veer_cannot_read_are_ignored_and_nothing_outside_the_prefix_is_touched() {
    let etcd = Etcd::start();
    let prefix = "/veer/faults";
    etcd.etcdctl(&["put", "/other/app", "theirs"]);
    etcd.etcdctl(&["put", "/veer/faultsX/state/web", "a neighbour's"]);
    etcd.etcdctl(&["put", &format!("{prefix}/state/legacy"), "{not json"]);
    etcd.etcdctl(&["put", &format!("{prefix}/windows/web/zz"), "[1, 2"]);

    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut plan = ReplicaPlan::new("a", vec![etcd.endpoint()]);
    plan.guard = QUIET;
    plan.weights = (50, 50);
    let a = plan.start(&stable, &canary, dir_a.path());
    plan.name = "b";
    let b = plan.start(&stable, &canary, dir_b.path());
    let client = http1_client();
    wait_fleet(&client, &a, &["a", "b"]).await;
    assert!(requests(&client, &a, 10).await.iter().all(|&s| s == 200));
    requests(&client, &b, 10).await;
    // The unreadable sibling `zz` is in no sum; a and b are.
    wait_status(&client, &a, "b's figures in a's sum", |s| {
        let web = web(s);
        let replicas = |v: &str| version(web, v)["fleet"]["replicas"].as_u64().unwrap_or(0);
        replicas("stable").max(replicas("canary")) == 2
    })
    .await;
    let log = a.stderr();
    assert!(
        log.contains("etcd holds a value veer cannot read; ignored"),
        "{log}"
    );
    assert!(log.contains(&format!("{prefix}/windows/web/zz")), "{log}");
    assert!(log.contains(&format!("{prefix}/state/legacy")), "{log}");

    // The fleet works around them: a rollback reaches b.
    let answer = admin_post(&client, admin_of(&a), "/services/web/rollback", None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    wait_status(&client, &b, "a's rollback in force on b", latched).await;

    // Every key veer holds is under its prefix; the others are untouched.
    let keys = etcd.etcdctl(&["get", "", "--prefix", "--keys-only"]);
    for key in keys.lines().filter(|k| !k.is_empty()) {
        assert!(
            key.starts_with(&format!("{prefix}/"))
                || key == "/other/app"
                || key == "/veer/faultsX/state/web",
            "a key outside veer's prefix: {key}\n{keys}"
        );
    }
    assert_eq!(
        etcd.etcdctl(&["get", "--print-value-only", "/other/app"])
            .trim(),
        "theirs"
    );
    assert_eq!(
        etcd.etcdctl(&["get", "--print-value-only", "/veer/faultsX/state/web"])
            .trim(),
        "a neighbour's"
    );
    assert_eq!(
        etcd.etcdctl(&[
            "get",
            "--print-value-only",
            &format!("{prefix}/state/legacy")
        ])
        .trim(),
        "{not json",
        "a value veer cannot read is never overwritten"
    );
    for expected in [
        "replicas/a",
        "replicas/b",
        "windows/web/a",
        "windows/web/b",
        "state/web",
    ] {
        assert!(
            keys.contains(&format!("{prefix}/{expected}")),
            "{expected} in {keys}"
        );
    }
}
