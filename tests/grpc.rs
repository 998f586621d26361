//! gRPC through veer, with tonic's client on one side and a gRPC upstream on
//! the other: the four kinds of call pass through; veer's own failures reach
//! the gRPC client as gRPC statuses (UNAVAILABLE, DEADLINE_EXCEEDED,
//! UNIMPLEMENTED) with a `grpc-message`; a caller's `grpc-timeout` bounds the
//! wait, never beyond `timeouts.request`.
//!
//! Nothing asserts a time: a deadline test only checks which status came and
//! that the call did not wait for the slow upstream's answer.

mod support;

#[path = "support/grpc.rs"]
#[allow(dead_code)]
mod grpc_support;

use std::time::Duration;

use bytes::Bytes;
use grpc_support::{
    Failure, GrpcClient, GrpcUpstream, BIDI, CLIENT_STREAM, SERVER_STREAM, SLOW, UNARY,
};
use support::config::{service, ConfigBuilder, ServiceBuilder};
use support::harness::TestProxy;
use support::raw::closed_port;
use support::within;
// `grpc_support` reaches these as `super::…`.
use support::{bind_loopback, BoxError};

const LIMIT: Duration = Duration::from_secs(20);

fn grpc_service(upstream: &GrpcUpstream) -> ServiceBuilder {
    service("echo").version_h2("stable", &[upstream.addr()], 100)
}

async fn proxy(service: ServiceBuilder) -> TestProxy {
    TestProxy::start(&ConfigBuilder::new().service(service).yaml()).await
}

