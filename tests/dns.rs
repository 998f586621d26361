//! Endpoints by DNS name, end to end: a real DNS server on loopback UDP
//! (`support::dns`) whose records the tests change while veer runs, real
//! upstreams on several loopback addresses at one port (Linux routes all of
//! 127/8 to `lo`), veer in-process with its admin API.
//!
//! Every wait is a poll with a deadline; nothing asserts how long a lookup
//! or a refresh takes. TTL bounds are checked by counting queries.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use support::dns::{DnsServer, Mode};
use support::load::tally;
use support::metrics::{scrape, sum};
use support::release::{version, Fixture};
use support::upstream::Upstream;
use support::{own_loopback, wait_until};

/// Bound on any one wait here.
const LIMIT: Duration = Duration::from_secs(30);

/// Upstreams named `names`, each on its own loopback address of this
/// process (`own_loopback(first + i)`), all at one port.
async fn upstreams(first: u8, names: &[&'static str]) -> (u16, Vec<(IpAddr, Upstream)>) {
    let ips: Vec<IpAddr> = (0..names.len())
        .map(|i| own_loopback(first + u8::try_from(i).expect("few upstreams")))
        .collect();
    upstreams_on(&ips, names).await
}

/// Upstreams named `names` on `ips`, all at one port.
async fn upstreams_on(ips: &[IpAddr], names: &[&'static str]) -> (u16, Vec<(IpAddr, Upstream)>) {
    'port: for _ in 0..20 {
        let probe = tokio::net::TcpListener::bind(SocketAddr::new(ips[0], 0))
            .await
            .expect("bind a loopback port");
        let port = probe.local_addr().expect("local addr").port();
        drop(probe);
        let mut started = Vec::new();
        for (&ip, name) in ips.iter().zip(names) {
            match Upstream::start_at(name, SocketAddr::new(ip, port)).await {
                Some(upstream) => started.push((ip, upstream)),
                None => continue 'port,
            }
        }
        return (port, started);
    }
    panic!("no port free on every address of {ips:?}");
}

/// The config: the admin API, a `dns` block asking `dns`, and service `web`
/// with `versions` as YAML flow mappings, then `extra` service lines.
fn yaml(dns: &DnsServer, dns_extra: &str, versions: &[String], extra: &str) -> String {
    let mut y = format!(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n\
         admin:\n  address: \"127.0.0.1:0\"\n\
         dns:\n  nameservers: [\"{}\"]\n  timeout: 300ms\n{dns_extra}\
         services:\n  - name: web\n    versions:\n",
        dns.addr()
    );
    for v in versions {
        y.push_str(&format!("      - {v}\n"));
    }
    y.push_str("    timeouts: { connect: 1s, request: 5s }\n");
    y.push_str(extra);
    y
}

/// The `dns` entry of `version` for `name` in `web`'s `/status` entry.
fn dns_entry<'a>(web: &'a Value, version_name: &str, name: &str) -> &'a Value {
    version(web, version_name)["dns"]
        .as_array()
        .and_then(|all| all.iter().find(|d| d["name"] == name))
        .unwrap_or_else(|| panic!("no dns entry {name} in {web:#}"))
}

