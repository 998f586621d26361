//! veer's own HTTP/1.1 client (`upstream::h1`) against hyper's, byte stream
//! for byte stream. Two real `veer` processes proxy to two scripted raw
//! upstreams: one as shipped (bodiless requests take the fast path), one with
//! `VEER_H1_CLIENT=hyper` (every request through hyper's client). Each case's
//! upstream bytes go through both, to an HTTP/1.1 and an HTTP/2 client, and
//! the two must give the client the same answer (status, headers, the body
//! that arrived, trailers, whether it ended cleanly) and make the same
//! decision about reusing the upstream connection. Most cases also state the
//! answer they must give, so the two cannot agree on a wrong one.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use hyper_util::rt::TokioIo;
use support::binary::VeerProcess;
use support::client::{empty, h2c_connect};
use support::config::{service, ConfigBuilder, LISTENER};

/// Bound on one exchange: a stalled answer is a failure, never a hang.
const EXCHANGE: Duration = Duration::from_secs(10);

/// What the upstream does after writing a case's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    KeepOpen,
    Close,
}

/// What the client must see.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// This status and body, ended cleanly.
    Whole(u16, &'static str),
    /// This status and the body bytes that arrived, then a broken stream
    /// (a close on HTTP/1.1, a reset on HTTP/2).
    Cut(u16, &'static str),
    /// veer's own 502 with this `x-veer-error`.
    Proxy(&'static str),
    /// Only that both paths agree.
    Same,
}

struct Case {
    name: &'static str,
    method: Method,
    bytes: Vec<u8>,
    then: Then,
    expect: Expect,
    /// Whether the upstream connection may serve the next request; `None`
    /// where it cannot be told (the upstream itself closes).
    reused: Option<bool>,
    /// Too large a head for an HTTP/2 client's own header-list limit.
    h1_only: bool,
}

fn case(name: &'static str, bytes: &[u8], then: Then, expect: Expect, reused: bool) -> Case {
    Case {
        name,
        method: Method::GET,
        bytes: bytes.to_vec(),
        then,
        expect,
        reused: if then == Then::Close {
            None
        } else {
            Some(reused)
        },
        h1_only: false,
    }
}

fn h1_only(mut c: Case) -> Case {
    c.h1_only = true;
    c
}

fn head(mut c: Case) -> Case {
    c.method = Method::HEAD;
    c
}

use Expect::{Cut, Proxy, Same, Whole};
use Then::{Close, KeepOpen};

const PROTOCOL: &str = "upstream-protocol";

fn cases() -> Vec<Case> {
    let mut many_headers = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n".to_vec();
    for i in 0..99 {
        many_headers.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    many_headers.extend_from_slice(b"\r\nok");
    let mut big_header = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-big: ".to_vec();
    big_header.extend(std::iter::repeat_n(b'b', 100 * 1024));
    big_header.extend_from_slice(b"\r\n\r\nok");

    let chunked = |body: &[u8]| {
        let mut bytes = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        bytes.extend_from_slice(body);
        bytes
    };
    let extension = |n: usize| format!(";e={}", "x".repeat(n));
    let long_extension =
        chunked(format!("5{}\r\nhello\r\n0\r\n\r\n", extension(10_000)).as_bytes());
    let extensions_over_limit = chunked(
        format!(
            "1{e}\r\na\r\n1{e}\r\nb\r\n1{e}\r\nc\r\n0\r\n\r\n",
            e = extension(6_000)
        )
        .as_bytes(),
    );
    let big_trailers =
        chunked(format!("2\r\nok\r\n0\r\nx-t: {}\r\n\r\n", "t".repeat(20_000)).as_bytes());

    vec![
        case("chunked-long-extension", &long_extension, KeepOpen, Whole(200, "hello"), true),
        case("chunked-extensions-over-16-kib", &extensions_over_limit, KeepOpen, Cut(200, "ab"), false),
        case("chunked-trailers-over-16-kib", &big_trailers, KeepOpen, Cut(200, "ok"), false),
        // Content-Length
        case("cl", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", KeepOpen, Whole(200, "hello"), true),
        case("cl-zero", b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", KeepOpen, Whole(200, ""), true),
        case("cl-repeated-equal", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello", KeepOpen, Whole(200, "hello"), true),
        case("cl-list-equal", b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello", KeepOpen, Whole(200, "hello"), true),
        case("cl-repeated-different", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!", KeepOpen, Proxy(PROTOCOL), false),
        case("cl-list-different", b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello!", KeepOpen, Proxy(PROTOCOL), false),
        case("cl-not-a-number", b"HTTP/1.1 200 OK\r\ncontent-length: 12abc\r\n\r\nhello", KeepOpen, Proxy(PROTOCOL), false),
        case("cl-negative", b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\nhello", KeepOpen, Proxy(PROTOCOL), false),
        case("cl-plus-sign", b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello", KeepOpen, Proxy(PROTOCOL), false),
        case("cl-hex", b"HTTP/1.1 200 OK\r\ncontent-length: 0x5\r\n\r\nhello", KeepOpen, Proxy(PROTOCOL), false),
        case("cl-empty", b"HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\nhello", KeepOpen, Proxy(PROTOCOL), false),
        case("cl-overflow", b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\nhello", KeepOpen, Proxy(PROTOCOL), false),
        case("cl-leading-zeros", b"HTTP/1.1 200 OK\r\ncontent-length: 0005\r\n\r\nhello", KeepOpen, Whole(200, "hello"), true),
        case("cl-padded", b"HTTP/1.1 200 OK\r\ncontent-length:    5   \r\n\r\nhello", KeepOpen, Whole(200, "hello"), true),
        case("cl-short-then-close", b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b", Close, Cut(200, "only ten b"), false),
        case("cl-head-only-then-close", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", Close, Cut(200, ""), false),
        case("cl-bytes-beyond", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA", KeepOpen, Whole(200, "ok"), false),
        // chunked
        case("chunked", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", KeepOpen, Whole(200, "hello world"), true),
        case("chunked-empty", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", KeepOpen, Whole(200, ""), true),
        case("chunked-extensions", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0;last\r\n\r\n", KeepOpen, Whole(200, "hello"), true),
        case("chunked-quoted-extension", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;a=\"b c\"\r\nhello\r\n0\r\n\r\n", KeepOpen, Same, true),
        case("chunked-upper-hex", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n", KeepOpen, Whole(200, "0123456789"), true),
        case("chunked-leading-zeros", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0005\r\nhello\r\n0\r\n\r\n", KeepOpen, Whole(200, "hello"), true),
        case("chunked-space-after-size", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", KeepOpen, Same, true),
        case("chunked-bare-lf", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\n0\n\n", KeepOpen, Same, false),
        case("chunked-size-overflow", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n", KeepOpen, Cut(200, ""), false),
        case("chunked-bad-size", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", KeepOpen, Cut(200, ""), false),
        case("chunked-negative-size", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n-1\r\nhello\r\n0\r\n\r\n", KeepOpen, Cut(200, ""), false),
        case("chunked-hex-prefix", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", KeepOpen, Cut(200, ""), false),
        case("chunked-no-crlf-after-data", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", KeepOpen, Cut(200, "hello"), false),
        case("chunked-cut-in-data", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nhello", Close, Cut(200, "hello"), false),
        case("chunked-cut-before-last", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n", Close, Cut(200, "hello"), false),
        case("chunked-trailers", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n2\r\nok\r\n0\r\nx-checksum: abc123\r\n\r\n", KeepOpen, Whole(200, "ok"), true),
        case("chunked-bad-trailer", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nbad trailer\r\n\r\n", KeepOpen, Same, false),
        // Transfer-Encoding and Content-Length together, and TE variants
        case("te-and-cl", b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", KeepOpen, Whole(200, "hello"), false),
        case("cl-and-te", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 100\r\n\r\n5\r\nhello\r\n0\r\n\r\n", KeepOpen, Whole(200, "hello"), false),
        case("te-and-cl-smuggled", b"HTTP/1.1 200 OK\r\ncontent-length: 60\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled", KeepOpen, Whole(200, "hello"), false),
        case("te-on-http-1.0", b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", KeepOpen, Proxy(PROTOCOL), false),
        case("te-and-cl-on-http-1.0", b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\nhello", KeepOpen, Proxy(PROTOCOL), false),
        case("te-gzip-chunked", b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", KeepOpen, Whole(200, "abc"), true),
        case("te-chunked-not-last", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\nabc", Close, Whole(200, "abc"), false),
        case("te-identity", b"HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\n\r\nabc", Close, Whole(200, "abc"), false),
        case("te-two-lines", b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", KeepOpen, Whole(200, "abc"), true),
        // read to close, keep-alive
        case("until-close", b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nread until the end", Close, Whole(200, "read until the end"), false),
        case("http-1.0", b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", KeepOpen, Whole(200, "ok"), false),
        case("http-1.0-keep-alive", b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok", KeepOpen, Whole(200, "ok"), true),
        case("connection-close", b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", KeepOpen, Whole(200, "ok"), false),
        case("connection-close-second-line", b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", KeepOpen, Whole(200, "ok"), false),
        // no body whatever the head says
        head(case("head-with-length", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", KeepOpen, Whole(200, ""), true)),
        head(case("head-with-body-bytes", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", KeepOpen, Whole(200, ""), false)),
        head(case("head-chunked", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", KeepOpen, Whole(200, ""), true)),
        case("204-with-length", b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n", KeepOpen, Whole(204, ""), true),
        case("204-with-body-bytes", b"HTTP/1.1 204 No Content\r\n\r\nhello", KeepOpen, Whole(204, ""), false),
        case("304-with-length", b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\netag: \"v1\"\r\n\r\n", KeepOpen, Whole(304, ""), true),
        case("304-chunked", b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n", KeepOpen, Whole(304, ""), true),
        // interim answers before the final one
        case("100-continue", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal", KeepOpen, Whole(200, "final"), true),
        case("103-early-hints", b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal", KeepOpen, Whole(200, "final"), true),
        case("several-1xx", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nfinal", KeepOpen, Whole(201, "final"), true),
        case("101-unasked", b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n", KeepOpen, Proxy(PROTOCOL), false),
        // heads
        case("obs-fold", b"HTTP/1.1 200 OK\r\nx-folded: a\r\n b\r\ncontent-length: 2\r\n\r\nok", KeepOpen, Proxy(PROTOCOL), false),
        case("space-before-colon", b"HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\nok", KeepOpen, Proxy(PROTOCOL), false),
        case("bad-header-name", b"HTTP/1.1 200 OK\r\nx(bad): 1\r\ncontent-length: 2\r\n\r\nok", KeepOpen, Proxy(PROTOCOL), false),
        case("obs-text-value", b"HTTP/1.1 200 OK\r\nx-name: caf\xe9\r\ncontent-length: 2\r\n\r\nok", KeepOpen, Whole(200, "ok"), true),
        case("no-reason-phrase", b"HTTP/1.1 200\r\ncontent-length: 2\r\n\r\nok", KeepOpen, Same, true),
        case("bare-lf-head", b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok", KeepOpen, Same, true),
        case("four-digit-status", b"HTTP/1.1 2000 OK\r\ncontent-length: 2\r\n\r\nok", KeepOpen, Proxy(PROTOCOL), false),
        case("http-2.0-status-line", b"HTTP/2.0 200 OK\r\ncontent-length: 2\r\n\r\nok", KeepOpen, Proxy(PROTOCOL), false),
        case("not-http", b"SSH-2.0-OpenSSH_9.2\r\n\r\n", KeepOpen, Proxy(PROTOCOL), false),
        case("100-headers", &many_headers, KeepOpen, Whole(200, "ok"), true),
        case("101-headers", &{
            let mut h = many_headers.clone();
            h.splice(17..17, b"x-one-more: v\r\n".iter().copied());
            h
        }, KeepOpen, Proxy(PROTOCOL), false),
        h1_only(case("100-kib-header", &big_header, KeepOpen, Whole(200, "ok"), true)),
        case("closed-in-head", b"HTTP/1.1 200 OK\r\ncontent-le", Close, Proxy("upstream-reset"), false),
    ]
}

/// A raw upstream that answers `/case/N` with case N's bytes and anything
/// else with a plain `ok`, and logs which connection served which path.
struct Scripted {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<(u64, String)>>>,
}

impl Scripted {
    async fn start(cases: Arc<Vec<(Vec<u8>, Then)>>) -> Scripted {
        let listener = support::bind_loopback();
        let addr = listener.local_addr().expect("local addr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&log);
        tokio::spawn(async move {
            let mut id = 0;
            while let Ok((stream, _)) = listener.accept().await {
                id += 1;
                tokio::spawn(serve(stream, id, Arc::clone(&cases), Arc::clone(&shared)));
            }
        });
        Scripted { addr, log }
    }

    /// The connection that served the last request for `path`.
    fn connection_of(&self, path: &str) -> Option<u64> {
        let log = self.log.lock().expect("log");
        log.iter().rev().find(|(_, p)| p == path).map(|(c, _)| *c)
    }
}

async fn serve(
    mut stream: TcpStream,
    id: u64,
    cases: Arc<Vec<(Vec<u8>, Then)>>,
    log: Arc<Mutex<Vec<(u64, String)>>>,
) {
    let mut buf = Vec::new();
    loop {
        let head = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break buf.drain(..end + 4).collect::<Vec<u8>>();
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let path = String::from_utf8_lossy(&head)
            .split(' ')
            .nth(1)
            .unwrap_or_default()
            .to_string();
        log.lock().expect("log").push((id, path.clone()));
        let scripted = path
            .strip_prefix("/case/")
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| cases.get(n));
        let (bytes, then) = match scripted {
            Some((bytes, then)) => (&bytes[..], *then),
            None => (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
                KeepOpen,
            ),
        };
        if stream.write_all(bytes).await.is_err() || then == Close {
            return;
        }
    }
}

/// What a client saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// veer's own error answer: its status and `x-veer-error` (the one-line
    /// body names the cause in each client's own words, so it differs).
    Proxy(u16, String),
    /// The upstream's answer as passed on: status, headers but `date`, the
    /// body bytes that arrived, trailers, and whether the body ended cleanly.
    Upstream {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: Bytes,
        trailers: Vec<(String, Vec<u8>)>,
        complete: bool,
    },
    /// No response head at all.
    NoHead,
    /// Nothing within the time allowed.
    Stalled,
}

async fn collect(response: Response<Incoming>) -> Seen {
    let (parts, mut body) = response.into_parts();
    if let Some(reason) = parts.headers.get("x-veer-error") {
        return Seen::Proxy(
            parts.status.as_u16(),
            String::from_utf8_lossy(reason.as_bytes()).into_owned(),
        );
    }
    let mut headers: Vec<(String, Vec<u8>)> = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != "date")
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect();
    headers.sort();
    let mut data = Vec::new();
    let mut trailers = Vec::new();
    let complete = loop {
        match body.frame().await {
            None => break true,
            Some(Err(_)) => break false,
            Some(Ok(frame)) => {
                if let Some(chunk) = frame.data_ref() {
                    data.extend_from_slice(chunk);
                } else if let Some(map) = frame.trailers_ref() {
                    trailers.extend(
                        map.iter()
                            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())),
                    );
                }
            }
        }
    };
    Seen::Upstream {
        status: parts.status.as_u16(),
        headers,
        body: Bytes::from(data),
        trailers,
        complete,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    Http1,
    Http2,
}

async fn exchange(proxy: SocketAddr, client: Client, method: &Method, path: &str) -> Seen {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{proxy}{path}"))
        .body(empty())
        .expect("request");
    let answer = async {
        // The connection is held until the body is read: a client that
        // drops its last handle may close it under the body.
        match client {
            Client::Http1 => {
                // veer adds `date` to the upstream's 100 headers, one more
                // than hyper's client takes by default.
                let stream = TcpStream::connect(proxy).await.expect("connect");
                let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
                    .max_headers(200)
                    .handshake(TokioIo::new(stream))
                    .await
                    .expect("http1 handshake");
                tokio::spawn(connection);
                match sender.send_request(request).await {
                    Ok(response) => collect(response).await,
                    Err(_) => Seen::NoHead,
                }
            }
            Client::Http2 => {
                let mut sender = h2c_connect(proxy).await;
                match sender.send_request(request).await {
                    Ok(response) => collect(response).await,
                    Err(_) => Seen::NoHead,
                }
            }
        }
    };
    tokio::time::timeout(EXCHANGE, answer)
        .await
        .unwrap_or(Seen::Stalled)
}

/// One proxy and its upstream; `env` picks the client veer uses.
struct Side {
    proxy: VeerProcess,
    upstream: Scripted,
}

impl Side {
    async fn start(cases: Arc<Vec<(Vec<u8>, Then)>>, env: &[(&str, &str)]) -> Side {
        let upstream = Scripted::start(cases).await;
        let yaml = ConfigBuilder::new()
            .service(
                service("web")
                    .timeout("connect", "1s")
                    .timeout("request", "5s")
                    .version("stable", &[upstream.addr], 1),
            )
            .yaml();
        let proxy = VeerProcess::start_with_env(env!("CARGO_BIN_EXE_veer"), &yaml, env);
        Side { proxy, upstream }
    }

    /// Runs case `index`, then a plain request, and tells whether that one
    /// went over the case's upstream connection.
    async fn run(&self, index: usize, method: &Method, client: Client) -> (Seen, bool) {
        let addr = self.proxy.listener(LISTENER);
        let path = format!("/case/{index}");
        let seen = exchange(addr, client, method, &path).await;
        let follow = exchange(addr, client, &Method::GET, "/").await;
        assert!(
            matches!(&follow, Seen::Upstream { body, complete: true, .. } if body == "ok"),
            "the request after case {index} got {follow:?}: bytes of the case's answer must not answer it"
        );
        let reused = self.upstream.connection_of(&path).is_some()
            && self.upstream.connection_of(&path) == self.upstream.connection_of("/");
        (seen, reused)
    }
}

fn check(case: &Case, client: Client, seen: &Seen) {
    let what = format!("{} ({client:?} client)", case.name);
    match (case.expect, seen) {
        (Same, _) => {}
        (Proxy(reason), Seen::Proxy(502, got)) => assert_eq!(got, reason, "{what}"),
        (
            Whole(status, text),
            Seen::Upstream {
                status: got,
                body,
                complete: true,
                ..
            },
        ) => {
            assert_eq!((*got, &body[..]), (status, text.as_bytes()), "{what}");
        }
        (
            Cut(status, text),
            Seen::Upstream {
                status: got,
                body,
                complete: false,
                ..
            },
        ) => {
            assert_eq!((*got, &body[..]), (status, text.as_bytes()), "{what}");
        }
        (expect, seen) => panic!("{what}: expected {expect:?}, got {seen:?}"),
    }
    if let Seen::Upstream { headers, .. } = seen {
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            !names.contains(&"transfer-encoding") || client == Client::Http1,
            "{what}: {names:?}"
        );
        if case
            .bytes
            .windows(18)
            .any(|w| w.eq_ignore_ascii_case(b"transfer-encoding:"))
        {
            let length = headers.iter().find(|(n, _)| n == "content-length");
            assert!(
                length.is_none() || case.method == Method::HEAD || case.name.starts_with("304"),
                "{what}: a transfer-coded answer went on with its Content-Length: {length:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_and_hyper_frame_every_answer_alike() {
    let cases = cases();
    let scripts: Arc<Vec<(Vec<u8>, Then)>> =
        Arc::new(cases.iter().map(|c| (c.bytes.clone(), c.then)).collect());
    let fast = Side::start(Arc::clone(&scripts), &[]).await;
    let hyper = Side::start(Arc::clone(&scripts), &[("VEER_H1_CLIENT", "hyper")]).await;
    let mut failures = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        for client in [Client::Http1, Client::Http2] {
            if case.h1_only && client == Client::Http2 {
                continue;
            }
            let (on_fast, fast_reused) = fast.run(index, &case.method, client).await;
            let (on_hyper, hyper_reused) = hyper.run(index, &case.method, client).await;
            if on_fast != on_hyper {
                failures.push(format!(
                    "{} ({client:?}): fast path {on_fast:?}\n    hyper {on_hyper:?}",
                    case.name
                ));
            }
            if fast_reused != hyper_reused {
                failures.push(format!(
                    "{} ({client:?}): fast path reused {fast_reused}, hyper {hyper_reused}",
                    case.name
                ));
            }
            if let Some(reused) = case.reused {
                if fast_reused != reused {
                    failures.push(format!(
                        "{} ({client:?}): reused {fast_reused}, expected {reused}",
                        case.name
                    ));
                }
            }
            let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                check(case, client, &on_fast)
            }));
            if let Err(panic) = checked {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(text);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagreement(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
