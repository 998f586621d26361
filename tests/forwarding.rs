//! Faithful forwarding: hop-by-hop headers removed both ways, X-Forwarded-*
//! set, Host preserved, bodies streamed (full duplex), HTTP/2 on either side,
//! WebSocket tunnelled, trailers passed.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::client::{
    channel_body, empty, full, get, h2c_client, h2c_connect, http1_client, http1_connect,
    read_answer, read_exactly, send, Answer, HttpClient,
};
use support::config::{service, ConfigBuilder};
use support::harness::TestProxy;
use support::upstream::{generated_body, Upstream};
use support::{within, Body, BoxError};
use tokio_tungstenite::tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(20);

/// One service, any host, one version on `up` (HTTP/1.1 or HTTP/2 upstream).
async fn proxy_to(up: &Upstream, http2: bool) -> TestProxy {
    let svc = if http2 {
        service("web").version_h2("stable", &[up.addr()], 1)
    } else {
        service("web").version("stable", &[up.addr()], 1)
    };
    TestProxy::start(&ConfigBuilder::new().service(svc).yaml()).await
}

fn all_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// Sends one request on a fresh HTTP/1.1 connection exactly as built (hyper's
/// pooled client would manage Connection itself). The request target goes out
/// as given: build it in origin form (`/path`) unless testing absolute form.
async fn send_on_own_connection(proxy: &TestProxy, mut req: Request<Body>) -> Answer {
    if !req.headers().contains_key(http::header::HOST) {
        let host = http::HeaderValue::from_str(&proxy.addr().to_string()).expect("host");
        req.headers_mut().insert(http::header::HOST, host);
    }
    let mut conn = http1_connect(proxy.addr()).await;
    let resp = within(LIMIT, "request", conn.send_request(req))
        .await
        .expect("response from the proxy");
    read_answer(resp).await.expect("body from the proxy")
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_stripped() {
    let up = Upstream::start("stable").await;
    let proxy = proxy_to(&up, false).await;
    let req = Request::get("/headers")
        .header("host", "app.example")
        .header("connection", "keep-alive, x-hop-custom, X-Hop-Other")
        .header("keep-alive", "timeout=5, max=100")
        .header("x-hop-custom", "must not pass")
        .header("x-hop-other", "must not pass")
        .header("proxy-connection", "keep-alive")
        .header("te", "gzip, deflate")
        .header("x-end-to-end", "kept")
        .body(empty())
        .expect("request");
    let answer = send_on_own_connection(&proxy, req).await;
    assert_eq!(answer.status, 200, "{:?}", answer.text());

    let seen = up.last_headers();
    for name in [
        "keep-alive",
        "x-hop-custom",
        "x-hop-other",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            !seen.contains_key(name),
            "hop-by-hop header {name} reached the upstream: {seen:?}"
        );
    }
    for value in all_values(&seen, "connection") {
        let lower = value.to_ascii_lowercase();
        assert!(
            !lower.contains("x-hop"),
            "the client's Connection options reached the upstream: {value:?}"
        );
    }
    for value in all_values(&seen, "te") {
        assert!(
            !value.contains("gzip") && !value.contains("deflate"),
            "TE other than `trailers` reached the upstream: {value:?}"
        );
    }
    assert_eq!(all_values(&seen, "x-end-to-end"), ["kept"]);
    assert_eq!(all_values(&seen, "host"), ["app.example"], "Host preserved");
}

/// `TE: trailers` is the one TE value that may pass (gRPC needs it); anything
/// else in the same header must not.
#[tokio::test]
async fn te_keeps_only_trailers() {
    let up = Upstream::start("stable").await;
    let proxy = proxy_to(&up, false).await;
    let req = Request::get("/headers")
        .header("te", "trailers, gzip")
        .body(empty())
        .expect("request");
    let answer = send_on_own_connection(&proxy, req).await;
    assert_eq!(answer.status, 200);
    for value in all_values(&up.last_headers(), "te") {
        assert_eq!(value.trim(), "trailers", "TE that reached the upstream");
    }
}

/// An `Upgrade` header without `Connection: upgrade` is no upgrade request:
/// it is a hop-by-hop header and is dropped; the request is forwarded as usual.
#[tokio::test]
async fn stray_upgrade_header_is_stripped() {
    let up = Upstream::start("stable").await;
    let proxy = proxy_to(&up, false).await;
    let req = Request::get("/headers")
        .header("upgrade", "foo/1")
        .body(empty())
        .expect("request");
    let answer = send_on_own_connection(&proxy, req).await;
    assert_eq!(answer.status, 200, "{:?}", answer.text());
    assert!(
        !up.last_headers().contains_key("upgrade"),
        "Upgrade reached the upstream: {:?}",
        up.last_headers()
    );
}

