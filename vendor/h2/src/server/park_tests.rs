//! veer patch: an idle server connection parked (`Connection::park`) and
//! resumed (`Builder::resume`) between a client's requests, on loopback
//! sockets with this crate's client: what the client indexed in its HPACK
//! table, both connection windows, a PING and a GOAWAY received while
//! parked, and a connection with a stream open refusing to park.

use super::*;
use crate::client;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Bound on every wait, so a broken park hangs no test.
const LIMIT: Duration = Duration::from_secs(10);

/// A body larger than both default windows (65,535 bytes), so it is sent
/// only if the windows after a resume agree with the client's.
const LARGE: usize = 300_000;

/// What the server did with its one connection.
#[derive(Default)]
struct Counters {
    parks: AtomicUsize,
    refusals: AtomicUsize,
}

/// Answers each request with its `x-token` header echoed in `x-echo` and
/// its body (or `LARGE` bytes for `GET /large`).
async fn answer(request: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let token = request.headers().get("x-token").cloned();
    let large = request.uri().path() == "/large";
    let mut body = request.into_body();
    let mut received = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("request body");
        let _ = body.flow_control().release_capacity(chunk.len());
        received.extend_from_slice(&chunk);
    }
    let mut response = Response::builder().status(200);
    if let Some(token) = token {
        response = response.header("x-echo", token);
    }
    let response = response.body(()).expect("response");
    let payload = if large {
        Bytes::from(vec![7u8; LARGE])
    } else {
        Bytes::from(received)
    };
    let mut send = respond
        .send_response(response, payload.is_empty())
        .expect("send response");
    if payload.is_empty() {
        return;
    }
    let mut rest = payload;
    while !rest.is_empty() {
        send.reserve_capacity(rest.len());
        let granted = std::future::poll_fn(|cx| send.poll_capacity(cx))
            .await
            .expect("capacity")
            .expect("capacity granted");
        let chunk = rest.split_to(granted.min(rest.len()));
        send.send_data(chunk, rest.is_empty()).expect("send data");
    }
}

