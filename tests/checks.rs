//! Web checks end to end: veer in-process with its admin API, a JSON
//! endpoint on loopback that the test controls (the number it answers, an
//! HTTP error, a body that is not JSON), the webhook on the same server,
//! and the real `veer wait`.
//!
//! - Passing checks let the steps advance; a failing one holds the step.
//! - A value out of bounds `failure_limit` times in a row trips the
//!   candidate: weights to the baseline, latch, webhook, `veer wait` exit 1.
//! - A check that cannot read a number (500, bad JSON, nobody listening, no
//!   answer within its timeout) is inconclusive, and `inconclusive_limit` of them pause the rollout with
//!   the reason: no rollback.
//! - A guard's check trips a version in steady state.
//! - A Prometheus query's placeholders are escaped as PromQL strings.
//! - A reload's new bound applies at the next run.
//!
//! Nothing here asserts a time: every wait is a poll with a generous bound.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use support::metrics::{scrape, sum};
use support::raw::closed_port;
use support::release::{at, output_text, v, veer, web_yaml, weight, Fixture, LIMIT};
use support::upstream::Upstream;

/// What the JSON endpoint answers.
#[derive(Debug, Clone)]
enum Answer {
    /// `{"data": {"ratio": VALUE}}`
    Value(f64),
    Status(u16),
    NotJson,
    /// No answer at all (the check's timeout ends the run).
    Stall,
}

/// One request the endpoint saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query, as sent.
    target: String,
    authorization: Option<String>,
    team: Option<String>,
    body: String,
}

/// The JSON endpoint (any path but `/hooks`) and the webhook (`/hooks`).
struct Board {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    hooks: Arc<Mutex<Vec<Value>>>,
}