/// A request body sent with Content-Length reaches the upstream framed by
/// Content-Length, not by a Transfer-Encoding the client never sent.
#[tokio::test]
async fn content_length_body_is_not_rechunked() {
    let up = Upstream::start("stable").await;
    let proxy = proxy_to(&up, false).await;
    let req = Request::post("/headers")
        .header("content-length", "5")
        .body(full("hello"))
        .expect("request");
    let answer = send_on_own_connection(&proxy, req).await;
    assert_eq!(answer.status, 200);
    let seen = up.last_headers();
    assert!(!seen.contains_key("transfer-encoding"), "{seen:?}");
    assert_eq!(all_values(&seen, "content-length"), ["5"]);
}

/// RFC 9112 §3.2.2: with an absolute-form request target, the target's
/// authority is the host; the Host header sent along is ignored and replaced.
/// Routing, Host and X-Forwarded-Host all agree on it.
#[tokio::test]
async fn absolute_form_target_replaces_host() {
    let up = Upstream::start("stable").await;
    let yaml = ConfigBuilder::new()
        .service(
            service("web")
                .hosts(&["app.example"])
                .version("stable", &[up.addr()], 1),
        )
        .yaml();
    let proxy = TestProxy::start(&yaml).await;
    let req = Request::get("http://app.example/headers")
        .header("host", "other.example")
        .body(empty())
        .expect("request");
    let answer = send_on_own_connection(&proxy, req).await;
    assert_eq!(answer.status, 200, "{:?}", answer.text());
    let seen = up.last_headers();
    assert_eq!(all_values(&seen, "host"), ["app.example"], "{seen:?}");
    assert_eq!(
        all_values(&seen, "x-forwarded-host"),
        ["app.example"],
        "{seen:?}"
    );
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_stripped() {
    let up = Upstream::start("stable").await;
    let proxy = proxy_to(&up, false).await;
    let answer = send(&http1_client(), get(&proxy.url("/hop"), None)).await;
    assert_eq!(answer.status, 200);
    for name in ["x-resp-hop", "keep-alive", "proxy-connection"] {
        assert!(
            !answer.headers.contains_key(name),
            "hop-by-hop response header {name} reached the client: {:?}",
            answer.headers
        );
    }
    for value in all_values(&answer.headers, "connection") {
        assert!(
            !value.contains("x-resp-hop"),
            "the upstream's Connection options reached the client: {value:?}"
        );
    }
    assert_eq!(answer.header("x-resp-end-to-end"), Some("1"));
    assert_eq!(answer.upstream(), Some("stable"));
}

#[tokio::test]
async fn x_forwarded_headers_are_set_and_host_preserved() {
    let up = Upstream::start("stable").await;
    let proxy = proxy_to(&up, false).await;
    let client = http1_client();
    let answer = send(
        &client,
        get(&proxy.url("/headers"), Some("app.example:8080")),
    )
    .await;
    assert_eq!(answer.status, 200);
    let seen = up.last_headers();
    assert_eq!(
        all_values(&seen, "x-forwarded-for"),
        ["127.0.0.1"],
        "{seen:?}"
    );
    assert_eq!(all_values(&seen, "x-forwarded-proto"), ["http"], "{seen:?}");
    assert_eq!(
        all_values(&seen, "x-forwarded-host"),
        ["app.example:8080"],
        "{seen:?}"
    );
    assert_eq!(
        all_values(&seen, "host"),
        ["app.example:8080"],
        "Host preserved"
    );

    // The upstream's JSON view agrees with what it recorded.
    let json: serde_json::Value = serde_json::from_slice(&answer.body).expect("json body");
    assert_eq!(json["x-forwarded-proto"][0], "http");
}

/// The client's own X-Forwarded-For is kept, and the client's address appended.
#[tokio::test]
async fn x_forwarded_for_is_appended_to() {
    let up = Upstream::start("stable").await;
    let proxy = proxy_to(&up, false).await;
    let client = http1_client();
    let req = Request::get(proxy.url("/headers"))
        .header("x-forwarded-for", "203.0.113.7, 198.51.100.1")
        .header("x-forwarded-proto", "https")
        .body(empty())
        .expect("request");
    let answer = send(&client, req).await;
    assert_eq!(answer.status, 200);
    let seen = up.last_headers();
    let hops: Vec<String> = all_values(&seen, "x-forwarded-for")
        .join(",")
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    assert_eq!(
        hops,
        ["203.0.113.7", "198.51.100.1", "127.0.0.1"],
        "X-Forwarded-For at the upstream: {seen:?}"
    );
    // veer says what it saw: the client spoke plain http to veer.
    assert_eq!(all_values(&seen, "x-forwarded-proto"), ["http"], "{seen:?}");
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let up = Upstream::start("stable").await;
    let proxy = proxy_to(&up, false).await;
    let client = http1_client();
    const SIZE: u64 = 8 << 20;

    let req = Request::post(proxy.url("/echo"))
        .body(generated_body(SIZE))
        .expect("request");
    let answer = send(&client, req).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len() as u64, SIZE);
    assert!(answer.body.iter().all(|&b| b == b'x'), "echo body changed");

    let answer = send(&client, get(&proxy.url(&format!("/download/{SIZE}")), None)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len() as u64, SIZE);
    assert_eq!(answer.header("content-length"), Some("8388608"));

    let req = Request::post(proxy.url("/sink"))
        .body(generated_body(SIZE))
        .expect("request");
    let answer = send(&client, req).await;
    assert_eq!(answer.text(), SIZE.to_string());
}