/// Serves one connection, parking it whenever it is idle (the accept
/// would block and `park` accepts) and resuming it when its socket is
/// readable; returns how it ended.
async fn serve(listener: TcpListener, counters: Arc<Counters>) -> Result<(), crate::Error> {
    let (socket, _) = listener.accept().await.expect("accept");
    let builder = Builder::new();
    let mut connection: Connection<TcpStream, Bytes> = builder.handshake(socket).await?;
    loop {
        tokio::select! {
            biased;
            next = connection.accept() => match next {
                Some(Ok((request, respond))) => {
                    tokio::spawn(answer(request, respond));
                }
                Some(Err(err)) => return Err(err),
                None => return Ok(()),
            },
            // The accept was polled and would block: everything it could
            // write is flushed.
            () = tokio::task::yield_now() => match connection.park() {
                Ok((io, parked)) => {
                    counters.parks.fetch_add(1, Ordering::SeqCst);
                    io.readable().await.expect("readable");
                    connection = builder.resume(io, parked)?;
                }
                Err(back) => {
                    counters.refusals.fetch_add(1, Ordering::SeqCst);
                    connection = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            },
        }
    }
}

async fn start() -> (
    client::SendRequest<Bytes>,
    Arc<Counters>,
    tokio::task::JoinHandle<Result<(), crate::Error>>,
    tokio::task::JoinHandle<Result<(), crate::Error>>,
    Option<crate::PingPong>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let counters = Arc::new(Counters::default());
    let server = tokio::spawn(serve(listener, Arc::clone(&counters)));
    let socket = TcpStream::connect(addr).await.expect("connect");
    let (send, mut connection) = client::handshake(socket).await.expect("client handshake");
    let ping = connection.ping_pong();
    let client = tokio::spawn(connection);
    (send, counters, server, client, ping)
}

/// Waits until the server has parked `count` times in all.
async fn parked(counters: &Counters, count: usize) {
    tokio::time::timeout(LIMIT, async {
        while counters.parks.load(Ordering::SeqCst) < count {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the idle connection parks: {} parks of {count}, {} refusals",
            counters.parks.load(Ordering::SeqCst),
            counters.refusals.load(Ordering::SeqCst)
        )
    });
}

/// Sends a request and reads its whole answer: (status, `x-echo`, body).
async fn exchange(
    send: &mut client::SendRequest<Bytes>,
    path: &str,
    token: &str,
    body: Bytes,
) -> (u16, Option<String>, Vec<u8>) {
    let request = Request::builder()
        .uri(format!("http://park.test{path}"))
        .method(if body.is_empty() { "GET" } else { "POST" })
        .header("x-token", token)
        .body(())
        .expect("request");
    let work = async {
        let mut ready = send.clone().ready().await.expect("ready");
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
        (status, echo, received)
    };
    tokio::time::timeout(LIMIT, work).await.expect("an answer")
}

#[tokio::test]
async fn hpack_state_and_windows_survive_a_park() {
    let (mut send, counters, server, client, _ping) = start().await;
    // A long value the client's encoder indexes the first time and then
    // sends as a one-byte reference: the server must still have it.
    let token = "t".repeat(200);
    let (status, echo, _) = exchange(&mut send, "/", &token, Bytes::new()).await;
    assert_eq!((status, echo.as_deref()), (200, Some(token.as_str())));
    parked(&counters, 1).await;

    for round in 2..=4 {
        let (status, echo, _) = exchange(&mut send, "/", &token, Bytes::new()).await;
        assert_eq!(
            (status, echo.as_deref()),
            (200, Some(token.as_str())),
            "round {round}"
        );
        parked(&counters, round).await;
    }

    // Both windows: a request body and a response body larger than the
    // initial windows, each after a park.
    let upload = Bytes::from(vec![3u8; LARGE]);
    let (status, _, echoed) = exchange(&mut send, "/", &token, upload.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(echoed.len(), LARGE, "the upload echoed whole");
    assert!(echoed == upload, "the upload echoed unchanged");
    parked(&counters, 5).await;
    let (status, _, download) = exchange(&mut send, "/large", &token, Bytes::new()).await;
    assert_eq!((status, download.len()), (200, LARGE));
    parked(&counters, 6).await;
    // And again, so windows spent before a park are counted after it.
    for round in 7..=9 {
        let (status, _, echoed) = exchange(&mut send, "/", &token, upload.clone()).await;
        assert_eq!((status, echoed.len()), (200, LARGE), "round {round}");
        parked(&counters, round).await;
    }

    drop(send);
    let ended = tokio::time::timeout(LIMIT, server)
        .await
        .expect("server ends");
    ended.expect("server task").expect("a clean end");
    let _ = client.await;
}

#[tokio::test]
async fn a_ping_while_parked_is_answered() {
    let (mut send, counters, server, client, ping) = start().await;
    let (status, _, _) = exchange(&mut send, "/", "a", Bytes::new()).await;
    assert_eq!(status, 200);
    parked(&counters, 1).await;
    let mut ping = ping.expect("the ping handle");
    tokio::time::timeout(LIMIT, ping.ping(crate::Ping::opaque()))
        .await
        .expect("a PONG")
        .expect("the PONG");
    // Parked again once the PONG is written, and still serving.
    parked(&counters, 2).await;
    let (status, echo, _) = exchange(&mut send, "/", "a", Bytes::new()).await;
    assert_eq!((status, echo.as_deref()), (200, Some("a")));
    drop(send);
    let ended = tokio::time::timeout(LIMIT, server)
        .await
        .expect("server ends");
    ended.expect("server task").expect("a clean end");
    let _ = client.await;
}

#[tokio::test]
async fn a_goaway_while_parked_ends_the_connection_cleanly() {
    let (mut send, counters, server, client, ping) = start().await;
    let (status, _, _) = exchange(&mut send, "/", "b", Bytes::new()).await;
    assert_eq!(status, 200);
    parked(&counters, 1).await;
    // The client's last handles gone: it sends GOAWAY and closes.
    drop(send);
    drop(ping);
    let ended = tokio::time::timeout(LIMIT, server)
        .await
        .expect("server ends");
    ended.expect("server task").expect("a clean end");
    let _ = client.await;
}

#[tokio::test]
async fn a_connection_with_a_stream_open_does_not_park() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        let builder = Builder::new();
        let mut connection: Connection<TcpStream, Bytes> =
            builder.handshake(socket).await.expect("handshake");
        let (request, respond) = connection
            .accept()
            .await
            .expect("a request")
            .expect("a good request");
        // The request is held: no park.
        let _ = tokio::time::timeout(Duration::from_millis(20), connection.accept()).await;
        let mut connection = match connection.park() {
            Ok(_) => panic!("parked with a stream open"),
            Err(back) => back,
        };
        answer(request, respond).await;
        // Answered and flushed: it parks.
        let _ = tokio::time::timeout(Duration::from_millis(50), connection.accept()).await;
        let (io, parked) = match connection.park() {
            Ok(parked) => parked,
            Err(_) => panic!("an idle connection refused to park"),
        };
        // What the parked record holds: a few words (the HPACK table's
        // entries are apart, in one allocation).
        assert!(
            std::mem::size_of_val(&parked) <= 224,
            "the parked record is {} bytes",
            std::mem::size_of_val(&parked)
        );
        io.readable().await.expect("readable");
        let mut connection: Connection<TcpStream, Bytes> =
            builder.resume(io, parked).expect("resume");
        let (request, respond) = connection
            .accept()
            .await
            .expect("a second request")
            .expect("a good request");
        answer(request, respond).await;
        // Serve until the client leaves.
        while let Some(next) = connection.accept().await {
            next.expect("no error");
        }
    });
    let socket = TcpStream::connect(addr).await.expect("connect");
    let (mut send, connection) = client::handshake(socket).await.expect("client handshake");
    let client = tokio::spawn(connection);
    let (status, echo, _) = exchange(&mut send, "/", "c", Bytes::new()).await;
    assert_eq!((status, echo.as_deref()), (200, Some("c")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, echo, _) = exchange(&mut send, "/", "c", Bytes::new()).await;
    assert_eq!((status, echo.as_deref()), (200, Some("c")));
    drop(send);
    tokio::time::timeout(LIMIT, server)
        .await
        .expect("server ends")
        .expect("server task");
    let _ = client.await;
}

