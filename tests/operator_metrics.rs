//! The metrics an operator alerts on, scraped from the real binary and
//! parsed with an independent Prometheus parser: build info, process
//! figures, connections and requests in flight per listener, certificate
//! expiry, weight shares, latches, verdicts and rollout state, the rare
//! counters at 0 from the start — and the series of what a reload removed
//! gone from the next scrape.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::Method;
use prometheus_parse::{Sample, Scrape, Value};
use support::binary::VeerProcess;
use support::client::{empty, get, http1_client, send, HttpClient};
use support::tls::Ca;
use support::upstream::Upstream;
use support::within;

const BIN: &str = env!("CARGO_BIN_EXE_veer");
const LIMIT: Duration = Duration::from_secs(30);
/// 2030-01-01T00:00:00Z: when the test certificate expires.
const NOT_AFTER: i64 = 1_893_456_000;

fn yaml(
    stable: SocketAddr,
    canary: Option<SocketAddr>,
    tls: Option<(&Path, &Path)>,
    rollout: bool,
) -> String {
    let mut y = String::from("listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n");
    if let Some((cert, key)) = tls {
        y.push_str(&format!(
            "  - name: secure\n    address: \"127.0.0.1:0\"\n    tls: {{ cert: \"{}\", key: \"{}\" }}\n",
            cert.display(),
            key.display()
        ));
    }
    y.push_str("admin:\n  address: \"127.0.0.1:0\"\nservices:\n  - name: web\n    versions:\n");
    y.push_str(&format!(
        "      - name: stable\n        revision: \"1\"\n        endpoints: [\"{stable}\"]\n        weight: 3\n"
    ));
    if let Some(canary) = canary {
        y.push_str(&format!(
            "      - name: canary\n        revision: \"2\"\n        endpoints: [\"{canary}\"]\n        weight: 1\n"
        ));
        y.push_str("    guard: { baseline: stable, min_requests: 50, max_error_rate: 0.5 }\n");
    }
    if rollout {
        y.push_str("    rollout: { candidate: canary, steps: [25, 100], hold: 1h }\n");
    }
    y
}

fn admin_of(veer: &VeerProcess) -> SocketAddr {
    veer.output()
        .lines()
        .find_map(|line| line.trim().strip_prefix("veer: admin on ")?.parse().ok())
        .unwrap_or_else(|| panic!("no `veer: admin on` line\n{}", veer.output()))
}

struct Metrics {
    text: String,
    scrape: Scrape,
}

impl Metrics {
    async fn of(client: &HttpClient, admin: SocketAddr) -> Metrics {
        let answer = send(client, get(&format!("http://{admin}/metrics"), None)).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let text = answer.text();
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .unwrap_or_else(|e| panic!("/metrics does not parse ({e}):\n{text}"));
        Metrics { text, scrape }
    }

