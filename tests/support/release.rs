//! The release process (rollouts, A/B rules, sticky users, `veer wait`): a
//! config for one service `web`, veer in-process with its admin API, `/status`
//! reads, the `veer` binary as a CLI, a `/status` watcher whose step can tag
//! the paced load's answers with what `/status` said while they ran, and a
//! witness rollout whose hold counts the rollout runner's running time, for
//! tests that must show a rollout did not move when it had the chance.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request};
use serde_json::Value;
use tokio::task::JoinHandle;
use veer::server::RunningProxy;

use super::binary::VeerProcess;
use super::client::{empty, full, get, http1_client, send, Answer, HttpClient};
use super::config::LISTENER;
use super::harness::start_with_admin;
use super::load::{status_and_upstream, Load, LoadPlan};
use super::within;

/// Bound on any single wait of these tests (a CLI run, a shutdown, a poll).
pub const LIMIT: Duration = Duration::from_secs(30);
pub const BIN: &str = env!("CARGO_BIN_EXE_veer");
/// The service every config here has.
pub const SERVICE: &str = "web";

// ---------------------------------------------------------------- config

/// One version of `web`.
#[derive(Debug, Clone)]
pub struct V {
    pub name: &'static str,
    pub revision: &'static str,
    pub endpoint: SocketAddr,
    pub weight: u32,
}

pub fn v(name: &'static str, endpoint: SocketAddr, weight: u32) -> V {
    V {
        name,
        revision: if name == "stable" { "1.1.0" } else { "1.2.0" },
        endpoint,
        weight,
    }
}

fn quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// A config with the listener `public` and the admin API on port 0, an
/// optional `state_dir`, and the service `web` with `versions` followed by
/// `blocks`: the service's other fields as YAML lines, indented by 4 spaces
/// (`    guard: {...}`).
pub fn web_yaml(versions: &[V], blocks: &str, state_dir: Option<&Path>) -> String {
    let mut y = format!(
        "listeners:\n  - name: {LISTENER}\n    address: \"127.0.0.1:0\"\n\
         admin:\n  address: \"127.0.0.1:0\"\n"
    );
    if let Some(dir) = state_dir {
        y.push_str(&format!(
            "state_dir: {}\n",
            quote(&dir.display().to_string())
        ));
    }
    y.push_str(&format!("services:\n  - name: {SERVICE}\n    versions:\n"));
    for version in versions {
        y.push_str(&format!(
            "      - name: {}\n        revision: {}\n        endpoints: [{}]\n        weight: {}\n",
            version.name,
            quote(version.revision),
            quote(&version.endpoint.to_string()),
            version.weight
        ));
    }
    y.push_str("    timeouts: { connect: 1s, request: 5s }\n");
    y.push_str(blocks);
    if !blocks.ends_with('\n') {
        y.push('\n');
    }
    y
}

/// The service of [`witness`].
pub const WITNESS: &str = "witness";

/// A second service, [`WITNESS`], to append to [`web_yaml`]'s `blocks` in a
/// test that must show `web`'s rollout did NOT move: its rollout runs and
/// never ends (a step of an hour) and it takes no traffic (its prefix is
/// `/witness`), so its `held_ms` counts the running time the rollout runner
/// has judged, tick by tick, every rollout in. See [`Fixture::runner_runs_for`].
pub fn witness(endpoint: SocketAddr) -> String {
    let endpoint = quote(&endpoint.to_string());
    format!(
        "  - name: {WITNESS}\n    match: {{ path_prefix: /witness }}\n    versions:\n\
         \x20     - {{ name: stable, revision: \"1\", endpoints: [{endpoint}], weight: 100 }}\n\
         \x20     - {{ name: canary, revision: \"2\", endpoints: [{endpoint}], weight: 0 }}\n\
         \x20   guard: {{ baseline: stable, interval: 1s, window: 5s, min_requests: 20, max_error_rate: 0.5 }}\n\
         \x20   rollout: {{ candidate: canary, steps: [10, 100], hold: 1h }}\n"
    )
}

// ---------------------------------------------------------------- in-process veer

/// veer in-process with its admin API on port 0.
pub struct Fixture {
    pub running: RunningProxy,
    pub client: HttpClient,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
}

impl Fixture {
    pub async fn start(yaml: &str) -> Fixture {
        let (running, proxy, admin) = start_with_admin(yaml, None).await;
        Fixture {
            running,
            client: http1_client(),
            proxy,
            admin,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// `http://ADDR` of the admin API, for `veer ... --admin`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    pub fn control(&self) -> &veer::control::Control {
        self.running.control()
    }

    /// [`paced_load`] of `GET /` through the proxy, each answer recorded as
    /// `"STATUS UPSTREAM"`.
    pub fn paced_load(&self, rate: u32, max_requests: u64, max_run: Duration) -> Load<String> {
        paced_load(
            self.client.clone(),
            self.url("/"),
            rate,
            max_requests,
            max_run,
        )
        .start(status_and_upstream)
    }

    /// `GET path` through the proxy with extra headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        send(&self.client, request_with(&self.url(path), headers)).await
    }

