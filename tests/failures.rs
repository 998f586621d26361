//! Failure answers: refused connects retried on another endpoint then 503,
//! garbage 502, no response head within `timeouts.request` 504, a reset in the
//! middle of a body seen by the client while the proxy keeps serving. Every
//! proxy-made error carries `x-veer-error` and a one-line body.

mod support;

use std::time::Duration;

use support::client::{get, h2c_connect, http1_client, read_answer, send, try_send, HttpClient};
use support::config::{service, ConfigBuilder, ServiceBuilder};
use support::harness::TestProxy;
use support::raw::{closed_port, RawMode, RawUpstream, RESET_AFTER};
use support::upstream::Upstream;
use support::within;

const LIMIT: Duration = Duration::from_secs(20);

async fn start(svc: ServiceBuilder) -> (TestProxy, HttpClient) {
    let proxy = TestProxy::start(&ConfigBuilder::new().service(svc).yaml()).await;
    (proxy, http1_client())
}

/// Short timeouts so failures show quickly.
fn web() -> ServiceBuilder {
    service("web")
        .timeout("connect", "1s")
        .timeout("request", "1s")
}

#[tokio::test]
async fn refused_endpoint_is_retried_on_the_other_endpoint() {
    let up = Upstream::start("stable").await;
    let dead = closed_port();
    let (proxy, client) = start(web().version("stable", &[dead, up.addr()], 1)).await;
    // Sequential and concurrent: whichever endpoint the balancer picks first,
    // every request ends at the working one.
    for i in 0..20 {
        let answer = send(&client, get(&proxy.url("/"), None)).await;
        assert_eq!(
            answer.status,
            200,
            "request {i}: {:?} {:?}",
            answer.headers,
            answer.text()
        );
        assert_eq!(answer.upstream(), Some("stable"));
    }
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (client, url) = (client.clone(), proxy.url("/"));
        tasks.push(tokio::spawn(
            async move { send(&client, get(&url, None)).await },
        ));
    }
    for task in tasks {
        let answer = within(LIMIT, "concurrent request", task)
            .await
            .expect("task");
        assert_eq!(answer.status, 200, "{:?}", answer.text());
    }
    assert_eq!(up.total(), 40);
}

#[tokio::test]
async fn all_endpoints_refusing_is_503() {
    let (proxy, client) = start(web().version("stable", &[closed_port(), closed_port()], 1)).await;
    for _ in 0..3 {
        let answer = send(&client, get(&proxy.url("/"), None)).await;
        answer.assert_proxy_error(503);
    }
    // Also over h2.
    let mut h2 = h2c_connect(proxy.addr()).await;
    let resp = within(
        LIMIT,
        "h2 request",
        h2.send_request(get(&proxy.url("/"), None)),
    )
    .await
    .expect("h2 response");
    read_answer(resp)
        .await
        .expect("h2 body")
        .assert_proxy_error(503);
}

/// One endpoint that refuses (no second one to retry on) is 503 too, and the
/// retry does not hit a different version.
#[tokio::test]
async fn refused_single_endpoint_is_503_not_another_version() {
    let other = Upstream::start("canary").await;
    let (proxy, client) = start(web().version("stable", &[closed_port()], 1).version(
        "canary",
        &[other.addr()],
        0,
    ))
    .await;
    let answer = send(&client, get(&proxy.url("/"), None)).await;
    answer.assert_proxy_error(503);
    assert_eq!(other.total(), 0, "a retry must stay within the version");
}

/// An endpoint that accepts and resets at once (no byte of an answer) is
/// retried on the version's other endpoint, like a refused connect.
#[tokio::test]
async fn reset_before_any_answer_is_retried_on_the_other_endpoint() {
    let up = Upstream::start("stable").await;
    let resetting = RawUpstream::start(RawMode::ResetOnAccept).await;
    let (proxy, client) = start(web().version("stable", &[resetting.addr(), up.addr()], 1)).await;
    for i in 0..20 {
        let answer = send(&client, get(&proxy.url("/"), None)).await;
        assert_eq!(
            answer.status,
            200,
            "request {i}: {:?} {:?}",
            answer.headers,
            answer.text()
        );
    }
    assert_eq!(up.total(), 20);
}

