//! Traffic mirroring and the shadow stage, end to end on loopback: copies
//! reach the shadow with their bodies and the shadow header, and a body over
//! the cap is not mirrored while the live one streams whole; a shadow that
//! hangs leaves live answers alone while copies beyond the budget are dropped
//! and counted; a shadow that refuses connections is rested rather than
//! tried for every request; a shadow stage fails a candidate that answers 500 to a fifth
//! of the copies before it gets a single live request (latch, `veer wait`
//! exit 1), and passes a healthy one to its first live step; on a route
//! marked deterministic, the same status with other bytes is a mismatch; bad
//! mirror and shadow blocks are refused with their messages.
//!
//! Nothing here asserts a time: every wait is a poll with a generous limit.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::client::{channel_body, full, get, send};
use support::release::{
    answered_by, finish_wait, spawn_wait, tally, v, veer_ok, web_yaml, Fixture, LIMIT,
};
use support::upstream::Upstream;
use support::wait_until;

/// One copy as the recording shadow saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    shadow: Option<String>,
    body: Bytes,
}

/// A shadow upstream that records every request it gets, body included, and
/// answers 200.
async fn recording_shadow() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = support::bind_loopback();
    let addr = listener.local_addr().expect("shadow addr");
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let record = Arc::clone(&record);
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            record.lock().expect("record lock").push(Seen {
                                method: parts.method,
                                path: parts.uri.path().to_string(),
                                shadow: parts
                                    .headers
                                    .get("x-veer-shadow")
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string),
                                body,
                            });
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"shadow",
                            ))))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn seen(record: &Arc<Mutex<Vec<Seen>>>) -> Vec<Seen> {
    record.lock().expect("record lock").clone()
}

/// `veer_mirror_requests_total` for `result` from the admin API's /metrics.
async fn mirrored(f: &Fixture, result: &str) -> u64 {
    let answer = send(&f.client, get(&format!("http://{}/metrics", f.admin), None)).await;
    let text = answer.text();
    let prefix = format!(
        "veer_mirror_requests_total{{service=\"web\",version=\"canary\",result=\"{result}\"}} "
    );
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{text}"))
}

