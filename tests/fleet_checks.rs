//! A rollout's `checks:` in a fleet, with real binaries on one real etcd:
//! only the replica that leads the rollouts runs them (the others would
//! ask the same source the same question), and the steps they gate still
//! advance on every replica. Each replica is given its own check URL, so
//! the source can tell who asked. Needs etcd and `protoc`:
//! `cargo test --features fleet --test fleet_checks`.
#![cfg(feature = "fleet")]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::binary::VeerProcess;
use support::client::{get, http1_client, send};
use support::config::LISTENER;
use support::etcd::Etcd;
use support::release::{admin_of, status_at, v, wait_web_at, web, web_yaml, BIN};
use support::upstream::Upstream;

const LIMIT: Duration = Duration::from_secs(40);

/// A JSON source that answers `{"ratio": 0.01}` (a passing value) on every
/// path and counts the asks by path.
struct Source {
    addr: std::net::SocketAddr,
    asked: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Source {
    async fn start() -> Source {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the check source");
        let addr = listener.local_addr().expect("its address");
        let asked = Arc::new(Mutex::new(BTreeMap::new()));
        let counts = Arc::clone(&asked);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counts = Arc::clone(&counts);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let path = text.split(' ').nth(1).unwrap_or("").to_string();
                    *counts.lock().expect("counts").entry(path).or_insert(0) += 1;
                    let body = r#"{"ratio": 0.01}"#;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        Source { addr, asked }
    }

    fn asked(&self, path: &str) -> u64 {
        self.asked
            .lock()
            .expect("counts")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

fn replica(
    name: &str,
    stable: &Upstream,
    canary: &Upstream,
    etcd: &Etcd,
    source: &Source,
    dir: &std::path::Path,
) -> VeerProcess {
    let blocks = format!(
        "    guard: {{ baseline: stable, window: 5s, min_requests: 1, max_error_rate: 0.5 }}\n\
         \x20   rollout:\n\
         \x20     candidate: canary\n\
         \x20     steps: [50, 100]\n\
         \x20     hold: 2s\n\
         \x20     checks:\n\
         \x20       - name: conversion\n\
         \x20         web: {{ url: 'http://{}/{name}', field: ratio }}\n\
         \x20         max: 0.02\n\
         \x20         interval: 1s\n\
         fleet:\n  replica: {name}\n  leader_ttl: 3s\n  \
         etcd: {{ endpoints: [\"{}\"], prefix: /veer/checks, timeout: 1s }}\n",
        source.addr,
        etcd.endpoint()
    );
    let yaml = web_yaml(
        &[
            v("stable", stable.addr(), 100),
            v("canary", canary.addr(), 0),
        ],
        &blocks,
        Some(dir),
    );
    VeerProcess::start(BIN, &yaml)
}

#[tokio::test]
async fn only_the_leader_runs_a_rollouts_checks_and_every_replica_follows_its_steps() {
    let etcd = Etcd::start();
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let source = Source::start().await;
    let dirs: Vec<_> = (0..2)
        .map(|_| tempfile::tempdir().expect("state dir"))
        .collect();
    let names = ["r1", "r2"];
    let replicas: Vec<VeerProcess> = names
        .iter()
        .zip(&dirs)
        .map(|(name, dir)| replica(name, &stable, &canary, &etcd, &source, dir.path()))
        .collect();
    let client = http1_client();
    // A trickle of traffic through both replicas (a step needs some), bounded
    // in count and time.
    let urls: Vec<String> = replicas
        .iter()
        .map(|r| format!("http://{}/", r.listener(LISTENER)))
        .collect();
    let trickle = {
        let client = client.clone();
        tokio::spawn(async move {
            for _ in 0..800 {
                for url in &urls {
                    send(&client, get(url, None)).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // The rollout completes on every replica: its checks passed on the
    // leader, whose steps the follower takes from etcd.
    let mut leader = None;
    for veer in &replicas {
        let web = wait_web_at(
            &client,
            admin_of(veer),
            LIMIT,
            "the rollout completed",
            |web| web["rollout"]["state"] == "completed",
        )
        .await;
        assert_eq!(web["rollout"]["state"], "completed");
    }
    for (i, veer) in replicas.iter().enumerate() {
        let status = status_at(&client, admin_of(veer)).await;
        if status["rollout_leader"]["leading"] == true {
            leader = Some(i);
        }
        let _ = web(&status);
    }
    trickle.abort();
    let leader = leader.expect("one replica leads");
    let follower = 1 - leader;
    let (asked_leader, asked_follower) = (
        source.asked(&format!("/{}", names[leader])),
        source.asked(&format!("/{}", names[follower])),
    );
    assert!(
        asked_leader >= 2,
        "the leader ran the check at each step ({asked_leader} asks)"
    );
    assert_eq!(
        asked_follower, 0,
        "the follower never asked the source (the leader asked {asked_leader} times)"
    );
}
