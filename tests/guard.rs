//! The guard, end to end: a canary that goes bad under paced load trips on
//! its error rate, its latency, or its latency relative to the baseline; its
//! weight goes to the baseline and from then on it gets no new request. Too
//! little data gives no verdict. A latch survives a restart, and a new
//! revision or `veer resume` clears it. The webhook hears of every rollback
//! and a dead one holds nothing up. Operators roll back by CLI and API behind
//! the admin token. A request the canary cannot take is served by the
//! baseline and still counted against the canary.
//!
//! Nothing here asserts a time: bounds are on request counts, derived from
//! the guard's policy and the test's paced rate, and every wait is a poll with
//! a generous deadline.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use prometheus_parse::{Scrape, Value};
use support::binary::VeerProcess;
use support::client::{empty, get, http1_client, send, Answer, HttpClient};
use support::config::LISTENER;
use support::harness::start_with_admin;
use support::load::{status_and_upstream, tally, Load, LoadPlan};
use support::raw::closed_port;
use support::release::{admin_of, veer as veer_cli};
use support::upstream::Upstream;
use support::{wait_until, within};
use tokio::sync::watch;
use veer::server::RunningProxy;
use veer::telemetry::Figures;

const LIMIT: Duration = Duration::from_secs(20);
const BIN: &str = env!("CARGO_BIN_EXE_veer");

/// The paced load: requests per second, at most this many, for at most this long.
const RATE: u32 = 200;
const MAX_REQUESTS: u64 = 4_000;
const MAX_RUN: Duration = Duration::from_secs(20);

/// The policy of the load tests (interval 200 ms, window 5 s, 20 requests,
/// 2 bad verdicts in a row); each test adds its threshold.
const INTERVAL_S: f64 = 0.2;
const MIN_REQUESTS: u64 = 20;
const CONSECUTIVE: u64 = 2;
/// The guard's runner ticks every 100 ms and judges when `interval` is due.
const GUARD_TICK_S: f64 = 0.1;
fn policy(threshold: &str) -> String {
    format!(
        "{{ baseline: stable, interval: 200ms, window: 5s, min_requests: {MIN_REQUESTS}, \
         consecutive: {CONSECUTIVE}, {threshold} }}"
    )
}

/// Requests already routed when a trip was observed may still arrive.
const GRACE: u64 = 5;

// ---------------------------------------------------------------- config

/// A service `web` with versions `stable` (the baseline) and `canary`.
#[derive(Clone)]
struct Setup {
    stable: Vec<SocketAddr>,
    canary: Vec<SocketAddr>,
    weights: (u32, u32),
    canary_revision: String,
    /// The guard's flow mapping, `{ baseline: stable, ... }`.
    guard: String,
    token_file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
}

fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn list(addrs: &[SocketAddr]) -> String {
    let quoted: Vec<String> = addrs.iter().map(|a| quote(&a.to_string())).collect();
    format!("[{}]", quoted.join(", "))
}

impl Setup {
    fn new(
        stable: &[SocketAddr],
        canary: &[SocketAddr],
        weights: (u32, u32),
        guard: String,
    ) -> Setup {
        Setup {
            stable: stable.to_vec(),
            canary: canary.to_vec(),
            weights,
            canary_revision: "1.2.0".into(),
            guard,
            token_file: None,
            state_dir: None,
        }
    }

    fn yaml(&self) -> String {
        let mut y = format!(
            "listeners:\n  - name: {LISTENER}\n    address: \"127.0.0.1:0\"\nadmin:\n  address: \"127.0.0.1:0\"\n"
        );
        if let Some(token) = &self.token_file {
            y.push_str(&format!(
                "  token_file: {}\n",
                quote(&token.display().to_string())
            ));
        }
        if let Some(dir) = &self.state_dir {
            y.push_str(&format!(
                "state_dir: {}\n",
                quote(&dir.display().to_string())
            ));
        }
        y.push_str(&format!(
            "services:\n  - name: web\n    versions:\n\
             \x20     - name: stable\n        revision: \"1.1.0\"\n        endpoints: {}\n        weight: {}\n\
             \x20     - name: canary\n        revision: {}\n        endpoints: {}\n        weight: {}\n\
             \x20   timeouts: {{ connect: 1s, request: 5s }}\n\
             \x20   guard: {}\n",
            list(&self.stable),
            self.weights.0,
            quote(&self.canary_revision),
            list(&self.canary),
            self.weights.1,
            self.guard
        ));
        y
    }
}

// ---------------------------------------------------------------- in-process veer

/// veer in-process with its admin API.
struct Fixture {
    running: RunningProxy,
    client: HttpClient,
    proxy: SocketAddr,
    admin: SocketAddr,
}

impl Fixture {
    async fn start(setup: &Setup) -> Fixture {
        Fixture::start_from(setup, None).await
    }