/// Streaming, not buffering: each chunk the client sends comes back through
/// the proxy while the request body is still open.
async fn full_duplex_echo(client: &HttpClient, url: String) {
    let (tx, body) = channel_body();
    tx.send(Bytes::from_static(b"chunk-0;"))
        .await
        .expect("first chunk");
    let req = Request::post(url).body(body).expect("request");
    let resp = within(
        LIMIT,
        "response head while the request body is still open",
        client.request(req),
    )
    .await
    .expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let got = read_exactly(&mut body, 8, LIMIT)
        .await
        .expect("echo of chunk 0");
    assert_eq!(got, b"chunk-0;");
    for i in 1..10 {
        let chunk = format!("chunk-{i};");
        tx.send(Bytes::from(chunk.clone()))
            .await
            .expect("send chunk");
        let got = read_exactly(&mut body, chunk.len(), LIMIT)
            .await
            .unwrap_or_else(|e| panic!("echo of chunk {i} before the body ends: {e}"));
        assert_eq!(got, chunk.as_bytes());
    }
    drop(tx);
    let rest = within(LIMIT, "end of echo", body.collect())
        .await
        .expect("end of echo");
    assert!(rest.to_bytes().is_empty());
}

#[tokio::test]
async fn echo_is_full_duplex_over_http1() {
    let up = Upstream::start("stable").await;
    let proxy = proxy_to(&up, false).await;
    full_duplex_echo(&http1_client(), proxy.url("/echo")).await;
}

#[tokio::test]
async fn echo_is_full_duplex_over_h2_to_h2() {
    let up = Upstream::start("stable").await;
    let proxy = proxy_to(&up, true).await;
    full_duplex_echo(&h2c_client(), proxy.url("/echo")).await;
}

#[tokio::test]
async fn h2c_client_to_proxy() {
    let up = Upstream::start("stable").await;
    let proxy = proxy_to(&up, false).await;
    let client = h2c_client();
    let answer = send(&client, get(&proxy.url("/"), None)).await;
    assert_eq!(answer.version, Version::HTTP_2);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "stable");
    // An HTTP/1.1 upstream gets HTTP/1.1, with Host from :authority.
    let seen = up.last_request().expect("a request");
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.host(), Some(proxy.addr().to_string()));

    // Many streams at once on one connection.
    let conn = h2c_connect(proxy.addr()).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut conn = conn.clone();
        let url = proxy.url(&format!("/delay/{}", 10 + i % 5));
        tasks.push(tokio::spawn(async move {
            let resp = conn.send_request(get(&url, None)).await?;
            read_answer(resp).await
        }));
    }
    for task in tasks {
        let answer = within(LIMIT, "h2 stream", task)
            .await
            .expect("task")
            .expect("h2 stream through the proxy");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "stable");
    }

    // A body over h2 to an HTTP/1.1 upstream.
    let req = Request::post(proxy.url("/echo"))
        .body(generated_body(1 << 20))
        .expect("request");
    let answer = send(&client, req).await;
    assert_eq!(answer.body.len(), 1 << 20);
}

