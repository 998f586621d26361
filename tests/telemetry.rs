//! Per-version telemetry seen from outside: `/metrics` (parsed as Prometheus
//! text by an independent parser) and `/status` count a scripted mix of
//! answers exactly and place its percentiles in the right band; window figures
//! forget what is older than the window; many concurrent tasks lose no count;
//! the health probes answer; `veer status` prints a table, JSON, and exits 2
//! when the admin API cannot be reached.
//!
//! Timing is never asserted: latencies are checked against bands far wider
//! than a loaded machine's noise (a 200 ms delay against fast answers), and
//! every wait is a bounded poll.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus_parse::{LineInfo, Scrape, Value};
use support::binary::VeerProcess;
use support::client::{get, http1_client, send, Answer, HttpClient};
use support::config::LISTENER;
use support::harness::start_with_admin;
use support::load::{LoadPlan, Via};
use support::raw::closed_port;
use support::release::veer as veer_cli;
use support::upstream::Upstream;
use support::within;
use veer::server::RunningProxy;

const LIMIT: Duration = Duration::from_secs(20);

/// The window's stated bound on a percentile's relative error (docs/metrics.md).
const HISTOGRAM_ERROR: f64 = 0.047;

/// A YAML double-quoted scalar.
fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// One version of a hand-written service: (name, revision, endpoints, weight).
type VersionLine<'a> = (&'a str, &'a str, &'a [SocketAddr], u32);

