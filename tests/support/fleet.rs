//! Replicas of the real binary in a fleet on a real etcd: a config for the
//! service `web` (stable and canary) with a `fleet:` block, and reads of the
//! fleet's part of `/status` and `/metrics`.

use std::time::Duration;

use serde_json::Value;

use super::binary::VeerProcess;
use super::client::{get, send, HttpClient};
use super::metrics::{scrape, sum};
use super::release::{admin_of, status_at, v, version, web, web_yaml, BIN};
use super::upstream::Upstream;

pub const LIMIT: Duration = Duration::from_secs(20);

/// A replica of `web` (stable 90, canary 10, a guard that needs 1,000
/// requests) on the etcd at `endpoint` under `prefix`, with its copy in
/// `state_dir`.
pub fn web_replica(
    stable: &Upstream,
    canary: &Upstream,
    endpoint: &str,
    prefix: &str,
    state_dir: &std::path::Path,
) -> VeerProcess {
    let blocks = format!(
        "    guard: {{ baseline: stable, max_error_rate: 0.5, min_requests: 1000 }}\n\
         fleet:\n  etcd: {{ endpoints: [\"{endpoint}\"], prefix: {prefix} }}\n"
    );
    let yaml = web_yaml(
        &[
            v("stable", stable.addr(), 90),
            v("canary", canary.addr(), 10),
        ],
        &blocks,
        Some(state_dir),
    );
    VeerProcess::start(BIN, &yaml)
}

/// One replica's config: its name, the etcd block's fields after
/// `endpoints` and `prefix` (`tls: {...}`, `timeout: 1s`, ...), the guard,
/// and the weights of stable and canary.
pub struct ReplicaPlan<'a> {
    pub name: &'a str,
    pub endpoints: Vec<String>,
    pub prefix: &'a str,
    pub etcd_extra: String,
    pub guard: &'a str,
    pub weights: (u32, u32),
}

impl<'a> ReplicaPlan<'a> {
    pub fn new(name: &'a str, endpoints: Vec<String>) -> ReplicaPlan<'a> {
        ReplicaPlan {
            name,
            endpoints,
            prefix: "/veer/faults",
            etcd_extra: String::new(),
            guard: "baseline: stable, interval: 1s, window: 30s, min_requests: 10, \
                    max_error_rate: 0.2, consecutive: 1",
            weights: (0, 100),
        }
    }

    pub fn yaml(&self, stable: &Upstream, canary: &Upstream, dir: &std::path::Path) -> String {
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let extra = if self.etcd_extra.is_empty() {
            String::new()
        } else {
            format!(", {}", self.etcd_extra)
        };
        let blocks = format!(
            "    guard: {{ {} }}\n\
             fleet:\n  replica: {}\n  etcd: {{ endpoints: [{endpoints}], prefix: {}{extra} }}\n",
            self.guard, self.name, self.prefix
        );
        web_yaml(
            &[
                v("stable", stable.addr(), self.weights.0),
                v("canary", canary.addr(), self.weights.1),
            ],
            &blocks,
            Some(dir),
        )
    }

    pub fn start(
        &self,
        stable: &Upstream,
        canary: &Upstream,
        dir: &std::path::Path,
    ) -> VeerProcess {
        VeerProcess::start(BIN, &self.yaml(stable, canary, dir))
    }
}

/// `n` GETs through the replica's proxy; every status, in order.
pub async fn requests(client: &HttpClient, veer: &VeerProcess, n: usize) -> Vec<u16> {
    let url = format!("http://{}/", veer.listener("public"));
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        statuses.push(send(client, get(&url, None)).await.status.as_u16());
    }
    statuses
}

pub async fn status(client: &HttpClient, veer: &VeerProcess) -> Value {
    status_at(client, admin_of(veer)).await
}

/// `veer_fleet_connected` as the replica's `/metrics` says.
pub async fn connected_metric(client: &HttpClient, veer: &VeerProcess) -> f64 {
    sum(
        &scrape(client, admin_of(veer)).await,
        "veer_fleet_connected",
        &[],
    )
}

pub fn live_replicas(status: &Value) -> Vec<String> {
    status["fleet"]["replicas"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The canary is held at weight 0 by a latch.
pub fn latched(status: &Value) -> bool {
    let web = web(status);
    version(web, "canary")["weight"] == 0
        && web["guard"]["latches"]
            .as_array()
            .is_some_and(|l| !l.is_empty())
}

/// Polls the replica's whole `/status` until `cond`; panics with the last one.
pub async fn wait_status(
    client: &HttpClient,
    veer: &VeerProcess,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let status = status(client, veer).await;
        if cond(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached within {LIMIT:?}; last /status:\n{status:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the replica is connected and sees exactly `replicas` live.
pub async fn wait_fleet(client: &HttpClient, veer: &VeerProcess, replicas: &[&str]) {
    wait_status(client, veer, "the fleet assembled", |s| {
        s["fleet"]["connected"] == true && live_replicas(s) == replicas
    })
    .await;
}
