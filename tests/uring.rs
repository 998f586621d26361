//! The real binary with `VEER_IO=uring` (feature `io-uring`): client
//! connections accepted and served through io_uring do what the epoll path
//! does — forwarding, keep-alive, HTTP/2 with prior knowledge, large bodies
//! both ways, clients that leave mid-request or say nothing, upgrades
//! refused with a reason, and the drain on SIGTERM. `.ci/uring` runs these
//! only where io_uring can be set up.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use support::binary::VeerProcess;
use support::client::{
    channel_body, count_body, get, h2c_connect, http1_client, http1_connect, raw_exchange,
    read_answer, read_until_close, send,
};
use support::config::{service, ConfigBuilder, LISTENER};
use support::upstream::Upstream;
use support::{wait_until, within};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_veer");
const URING: &[(&str, &str)] = &[("VEER_IO", "uring")];

fn start(up: &Upstream, limits: &[(&str, &str)]) -> VeerProcess {
    let mut config = ConfigBuilder::new();
    for (key, value) in limits {
        config = config.limit(key, value);
    }
    let yaml = config
        .service(
            service("web")
                .version("stable", &[up.addr()], 1)
                .timeout("request", "30s"),
        )
        .yaml();
    VeerProcess::start_with_args(BIN, &yaml, &["--workers", "1"], URING)
}

/// Whether process `pid` has an io_uring open: each ring is a file
/// descriptor on the anonymous inode `[io_uring]`.
fn holds_a_ring(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the process's descriptors")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .any(|target| target.to_string_lossy().contains("io_uring"))
}

#[tokio::test]
async fn forwards_over_pooled_and_single_keep_alive_connections() {
    let up = Upstream::start("stable").await;
    let veer = start(&up, &[]);
    let addr = veer.listener(LISTENER);
    let url = format!("http://{addr}/");
    assert!(
        holds_a_ring(veer.pid()),
        "VEER_IO=uring started no io_uring\n{}",
        veer.output()
    );
    let client = http1_client();
    for _ in 0..50 {
        let answer = send(&client, get(&url, None)).await;
        assert_eq!(answer.status, 200, "{}", veer.output());
        assert_eq!(answer.text(), "stable");
    }
    // One connection, many requests: keep-alive holds.
    let mut conn = http1_connect(addr).await;
    for i in 0..50 {
        let response = conn
            .send_request(get(&url, None))
            .await
            .unwrap_or_else(|e| panic!("request {i} on one connection: {e}\n{}", veer.output()));
        let answer = read_answer(response).await.expect("answer");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "stable");
    }
}

#[tokio::test]
async fn serves_http2_with_prior_knowledge_on_the_same_port() {
    let up = Upstream::start("stable").await;
    let veer = start(&up, &[]);
    let addr = veer.listener(LISTENER);
    let h2 = h2c_connect(addr).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut h2 = h2.clone();
        let url = format!("http://{addr}/delay/20");
        tasks.push(tokio::spawn(async move {
            let response = h2.send_request(get(&url, None)).await.expect("h2 request");
            read_answer(response).await.expect("h2 answer")
        }));
    }
    for task in tasks {
        let answer = task.await.expect("task");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "stable");
    }
}

#[tokio::test]
async fn streams_large_bodies_both_ways() {
    let up = Upstream::start("stable").await;
    let veer = start(&up, &[]);
    let addr = veer.listener(LISTENER);
    let mut conn = http1_connect(addr).await;
    const DOWN: u64 = 16 * 1024 * 1024;
    let response = conn
        .send_request(get(&format!("http://{addr}/download/{DOWN}"), None))
        .await
        .expect("download");
    assert_eq!(response.status(), 200);
    assert_eq!(count_body(response.into_body()).await.expect("body"), DOWN);

    // An upload streamed in chunks, read back whole by the upstream.
    let (chunks, body) = channel_body();
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/sink"))
        .body(body)
        .expect("request");
    let sending = tokio::spawn(async move {
        for _ in 0..256 {
            chunks
                .send(Bytes::from(vec![b'x'; 32 * 1024]))
                .await
                .expect("send a chunk");
        }
    });
    let response = conn.send_request(request).await.expect("upload");
    sending.await.expect("sender");
    let answer = read_answer(response).await.expect("answer");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), (256 * 32 * 1024).to_string());
}

#[tokio::test]
async fn a_client_that_leaves_mid_request_does_not_hurt_the_next() {
    let up = Upstream::start("stable").await;
    let veer = start(&up, &[]);
    let addr = veer.listener(LISTENER);
    for _ in 0..5 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                b"POST /sink HTTP/1.1\r\nHost: web\r\nContent-Length: 100000\r\n\r\nhalf a bo",
            )
            .await
            .expect("write");
        drop(stream);
        // And one that leaves in the middle of its head.
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHo")
            .await
            .expect("write");
        drop(stream);
    }
    let answer = send(&http1_client(), get(&format!("http://{addr}/"), None)).await;
    assert_eq!(answer.status, 200, "{}", veer.output());
    assert_eq!(answer.text(), "stable");
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_header_read_timeout() {
    let up = Upstream::start("stable").await;
    let veer = start(&up, &[("header_read_timeout", "300ms")]);
    let addr = veer.listener(LISTENER);
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let reply = within(
        Duration::from_secs(10),
        "the silent connection's close",
        read_until_close(&mut stream, Duration::from_secs(10)),
    )
    .await;
    assert!(
        reply.closed,
        "veer kept a silent connection open\n{}",
        veer.output()
    );
    // An idle keep-alive connection too, after its response.
    let reply = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: web\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    assert!(reply.closed, "an idle keep-alive connection stayed open");
}