    pub async fn status(&self) -> Value {
        status_at(&self.client, self.admin).await
    }

    /// `web`'s entry in `/status`.
    pub async fn web(&self) -> Value {
        web(&self.status().await).clone()
    }

    /// `web`'s `rollout` in `/status`.
    pub async fn rollout(&self) -> Value {
        self.web().await["rollout"].clone()
    }

    /// `POST path` on the admin API with an optional JSON body.
    pub async fn post(&self, path: &str, body: Option<Value>) -> Answer {
        admin_post(&self.client, self.admin, path, body).await
    }

    /// Polls `/status` every 50 ms until `cond` holds on `web`'s entry;
    /// returns that entry. Panics with the last entry after `limit`.
    pub async fn wait_web(
        &self,
        limit: Duration,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_web_at(&self.client, self.admin, limit, what, cond).await
    }

    /// The [`witness`]'s rollout `held_ms`: the rollout runner's running time.
    pub async fn witness_held_ms(&self) -> u64 {
        let status = self.status().await;
        status["services"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["name"] == WITNESS))
            .and_then(|s| s["rollout"]["held_ms"].as_u64())
            .unwrap_or_else(|| panic!("no {WITNESS} rollout in /status: {status:#}"))
    }

    /// Waits until the rollout runner has judged every rollout for `running`
    /// more time (the [`witness`]'s hold grew by that much): after it, a
    /// rollout of `web` that had its hold left, with traffic, and did not
    /// move, was held back, not left unjudged by a slow machine.
    pub async fn runner_runs_for(&self, running: Duration) {
        let from = self.witness_held_ms().await;
        self.runner_ran_since(from, running).await;
    }

    /// As [`Fixture::runner_runs_for`], counted from an earlier reading of
    /// [`Fixture::witness_held_ms`].
    pub async fn runner_ran_since(&self, from: u64, running: Duration) {
        let want = from + u64::try_from(running.as_millis()).expect("a short duration");
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let held = self.witness_held_ms().await;
            if held >= want {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "the rollout runner ran {} ms of {running:?} within {LIMIT:?}",
                    held - from
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn shutdown(self) {
        within(LIMIT, "proxy shutdown", self.running.shutdown()).await;
    }
}

/// `GET url` with extra headers.
pub fn request_with(url: &str, headers: &[(&str, &str)]) -> Request<super::Body> {
    let mut builder = Request::get(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(empty()).expect("build GET request")
}

// ---------------------------------------------------------------- admin API

pub async fn status_at(client: &HttpClient, admin: SocketAddr) -> Value {
    let answer = send(client, get(&format!("http://{admin}/status"), None)).await;
    assert_eq!(answer.status, 200, "GET /status: {}", answer.text());
    serde_json::from_slice(&answer.body).expect("/status is JSON")
}

pub async fn admin_post(
    client: &HttpClient,
    admin: SocketAddr,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{admin}{path}"));
    let request = match body {
        Some(json) => request
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(full(json.to_string())),
        None => request.body(empty()),
    };
    send(client, request.expect("admin request")).await
}

/// `web`'s entry in a `/status` report.
pub fn web(status: &Value) -> &Value {
    status["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == SERVICE))
        .unwrap_or_else(|| panic!("no service {SERVICE} in {status:#}"))
}

/// A version's entry in `web`'s `/status` entry.
pub fn version<'a>(web: &'a Value, name: &str) -> &'a Value {
    web["versions"]
        .as_array()
        .and_then(|all| all.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no version {name} in {web:#}"))
}

/// The weight in force of a version, from `web`'s `/status` entry.
pub fn weight(web: &Value, name: &str) -> u64 {
    version(web, name)["weight"]
        .as_u64()
        .unwrap_or_else(|| panic!("no weight for {name} in {web:#}"))
}

pub async fn wait_web_at(
    client: &HttpClient,
    admin: SocketAddr,
    limit: Duration,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let entry = web(&status_at(client, admin).await).clone();
        if cond(&entry) {
            return entry;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not reached within {limit:?}; last /status entry:\n{entry:#}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `rollout.step == step && rollout.state == state`
pub fn at(web: &Value, step: u64, state: &str) -> bool {
    web["rollout"]["step"] == step && web["rollout"]["state"] == state
}

// ---------------------------------------------------------------- the binary

/// `veer: admin on ADDR` from the binary's output.
pub fn admin_of(veer: &VeerProcess) -> SocketAddr {
    veer.output()
        .lines()
        .find_map(|line| line.trim().strip_prefix("veer: admin on ")?.parse().ok())
        .unwrap_or_else(|| panic!("no `veer: admin on` line\n{}", veer.output()))
}

fn cli(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_remove("VEER_ADMIN")
        .env_remove("VEER_ADMIN_TOKEN")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs `veer ARGS` to its end (bounded by [`LIMIT`]).
pub async fn veer(args: &[&str]) -> std::process::Output {
    within(LIMIT, &format!("veer {args:?}"), cli(args).output())
        .await
        .expect("run the veer binary")
}

/// Starts `veer wait SERVICE --admin URL --timeout T` in the background.
pub fn spawn_wait(admin_url: &str, timeout: &str) -> tokio::process::Child {
    cli(&["wait", SERVICE, "--admin", admin_url, "--timeout", timeout])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn veer wait")
}

/// Waits for a `veer wait` started by [`spawn_wait`]; (exit code, stdout + stderr).
pub async fn finish_wait(child: tokio::process::Child) -> (Option<i32>, String) {
    let out = within(LIMIT, "veer wait to exit", child.wait_with_output())
        .await
        .expect("veer wait output");
    (out.status.code(), output_text(&out))
}

pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "--- stdout ---\n{}--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a `veer` operator command and asserts its exit code.
pub async fn veer_ok(args: &[&str], code: i32) -> std::process::Output {
    let out = veer(args).await;
    assert_eq!(
        out.status.code(),
        Some(code),
        "veer {args:?} should exit {code}\n{}",
        output_text(&out)
    );
    out
}

// ---------------------------------------------------------------- /status watcher

/// What one `/status` read said of the rollout and the weights in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// 1-based; 0 when there is no rollout.
    pub step: u64,
    pub state: String,
    pub percent: u64,
    pub stable: u64,
    pub canary: u64,
}

/// Polls `/status` every 25 ms and keeps the rollout's step (1-based) where
/// the paced load can tag its requests with it; records every distinct
/// [`Observed`] in order.
pub struct Watcher {
    pub step: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<Observed>>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Watcher {
    pub fn start(client: HttpClient, admin: SocketAddr) -> Watcher {
        let step = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (step, seen, stop) = (step.clone(), seen.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::SeqCst) {
                    let entry = web(&status_at(&client, admin).await).clone();
                    let r = &entry["rollout"];
                    let now = Observed {
                        step: r["step"].as_u64().unwrap_or(0),
                        state: r["state"].as_str().unwrap_or("none").to_string(),
                        percent: r["percent"].as_u64().unwrap_or(0),
                        stable: weight(&entry, "stable"),
                        canary: weight(&entry, "canary"),
                    };
                    step.store(now.step, Ordering::SeqCst);
                    {
                        let mut seen = seen.lock().expect("seen");
                        if seen.last() != Some(&now) {
                            seen.push(now);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        });
        Watcher {
            step,
            seen,
            stop,
            task,
        }
    }

    pub fn step(&self) -> u64 {
        self.step.load(Ordering::SeqCst)
    }

    /// Whether `/status` has said the rollout is in `state`.
    pub fn saw(&self, state: &str) -> bool {
        self.seen
            .lock()
            .expect("seen")
            .iter()
            .any(|o| o.state == state)
    }

    /// Stops; what it saw, in order.
    pub async fn finish(self) -> Vec<Observed> {
        self.stop.store(true, Ordering::SeqCst);
        within(LIMIT, "watcher to stop", self.task)
            .await
            .expect("watcher task");
        let seen = self.seen.lock().expect("seen").clone();
        seen
    }
}

// ---------------------------------------------------------------- paced load

/// One answer of the paced load, recorded as `"STATUS UPSTREAM"`, `"error ..."`
/// or `"no answer"` ([`super::load::status_and_upstream`]).
pub type Sample = super::load::Sample<String>;

/// The paced load of these tests: `rate` GETs of `url` a second through
/// `client`, each answer recorded as `"STATUS UPSTREAM"`; stops when told,
/// after `max_requests`, or after `max_run`, whichever is first.
pub fn paced_load(
    client: HttpClient,
    url: String,
    rate: u32,
    max_requests: u64,
    max_run: Duration,
) -> LoadPlan {
    LoadPlan::paced(url, rate)
        .client(client)
        .max_requests(max_requests)
        .max_run(max_run)
        .answer_limit(LIMIT)
}

/// Which upstream answered a sample, if one did.
pub fn answered_by(sample: &Sample) -> Option<&str> {
    sample.record.split_once(' ').map(|(_, u)| u)
}

/// Answers by outcome (`"200 stable"`: count).
pub fn tally(samples: &[Sample]) -> BTreeMap<String, u64> {
    super::load::tally(samples)
}