fn post(url: &str, body: support::Body) -> Request<support::Body> {
    Request::post(url).body(body).expect("build POST")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_arrive_with_their_bodies_and_the_shadow_header() {
    let stable = Upstream::start("stable").await;
    let (shadow, record) = recording_shadow().await;
    let yaml = web_yaml(
        &[v("stable", stable.addr(), 100), v("canary", shadow, 0)],
        "    mirror: { version: canary, methods: [GET, POST], allow_unsafe: true, max_body: 1024 }\n",
        None,
    );
    let f = Fixture::start(&yaml).await;

    let got = send(&f.client, get(&f.url("/a?x=1"), None)).await;
    assert_eq!((got.status.as_u16(), got.upstream()), (200, Some("stable")));
    let got = send(&f.client, post(&f.url("/echo"), full("hello shadow"))).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "hello shadow", "the live body is untouched");

    // Over the cap, announced: the live request streams whole, no copy.
    let big = vec![b'x'; 4096];
    let got = send(&f.client, post(&f.url("/echo"), full(big.clone()))).await;
    assert_eq!(got.body.len(), big.len(), "the live body streams whole");
    // Over the cap, discovered while streaming (chunked, no length).
    let (tx, body) = channel_body();
    let client = f.client.clone();
    let url = f.url("/echo");
    let streamed = tokio::spawn(async move { send(&client, post(&url, body)).await });
    for _ in 0..8 {
        tx.send(Bytes::from(vec![b'y'; 512]))
            .await
            .expect("send chunk");
    }
    drop(tx);
    let got = streamed.await.expect("streamed POST");
    assert_eq!(
        got.body.len(),
        8 * 512,
        "the live chunked body streams whole"
    );
    // A method the mirror does not copy.
    let got = send(
        &f.client,
        Request::put(f.url("/echo")).body(full("put")).expect("PUT"),
    )
    .await;
    assert_eq!(got.status, 200);

    wait_until(LIMIT, "two copies at the shadow", || {
        seen(&record).len() >= 2
    })
    .await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while mirrored(&f, "skipped").await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the two over-cap bodies were not counted as skipped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let copies = seen(&record);
    assert_eq!(
        copies.len(),
        2,
        "only the GET and the small POST: {copies:?}"
    );
    let get_copy = copies
        .iter()
        .find(|c| c.method == Method::GET)
        .expect("the GET's copy");
    assert_eq!(get_copy.path, "/a");
    assert_eq!(get_copy.shadow.as_deref(), Some("1"));
    let post_copy = copies
        .iter()
        .find(|c| c.method == Method::POST)
        .expect("the POST's copy");
    assert_eq!(post_copy.path, "/echo");
    assert_eq!(post_copy.shadow.as_deref(), Some("1"));
    assert_eq!(&post_copy.body[..], b"hello shadow");
    assert_eq!(mirrored(&f, "sent").await, 2);
    assert_eq!(mirrored(&f, "dropped").await, 0);
    assert_eq!(mirrored(&f, "failed").await, 0);

    // The pairs show in /status: both 200, no mismatch.
    let web = f
        .wait_web(LIMIT, "two pairs in /status", |w| {
            w["mirror"]["pairs"].as_u64() == Some(2)
        })
        .await;
    let mirror = &web["mirror"];
    assert_eq!(mirror["version"], "canary");
    assert_eq!(mirror["mismatches"], 0);
    assert_eq!(mirror["copies"]["skipped"], 2);
    assert_eq!(
        mirror["verdict"],
        Value::Null,
        "no shadow stage, no verdict"
    );
    // And in `veer status`, for people.
    let out = veer_ok(&["status", "--admin", &f.admin_url()], 0).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "mirror: 100% to canary (dropped 0, failed 0, sent 2, skipped 2; 0 in flight)"
        ),
        "{text}"
    );
    assert!(
        text.contains("pairs 2 in 30s: mismatch 0.00% (0)"),
        "{text}"
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_shadow_leaves_live_answers_alone() {
    let stable = Upstream::start("stable").await;
    let shadow = Upstream::start("canary").await;
    shadow.set_delay(Duration::from_secs(3600));
    const CONCURRENCY: u64 = 4;
    const REQUESTS: u64 = 200;
    let yaml = web_yaml(
        &[
            v("stable", stable.addr(), 100),
            v("canary", shadow.addr(), 0),
        ],
        &format!("    mirror: {{ version: canary, concurrency: {CONCURRENCY}, timeout: 30s }}\n"),
        None,
    );
    let f = Fixture::start(&yaml).await;
    // Eight clients at once, every answer from the live version.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let client = f.client.clone();
        let url = f.url("/");
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..REQUESTS / 8 {
                let got = send(&client, get(&url, None)).await;
                answers.push((got.status.as_u16(), got.upstream().map(str::to_string)));
            }
            answers
        }));
    }
    let mut answered = 0;
    for client in clients {
        for (status, upstream) in client.await.expect("client task") {
            assert_eq!((status, upstream.as_deref()), (200, Some("stable")));
            answered += 1;
        }
    }
    assert_eq!(answered, REQUESTS);
    // Copies beyond the budget were dropped, and only the budget is held.
    let dropped = mirrored(&f, "dropped").await;
    assert!(
        dropped >= REQUESTS - CONCURRENCY,
        "{dropped} of {REQUESTS} copies dropped"
    );
    let web = f.web().await;
    let in_flight = web["mirror"]["in_flight"].as_u64().expect("in_flight");
    assert!(in_flight <= CONCURRENCY, "{in_flight} copies in flight");
    assert!(
        shadow.total() <= CONCURRENCY,
        "the shadow got {} copies at once",
        shadow.total()
    );
    assert_eq!(mirrored(&f, "sent").await, 0);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_is_down_is_rested_not_tried_for_every_request() {
    let stable = Upstream::start("stable").await;
    let down = support::raw::closed_port();
    const REQUESTS: u64 = 200;
    let yaml = web_yaml(
        &[v("stable", stable.addr(), 100), v("canary", down, 0)],
        "    mirror: { version: canary, concurrency: 4 }\n",
        None,
    );
    let f = Fixture::start(&yaml).await;
    for _ in 0..REQUESTS {
        let got = send(&f.client, get(&f.url("/"), None)).await;
        assert_eq!((got.status.as_u16(), got.upstream()), (200, Some("stable")));
    }
    // Every copy is either tried and failed, or dropped while the shadow
    // rests; far fewer are tried than requests made.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while mirrored(&f, "failed").await + mirrored(&f, "dropped").await < REQUESTS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "copies not all accounted for within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failed = mirrored(&f, "failed").await;
    assert!(
        failed < REQUESTS / 2,
        "{failed} of {REQUESTS} copies were tried on a shadow that refuses them"
    );
    assert_eq!(mirrored(&f, "sent").await, 0);
    f.shutdown().await;
}