impl Board {
    async fn start(first: Answer) -> Board {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind board");
        let addr = listener.local_addr().expect("board addr");
        let answer = Arc::new(Mutex::new(first));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hooks = Arc::new(Mutex::new(Vec::new()));
        let (a, s, h) = (answer.clone(), seen.clone(), hooks.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (a, s, h) = (a.clone(), s.clone(), h.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: Request<hyper::body::Incoming>| {
                            let (a, s, h) = (a.clone(), s.clone(), h.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|c| c.to_bytes())
                                    .unwrap_or_default();
                                let header = |name: &str| {
                                    parts
                                        .headers
                                        .get(name)
                                        .and_then(|v| v.to_str().ok())
                                        .map(str::to_string)
                                };
                                if parts.uri.path() == "/hooks" {
                                    h.lock()
                                        .expect("hooks")
                                        .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                                    return Ok::<_, Infallible>(Response::new(Full::new(
                                        Bytes::from_static(b"ok"),
                                    )));
                                }
                                s.lock().expect("seen").push(Seen {
                                    method: parts.method.to_string(),
                                    target: parts
                                        .uri
                                        .path_and_query()
                                        .map_or("/", |p| p.as_str())
                                        .to_string(),
                                    authorization: header("authorization"),
                                    team: header("x-team"),
                                    body: String::from_utf8_lossy(&body).into_owned(),
                                });
                                let answer = a.lock().expect("answer").clone();
                                if matches!(answer, Answer::Stall) {
                                    tokio::time::sleep(Duration::from_secs(30)).await;
                                }
                                let prometheus = parts.uri.path() == "/api/v1/query";
                                let (status, text) = match answer {
                                    // Prometheus's instant-query answer: one series.
                                    Answer::Value(v) if prometheus => (
                                        200,
                                        format!(
                                            "{{\"status\":\"success\",\"data\":{{\"resultType\":\"vector\",\
                                             \"result\":[{{\"metric\":{{}},\"value\":[1,\"{v}\"]}}]}}}}"
                                        ),
                                    ),
                                    Answer::Value(v) => {
                                        (200, format!("{{\"data\": {{\"ratio\": {v}}}}}"))
                                    }
                                    Answer::Status(code) => {
                                        (code, "{\"error\": \"backend down\"}".to_string())
                                    }
                                    Answer::NotJson | Answer::Stall => {
                                        (200, "<html>maintenance</html>".to_string())
                                    }
                                };
                                let mut response = Response::new(Full::new(Bytes::from(text)));
                                *response.status_mut() =
                                    StatusCode::from_u16(status).expect("status");
                                Ok(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Board {
            addr,
            answer,
            seen,
            hooks,
        }
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().expect("answer") = answer;
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    fn hooks(&self) -> Vec<Value> {
        self.hooks.lock().expect("hooks").clone()
    }
}

const GUARD: &str = "baseline: stable, interval: 100ms, window: 2s, min_requests: 5, \
                     consecutive: 2, max_error_rate: 0.5";

/// The `web` config: stable and canary, the guard, and a rollout whose one
/// check reads `url` (`extra`: more fields of the check).
fn config(
    stable: &Upstream,
    canary: &Upstream,
    url: &str,
    extra: &str,
    hook: Option<&str>,
) -> String {
    let webhook = hook
        .map(|h| format!(", webhook: '{h}'"))
        .unwrap_or_default();
    let blocks = format!(
        "    guard: {{ {GUARD}{webhook} }}\n\
         \x20   rollout:\n\
         \x20     candidate: canary\n\
         \x20     steps: [50, 100]\n\
         \x20     hold: 200ms\n\
         \x20     checks:\n\
         \x20       - name: conversion\n\
         \x20         web: {{ url: '{url}', field: data.ratio }}\n\
         \x20         max: 0.02\n\
         \x20         interval: 1s\n{extra}"
    );
    web_yaml(
        &[
            v("stable", stable.addr(), 100),
            v("canary", canary.addr(), 0),
        ],
        &blocks,
        None,
    )
}

fn check_of(web: &Value) -> Value {
    web["checks"]["results"][0].clone()
}

/// A check that fails (without reaching its limit) holds the step whatever
/// the hold; once it passes the steps go on to completion. The query the
/// endpoint received carries the placeholders' values, escaped, the header
/// and the token from its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_checks_let_the_steps_advance_and_a_failing_one_holds_the_step() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let board = Board::start(Answer::Value(0.05)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").expect("token");
    let url = format!(
        "http://{}/ratio?service={{{{service}}}}&v={{{{version}}}}&rev={{{{revision}}}}&base={{{{baseline}}}}",
        board.addr
    );
    let yaml = config(
        &stable,
        &canary,
        &url,
        "          failure_limit: 1000\n",
        None,
    )
    .replace(
        "field: data.ratio }",
        &format!(
            "field: data.ratio, headers: {{ x-team: '{{{{service}}}}' }}, token_file: '{}' }}",
            token.display()
        ),
    );
    let f = Fixture::start(&yaml).await;
    let load = f.paced_load(100, 6_000, Duration::from_secs(50));

    let held = f
        .wait_web(LIMIT, "the failing check holds step 1", |w| {
            check_of(w)["consecutive_failures"].as_u64() >= Some(2)
        })
        .await;
    assert!(at(&held, 1, "in_progress"), "{held:#}");
    let gate = held["rollout"]["gate"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        gate, "waiting for checks: `conversion` was fail at step 1 (0.05 is above max 0.02)",
        "{held:#}"
    );
    let c = check_of(&held);
    assert_eq!(c["verdict"], "fail", "{c:#}");
    assert_eq!(c["value"], 0.05);
    assert_eq!(c["max"], 0.02);
    assert_eq!(c["version"], "canary");
    assert_eq!(c["scope"], "rollout");
    assert_eq!(c["source"], "web");

    board.set(Answer::Value(0.01));
    let done = f
        .wait_web(LIMIT, "completion once the check passes", |w| {
            at(w, 2, "completed")
        })
        .await;
    assert_eq!((weight(&done, "stable"), weight(&done, "canary")), (0, 100));
    let out = veer(&["wait", "web", "--admin", &f.admin_url(), "--timeout", "10s"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));

    let seen = board.seen();
    let first = seen.first().expect("the endpoint was asked");
    assert_eq!(first.method, "GET");
    assert_eq!(
        first.target,
        "/ratio?service=web&v=canary&rev=1.2.0&base=stable"
    );
    assert_eq!(first.authorization.as_deref(), Some("Bearer s3cret"));
    assert_eq!(first.team.as_deref(), Some("web"));

    let metrics = scrape(&f.client, f.admin).await;
    let runs = |result: &str| {
        sum(
            &metrics,
            "veer_check_runs_total",
            &[
                ("service", "web"),
                ("check", "conversion"),
                ("result", result),
            ],
        )
    };
    assert!(runs("fail") >= 2.0, "fail runs: {}", runs("fail"));
    assert!(runs("pass") >= 1.0, "pass runs: {}", runs("pass"));
    assert_eq!(runs("inconclusive"), 0.0);
    let status = veer(&["status", "web", "--admin", &f.admin_url()]).await;
    let text = output_text(&status);
    assert!(text.contains("  checks:\n    conversion"), "{text}");
    assert!(text.contains("runs: "), "{text}");
    load.finish().await;
    f.shutdown().await;
}

/// Out of bounds `failure_limit` times in a row: the candidate trips as the
/// guard trips it. One publish sends all traffic to the baseline, the latch
/// names the check, the webhook gets the event with the value and the
/// bound, and `veer wait` exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_out_of_bounds_failure_limit_times_trips_the_candidate() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let board = Board::start(Answer::Value(0.5)).await;
    let hook = format!("http://{}/hooks", board.addr);
    let yaml = config(
        &stable,
        &canary,
        &format!("http://{}/ratio", board.addr),
        "          failure_limit: 2\n",
        Some(&hook),
    );
    let f = Fixture::start(&yaml).await;
    let tripped = f
        .wait_web(LIMIT, "the check trips the candidate", |w| {
            w["rollout"]["state"] == "rolled_back"
        })
        .await;
    assert_eq!(
        (weight(&tripped, "stable"), weight(&tripped, "canary")),
        (100, 0)
    );
    let latch = &tripped["guard"]["latches"][0];
    assert_eq!(latch["version"], "canary", "{tripped:#}");
    assert_eq!(latch["reason"], "check:conversion");
    let c = check_of(&tripped);
    assert_eq!(c["consecutive_failures"], 2, "{c:#}");
    assert_eq!(c["verdict"], "fail");

    support::wait_until(LIMIT, "the webhook gets the event", || {
        !board.hooks().is_empty()
    })
    .await;
    let event = &board.hooks()[0];
    assert_eq!(event["action"], "rollback", "{event:#}");
    assert_eq!(event["reason"], "check:conversion");
    assert_eq!(event["version"], "canary");
    assert_eq!(event["observed"], 0.5);
    assert_eq!(event["threshold"], 0.02);
    assert_eq!(event["weights"]["stable"], 100);

    let out = veer(&["wait", "web", "--admin", &f.admin_url(), "--timeout", "10s"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("web: canary 1.2.0 latched: check:conversion (observed 0.5, threshold 0.02)"),
        "{text}"
    );
    let metrics = scrape(&f.client, f.admin).await;
    assert_eq!(
        sum(
            &metrics,
            "veer_guard_trips_total",
            &[
                ("service", "web"),
                ("version", "canary"),
                ("reason", "check:conversion")
            ]
        ),
        1.0
    );
    f.shutdown().await;
}

/// The check's own failures — an HTTP error, an answer that is not JSON,
/// nobody listening — are inconclusive: counted, shown, and at
/// `inconclusive_limit` in a row the rollout pauses with the reason. The
/// candidate keeps its step and its weight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_that_cannot_read_a_number_pauses_the_rollout_not_rolls_it_back() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let board = Board::start(Answer::Status(500)).await;
    let down = closed_port();
    let cases = [
        (
            format!("http://{}/ratio", board.addr),
            Some(Answer::Status(500)),
            "the endpoint answered 500 Internal Server Error: {\"error\": \"backend down\"}",
        ),
        (
            format!("http://{}/ratio", board.addr),
            Some(Answer::NotJson),
            "the answer is not JSON (expected value at line 1 column 1): <html>maintenance</html>",
        ),
        (format!("http://{down}/ratio"), None, "unreachable: "),
        (
            format!("http://{}/ratio", board.addr),
            Some(Answer::Stall),
            "no answer within 500ms (the check's timeout)",
        ),
    ];
    for (url, answer, reason) in cases {
        if let Some(answer) = answer {
            board.set(answer);
        }
        let yaml = config(
            &stable,
            &canary,
            &url,
            "          inconclusive_limit: 2\n          timeout: 500ms\n",
            None,
        );
        let f = Fixture::start(&yaml).await;
        let paused = f
            .wait_web(LIMIT, "the rollout pauses", |w| {
                w["rollout"]["paused"] == true
            })
            .await;
        assert!(at(&paused, 1, "in_progress"), "{paused:#}");
        assert_eq!(
            (weight(&paused, "stable"), weight(&paused, "canary")),
            (50, 50)
        );
        assert!(paused["guard"]["latches"]
            .as_array()
            .is_some_and(Vec::is_empty));
        let c = check_of(&paused);
        assert_eq!(c["verdict"], "inconclusive", "{c:#}");
        assert_eq!(c["consecutive_inconclusive"], 2);
        assert_eq!(c["value"], Value::Null);
        let words = c["reason"].as_str().unwrap_or_default();
        assert!(words.contains(reason), "{words} should say {reason}");
        let gate = f
            .wait_web(LIMIT, "the gate says why", |w| {
                w["rollout"]["gate"].as_str().is_some_and(|g| {
                    g.starts_with("paused: check `conversion` was inconclusive 2 times in a row (")
                })
            })
            .await;
        assert!(
            gate["rollout"]["gate"]
                .as_str()
                .is_some_and(|g| g.contains(reason)
                    && g.ends_with("; fix what the check reads, then `veer resume web`")),
            "{gate:#}"
        );
        let metrics = scrape(&f.client, f.admin).await;
        assert!(
            sum(
                &metrics,
                "veer_check_runs_total",
                &[
                    ("service", "web"),
                    ("check", "conversion"),
                    ("result", "inconclusive")
                ]
            ) >= 2.0
        );
        // `veer wait` does not take a pause for an end.
        let out = veer(&["wait", "web", "--admin", &f.admin_url(), "--timeout", "1s"]).await;
        assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
        f.shutdown().await;
    }
}

/// After a pause, `veer resume` starts the checks afresh: a reachable,
/// passing check lets the rollout complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_an_inconclusive_pause_runs_the_checks_again() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let board = Board::start(Answer::NotJson).await;
    let yaml = config(
        &stable,
        &canary,
        &format!("http://{}/ratio", board.addr),
        "          inconclusive_limit: 1\n",
        None,
    );
    let f = Fixture::start(&yaml).await;
    let load = f.paced_load(100, 6_000, Duration::from_secs(50));
    f.wait_web(LIMIT, "paused", |w| w["rollout"]["paused"] == true)
        .await;
    board.set(Answer::Value(0.0));
    let out = veer(&["resume", "web", "--admin", &f.admin_url()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let done = f
        .wait_web(LIMIT, "completion after resume", |w| at(w, 2, "completed"))
        .await;
    assert_eq!(check_of(&done)["verdict"], "pass", "{done:#}");
    load.finish().await;
    f.shutdown().await;
}

/// A guard's check watches every non-baseline version with traffic, with
/// no rollout at all: out of bounds, the version trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_check_trips_a_version_in_steady_state() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let board = Board::start(Answer::Value(0.0)).await;
    let blocks = format!(
        "    guard:\n      baseline: stable\n      max_error_rate: 0.5\n      checks:\n\
         \x20       - name: queue\n\
         \x20         web: {{ url: 'http://{}/depth?v={{{{version}}}}', json_path: '$.data.ratio', method: POST, body: '{{\"rev\": \"{{{{revision}}}}\"}}' }}\n\
         \x20         min: 0.5\n\
         \x20         interval: 1s\n",
        board.addr
    );
    let yaml = web_yaml(
        &[
            v("stable", stable.addr(), 90),
            v("canary", canary.addr(), 10),
        ],
        &blocks,
        None,
    );
    let f = Fixture::start(&yaml).await;
    let tripped = f
        .wait_web(LIMIT, "the guard's check trips canary", |w| {
            weight(w, "canary") == 0
        })
        .await;
    assert_eq!(
        tripped["guard"]["latches"][0]["reason"], "check:queue",
        "{tripped:#}"
    );
    let c = check_of(&tripped);
    assert_eq!(
        (c["scope"].as_str(), c["step"].as_u64()),
        (Some("guard"), None)
    );
    assert_eq!(c["reason"], "0 is below min 0.5");
    let seen = board.seen();
    assert!(
        seen.iter().all(|s| s.target == "/depth?v=canary"
            && s.method == "POST"
            && s.body == r#"{"rev": "1.2.0"}"#),
        "{seen:?}"
    );
    f.shutdown().await;
}

/// `%XX` back to bytes, `+` left alone (veer encodes spaces as `%20`).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("utf-8");
            out.push(u8::from_str_radix(hex, 16).expect("hex"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf-8")
}

/// A Prometheus check's placeholders are PromQL strings: a revision with a
/// quote in it cannot end the label matcher and change the query. The
/// server on loopback answers as Prometheus's HTTP API does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_query_gets_its_placeholders_escaped() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let board = Board::start(Answer::Value(0.01)).await;
    let sly = support::release::V {
        name: "canary",
        revision: "2\"} or vector(1) #",
        endpoint: canary.addr(),
        weight: 10,
    };
    let blocks = format!(
        "    guard:\n      baseline: stable\n      max_error_rate: 0.5\n      checks:\n\
         \x20       - name: errors\n\
         \x20         prometheus:\n\
         \x20           address: http://{}\n\
         \x20           query: 'x{{service=\"{{{{service}}}}\",version=\"{{{{version}}}}\",revision=\"{{{{revision}}}}\"}}'\n\
         \x20         max: 0.02\n\
         \x20         interval: 1s\n",
        board.addr
    );
    let yaml = web_yaml(&[v("stable", stable.addr(), 90), sly], &blocks, None);
    let f = Fixture::start(&yaml).await;
    let passed = f
        .wait_web(LIMIT, "a first pass", |w| check_of(w)["verdict"] == "pass")
        .await;
    assert_eq!(check_of(&passed)["source"], "prometheus", "{passed:#}");
    let seen = board.seen();
    let target = &seen.first().expect("asked").target;
    let query = target
        .strip_prefix("/api/v1/query?query=")
        .unwrap_or_else(|| panic!("not an instant query: {target}"));
    assert_eq!(
        percent_decode(query),
        r#"x{service="web",version="canary",revision="2\"} or vector(1) #"}"#
    );
    f.shutdown().await;
}

/// A reload that changes a check's bounds takes effect at its next run: the
/// step the old bound held goes on under the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_bound_applies_to_the_next_run() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let board = Board::start(Answer::Value(0.05)).await;
    let url = format!("http://{}/ratio", board.addr);
    let yaml = config(
        &stable,
        &canary,
        &url,
        "          failure_limit: 1000\n",
        None,
    );
    let f = Fixture::start(&yaml).await;
    let load = f.paced_load(100, 6_000, Duration::from_secs(50));
    f.wait_web(LIMIT, "the old bound fails", |w| {
        check_of(w)["verdict"] == "fail"
    })
    .await;
    let looser = yaml.replace("max: 0.02", "max: 0.1");
    let config = veer::config::parse_str(&looser, "veer.yaml").expect("valid");
    f.control()
        .apply_config(config)
        .await
        .expect("config applied");
    let done = f
        .wait_web(LIMIT, "completion under the new bound", |w| {
            at(w, 2, "completed")
        })
        .await;
    assert_eq!(check_of(&done)["max"], 0.1, "{done:#}");
    load.finish().await;
    f.shutdown().await;
}
