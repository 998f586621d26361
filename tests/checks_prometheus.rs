//! Prometheus checks against a real Prometheus (Debian's `prometheus` 2.x,
//! started here on loopback): it scrapes a small exporter this test serves
//! (a business metric, the checkout conversion ratio of each version) and
//! veer's own `/metrics`, every second.
//!
//! - Healthy: the candidate's conversion against the baseline's, and the
//!   candidate's `veer_requests_total`, pass; the rollout completes.
//! - The test drives the candidate's conversion down: the check fails, the
//!   candidate trips, `veer wait` exits 1.
//! - Prometheus stopped mid-rollout: the runs turn inconclusive and the
//!   rollout pauses with the reason; nothing rolls back.
//!
//! Needs the `prometheus` binary: behind the `prometheus-tests` feature,
//! run by `.ci/checks` (`cargo test --features prometheus-tests --test
//! checks_prometheus`).
#![cfg(feature = "prometheus-tests")]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::rt::TokioIo;

use support::client::get;
use support::release::{at, output_text, v, veer, web_yaml, weight, Fixture, LIMIT};
use support::upstream::Upstream;

/// Serves `shop_checkout_conversion_ratio{version=...}` on `/metrics`.
struct Exporter {
    addr: SocketAddr,
    canary: Arc<Mutex<f64>>,
}

