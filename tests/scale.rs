//! A proxy with thousands of services: routing decided by a lookup whatever
//! the number of services (first, last and wildcard hosts of a 10,000-service
//! config), a version's window allocated by its first request, quiet versions
//! leaving `/metrics` and coming back with their traffic, the exported
//! buckets picked in the config, a reload of one weight that keeps every
//! other service's parts and counters, and a bad line in a large file
//! refused with its position. Timings are `benches/scale.sh`'s job: nothing
//! here asserts one.

mod support;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use support::client::{empty, get, http1_client, send, HttpClient};
use support::harness::start_with_admin;
use support::metrics::{scrape, sum};
use support::upstream::Upstream;
use support::within;
use veer::config::HostMatch;

/// A config of `count` services `svc-I` (hosts `svc-I.example.com` and
/// `*.svc-I.internal`; a stable version with two endpoints, a canary with
/// one, 90/10; a guard). Services in `live` route to `upstream` (both
/// versions); the others to loopback ports where nothing listens.
fn config(count: usize, live: &[(usize, SocketAddr)], extra: &str, weight_of_last: u32) -> String {
    let mut y = String::with_capacity(count * 600);
    y.push_str("listeners:\n  - name: public\n    address: 127.0.0.1:0\n");
    y.push_str("admin:\n  address: 127.0.0.1:0\n");
    y.push_str(extra);
    y.push_str("services:\n");
    for i in 0..count {
        let port = 20000 + (i * 3) % 40000;
        let (stable, canary) = match live.iter().find(|(at, _)| *at == i) {
            Some((_, addr)) => (format!("{addr}"), format!("{addr}")),
            None => (
                format!("127.0.0.1:{port}, 127.0.0.1:{}", port + 1),
                format!("127.0.0.1:{}", port + 2),
            ),
        };
        let canary_weight = if i + 1 == count { weight_of_last } else { 10 };
        let _ = write!(
            y,
            "  - name: svc-{i}
    match:
      hosts: [svc-{i}.example.com, \"*.svc-{i}.internal\"]
    versions:
      - name: stable
        revision: \"1.{i}.0\"
        endpoints: [{stable}]
        weight: 90
      - name: canary
        revision: \"1.{i}.1\"
        endpoints: [{canary}]
        weight: {canary_weight}
    guard:
      baseline: stable
      window: 30s
      min_requests: 50
      max_error_rate: 0.05
"
        );
    }
    y
}

async fn through(client: &HttpClient, proxy: SocketAddr, host: &str) -> (u16, Option<String>) {
    let answer = send(client, get(&format!("http://{proxy}/"), Some(host))).await;
    (
        answer.status.as_u16(),
        answer.upstream().map(str::to_string),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_the_last_and_a_wildcard_host_of_10000_services_route_by_lookup() {
    within(
        Duration::from_secs(60),
        "routing at 10,000 services",
        async {
            // The decision itself, on the table a snapshot holds, for 10,000
            // services made in code from one parsed service.
            let one = veer::config::parse_str(&config(1, &[], "", 10), "one.yaml")
                .expect("a valid config")
                .services
                .remove(0);
            let services: Vec<_> = (0..10_000)
                .map(|i| {
                    let mut service = (*one).clone();
                    service.name = format!("svc-{i}");
                    service.hosts = vec![
                        HostMatch::Exact(format!("svc-{i}.example.com")),
                        HostMatch::Suffix(format!(".svc-{i}.internal")),
                    ];
                    service
                })
                .collect();
            let table = veer::routing::RouteTable::new(&services);
            assert_eq!(table.find("svc-0.example.com", "/"), Some(0));
            assert_eq!(table.find("svc-9999.example.com", "/a"), Some(9_999));
            assert_eq!(table.find("a.b.svc-9999.internal", "/"), Some(9_999));
            assert_eq!(table.find("SVC-5000.example.com:8080", "/"), Some(5_000));
            // The suffix must be a whole label, and the bare suffix is no match.
            assert_eq!(table.find("xsvc-9999.internal", "/"), None);
            assert_eq!(table.find("svc-9999.internal", "/"), None);
            assert_eq!(table.find("svc-10000.example.com", "/"), None);

            // And end to end, through the proxy (fewer services: a debug build
            // parses slowly, and the lookup is the same).
            let first = Upstream::start("first").await;
            let last = Upstream::start("last").await;
            let yaml = config(1_000, &[(0, first.addr()), (999, last.addr())], "", 10);
            let (proxy, addr, _admin) = start_with_admin(&yaml, None).await;
            let client = http1_client();
            for (host, want) in [
                ("svc-0.example.com", "first"),
                ("svc-999.example.com", "last"),
                ("x.svc-999.internal", "last"),
                ("deep.x.svc-0.internal", "first"),
            ] {
                assert_eq!(
                    through(&client, addr, host).await,
                    (200, Some(want.to_string())),
                    "{host}"
                );
            }
            assert_eq!(through(&client, addr, "nobody.example.com").await.0, 404);
            proxy.shutdown().await;
        },
    )
    .await;
}

#[tokio::test]
async fn a_window_is_allocated_by_its_first_request_and_counts_as_before() {
    within(Duration::from_secs(30), "lazy windows", async {
        let up = Upstream::start("up").await;
        let yaml = config(50, &[(0, up.addr())], "", 10);
        let (proxy, addr, _admin) = start_with_admin(&yaml, None).await;
        let client = http1_client();
        for _ in 0..20 {
            assert_eq!(through(&client, addr, "svc-0.example.com").await.0, 200);
        }
        let snapshot = proxy.control().snapshot();
        let telemetry = proxy.control().telemetry();
        let now = telemetry.elapsed(tokio::time::Instant::now());
        let window = Duration::from_secs(30);
        let served: u64 = snapshot.services[0]
            .versions
            .iter()
            .map(|v| v.stats.window().figures(now, window).requests)
            .sum();
        assert_eq!(served, 20, "every request is in the window");
        for service in &snapshot.services[1..] {
            for version in &service.versions {
                assert!(
                    !version.stats.window().is_allocated(),
                    "{} {} had no request and holds no window",
                    service.name,
                    version.name
                );
                let figures = version.stats.window().figures(now, window);
                assert_eq!((figures.requests, figures.p99_us), (0, None));
            }
        }
        proxy.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn quiet_versions_leave_metrics_and_come_back_with_their_counts() {
    within(Duration::from_secs(40), "idle series", async {
        let up = Upstream::start("up").await;
        let extra = "telemetry:\n  idle_series_after: 2s\n  buckets: [1ms, 100ms, 1s]\n";
        let yaml = config(3, &[(0, up.addr()), (1, up.addr())], extra, 10);
        let (proxy, addr, admin) = start_with_admin(&yaml, None).await;
        let client = http1_client();
        let requests = |s: &prometheus_parse::Scrape, service: &str| {
            sum(s, "veer_requests_total", &[("service", service)])
        };
        let present = |s: &prometheus_parse::Scrape, service: &str| {
            s.samples
                .iter()
                .any(|x| x.labels.get("service") == Some(service))
        };

        // Nothing requested yet: no service is shown.
        let first = scrape(&client, admin).await;
        assert!(!present(&first, "svc-0") && !present(&first, "svc-2"));

        for _ in 0..3 {
            assert_eq!(through(&client, addr, "svc-0.example.com").await.0, 200);
        }
        let busy = scrape(&client, admin).await;
        assert_eq!(requests(&busy, "svc-0"), 3.0);
        assert!(!present(&busy, "svc-1"), "svc-1 had no request");
        // Only the buckets picked, and +Inf.
        let mut bounds: Vec<f64> = busy
            .samples
            .iter()
            .filter(|s| {
                s.metric == "veer_request_duration_seconds"
                    && s.labels.get("service") == Some("svc-0")
                    && s.labels.get("version") == Some("stable")
            })
            .flat_map(|s| match &s.value {
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.iter().map(|b| b.less_than).collect::<Vec<_>>()
                }
                _ => Vec::new(),
            })
            .collect();
        bounds.dedup();
        assert_eq!(bounds, [0.001, 0.1, 1.0, f64::INFINITY]);

        // Quiet for longer than idle_series_after: gone, every family.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while present(&scrape(&client, admin).await, "svc-0") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "svc-0 stays in /metrics long after 2s without a request"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Traffic again: back, with its count kept (not reset).
        assert_eq!(through(&client, addr, "svc-0.example.com").await.0, 200);
        let back = scrape(&client, admin).await;
        assert_eq!(requests(&back, "svc-0"), 4.0);
        assert!(
            sum(
                &back,
                "veer_version_weight_percent",
                &[("service", "svc-0")]
            ) > 0.0,
            "its release gauges come back too"
        );
        proxy.shutdown().await;
    })
    .await;
}

async fn post(client: &HttpClient, url: &str) -> u16 {
    let request = Request::post(url).body(empty()).expect("a request");
    send(client, request).await.status.as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_one_weight_keeps_every_other_service_and_its_counters() {
    within(Duration::from_secs(60), "a reload of one weight", async {
        let up = Upstream::start("up").await;
        let count = 1_000;
        let live = [(0, up.addr()), (count - 1, up.addr())];
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("veer.yaml");
        // Only what had traffic is scraped: the text stays small.
        let idle = "telemetry:\n  idle_series_after: 10m\n";
        std::fs::write(&path, config(count, &live, idle, 10)).expect("write config");
        let yaml = std::fs::read_to_string(&path).expect("read config");
        let (proxy, addr, admin) = start_with_admin(&yaml, Some(path.clone())).await;
        let client = http1_client();
        for _ in 0..5 {
            assert_eq!(through(&client, addr, "svc-0.example.com").await.0, 200);
        }
        let before = proxy.control().snapshot();
        let model_before = proxy.control().config();

        // The last service's canary goes from 10 to 0.
        std::fs::write(&path, config(count, &live, idle, 0)).expect("write config");
        assert_eq!(post(&client, &format!("http://{admin}/reload")).await, 200);
        let after = proxy.control().snapshot();
        let last = count - 1;
        assert_eq!(after.services[last].versions[1].weight, 0, "in force");
        assert!(!Arc::ptr_eq(&before.services[last], &after.services[last]));
        for i in 0..last {
            assert!(
                Arc::ptr_eq(&before.services[i], &after.services[i]),
                "svc-{i} unchanged, so kept as built"
            );
        }
        assert!(
            Arc::ptr_eq(&before.routes, &after.routes),
            "routes unchanged"
        );
        // The models of the unchanged services are shared, not copied.
        let model_after = proxy.control().config();
        for i in 0..last {
            assert!(
                Arc::ptr_eq(&model_before.services[i], &model_after.services[i]),
                "svc-{i}'s model is the one in force before"
            );
        }

        // Run-time weights and a rollback rebuild the one service they name.
        let control = proxy.control();
        for (service, change) in [(7, "weights"), (9, "rollback")] {
            let name = format!("svc-{service}");
            let before = control.snapshot();
            match change {
                "weights" => control
                    .set_weights(&name, &[("stable", 0), ("canary", 100)])
                    .await
                    .expect("weights set"),
                _ => {
                    control.rollback(&name).await.expect("rolled back");
                }
            }
            let after = control.snapshot();
            let weights: Vec<u32> = after.services[service]
                .versions
                .iter()
                .map(|v| v.weight)
                .collect();
            let expected = if change == "weights" {
                [0, 100]
            } else {
                [100, 0]
            };
            assert_eq!(weights, expected, "{change} in force");
            for i in (0..count).filter(|&i| i != service) {
                assert!(
                    Arc::ptr_eq(&before.services[i], &after.services[i]),
                    "{change} of svc-{service} kept svc-{i}"
                );
            }
        }

        for _ in 0..20 {
            let (status, _) = through(&client, addr, &format!("svc-{last}.example.com")).await;
            assert_eq!(status, 200);
        }
        // svc-0's counters went on, not from zero.
        let s = scrape(&client, admin).await;
        assert_eq!(sum(&s, "veer_requests_total", &[("service", "svc-0")]), 5.0);
        let last = format!("svc-{last}");
        assert_eq!(sum(&s, "veer_requests_total", &[("service", &last)]), 20.0);
        assert_eq!(
            sum(
                &s,
                "veer_requests_total",
                &[("service", &last), ("version", "canary")]
            ),
            0.0,
            "no request to a version at weight 0"
        );
        proxy.shutdown().await;
    })
    .await;
}

#[test]
fn a_bad_line_anywhere_in_a_large_file_is_refused_at_its_position() {
    let good = config(5_000, &[], "", 10);
    // Service 3,777's canary weight, on its own line.
    let marker = "revision: \"1.3777.1\"";
    let at = good.find(marker).expect("service 7777");
    let weight = at + good[at..].find("weight: 10").expect("its weight");
    let line = good[..weight].matches('\n').count() + 1;
    let bad = format!("{}weight: ten{}", &good[..weight], &good[weight + 10..]);
    let errors = veer::config::parse_str(&bad, "big.yaml")
        .expect_err("a weight that is not a number is refused")
        .to_string();
    assert!(
        errors.starts_with(&format!(
            "big.yaml:{line}:17: services[3777].versions[1].weight: "
        )),
        "{errors}"
    );
    assert_eq!(errors.lines().count(), 1, "{errors}");

    // A duplicate key far down is placed at both of its lines.
    let twice = good.replacen(
        "revision: \"1.4900.0\"",
        "revision: \"1.4900.0\"\n        revision: \"again\"",
        1,
    );
    let errors = veer::config::parse_str(&twice, "big.yaml")
        .expect_err("a duplicate key is refused")
        .to_string();
    assert!(
        errors.contains("services[4900].versions[0].revision: duplicate key `revision`"),
        "{errors}"
    );
}

#[test]
fn telemetry_settings_are_checked() {
    let with = |block: &str| config(1, &[], block, 10);
    let refused = |block: &str| {
        veer::config::parse_str(&with(block), "t.yaml")
            .expect_err(block)
            .to_string()
    };
    assert_eq!(
        refused("telemetry:\n  buckets: [3ms]\n"),
        "t.yaml:7:13: telemetry.buckets[0]: `3ms` is not one of the bounds veer counts in; pick from 100us, 250us, 500us, 1ms, 2500us, 5ms, 7500us, 10ms, 15ms, 25ms, 35ms, 50ms, 75ms, 100ms, 150ms, 250ms, 350ms, 500ms, 750ms, 1s, 1500ms, 2500ms, 5s, 10s"
    );
    assert_eq!(
        refused("telemetry:\n  buckets: [10ms, 5ms]\n"),
        "t.yaml:7:19: telemetry.buckets[1]: `5ms` is not above the bound before it (10ms): list the bounds in increasing order, each once"
    );
    assert_eq!(
        refused("telemetry:\n  buckets: []\n"),
        "t.yaml:7:12: telemetry.buckets: the list is empty: name at least one bound, or remove `buckets` to export them all"
    );
    assert_eq!(
        refused("telemetry:\n  idle_series_after: 500ms\n"),
        "t.yaml:7:22: telemetry.idle_series_after: `500ms` is too short: write at least 1s (several scrape intervals, such as 10m, keeps series steady)"
    );
    assert!(
        refused("telemetry:\n  idle_series_after: soon\n")
            .starts_with("t.yaml:7:22: telemetry.idle_series_after: `soon` is not a duration"),
        "{}",
        refused("telemetry:\n  idle_series_after: soon\n")
    );
    assert!(refused("telemetry:\n  idle_after: 1m\n")
        .starts_with("t.yaml:7:3: telemetry.idle_after: unknown field `idle_after`"));
    let config = veer::config::parse_str(
        &with("telemetry:\n  idle_series_after: 10m\n  buckets: [2500us, 1s]\n"),
        "t.yaml",
    )
    .expect("valid");
    assert_eq!(
        config.telemetry.idle_series_after,
        Some(Duration::from_secs(600))
    );
    assert_eq!(
        config.telemetry.buckets,
        Some(vec![Duration::from_micros(2500), Duration::from_secs(1)])
    );
}

/// The guard skips a quiet version after judging it once, and the health
/// tick looks at ejected endpoints only: neither may cost a service its
/// protection. Many idle services, several guard intervals with no traffic
/// at all; then one canary goes bad and is still tripped, its windows the
/// only ones allocated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_many_idle_ticks_the_guard_still_trips_a_canary_that_goes_bad() {
    within(Duration::from_secs(60), "idle guard", async {
        let up = Upstream::start("up").await;
        let yaml = config(200, &[(0, up.addr())], "", 10);
        let (proxy, addr, _admin) = start_with_admin(&yaml, None).await;
        let control = proxy.control();
        // Every quiet canary is judged once: "insufficient data".
        support::wait_until(Duration::from_secs(20), "first verdicts", || {
            [0, 100, 199].iter().all(|i| {
                control.verdict(&format!("svc-{i}"), "canary").as_deref()
                    == Some("insufficient data: 0/50 requests")
            })
        })
        .await;
        // Several guard intervals (1 s) of nothing.
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        assert_eq!(
            control.verdict("svc-100", "canary").as_deref(),
            Some("insufficient data: 0/50 requests"),
            "a quiet canary keeps its verdict"
        );

        up.set_fail_ratio(1.0);
        let client = http1_client();
        let mut sent = 0;
        while control.snapshot().services[0].versions[1].weight != 0 {
            assert!(sent < 5_000, "no trip after {sent} failing requests");
            assert_eq!(through(&client, addr, "svc-0.example.com").await.0, 500);
            sent += 1;
            if sent % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let snapshot = control.snapshot();
        assert!(snapshot.services[0].versions[1].latched, "the trip latched");
        let verdict = control.verdict("svc-0", "canary").unwrap_or_default();
        assert!(verdict.starts_with("bad: error_rate"), "{verdict}");
        for service in &snapshot.services[1..] {
            for version in &service.versions {
                assert!(
                    !version.stats.window().is_allocated(),
                    "{} {} had no request and holds no window",
                    service.name,
                    version.name
                );
            }
        }
        proxy.shutdown().await;
    })
    .await;
}