/// The guard and a rollout that starts with a shadow stage of `hold`.
fn shadow_rollout(hold: &str) -> String {
    format!(
        "    guard: {{ baseline: stable, interval: 200ms, window: 5s, min_requests: 20, consecutive: 2, max_error_rate: 0.5 }}\n\
         \x20   mirror: {{ version: canary }}\n\
         \x20   rollout: {{ candidate: canary, steps: [50, 100], hold: 1h, shadow: {{ hold: {hold}, max_mismatch_rate: 0.05, max_latency_ratio: 20 }} }}\n"
    )
}

/// `web`'s release history, newest first.
async fn history(f: &Fixture) -> Vec<Value> {
    let answer = send(
        &f.client,
        get(&format!("{}/services/web/history", f.admin_url()), None),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body: Value = serde_json::from_slice(&answer.body).expect("history is JSON");
    body["records"].as_array().cloned().expect("records")
}

/// The rollout's record in `records`.
fn rollout_record(records: &[Value]) -> &Value {
    records
        .iter()
        .find(|r| r["kind"] == "rollout")
        .unwrap_or_else(|| panic!("no rollout record in {records:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_failing_a_fifth_of_copies_never_serves_a_user() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    canary.set_fail_ratio(0.2);
    let yaml = web_yaml(
        &[
            v("stable", stable.addr(), 100),
            v("canary", canary.addr(), 0),
        ],
        &shadow_rollout("1s"),
        None,
    );
    let f = Fixture::start(&yaml).await;
    let rollout = f.rollout().await;
    assert_eq!(
        (rollout["step"].as_u64(), rollout["percent"].as_u64()),
        (Some(1), Some(0))
    );
    let wait = spawn_wait(&f.admin_url(), "30s");
    let load = f.paced_load(100, 3000, LIMIT);
    let web = f
        .wait_web(LIMIT, "the shadow stage rolled back", |w| {
            w["rollout"]["state"] == "rolled_back"
        })
        .await;
    let samples = load.finish().await;
    let (code, out) = finish_wait(wait).await;
    assert_eq!(code, Some(1), "veer wait exits 1 on a failed shadow\n{out}");

    let by: Vec<_> = samples.iter().filter_map(answered_by).collect();
    assert!(
        by.iter().all(|u| *u == "stable"),
        "a live request reached the candidate: {:?}",
        tally(&samples)
    );
    let latches = web["guard"]["latches"].as_array().expect("latches");
    assert_eq!(latches.len(), 1, "{web:#}");
    assert_eq!(latches[0]["version"], "canary");
    assert_eq!(latches[0]["reason"], "shadow_mismatch");
    let event = &web["guard"]["events"][0];
    assert_eq!(event["reason"], "shadow_mismatch");
    let observed = event["observed"].as_f64().expect("observed");
    assert!(observed > 0.05, "mismatch rate {observed}");
    assert_eq!(
        web["versions"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == "canary"))
            .map(|v| v["window"]["requests"].clone()),
        Some(Value::from(0)),
        "the candidate took no live request"
    );
    // The latched candidate gets no more copies.
    let sent = mirrored(&f, "sent").await + mirrored(&f, "failed").await;
    let got = send(&f.client, get(&f.url("/"), None)).await;
    assert_eq!(got.upstream(), Some("stable"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        mirrored(&f, "sent").await + mirrored(&f, "failed").await,
        sent
    );

    // The history: the rollout rolled back at its shadow stage, the stage's
    // pairs with it, and the trip.
    let records = history(&f).await;
    let rollout = rollout_record(&records);
    assert_eq!(rollout["outcome"], "rolled_back", "{rollout:#}");
    assert_eq!(rollout["reason"], "shadow_mismatch", "{rollout:#}");
    let steps = rollout["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 1, "never left the shadow stage: {rollout:#}");
    assert_eq!(steps[0]["percent"], 0);
    let stage = &steps[0]["shadow"];
    assert_eq!(stage["version"], "canary", "{rollout:#}");
    assert!(stage["pairs"].as_u64() >= Some(20), "{stage:#}");
    assert!(stage["mismatch_rate"].as_f64() > Some(0.05), "{stage:#}");
    assert!(stage["copies"]["sent"].as_u64() > Some(0), "{stage:#}");
    assert!(
        stage["verdict"]
            .as_str()
            .is_some_and(|v| v.starts_with("bad: shadow_mismatch ")),
        "{stage:#}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "trip" && r["reason"] == "shadow_mismatch"),
        "{records:#?}"
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_shadow_passes_to_the_first_live_step() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let yaml = web_yaml(
        &[
            v("stable", stable.addr(), 100),
            v("canary", canary.addr(), 0),
        ],
        &shadow_rollout("1s"),
        None,
    );
    let f = Fixture::start(&yaml).await;
    let load = f.paced_load(100, 3000, LIMIT);
    let web = f
        .wait_web(LIMIT, "the first live step", |w| w["rollout"]["step"] == 2)
        .await;
    assert_eq!(web["rollout"]["percent"], 50);
    assert_eq!(web["rollout"]["state"], "in_progress");
    assert!(web["guard"]["latches"]
        .as_array()
        .is_some_and(Vec::is_empty));
    // Live requests now reach the candidate.
    wait_until(LIMIT, "live requests at the candidate", || {
        load.count(|s| answered_by(s) == Some("canary")) > 0
    })
    .await;
    let samples = load.finish().await;
    assert!(
        samples.iter().all(|s| s.record.starts_with("200 ")),
        "{:?}",
        tally(&samples)
    );
    // The history: the shadow stage, left for the first live step with its
    // healthy pairs.
    let records = history(&f).await;
    let rollout = rollout_record(&records);
    assert_eq!(rollout["outcome"], "in_progress", "{rollout:#}");
    let steps = rollout["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{rollout:#}");
    assert_eq!(
        (&steps[0]["percent"], &steps[0]["left_by"]),
        (&Value::from(0), &Value::from("rollout")),
        "{rollout:#}"
    );
    let stage = &steps[0]["shadow"];
    assert_eq!(stage["verdict"], "healthy", "{rollout:#}");
    assert_eq!(stage["mismatches"], 0, "{stage:#}");
    assert!(stage["pairs"].as_u64() >= Some(20), "{stage:#}");
    assert!(steps[1].get("shadow").is_none(), "a live step: {rollout:#}");
    let out = tokio::process::Command::new(support::release::BIN)
        .args(["history", "web", "--admin", &f.admin_url()])
        .output()
        .await
        .expect("veer history runs");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("      shadow stage: canary ") && table.contains("0.00% mismatched"),
        "{table}"
    );
    assert!(table.contains(" sent, 0 dropped, "), "{table}");
    assert!(
        table.trim_end().lines().any(|l| l.ends_with("; healthy")),
        "{table}"
    );
    f.shutdown().await;
}

// ---------------------------------------------------------------- config

const BASE: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
services:
  - name: app
    versions:
      - name: stable
        endpoints: [127.0.0.1:18081]
        weight: 100
      - name: canary
        endpoints: [127.0.0.1:18082]
        weight: 0
";

#[track_caller]
fn refused(lines: &str, expected: &[&str]) {
    let text = format!("{BASE}{lines}");
    match veer::config::parse_str(&text, "test.yaml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(errors) => {
            let got = errors.to_string();
            for want in expected {
                assert!(got.contains(want), "missing {want:?} in:\n{got}");
            }
        }
    }
}

#[test]
fn bad_mirror_blocks_are_refused_with_their_reason() {
    refused(
        "    mirror: { percent: 50 }\n",
        &["services[0].mirror.version: missing version: name the version that gets the copies, such as canary"],
    );
    refused(
        "    mirror: { version: green }\n",
        &["services[0].mirror.version: unknown version `green`"],
    );
    refused(
        "    mirror: { version: canary, methods: [GET, POST] }\n",
        &["services[0].mirror.methods[1]: POST is not a safe method: a copy would repeat its side effects on the shadow; set allow_unsafe: true only if the shadow skips side effects for requests carrying x-veer-shadow: 1"],
    );
    refused(
        "    mirror: { version: canary, methods: [] }\n",
        &["services[0].mirror.methods: no methods: list the methods to copy, such as [GET, HEAD], or remove methods for that default"],
    );
    refused(
        "    mirror: { version: canary, methods: [GET, get] }\n",
        &["services[0].mirror.methods[1]: duplicate method GET: remove one"],
    );
    refused(
        "    mirror: { version: canary, methods: [\"GE T\"] }\n",
        &["services[0].mirror.methods[0]: `GE T` is not an HTTP method"],
    );
    refused(
        "    mirror: { version: canary, percent: 0 }\n",
        &["services[0].mirror.percent: 0 is outside 1..=100 (percent of requests copied)"],
    );
    refused(
        "    mirror: { version: canary, concurrency: 0 }\n",
        &["services[0].mirror.concurrency: 0 is outside 1..=100000 (copies in flight at once; more are dropped)"],
    );
    refused(
        "    mirror: { version: canary, max_body: 99999999 }\n",
        &["services[0].mirror.max_body: 99999999 is outside 0..=16777216"],
    );
    refused(
        "    mirror: { version: canary, timeout: 0s }\n",
        &["services[0].mirror.timeout: `0s` is zero: this needs a duration above 0"],
    );
    refused(
        "    mirror: { version: canary, copies: 3 }\n",
        &["unknown field `copies`"],
    );
}

#[test]
fn bad_shadow_stages_are_refused_with_their_reason() {
    let guard = "    guard: { baseline: stable, max_error_rate: 0.1 }\n";
    refused(
        &format!("{guard}    rollout: {{ candidate: canary, steps: [100], hold: 1m, shadow: {{ hold: 1m, max_mismatch_rate: 0.01 }} }}\n"),
        &["services[0].rollout.shadow: a shadow stage judges mirrored copies: add `mirror: { version: canary }` to the service (the mirror's version must be the rollout's candidate)"],
    );
    refused(
        &format!("{guard}    mirror: {{ version: stable }}\n    rollout: {{ candidate: canary, steps: [100], hold: 1m, shadow: {{ hold: 1m, max_mismatch_rate: 0.01 }} }}\n"),
        &["services[0].rollout.shadow: a shadow stage judges mirrored copies"],
    );
    refused(
        &format!("{guard}    mirror: {{ version: canary }}\n    rollout: {{ candidate: canary, steps: [100], hold: 1m, shadow: {{ max_mismatch_rate: 0.01 }} }}\n"),
        &["services[0].rollout.shadow.hold: missing hold: say how long the candidate is judged on mirrored copies before its first live step, such as 10m"],
    );
    refused(
        &format!("{guard}    mirror: {{ version: canary }}\n    rollout: {{ candidate: canary, steps: [100], hold: 1m, shadow: {{ hold: 1m }} }}\n"),
        &["services[0].rollout.shadow.max_mismatch_rate: missing max_mismatch_rate: give the share of pairs where the shadow may fail and the live answer did not, such as 0.01"],
    );
    refused(
        &format!("{guard}    mirror: {{ version: canary }}\n    rollout: {{ candidate: canary, steps: [100], hold: 1m, shadow: {{ hold: 1m, max_mismatch_rate: 2, max_latency_ratio: 0.5, min_requests: 0 }} }}\n"),
        &[
            "services[0].rollout.shadow.max_mismatch_rate: `2` is outside 0..=1",
            "services[0].rollout.shadow.max_latency_ratio: `0.5` is below 1",
            "services[0].rollout.shadow.min_requests: 0 is outside 1..=1000000000",
        ],
    );
}

#[test]
fn a_good_mirror_and_shadow_stage_are_read_as_written() {
    let text = format!(
        "{BASE}    guard: {{ baseline: stable, max_error_rate: 0.1, min_requests: 7 }}\n\
         \x20   mirror: {{ version: canary, percent: 25, methods: [GET, POST], allow_unsafe: true, max_body: 100, concurrency: 3, timeout: 2s }}\n\
         \x20   rollout: {{ candidate: canary, steps: [10, 100], hold: 1m, shadow: {{ hold: 30s, max_mismatch_rate: 0.01 }} }}\n"
    );
    let config = veer::config::parse_str(&text, "test.yaml").expect("a valid config");
    let service = &config.services[0];
    let mirror = service.mirror.as_ref().expect("the mirror");
    assert_eq!(mirror.version, 1);
    assert_eq!(mirror.percent.get(), 25);
    assert_eq!(mirror.methods, vec![Method::GET, Method::POST]);
    assert_eq!((mirror.max_body, mirror.concurrency), (100, 3));
    assert_eq!(mirror.timeout, Duration::from_secs(2));
    let rollout = service.rollout.as_ref().expect("the rollout");
    let percents: Vec<u32> = rollout.steps.iter().map(|s| s.percent).collect();
    assert_eq!(
        percents,
        vec![0, 10, 100],
        "the shadow stage is step 1, at 0 %"
    );
    assert_eq!(
        rollout.steps[0].hold,
        veer::config::Hold::For(Duration::from_secs(30))
    );
    // Defaults: GET and HEAD, 100 %.
    let text = format!("{BASE}    mirror: {{ version: canary }}\n");
    let config = veer::config::parse_str(&text, "test.yaml").expect("a valid config");
    let mirror = config.services[0].mirror.as_ref().expect("the mirror");
    assert_eq!(mirror.methods, vec![Method::GET, Method::HEAD]);
    assert_eq!(mirror.percent.get(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deterministic_routes_compare_the_bodies_too() {
    // Both answer 200, with their own names: other bytes, same status.
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let yaml = web_yaml(
        &[
            v("stable", stable.addr(), 100),
            v("canary", canary.addr(), 0),
        ],
        "    mirror: { version: canary, deterministic: [/price] }\n",
        None,
    );
    let f = Fixture::start(&yaml).await;
    for _ in 0..5 {
        let got = send(&f.client, get(&f.url("/price/1"), None)).await;
        assert_eq!(
            got.text(),
            "stable",
            "the live body reaches the client whole"
        );
        let got = send(&f.client, get(&f.url("/list"), None)).await;
        assert_eq!(got.upstream(), Some("stable"));
    }
    let web = f
        .wait_web(LIMIT, "ten pairs", |w| {
            w["mirror"]["pairs"].as_u64() == Some(10)
        })
        .await;
    let mirror = &web["mirror"];
    assert_eq!(mirror["body_mismatches"], 5, "{mirror:#}");
    assert_eq!(mirror["mismatches"], 5, "{mirror:#}");
    f.shutdown().await;
}

#[test]
fn a_deterministic_route_must_be_a_path_prefix() {
    refused(
        "    mirror: { version: canary, deterministic: [price] }\n",
        &["services[0].mirror.deterministic[0]: `price` does not start with `/`: write a path prefix such as /api"],
    );
}