/// An upstream that drops the connection without answering, with no other
/// endpoint to go to: a proxy-made 502 or 503, and the proxy serves on once
/// the upstream recovers.
#[tokio::test]
async fn upstream_dropping_requests_unanswered_is_a_proxy_error() {
    let up = Upstream::start("stable").await;
    let (proxy, client) = start(web().version("stable", &[up.addr()], 1)).await;
    up.set_reset_ratio(1.0);
    for _ in 0..3 {
        let answer = send(&client, get(&proxy.url("/"), None)).await;
        let status = answer.status.as_u16();
        assert!(
            matches!(status, 502 | 503),
            "an unanswered request: {status} {:?}",
            answer.text()
        );
        answer.assert_proxy_error(status);
    }
    up.set_reset_ratio(0.0);
    let answer = send(&client, get(&proxy.url("/"), None)).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn garbage_from_upstream_is_502() {
    let raw = RawUpstream::start(RawMode::ByPath).await;
    let (proxy, client) = start(web().version("stable", &[raw.addr()], 1)).await;
    let answer = send(&client, get(&proxy.url("/garbage"), None)).await;
    answer.assert_proxy_error(502);
    assert!(raw.requests() >= 1, "the request reached the raw upstream");
    // The proxy keeps serving.
    let answer = send(&client, get(&proxy.url("/ok"), None)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "ok");
}

#[tokio::test]
async fn upstream_hanging_past_request_timeout_is_504() {
    let up = Upstream::start("stable").await;
    let (proxy, client) = start(web().version("stable", &[up.addr()], 1)).await;
    let answer = within(
        Duration::from_secs(15),
        "an answer to a request the upstream never answers",
        send(&client, get(&proxy.url("/hang"), None)),
    )
    .await;
    answer.assert_proxy_error(504);
    assert_eq!(up.count("/hang"), 1, "a timed-out request is not retried");

    // Slow but within the timeout is fine.
    let answer = send(&client, get(&proxy.url("/delay/100"), None)).await;
    assert_eq!(answer.status, 200);
}

/// A raw upstream that accepts and reads the request but never writes a byte.
#[tokio::test]
async fn silent_raw_upstream_is_504() {
    let raw = RawUpstream::start(RawMode::ByPath).await;
    let (proxy, client) = start(web().version("stable", &[raw.addr()], 1)).await;
    let answer = within(
        Duration::from_secs(15),
        "an answer for a silent upstream",
        send(&client, get(&proxy.url("/hang"), None)),
    )
    .await;
    answer.assert_proxy_error(504);
}

#[tokio::test]
async fn reset_mid_body_breaks_the_response_and_the_proxy_serves_on() {
    let raw = RawUpstream::start(RawMode::ByPath).await;
    let (proxy, client) = start(web().version("stable", &[raw.addr()], 1)).await;

    let resp = within(
        LIMIT,
        "response head",
        client.request(get(&proxy.url("/reset"), None)),
    )
    .await
    .expect("the head arrives before the reset");
    assert_eq!(resp.status(), 200, "the upstream's head was a 200");
    let body = within(
        LIMIT,
        "the broken body",
        support::client::count_body(resp.into_body()),
    )
    .await;
    match body {
        Err(_) => {}
        Ok(n) => panic!(
            "the client must see the break, but read a complete body of {n} bytes \
             (upstream promised 1 MiB, sent {RESET_AFTER} then reset)"
        ),
    }

    // The next requests are served fine, on new and pooled connections.
    for i in 0..5 {
        let answer = send(&client, get(&proxy.url("/ok"), None)).await;
        assert_eq!(answer.status, 200, "request {i} after the reset");
        assert_eq!(answer.text(), "ok");
    }
}

/// Over h2 a broken upstream body resets only that stream: the connection and
/// its other streams go on.
#[tokio::test]
async fn reset_mid_body_over_h2_breaks_only_that_stream() {
    let raw = RawUpstream::start(RawMode::ByPath).await;
    let (proxy, _) = start(web().version("stable", &[raw.addr()], 1)).await;
    let mut h2 = h2c_connect(proxy.addr()).await;
    let resp = within(
        LIMIT,
        "h2 head",
        h2.send_request(get(&proxy.url("/reset"), None)),
    )
    .await
    .expect("h2 head");
    assert_eq!(resp.status(), 200);
    let broken = within(
        LIMIT,
        "the broken body",
        support::client::count_body(resp.into_body()),
    )
    .await;
    assert!(broken.is_err(), "the client must see the break: {broken:?}");

    let resp = within(
        LIMIT,
        "h2 next stream",
        h2.send_request(get(&proxy.url("/ok"), None)),
    )
    .await
    .expect("the same h2 connection serves the next stream");
    let answer = read_answer(resp).await.expect("body");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "ok");
}

/// A hyper upstream whose body fails mid-way (the stream breaks, no TCP reset
/// script): same outcome.
#[tokio::test]
async fn broken_upstream_body_is_seen_by_the_client() {
    let up = Upstream::start("stable").await;
    let (proxy, client) = start(web().version("stable", &[up.addr()], 1)).await;
    let result = within(
        LIMIT,
        "broken body",
        try_send(&client, get(&proxy.url("/reset/20000"), None)),
    )
    .await;
    assert!(result.is_err(), "the client must see the break: {result:?}");
    let answer = send(&client, get(&proxy.url("/"), None)).await;
    assert_eq!(answer.status, 200);
}

/// Errors the upstream itself answers pass through unchanged: they are not
/// veer's, and carry no `x-veer-error`.
#[tokio::test]
async fn upstream_error_statuses_pass_through() {
    let up = Upstream::start("stable").await;
    let (proxy, client) = start(web().version("stable", &[up.addr()], 1)).await;
    for code in [500u16, 502, 503, 504, 404, 400] {
        let answer = send(&client, get(&proxy.url(&format!("/status/{code}")), None)).await;
        assert_eq!(answer.status.as_u16(), code);
        assert_eq!(answer.upstream(), Some("stable"));
        assert!(
            answer.header("x-veer-error").is_none(),
            "{code} from the upstream is not a proxy error: {:?}",
            answer.headers
        );
        assert_eq!(answer.text(), "stable");
    }
    assert_eq!(up.total(), 6, "a 5xx answer is not retried");
}

/// The upstream told at run time to fail a share of requests: veer passes the
/// 500s on as they are (the guard will count them later).
#[tokio::test]
async fn upstream_told_to_fail_passes_500s_through() {
    let up = Upstream::start("stable").await;
    let (proxy, client) = start(web().version("stable", &[up.addr()], 1)).await;
    up.set_fail_ratio(0.25);
    let mut failed = 0;
    for _ in 0..40 {
        let answer = send(&client, get(&proxy.url("/"), None)).await;
        if answer.status == 500 {
            failed += 1;
            assert!(answer.header("x-veer-error").is_none());
        } else {
            assert_eq!(answer.status, 200);
        }
    }
    assert_eq!(failed, 10);
}