    /// With `source`, the file the config came from: `POST /reload` reads it.
    async fn start_from(setup: &Setup, source: Option<PathBuf>) -> Fixture {
        let (running, proxy, admin) = start_with_admin(&setup.yaml(), source).await;
        Fixture {
            running,
            client: http1_client(),
            proxy,
            admin,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    async fn get(&self, path: &str) -> Answer {
        send(&self.client, get(&self.url(path), None)).await
    }

    fn control(&self) -> &veer::control::Control {
        self.running.control()
    }

    fn latches(&self) -> Vec<veer::state::Latch> {
        self.control().latches("web")
    }

    /// The weights in force (stable, canary), as the request path reads them.
    fn weights(&self) -> (u32, u32) {
        let snapshot = self.control().snapshot();
        let v = &snapshot.services[0].versions;
        (v[0].weight, v[1].weight)
    }

    fn verdict(&self, version: &str) -> Option<String> {
        self.control().verdict("web", version)
    }

    /// A version's window figures now, as the guard reads them.
    fn figures(&self, version: &str) -> Figures {
        let control = self.control();
        let snapshot = control.snapshot();
        let service = &snapshot.services[0];
        let v = service
            .versions
            .iter()
            .find(|v| &*v.name == version)
            .unwrap_or_else(|| panic!("no version {version}"));
        let elapsed = control.telemetry().elapsed(tokio::time::Instant::now());
        v.stats.window().figures(elapsed, service.window)
    }

    async fn shutdown(self) {
        within(LIMIT, "proxy shutdown", self.running.shutdown()).await;
    }
}

// ---------------------------------------------------------------- admin API

async fn admin_call(
    client: &HttpClient,
    admin: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"));
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    send(client, request.body(empty()).expect("admin request")).await
}

async fn status_of(client: &HttpClient, admin: SocketAddr) -> serde_json::Value {
    let answer = admin_call(client, admin, Method::GET, "/status", None).await;
    assert_eq!(answer.status, 200, "GET /status: {}", answer.text());
    serde_json::from_slice(&answer.body).expect("/status is JSON")
}

/// `web`'s entry in `/status`.
fn web(status: &serde_json::Value) -> &serde_json::Value {
    status["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == "web"))
        .unwrap_or_else(|| panic!("no service web in {status:#}"))
}

fn version<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    web(status)["versions"]
        .as_array()
        .and_then(|all| all.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no version {name} in {status:#}"))
}

fn status_weights(status: &serde_json::Value) -> (u64, u64) {
    let w = |name| version(status, name)["weight"].as_u64().expect("weight");
    (w("stable"), w("canary"))
}

fn status_latches(status: &serde_json::Value) -> Vec<serde_json::Value> {
    web(status)["guard"]["latches"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A sample of `/metrics` (counter, gauge or untyped) with these labels.
async fn metric(
    client: &HttpClient,
    admin: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let answer = admin_call(client, admin, Method::GET, "/metrics", None).await;
    assert_eq!(answer.status, 200);
    let text = answer.text();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

// ---------------------------------------------------------------- the binary

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Writes the config to a file of its own and starts the binary on it.
fn start_binary(setup: &Setup) -> VeerProcess {
    VeerProcess::start(BIN, &setup.yaml())
}

// ---------------------------------------------------------------- paced load

/// The paced load: [`RATE`] requests a second, each in its own task so a slow
/// answer does not slow the pace, each answer kept as `"STATUS UPSTREAM"`;
/// stops when told, after `MAX_REQUESTS`, or after `MAX_RUN`, whichever is
/// first.
fn paced_load(f: &Fixture) -> Load<String> {
    LoadPlan::paced(f.url("/"), RATE)
        .client(f.client.clone())
        .max_requests(MAX_REQUESTS)
        .max_run(MAX_RUN)
        .answer_limit(LIMIT)
        .start(status_and_upstream)
}

/// How many requests a bad canary may serve from the fault's onset until a
/// trip, from the policy and the paced rate rather than from a clock:
/// `to_cross` requests the fault needs to pull the window's figure over the
/// threshold (given what the window held at onset), `lag` requests already on
/// their way when the first bad answer is recorded, and `consecutive`
/// verdicts `interval` apart plus one runner tick at the canary's rate; all
/// doubled for a loaded machine, plus `min_requests`.
fn served_bound(to_cross: u64, lag: f64, canary_rps: f64) -> u64 {
    let judging = canary_rps * (CONSECUTIVE as f64 * INTERVAL_S + GUARD_TICK_S);
    2 * (to_cross + (lag + judging).ceil() as u64) + MIN_REQUESTS
}

/// What a test saw around a trip.
struct Trip {
    /// Canary requests from the fault's onset to the end of the load.
    served_after_onset: u64,
    /// Canary requests that arrived after the trip was observed ...
    after_trip: u64,
    /// ... and the requests in flight when it was.
    in_flight_at_trip: u64,
    outcomes: BTreeMap<String, u64>,
}

/// Runs the paced load on `f`: waits until the guard has judged the canary
/// healthy on enough data, calls `fault` (returning the bound on what the
/// canary may serve, from the window it held), waits for the trip, then
/// sends 200 more requests and stops.
async fn trip_under_load(
    f: &Fixture,
    stable: &Upstream,
    canary: &Upstream,
    fault: impl FnOnce(&Figures) -> u64,
) -> (Trip, u64) {
    let load = paced_load(f);
    wait_until(
        LIMIT,
        "the guard judges the canary healthy on enough data",
        || {
            f.verdict("canary").as_deref() == Some("healthy")
                && f.figures("canary").requests >= 3 * MIN_REQUESTS
        },
    )
    .await;
    assert!(
        f.latches().is_empty(),
        "tripped while healthy: {:?}",
        f.latches()
    );
    let onset = canary.total();
    let bound = fault(&f.figures("canary"));
    wait_until(LIMIT, "the guard trips the canary", || {
        !f.latches().is_empty()
    })
    .await;
    let at_trip = canary.total();
    let in_flight_at_trip = load.in_flight();
    // The latch is published with the weights: the request path already reads 0.
    assert_eq!(
        f.weights(),
        (100, 0),
        "the canary's share went to the baseline"
    );
    let sent_at_trip = load.sent();
    let stable_at_trip = stable.total();
    wait_until(LIMIT, "200 more requests after the trip", || {
        load.sent() >= sent_at_trip + 200
    })
    .await;
    let outcomes = tally(&load.finish().await);
    assert!(
        stable.total() >= stable_at_trip + 200,
        "the baseline took the traffic: {outcomes:?}"
    );
    let trip = Trip {
        served_after_onset: canary.total() - onset,
        after_trip: canary.total() - at_trip,
        in_flight_at_trip,
        outcomes,
    };
    (trip, bound)
}

fn assert_nothing_after_the_trip(trip: &Trip) {
    eprintln!(
        "canary: {} requests after the fault began, {} after the trip ({} in flight then); {:?}",
        trip.served_after_onset, trip.after_trip, trip.in_flight_at_trip, trip.outcomes
    );
    assert!(
        trip.after_trip <= trip.in_flight_at_trip + GRACE,
        "the canary got {} requests after the trip, with {} in flight then: {:?}",
        trip.after_trip,
        trip.in_flight_at_trip,
        trip.outcomes
    );
}

/// The latch and the last event: one trip, of the canary at its revision.
fn assert_one_trip(f: &Fixture, reason: &str) -> veer::control::Event {
    let latches = f.latches();
    assert_eq!(latches.len(), 1, "{latches:?}");
    assert_eq!(
        (
            latches[0].version.as_str(),
            latches[0].revision.as_str(),
            latches[0].reason.as_str()
        ),
        ("canary", "1.2.0", reason)
    );
    let events = f.control().events("web");
    assert_eq!(events.len(), 1, "{events:?}");
    let event = events[0].clone();
    assert_eq!(event.reason, reason);
    assert_eq!(event.action, "rollback");
    assert!(event.window_requests >= MIN_REQUESTS, "{event:?}");
    event
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_30_percent_trips_on_error_rate_and_then_gets_nothing() {
    const MAX_ERROR_RATE: f64 = 0.1;
    const FAULT: f64 = 0.3;
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let setup = Setup::new(
        &[stable.addr()],
        &[canary.addr()],
        (80, 20),
        policy(&format!("max_error_rate: {MAX_ERROR_RATE}")),
    );
    let f = Fixture::start(&setup).await;
    let canary_rps = f64::from(RATE) * 0.2;
    let (trip, bound) = trip_under_load(&f, &stable, &canary, |held| {
        canary.set_fail_ratio(FAULT);
        // errors / requests > max once FAULT·n > max·(held + n).
        let to_cross =
            (held.requests as f64 * MAX_ERROR_RATE / (FAULT - MAX_ERROR_RATE)).ceil() as u64 + 1;
        served_bound(to_cross, 0.0, canary_rps)
    })
    .await;
    assert_nothing_after_the_trip(&trip);
    eprintln!("bound from the policy: {bound}");
    assert!(
        trip.served_after_onset <= bound,
        "the canary served {} requests after the fault began; the policy allows {bound}",
        trip.served_after_onset
    );
    let event = assert_one_trip(&f, "error_rate");
    assert_eq!(event.threshold, Some(MAX_ERROR_RATE));
    let observed = event.observed.expect("observed");
    assert!(
        observed > MAX_ERROR_RATE && observed <= FAULT + 0.05,
        "{event:?}"
    );
    assert_eq!(
        event.weights,
        BTreeMap::from([("canary".to_string(), 0), ("stable".to_string(), 100)])
    );
    assert_eq!(
        metric(
            &f.client,
            f.admin,
            "veer_guard_trips_total",
            &[
                ("service", "web"),
                ("version", "canary"),
                ("reason", "error_rate")
            ]
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &f.client,
            f.admin,
            "veer_version_weight",
            &[("service", "web"), ("version", "canary")]
        )
        .await,
        Some(0.0)
    );
    let status = status_of(&f.client, f.admin).await;
    assert_eq!(status_weights(&status), (100, 0));
    assert_eq!(status_latches(&status).len(), 1);
    let events = web(&status)["guard"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(events.len(), 1, "{status:#}");
    assert_eq!(events[0]["reason"], "error_rate");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_slowing_to_800ms_trips_on_latency() {
    const DELAY: Duration = Duration::from_millis(800);
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let setup = Setup::new(
        &[stable.addr()],
        &[canary.addr()],
        (80, 20),
        policy("max_p95_latency: 500ms"),
    );
    let f = Fixture::start(&setup).await;
    let canary_rps = f64::from(RATE) * 0.2;
    let (trip, bound) = trip_under_load(&f, &stable, &canary, |held| {
        canary.set_delay(DELAY);
        // p95 is slow once more than 5 % of the window is: slow > held / 19.
        let to_cross = held.requests.div_ceil(19) + 1;
        // Slow answers are recorded when they come: one delay's worth of
        // requests is on its way before the first one counts.
        served_bound(to_cross, canary_rps * DELAY.as_secs_f64(), canary_rps)
    })
    .await;
    assert_nothing_after_the_trip(&trip);
    eprintln!("bound from the policy: {bound}");
    assert!(
        trip.served_after_onset <= bound,
        "the canary served {} requests after the fault began; the policy allows {bound}",
        trip.served_after_onset
    );
    let event = assert_one_trip(&f, "latency");
    assert_eq!(event.threshold, Some(0.5));
    let observed = event.observed.expect("observed");
    assert!(observed > 0.5, "p95 in seconds: {event:?}");
    assert!(
        trip.outcomes.keys().all(|k| k.starts_with("200 ")),
        "a slow canary still answers: {:?}",
        trip.outcomes
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_ratio_ignores_a_common_slowdown_and_trips_a_slow_canary() {
    const DELAY: Duration = Duration::from_millis(200);
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let setup = Setup::new(
        &[stable.addr()],
        &[canary.addr()],
        (50, 50),
        policy("max_latency_ratio: 2"),
    );
    let f = Fixture::start(&setup).await;
    // Both versions equally slow: the load, not the canary.
    stable.set_delay(DELAY);
    canary.set_delay(DELAY);
    let load = paced_load(&f);
    wait_until(LIMIT, "both windows hold enough data", || {
        f.figures("stable").requests >= 3 * MIN_REQUESTS
            && f.figures("canary").requests >= 3 * MIN_REQUESTS
    })
    .await;
    // A bounded run of judgements on full data.
    let judged_from = load.sent();
    wait_until(LIMIT, "600 more requests, equally slow", || {
        load.sent() >= judged_from + 600
    })
    .await;
    assert!(
        f.latches().is_empty(),
        "tripped with both versions equally slow: {:?} {:?}",
        f.latches(),
        f.control().events("web")
    );
    assert_eq!(f.verdict("canary").as_deref(), Some("healthy"));
    assert_eq!(f.weights(), (50, 50));

    // Now only the canary is slow.
    stable.set_delay(Duration::ZERO);
    wait_until(LIMIT, "the guard trips the slow canary", || {
        !f.latches().is_empty()
    })
    .await;
    let at_trip = canary.total();
    let in_flight = load.in_flight();
    assert_eq!(f.weights(), (100, 0));
    let sent_at_trip = load.sent();
    wait_until(LIMIT, "100 more requests after the trip", || {
        load.sent() >= sent_at_trip + 100
    })
    .await;
    let outcomes = tally(&load.finish().await);
    assert!(
        canary.total() - at_trip <= in_flight + GRACE,
        "the canary got {} requests after the trip, {in_flight} in flight then: {outcomes:?}",
        canary.total() - at_trip
    );
    let event = assert_one_trip(&f, "latency_ratio");
    assert_eq!(event.threshold, Some(2.0));
    assert!(event.observed.expect("observed") > 2.0, "{event:?}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_requests_give_no_verdict_however_bad() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let setup = Setup::new(
        &[stable.addr()],
        &[canary.addr()],
        (50, 50),
        "{ baseline: stable, interval: 100ms, window: 30s, min_requests: 50, consecutive: 1, \
         max_error_rate: 0.05, max_p95_latency: 100ms }"
            .to_string(),
    );
    let f = Fixture::start(&setup).await;
    // Every canary answer is an error, and slow.
    canary.set_fail_ratio(1.0);
    canary.set_delay(Duration::from_millis(150));
    for _ in 0..24 {
        f.get("/").await;
    }
    assert_eq!(canary.total(), 12);
    let words = "insufficient data: 12/50 requests";
    wait_until(LIMIT, "the guard judges the canary", || {
        f.verdict("canary").as_deref() == Some(words)
    })
    .await;
    // Give it a few more judgements (interval 100 ms): still none.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(f.latches().is_empty(), "{:?}", f.latches());
    assert!(f.control().events("web").is_empty());
    assert_eq!(f.weights(), (50, 50));
    assert_eq!(f.verdict("canary").as_deref(), Some(words));

    let status = status_of(&f.client, f.admin).await;
    assert_eq!(
        version(&status, "canary")["guard_verdict"],
        words,
        "{status:#}"
    );
    assert_eq!(status_weights(&status), (50, 50));
    assert!(status_latches(&status).is_empty());
    // The counters are exported at 0 from the start: every one is still 0.
    for reason in [
        "error_rate",
        "latency",
        "error_rate_increase",
        "latency_ratio",
        "manual",
    ] {
        let labels = [
            ("service", "web"),
            ("version", "canary"),
            ("reason", reason),
        ];
        assert_eq!(
            metric(&f.client, f.admin, "veer_guard_trips_total", &labels).await,
            Some(0.0),
            "no trip counted ({reason})"
        );
    }
    // And `veer status` says so to people.
    let out = veer_cli(&["status", "--admin", &format!("http://{}", f.admin)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains(words), "{table}");
    f.shutdown().await;
}

/// Sends requests one by one until `/status` shows a latch (bounded).
async fn drive_until_latched(
    client: &HttpClient,
    proxy: SocketAddr,
    admin: SocketAddr,
) -> Vec<serde_json::Value> {
    let url = format!("http://{proxy}/");
    for round in 0..200 {
        for _ in 0..10 {
            send(client, get(&url, None)).await;
        }
        let latches = status_latches(&status_of(client, admin).await);
        if !latches.is_empty() {
            return latches;
        }
        if round % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("no trip after 2,000 requests to a canary that fails every one");
}

/// Sends `n` requests one by one; returns how many each upstream answered.
async fn who_answers(client: &HttpClient, proxy: SocketAddr, n: usize) -> BTreeMap<String, u64> {
    let url = format!("http://{proxy}/");
    let mut by = BTreeMap::new();
    for _ in 0..n {
        let answer = send(client, get(&url, None)).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        *by.entry(answer.upstream().unwrap_or("veer").to_string())
            .or_insert(0) += 1;
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latch_survives_a_restart_until_a_new_revision_or_resume() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let state = tempfile::tempdir().expect("state dir");
    let mut setup = Setup::new(
        &[stable.addr()],
        &[canary.addr()],
        (50, 50),
        "{ baseline: stable, interval: 100ms, window: 5s, min_requests: 10, consecutive: 1, \
         max_error_rate: 0.2 }"
            .to_string(),
    );
    setup.state_dir = Some(state.path().join("state"));
    let client = http1_client();

    // Trip 1.2.0, then kill veer outright (no clean exit).
    canary.set_fail_ratio(1.0);
    let veer = start_binary(&setup);
    let latches = drive_until_latched(&client, veer.listener(LISTENER), admin_of(&veer)).await;
    assert_eq!(latches[0]["revision"], "1.2.0", "{latches:?}");
    assert_eq!(latches[0]["reason"], "error_rate", "{latches:?}");
    drop(veer);
    canary.set_fail_ratio(0.0);

    // Same file: the canary, healthy now, still gets nothing.
    let veer = start_binary(&setup);
    let admin = admin_of(&veer);
    let before = canary.total();
    let by = who_answers(&client, veer.listener(LISTENER), 100).await;
    assert_eq!(by, BTreeMap::from([("stable".to_string(), 100)]));
    assert_eq!(canary.total(), before);
    let status = status_of(&client, admin).await;
    assert_eq!(status_weights(&status), (100, 0));
    assert_eq!(status_latches(&status).len(), 1, "{status:#}");
    drop(veer);

    // A new revision of the canary clears the latch.
    setup.canary_revision = "1.2.1".into();
    let veer = start_binary(&setup);
    let admin = admin_of(&veer);
    let by = who_answers(&client, veer.listener(LISTENER), 100).await;
    assert!(by.get("canary").copied().unwrap_or(0) >= 40, "{by:?}");
    let status = status_of(&client, admin).await;
    assert_eq!(status_weights(&status), (50, 50));
    assert!(status_latches(&status).is_empty(), "{status:#}");

    // Latch 1.2.1 too (by hand here: a resume after a trip on errors is
    // `a_resumed_version_is_judged_on_fresh_requests`); `veer resume` clears it.
    let out = veer_cli(&["rollback", "web", "--admin", &format!("http://{admin}")]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let latches = status_latches(&status_of(&client, admin).await);
    assert_eq!(latches.len(), 1, "{latches:?}");
    assert_eq!(latches[0]["revision"], "1.2.1", "{latches:?}");
    let out = veer_cli(&["resume", "web", "--admin", &format!("http://{admin}")]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let status = status_of(&client, admin).await;
    assert_eq!(status_weights(&status), (50, 50));
    assert!(status_latches(&status).is_empty(), "{status:#}");
    let by = who_answers(&client, veer.listener(LISTENER), 100).await;
    assert!(by.get("canary").copied().unwrap_or(0) >= 40, "{by:?}");
    drop(veer);

    // The resume was persisted too.
    let veer = start_binary(&setup);
    let status = status_of(&client, admin_of(&veer)).await;
    assert_eq!(status_weights(&status), (50, 50));
    assert!(status_latches(&status).is_empty(), "{status:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_latch_until_the_revision_changes() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("veer.yaml");
    let mut setup = Setup::new(
        &[stable.addr()],
        &[canary.addr()],
        (90, 10),
        "{ baseline: stable, max_error_rate: 0.5 }".to_string(),
    );
    std::fs::write(&file, setup.yaml()).expect("write config");
    let f = Fixture::start_from(&setup, Some(file.clone())).await;
    let reload = |setup: &Setup| {
        std::fs::write(&file, setup.yaml()).expect("write config");
        admin_call(&f.client, f.admin, Method::POST, "/reload", None)
    };
    let answer = admin_call(
        &f.client,
        f.admin,
        Method::POST,
        "/services/web/rollback",
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(f.weights(), (100, 0));

    // New weights for the same revision: no config sends traffic back to it.
    setup.weights = (20, 80);
    let answer = reload(&setup).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(f.weights(), (100, 0));
    assert_eq!(f.latches().len(), 1);
    let before = canary.total();
    let by = who_answers(&f.client, f.proxy, 20).await;
    assert_eq!(by, BTreeMap::from([("stable".to_string(), 20)]));
    assert_eq!(canary.total(), before);

    // A new revision: the latch goes, the file's weights are in force.
    setup.canary_revision = "1.3.0".into();
    let answer = reload(&setup).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(f.weights(), (20, 80));
    assert!(f.latches().is_empty(), "{:?}", f.latches());
    let by = who_answers(&f.client, f.proxy, 50).await;
    assert_eq!(by.get("canary").copied(), Some(40), "{by:?}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_version_is_judged_on_fresh_requests() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let setup = Setup::new(
        &[stable.addr()],
        &[canary.addr()],
        (50, 50),
        "{ baseline: stable, interval: 100ms, window: 30s, min_requests: 10, consecutive: 1, \
         max_error_rate: 0.2 }"
            .to_string(),
    );
    let f = Fixture::start(&setup).await;
    canary.set_fail_ratio(1.0);
    let latches = drive_until_latched(&f.client, f.proxy, f.admin).await;
    assert_eq!(latches[0]["reason"], "error_rate");
    // The operator mends the canary in place and resumes it.
    canary.set_fail_ratio(0.0);
    let answer = admin_call(
        &f.client,
        f.admin,
        Method::POST,
        "/services/web/resume",
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(f.weights(), (50, 50));
    // Ten judgements and more with no new request: the errors that caused
    // the trip must not trip the resumed version again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        f.latches().is_empty(),
        "re-tripped after `resume` on the requests judged before it: {:?}; verdict {:?}",
        f.control().events("web"),
        f.verdict("canary")
    );
    assert_eq!(f.control().events("web").len(), 1);
    let by = who_answers(&f.client, f.proxy, 40).await;
    assert_eq!(by.get("canary").copied(), Some(20), "{by:?}");
    assert!(f.latches().is_empty());
    f.shutdown().await;
}

// ---------------------------------------------------------------- webhook receiver

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    method: Method,
    path: String,
    content_type: Option<String>,
    body: serde_json::Value,
}

/// A webhook receiver on `127.0.0.1:0`: records every request as it arrives,
/// and answers 200 once `release` is true (at once if it starts released).
struct Hook {
    addr: SocketAddr,
    arrived: Arc<Mutex<Vec<Delivery>>>,
    answered: Arc<AtomicU64>,
    release: watch::Sender<bool>,
}

impl Hook {
    async fn start(released: bool) -> Hook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind hook");
        let addr = listener.local_addr().expect("hook addr");
        let arrived = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(AtomicU64::new(0));
        let (release, released_rx) = watch::channel(released);
        tokio::spawn({
            let (arrived, answered) = (arrived.clone(), answered.clone());
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (arrived, answered) = (arrived.clone(), answered.clone());
                    let released_rx = released_rx.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(
                            move |req: Request<hyper::body::Incoming>| {
                                let (arrived, answered) = (arrived.clone(), answered.clone());
                                let mut released_rx = released_rx.clone();
                                async move {
                                    let (parts, body) = req.into_parts();
                                    let bytes = body
                                        .collect()
                                        .await
                                        .map(|c| c.to_bytes())
                                        .unwrap_or_default();
                                    arrived.lock().expect("arrived").push(Delivery {
                                        method: parts.method.clone(),
                                        path: parts.uri.path().to_string(),
                                        content_type: parts
                                            .headers
                                            .get(http::header::CONTENT_TYPE)
                                            .and_then(|v| v.to_str().ok())
                                            .map(str::to_string),
                                        body: serde_json::from_slice(&bytes)
                                            .unwrap_or(serde_json::Value::Null),
                                    });
                                    let _ = released_rx.wait_for(|r| *r).await;
                                    answered.fetch_add(1, Ordering::SeqCst);
                                    Ok::<_, std::convert::Infallible>(http::Response::new(
                                        http_body_util::Full::new(Bytes::from_static(b"ok")),
                                    ))
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        Hook {
            addr,
            arrived,
            answered,
            release,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/veer", self.addr)
    }

    fn arrived(&self) -> Vec<Delivery> {
        self.arrived.lock().expect("arrived").clone()
    }
}

fn webhook_policy(url: &str) -> String {
    format!(
        "{{ baseline: stable, interval: 100ms, window: 5s, min_requests: 10, consecutive: 1, \
         max_error_rate: 0.2, webhook: {} }}",
        quote(url)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_gets_the_contract_event() {
    let started = std::time::SystemTime::now();
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let hook = Hook::start(true).await;
    let setup = Setup::new(
        &[stable.addr()],
        &[canary.addr()],
        (90, 10),
        webhook_policy(&hook.url()),
    );
    let f = Fixture::start(&setup).await;
    canary.set_fail_ratio(1.0);
    let latches = drive_until_latched(&f.client, f.proxy, f.admin).await;
    assert_eq!(latches[0]["reason"], "error_rate");
    wait_until(LIMIT, "the webhook receives the event", || {
        hook.answered.load(Ordering::SeqCst) >= 1
    })
    .await;
    let got = hook.arrived();
    assert_eq!(got.len(), 1, "one event, delivered once: {got:?}");
    let d = &got[0];
    assert_eq!(d.method, Method::POST);
    assert_eq!(d.path, "/hooks/veer");
    assert_eq!(d.content_type.as_deref(), Some("application/json"));
    let e = &d.body;
    assert_eq!(e["service"], "web", "{e}");
    assert_eq!(e["version"], "canary", "{e}");
    assert_eq!(e["revision"], "1.2.0", "{e}");
    assert_eq!(e["action"], "rollback", "{e}");
    assert_eq!(e["reason"], "error_rate", "{e}");
    assert_eq!(e["threshold"].as_f64(), Some(0.2), "{e}");
    let observed = e["observed"].as_f64().expect("observed is a number");
    assert!(observed > 0.2 && observed <= 1.0, "{e}");
    let window_requests = e["window_requests"].as_u64().expect("window_requests");
    assert!(window_requests >= 10, "{e}");
    assert_eq!(
        e["weights"],
        serde_json::json!({"stable": 100, "canary": 0}),
        "{e}"
    );
    let at = e["at"].as_str().expect("at is a string");
    let at = humantime::parse_rfc3339(at).unwrap_or_else(|err| panic!("at {at:?}: {err}"));
    let slack = Duration::from_secs(120);
    assert!(
        at + slack >= started && at <= std::time::SystemTime::now() + slack,
        "{e}"
    );
    let fields: Vec<&String> = e.as_object().expect("object").keys().collect();
    for field in [
        "service",
        "version",
        "revision",
        "action",
        "reason",
        "observed",
        "threshold",
        "window_requests",
        "weights",
        "at",
    ] {
        assert!(e.get(field).is_some(), "{field} missing: {fields:?}");
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_webhook_delays_neither_the_trip_nor_the_weights() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let dead = format!("http://{}/hooks/veer", closed_port());
    let setup = Setup::new(
        &[stable.addr()],
        &[canary.addr()],
        (90, 10),
        webhook_policy(&dead),
    );
    let f = Fixture::start(&setup).await;
    canary.set_fail_ratio(1.0);
    let latches = drive_until_latched(&f.client, f.proxy, f.admin).await;
    assert_eq!(latches[0]["reason"], "error_rate");
    assert_eq!(f.weights(), (100, 0));
    // While the webhook is being retried, the proxy serves from the baseline.
    let before = canary.total();
    let by = who_answers(&f.client, f.proxy, 50).await;
    assert_eq!(by, BTreeMap::from([("stable".to_string(), 50)]));
    assert_eq!(canary.total(), before);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_never_answers_holds_up_no_rollback() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    // Records each POST, answers none until released.
    let hook = Hook::start(false).await;
    let setup = Setup::new(
        &[stable.addr()],
        &[canary.addr()],
        (90, 10),
        webhook_policy(&hook.url()),
    );
    let f = Fixture::start(&setup).await;
    let answer = admin_call(
        &f.client,
        f.admin,
        Method::POST,
        "/services/web/rollback",
        None,
    )
    .await;
    // Had the rollback waited on the webhook, it would answer only after
    // every attempt (4) had timed out.
    let attempts = hook.arrived().len();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(
        attempts <= 1,
        "the rollback waited for {attempts} webhook attempts"
    );
    assert_eq!(hook.answered.load(Ordering::SeqCst), 0);
    let body: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
    assert_eq!(
        body["weights"],
        serde_json::json!({"stable": 100, "canary": 0}),
        "{body}"
    );
    assert_eq!(f.weights(), (100, 0));
    let by = who_answers(&f.client, f.proxy, 20).await;
    assert_eq!(by, BTreeMap::from([("stable".to_string(), 20)]));
    // Released, the receiver gets the manual event on a later attempt.
    hook.release.send_replace(true);
    wait_until(LIMIT, "a retried delivery is answered", || {
        hook.answered.load(Ordering::SeqCst) >= 1
    })
    .await;
    let got = hook.arrived();
    let e = &got.last().expect("a delivery").body;
    assert_eq!(e["reason"], "manual", "{e}");
    assert_eq!(e["version"], "canary", "{e}");
    assert!(e["observed"].is_null() && e["threshold"].is_null(), "{e}");
    f.shutdown().await;
}

fn write_token(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("admin-token");
    std::fs::write(&path, format!("{token}\n")).expect("write token file");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_rollback_by_cli_and_api_behind_the_token() {
    const TOKEN: &str = "a-long-random-test-token-0123456789";
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = write_token(dir.path(), TOKEN);
    let wrong_file = dir.path().join("wrong-token");
    std::fs::write(&wrong_file, "not-the-token\n").expect("write");
    let mut setup = Setup::new(
        &[stable.addr()],
        &[canary.addr()],
        (50, 50),
        "{ baseline: stable, max_error_rate: 0.5 }".to_string(),
    );
    setup.token_file = Some(token_file.clone());
    let veer = start_binary(&setup);
    let admin = admin_of(&veer);
    let admin_url = format!("http://{admin}");
    let proxy = veer.listener(LISTENER);
    let client = http1_client();
    let token_path = token_file.display().to_string();

    // Without the token, or with a wrong one: 401, nothing changes.
    let path = "/services/web/rollback";
    let refused = admin_call(&client, admin, Method::POST, path, None).await;
    assert_eq!(
        refused.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        refused.text()
    );
    let refused = admin_call(&client, admin, Method::POST, path, Some("not-the-token")).await;
    assert_eq!(
        refused.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        refused.text()
    );
    let out = veer_cli(&["rollback", "web", "--admin", &admin_url]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refused") && stderr.contains("401"),
        "{stderr:?}"
    );
    let out = veer_cli(&[
        "rollback",
        "web",
        "--admin",
        &admin_url,
        "--token-file",
        &wrong_file.display().to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let status = status_of(&client, admin).await;
    assert_eq!(status_weights(&status), (50, 50));
    assert!(status_latches(&status).is_empty());

    // With the token, the CLI rolls back: everything goes to the baseline.
    let out = veer_cli(&[
        "rollback",
        "web",
        "--admin",
        &admin_url,
        "--token-file",
        &token_path,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let status = status_of(&client, admin).await;
    assert_eq!(status_weights(&status), (100, 0));
    let latches = status_latches(&status);
    assert_eq!(latches.len(), 1, "{status:#}");
    assert_eq!(latches[0]["reason"], "manual");
    let before = canary.total();
    let by = who_answers(&client, proxy, 40).await;
    assert_eq!(by, BTreeMap::from([("stable".to_string(), 40)]));
    assert_eq!(canary.total(), before);
    let trips = |m: Option<f64>| m.unwrap_or(0.0);
    let manual = [
        ("service", "web"),
        ("version", "canary"),
        ("reason", "manual"),
    ];
    assert_eq!(
        trips(metric(&client, admin, "veer_guard_trips_total", &manual).await),
        1.0
    );

    // Resume (with the token), then roll back through the API.
    let out = veer_cli(&["resume", "web", "--admin", &admin_url]).await;
    assert_eq!(out.status.code(), Some(1), "resume needs the token too");
    let out = veer_cli(&[
        "resume",
        "web",
        "--admin",
        &admin_url,
        "--token-file",
        &token_path,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(status_weights(&status_of(&client, admin).await), (50, 50));
    let answer = admin_call(&client, admin, Method::POST, path, Some(TOKEN)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
    assert_eq!(body["rolled_back"], 1, "{body}");
    assert_eq!(
        body["weights"],
        serde_json::json!({"stable": 100, "canary": 0}),
        "{body}"
    );
    assert_eq!(
        trips(metric(&client, admin, "veer_guard_trips_total", &manual).await),
        2.0
    );
    // A second rollback of what is already latched is no new trip.
    let answer = admin_call(&client, admin, Method::POST, path, Some(TOKEN)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        trips(metric(&client, admin, "veer_guard_trips_total", &manual).await),
        2.0
    );
    // Reading needs no token.
    let out = veer_cli(&["status", "--admin", &admin_url]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    drop(veer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_canary_cannot_take_is_served_by_the_baseline_and_counted_against_it() {
    let stable = Upstream::start("stable").await;
    let setup = Setup::new(
        &[stable.addr()],
        &[closed_port()],
        (50, 50),
        policy("max_error_rate: 0.1"),
    );
    let f = Fixture::start(&setup).await;
    // Every answer is the baseline's 200 while the guard makes up its mind.
    let mut sent = 0u64;
    while f.latches().is_empty() {
        assert!(sent < 2_000, "no trip after {sent} requests");
        for _ in 0..10 {
            let answer = f.get("/").await;
            assert_eq!(answer.status, 200, "{answer:?}");
            assert_eq!(answer.upstream(), Some("stable"));
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let latches = f.latches();
    assert_eq!(latches[0].reason, "error_rate", "{latches:?}");
    assert_eq!(f.weights(), (100, 0));
    assert_eq!(stable.total(), sent);

    let labels = |code| [("service", "web"), ("version", "canary"), ("code", code)];
    let canary_5xx = metric(&f.client, f.admin, "veer_requests_total", &labels("503"))
        .await
        .unwrap_or(0.0);
    let connect = metric(
        &f.client,
        f.admin,
        "veer_upstream_failures_total",
        &[
            ("service", "web"),
            ("version", "canary"),
            ("reason", "connect"),
        ],
    )
    .await
    .unwrap_or(0.0);
    assert!(
        canary_5xx >= MIN_REQUESTS as f64,
        "canary errors counted: {canary_5xx}"
    );
    assert_eq!(
        connect, canary_5xx,
        "each canary error is a refused connect"
    );
    let stable_2xx = metric(
        &f.client,
        f.admin,
        "veer_requests_total",
        &[("service", "web"), ("version", "stable"), ("code", "200")],
    )
    .await
    .unwrap_or(0.0);
    assert_eq!(
        stable_2xx, sent as f64,
        "the baseline counts what it served"
    );
    // Once tripped, the canary is not even tried.
    let by = who_answers(&f.client, f.proxy, 20).await;
    assert_eq!(by, BTreeMap::from([("stable".to_string(), 20)]));
    let after = metric(
        &f.client,
        f.admin,
        "veer_upstream_failures_total",
        &[
            ("service", "web"),
            ("version", "canary"),
            ("reason", "connect"),
        ],
    )
    .await
    .unwrap_or(0.0);
    assert_eq!(after, connect);
    f.shutdown().await;
}
