//! What an idle client connection costs veer's heap, counted by a global
//! allocator in this test binary (a byte count, not a timing): HTTP/1.1
//! keep-alive connections are parked as bare sockets between requests, with
//! no task of their own, and must cost at most 640 bytes each; an idle
//! HTTP/2 connection's cost is printed beside it. The clients are `std`
//! sockets, which allocate nothing, so every byte counted is the proxy's.
//!
//! One test in its own binary: other tests' allocations would be counted.

mod support;

use std::alloc::System;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use support::config::{service, ConfigBuilder};
use support::harness::TestProxy;
use support::raw::closed_port;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap bytes allocated and not yet freed.
fn live() -> isize {
    let stats = GLOBAL.stats();
    stats.bytes_allocated as isize - stats.bytes_deallocated as isize
}

/// Connections per measured batch.
const N: usize = 400;
const KEEP_ALIVE: &[u8] = b"GET / HTTP/1.1\r\nHost: nobody.example\r\n\r\n";
/// The HTTP/2 preface, an empty SETTINGS and the ACK of the server's.
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\
    \x00\x00\x00\x04\x00\x00\x00\x00\x00\
    \x00\x00\x00\x04\x01\x00\x00\x00\x00";

/// Live heap bytes once they stop moving (the connections' tasks settle).
async fn settled() -> isize {
    let mut last = live();
    let mut still = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let now = live();
        if (now - last).abs() < 256 {
            still += 1;
            if still == 3 {
                return now;
            }
        } else {
            still = 0;
        }
        last = now;
    }
    last
}

/// Reads one response (head and a `Content-Length` body) off `stream`.
fn read_response(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let n = stream.read(&mut buf).expect("read a response");
        assert!(n > 0, "veer closed a keep-alive connection: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return got;
            }
        }
    }
}

/// Opens `n` connections to `addr`, each says `hello` and, for HTTP/1.1,
/// reads its answer; returns them, open and idle.
fn open(addr: SocketAddr, n: usize, hello: &'static [u8], http1: bool) -> Vec<TcpStream> {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        stream.write_all(hello).expect("write");
        if http1 {
            let answer = read_response(&mut stream);
            assert!(answer.starts_with(b"HTTP/1.1 404"), "{answer:?}");
        } else {
            // The server's SETTINGS: the preface was taken.
            let mut frame = [0u8; 9];
            stream.read_exact(&mut frame).expect("server SETTINGS");
            assert_eq!(frame[3], 4, "a SETTINGS frame first");
        }
        all.push(stream);
    }
    all
}

/// Bytes of heap per connection of a batch of `N` opened with `hello`.
async fn per_connection(addr: SocketAddr, hello: &'static [u8], http1: bool) -> isize {
    let before = settled().await;
    let conns = tokio::task::spawn_blocking(move || open(addr, N, hello, http1))
        .await
        .expect("clients");
    let after = settled().await;
    drop(conns);
    (after - before) / N as isize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_costs_at_most_a_kib() {
    let yaml = ConfigBuilder::new()
        .limit("header_read_timeout", "60s")
        .service(
            service("web")
                .hosts(&["app.example"])
                .version("stable", &[closed_port()], 1),
        )
        .yaml();
    let proxy = TestProxy::start(&yaml).await;
    let addr = proxy.addr();
    // The first connections pay for what is made once (tokio's slab pages,
    // the blocking pool's thread, caches): keep them open, out of the count.
    let warm = tokio::task::spawn_blocking(move || {
        let mut warm = open(addr, 64, KEEP_ALIVE, true);
        warm.extend(open(addr, 64, H2_HELLO, false));
        warm
    })
    .await
    .expect("warm-up");

    let http1 = per_connection(addr, KEEP_ALIVE, true).await;
    let http2 = per_connection(addr, H2_HELLO, false).await;
    println!("heap per idle connection: HTTP/1.1 keep-alive {http1} B, HTTP/2 (h2c, no stream) {http2} B");
    // A parked connection is a slot in the parking lot (about 490 B in a
    // debug build, 256 of them tokio's registration of the socket, which
    // no build changes). One that kept hyper's buffers would hold some
    // 20 KiB, one that kept a waiting task of its own about 1,050 B, one
    // that kept its request context and a timer too about 1,500 B.
    let bound = 640;
    assert!(
        http1 <= bound,
        "an idle HTTP/1.1 keep-alive connection holds {http1} bytes of heap (at most {bound})"
    );
    drop(warm);
    proxy.shutdown().await;
}