#[track_caller]
fn assert_veer_status(result: Result<Bytes, tonic::Status>, code: tonic::Code, says: &str) {
    let status = match result {
        Ok(message) => panic!("expected {code:?}, got a message {message:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().starts_with("veer: ") && status.message().contains(says),
        "grpc-message should say what happened ({says}): {:?}",
        status.message()
    );
    assert!(
        status.metadata().get("x-veer-error").is_some(),
        "veer's own answer carries x-veer-error: {:?}",
        status.metadata()
    );
}

#[tokio::test]
async fn the_four_kinds_of_call_pass_through() {
    let upstream = GrpcUpstream::start("stable").await;
    let proxy = proxy(grpc_service(&upstream)).await;
    let mut client = GrpcClient::new(proxy.addr());
    within(LIMIT, "calls", async {
        assert_eq!(client.unary(UNARY).await.expect("unary"), "stable");
        let streamed = client
            .server_stream(SERVER_STREAM, 50)
            .await
            .expect("server stream");
        assert_eq!(streamed.len(), 50);
        assert_eq!(streamed[49], "stable 49");
        assert_eq!(
            client
                .client_stream(CLIENT_STREAM, 40)
                .await
                .expect("client stream"),
            "40"
        );
        let echoed = client.bidi(BIDI, 20).await.expect("bidi");
        let expected: Vec<Bytes> = (0..20).map(|i| Bytes::from(format!("m{i}"))).collect();
        assert_eq!(echoed, expected);
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_upstream_status_reaches_the_client_unchanged() {
    let upstream = GrpcUpstream::start("stable").await;
    upstream.fail(UNARY, 100, Failure::Trailers(tonic::Code::Internal));
    upstream.fail(
        SERVER_STREAM,
        100,
        Failure::TrailersOnly(tonic::Code::NotFound),
    );
    let proxy = proxy(grpc_service(&upstream)).await;
    let mut client = GrpcClient::new(proxy.addr());
    within(LIMIT, "calls", async {
        let status = client.unary(UNARY).await.expect_err("fails");
        assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
        assert_eq!(status.message(), "the test upstream was told to fail");
        let status = client
            .server_stream(SERVER_STREAM, 3)
            .await
            .expect_err("fails");
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
        assert_eq!(status.message(), "trailers-only failure");
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn no_endpoint_answering_is_unavailable() {
    let proxy = proxy(service("echo").version_h2("stable", &[closed_port()], 100)).await;
    let mut client = GrpcClient::new(proxy.addr());
    let result = within(LIMIT, "call", client.unary(UNARY)).await;
    assert_veer_status(
        result,
        tonic::Code::Unavailable,
        "echo/stable: could not connect to upstream",
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_request_no_service_matches_is_unimplemented() {
    let upstream = GrpcUpstream::start("stable").await;
    let proxy = proxy(grpc_service(&upstream).hosts(&["echo.internal"])).await;
    let mut client = GrpcClient::new(proxy.addr());
    let result = within(LIMIT, "call", client.unary(UNARY)).await;
    assert_veer_status(
        result,
        tonic::Code::Unimplemented,
        "no service matches host `127.0.0.1:",
    );
    assert_eq!(upstream.calls(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_config_timeout_answers_deadline_exceeded() {
    let upstream = GrpcUpstream::start("stable").await;
    upstream.set_delay(Duration::from_secs(30));
    let proxy = proxy(grpc_service(&upstream).timeout("request", "300ms")).await;
    let mut client = GrpcClient::new(proxy.addr());
    // The caller allows far longer than the config: the config wins.
    let result = within(
        LIMIT,
        "call",
        client.unary_with(SLOW, "hi", Some(Duration::from_secs(60))),
    )
    .await;
    assert_veer_status(
        result,
        tonic::Code::DeadlineExceeded,
        "sent no response head in time",
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_callers_grpc_timeout_bounds_the_wait() {
    let upstream = GrpcUpstream::start("stable").await;
    upstream.set_delay(Duration::from_secs(30));
    let proxy = proxy(grpc_service(&upstream).timeout("request", "60s")).await;
    let mut client = GrpcClient::new(proxy.addr());
    // Had veer waited for `timeouts.request` (60 s) or the upstream (30 s),
    // `within` would fail the test.
    let result = within(
        LIMIT,
        "call",
        client.unary_with(SLOW, "hi", Some(Duration::from_millis(200))),
    )
    .await;
    assert_veer_status(
        result,
        tonic::Code::DeadlineExceeded,
        "sent no response head in time",
    );
    assert_eq!(
        upstream.last_timeout().as_deref(),
        Some("200000u"),
        "the deadline is passed on to the upstream as the caller sent it"
    );

    // A malformed grpc-timeout is ignored (the config's bound holds), not refused.
    upstream.set_delay(Duration::ZERO);
    let mut raw = support::client::h2c_connect(proxy.addr()).await;
    let request = http::Request::post(proxy.url(SLOW))
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "soon")
        .header("te", "trailers")
        .body(support::client::full(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .expect("request");
    let response = within(LIMIT, "raw call", raw.send_request(request))
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-veer-error").is_none());
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_plain_http_client_still_gets_plain_http_errors() {
    let proxy = proxy(service("echo").version_h2("stable", &[closed_port()], 100)).await;
    let client = support::client::h2c_client();
    let answer = support::client::send(&client, support::client::get(&proxy.url("/x"), None)).await;
    answer.assert_proxy_error(503);
    assert!(answer.header("grpc-status").is_none());
    proxy.shutdown().await;
}

// ------------------------------------------------------------- the guard

/// The guard's policy in these tests: judged every 200 ms, two bad verdicts
/// in a row, at most 10 % errors; by default over 5 s on at least 20 calls.
const POLICY: &str = "baseline: stable, interval: 200ms, consecutive: 2, max_error_rate: 0.1";
const WINDOW: &str = ", window: 5s, min_requests: 20";

/// At most this many calls, paced, before a test gives up on a verdict.
const MAX_CALLS: u64 = 3_000;
const PACE: Duration = Duration::from_millis(2);

/// A service `echo` with `stable` and `canary` at 50/50 over HTTP/2, and a
/// guard (`POLICY` plus `extra`).
fn guarded(name: &str, stable: &GrpcUpstream, canary: &GrpcUpstream, extra: &str) -> String {
    format!(
        "  - name: {name}\n    match: {{ hosts: [{name}] }}\n    versions:\n      - {{ name: stable, endpoints: [\"{}\"], weight: 50, protocol: http2 }}\n      - {{ name: canary, endpoints: [\"{}\"], weight: 50, protocol: http2 }}\n    guard: {{ {POLICY}{extra} }}\n",
        stable.addr(),
        canary.addr()
    )
}

fn config(services: &[String]) -> String {
    format!(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\nadmin:\n  address: \"127.0.0.1:0\"\nservices:\n{}",
        services.concat()
    )
}

/// A gRPC client whose calls name `host` (the service's match).
fn client_for(proxy: std::net::SocketAddr, host: &str) -> GrpcClient {
    GrpcClient::with_authority(proxy, host)
}

fn latched(running: &veer::server::RunningProxy, service: &str) -> bool {
    running
        .control()
        .snapshot()
        .services
        .iter()
        .filter(|s| &*s.name == service)
        .flat_map(|s| s.versions.iter())
        .any(|v| &*v.name == "canary" && v.latched)
}

/// The guard's word on the canary, as `/status` shows it.
fn canary_verdict(running: &veer::server::RunningProxy, service: &str) -> String {
    running
        .control()
        .verdict(service, "canary")
        .unwrap_or_default()
}

async fn admin_get(admin: std::net::SocketAddr, path: &str) -> String {
    let client = support::client::http1_client();
    let answer = support::client::send(
        &client,
        support::client::get(&format!("http://{admin}{path}"), None),
    )
    .await;
    assert_eq!(answer.status, 200, "{path}: {}", answer.text());
    answer.text()
}

/// Calls `call` paced until `done` holds or `MAX_CALLS` were made; the
/// number of calls made.
async fn drive<F, Fut>(mut call: F, mut done: impl FnMut() -> bool) -> u64
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for n in 0..MAX_CALLS {
        if done() {
            return n;
        }
        within(LIMIT, "one call", call(n)).await;
        tokio::time::sleep(PACE).await;
    }
    MAX_CALLS
}

#[tokio::test]
async fn a_canary_failing_30_percent_of_unary_calls_with_internal_is_reverted() {
    let stable = GrpcUpstream::start("stable").await;
    let canary = GrpcUpstream::start("canary").await;
    canary.fail(UNARY, 30, Failure::Trailers(tonic::Code::Internal));
    let yaml = config(&[guarded("echo", &stable, &canary, WINDOW)]);
    let (running, proxy, admin) = support::harness::start_with_admin(&yaml, None).await;
    let client = client_for(proxy, "echo");
    let calls = drive(
        |_| {
            let mut client = client.clone();
            async move {
                let _ = client.unary(UNARY).await;
            }
        },
        || latched(&running, "echo"),
    )
    .await;
    assert!(
        latched(&running, "echo"),
        "the canary was not reverted after {calls} calls; verdict: {}",
        canary_verdict(&running, "echo")
    );
    let latches = running.control().latches("echo");
    assert_eq!(latches[0].reason, "error_rate", "{latches:?}");
    // From now on every call goes to the stable version.
    let before = canary.calls();
    for _ in 0..20 {
        let mut client = client.clone();
        assert_eq!(client.unary(UNARY).await.expect("stable answers"), "stable");
    }
    assert!(
        canary.calls() <= before + 2,
        "the reverted canary still gets calls"
    );

    let metrics = admin_get(admin, "/metrics").await;
    let internal = metric(&metrics, "echo", "canary", "INTERNAL");
    let ok = metric(&metrics, "echo", "canary", "OK");
    assert!(
        internal > 0.0 && ok > internal,
        "INTERNAL {internal}, OK {ok}\n{metrics}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_canary_answering_not_found_to_every_call_is_not_reverted() {
    let stable = GrpcUpstream::start("stable").await;
    let canary = GrpcUpstream::start("canary").await;
    canary.fail("*", 100, Failure::TrailersOnly(tonic::Code::NotFound));
    let yaml = config(&[guarded("echo", &stable, &canary, WINDOW)]);
    let (running, _proxy, admin) = support::harness::start_with_admin(&yaml, None).await;
    let proxy = running.listener_addr("public").expect("listener");
    let client = client_for(proxy, "echo");
    // Until the guard has judged the canary on enough calls, and found it
    // healthy: the caller's NOT_FOUND is not the version's error.
    drive(
        |_| {
            let mut client = client.clone();
            async move {
                let _ = client.unary(UNARY).await;
            }
        },
        || canary_verdict(&running, "echo") == "healthy",
    )
    .await;
    assert_eq!(canary_verdict(&running, "echo"), "healthy");
    assert!(!latched(&running, "echo"));

    let status: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/status").await).expect("status is JSON");
    let canary_status = &status["services"][0]["versions"][1];
    assert_eq!(canary_status["name"], "canary");
    assert!(
        canary_status["window"]["requests"].as_u64() >= Some(20),
        "{canary_status}"
    );
    assert_eq!(canary_status["window"]["errors"], 0, "{canary_status}");
    let metrics = admin_get(admin, "/metrics").await;
    assert!(
        metric(&metrics, "echo", "canary", "NOT_FOUND") >= 20.0,
        "{metrics}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_canary_resetting_its_server_streams_is_reverted() {
    let stable = GrpcUpstream::start("stable").await;
    let canary = GrpcUpstream::start("canary").await;
    canary.fail(SERVER_STREAM, 50, Failure::Reset);
    let yaml = config(&[guarded("echo", &stable, &canary, WINDOW)]);
    let (running, proxy, _admin) = support::harness::start_with_admin(&yaml, None).await;
    let client = client_for(proxy, "echo");
    let calls = drive(
        |_| {
            let mut client = client.clone();
            async move {
                let _ = client.server_stream(SERVER_STREAM, 5).await;
            }
        },
        || latched(&running, "echo"),
    )
    .await;
    assert!(
        latched(&running, "echo"),
        "not reverted after {calls} calls; verdict: {}",
        canary_verdict(&running, "echo")
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_canary_ending_bidi_streams_without_a_status_is_reverted() {
    let stable = GrpcUpstream::start("stable").await;
    let canary = GrpcUpstream::start("canary").await;
    canary.fail(BIDI, 50, Failure::NoStatus);
    let yaml = config(&[guarded("echo", &stable, &canary, WINDOW)]);
    let (running, proxy, admin) = support::harness::start_with_admin(&yaml, None).await;
    let client = client_for(proxy, "echo");
    drive(
        |_| {
            let mut client = client.clone();
            async move {
                let _ = client.bidi(BIDI, 3).await;
            }
        },
        || latched(&running, "echo"),
    )
    .await;
    assert!(
        latched(&running, "echo"),
        "verdict: {}",
        canary_verdict(&running, "echo")
    );
    let metrics = admin_get(admin, "/metrics").await;
    assert!(
        metric(&metrics, "echo", "canary", "NO_STATUS") > 0.0,
        "{metrics}"
    );
    running.shutdown().await;
}

/// One method in nineteen calls fails every call: 5 % of the canary's calls, under
/// the 10 % limit. Judged per method, the canary trips; judged as a whole,
/// the same load leaves it in place. (A longer window and a lower
/// `min_requests`, so the rare method gets a verdict at a modest pace.)
#[tokio::test]
async fn per_method_judging_trips_on_one_broken_method() {
    const FIND: &str = "/test.Echo/Find";
    const PER_METHOD_WINDOW: &str = ", window: 20s, min_requests: 5";
    let stable = [
        GrpcUpstream::start("stable").await,
        GrpcUpstream::start("stable").await,
    ];
    let canary = [
        GrpcUpstream::start("canary").await,
        GrpcUpstream::start("canary").await,
    ];
    for c in &canary {
        c.fail(FIND, 100, Failure::Trailers(tonic::Code::Internal));
    }
    let yaml = config(&[
        guarded("whole", &stable[0], &canary[0], PER_METHOD_WINDOW),
        guarded(
            "split",
            &stable[1],
            &canary[1],
            &format!("{PER_METHOD_WINDOW}, per_method: true"),
        ),
    ]);
    let (running, proxy, admin) = support::harness::start_with_admin(&yaml, None).await;
    let whole = client_for(proxy, "whole");
    let split = client_for(proxy, "split");
    drive(
        |n| {
            let (mut whole, mut split) = (whole.clone(), split.clone());
            async move {
                // An odd period: the split alternates versions call by
                // call, and an even one would send every Find to one.
                let method = if n % 19 == 0 { FIND } else { UNARY };
                let _ = whole.unary(method).await;
                let _ = split.unary(method).await;
            }
        },
        || latched(&running, "split"),
    )
    .await;
    assert!(
        latched(&running, "split"),
        "per-method judging did not trip; verdict: {}",
        canary_verdict(&running, "split")
    );
    assert!(
        !latched(&running, "whole"),
        "judged as a whole, 5 % errors are under the limit"
    );
    assert_eq!(canary_verdict(&running, "whole"), "healthy");
    let events = running.control().latches("split");
    assert_eq!(events[0].reason, "error_rate", "{events:?}");

    // /status shows which method broke.
    let status: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/status").await).expect("status is JSON");
    let whole_canary = &status["services"][0]["versions"][1];
    let methods = &whole_canary["grpc_methods"];
    assert!(methods[FIND]["errors"].as_u64() > Some(0), "{methods}");
    assert_eq!(methods[FIND]["error_rate"], 1.0, "{methods}");
    assert_eq!(methods[UNARY]["errors"], 0, "{methods}");
    assert!(methods[UNARY]["requests"].as_u64() > Some(0), "{methods}");
    assert!(methods[UNARY]["p95_ms"].is_number(), "{methods}");
    running.shutdown().await;
}

/// `veer_grpc_responses_total{service,version,grpc_code}`.
fn metric(text: &str, service: &str, version: &str, code: &str) -> f64 {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("metrics parse");
    scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == "veer_grpc_responses_total"
                && s.labels.get("service") == Some(service)
                && s.labels.get("version") == Some(version)
                && s.labels.get("grpc_code") == Some(code)
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}