/// A service block for the YAML below; `extra` is appended at service level
/// (e.g. a `guard:` line).
fn service_yaml(name: &str, hosts: &[&str], versions: &[VersionLine<'_>], extra: &str) -> String {
    let mut y = format!("  - name: {}\n", quote(name));
    if !hosts.is_empty() {
        let hosts: Vec<String> = hosts.iter().map(|h| quote(h)).collect();
        y.push_str(&format!("    match: {{ hosts: [{}] }}\n", hosts.join(", ")));
    }
    y.push_str("    versions:\n");
    for (version, revision, endpoints, weight) in versions {
        let eps: Vec<String> = endpoints.iter().map(|e| quote(&e.to_string())).collect();
        y.push_str(&format!(
            "      - name: {}\n        revision: {}\n        endpoints: [{}]\n        weight: {weight}\n",
            quote(version),
            quote(revision),
            eps.join(", ")
        ));
    }
    y.push_str("    timeouts: { connect: 1s, request: 5s }\n");
    if !extra.is_empty() {
        y.push_str(&format!("    {extra}\n"));
    }
    y
}

/// A whole config: listener `public` and the admin API on port 0.
fn config_yaml(services: &[String]) -> String {
    format!(
        "listeners:\n  - name: {LISTENER}\n    address: \"127.0.0.1:0\"\nadmin:\n  address: \"127.0.0.1:0\"\nservices:\n{}",
        services.concat()
    )
}

/// veer in-process with its admin API, and a client for both.
struct Fixture {
    running: RunningProxy,
    client: HttpClient,
    proxy: SocketAddr,
    admin: SocketAddr,
}

impl Fixture {
    async fn start(yaml: &str) -> Fixture {
        let (running, proxy, admin) = start_with_admin(yaml, None).await;
        Fixture {
            running,
            client: http1_client(),
            proxy,
            admin,
        }
    }

    /// GET through the proxy with `Host: host`.
    async fn get(&self, host: &str, path: &str) -> Answer {
        send(
            &self.client,
            get(&format!("http://{}{path}", self.proxy), Some(host)),
        )
        .await
    }

    async fn admin_get(&self, path: &str) -> Answer {
        send(
            &self.client,
            get(&format!("http://{}{path}", self.admin), None),
        )
        .await
    }

    async fn status(&self) -> serde_json::Value {
        let answer = self.admin_get("/status").await;
        assert_eq!(answer.status, 200, "GET /status: {}", answer.text());
        serde_json::from_slice(&answer.body)
            .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {}", answer.text()))
    }

    async fn metrics(&self) -> Metrics {
        let answer = self.admin_get("/metrics").await;
        assert_eq!(answer.status, 200, "GET /metrics: {}", answer.text());
        Metrics::parse(&answer.text())
    }

    async fn shutdown(self) {
        within(LIMIT, "proxy shutdown", self.running.shutdown()).await;
    }
}

/// `/metrics` parsed by `prometheus-parse`, after a strict pass of our own:
/// that parser skips lines it cannot read, so every line must first be a
/// comment, a `# HELP`/`# TYPE` line or a sample with a numeric value.
struct Metrics {
    text: String,
    scrape: Scrape,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        for (n, line) in text.lines().enumerate() {
            match LineInfo::parse(line) {
                LineInfo::Sample { value, .. } => {
                    let ok =
                        matches!(value, "+Inf" | "-Inf" | "NaN") || value.parse::<f64>().is_ok();
                    assert!(
                        ok,
                        "line {}: sample value {value:?} is not a number: {line:?}",
                        n + 1
                    );
                }
                LineInfo::Doc { .. } | LineInfo::Type { .. } | LineInfo::Empty => {}
                LineInfo::Ignored => {
                    // Plain comments are allowed; anything else is not Prometheus text.
                    assert!(
                        line.trim_start().starts_with('#'),
                        "line {} is not Prometheus text: {line:?}\n---\n{text}",
                        n + 1
                    );
                }
            }
        }
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = Scrape::parse(lines).expect("prometheus-parse reads /metrics");
        Metrics {
            text: text.to_string(),
            scrape,
        }
    }

    fn matches(sample: &prometheus_parse::Sample, name: &str, labels: &[(&str, &str)]) -> bool {
        sample.metric == name && labels.iter().all(|(k, v)| sample.labels.get(k) == Some(*v))
    }

    /// A counter, gauge or untyped sample with exactly these labels among its
    /// own; `None` when absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .scrape
            .samples
            .iter()
            .filter(|s| Self::matches(s, name, labels) && s.labels.len() == labels.len())
            .filter_map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
                _ => None,
            })
            .collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?} appears {} times",
            found.len()
        );
        found.first().copied()
    }

    /// Like `value`, with absent read as 0 (a counter never incremented).
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// The cumulative buckets of a histogram series: upper bound -> count.
    fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let sample = self
            .scrape
            .samples
            .iter()
            .find(|s| Self::matches(s, name, labels) && matches!(s.value, Value::Histogram(_)))
            .unwrap_or_else(|| panic!("no histogram {name} {labels:?} in\n{}", self.text));
        let Value::Histogram(counts) = &sample.value else {
            unreachable!()
        };
        let mut out: Vec<(f64, f64)> = counts.iter().map(|c| (c.less_than, c.count)).collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }

    /// The `# TYPE` the exposition declares for `name`.
    fn declared_type(&self, name: &str) -> Option<String> {
        self.text.lines().find_map(|line| {
            let rest = line.strip_prefix("# TYPE ")?;
            let (metric, kind) = rest.split_once(' ')?;
            (metric == name).then(|| kind.trim().to_string())
        })
    }
}

/// A version's entry in `/status`.
fn version_status<'a>(
    status: &'a serde_json::Value,
    service: &str,
    version: &str,
) -> &'a serde_json::Value {
    status["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == service))
        .and_then(|s| s["versions"].as_array())
        .and_then(|all| all.iter().find(|v| v["name"] == version))
        .unwrap_or_else(|| panic!("no {service}/{version} in /status: {status:#}"))
}

