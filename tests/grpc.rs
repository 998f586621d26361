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
    upstream.fail(SERVER_STREAM, 100, Failure::TrailersOnly(tonic::Code::NotFound));
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