#[tokio::test]
async fn an_upgrade_is_refused_with_what_to_do() {
    let up = Upstream::start("stable").await;
    let veer = start(&up, &[]);
    let addr = veer.listener(LISTENER);
    let reply = raw_exchange(
        addr,
        b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(reply.status(), Some(501), "{}", reply.text());
    assert!(
        reply.text().contains("x-veer-error: upgrade_unsupported"),
        "{}",
        reply.text()
    );
    assert!(
        reply.text().contains(
            "veer: upgrades (WebSocket, CONNECT) are not served with VEER_IO=uring; unset VEER_IO to serve them"
        ),
        "{}",
        reply.text()
    );
    assert_eq!(up.total(), 0, "the upgrade must not reach the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_closes_idle_ones_and_exits_0() {
    let up = Upstream::start("stable").await;
    let mut veer = start(&up, &[("drain_timeout", "20s")]);
    let addr = veer.listener(LISTENER);
    // An idle keep-alive connection, and slow requests in flight.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    const N: u64 = 5;
    let mut tasks = Vec::new();
    for _ in 0..N {
        let mut conn = http1_connect(addr).await;
        let url = format!("http://{addr}/delay/1000");
        tasks.push(tokio::spawn(async move {
            let response = conn.send_request(get(&url, None)).await?;
            read_answer(response).await
        }));
    }
    wait_until(Duration::from_secs(10), "requests at the upstream", || {
        up.total() == N
    })
    .await;
    veer.signal("TERM");
    for task in tasks {
        let answer = within(Duration::from_secs(20), "a request in flight", task)
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("a request in flight failed: {e}\n{}", veer.output()));
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "stable");
    }
    let reply = read_until_close(&mut idle, Duration::from_secs(10)).await;
    assert!(
        reply.closed,
        "the idle connection was not closed by the drain"
    );
    let status = veer.wait_exit(Duration::from_secs(20)).await;
    match status {
        Some(status) => assert!(status.success(), "exit {status}\n{}", veer.output()),
        None => panic!("veer still running 20 s after SIGTERM\n{}", veer.output()),
    }
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is still open"
    );
}

#[test]
fn uring_needs_one_worker_and_a_known_mode() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("veer.yaml");
    let yaml = ConfigBuilder::new()
        .service(service("web").version("stable", &["127.0.0.1:9".parse().expect("addr")], 1))
        .yaml();
    std::fs::write(&config, yaml).expect("write config");
    let cases: [(&[&str], &str, &str); 2] = [
        (
            &["--workers", "2"],
            "uring",
            "veer: cannot start the async runtime: VEER_IO=uring serves on one thread: run it with --workers 1",
        ),
        (
            &["--workers", "1"],
            "io_uring",
            "veer: cannot start the async runtime: VEER_IO=\"io_uring\" is not an I/O mode; use epoll or uring",
        ),
    ];
    for (args, mode, message) in cases {
        let out = std::process::Command::new(BIN)
            .arg("run")
            .arg("-c")
            .arg(&config)
            .args(args)
            .env("VEER_IO", mode)
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run veer");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "VEER_IO={mode}: {stderr}");
        assert!(stderr.contains(message), "VEER_IO={mode}: {stderr}");
    }
}

/// A free port on loopback, for a listener a reload adds.
fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

/// A listener a reload adds accepts through the ring too (it is started
/// from the reload's thread), and one a reload removes stops accepting even
/// with an accept in flight.
#[tokio::test]
async fn a_reload_adds_and_removes_listeners_on_the_ring() {
    let up = Upstream::start("stable").await;
    let veer = start(&up, &[]);
    let base = std::fs::read_to_string(veer.config_path()).expect("config");
    let second = free_port();
    let with_second = base.replacen(
        "admin:",
        &format!("  - name: second\n    address: \"{second}\"\nadmin:"),
        1,
    );
    let write = |yaml: &str| {
        let next = veer.config_path().with_extension("next");
        std::fs::write(&next, yaml).expect("write config");
        std::fs::rename(&next, veer.config_path()).expect("replace config");
    };
    write(&with_second);
    let url = format!("http://{second}/");
    wait_until_async(Duration::from_secs(15), "the added listener serves", || async {
        let client = http1_client();
        matches!(support::client::try_send(&client, get(&url, None)).await, Ok(answer) if answer.status == 200)
    })
    .await;
    write(&base);
    // The port comes free with no client knocking: an accept left in the
    // ring does not keep the listening socket open.
    wait_until(
        Duration::from_secs(15),
        "the removed listener's port to be free",
        || std::net::TcpListener::bind(second).is_ok(),
    )
    .await;
    wait_until_async(
        Duration::from_secs(15),
        "the removed listener refuses",
        || async { TcpStream::connect(second).await.is_err() },
    )
    .await;
    let answer = send(
        &http1_client(),
        get(&format!("http://{}/", veer.listener(LISTENER)), None),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", veer.output());
}

async fn wait_until_async<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
