//! Endpoint health, end to end on real sockets: active probes take an endpoint
//! out after failing checks and back in after a pass; a reload's new endpoint
//! gets no request before its first passing check, so a rolling update by
//! reloads (the seed's T0–T5 table) fails nothing; passive ejection on
//! failures seen on real traffic, with a growing back-off and a cap on how
//! many of a version's endpoints may be out at once; slow start ramps a
//! joining endpoint's share; a version with no available endpoint gives its
//! share to the guard's baseline, or gets a proxy-made 503 without one; and
//! probes never count as user traffic.
//!
//! The instances here have a readiness path the test toggles ([`Instance`]);
//! they record their first passing probe and whether any user request came
//! before it. Every wait is a poll with a generous deadline; nothing asserts
//! how long a check or an ejection takes, only what happens and in which
//! order.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_parse::{Scrape, Value as Metric};
use serde_json::Value;
use support::client::{get, http1_client, send, HttpClient};
use support::load::{upstream_of_200, LoadPlan, Via};
use support::upstream::Upstream;
use support::{wait_until, within};
use tokio::sync::watch;
use tokio::time::Instant;
use veer::server::{Proxy, RunningProxy, StartOptions};

/// Bound on a whole test.
const TEST_LIMIT: Duration = Duration::from_secs(90);
/// How long any one awaited change may take before a test gives up: far above
/// what it needs (a few probe intervals), so only a missing change gets near.
const LIMIT: Duration = Duration::from_secs(20);
/// The service every test config has.
const SERVICE: &str = "web";
/// The readiness path of [`Instance`].
const HEALTH: &str = "/health";
/// Short intervals so the tests run fast. The probe timeout leaves room for a
/// loaded machine; three failures in a row take an endpoint out.
const CHECK: &str = "    health_check: { path: /health, interval: 200ms, timeout: 150ms, healthy_threshold: 1, unhealthy_threshold: 3 }\n";

// ---------------------------------------------------------------------------
// An instance with a readiness endpoint the test toggles

/// A hyper server on `127.0.0.1:0`: `GET /health` answers 200 while ready and
/// 503 otherwise; any other path is user traffic, answered 200 with
/// `x-upstream: NAME`. It counts probes and user requests, remembers when it
/// first passed a probe and first got a user request, and counts user
/// requests that arrived before any passing probe. Stops when dropped.
struct Instance {
    addr: SocketAddr,
    state: Arc<InstanceState>,
    _stop: watch::Sender<bool>,
}

#[derive(Default)]
struct InstanceState {
    name: String,
    ready: AtomicBool,
    probes: AtomicU64,
    failed_probes: AtomicU64,
    /// Set once a probe got 200.
    passed: AtomicBool,
    first_pass: Mutex<Option<Instant>>,
    user: AtomicU64,
    user_before_pass: AtomicU64,
    first_user: Mutex<Option<Instant>>,
    /// TCP connections open now.
    open: AtomicU64,
}