#[tokio::test]
async fn http2_upstream() {
    let up = Upstream::start("h2-upstream").await;
    let proxy = proxy_to(&up, true).await;

    // An HTTP/1.1 client, an HTTP/2 upstream.
    let answer = send(&http1_client(), get(&proxy.url("/"), Some("app.example"))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.version, Version::HTTP_11);
    assert_eq!(answer.text(), "h2-upstream");
    let seen = up.last_request().expect("a request");
    assert_eq!(
        seen.version,
        Version::HTTP_2,
        "the upstream must be spoken to in h2"
    );
    assert_eq!(seen.host().as_deref(), Some("app.example"));

    // Concurrent requests are multiplexed: they all succeed.
    let client = http1_client();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (client, url) = (client.clone(), proxy.url("/delay/20"));
        tasks.push(tokio::spawn(
            async move { send(&client, get(&url, None)).await },
        ));
    }
    for task in tasks {
        let answer = within(LIMIT, "request", task).await.expect("task");
        assert_eq!(answer.status, 200);
    }

    // Bodies both ways over the h2 upstream.
    let req = Request::post(proxy.url("/echo"))
        .body(generated_body(2 << 20))
        .expect("request");
    let answer = send(&client, req).await;
    assert_eq!(answer.body.len(), 2 << 20);
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let up = Upstream::start("stable").await;
    let proxy = proxy_to(&up, false).await;
    let stream = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect to proxy");
    let (mut ws, resp) = within(
        LIMIT,
        "WebSocket handshake through the proxy",
        tokio_tungstenite::client_async("ws://app.example/ws", stream),
    )
    .await
    .expect("WebSocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers()
            .get("x-upstream")
            .and_then(|v| v.to_str().ok()),
        Some("stable")
    );

    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let messages = [
        Message::text("hello through veer"),
        Message::binary(big),
        Message::text("ünïcödé ✓"),
    ];
    for msg in messages {
        ws.send(msg.clone()).await.expect("ws send");
        let back = within(LIMIT, "ws echo", ws.next())
            .await
            .expect("ws stream open")
            .expect("ws frame");
        assert_eq!(back, msg);
    }
    ws.close(None).await.expect("ws close");
    assert_eq!(up.count("/ws"), 1);
    assert_eq!(
        up.last_request().and_then(|r| r.host()).as_deref(),
        Some("app.example")
    );

    // The proxy serves plain requests afterwards.
    let answer = send(&http1_client(), get(&proxy.url("/"), None)).await;
    assert_eq!(answer.status, 200);
}

/// gRPC-style: an h2 client through veer to an h2 upstream that ends its
/// response with trailers.
#[tokio::test]
async fn response_trailers_pass_h2_to_h2() {
    let up = Upstream::start("grpc").await;
    let proxy = proxy_to(&up, true).await;
    let client = h2c_client();
    let req = Request::post(proxy.url("/trailers"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full("request"))
        .expect("request");
    let answer = send(&client, req).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "hello");
    let trailers = answer
        .trailers
        .as_ref()
        .unwrap_or_else(|| panic!("no trailers reached the client: {answer:?}"));
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(
        trailers.get("grpc-message").map(|v| v.as_bytes()),
        Some(&b"ok"[..])
    );
    assert_eq!(
        all_values(&up.last_headers(), "te"),
        ["trailers"],
        "`TE: trailers` must reach a gRPC upstream"
    );
}

/// Trailers sent by the client reach the upstream (here echoed back).
#[tokio::test]
async fn request_trailers_pass_h2_to_h2() {
    let up = Upstream::start("grpc").await;
    let proxy = proxy_to(&up, true).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-request-trailer", "present".parse().expect("value"));
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
        Ok(Frame::data(Bytes::from_static(b"abc"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
    let req = Request::post(proxy.url("/echo"))
        .header("te", "trailers")
        .body(body)
        .expect("request");
    let answer = send(&h2c_client(), req).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "abc");
    let got = answer
        .trailers
        .as_ref()
        .and_then(|t| t.get("x-request-trailer"))
        .map(|v| v.as_bytes().to_vec());
    assert_eq!(
        got.as_deref(),
        Some(&b"present"[..]),
        "request trailers lost: {answer:?}"
    );
}

/// Runs curl (a client veer did not grow up with) and returns its stdout.
async fn curl(args: &[&str], stdin: Option<Vec<u8>>) -> String {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "20"])
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("run curl");
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().expect("curl stdin");
        tokio::spawn(async move {
            let _ = pipe.write_all(&data).await;
        });
    }
    let out = within(Duration::from_secs(30), "curl", child.wait_with_output())
        .await
        .expect("curl output");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn curl_over_http1_and_h2c_prior_knowledge() {
    let up = Upstream::start("stable").await;
    let proxy = proxy_to(&up, false).await;

    let out = curl(
        &[
            "-i",
            "--http1.1",
            "-H",
            "Host: app.example",
            &proxy.url("/headers"),
        ],
        None,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("x-upstream: stable"),
        "{out}"
    );
    assert!(out.contains("\"x-forwarded-for\""), "{out}");

    let out = curl(&["-i", "--http2-prior-knowledge", &proxy.url("/")], None).await;
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(out.ends_with("stable"), "{out}");

    // A chunked upload (PUT from stdin, no length known in advance).
    let out = curl(&["-T", "-", &proxy.url("/sink")], Some(vec![b'u'; 3 << 20])).await;
    assert_eq!(out, (3u64 << 20).to_string());
    let seen = up.last_request().expect("a request");
    assert_eq!(seen.method, http::Method::PUT);
}
