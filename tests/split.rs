//! The weighted split: shares over 10,000 requests within one percentage point
//! of the weights, exact over whole cycles of the smooth weighted round robin
//! table, and run-time weight changes that apply to the very next request.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use support::client::{get, h2c_connect, http1_client, read_answer, send, HttpClient};
use support::config::{service, ConfigBuilder};
use support::harness::TestProxy;
use support::load::{upstream_of_200, LoadPlan, Via};
use support::upstream::Upstream;
use support::{within, Body};

const REQUESTS: usize = 10_000;
/// Parallel requests in flight while measuring a split (keep-alive connections).
const CONCURRENCY: usize = 16;

struct Fixture {
    stable: Upstream,
    canary: Upstream,
    proxy: TestProxy,
    client: HttpClient,
}

async fn fixture(stable_weight: u32, canary_weight: u32) -> Fixture {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let yaml = ConfigBuilder::new()
        .service(
            service("web")
                .version("stable", &[stable.addr()], stable_weight)
                .version("canary", &[canary.addr()], canary_weight),
        )
        .yaml();
    let proxy = TestProxy::start(&yaml).await;
    Fixture {
        stable,
        canary,
        proxy,
        client: http1_client(),
    }
}

/// Sends `total` GETs with `concurrency` in flight; counts answers by `x-upstream`.
/// Every answer must be a 200.
async fn fire(
    client: &HttpClient,
    url: &str,
    total: usize,
    concurrency: usize,
) -> HashMap<String, u64> {
    let samples = LoadPlan::workers(url.to_string(), &vec![Via::KeepAlive; concurrency])
        .client(client.clone())
        .max_requests(total as u64)
        .max_run(Duration::from_secs(120))
        .start(upstream_of_200)
        .join()
        .await;
    let mut all = HashMap::new();
    for sample in samples {
        let who = sample
            .record
            .unwrap_or_else(|e| panic!("every answer must be a 200: {e}"));
        *all.entry(who).or_insert(0) += 1;
    }
    all
}