impl Exporter {
    async fn start() -> Exporter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind exporter");
        let addr = listener.local_addr().expect("exporter addr");
        let canary = Arc::new(Mutex::new(0.05));
        let value = canary.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let value = value.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| {
                            let canary = *value.lock().expect("value");
                            let text = format!(
                                "# TYPE shop_checkout_conversion_ratio gauge\n\
                                 shop_checkout_conversion_ratio{{version=\"stable\"}} 0.05\n\
                                 shop_checkout_conversion_ratio{{version=\"canary\"}} {canary}\n"
                            );
                            async move {
                                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Exporter { addr, canary }
    }

    fn set_canary(&self, ratio: f64) {
        *self.canary.lock().expect("value") = ratio;
    }
}

/// A free port on this process's own loopback address `n` (see
/// `support::own_loopback`): nothing else can take it once released.
fn free(n: u8) -> SocketAddr {
    let listener =
        std::net::TcpListener::bind((support::own_loopback(n), 0)).expect("bind own loopback");
    listener.local_addr().expect("addr")
}

/// Prometheus on `addr`, scraping `targets` every second; stopped on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(addr: SocketAddr, targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global: {{ scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s }}\n\
             scrape_configs:\n  - job_name: test\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian: apt-get install prometheus)");
        let prometheus = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        let client = support::client::http1_client();
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let ready = tokio::time::timeout(
                Duration::from_secs(2),
                client.request(get(&format!("http://{addr}/-/ready"), None)),
            )
            .await;
            if matches!(ready, Ok(Ok(ref r)) if r.status() == 200) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus not ready within {LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    /// Waits until `query` returns data: the first scrape happened.
    async fn wait_for_data(&self, query: &str) {
        let client = support::client::http1_client();
        let url = format!("http://{}/api/v1/query?query={query}", self.addr);
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let answer = support::client::send(&client, get(&url, None)).await;
            let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
            if json["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {query} in Prometheus within {LIMIT:?}: {json}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The candidate's conversion against the baseline's, and the candidate's
/// requests as veer counts them; `extra` goes into the first check.
fn checks(prometheus: &str, extra: &str) -> String {
    format!(
        "\x20     checks:\n\
         \x20       - name: conversion\n\
         \x20         prometheus:\n\
         \x20           address: {prometheus}\n\
         \x20           query: >\n\
         \x20             shop_checkout_conversion_ratio{{version=\"{{{{version}}}}\"}}\n\
         \x20             / ignoring(version) shop_checkout_conversion_ratio{{version=\"{{{{baseline}}}}\"}}\n\
         \x20         min: 0.8\n\
         \x20         interval: 1s\n{extra}\
         \x20       - name: traffic\n\
         \x20         prometheus:\n\
         \x20           address: {prometheus}\n\
         \x20           query: sum(veer_requests_total{{service=\"{{{{service}}}}\",version=\"{{{{version}}}}\"}})\n\
         \x20         min: 1\n\
         \x20         interval: 1s\n\
         \x20         inconclusive_limit: 30\n"
    )
}

/// Everything up: the exporter, veer (its admin API on an address fixed in
/// advance so Prometheus can scrape it), Prometheus.
async fn setup(hold: &str, extra: &str) -> (Fixture, Prometheus, Exporter, Upstream, Upstream) {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let exporter = Exporter::start().await;
    let admin = free(1);
    let prom_addr = free(2);
    let blocks = format!(
        "    guard: {{ baseline: stable, interval: 100ms, window: 2s, min_requests: 5, max_error_rate: 0.5 }}\n\
         \x20   rollout:\n      candidate: canary\n      steps: [50, 100]\n      hold: {hold}\n{}",
        checks(&format!("http://{prom_addr}"), extra)
    );
    let yaml = web_yaml(
        &[
            v("stable", stable.addr(), 100),
            v("canary", canary.addr(), 0),
        ],
        &blocks,
        None,
    )
    .replace(
        "admin:\n  address: \"127.0.0.1:0\"",
        &format!("admin:\n  address: \"{admin}\""),
    );
    let prometheus = Prometheus::start(prom_addr, &[exporter.addr, admin]).await;
    prometheus
        .wait_for_data("shop_checkout_conversion_ratio")
        .await;
    let f = Fixture::start(&yaml).await;
    (f, prometheus, exporter, stable, canary)
}

fn check<'a>(web: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    web["checks"]["results"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {web:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_business_metrics_let_the_rollout_complete() {
    let (f, prometheus, _exporter, _s, _c) =
        setup("2s", "          inconclusive_limit: 30\n").await;
    let load = f.paced_load(50, 5_000, Duration::from_secs(50));
    let done = f
        .wait_web(Duration::from_secs(45), "completion", |w| {
            at(w, 2, "completed")
        })
        .await;
    assert_eq!((weight(&done, "stable"), weight(&done, "canary")), (0, 100));
    let conversion = check(&done, "conversion");
    assert_eq!(conversion["verdict"], "pass", "{done:#}");
    assert_eq!(conversion["value"], 1.0);
    assert_eq!(conversion["source"], "prometheus");
    let traffic = check(&done, "traffic");
    assert!(traffic["value"].as_f64() >= Some(1.0), "{done:#}");
    let out = veer(&["wait", "web", "--admin", &f.admin_url(), "--timeout", "10s"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    load.finish().await;
    drop(prometheus);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_metric_driven_bad_rolls_the_candidate_back() {
    let (f, prometheus, exporter, _s, _c) = setup(
        "1h",
        "          inconclusive_limit: 30\n          failure_limit: 2\n",
    )
    .await;
    let load = f.paced_load(50, 5_000, Duration::from_secs(50));
    f.wait_web(LIMIT, "a first pass", |w| {
        w["checks"]["runs"]["conversion"]["pass"].as_u64() >= Some(1)
    })
    .await;
    exporter.set_canary(0.01);
    let back = f
        .wait_web(LIMIT, "the check trips the candidate", |w| {
            w["rollout"]["state"] == "rolled_back"
        })
        .await;
    assert_eq!((weight(&back, "stable"), weight(&back, "canary")), (100, 0));
    assert_eq!(back["guard"]["latches"][0]["reason"], "check:conversion");
    let conversion = check(&back, "conversion");
    assert_eq!(conversion["verdict"], "fail", "{back:#}");
    let value = conversion["value"].as_f64().unwrap_or(f64::NAN);
    assert!((value - 0.2).abs() < 1e-9, "{back:#}");
    let out = veer(&["wait", "web", "--admin", &f.admin_url(), "--timeout", "10s"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    load.finish().await;
    drop(prometheus);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_stopped_mid_rollout_pauses_it() {
    let (f, mut prometheus, _exporter, _s, _c) =
        setup("1h", "          inconclusive_limit: 3\n").await;
    let load = f.paced_load(50, 5_000, Duration::from_secs(50));
    f.wait_web(LIMIT, "a first pass", |w| {
        w["checks"]["runs"]["conversion"]["pass"].as_u64() >= Some(1)
    })
    .await;
    prometheus.stop();
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
    let conversion = check(&paused, "conversion");
    assert_eq!(conversion["verdict"], "inconclusive", "{paused:#}");
    let reason = conversion["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(&format!("Prometheus at {} unreachable: ", prometheus.url())),
        "{reason}"
    );
    let gate = f
        .wait_web(LIMIT, "the gate says why", |w| {
            w["rollout"]["gate"].as_str().is_some_and(|g| {
                g.starts_with(
                    "paused: check `conversion` was inconclusive 3 times in a row (Prometheus at ",
                )
            })
        })
        .await;
    assert!(gate["guard"]["latches"]
        .as_array()
        .is_some_and(Vec::is_empty));
    load.finish().await;
    f.shutdown().await;
}
