//! hyper's HTTP/2 server connection parked and resumed (veer's patched
//! hyper, `vendor/hyper/VEER-PATCHES.md`, over the patched h2): an idle
//! connection taken apart into its socket, a compact record and its
//! service, and served again when the socket is readable, with no
//! handshake. On loopback sockets with h2's client: a header the client
//! indexed before a park and refers to after it, request and response
//! bodies larger than both flow-control windows, trailers, a PING and a
//! GOAWAY while parked.
//!
//! The building block of parking idle HTTP/2 client connections in veer's
//! listeners, as HTTP/1.1 ones are; this tests it on its own.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

/// Bound on every wait, so a broken park hangs no test.
const LIMIT: Duration = Duration::from_secs(10);

/// Larger than both initial windows (65,535 bytes): sent only if the
/// windows after a resume agree with the client's.
const LARGE: usize = 300_000;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Echoes `x-token` in `x-echo` and the request body; `/large` answers
/// `LARGE` bytes, `/trailers` a body and `grpc-status: 0` trailers.
async fn answer(request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let token = request.headers().get("x-token").cloned();
    let path = request.uri().path().to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|all| all.to_bytes())
        .unwrap_or_default();
    let body: Body = match path.as_str() {
        "/large" => Full::new(Bytes::from(vec![7u8; LARGE])).boxed(),
        "/trailers" => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"message"))),
                Ok(Frame::trailers(trailers)),
            ];
            StreamBody::new(futures_util::stream::iter(frames)).boxed()
        }
        _ => Full::new(body).boxed(),
    };
    let mut response = Response::new(body);
    if let Some(token) = token {
        response.headers_mut().insert("x-echo", token);
    }
    Ok(response)
}

/// Parks counted by the server, and park attempts refused.
#[derive(Default)]
struct Counters {
    parks: AtomicUsize,
    refusals: AtomicUsize,
}

/// Serves one connection, parking it whenever it is idle (polled until it
/// would block, and `park` accepts) and resuming it when its socket is
/// readable.
async fn serve(listener: TcpListener, counters: Arc<Counters>) -> hyper::Result<()> {
    let (socket, _) = listener.accept().await.expect("accept");
    let builder = http2::Builder::new(TokioExecutor::new());
    let mut connection = builder.serve_connection(TokioIo::new(socket), service_fn(answer));
    loop {
        tokio::select! {
            biased;
            ended = &mut connection => return ended,
            () = tokio::task::yield_now() => {}
        }
        connection = match connection.park() {
            Ok((io, parked, service)) => {
                counters.parks.fetch_add(1, Ordering::SeqCst);
                io.inner().readable().await.expect("readable");
                builder.resume(io, parked, service)?
            }
            Err(back) => {
                counters.refusals.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
                back
            }
        };
    }
}

struct Client {
    send: h2::client::SendRequest<Bytes>,
    ping: Option<h2::PingPong>,
    counters: Arc<Counters>,
    server: tokio::task::JoinHandle<hyper::Result<()>>,
    connection: tokio::task::JoinHandle<Result<(), h2::Error>>,
}

async fn start() -> Client {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let counters = Arc::new(Counters::default());
    let server = tokio::spawn(serve(listener, Arc::clone(&counters)));
    let socket = TcpStream::connect(addr).await.expect("connect");
    let (send, mut connection) = h2::client::handshake(socket)
        .await
        .expect("client handshake");
    let ping = connection.ping_pong();
    Client {
        send,
        ping,
        counters,
        server,
        connection: tokio::spawn(connection),
    }
}