fn addresses(entry: &Value) -> Vec<String> {
    let mut list: Vec<String> = entry["addresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    list.sort();
    list
}

fn at(ips: &[IpAddr], port: u16) -> Vec<String> {
    let mut list: Vec<String> = ips
        .iter()
        .map(|&ip| SocketAddr::new(ip, port).to_string())
        .collect();
    list.sort();
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_two_addresses_gets_traffic_on_both() {
    let dns = DnsServer::start().await;
    let (port, ups) = upstreams(1, &["a", "b"]).await;
    let ips: Vec<IpAddr> = ups.iter().map(|(ip, _)| *ip).collect();
    dns.set("web.test", &ips, 30);
    let f = Fixture::start(&yaml(
        &dns,
        "",
        &[format!(
            "{{ name: stable, endpoints: [\"web.test:{port}\"], weight: 1 }}"
        )],
        "",
    ))
    .await;
    // Resolved before the first snapshot: both from the first request on.
    let load = f.paced_load(200, 200, LIMIT);
    let counts = tally(&load.join().await);
    assert_eq!(counts.values().sum::<u64>(), 200, "{counts:?}");
    assert!(counts.get("200 a").copied().unwrap_or(0) > 0, "{counts:?}");
    assert!(counts.get("200 b").copied().unwrap_or(0) > 0, "{counts:?}");
    assert_eq!(
        counts.get("200 a").copied().unwrap_or(0) + counts.get("200 b").copied().unwrap_or(0),
        200,
        "{counts:?}"
    );

    let web = f.web().await;
    let entry = dns_entry(&web, "stable", &format!("web.test:{port}"));
    assert_eq!(addresses(entry), at(&ips, port));
    assert_eq!(entry["result"], "success");
    assert_eq!(entry["error"], Value::Null);
    assert_eq!(entry["failures"], 0);
    assert!(entry["last_lookup_at"].is_string(), "{entry:#}");
    let endpoints: Vec<&str> = version(&web, "stable")["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e["address"].as_str())
        .collect();
    assert_eq!(endpoints.len(), 2, "{web:#}");

    let metrics = scrape(&f.client, f.admin).await;
    let resolved = sum(
        &metrics,
        "veer_dns_resolutions_total",
        &[("name", "web.test"), ("result", "success")],
    );
    assert!(resolved >= 1.0, "{resolved}");
    // The other results are declared at 0.
    assert!(metrics
        .samples
        .iter()
        .any(|s| s.metric == "veer_dns_resolutions_total"
            && s.labels.get("result") == Some("failure")));
    f.shutdown().await;
}

/// A and AAAA records alike: every address is an endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_and_v6_addresses_are_endpoints() {
    let dns = DnsServer::start().await;
    let v6: IpAddr = "::1".parse().expect("::1");
    let (port, ups) = upstreams_on(&[own_loopback(71), v6], &["four", "six"]).await;
    dns.set("web.test", &[ups[0].0, v6], 30);
    let f = Fixture::start(&yaml(
        &dns,
        "",
        &[format!(
            "{{ name: stable, endpoints: [\"web.test:{port}\"], weight: 1 }}"
        )],
        "",
    ))
    .await;
    let counts = tally(&f.paced_load(200, 100, LIMIT).join().await);
    assert!(
        counts.get("200 four").copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
    assert!(
        counts.get("200 six").copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
    let web = f.web().await;
    let entry = dns_entry(&web, "stable", &format!("web.test:{port}"));
    assert_eq!(addresses(entry), at(&[ups[0].0, v6], port));
    f.shutdown().await;
}

/// With health checks on, an address that appears takes traffic only once
/// a probe passed, as an endpoint a reload adds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_address_waits_for_a_passing_probe() {
    let dns = DnsServer::start().await;
    let (port, ups) = upstreams(81, &["a", "c"]).await;
    ups[1].1.set_fail_ratio(1.0);
    dns.set("web.test", &[ups[0].0], 0);
    let f = Fixture::start(&yaml(
        &dns,
        "  min_ttl: 100ms\n  max_ttl: 200ms\n",
        &[format!("{{ name: stable, endpoints: [\"web.test:{port}\"], weight: 1 }}")],
        "    health_check: { path: /health, interval: 100ms, timeout: 90ms, healthy_threshold: 1, unhealthy_threshold: 1 }\n",
    ))
    .await;
    dns.set("web.test", &[ups[0].0, ups[1].0], 0);
    let c = SocketAddr::new(ups[1].0, port).to_string();
    // Listed, probed, failing: no traffic.
    f.wait_web(LIMIT, "c probed and unhealthy", |web| {
        version(web, "stable")["endpoints"]
            .as_array()
            .is_some_and(|all| {
                all.iter()
                    .any(|e| e["address"] == c.as_str() && e["health"] == "unhealthy")
            })
    })
    .await;
    wait_until(LIMIT, "c probed", || ups[1].1.count("/health") >= 2).await;
    let counts = tally(&f.paced_load(200, 100, LIMIT).join().await);
    assert_eq!(counts.get("200 a").copied(), Some(100), "{counts:?}");
    // Its probe passes: it joins.
    ups[1].1.set_fail_ratio(0.0);
    f.wait_web(LIMIT, "c healthy", |web| {
        version(web, "stable")["endpoints"]
            .as_array()
            .is_some_and(|all| {
                all.iter()
                    .any(|e| e["address"] == c.as_str() && e["health"] == "healthy")
            })
    })
    .await;
    let counts = tally(&f.paced_load(200, 100, LIMIT).join().await);
    assert!(counts.get("200 c").copied().unwrap_or(0) > 0, "{counts:?}");
    assert_eq!(counts.values().sum::<u64>(), 100, "{counts:?}");
    assert!(counts.keys().all(|k| k.starts_with("200 ")), "{counts:?}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_changed_under_load_fail_no_request() {
    let dns = DnsServer::start().await;
    let (port, ups) = upstreams(11, &["a", "b", "c"]).await;
    let ip = |i: usize| ups[i].0;
    // `a` answers slowly: requests are in flight to it when it leaves.
    ups[0].1.set_delay(Duration::from_millis(300));
    dns.set("web.test", &[ip(0), ip(1)], 0);
    let f = Fixture::start(&yaml(
        &dns,
        "  min_ttl: 100ms\n  max_ttl: 1s\n",
        &[format!(
            "{{ name: stable, endpoints: [\"web.test:{port}\"], weight: 1 }}"
        )],
        "",
    ))
    .await;
    let load = f.paced_load(100, 3_000, Duration::from_secs(25));
    let name = format!("web.test:{port}");
    wait_until(LIMIT, "traffic to a and b", || {
        ups[0].1.total() > 5 && ups[1].1.total() > 5
    })
    .await;
    let in_flight_to_a = || ups[0].1.total();
    let before_change = in_flight_to_a();
    assert!(before_change > 0);
    dns.set("web.test", &[ip(1), ip(2)], 0);
    // The name's new addresses, then the snapshot's endpoints built from them.
    let new_set = at(&[ip(1), ip(2)], port);
    f.wait_web(LIMIT, "the new address set in /status", |web| {
        let mut endpoints: Vec<String> = version(web, "stable")["endpoints"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|e| e["address"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        endpoints.sort();
        addresses(dns_entry(web, "stable", &name)) == new_set && endpoints == new_set
    })
    .await;
    wait_until(LIMIT, "traffic to the new address", || {
        ups[2].1.total() > 20
    })
    .await;
    // Every request that reached `a` before it left was answered (below);
    // none reaches it once the new set is in force. (The pause lets the
    // requests already sent to `a` arrive; they are counted on arrival.)
    tokio::time::sleep(Duration::from_millis(400)).await;
    let a_final = ups[0].1.total();
    let c_then = ups[2].1.total();
    wait_until(LIMIT, "more traffic to c", || {
        ups[2].1.total() > c_then + 20
    })
    .await;
    assert_eq!(
        ups[0].1.total(),
        a_final,
        "a removed address still got requests"
    );
    let samples = load.finish().await;
    let counts = tally(&samples);
    let ok: u64 = counts
        .iter()
        .filter(|(k, _)| k.starts_with("200 "))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(ok, samples.len() as u64, "failed requests: {counts:?}");
    // `a`'s slow answers, the ones in flight when it left included, came back.
    assert_eq!(
        counts.get("200 a").copied().unwrap_or(0),
        a_final,
        "{counts:?}"
    );
    assert!(counts.get("200 c").copied().unwrap_or(0) > 20, "{counts:?}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_lookups_keep_the_last_good_addresses() {
    let dns = DnsServer::start().await;
    let (port, ups) = upstreams(21, &["a"]).await;
    dns.set("web.test", &[ups[0].0], 0);
    let f = Fixture::start(&yaml(
        &dns,
        "  min_ttl: 100ms\n  max_ttl: 200ms\n",
        &[format!(
            "{{ name: stable, endpoints: [\"web.test:{port}\"], weight: 1 }}"
        )],
        "",
    ))
    .await;
    let name = format!("web.test:{port}");
    let good = at(&[ups[0].0], port);

    dns.set_mode(Mode::ServFail);
    let web = f
        .wait_web(LIMIT, "a failed lookup in /status", |web| {
            dns_entry(web, "stable", &name)["result"] == "failure"
        })
        .await;
    let entry = dns_entry(&web, "stable", &name);
    assert_eq!(addresses(entry), good, "the last good addresses stay");
    assert_eq!(
        entry["error"],
        "lookup of `web.test` failed: the nameserver answered Server Failure"
    );
    assert!(entry["failures"].as_u64().expect("failures") >= 1);
    // `veer status` tells people too.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["status", "web", "--admin", &f.admin_url()])
        .output()
        .await
        .expect("run veer status");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!(
            "  stable: DNS {name} failure: lookup of `web.test` failed: the nameserver answered Server Failure; in use: {}\n",
            good[0]
        )),
        "{table}"
    );
    let answer = f.get_with("/", &[]).await;
    assert_eq!(
        (answer.status.as_u16(), answer.upstream()),
        (200, Some("a"))
    );
    let metrics = scrape(&f.client, f.admin).await;
    assert!(
        sum(
            &metrics,
            "veer_dns_resolutions_total",
            &[("name", "web.test"), ("result", "failure")]
        ) >= 1.0
    );

    // No answer at all: a failure too, and still the last good addresses.
    dns.set_mode(Mode::Silent);
    let web = f
        .wait_web(LIMIT, "a timed-out lookup in /status", |web| {
            let entry = dns_entry(web, "stable", &name);
            entry["error"]
                .as_str()
                .is_some_and(|e| e.contains("timed out") || e.contains("timeout"))
        })
        .await;
    assert_eq!(addresses(dns_entry(&web, "stable", &name)), good);
    let load = f.paced_load(100, 50, LIMIT);
    let counts = tally(&load.join().await);
    assert_eq!(counts.get("200 a").copied(), Some(50), "{counts:?}");

    // The name answers again: a success, the failure count back to 0.
    dns.set_mode(Mode::Answer);
    f.wait_web(LIMIT, "the name resolving again", |web| {
        let entry = dns_entry(web, "stable", &name);
        entry["result"] == "success" && entry["failures"] == 0
    })
    .await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_never_resolved_gives_its_share_to_the_baseline() {
    let dns = DnsServer::start().await;
    let stable = Upstream::start("stable").await;
    let (port, ups) = upstreams(31, &["canary"]).await;
    let f = Fixture::start(&yaml(
        &dns,
        "  min_ttl: 100ms\n  max_ttl: 200ms\n",
        &[
            format!(
                "{{ name: stable, endpoints: [\"{}\"], weight: 50 }}",
                stable.addr()
            ),
            format!("{{ name: canary, endpoints: [\"canary.test:{port}\"], weight: 50 }}"),
        ],
        "    guard: { baseline: stable, max_error_rate: 0.5 }\n",
    ))
    .await;
    let name = format!("canary.test:{port}");
    let web = f.web().await;
    let canary = version(&web, "canary");
    assert_eq!(canary["unavailable"], true, "{web:#}");
    assert_eq!(canary["endpoints"].as_array().map(Vec::len), Some(0));
    let entry = dns_entry(&web, "canary", &name);
    assert_eq!(entry["result"], "empty");
    assert_eq!(entry["error"], "`canary.test` does not exist (NXDOMAIN)");
    assert_eq!(addresses(entry), Vec::<String>::new());
    let load = f.paced_load(200, 100, LIMIT);
    let counts = tally(&load.join().await);
    assert_eq!(counts.get("200 stable").copied(), Some(100), "{counts:?}");

    // Once it resolves, the canary joins and takes its share.
    dns.set("canary.test", &[ups[0].0], 0);
    f.wait_web(LIMIT, "the canary available", |web| {
        version(web, "canary")["unavailable"] == false
    })
    .await;
    let load = f.paced_load(200, 200, LIMIT);
    let counts = tally(&load.join().await);
    assert!(
        counts.get("200 canary").copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
    assert_eq!(counts.values().sum::<u64>(), 200);
    assert!(counts.keys().all(|k| k.starts_with("200 ")), "{counts:?}");
    f.shutdown().await;
}

/// A nameserver that does not answer holds veer's start for a bounded
/// time only; the name joins when it first resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_nameserver_does_not_hold_the_start() {
    let dns = DnsServer::start().await;
    dns.set_mode(Mode::Silent);
    let stable = Upstream::start("stable").await;
    let (port, ups) = upstreams(101, &["canary"]).await;
    dns.set("canary.test", &[ups[0].0], 30);
    let f = Fixture::start(&yaml(
        &dns,
        "  min_ttl: 100ms\n  max_ttl: 200ms\n",
        &[
            format!(
                "{{ name: stable, endpoints: [\"{}\"], weight: 50 }}",
                stable.addr()
            ),
            format!("{{ name: canary, endpoints: [\"canary.test:{port}\"], weight: 50 }}"),
        ],
        "    guard: { baseline: stable, max_error_rate: 0.5 }\n",
    ))
    .await;
    let answer = f.get_with("/", &[]).await;
    assert_eq!(
        (answer.status.as_u16(), answer.upstream()),
        (200, Some("stable"))
    );
    dns.set_mode(Mode::Answer);
    f.wait_web(LIMIT, "the canary resolved and available", |web| {
        version(web, "canary")["unavailable"] == false
            && dns_entry(web, "canary", &format!("canary.test:{port}"))["result"] == "success"
    })
    .await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ttl_is_followed_within_the_bounds() {
    let dns = DnsServer::start().await;
    let (port, ups) = upstreams(41, &["a"]).await;
    // TTL 0 would be asked for in a loop without min_ttl; TTL 1h would not
    // be asked again for an hour without max_ttl.
    dns.set("zero.test", &[ups[0].0], 0);
    dns.set("long.test", &[ups[0].0], 3600);
    let f = Fixture::start(&yaml(
        &dns,
        "  min_ttl: 100ms\n  max_ttl: 1s\n",
        &[
            format!("{{ name: stable, endpoints: [\"zero.test:{port}\"], weight: 1 }}"),
            format!("{{ name: canary, endpoints: [\"long.test:{port}\"], weight: 1 }}"),
        ],
        "",
    ))
    .await;
    // long.test is asked again (max_ttl), more than once.
    wait_until(LIMIT, "long.test asked three times", || {
        dns.queries("long.test") >= 3
    })
    .await;
    let zero = dns.queries("zero.test");
    let long = dns.queries("long.test");
    // Two max_ttl periods passed: zero.test was asked every min_ttl meanwhile
    // (about ten times as often), never in a loop.
    assert!(zero > long, "zero.test {zero}, long.test {long}");
    assert!(zero < 200, "zero.test asked {zero} times: min_ttl not held");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_name_is_found_through_the_search_domains() {
    let dns = DnsServer::start().await;
    let (port, ups) = upstreams(51, &["right", "wrong"]).await;
    // As Kubernetes writes it: ndots 5, the namespace's domains first.
    let dir = tempfile::tempdir().expect("temp dir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 10.255.255.1\n\
         search prod.svc.cluster.test svc.cluster.test cluster.test\n\
         options ndots:5\n",
    )
    .expect("write resolv.conf");
    // `api.billing` has fewer than 5 dots: the search domains come first,
    // so the service in the cluster wins over the name as written.
    dns.set("api.billing.svc.cluster.test", &[ups[0].0], 30);
    dns.set("api.billing", &[ups[1].0], 30);
    let f = Fixture::start(&yaml(
        &dns,
        &format!("  resolv_conf: \"{}\"\n", resolv.display()),
        &[format!(
            "{{ name: stable, endpoints: [\"api.billing:{port}\"], weight: 1 }}"
        )],
        "",
    ))
    .await;
    let web = f.web().await;
    let entry = dns_entry(&web, "stable", &format!("api.billing:{port}"));
    assert_eq!(addresses(entry), at(&[ups[0].0], port), "{web:#}");
    // Asked under the first search domain (no such name), then the second.
    assert!(dns.queries("api.billing.prod.svc.cluster.test") >= 1);
    assert!(dns.queries("api.billing.svc.cluster.test") >= 1);
    let load = f.paced_load(200, 20, LIMIT);
    let counts = tally(&load.join().await);
    assert_eq!(counts.get("200 right").copied(), Some(20), "{counts:?}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_names() {
    let dns = DnsServer::start().await;
    let (port, ups) = upstreams(61, &["a", "b"]).await;
    dns.set("one.test", &[ups[0].0], 30);
    dns.set("two.test", &[ups[1].0], 30);
    let dns_block = "  min_ttl: 100ms\n  max_ttl: 1s\n";
    let f = Fixture::start(&yaml(
        &dns,
        dns_block,
        &[format!(
            "{{ name: stable, endpoints: [\"one.test:{port}\"], weight: 1 }}"
        )],
        "",
    ))
    .await;
    let next = yaml(
        &dns,
        dns_block,
        &[format!(
            "{{ name: stable, endpoints: [\"two.test:{port}\"], weight: 1 }}"
        )],
        "",
    );
    let config = veer::config::parse_str(&next, "t.yaml").expect("valid");
    f.control().apply_config(config).await.expect("applied");
    // The new name was looked up before the reload's snapshot: no gap.
    let answer = f.get_with("/", &[]).await;
    assert_eq!(
        (answer.status.as_u16(), answer.upstream()),
        (200, Some("b"))
    );
    let web = f.web().await;
    assert_eq!(
        version(&web, "stable")["dns"].as_array().map(Vec::len),
        Some(1)
    );
    dns_entry(&web, "stable", &format!("two.test:{port}"));
    // one.test is no longer asked, and its counters left /metrics.
    let asked = dns.queries("one.test");
    let metrics = scrape(&f.client, f.admin).await;
    assert_eq!(
        sum(
            &metrics,
            "veer_dns_resolutions_total",
            &[("name", "one.test")]
        ),
        0.0
    );
    let two = dns.queries("two.test");
    wait_until(LIMIT, "two.test asked again", || {
        dns.queries("two.test") > two + 1
    })
    .await;
    assert_eq!(dns.queries("one.test"), asked);
    f.shutdown().await;
}

// ---------------------------------------------------------------- the config

/// A valid config with a `dns` block of `dns` lines (from line 5 on) and
/// the endpoints `endpoints` (line 12).
fn config_text(dns: &str, endpoints: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:8080\ndns:\n{dns}\
         services:\n  - name: app\n    versions:\n      - name: stable\n        weight: 1\n        endpoints: {endpoints}\n"
    )
}

#[track_caller]
fn assert_config_errors(text: &str, expected: &[&str]) {
    match veer::config::parse_str(text, "test.yaml") {
        Ok(_) => panic!("accepted, expected {expected:#?}\n{text}"),
        Err(errors) => {
            let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            assert_eq!(lines, expected, "\nthe config was:\n{text}");
        }
    }
}

#[test]
fn the_dns_block_is_checked() {
    let text = config_text(
        "  nameservers: [10.96.0.10, \"127.0.0.1:0\", \"0.0.0.0:53\", dns.local]\n  \
         search: [svc.cluster.local, \"bad..domain\"]\n  ndots: 16\n  timeout: 0s\n  \
         min_ttl: 50ms\n  max_ttl: 2h\n",
        "[\"app.test:80\"]",
    );
    assert_config_errors(
        &text,
        &[
            "test.yaml:5:29: dns.nameservers[1]: `127.0.0.1:0` has port 0: give the port the nameserver answers on, or none for 53",
            "test.yaml:5:44: dns.nameservers[2]: `0.0.0.0:53` is a wildcard address, which cannot be asked: write the nameserver's own IP, such as 10.96.0.10, 127.0.0.1:5353 or [fd00::10]:53",
            "test.yaml:5:58: dns.nameservers[3]: `dns.local` is not an IP address or IP:PORT: nameservers are written as addresses, such as 10.96.0.10, 127.0.0.1:5353 or [fd00::10]:53",
            "test.yaml:6:31: dns.search[1]: `bad..domain` is not a DNS name: it has an empty label (two dots in a row, or a leading dot)",
            "test.yaml:7:10: dns.ndots: 16 is outside 0..=15 (dots a name needs to be tried as written before the search domains)",
            "test.yaml:8:12: dns.timeout: `0s` is zero: this needs a duration above 0",
            "test.yaml:9:12: dns.min_ttl: 50ms is below 100ms: a name with a short TTL would be asked for many times a second; write 100ms or more",
            "test.yaml:10:12: dns.max_ttl: 2h is above 1h: addresses that change would go unseen that long; write 1h or less",
        ],
    );
    assert_config_errors(
        &config_text("  min_ttl: 1m\n  max_ttl: 30s\n", "[\"app.test:80\"]"),
        &["test.yaml:5:12: dns.min_ttl: 1m is above max_ttl (30s): the TTL is held between the two, so min_ttl must not exceed max_ttl"],
    );
    assert_config_errors(
        &config_text("  ttl: 5s\n", "[\"app.test:80\"]"),
        &["test.yaml:5:3: dns.ttl: unknown field `ttl`, expected one of `resolv_conf`, `nameservers`, `search`, `ndots`, `timeout`, `min_ttl`, `max_ttl`"],
    );
    assert_config_errors(
        &config_text("  nameservers: []\n", "[\"app.test:80\"]"),
        &["test.yaml:5:16: dns.nameservers: is empty: list at least one nameserver, such as [10.96.0.10], or remove nameservers to use those of resolv_conf"],
    );
    assert_config_errors(
        &config_text("  resolv_conf: \"\"\n", "[\"app.test:80\"]"),
        &["test.yaml:5:16: dns.resolv_conf: empty path: name a resolv.conf file, or remove resolv_conf for /etc/resolv.conf"],
    );
    // Every field, valid.
    let config = veer::config::parse_str(
        &config_text(
            "  resolv_conf: /etc/resolv.conf\n  nameservers: [10.96.0.10, \"[fd00::10]:5353\"]\n  \
             search: [prod.svc.cluster.local]\n  ndots: 5\n  timeout: 1s\n  min_ttl: 2s\n  max_ttl: 1m\n",
            "[\"app.test:80\", 127.0.0.1:81]",
        ),
        "test.yaml",
    )
    .expect("valid");
    assert_eq!(config.dns.nameservers.len(), 2);
    assert_eq!(config.dns.nameservers[0].port(), 53);
    assert_eq!(config.dns.ndots, Some(5));
    assert_eq!(config.dns.max_ttl, Duration::from_secs(60));
    let version = &config.services[0].versions[0];
    assert_eq!(version.endpoints.len(), 1);
    assert_eq!(version.names[0].to_string(), "app.test:80");
}

#[test]
fn endpoint_names_are_checked() {
    let text = config_text(
        "  min_ttl: 1s\n",
        "[\"-bad.test:80\", \"bad_Ok.test:80\", \"a b:80\", \"web.test\", \"web.test:0\", \"300.1.2.3:80\", \"http://web.test:80\"]",
    );
    assert_config_errors(
        &text,
        &[
            "test.yaml:11:21: services[0].versions[0].endpoints[0]: `-bad.test:80`: `-bad.test` is not a DNS name: the label `-bad` starts or ends with `-`",
            "test.yaml:11:55: services[0].versions[0].endpoints[2]: `a b:80`: `a b` is not a DNS name: ' ' is not allowed (letters, digits, `-`, `_` and dots only)",
            "test.yaml:11:65: services[0].versions[0].endpoints[3]: `web.test` has no port: write the port the endpoints listen on, such as `web.test:8080`",
            "test.yaml:11:77: services[0].versions[0].endpoints[4]: `web.test:0` has port 0: give the port the endpoints listen on",
            "test.yaml:11:91: services[0].versions[0].endpoints[5]: `300.1.2.3:80`: `300.1.2.3` is neither an IP address nor a DNS name (a name's last label is not all digits): check the address",
            "test.yaml:11:107: services[0].versions[0].endpoints[6]: `http://web.test:80` has a scheme: expected IP:PORT or NAME:PORT such as 127.0.0.1:18081 or api.internal:8080, without http://",
        ],
    );
}

/// `veer check` takes names as they are: nothing is resolved, so a config
/// for a cluster checks anywhere (a CI runner that cannot resolve them).
#[test]
fn veer_check_accepts_cluster_names_without_resolving_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("veer.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - name: public\n    address: 127.0.0.1:8080\n\
         services:\n  - name: agent-match\n    versions:\n\
         \x20     - { name: stable, endpoints: [agent-match-stable.production.svc.cluster.local:8080], weight: 90 }\n\
         \x20     - { name: canary, endpoints: [\"agent-match-canary.production.svc.cluster.local.:8080\"], weight: 10 }\n",
    )
    .expect("write config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_veer"))
        .args(["check", "--offline", "-c"])
        .arg(&path)
        .output()
        .expect("run veer check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.lines().next(),
        Some(format!("{}: ok", path.display()).as_str())
    );
}

/// The real binary's log: one line per change of a name's state, not one
/// per failed attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_logged_once_per_change() {
    let dns = DnsServer::start().await;
    let (port, ups) = upstreams(91, &["a", "b"]).await;
    dns.set("web.test", &[ups[0].0], 0);
    let veer = support::binary::VeerProcess::start(
        env!("CARGO_BIN_EXE_veer"),
        &yaml(
            &dns,
            "  min_ttl: 100ms\n  max_ttl: 200ms\n",
            &[format!(
                "{{ name: stable, endpoints: [\"web.test:{port}\"], weight: 1 }}"
            )],
            "",
        ),
    );
    let lines = |what: &str| veer.stderr().lines().filter(|l| l.contains(what)).count();
    assert_eq!(lines("DNS: the name resolved"), 1, "{}", veer.stderr());
    dns.set_mode(Mode::ServFail);
    let asked = dns.queries("web.test");
    wait_until(LIMIT, "five failed lookups", || {
        dns.queries("web.test") >= asked + 5
    })
    .await;
    assert_eq!(lines("DNS: the lookup failed"), 1, "{}", veer.stderr());
    dns.set_mode(Mode::Answer);
    wait_until(LIMIT, "the name resolving again", || {
        lines("DNS: the name resolves again") == 1
    })
    .await;
    dns.set("web.test", &[ups[1].0], 0);
    wait_until(LIMIT, "the change logged", || {
        lines("DNS: the name's addresses changed") == 1
    })
    .await;
    let asked = dns.queries("web.test");
    wait_until(LIMIT, "more lookups", || {
        dns.queries("web.test") >= asked + 5
    })
    .await;
    assert_eq!(lines("DNS: the lookup failed"), 1, "{}", veer.output());
    assert_eq!(
        lines("DNS: the name's addresses changed"),
        1,
        "{}",
        veer.output()
    );
    assert_eq!(
        lines("DNS: the name resolves again"),
        1,
        "{}",
        veer.output()
    );
}

/// A resolv.conf that cannot be read: every lookup fails, saying why and
/// what to do, in `/status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_resolv_conf_is_reported() {
    let stable = Upstream::start("stable").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let absent = dir.path().join("absent.conf");
    let text = format!(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n\
         admin:\n  address: \"127.0.0.1:0\"\n\
         dns:\n  resolv_conf: \"{}\"\n\
         services:\n  - name: web\n    versions:\n\
         \x20     - {{ name: stable, endpoints: [\"{}\"], weight: 1 }}\n\
         \x20     - {{ name: canary, endpoints: [\"canary.test:80\"], weight: 1 }}\n\
         \x20   guard: {{ baseline: stable, max_error_rate: 0.5 }}\n",
        absent.display(),
        stable.addr()
    );
    let f = Fixture::start(&text).await;
    let web = f.web().await;
    let entry = dns_entry(&web, "canary", "canary.test:80");
    assert_eq!(entry["result"], "failure");
    assert_eq!(
        entry["error"],
        format!(
            "cannot read {} (No such file or directory (os error 2)): set dns.nameservers, or dns.resolv_conf to a readable file",
            absent.display()
        )
        .as_str()
    );
    assert_eq!(version(&web, "canary")["unavailable"], true);
    let answer = f.get_with("/", &[]).await;
    assert_eq!(
        (answer.status.as_u16(), answer.upstream()),
        (200, Some("stable"))
    );
    f.shutdown().await;
}

/// A reload that changes the `dns` block asks every name again, of the new
/// nameservers, before its snapshot is in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_the_dns_block_asks_again() {
    let (first, second) = (DnsServer::start().await, DnsServer::start().await);
    let (port, ups) = upstreams(111, &["a", "b"]).await;
    first.set("web.test", &[ups[0].0], 3600);
    second.set("web.test", &[ups[1].0], 3600);
    let versions = [format!(
        "{{ name: stable, endpoints: [\"web.test:{port}\"], weight: 1 }}"
    )];
    let f = Fixture::start(&yaml(&first, "", &versions, "")).await;
    let answer = f.get_with("/", &[]).await;
    assert_eq!(answer.upstream(), Some("a"));
    let config =
        veer::config::parse_str(&yaml(&second, "", &versions, ""), "t.yaml").expect("valid");
    f.control().apply_config(config).await.expect("applied");
    let counts = tally(&f.paced_load(200, 20, LIMIT).join().await);
    assert_eq!(counts.get("200 b").copied(), Some(20), "{counts:?}");
    assert!(second.queries("web.test") >= 1);
    f.shutdown().await;
}

/// Without health checks, an address that appears is in service at once and
/// ramps up over `slow_start`, as an endpoint a reload adds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_address_ramps_up_over_slow_start() {
    let dns = DnsServer::start().await;
    let (port, ups) = upstreams(121, &["a", "b"]).await;
    dns.set("web.test", &[ups[0].0], 0);
    let f = Fixture::start(&yaml(
        &dns,
        "  min_ttl: 100ms\n  max_ttl: 200ms\n",
        &[format!(
            "{{ name: stable, endpoints: [\"web.test:{port}\"], weight: 1 }}"
        )],
        "    slow_start: 1h\n",
    ))
    .await;
    dns.set("web.test", &[ups[0].0, ups[1].0], 0);
    let (a, b) = (
        SocketAddr::new(ups[0].0, port).to_string(),
        SocketAddr::new(ups[1].0, port).to_string(),
    );
    let web = f
        .wait_web(LIMIT, "b listed", |web| {
            version(web, "stable")["endpoints"]
                .as_array()
                .is_some_and(|all| all.iter().any(|e| e["address"] == b.as_str()))
        })
        .await;
    let ramping = |addr: &str| {
        version(&web, "stable")["endpoints"]
            .as_array()
            .and_then(|all| all.iter().find(|e| e["address"] == addr))
            .map(|e| e["ramping"].clone())
    };
    assert_eq!(ramping(&b), Some(Value::Bool(true)), "{web:#}");
    assert_eq!(ramping(&a), Some(Value::Bool(false)), "{web:#}");
    f.shutdown().await;
}
