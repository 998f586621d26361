//! veer's own HTTP/1.1 exchange with plain upstreams (`upstream::h1`, the path
//! every request without a body takes): each way an upstream may frame a
//! response, what makes a connection reusable and what does not, and the
//! answers that are not HTTP. A scripted upstream on raw TCP answers by path
//! and counts the connections it accepted, so each test can tell whether
//! veer reused its connection.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use http_body_util::BodyExt;
use support::client::{
    empty, get, h2c_client, h2c_connect, http1_client, raw_exchange, send, try_send, HttpClient,
};
use support::config::{service, ConfigBuilder};
use support::harness::TestProxy;
use support::within;

const LIMIT: Duration = Duration::from_secs(20);

/// A raw upstream that answers each request head with the bytes its path is
/// scripted for (see `script`), on keep-alive connections.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

impl Scripted {
    async fn start() -> Scripted {
        let listener = support::bind_loopback();
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let (acc, reqs) = (accepted.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, reqs.clone()));
            }
        });
        Scripted {
            addr,
            accepted,
            requests,
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

/// What to do after writing a response.
enum Then {
    KeepOpen,
    Close,
    /// Close the connection a moment later, while it sits idle in veer's pool.
    CloseSoon,
}

async fn serve(mut stream: TcpStream, requests: Arc<AtomicU64>) {
    let mut buf = Vec::new();
    let mut on_this_connection = 0u32;
    loop {
        let head = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = buf.drain(..end + 4).collect();
                break head;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        requests.fetch_add(1, Ordering::SeqCst);
        on_this_connection += 1;
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut words = text.split(' ');
        let method = words.next().unwrap_or_default().to_string();
        let path = words.next().unwrap_or_default().to_string();
        if path == "/second-unanswered" && on_this_connection == 2 {
            // Reads the request, then closes without a byte of answer: what
            // an upstream closing an idle connection looks like when the
            // close and veer's reuse cross on the wire.
            return;
        }
        let (parts, then) = script(&method, &path);
        for part in parts {
            if stream.write_all(&part).await.is_err() {
                return;
            }
            if path == "/chunked-slowly" {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        match then {
            Then::KeepOpen => {}
            Then::Close => return,
            Then::CloseSoon => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
        }
    }
}

fn script(method: &str, path: &str) -> (Vec<Vec<u8>>, Then) {
    let one = |bytes: &[u8]| vec![bytes.to_vec()];
    match path {
        "/chunked" => (
            one(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;name=value\r\n world\r\n0\r\n\r\n"),
            Then::KeepOpen,
        ),
        "/chunked-slowly" => (
            [
                &b"HTTP/1.1 200 OK\r\ntransfer-enc"[..],
                b"oding: chunked\r\n\r\n",
                b"5\r",
                b"\nhel",
                b"lo\r\n",
                b"6\r\n world",
                b"\r\n0\r\n",
                b"\r\n",
            ]
            .iter()
            .map(|p| p.to_vec())
            .collect(),
            Then::KeepOpen,
        ),
        "/trailers" => (
            one(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-checksum: abc123\r\n\r\n"),
            Then::KeepOpen,
        ),
        "/until-close" => (
            one(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nread until the end"),
            Then::Close,
        ),
        "/early-hints" => (
            one(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal"),
            Then::KeepOpen,
        ),
        "/head" if method == "HEAD" => (
            one(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"),
            Then::KeepOpen,
        ),
        "/no-content" => (one(b"HTTP/1.1 204 No Content\r\n\r\n"), Then::KeepOpen),
        "/not-modified" => (
            one(b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n"),
            Then::KeepOpen,
        ),
        "/huge-head" => {
            let mut head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n".to_vec();
            for i in 0..800 {
                head.extend_from_slice(format!("x-filler-{i}: {}\r\n", "f".repeat(80)).as_bytes());
            }
            head.extend_from_slice(b"\r\nok");
            (vec![head], Then::KeepOpen)
        }
        "/bad-length" => (
            one(b"HTTP/1.1 200 OK\r\ncontent-length: 12abc\r\n\r\nhello"),
            Then::Close,
        ),
        "/conflicting-length" => (
            one(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!"),
            Then::Close,
        ),
        "/bad-chunk" => (
            one(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
            Then::Close,
        ),
        "/short-body" => (
            one(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b"),
            Then::Close,
        ),
        "/head-then-close" => (
            one(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"),
            Then::Close,
        ),
        "/chunked-cut" => (
            one(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"),
            Then::Close,
        ),
        "/te-and-cl-smuggled" => (
            one(b"HTTP/1.1 200 OK\r\ncontent-length: 60\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled"),
            Then::KeepOpen,
        ),
        "/te-http10" => (
            one(b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
            Then::KeepOpen,
        ),
        "/http10" => (
            one(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            Then::Close,
        ),
        "/connection-close" => (
            one(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"),
            Then::Close,
        ),
        "/extra-bytes" => (
            one(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA"),
            Then::KeepOpen,
        ),
        "/then-close" => (
            one(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            Then::CloseSoon,
        ),
        "/switching" => (
            one(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"),
            Then::Close,
        ),
        _ => (
            one(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-upstream: scripted\r\n\r\nok"),
            Then::KeepOpen,
        ),
    }
}

async fn proxy_to(up: &Scripted) -> TestProxy {
    let svc = service("web")
        .timeout("connect", "1s")
        .timeout("request", "2s")
        .version("stable", &[up.addr], 1);
    TestProxy::start(&ConfigBuilder::new().service(svc).yaml()).await
}

async fn get_text(client: &HttpClient, proxy: &TestProxy, path: &str) -> (u16, String) {
    let answer = send(client, get(&proxy.url(path), None)).await;
    (answer.status.as_u16(), answer.text())
}

#[tokio::test]
async fn chunked_response_is_decoded_and_the_connection_reused() {
    let up = Scripted::start().await;
    let proxy = proxy_to(&up).await;
    let client = http1_client();
    for path in ["/chunked", "/chunked-slowly", "/chunked", "/"] {
        let (status, text) = get_text(&client, &proxy, path).await;
        assert_eq!(status, 200, "{path}");
        let expected = if path == "/" { "ok" } else { "hello world" };
        assert_eq!(text, expected, "{path}");
    }
    assert_eq!(up.accepted(), 1, "one upstream connection served all four");
}

#[tokio::test]
async fn chunked_trailers_reach_an_h2_client() {
    let up = Scripted::start().await;
    let proxy = proxy_to(&up).await;
    let answer = send(&h2c_client(), get(&proxy.url("/trailers"), None)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "ok");
    let trailers = answer.trailers.expect("trailers passed on");
    assert_eq!(
        trailers.get("x-checksum").map(|v| v.as_bytes()),
        Some(&b"abc123"[..])
    );
}

#[tokio::test]
async fn close_delimited_body_is_read_to_the_end_and_not_reused() {
    let up = Scripted::start().await;
    let proxy = proxy_to(&up).await;
    let client = http1_client();
    let (status, text) = get_text(&client, &proxy, "/until-close").await;
    assert_eq!((status, text.as_str()), (200, "read until the end"));
    let (status, text) = get_text(&client, &proxy, "/").await;
    assert_eq!((status, text.as_str()), (200, "ok"));
    assert_eq!(
        up.accepted(),
        2,
        "a close-delimited body ends its connection"
    );
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let up = Scripted::start().await;
    let proxy = proxy_to(&up).await;
    let answer = send(&http1_client(), get(&proxy.url("/early-hints"), None)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "final");
}

#[tokio::test]
async fn bodiless_responses_keep_the_connection() {
    let up = Scripted::start().await;
    let proxy = proxy_to(&up).await;
    let client = http1_client();
    let head = Request::builder()
        .method(Method::HEAD)
        .uri(proxy.url("/head"))
        .body(empty())
        .expect("HEAD request");
    let answer = send(&client, head).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-length"), Some("1000"));
    assert!(answer.body.is_empty());
    let answer = send(&client, get(&proxy.url("/no-content"), None)).await;
    assert_eq!(answer.status, 204);
    let answer = send(&client, get(&proxy.url("/not-modified"), None)).await;
    assert_eq!(answer.status, 304);
    assert_eq!(answer.header("etag"), Some("\"v1\""));
    let (status, text) = get_text(&client, &proxy, "/").await;
    assert_eq!((status, text.as_str()), (200, "ok"));
    assert_eq!(
        up.accepted(),
        1,
        "HEAD, 204 and 304 have no body to wait for"
    );
}

#[tokio::test]
async fn invalid_framing_is_502_and_the_proxy_serves_on() {
    let up = Scripted::start().await;
    let proxy = proxy_to(&up).await;
    let client = http1_client();
    for path in [
        "/huge-head",
        "/bad-length",
        "/conflicting-length",
        "/switching",
    ] {
        let answer = send(&client, get(&proxy.url(path), None)).await;
        answer.assert_proxy_error(502);
        assert_eq!(
            answer.header("x-veer-error"),
            Some("upstream-protocol"),
            "{path}: {}",
            answer.text()
        );
    }
    let (status, text) = get_text(&client, &proxy, "/").await;
    assert_eq!((status, text.as_str()), (200, "ok"));
}

#[tokio::test]
async fn broken_bodies_reach_the_client_as_broken() {
    let up = Scripted::start().await;
    let proxy = proxy_to(&up).await;
    for path in ["/short-body", "/bad-chunk"] {
        // Each on a client of its own: the broken response ends its
        // client connection.
        let result = within(
            LIMIT,
            path,
            try_send(&http1_client(), get(&proxy.url(path), None)),
        )
        .await;
        assert!(
            result.is_err(),
            "{path}: a broken body must not look complete: {result:?}"
        );
    }
    let (status, text) = get_text(&http1_client(), &proxy, "/").await;
    assert_eq!((status, text.as_str()), (200, "ok"));
}

#[tokio::test]
async fn connections_the_upstream_ends_are_not_reused() {
    let up = Scripted::start().await;
    let proxy = proxy_to(&up).await;
    let client = http1_client();
    for path in ["/http10", "/connection-close", "/extra-bytes"] {
        let (status, text) = get_text(&client, &proxy, path).await;
        assert_eq!((status, text.as_str()), (200, "ok"), "{path}");
        let (status, text) = get_text(&client, &proxy, "/").await;
        assert_eq!((status, text.as_str()), (200, "ok"), "after {path}");
    }
    // /http10 and /connection-close close theirs; /extra-bytes sent more
    // than its length, so its connection is not trusted again.
    assert_eq!(up.accepted(), 4);
}

#[tokio::test]
async fn a_pooled_connection_closed_while_idle_is_not_an_error() {
    let up = Scripted::start().await;
    let proxy = proxy_to(&up).await;
    let client = http1_client();
    for _ in 0..5 {
        let (status, text) = get_text(&client, &proxy, "/then-close").await;
        assert_eq!((status, text.as_str()), (200, "ok"));
        // Long enough for the upstream's close to arrive at veer.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(up.accepted(), 5);
}

#[tokio::test]
async fn a_reused_connection_closed_unanswered_is_retried_when_safe() {
    let up = Scripted::start().await;
    let proxy = proxy_to(&up).await;
    let client = http1_client();
    // First request on a connection is answered; the second on the same
    // connection is read and dropped. A GET is safe to send again.
    for _ in 0..3 {
        let (status, text) = get_text(&client, &proxy, "/second-unanswered").await;
        assert_eq!((status, text.as_str()), (200, "ok"));
    }
    // 1 (answered), 2 (dropped, sent again on a new connection: answered),
    // 3 (the second on that one: dropped, sent again).
    assert_eq!(up.requests(), 5, "each dropped GET was sent once more");
    assert_eq!(up.accepted(), 3);

    // A bodiless POST is not safe to repeat: the client gets the error.
    let up = Scripted::start().await;
    let proxy = proxy_to(&up).await;
    let post = |proxy: &TestProxy| {
        Request::builder()
            .method(Method::POST)
            .uri(proxy.url("/second-unanswered"))
            .body(empty())
            .expect("POST request")
    };
    let answer = send(&client, post(&proxy)).await;
    assert_eq!(answer.status, 200);
    let answer = send(&client, post(&proxy)).await;
    answer.assert_proxy_error(502);
    assert_eq!(answer.header("x-veer-error"), Some("upstream-reset"));
    assert_eq!(up.requests(), 2, "the POST was not repeated");
}

/// A raw HTTP/1.1 request for `path`, read to the close.
async fn raw_get(proxy: &TestProxy, path: &str) -> support::client::RawReply {
    let request = format!("GET {path} HTTP/1.1\r\nhost: web\r\n\r\n");
    within(
        LIMIT,
        path,
        raw_exchange(proxy.addr(), request.as_bytes(), LIMIT),
    )
    .await
}

#[tokio::test]
async fn a_short_body_reaches_an_http1_client_as_far_as_it_came_then_a_close() {
    let up = Scripted::start().await;
    let proxy = proxy_to(&up).await;
    // Fewer bytes than Content-Length: the head and the ten bytes, then the
    // connection closes (the client can tell: 10 of 100 bytes came).
    let reply = raw_get(&proxy, "/short-body").await;
    let text = reply.text();
    assert!(
        reply.closed,
        "the connection must close, not stall: {text:?}"
    );
    assert_eq!(reply.status(), Some(200), "{text:?}");
    assert!(text.contains("content-length: 100\r\n"), "{text:?}");
    assert!(text.ends_with("\r\n\r\nonly ten b"), "{text:?}");
    // The head alone, then the close: still the head.
    let reply = raw_get(&proxy, "/head-then-close").await;
    let text = reply.text();
    assert!(reply.closed, "{text:?}");
    assert_eq!(reply.status(), Some(200), "{text:?}");
    assert!(text.contains("content-length: 10\r\n"), "{text:?}");
    assert!(
        text.ends_with("\r\n\r\n"),
        "no body byte was invented: {text:?}"
    );
    // A chunked body cut off: the chunk that came, and no last chunk, so
    // the client sees the body unfinished.
    let reply = raw_get(&proxy, "/chunked-cut").await;
    let text = reply.text();
    assert!(reply.closed, "{text:?}");
    assert_eq!(reply.status(), Some(200), "{text:?}");
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text:?}");
    assert!(text.ends_with("\r\n\r\n5\r\nhello\r\n"), "{text:?}");
    // Three broken answers, and the proxy serves on.
    let (status, text) = get_text(&http1_client(), &proxy, "/").await;
    assert_eq!((status, text.as_str()), (200, "ok"));
}

#[tokio::test]
async fn a_short_body_reaches_an_h2_client_then_a_reset_of_that_stream_only() {
    let up = Scripted::start().await;
    let proxy = proxy_to(&up).await;
    let mut h2 = h2c_connect(proxy.addr()).await;
    for (path, arrived) in [
        ("/short-body", &b"only ten b"[..]),
        ("/chunked-cut", b"hello"),
        ("/head-then-close", b""),
    ] {
        let response = within(LIMIT, path, h2.send_request(get(&proxy.url(path), None)))
            .await
            .unwrap_or_else(|e| panic!("{path}: the head must arrive: {e}"));
        assert_eq!(response.status(), 200, "{path}");
        let mut body = response.into_body();
        let mut data = Vec::new();
        let error = loop {
            match within(LIMIT, path, body.frame()).await {
                Some(Ok(frame)) => data.extend_from_slice(frame.data_ref().map_or(&[][..], |d| d)),
                Some(Err(e)) => break e,
                None => panic!("{path}: a short body must not end cleanly ({data:?})"),
            }
        };
        assert_eq!(data, arrived, "{path}");
        let mut cause = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(inner) = source {
            cause = format!("{cause}: {inner}");
            source = inner.source();
        }
        assert!(
            cause.contains("stream error received"),
            "{path}: expected the stream reset: {cause}"
        );
    }
    // The connection itself serves on.
    let answer = h2
        .send_request(get(&proxy.url("/"), None))
        .await
        .expect("the h2 connection survives a stream reset");
    assert_eq!(answer.status(), 200);
}

#[tokio::test]
async fn transfer_encoding_beside_content_length_frames_the_body_and_ends_the_connection() {
    let up = Scripted::start().await;
    let proxy = proxy_to(&up).await;
    for client in [http1_client(), h2c_client()] {
        let answer = send(&client, get(&proxy.url("/te-and-cl-smuggled"), None)).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "hello");
        assert_eq!(
            answer.header("content-length"),
            None,
            "the length the chunked coding overrode must not go on"
        );
        // What followed the last chunk answers nobody, and the connection
        // that sent both framings is not used again.
        let before = up.accepted();
        let (status, text) = get_text(&client, &proxy, "/").await;
        assert_eq!((status, text.as_str()), (200, "ok"));
        assert_eq!(up.accepted(), before + 1, "a fresh upstream connection");
    }
}

#[tokio::test]
async fn transfer_encoding_on_an_http_10_answer_is_502() {
    let up = Scripted::start().await;
    let proxy = proxy_to(&up).await;
    for client in [http1_client(), h2c_client()] {
        let answer = send(&client, get(&proxy.url("/te-http10"), None)).await;
        answer.assert_proxy_error(502);
        assert_eq!(answer.header("x-veer-error"), Some("upstream-protocol"));
        assert!(
            answer
                .text()
                .contains("answered invalid HTTP: Transfer-Encoding in an HTTP/1.0 response"),
            "{}",
            answer.text()
        );
    }
}