impl Instance {
    async fn start(name: &str, ready: bool) -> Instance {
        let listener = support::bind_loopback();
        let addr = listener.local_addr().expect("instance local_addr");
        let state = Arc::new(InstanceState {
            name: name.to_string(),
            ready: AtomicBool::new(ready),
            ..InstanceState::default()
        });
        let (stop, mut stopped) = watch::channel(false);
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                st.open.fetch_add(1, Ordering::SeqCst);
                let st = Arc::clone(&st);
                let mut conn_stop = stopped.clone();
                tokio::spawn(async move {
                    let service = {
                        let st = Arc::clone(&st);
                        hyper::service::service_fn(move |req| answer(Arc::clone(&st), req))
                    };
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = conn_stop.changed() => {}
                    }
                    st.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Instance {
            addr,
            state,
            _stop: stop,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn name(&self) -> &str {
        &self.state.name
    }

    fn set_ready(&self, ready: bool) {
        self.state.ready.store(ready, Ordering::SeqCst);
    }

    fn probes(&self) -> u64 {
        self.state.probes.load(Ordering::SeqCst)
    }

    fn failed_probes(&self) -> u64 {
        self.state.failed_probes.load(Ordering::SeqCst)
    }

    fn user(&self) -> u64 {
        self.state.user.load(Ordering::SeqCst)
    }

    fn user_before_pass(&self) -> u64 {
        self.state.user_before_pass.load(Ordering::SeqCst)
    }

    fn first_pass(&self) -> Option<Instant> {
        *self.state.first_pass.lock().expect("first_pass lock")
    }

    fn first_user(&self) -> Option<Instant> {
        *self.state.first_user.lock().expect("first_user lock")
    }

    fn open_connections(&self) -> u64 {
        self.state.open.load(Ordering::SeqCst)
    }
}

fn reply(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
}

async fn answer(
    st: Arc<InstanceState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let now = Instant::now();
    if req.uri().path() == HEALTH {
        st.probes.fetch_add(1, Ordering::SeqCst);
        if st.ready.load(Ordering::SeqCst) {
            st.first_pass
                .lock()
                .expect("first_pass lock")
                .get_or_insert(now);
            st.passed.store(true, Ordering::SeqCst);
            return Ok(reply(StatusCode::OK, "ready"));
        }
        st.failed_probes.fetch_add(1, Ordering::SeqCst);
        return Ok(reply(StatusCode::SERVICE_UNAVAILABLE, "not ready"));
    }
    st.user.fetch_add(1, Ordering::SeqCst);
    if !st.passed.load(Ordering::SeqCst) {
        st.user_before_pass.fetch_add(1, Ordering::SeqCst);
    }
    st.first_user
        .lock()
        .expect("first_user lock")
        .get_or_insert(now);
    let mut response = reply(StatusCode::OK, &st.name);
    if let Ok(name) = http::HeaderValue::from_str(&st.name) {
        response.headers_mut().insert("x-upstream", name);
    }
    Ok(response)
}

// ---------------------------------------------------------------------------
// Configs

/// One version of service `web`: name, endpoints, weight.
type VersionLine<'a> = (&'a str, &'a [SocketAddr], u32);

/// A config with listener `public` and the admin API on port 0, and service
/// `web` with these versions; `extra` holds more of the service's lines
/// (indented four spaces), such as [`CHECK`].
fn config(versions: &[VersionLine<'_>], extra: &str) -> String {
    let mut y = String::from(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\nadmin:\n  address: \"127.0.0.1:0\"\nservices:\n",
    );
    y += &format!("  - name: {SERVICE}\n    versions:\n");
    for (name, endpoints, weight) in versions {
        let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        y += &format!(
            "      - name: {name}\n        endpoints: [{}]\n        weight: {weight}\n",
            list.join(", ")
        );
    }
    y += "    timeouts: { connect: 2s, request: 10s }\n";
    y += extra;
    y
}

/// Passive ejection after `failures` in a row, for `base` times the number of
/// ejections so far.
fn outlier(failures: u32, base: &str) -> String {
    format!(
        "    outlier_detection: {{ consecutive_failures: {failures}, base_ejection: {base}, max_ejection: 1m, max_ejected_percent: 50 }}\n"
    )
}

// ---------------------------------------------------------------------------
// The proxy

/// veer in-process with the admin API; with a config file in a temp folder
/// when the test reloads.
struct Veer {
    running: RunningProxy,
    proxy: SocketAddr,
    admin: SocketAddr,
    client: HttpClient,
    file: Option<(tempfile::TempDir, PathBuf)>,
}

impl Veer {
    async fn start(yaml: &str) -> Veer {
        let config = veer::config::parse_str(yaml, "health.yaml")
            .unwrap_or_else(|e| panic!("veer refused the test config:\n{e}\n---\n{yaml}"));
        Veer::run(config, None).await
    }

    /// Writes `yaml` to a file veer watches, and starts on it.
    async fn start_watched(yaml: &str) -> Veer {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("veer.yaml");
        std::fs::write(&path, yaml).expect("write the config");
        let config = veer::config::load_file(&path)
            .unwrap_or_else(|e| panic!("veer refused the test config:\n{e}\n---\n{yaml}"));
        Veer::run(config, Some((dir, path))).await
    }

    async fn run(config: veer::config::Config, file: Option<(tempfile::TempDir, PathBuf)>) -> Veer {
        let options = StartOptions {
            source: file.as_ref().map(|(_, path)| path.clone()),
            admin: true,
        };
        let running = Proxy::start_with(config, options)
            .await
            .unwrap_or_else(|e| panic!("veer did not start: {e}"));
        let proxy = running.listener_addr("public").expect("listener public");
        let admin = running.admin_addr().expect("admin API address");
        Veer {
            running,
            proxy,
            admin,
            client: http1_client(),
            file,
        }
    }

    /// Replaces the watched config as deployment tools do (temp + rename) and
    /// waits until version `version` lists exactly `endpoints`.
    async fn reload(&self, yaml: &str, version: &str, endpoints: &[SocketAddr]) {
        let (_, path) = self.file.as_ref().expect("started with a config file");
        let tmp = path.with_file_name(".veer.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write the temp config");
        std::fs::rename(&tmp, path).expect("rename over the config");
        wait_until(LIMIT, "the reload is in force", || {
            self.all(version) == endpoints
        })
        .await;
    }

    fn version(&self, version: &str) -> Arc<veer::snapshot::VersionSnapshot> {
        let snapshot = self.running.control().snapshot();
        let service = snapshot
            .services
            .iter()
            .find(|s| &*s.name == SERVICE)
            .expect("service web");
        let found = service
            .versions
            .iter()
            .find(|v| &*v.name == version)
            .unwrap_or_else(|| panic!("no version {version}"));
        Arc::clone(found)
    }

    /// The endpoints of `version` that may take requests now.
    fn available(&self, version: &str) -> Vec<SocketAddr> {
        self.version(version)
            .endpoints
            .iter()
            .map(|e| e.addr())
            .collect()
    }

    /// Every endpoint the config lists for `version`.
    fn all(&self, version: &str) -> Vec<SocketAddr> {
        self.version(version)
            .all_endpoints
            .iter()
            .map(|e| e.addr())
            .collect()
    }

    async fn admin_get(&self, path: &str) -> support::client::Answer {
        let answer = send(
            &self.client,
            get(&format!("http://{}{path}", self.admin), None),
        )
        .await;
        assert_eq!(answer.status, 200, "GET {path}: {}", answer.text());
        answer
    }

    async fn status(&self) -> Value {
        let answer = self.admin_get("/status").await;
        serde_json::from_slice(&answer.body)
            .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {}", answer.text()))
    }

    async fn metrics(&self) -> Scrape {
        let answer = self.admin_get("/metrics").await;
        let lines = answer
            .text()
            .lines()
            .map(|l| Ok(l.to_string()))
            .collect::<Vec<_>>();
        Scrape::parse(lines.into_iter()).expect("/metrics is Prometheus text")
    }

    async fn shutdown(self) {
        within(LIMIT, "proxy shutdown", self.running.shutdown()).await;
    }
}

/// Version `version` of service `web` in a `/status` report.
fn version_json<'a>(status: &'a Value, version: &str) -> &'a Value {
    status["services"]
        .as_array()
        .and_then(|services| services.iter().find(|s| s["name"] == SERVICE))
        .and_then(|s| s["versions"].as_array())
        .and_then(|versions| versions.iter().find(|v| v["name"] == version))
        .unwrap_or_else(|| panic!("no version {version} in /status: {status:#}"))
}

/// Endpoint `addr` of `version` in a `/status` report.
fn endpoint_json<'a>(status: &'a Value, version: &str, addr: SocketAddr) -> &'a Value {
    let v = version_json(status, version);
    v["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["address"] == addr.to_string()))
        .unwrap_or_else(|| panic!("no endpoint {addr} in {version}: {v:#}"))
}

/// The sum of every sample of `name` whose labels include `labels`.
fn metric_sum(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// `veer_endpoint_healthy` of one endpoint; panics when absent.
fn healthy_gauge(scrape: &Scrape, version: &str, addr: SocketAddr) -> f64 {
    let endpoint = addr.to_string();
    let labels = [
        ("service", SERVICE),
        ("version", version),
        ("endpoint", endpoint.as_str()),
    ];
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == "veer_endpoint_healthy"
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .filter_map(|s| match s.value {
            Metric::Gauge(v) | Metric::Untyped(v) => Some(v),
            _ => None,
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "veer_endpoint_healthy {labels:?}: expected one gauge, found {found:?}"
    );
    found[0]
}

// ---------------------------------------------------------------------------
// Load

/// One request of the load: when it started and either the upstream that
/// answered 200 or what went wrong.
type Sample = support::load::Sample<Result<String, String>>;
type Load = support::load::Load<Result<String, String>>;

/// Paced clients sending `GET /` through the proxy until stopped, each on its
/// own keep-alive connection pool, pausing `pace` between answer and request.
fn start_load(proxy: SocketAddr, workers: usize, pace: Duration) -> Load {
    LoadPlan::workers(format!("http://{proxy}/"), &vec![Via::KeepAlive; workers])
        .pause(pace)
        .answer_limit(Duration::from_secs(10))
        .max_requests(1_000_000)
        .max_run(Duration::from_secs(180))
        .start(upstream_of_200)
}

/// Asserts that no request of the load failed.
fn assert_no_failure(samples: &[Sample]) {
    let failed: Vec<&String> = samples
        .iter()
        .filter_map(|s| s.record.as_ref().err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed; first ones: {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(5)]
    );
}

/// Waits until `count` stands still while the load answers `quiet` more
/// requests: whatever it counts gets no more traffic.
async fn until_no_more(load: &Load, what: &str, count: impl Fn() -> u64, quiet: u64) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let before = count();
        load.progress(quiet).await;
        if count() == before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still getting requests after {LIMIT:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Active checks and the rolling update

/// The seed's table: five instances of v1.1.0 replaced one at a time by
/// instances of v1.2.0 through reloads, each new one answering its readiness
/// probe only after failing it a few times, under paced load throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_by_reloads_fails_nothing_and_waits_for_each_first_check() {
    within(TEST_LIMIT, "rolling update", async {
        let mut old = Vec::new();
        let mut new = Vec::new();
        for i in 1..=5 {
            old.push(Instance::start(&format!("v1.1.0-{i}"), true).await);
            new.push(Instance::start(&format!("v1.2.0-{i}"), false).await);
        }
        let mut endpoints: Vec<SocketAddr> = old.iter().map(Instance::addr).collect();
        let yaml = |eps: &[SocketAddr]| config(&[("app", eps, 100)], CHECK);
        let veer = Veer::start_watched(&yaml(&endpoints)).await;
        let load = start_load(veer.proxy, 4, Duration::from_millis(3));
        load.progress(50).await;

        for (i, joining) in new.iter().enumerate() {
            // T(i+1): instance i is replaced.
            endpoints[i] = joining.addr();
            veer.reload(&yaml(&endpoints), "app", &endpoints).await;
            assert!(
                !veer.available("app").contains(&joining.addr()),
                "{}: in service before any probe",
                joining.name()
            );
            // Not ready for a while: probes fail, the load goes on, and none
            // of it may reach the new instance.
            let failed = joining.failed_probes();
            wait_until(LIMIT, "the new instance fails two probes", || {
                joining.failed_probes() >= failed + 2
            })
            .await;
            load.progress(20).await;
            assert_eq!(
                joining.user(),
                0,
                "{}: got user requests while answering 503 to its probes",
                joining.name()
            );
            joining.set_ready(true);
            wait_until(LIMIT, "the new instance enters service", || {
                veer.available("app").contains(&joining.addr())
            })
            .await;
            wait_until(LIMIT, "the new instance takes requests", || {
                joining.user() > 0
            })
            .await;
        }
        let samples = load.finish().await;

        assert_no_failure(&samples);
        for joining in &new {
            assert_eq!(
                joining.user_before_pass(),
                0,
                "{}: user requests arrived before its first passing check",
                joining.name()
            );
            let (pass, user) = (joining.first_pass(), joining.first_user());
            let (Some(pass), Some(user)) = (pass, user) else {
                panic!(
                    "{}: first pass {pass:?}, first user request {user:?}",
                    joining.name()
                );
            };
            assert!(
                pass <= user,
                "{}: first user request before the first passing check",
                joining.name()
            );
        }
        for left in &old {
            assert!(
                samples
                    .iter()
                    .any(|s| s.record.as_deref() == Ok(left.name())),
                "{} never served (the table starts with all of v1 in service)",
                left.name()
            );
        }
        assert_eq!(veer.all("app"), endpoints);
        // The departed instances' keep-alive connections are closed once idle.
        for left in &old {
            wait_until(LIMIT, "connections to a departed instance close", || {
                left.open_connections() == 0
            })
            .await;
        }
        veer.shutdown().await;
    })
    .await;
}

/// An endpoint whose readiness probe starts failing leaves after
/// `unhealthy_threshold` checks and gets no more requests; it comes back once
/// it passes again. No request fails meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_its_probe_leaves_and_comes_back_after_passing() {
    within(TEST_LIMIT, "probe failure and return", async {
        let a = Instance::start("a", true).await;
        let b = Instance::start("b", true).await;
        let veer = Veer::start(&config(&[("stable", &[a.addr(), b.addr()], 100)], CHECK)).await;
        let load = start_load(veer.proxy, 2, Duration::from_millis(3));
        wait_until(LIMIT, "both take requests", || a.user() > 0 && b.user() > 0).await;

        b.set_ready(false);
        until_no_more(&load, "b after failing its probes", || b.user(), 40).await;
        assert_eq!(veer.available("stable"), vec![a.addr()]);
        assert!(
            b.failed_probes() >= 3,
            "left after {} failed probes, unhealthy_threshold is 3",
            b.failed_probes()
        );
        let status = veer.status().await;
        assert_eq!(
            endpoint_json(&status, "stable", b.addr())["health"],
            "unhealthy"
        );
        assert_eq!(
            endpoint_json(&status, "stable", a.addr())["health"],
            "healthy"
        );
        let metrics = veer.metrics().await;
        assert_eq!(healthy_gauge(&metrics, "stable", b.addr()), 0.0);
        assert_eq!(healthy_gauge(&metrics, "stable", a.addr()), 1.0);

        b.set_ready(true);
        let out = b.user();
        wait_until(LIMIT, "b takes requests again", || b.user() > out).await;
        let status = veer.status().await;
        assert_eq!(
            endpoint_json(&status, "stable", b.addr())["health"],
            "healthy"
        );
        assert_eq!(
            healthy_gauge(&veer.metrics().await, "stable", b.addr()),
            1.0
        );

        assert_no_failure(&load.finish().await);
        veer.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// Passive ejection

/// An endpoint that drops every connection unanswered is ejected once it has
/// failed `consecutive_failures` requests in a row: it gets no more requests,
/// `/status` says so, and the ejection is counted with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_resets_is_ejected_after_n_failures() {
    within(TEST_LIMIT, "passive ejection", async {
        let good1 = Upstream::start("good1").await;
        let good2 = Upstream::start("good2").await;
        let bad = Upstream::start("bad").await;
        bad.set_reset_ratio(1.0);
        let eps = [good1.addr(), good2.addr(), bad.addr()];
        let veer = Veer::start(&config(&[("stable", &eps, 100)], &outlier(5, "1m"))).await;
        let load = start_load(veer.proxy, 1, Duration::from_millis(2));

        wait_until(LIMIT, "the resetting endpoint is ejected", || {
            !veer.available("stable").contains(&bad.addr())
        })
        .await;
        assert!(
            bad.total() >= 5,
            "ejected after {} failed requests; consecutive_failures is 5",
            bad.total()
        );
        until_no_more(&load, "the ejected endpoint", || bad.total(), 60).await;
        let reached = bad.total();
        let after = load.answered();
        load.progress(60).await;
        let samples = load.finish().await;
        assert_eq!(bad.total(), reached, "the ejected endpoint got requests");
        // Once it is out, every request succeeds on the others.
        assert_no_failure(&samples[usize::try_from(after).expect("count")..]);

        let status = veer.status().await;
        let entry = endpoint_json(&status, "stable", bad.addr());
        assert_eq!(entry["health"], "ejected", "{entry:#}");
        assert_eq!(entry["ejections"], 1, "{entry:#}");
        assert!(
            entry["ejected_for_ms"].as_u64().is_some_and(|ms| ms > 0),
            "{entry:#}"
        );
        for good in [&good1, &good2] {
            let entry = endpoint_json(&status, "stable", good.addr());
            assert_eq!(entry["health"], "unchecked", "{entry:#}");
            assert_eq!(entry["ejections"], 0, "{entry:#}");
        }
        let metrics = veer.metrics().await;
        let endpoint = bad.addr().to_string();
        let labels = [
            ("service", SERVICE),
            ("version", "stable"),
            ("endpoint", endpoint.as_str()),
        ];
        assert_eq!(
            metric_sum(&metrics, "veer_endpoint_ejections_total", &labels),
            1.0,
            "one ejection counted"
        );
        let reasons: Vec<&str> = metrics
            .samples
            .iter()
            .filter(|s| {
                s.metric == "veer_endpoint_ejections_total"
                    && s.labels.get("endpoint") == Some(endpoint.as_str())
                    // Every reason is exported, at 0 until it happens.
                    && !matches!(s.value, prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) if v == 0.0)
            })
            .filter_map(|s| s.labels.get("reason"))
            .collect();
        assert_eq!(reasons, ["reset"], "the ejection's reason");
        assert_eq!(healthy_gauge(&metrics, "stable", bad.addr()), 0.0);
        veer.shutdown().await;
    })
    .await;
}

/// Each ejection of the same endpoint lasts longer: `base_ejection` times the
/// number of ejections so far. Watched through `/status`: the longest
/// `ejected_for_ms` seen during the second ejection exceeds any the first
/// could show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ejection_back_off_grows_on_repeated_ejection() {
    within(TEST_LIMIT, "ejection back-off", async {
        let good1 = Upstream::start("good1").await;
        let good2 = Upstream::start("good2").await;
        let bad = Upstream::start("bad").await;
        bad.set_reset_ratio(1.0);
        let eps = [good1.addr(), good2.addr(), bad.addr()];
        let veer = Veer::start(&config(&[("stable", &eps, 100)], &outlier(3, "500ms"))).await;
        let load = start_load(veer.proxy, 1, Duration::from_millis(2));

        // The longest time left seen during each ejection, by its number,
        // until the second one is over.
        let mut longest = [0u64; 3];
        let deadline = Instant::now() + LIMIT;
        loop {
            assert!(
                Instant::now() < deadline,
                "no second ejection over within {LIMIT:?}; longest seen: {longest:?}"
            );
            let status = veer.status().await;
            let entry = endpoint_json(&status, "stable", bad.addr());
            let ejections = entry["ejections"].as_u64().expect("ejections");
            let left = entry["ejected_for_ms"].as_u64().expect("ejected_for_ms");
            let ejected = entry["health"] == "ejected";
            if ejected && (1..=2).contains(&ejections) {
                let n = usize::try_from(ejections).expect("small");
                longest[n] = longest[n].max(left);
            }
            if ejections > 2 || (ejections == 2 && !ejected) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        load.finish().await;
        assert!(
            longest[1] > 0 && longest[1] <= 500,
            "the first ejection lasts base_ejection (500ms); longest seen {}ms",
            longest[1]
        );
        assert!(
            longest[2] > longest[1],
            "the second ejection ({}ms left seen) must be longer than the first ({}ms)",
            longest[2],
            longest[1]
        );
        assert!(
            longest[2] <= 1000,
            "the second ejection lasts 2 × base_ejection; {}ms left seen",
            longest[2]
        );
        let metrics = veer.metrics().await;
        let endpoint = bad.addr().to_string();
        assert!(
            metric_sum(
                &metrics,
                "veer_endpoint_ejections_total",
                &[("endpoint", endpoint.as_str())]
            ) >= 2.0,
            "both ejections counted"
        );
        veer.shutdown().await;
    })
    .await;
}

/// With `max_ejected_percent: 50` and two of three endpoints failing, only
/// one is ejected at a time: the other keeps failing, and keeps its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ejection_cap_holds() {
    within(TEST_LIMIT, "ejection cap", async {
        let bad1 = Upstream::start("bad1").await;
        let bad2 = Upstream::start("bad2").await;
        let good = Upstream::start("good").await;
        bad1.set_reset_ratio(1.0);
        bad2.set_reset_ratio(1.0);
        let eps = [bad1.addr(), bad2.addr(), good.addr()];
        let veer = Veer::start(&config(&[("stable", &eps, 100)], &outlier(3, "1m"))).await;
        let load = start_load(veer.proxy, 1, Duration::from_millis(2));

        let ejected = |status: &Value| -> Vec<SocketAddr> {
            eps.iter()
                .copied()
                .filter(|&addr| endpoint_json(status, "stable", addr)["health"] == "ejected")
                .collect()
        };
        // Until one of the failing endpoints is out.
        let deadline = Instant::now() + LIMIT;
        let out = loop {
            let now_out = ejected(&veer.status().await);
            assert!(now_out.len() <= 1, "cap exceeded: {now_out:?} ejected");
            if let Some(&first) = now_out.first() {
                break first;
            }
            assert!(
                Instant::now() < deadline,
                "nothing ejected within {LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let other = if out == bad1.addr() { &bad2 } else { &bad1 };
        // The other one goes on failing many times over the threshold and
        // is still not ejected.
        let before = other.total();
        let deadline = Instant::now() + LIMIT;
        while other.total() < before + 15 {
            let now_out = ejected(&veer.status().await);
            assert_eq!(now_out, vec![out], "cap: one ejected at a time");
            assert!(
                Instant::now() < deadline,
                "the other failing endpoint got no requests"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        load.finish().await;
        let status = veer.status().await;
        assert_eq!(ejected(&status), vec![out]);
        assert_eq!(
            endpoint_json(&status, "stable", other.addr())["ejections"],
            0,
            "refused ejections are not counted as ejections"
        );
        let mut available = veer.available("stable");
        available.sort();
        let mut expected = vec![other.addr(), good.addr()];
        expected.sort();
        assert_eq!(available, expected);
        let metrics = veer.metrics().await;
        assert_eq!(
            metric_sum(
                &metrics,
                "veer_endpoint_ejections_total",
                &[("service", SERVICE)]
            ),
            1.0
        );
        veer.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// Slow start

/// How long endpoints ramp in these tests.
const SLOW_START: &str = "    slow_start: 3s\n";

/// Asserts that `name`'s share of the requests started in the first second
/// after `joined` is well below its share in the third second: a ramp over
/// `slow_start` (3s), not a step. With two endpoints the full share is about
/// 0.5; the ramp gives about 0.1 in the first second and 0.4 in the third.
fn assert_ramps(samples: &[Sample], joined: Instant, name: &str) {
    let share = |from: u64, to: u64| -> (f64, usize) {
        let window: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.at >= joined + Duration::from_millis(from)
                    && s.at < joined + Duration::from_millis(to)
            })
            .collect();
        let to_it = window
            .iter()
            .filter(|s| s.record.as_deref() == Ok(name))
            .count();
        (to_it as f64 / window.len().max(1) as f64, window.len())
    };
    let (early, early_n) = share(0, 1000);
    let (late, late_n) = share(2000, 3000);
    assert!(
        early_n >= 30 && late_n >= 30,
        "too few requests to measure: {early_n} in the first second, {late_n} in the third"
    );
    assert!(
        early + 0.1 < late,
        "{name}'s share must ramp up: {early:.3} in the first second ({early_n} requests), \
         {late:.3} in the third ({late_n} requests)"
    );
    assert!(
        early < 0.35,
        "{name} took {early:.3} of the first second: a step, not a ramp"
    );
}

/// `b` joins `a` in version `stable` through a reload, with `extra` as the
/// rest of the service; returns the samples of the load over the 3.2s after
/// `b` entered service, that moment, and `b`'s `/status` entry just after.
async fn join_by_reload(extra: &str) -> (Vec<Sample>, Instant, Value) {
    let a = Instance::start("a", true).await;
    let b = Instance::start("b", true).await;
    let veer = Veer::start_watched(&config(&[("stable", &[a.addr()], 100)], extra)).await;
    let load = start_load(veer.proxy, 4, Duration::from_millis(2));
    load.progress(50).await;

    let both = [a.addr(), b.addr()];
    veer.reload(&config(&[("stable", &both, 100)], extra), "stable", &both)
        .await;
    wait_until(LIMIT, "b enters service", || {
        veer.available("stable").contains(&b.addr())
    })
    .await;
    let joined = Instant::now();
    let entry = endpoint_json(&veer.status().await, "stable", b.addr()).clone();
    tokio::time::sleep_until(joined + Duration::from_millis(3200)).await;
    let samples = load.finish().await;
    assert_no_failure(&samples);
    // Past `slow_start`, the endpoint takes its full share and says so.
    let b_addr = b.addr();
    let deadline = Instant::now() + LIMIT;
    loop {
        let url = format!("http://{}/", veer.proxy);
        for _ in 0..10 {
            send(&veer.client, get(&url, None)).await;
        }
        let status = veer.status().await;
        if endpoint_json(&status, "stable", b_addr)["ramping"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ramping long after slow_start: {status:#}"
        );
    }
    veer.shutdown().await;
    (samples, joined, entry)
}

/// An endpoint that joins through a reload, entering service on its first
/// passing check, takes a growing share of its version's traffic over
/// `slow_start`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_endpoint_ramps_up_its_share() {
    within(TEST_LIMIT, "slow start", async {
        let (samples, joined, entry) = join_by_reload(&format!("{CHECK}{SLOW_START}")).await;
        assert_ramps(&samples, joined, "b");
        assert_eq!(entry["ramping"], true, "{entry:#}");
    })
    .await;
}

/// Without health checks an endpoint a reload adds serves at once, and
/// ramps up all the same: slow start is about the endpoint joining, not
/// about its probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_a_reload_adds_without_health_checks_ramps_up_too() {
    within(TEST_LIMIT, "slow start without checks", async {
        let (samples, joined, entry) = join_by_reload(SLOW_START).await;
        assert_ramps(&samples, joined, "b");
        assert_eq!(entry["ramping"], true, "{entry:#}");
    })
    .await;
}

/// An endpoint back from an ejection ramps up again rather than taking its
/// full share at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_back_from_ejection_ramps_up() {
    within(TEST_LIMIT, "slow start after ejection", async {
        let a = Instance::start("a", true).await;
        let flaky = Upstream::start("flaky").await;
        flaky.set_reset_ratio(1.0);
        // Two endpoints: the cap (50 %) allows one of them out.
        let extra = format!("{}{SLOW_START}", outlier(3, "1s"));
        let veer = Veer::start(&config(
            &[("stable", &[a.addr(), flaky.addr()], 100)],
            &extra,
        ))
        .await;
        let load = start_load(veer.proxy, 4, Duration::from_millis(2));
        wait_until(LIMIT, "flaky is ejected", || {
            !veer.available("stable").contains(&flaky.addr())
        })
        .await;
        flaky.set_reset_ratio(0.0);
        wait_until(LIMIT, "flaky is back from its ejection", || {
            veer.available("stable").contains(&flaky.addr())
        })
        .await;
        let back = Instant::now();
        let status = veer.status().await;
        let entry = endpoint_json(&status, "stable", flaky.addr());
        assert_eq!(entry["ramping"], true, "{entry:#}");
        assert_eq!(entry["ejections"], 1, "{entry:#}");
        tokio::time::sleep_until(back + Duration::from_millis(3200)).await;
        let samples = load.finish().await;
        let since: Vec<Sample> = samples.into_iter().filter(|s| s.at >= back).collect();
        assert_no_failure(&since);
        assert_ramps(&since, back, "flaky");
        veer.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// No available endpoint

/// Every endpoint of the canary fails its probe: the canary's share goes to
/// the guard's baseline, `/status` marks it unavailable, and no request
/// fails; once they pass again the canary takes its share back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_no_healthy_endpoint_gives_its_share_to_the_baseline() {
    within(TEST_LIMIT, "canary down", async {
        let stable = Instance::start("stable", true).await;
        let c1 = Instance::start("canary1", true).await;
        let c2 = Instance::start("canary2", true).await;
        let guard =
            "    guard: { baseline: stable, max_error_rate: 0.99, min_requests: 1000000000 }\n";
        let veer = Veer::start(&config(
            &[
                ("stable", &[stable.addr()], 50),
                ("canary", &[c1.addr(), c2.addr()], 50),
            ],
            &format!("{CHECK}{guard}"),
        ))
        .await;
        let load = start_load(veer.proxy, 2, Duration::from_millis(3));
        let canary = || c1.user() + c2.user();
        wait_until(LIMIT, "both versions take requests", || {
            stable.user() > 0 && canary() > 0
        })
        .await;

        c1.set_ready(false);
        c2.set_ready(false);
        wait_until(LIMIT, "the canary is unavailable", || {
            veer.version("canary").unavailable
        })
        .await;
        until_no_more(&load, "the canary with no healthy endpoint", canary, 50).await;
        let status = veer.status().await;
        let entry = version_json(&status, "canary");
        assert_eq!(entry["unavailable"], true, "{entry:#}");
        assert_eq!(entry["weight"], 0, "{entry:#}");
        assert_eq!(version_json(&status, "stable")["weight"], 100);
        assert_eq!(version_json(&status, "stable")["unavailable"], false);
        let metrics = veer.metrics().await;
        let weight = |v: &str| {
            metric_sum(
                &metrics,
                "veer_version_weight",
                &[("service", SERVICE), ("version", v)],
            )
        };
        assert_eq!((weight("stable"), weight("canary")), (100.0, 0.0));
        for c in [&c1, &c2] {
            assert_eq!(healthy_gauge(&metrics, "canary", c.addr()), 0.0);
        }
        // The requests that went to the baseline are counted there.
        let at_stable = |m: &Scrape| {
            metric_sum(
                m,
                "veer_requests_total",
                &[("service", SERVICE), ("version", "stable")],
            )
        };
        let counted = at_stable(&metrics);
        load.progress(30).await;
        assert!(
            at_stable(&veer.metrics().await) >= counted + 30.0,
            "the baseline counts the canary's share"
        );

        c1.set_ready(true);
        c2.set_ready(true);
        let out = canary();
        wait_until(LIMIT, "the canary takes requests again", || canary() > out).await;
        let status = veer.status().await;
        assert_eq!(version_json(&status, "canary")["unavailable"], false);
        assert_eq!(version_json(&status, "canary")["weight"], 50);

        assert_no_failure(&load.finish().await);
        veer.shutdown().await;
    })
    .await;
}

/// Without a baseline, a request for a version with no healthy endpoint gets
/// veer's own 503 that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_baseline_a_version_with_no_healthy_endpoint_answers_503() {
    within(TEST_LIMIT, "no baseline", async {
        let only = Instance::start("only", true).await;
        let veer = Veer::start(&config(&[("stable", &[only.addr()], 100)], CHECK)).await;
        let url = format!("http://{}/", veer.proxy);
        let answer = send(&veer.client, get(&url, None)).await;
        assert_eq!(answer.status, 200, "{}", answer.text());

        only.set_ready(false);
        wait_until(LIMIT, "the only version is unavailable", || {
            veer.version("stable").unavailable
        })
        .await;
        let served = only.user();
        for _ in 0..5 {
            let answer = send(&veer.client, get(&url, None)).await;
            answer.assert_proxy_error(503);
            assert_eq!(answer.header("x-veer-error"), Some("no-endpoint"));
            let body = answer.text();
            assert!(
                body.contains("stable") && body.contains("no endpoint"),
                "the body must name the version and the reason: {body:?}"
            );
        }
        assert_eq!(
            only.user(),
            served,
            "no request reaches an unhealthy endpoint"
        );
        let status = veer.status().await;
        assert_eq!(version_json(&status, "stable")["unavailable"], true);

        only.set_ready(true);
        wait_until(LIMIT, "the version is available again", || {
            !veer.version("stable").unavailable
        })
        .await;
        let answer = send(&veer.client, get(&url, None)).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.upstream(), Some("only"));
        veer.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// Probes are not user traffic

/// Health probes reach the upstream but count in no request metric nor in
/// the version's window; user requests made meanwhile count exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_not_user_traffic() {
    within(TEST_LIMIT, "probes are not traffic", async {
        let a = Instance::start("a", true).await;
        let check = "    health_check: { path: /health, interval: 50ms, timeout: 40ms }\n";
        let veer = Veer::start(&config(&[("stable", &[a.addr()], 100)], check)).await;
        wait_until(LIMIT, "probes arrive", || a.probes() >= 10).await;

        let requests = |m: &Scrape| metric_sum(m, "veer_requests_total", &[("service", SERVICE)]);
        let durations = |m: &Scrape| {
            m.samples
                .iter()
                .filter(|s| {
                    s.metric == "veer_request_duration_seconds_count"
                        || s.metric == "veer_request_duration_seconds"
                })
                .filter(|s| s.labels.get("service") == Some(SERVICE))
                .map(|s| match &s.value {
                    Metric::Histogram(buckets) => {
                        buckets.iter().map(|b| b.count).fold(0.0, f64::max)
                    }
                    Metric::Counter(v) | Metric::Untyped(v) => *v,
                    _ => 0.0,
                })
                .sum::<f64>()
        };
        let metrics = veer.metrics().await;
        assert_eq!(requests(&metrics), 0.0, "probes counted as requests");
        assert_eq!(
            durations(&metrics),
            0.0,
            "probes counted in the latency histogram"
        );
        let status = veer.status().await;
        assert_eq!(version_json(&status, "stable")["window"]["requests"], 0);

        let url = format!("http://{}/", veer.proxy);
        for _ in 0..5 {
            let answer = send(&veer.client, get(&url, None)).await;
            assert_eq!(answer.status, 200, "{}", answer.text());
        }
        let probed = a.probes();
        wait_until(LIMIT, "more probes arrive", || a.probes() >= probed + 5).await;
        assert_eq!(a.user(), 5);
        let metrics = veer.metrics().await;
        assert_eq!(
            requests(&metrics),
            5.0,
            "exactly the user requests are counted"
        );
        let status = veer.status().await;
        assert_eq!(version_json(&status, "stable")["window"]["requests"], 5);
        veer.shutdown().await;
    })
    .await;
}