async fn check_split(stable_weight: u32, canary_weight: u32) {
    let f = fixture(stable_weight, canary_weight).await;
    let url = f.proxy.url("/");
    let seen = within(
        Duration::from_secs(120),
        "10,000 requests through the proxy",
        fire(&f.client, &url, REQUESTS, CONCURRENCY),
    )
    .await;
    let stable = seen.get("stable").copied().unwrap_or(0);
    let canary = seen.get("canary").copied().unwrap_or(0);
    assert_eq!(
        stable + canary,
        REQUESTS as u64,
        "every request must be answered by one of the versions: {seen:?}"
    );
    // What the upstreams counted agrees with what the client saw.
    assert_eq!(f.stable.total(), stable, "stable upstream's own count");
    assert_eq!(f.canary.total(), canary, "canary upstream's own count");

    let total_weight = f64::from(stable_weight + canary_weight);
    for (name, got, weight) in [
        ("stable", stable, stable_weight),
        ("canary", canary, canary_weight),
    ] {
        let share = 100.0 * got as f64 / REQUESTS as f64;
        let target = 100.0 * f64::from(weight) / total_weight;
        assert!(
            (share - target).abs() <= 1.0,
            "{name}: {share:.2}% of {REQUESTS} requests, target {target:.2}% \
             (weights stable={stable_weight} canary={canary_weight}, counts {seen:?})"
        );
        if weight == 0 {
            assert_eq!(got, 0, "a version at weight 0 gets no traffic");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_90_10_over_10000_requests() {
    check_split(90, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_50_50_over_10000_requests() {
    check_split(50, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_100_0_sends_nothing_to_weight_zero() {
    check_split(100, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_0_100_sends_nothing_to_weight_zero() {
    check_split(0, 100).await;
}

/// A smooth weighted round robin table is exact over any whole number of
/// cycles: sequential requests at 90/10 (cycle 100, or 10 when reduced) and at
/// 3/1 (cycle 4) land exactly on the weights.
#[tokio::test]
async fn split_is_exact_over_whole_cycles() {
    for (sw, cw, requests) in [(90u32, 10u32, 1_000usize), (3, 1, 400)] {
        let f = fixture(sw, cw).await;
        let url = f.proxy.url("/");
        let seen = within(
            Duration::from_secs(60),
            "sequential requests",
            fire(&f.client, &url, requests, 1),
        )
        .await;
        let per_cycle = requests as u64 / u64::from(sw + cw);
        assert_eq!(
            seen.get("stable").copied().unwrap_or(0),
            per_cycle * u64::from(sw),
            "weights {sw}/{cw} over {requests} sequential requests: {seen:?}"
        );
        assert_eq!(
            seen.get("canary").copied().unwrap_or(0),
            per_cycle * u64::from(cw),
            "weights {sw}/{cw} over {requests} sequential requests: {seen:?}"
        );
    }
}

async fn who(f: &Fixture) -> String {
    let answer = send(&f.client, get(&f.proxy.url("/"), None)).await;
    assert_eq!(answer.status, 200, "body {:?}", answer.text());
    answer.upstream().unwrap_or("(none)").to_string()
}

/// A blue-green switch is a weight change, and it applies to the very next
/// request, even on a keep-alive connection that was already open.
#[tokio::test]
async fn weight_change_applies_to_the_next_request() {
    let f = fixture(50, 50).await;
    let mut before = HashMap::new();
    for _ in 0..10 {
        *before.entry(who(&f).await).or_insert(0u32) += 1;
    }
    assert_eq!(
        before.len(),
        2,
        "50/50 must reach both versions: {before:?}"
    );

    f.proxy
        .set_weights("web", &[("stable", 0), ("canary", 100)])
        .await;
    assert_eq!(
        who(&f).await,
        "canary",
        "first request after switching to canary"
    );
    for i in 0..50 {
        assert_eq!(
            who(&f).await,
            "canary",
            "request {i} after switching to canary"
        );
    }

    f.proxy
        .set_weights("web", &[("stable", 100), ("canary", 0)])
        .await;
    assert_eq!(
        who(&f).await,
        "stable",
        "first request after switching back"
    );
    for i in 0..50 {
        assert_eq!(who(&f).await, "stable", "request {i} after switching back");
    }

    // Only naming one version leaves the other's weight as it was.
    f.proxy.set_weights("web", &[("canary", 100)]).await;
    let seen = fire(&f.client, &f.proxy.url("/"), 100, 1).await;
    assert_eq!(
        seen.get("stable"),
        Some(&50),
        "100/100 after a partial change: {seen:?}"
    );
    assert_eq!(
        seen.get("canary"),
        Some(&50),
        "100/100 after a partial change: {seen:?}"
    );
}

async fn h2_who(conn: &mut SendRequest<Body>, url: &str) -> String {
    let resp = within(
        Duration::from_secs(20),
        "h2 request",
        conn.send_request(get(url, None)),
    )
    .await
    .expect("h2 request through the proxy");
    let answer = read_answer(resp).await.expect("h2 body");
    assert_eq!(answer.status, 200, "body {:?}", answer.text());
    answer.upstream().unwrap_or("(none)").to_string()
}

/// The split over HTTP/2 (many requests multiplexed on one connection) follows
/// the weights too, and a switch applies to the next stream.
#[tokio::test]
async fn weight_change_applies_on_an_open_h2_connection() {
    let f = fixture(100, 0).await;
    let mut conn = h2c_connect(f.proxy.addr()).await;
    let url = f.proxy.url("/");
    for _ in 0..5 {
        assert_eq!(h2_who(&mut conn, &url).await, "stable");
    }
    f.proxy
        .set_weights("web", &[("stable", 0), ("canary", 1)])
        .await;
    for i in 0..5 {
        assert_eq!(
            h2_who(&mut conn, &url).await,
            "canary",
            "stream {i} after the switch"
        );
    }
}

/// Weight changes naming an unknown service or version are refused and change
/// nothing.
#[tokio::test]
async fn set_weights_refuses_unknown_names() {
    let f = fixture(100, 0).await;
    assert!(f
        .proxy
        .control()
        .set_weights("no-such-service", &[("stable", 1)])
        .await
        .is_err());
    assert!(f
        .proxy
        .control()
        .set_weights("web", &[("no-such-version", 1)])
        .await
        .is_err());
    assert!(
        f.proxy
            .control()
            .set_weights("web", &[("canary", 100), ("no-such-version", 1)])
            .await
            .is_err(),
        "a change naming one unknown version must be refused whole"
    );
    for _ in 0..20 {
        assert_eq!(who(&f).await, "stable");
    }
}