impl Client {
    /// Waits until the server has parked `count` times in all.
    async fn parked(&self, count: usize) {
        let counters = &self.counters;
        let waited = tokio::time::timeout(LIMIT, async {
            while counters.parks.load(Ordering::SeqCst) < count {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "the idle connection parks: {} parks of {count}, {} refusals",
            counters.parks.load(Ordering::SeqCst),
            counters.refusals.load(Ordering::SeqCst)
        );
    }

    /// A request and its whole answer: status, `x-echo`, body, trailers.
    async fn exchange(&mut self, path: &str, token: &str, body: Bytes) -> Answer {
        let request = Request::builder()
            .uri(format!("http://park.test{path}"))
            .method(if body.is_empty() { "GET" } else { "POST" })
            .header("x-token", token)
            .body(())
            .expect("request");
        let send = self.send.clone();
        let work = async move {
            let mut ready = send.ready().await.expect("ready");
            let (response, mut stream) = ready
                .send_request(request, body.is_empty())
                .expect("send request");
            let mut rest = body;
            while !rest.is_empty() {
                stream.reserve_capacity(rest.len());
                let granted = std::future::poll_fn(|cx| stream.poll_capacity(cx))
                    .await
                    .expect("capacity")
                    .expect("capacity granted");
                let chunk = rest.split_to(granted.min(rest.len()));
                stream.send_data(chunk, rest.is_empty()).expect("send data");
            }
            let response = response.await.expect("response");
            let status = response.status().as_u16();
            let echo = response
                .headers()
                .get("x-echo")
                .map(|v| v.to_str().expect("ascii").to_owned());
            let mut body = response.into_body();
            let mut received = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.expect("response body");
                let _ = body.flow_control().release_capacity(chunk.len());
                received.extend_from_slice(&chunk);
            }
            let trailers = body.trailers().await.expect("trailers");
            Answer {
                status,
                echo,
                body: received,
                trailers,
            }
        };
        tokio::time::timeout(LIMIT, work).await.expect("an answer")
    }

    /// The client leaves (GOAWAY); the server's connection must end cleanly.
    async fn leave(self) {
        drop(self.send);
        drop(self.ping);
        let ended = tokio::time::timeout(LIMIT, self.server)
            .await
            .expect("the server's connection ends");
        ended.expect("server task").expect("a clean end");
        let _ = self.connection.await;
    }
}

struct Answer {
    status: u16,
    echo: Option<String>,
    body: Vec<u8>,
    trailers: Option<http::HeaderMap>,
}

#[tokio::test]
async fn hpack_state_windows_and_trailers_survive_parks() {
    let mut client = start().await;
    // A long value the client's encoder indexes the first time and then
    // sends as a one-byte reference: the resumed server must have it.
    let token = "t".repeat(200);
    let answer = client.exchange("/", &token, Bytes::new()).await;
    assert_eq!(
        (answer.status, answer.echo.as_deref()),
        (200, Some(&*token))
    );
    client.parked(1).await;
    for round in 2..=3 {
        let answer = client.exchange("/", &token, Bytes::new()).await;
        assert_eq!(
            (answer.status, answer.echo.as_deref()),
            (200, Some(&*token)),
            "round {round}"
        );
        client.parked(round).await;
    }

    let upload = Bytes::from(vec![3u8; LARGE]);
    for round in 4..=5 {
        let answer = client.exchange("/", "u", upload.clone()).await;
        assert_eq!(answer.status, 200);
        assert!(
            answer.body == upload,
            "round {round}: the upload echoed whole"
        );
        client.parked(round).await;
    }
    let answer = client.exchange("/large", "d", Bytes::new()).await;
    assert_eq!((answer.status, answer.body.len()), (200, LARGE));
    client.parked(6).await;

    let answer = client.exchange("/trailers", "g", Bytes::new()).await;
    assert_eq!((answer.status, &answer.body[..]), (200, &b"message"[..]));
    let trailers = answer.trailers.expect("trailers");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    client.parked(7).await;
    client.leave().await;
}

#[tokio::test]
async fn a_ping_while_parked_is_answered_and_a_goaway_ends_it() {
    let mut client = start().await;
    let answer = client.exchange("/", "a", Bytes::new()).await;
    assert_eq!(answer.status, 200);
    client.parked(1).await;
    let mut ping = client.ping.take().expect("the ping handle");
    tokio::time::timeout(LIMIT, ping.ping(h2::Ping::opaque()))
        .await
        .expect("a PONG")
        .expect("the PONG");
    client.parked(2).await;
    let answer = client.exchange("/", "a", Bytes::new()).await;
    assert_eq!((answer.status, answer.echo.as_deref()), (200, Some("a")));
    client.parked(3).await;
    // Leaves while parked: the server resumes, reads the GOAWAY, ends.
    client.leave().await;
}