    fn all(&self, metric: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.scrape
            .samples
            .iter()
            .filter(|s| {
                s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .collect()
    }

    fn get(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found = self.all(metric, labels);
        assert!(found.len() <= 1, "{metric} {labels:?} is not one series");
        found.first().map(|s| value(s))
    }

    fn one(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(metric, labels)
            .unwrap_or_else(|| panic!("no {metric} {labels:?} in\n{}", self.text))
    }
}

fn value(sample: &Sample) -> f64 {
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        _ => f64::NAN,
    }
}

/// Scrapes until `pred` holds; returns that scrape.
async fn scrape_until(
    client: &HttpClient,
    admin: SocketAddr,
    what: &str,
    pred: impl Fn(&Metrics) -> bool,
) -> Metrics {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let metrics = Metrics::of(client, admin).await;
        if pred(&metrics) {
            return metrics;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("never saw {what}:\n{}", metrics.text);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn operator_metrics_follow_the_proxy_and_its_config() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let not_after = time::OffsetDateTime::from_unix_timestamp(NOT_AFTER).expect("date");
    let (cert, key) = Ca::new("metrics test CA")
        .leaf_until(&["localhost"], not_after)
        .write(dir.path(), "server");
    let config = yaml(
        stable.addr(),
        Some(canary.addr()),
        Some((&cert, &key)),
        true,
    );
    let veer = VeerProcess::start(BIN, &config);
    let admin = admin_of(&veer);
    let proxy = veer.listener("public");
    let client = http1_client();

    let m = Metrics::of(&client, admin).await;
    // Build and process.
    let build = m.all("veer_build_info", &[]);
    assert_eq!(build.len(), 1, "{}", m.text);
    assert_eq!(
        build[0].labels.get("version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(value(build[0]), 1.0);
    assert!(m.one("process_resident_memory_bytes", &[]) > 0.0);
    assert!(m.one("process_open_fds", &[]) > 0.0);
    assert!(m.one("process_start_time_seconds", &[]) > 1_600_000_000.0);
    assert!(m.one("process_cpu_seconds_total", &[]) >= 0.0);
    // The certificate.
    assert_eq!(
        m.one(
            "veer_tls_certificate_expiry_seconds",
            &[
                ("listener", "secure"),
                ("cert", &cert.display().to_string())
            ]
        ),
        NOT_AFTER as f64
    );
    assert_eq!(
        m.one(
            "veer_tls_handshake_failures_total",
            &[("listener", "secure"), ("reason", "timeout")]
        ),
        0.0
    );
    // Rare counters, at 0 before anything happened; none for the baseline.
    let canary_labels = [("service", "web"), ("version", "canary")];
    for reason in ["error_rate", "latency", "manual"] {
        let mut labels = canary_labels.to_vec();
        labels.push(("reason", reason));
        assert_eq!(m.one("veer_guard_trips_total", &labels), 0.0);
    }
    assert!(m
        .all("veer_guard_trips_total", &[("version", "stable")])
        .is_empty());
    assert_eq!(m.one("veer_version_unavailable_total", &canary_labels), 0.0);
    let endpoint = canary.addr().to_string();
    for reason in [
        "connect",
        "timeout",
        "reset",
        "protocol",
        "tls",
        "midstream",
        "5xx",
    ] {
        let mut labels = canary_labels.to_vec();
        labels.extend([("endpoint", endpoint.as_str()), ("reason", reason)]);
        assert_eq!(m.one("veer_endpoint_ejections_total", &labels), 0.0);
    }
    // Weight shares beside the raw weights.
    let raw = |version: &str| {
        m.one(
            "veer_version_weight",
            &[("service", "web"), ("version", version)],
        )
    };
    let total = raw("stable") + raw("canary");
    for version in ["stable", "canary"] {
        let percent = m.one(
            "veer_version_weight_percent",
            &[("service", "web"), ("version", version)],
        );
        assert!(
            (percent - raw(version) * 100.0 / total).abs() < 1e-9,
            "{version}: {percent}\n{}",
            m.text
        );
    }
    // Latch, verdict, rollout.
    assert_eq!(
        m.one(
            "veer_version_latched",
            &[("service", "web"), ("version", "canary"), ("revision", "2")]
        ),
        0.0
    );
    let verdicts = m.all("veer_guard_verdict", &canary_labels);
    assert_eq!(verdicts.len(), 4, "{}", m.text);
    assert_eq!(verdicts.iter().map(|s| value(s)).sum::<f64>(), 1.0);
    assert_eq!(
        m.one(
            "veer_rollout_state",
            &[("service", "web"), ("state", "in_progress")]
        ),
        1.0
    );
    assert_eq!(
        m.all("veer_rollout_state", &[("service", "web")])
            .iter()
            .map(|s| value(s))
            .sum::<f64>(),
        1.0
    );
    assert_eq!(m.one("veer_rollout_step", &[("service", "web")]), 1.0);

    // An open connection, then a request in flight.
    let idle = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    scrape_until(&client, admin, "one open connection", |m| {
        m.get("veer_listener_connections", &[("listener", "public")]) == Some(1.0)
    })
    .await;
    let slow = {
        let client = client.clone();
        tokio::spawn(async move {
            send(
                &client,
                get(&format!("http://{proxy}/delay/5000"), Some("web")),
            )
            .await
        })
    };
    scrape_until(&client, admin, "one request in flight", |m| {
        m.get(
            "veer_listener_requests_in_flight",
            &[("listener", "public")],
        ) == Some(1.0)
    })
    .await;
    let answer = within(LIMIT, "the slow request", slow)
        .await
        .expect("slow request task");
    assert_eq!(answer.status, 200, "{}", answer.text());
    drop(idle);
    scrape_until(&client, admin, "no request in flight", |m| {
        m.get(
            "veer_listener_requests_in_flight",
            &[("listener", "public")],
        ) == Some(0.0)
    })
    .await;

    // An operator's rollback: latched, counted, the rollout rolled back.
    let request = http::Request::builder()
        .method(Method::POST)
        .uri(format!("http://{admin}/services/web/rollback"))
        .body(empty())
        .expect("rollback request");
    let answer = send(&client, request).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let m = Metrics::of(&client, admin).await;
    assert_eq!(
        m.one(
            "veer_version_latched",
            &[("service", "web"), ("version", "canary"), ("revision", "2")]
        ),
        1.0
    );
    let mut manual = canary_labels.to_vec();
    manual.push(("reason", "manual"));
    assert_eq!(m.one("veer_guard_trips_total", &manual), 1.0);
    assert_eq!(
        m.one("veer_version_weight_percent", &canary_labels),
        0.0,
        "{}",
        m.text
    );

    // A reload drops the canary, the rollout and the TLS listener.
    std::fs::write(veer.config_path(), yaml(stable.addr(), None, None, false))
        .expect("rewrite config");
    let m = scrape_until(&client, admin, "the reloaded config", |m| {
        m.get("veer_rollout_step", &[("service", "web")]) == Some(0.0)
    })
    .await;
    assert!(m.all("veer_rollout_state", &[]).is_empty(), "{}", m.text);
    assert!(m
        .all("veer_version_weight_percent", &canary_labels)
        .is_empty());
    assert!(m.all("veer_version_latched", &canary_labels).is_empty());
    assert!(m.all("veer_guard_verdict", &[]).is_empty());
    assert!(
        m.all("veer_version_weight", &canary_labels).is_empty(),
        "{}",
        m.text
    );
    assert!(m.all("veer_endpoint_healthy", &canary_labels).is_empty());
    assert_eq!(
        m.one(
            "veer_endpoint_healthy",
            &[("service", "web"), ("version", "stable")]
        ),
        1.0
    );
    assert!(m.all("veer_tls_certificate_expiry_seconds", &[]).is_empty());
    assert!(
        m.all("veer_tls_handshake_failures_total", &[]).is_empty(),
        "{}",
        m.text
    );
    assert_eq!(
        m.one(
            "veer_version_weight_percent",
            &[("service", "web"), ("version", "stable")]
        ),
        100.0
    );
}

/// Every sample (histograms as one) whose labels include `label`=`value`.
fn labelled<'a>(m: &'a Metrics, label: &str, value: &str) -> Vec<&'a Sample> {
    m.scrape
        .samples
        .iter()
        .filter(|s| s.labels.get(label) == Some(value))
        .collect()
}

fn histogram_count(m: &Metrics, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = m.all(metric, labels);
    assert_eq!(found.len(), 1, "{metric} {labels:?}:\n{}", m.text);
    match &found[0].value {
        Value::Histogram(buckets) => buckets
            .iter()
            .find(|b| b.less_than == f64::INFINITY)
            .map_or(f64::NAN, |b| b.count),
        other => panic!("{metric} is not a histogram: {other:?}"),
    }
}

#[tokio::test]
async fn a_reload_drops_every_series_of_a_removed_version_and_endpoint() {
    let stable = Upstream::start("stable").await;
    let spare = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let config = |endpoints: &[SocketAddr], canary: Option<SocketAddr>| {
        let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        let mut y = format!(
            "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n\
             admin:\n  address: \"127.0.0.1:0\"\nservices:\n  - name: web\n    versions:\n\
             \x20     - name: stable\n        revision: \"1\"\n        endpoints: [{}]\n        weight: 1\n",
            list.join(", ")
        );
        if let Some(canary) = canary {
            y.push_str(&format!(
                "      - name: canary\n        revision: \"2\"\n        endpoints: [\"{canary}\"]\n        weight: 1\n\
                 \x20   guard: {{ baseline: stable, min_requests: 50, max_error_rate: 0.5 }}\n"
            ));
        }
        y
    };
    let veer = VeerProcess::start(
        BIN,
        &config(&[stable.addr(), spare.addr()], Some(canary.addr())),
    );
    let admin = admin_of(&veer);
    let proxy = veer.listener("public");
    let client = http1_client();

    // Traffic to both versions, so their counters and histograms hold counts.
    for _ in 0..400 {
        if canary.total() > 0 && stable.total() + spare.total() > 0 {
            break;
        }
        let answer = send(&client, get(&format!("http://{proxy}/"), Some("web"))).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    assert!(canary.total() > 0, "no request reached the canary");
    let stable_labels = [("service", "web"), ("version", "stable")];
    let canary_labels = [("service", "web"), ("version", "canary")];
    let before = Metrics::of(&client, admin).await;
    let with_code = |labels: &[(&'static str, &'static str)]| {
        let mut l = labels.to_vec();
        l.push(("code", "200"));
        l
    };
    let stable_served = before.one("veer_requests_total", &with_code(&stable_labels));
    assert!(stable_served > 0.0, "{}", before.text);
    assert!(before.one("veer_requests_total", &with_code(&canary_labels)) > 0.0);
    let spare_endpoint = spare.addr().to_string();
    assert_eq!(
        before.one(
            "veer_endpoint_healthy",
            &[("endpoint", spare_endpoint.as_str())]
        ),
        1.0
    );
    assert!(!labelled(&before, "version", "canary").is_empty());

    // The canary and one endpoint of the stable version leave the config.
    std::fs::write(veer.config_path(), config(&[stable.addr()], None)).expect("rewrite config");
    let after = scrape_until(&client, admin, "the canary's series gone", |m| {
        m.all("veer_version_weight", &canary_labels).is_empty()
    })
    .await;
    let left: Vec<_> = labelled(&after, "version", "canary")
        .iter()
        .map(|s| &s.metric)
        .collect();
    assert!(
        left.is_empty(),
        "canary series left: {left:?}\n{}",
        after.text
    );
    let left: Vec<_> = labelled(&after, "endpoint", &spare_endpoint)
        .iter()
        .map(|s| &s.metric)
        .collect();
    assert!(left.is_empty(), "removed endpoint's series left: {left:?}");
    // What stays keeps its counts.
    assert_eq!(
        after.one("veer_requests_total", &with_code(&stable_labels)),
        stable_served
    );
    assert_eq!(
        histogram_count(&after, "veer_request_duration_seconds", &stable_labels),
        stable_served
    );
    let kept = stable.addr().to_string();
    assert_eq!(
        after.one("veer_endpoint_healthy", &[("endpoint", kept.as_str())]),
        1.0
    );
    assert_eq!(
        after.one(
            "veer_endpoint_ejections_total",
            &[("endpoint", kept.as_str()), ("reason", "connect")]
        ),
        0.0
    );

    // The canary comes back: from zero, as a restarted counter would.
    std::fs::write(
        veer.config_path(),
        config(&[stable.addr()], Some(canary.addr())),
    )
    .expect("rewrite config");
    let back = scrape_until(&client, admin, "the canary back", |m| {
        !m.all("veer_version_weight", &canary_labels).is_empty()
    })
    .await;
    assert_eq!(
        back.one("veer_requests_total", &with_code(&canary_labels)),
        0.0
    );
    assert_eq!(
        histogram_count(&back, "veer_request_duration_seconds", &canary_labels),
        0.0
    );
    let mut trips = canary_labels.to_vec();
    trips.push(("reason", "error_rate"));
    assert_eq!(back.one("veer_guard_trips_total", &trips), 0.0);
}