#[tokio::test]
async fn a_settings_frame_while_parked_is_applied_and_acknowledged() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let counters = Arc::new(Counters::default());
    let server = tokio::spawn(serve(listener, Arc::clone(&counters)));
    let socket = TcpStream::connect(addr).await.expect("connect");
    let (mut send, mut connection) = client::handshake(socket).await.expect("client handshake");
    // The client's connection, driven here so it can be told to send a
    // SETTINGS frame.
    let (window, mut windows) = tokio::sync::mpsc::channel::<u32>(1);
    let client = tokio::spawn(async move {
        loop {
            tokio::select! {
                ended = &mut connection => return ended,
                Some(size) = windows.recv() => connection
                    .set_initial_window_size(size)
                    .expect("SETTINGS sent"),
            }
        }
    });
    let (status, _, _) = exchange(&mut send, "/", "d", Bytes::new()).await;
    assert_eq!(status, 200);
    parked(&counters, 1).await;
    // A larger initial window for the streams the client receives on.
    window.send(1_000_000).await.expect("to the client");
    // Parked again only once the SETTINGS is applied and acknowledged
    // (a connection with a SETTINGS frame unanswered does not park).
    parked(&counters, 2).await;
    let (status, _, download) = exchange(&mut send, "/large", "d", Bytes::new()).await;
    assert_eq!((status, download.len()), (200, LARGE));
    parked(&counters, 3).await;
    drop(send);
    drop(window);
    let ended = tokio::time::timeout(LIMIT, server)
        .await
        .expect("server ends");
    ended.expect("server task").expect("a clean end");
    let _ = client.await;
}