/// Sends `paths` through the proxy to `host`, `concurrency` at a time;
/// returns how many answers of each status came back.
async fn fire(
    fixture: &Fixture,
    host: &str,
    paths: Vec<String>,
    concurrency: usize,
) -> BTreeMap<u16, u64> {
    let (proxy, host, total) = (fixture.proxy, host.to_string(), paths.len() as u64);
    let samples = LoadPlan::workers(String::new(), &vec![Via::KeepAlive; concurrency])
        .client(fixture.client.clone())
        .max_requests(total)
        .answer_limit(LIMIT)
        .request(move |n| get(&format!("http://{proxy}{}", paths[n as usize]), Some(&host)))
        .start(|reply| reply.map(|answer| answer.status.as_u16()))
        .join()
        .await;
    let mut statuses = BTreeMap::new();
    for sample in samples {
        let status = sample
            .record
            .unwrap_or_else(|e| panic!("scripted request {}: {e}", sample.n));
        *statuses.entry(status).or_insert(0) += 1;
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_mix_is_counted_exactly_and_percentiles_land_in_their_band() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let dead = closed_port();
    let yaml = config_yaml(&[
        service_yaml(
            "web",
            &["web.example"],
            &[
                ("stable", "1.1.0", &[stable.addr()], 100),
                ("canary", "1.2.0", &[canary.addr()], 0),
            ],
            "",
        ),
        service_yaml("dead", &["dead.example"], &[("v1", "9", &[dead], 1)], ""),
    ]);
    let f = Fixture::start(&yaml).await;

    // Stable: exactly 300 requests, 240 answered 200 at once, 30 answered 500,
    // 30 answered 200 after 200 ms, interleaved.
    let mix: Vec<String> = (0..300)
        .map(|i| match i % 10 {
            0 => "/status/500".to_string(),
            1 => "/delay/200".to_string(),
            _ => "/".to_string(),
        })
        .collect();
    let got = fire(&f, "web.example", mix, 16).await;
    assert_eq!(got, BTreeMap::from([(200, 270), (500, 30)]));
    assert_eq!(stable.total(), 300);

    // Canary: weights move, then 50 answered 200, 10 answered 404 (the
    // client's error, not the version's) and 5 answered 503.
    f.running
        .control()
        .set_weights("web", &[("stable", 0), ("canary", 100)])
        .await
        .expect("weights accepted");
    let mut mix: Vec<String> = vec!["/".to_string(); 50];
    mix.extend(vec!["/status/404".to_string(); 10]);
    mix.extend(vec!["/status/503".to_string(); 5]);
    let got = fire(&f, "web.example", mix, 8).await;
    assert_eq!(got, BTreeMap::from([(200, 50), (404, 10), (503, 5)]));
    assert_eq!(canary.total(), 65);
    assert_eq!(stable.total(), 300, "stable at weight 0 got traffic");

    // A version whose only endpoint refuses connections: 7 failed attempts.
    for _ in 0..7 {
        let answer = f.get("dead.example", "/").await;
        assert!(answer.status.is_server_error(), "{answer:?}");
    }

    let m = f.metrics().await;
    let req = |svc: &str, ver: &str, code: &str| {
        m.count(
            "veer_requests_total",
            &[("service", svc), ("version", ver), ("code", code)],
        )
    };
    // `code` is the exact status, as Prometheus exporters label it.
    assert_eq!(req("web", "stable", "200"), 270.0);
    assert_eq!(req("web", "stable", "500"), 30.0);
    assert_eq!(req("web", "stable", "404"), 0.0);
    assert_eq!(req("web", "stable", "2xx"), 0.0, "no class labels");
    assert_eq!(req("web", "canary", "200"), 50.0);
    assert_eq!(req("web", "canary", "404"), 10.0);
    assert_eq!(req("web", "canary", "503"), 5.0);
    // veer's own answer when the connect is refused.
    assert_eq!(req("dead", "v1", "503"), 7.0);
    let failures = |svc: &str, ver: &str, reason: &str| {
        m.count(
            "veer_upstream_failures_total",
            &[("service", svc), ("version", ver), ("reason", reason)],
        )
    };
    assert_eq!(failures("dead", "v1", "connect"), 7.0);
    for reason in ["connect", "timeout", "reset", "protocol"] {
        assert_eq!(
            failures("web", "stable", reason),
            0.0,
            "an upstream 5xx is not a failed attempt ({reason})"
        );
    }
    let weight = |ver: &str| {
        m.value(
            "veer_version_weight",
            &[("service", "web"), ("version", ver)],
        )
    };
    assert_eq!(weight("stable"), Some(0.0));
    assert_eq!(weight("canary"), Some(100.0));

    // The latency histogram: every request counted; the 30 delayed ones
    // (>= 200 ms) above the 150 ms bucket, all of them under 10 s.
    let stable_labels = [("service", "web"), ("version", "stable")];
    assert_eq!(
        m.value("veer_request_duration_seconds_count", &stable_labels),
        Some(300.0)
    );
    assert_eq!(
        m.value(
            "veer_request_duration_seconds_count",
            &[("service", "web"), ("version", "canary")]
        ),
        Some(65.0)
    );
    let sum = m
        .value("veer_request_duration_seconds_sum", &stable_labels)
        .expect("histogram sum");
    assert!(sum >= 30.0 * 0.2, "30 requests of >= 200 ms, sum {sum}");
    let buckets = m.buckets("veer_request_duration_seconds", &stable_labels);
    let at = |le: f64| {
        buckets
            .iter()
            .find(|(bound, _)| *bound == le || (*bound - le).abs() < 1e-9)
            .map(|(_, c)| *c)
            .unwrap_or_else(|| panic!("no bucket le={le}: {buckets:?}"))
    };
    assert!(
        at(0.15) <= 270.0,
        "delayed requests in le=0.15: {buckets:?}"
    );
    assert_eq!(at(10.0), 300.0, "{buckets:?}");
    assert_eq!(at(f64::INFINITY), 300.0, "{buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "buckets must be cumulative: {buckets:?}"
    );

    // /status: the same counts over the window, and the percentiles.
    let status = f.status().await;
    let s = version_status(&status, "web", "stable");
    assert_eq!(s["weight"], 0);
    assert_eq!(s["revision"], "1.1.0");
    let w = &s["window"];
    assert_eq!(w["requests"], 300, "{w}");
    assert_eq!(w["errors"], 30, "{w}");
    assert!((w["error_rate"].as_f64().expect("error_rate") - 0.1).abs() < 1e-9);
    assert!(w["rps"].as_f64().expect("rps") > 0.0, "{w}");
    let ms = |w: &serde_json::Value, key: &str| {
        w[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {w}"))
    };
    // p50 falls among the 240 immediate answers, p95 and p99 among the 30
    // delayed ones: at least 200 ms less the histogram's error, and well
    // under twice the delay however loaded the machine.
    let floor = 200.0 * (1.0 - HISTOGRAM_ERROR);
    assert!(ms(w, "p50_ms") < 100.0, "p50 {w}");
    for key in ["p95_ms", "p99_ms"] {
        let v = ms(w, key);
        assert!(
            v >= floor && v < 500.0,
            "{key} {v} not in [{floor}, 500): {w}"
        );
    }
    assert!(ms(w, "p50_ms") <= ms(w, "p95_ms") && ms(w, "p95_ms") <= ms(w, "p99_ms"));

    let c = version_status(&status, "web", "canary");
    assert_eq!(c["weight"], 100);
    assert_eq!(c["window"]["requests"], 65, "{}", c["window"]);
    assert_eq!(
        c["window"]["errors"], 5,
        "404 is not an error: {}",
        c["window"]
    );
    assert!(ms(&c["window"], "p50_ms") < 190.0, "{}", c["window"]);

    let d = version_status(&status, "dead", "v1");
    assert_eq!(d["window"]["requests"], 7, "{}", d["window"]);
    assert_eq!(d["window"]["errors"], 7, "{}", d["window"]);
    let endpoints = d["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["address"], dead.to_string());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_older_than_the_window_leave_the_status() {
    let stable = Upstream::start("stable").await;
    // A guard with a 2 s window: /status reports over that window.
    let yaml = config_yaml(&[service_yaml(
        "web",
        &[],
        &[("stable", "1", &[stable.addr()], 1)],
        "guard: { baseline: stable, interval: 1s, window: 2s, max_error_rate: 0.5 }",
    )]);
    let f = Fixture::start(&yaml).await;
    for _ in 0..20 {
        let answer = f.get("web.example", "/status/500").await;
        assert_eq!(answer.status, 500);
    }
    let status = f.status().await;
    let svc = &status["services"][0];
    assert_eq!(svc["window_seconds"], 2, "{svc}");
    let w = &version_status(&status, "web", "stable")["window"];
    assert_eq!(
        (w["requests"].clone(), w["errors"].clone()),
        (20.into(), 20.into()),
        "{w}"
    );

    // Poll (bounded) until the window has moved past them.
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let status = f.status().await;
        let w = version_status(&status, "web", "stable")["window"].clone();
        if w["errors"] == 0 {
            assert_eq!(w["requests"], 0, "{w}");
            assert!(w["p95_ms"].is_null(), "no requests, no percentile: {w}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "errors still in a 2 s window after {LIMIT:?}: {w}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // New requests count from zero; the cumulative counters forget nothing.
    for _ in 0..5 {
        assert_eq!(f.get("web.example", "/").await.status, 200);
    }
    let status = f.status().await;
    let w = &version_status(&status, "web", "stable")["window"];
    assert_eq!(
        (w["requests"].clone(), w["errors"].clone()),
        (5.into(), 0.into()),
        "{w}"
    );
    let m = f.metrics().await;
    let labels = |code| [("service", "web"), ("version", "stable"), ("code", code)];
    assert_eq!(m.count("veer_requests_total", &labels("500")), 20.0);
    assert_eq!(m.count("veer_requests_total", &labels("200")), 5.0);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_recording_loses_no_count() {
    const TASKS: u64 = 20;
    const EACH: u64 = 200;
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    // A long window so the whole run stays inside it on a slow machine.
    let yaml = config_yaml(&[service_yaml(
        "web",
        &[],
        &[
            ("stable", "1", &[stable.addr()], 50),
            ("canary", "2", &[canary.addr()], 50),
        ],
        "guard: { baseline: stable, window: 120s, min_requests: 1000000, max_error_rate: 1 }",
    )]);
    let f = Fixture::start(&yaml).await;
    let url = format!("http://{}/", f.proxy);
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let client = f.client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for _ in 0..EACH {
                if send(&client, get(&url, None)).await.status == 200 {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for task in tasks {
        ok += within(Duration::from_secs(50), "recording task", task)
            .await
            .expect("task");
    }
    assert_eq!(ok, TASKS * EACH);
    assert_eq!(stable.total() + canary.total(), TASKS * EACH);

    let m = f.metrics().await;
    let counted = |ver: &str| {
        m.count(
            "veer_requests_total",
            &[("service", "web"), ("version", ver), ("code", "200")],
        )
    };
    assert_eq!(counted("stable") as u64, stable.total());
    assert_eq!(counted("canary") as u64, canary.total());
    assert_eq!(counted("stable") + counted("canary"), (TASKS * EACH) as f64);
    for ver in ["stable", "canary"] {
        assert_eq!(
            m.value(
                "veer_request_duration_seconds_count",
                &[("service", "web"), ("version", ver)]
            ),
            Some(counted(ver)),
            "histogram count of {ver}"
        );
    }
    let status = f.status().await;
    let windowed: u64 = ["stable", "canary"]
        .iter()
        .map(|v| {
            version_status(&status, "web", v)["window"]["requests"]
                .as_u64()
                .expect("requests")
        })
        .sum();
    assert_eq!(windowed, TASKS * EACH, "{status:#}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_with_the_contract_names() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let yaml = config_yaml(&[service_yaml(
        "web",
        &[],
        &[
            ("stable", "1", &[stable.addr()], 1),
            ("canary", "2", &[canary.addr()], 1),
            ("gone", "3", &[closed_port()], 0),
        ],
        "guard: { baseline: stable, max_error_rate: 0.5 }",
    )]);
    let f = Fixture::start(&yaml).await;
    for path in ["/", "/status/404", "/status/500", "/delay/5"] {
        for _ in 0..4 {
            f.get("web.example", path).await;
        }
    }
    // A manual rollback through the admin API, so a trip is counted too.
    let request = http::Request::post(format!("http://{}/services/web/rollback", f.admin))
        .body(support::client::empty())
        .expect("rollback request");
    let answer = send(&f.client, request).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let events = f.running.control().events("web");
    assert_eq!(events.len(), 2, "canary and gone latched: {events:?}");

    let m = f.metrics().await;
    let expected = [
        ("veer_requests_total", "counter"),
        ("veer_upstream_failures_total", "counter"),
        ("veer_request_duration_seconds", "histogram"),
        ("veer_version_weight", "gauge"),
        ("veer_config_reloads_total", "counter"),
    ];
    for (name, kind) in expected {
        assert_eq!(
            m.declared_type(name).as_deref(),
            Some(kind),
            "# TYPE of {name}\n{}",
            m.text
        );
    }
    // Every contract label on every series.
    let series = |name: &str| -> Vec<&prometheus_parse::Sample> {
        m.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .collect()
    };
    let requests = series("veer_requests_total");
    assert!(!requests.is_empty(), "{}", m.text);
    for s in &requests {
        for label in ["service", "version", "code"] {
            assert!(s.labels.get(label).is_some(), "{label} missing on {s:?}");
        }
        let code = s.labels.get("code").expect("code");
        assert!(
            code.len() == 3 && code.parse::<u16>().is_ok_and(|c| (100..1000).contains(&c)),
            "code label {code}: the exact status"
        );
    }
    for s in series("veer_upstream_failures_total") {
        let reason = s.labels.get("reason").expect("reason label");
        assert!(
            // The contract's four, plus `tls` (a failed handshake to a TLS upstream) and `midstream`
            // (a response that broke after its head), which veer adds.
            [
                "connect",
                "timeout",
                "reset",
                "protocol",
                "tls",
                "midstream"
            ]
            .contains(&reason),
            "reason label {reason}"
        );
    }
    let histograms = series("veer_request_duration_seconds");
    assert!(
        histograms
            .iter()
            .all(|s| matches!(s.value, Value::Histogram(_))),
        "{histograms:?}"
    );
    // Buckets from 1 ms to 10 s, finer at the low end.
    let buckets = m.buckets(
        "veer_request_duration_seconds",
        &[("service", "web"), ("version", "stable")],
    );
    let bounds: Vec<f64> = buckets.iter().map(|b| b.0).collect();
    assert!(bounds.iter().any(|&b| b <= 0.001), "{bounds:?}");
    assert!(
        bounds.iter().any(|&b| (b - 10.0).abs() < 1e-9),
        "{bounds:?}"
    );
    assert!(
        bounds.iter().filter(|&&b| b <= 0.1).count() >= 6,
        "finer at the low end: {bounds:?}"
    );

    assert_eq!(
        m.count(
            "veer_requests_total",
            &[("service", "web"), ("version", "stable"), ("code", "404")]
        ) + m.count(
            "veer_requests_total",
            &[("service", "web"), ("version", "canary"), ("code", "404")]
        ),
        4.0
    );
    assert_eq!(
        m.value(
            "veer_guard_trips_total",
            &[
                ("service", "web"),
                ("version", "canary"),
                ("reason", "manual")
            ]
        ),
        Some(1.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.value(
            "veer_version_weight",
            &[("service", "web"), ("version", "stable")]
        ),
        Some(2.0),
        "the canary's share moved to the baseline"
    );
    assert_eq!(
        m.value(
            "veer_version_weight",
            &[("service", "web"), ("version", "canary")]
        ),
        Some(0.0)
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_answer_once_started_and_readiness_fails_while_draining() {
    let stable = Upstream::start("stable").await;
    let yaml = config_yaml(&[service_yaml(
        "web",
        &[],
        &[("stable", "1", &[stable.addr()], 1)],
        "",
    )]);
    let f = Fixture::start(&yaml).await;
    let live = f.admin_get("/health/liveness").await;
    assert_eq!(live.status, 200, "{}", live.text());
    let ready = f.admin_get("/health/readiness").await;
    assert_eq!(ready.status, 200, "{}", ready.text());

    // A request in flight holds the drain open; meanwhile readiness is 503
    // and liveness still 200.
    let Fixture {
        running,
        client,
        proxy,
        admin,
    } = f;
    let slow = tokio::spawn({
        let client = client.clone();
        async move { send(&client, get(&format!("http://{proxy}/delay/1500"), None)).await }
    });
    support::wait_until(LIMIT, "the slow request reaches the upstream", || {
        stable.total() == 1
    })
    .await;
    let draining = tokio::spawn(running.shutdown());
    let probe = |path: &str| send(&client, get(&format!("http://{admin}{path}"), None));
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let ready = probe("/health/readiness").await;
        if ready.status == 503 {
            break;
        }
        assert_eq!(ready.status, 200, "{}", ready.text());
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness never turned 503 while draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !slow.is_finished() {
        assert_eq!(probe("/health/liveness").await.status, 200);
    }
    let answer = within(LIMIT, "the in-flight request", slow)
        .await
        .expect("slow task");
    assert_eq!(answer.status, 200, "the drain let it finish");
    assert!(
        within(LIMIT, "drain", draining)
            .await
            .expect("shutdown task"),
        "drained cleanly"
    );
}

#[tokio::test]
async fn unknown_admin_paths_are_404() {
    let stable = Upstream::start("stable").await;
    let yaml = config_yaml(&[service_yaml(
        "web",
        &[],
        &[("stable", "1", &[stable.addr()], 1)],
        "",
    )]);
    let f = Fixture::start(&yaml).await;
    for path in [
        "/nothing-here",
        "/health/nothing-here",
        "/services/web/nothing-here",
    ] {
        let answer = f.admin_get(path).await;
        assert_eq!(answer.status, 404, "GET {path}: {}", answer.text());
    }
    f.shutdown().await;
}

/// `veer: admin on ADDR` from the binary's output.
fn admin_of(veer: &VeerProcess) -> SocketAddr {
    veer.output()
        .lines()
        .find_map(|line| line.trim().strip_prefix("veer: admin on ")?.parse().ok())
        .unwrap_or_else(|| panic!("no `veer: admin on` line\n{}", veer.output()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn veer_status_prints_a_table_json_and_exits_2_when_unreachable() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let yaml = config_yaml(&[service_yaml(
        "web",
        &[],
        &[
            ("stable", "1.1.0", &[stable.addr()], 90),
            ("canary", "1.2.0", &[canary.addr()], 10),
        ],
        "guard: { baseline: stable, min_requests: 50, max_error_rate: 0.05 }",
    )]);
    let veer = VeerProcess::start(env!("CARGO_BIN_EXE_veer"), &yaml);
    let admin = format!("http://{}", admin_of(&veer));
    let client = http1_client();
    let url = format!("http://{}/", veer.listener(LISTENER));
    for _ in 0..20 {
        assert_eq!(send(&client, get(&url, None)).await.status, 200);
    }

    let out = veer_cli(&["status", "--admin", &admin]).await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    for needle in [
        "web", "stable", "canary", "1.1.0", "1.2.0", "VERSION", "WEIGHT",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing from\n{stdout}");
    }
    let stable_row = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some("stable"))
        .unwrap_or_else(|| panic!("no stable row in\n{stdout}"));
    let cells: Vec<&str> = stable_row.split_whitespace().collect();
    assert_eq!(cells.get(1), Some(&"1.1.0"), "{stable_row}");
    assert_eq!(cells.get(2), Some(&"90"), "{stable_row}");

    let out = veer_cli(&["status", "--json", "--admin", &admin]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("`veer status --json` prints JSON");
    let versions = json["services"][0]["versions"]
        .as_array()
        .expect("versions");
    let names: Vec<&str> = versions.iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(names, ["stable", "canary"]);
    let served: u64 = versions
        .iter()
        .map(|v| v["window"]["requests"].as_u64().expect("requests"))
        .sum();
    assert_eq!(served, 20);

    // One service by name; an unknown one is refused.
    let out = veer_cli(&["status", "web", "--json", "--admin", &admin]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let one: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(one["name"], "web");
    let out = veer_cli(&["status", "nope", "--admin", &admin]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));

    // Nothing listens there: exit 2 and say what is wrong.
    let nowhere = format!("http://{}", closed_port());
    for args in [
        vec!["status", "--admin", nowhere.as_str()],
        vec!["status", "--json", "--admin", nowhere.as_str()],
    ] {
        let out = veer_cli(&args).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("cannot reach the admin API"),
            "unclear message: {stderr:?}"
        );
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    }
}
