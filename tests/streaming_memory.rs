//! Bodies stream through the real binary with backpressure: 256 MiB down, up,
//! and both ways at once, while veer's peak resident memory (VmHWM) stays far
//! below the body size.

mod support;

use std::time::Duration;

use http::Request;
use support::binary::VeerProcess;
use support::client::{count_body, get, http1_client, read_answer};
use support::config::{service, ConfigBuilder, LISTENER};
use support::upstream::{generated_body, Upstream};
use support::within;

const SIZE: u64 = 256 << 20;
/// Peak RSS allowed for veer over the whole run: a quarter of one body.
const PEAK_LIMIT_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_256_mib_both_ways_keeps_memory_flat() {
    let up = Upstream::start("stable").await;
    let yaml = ConfigBuilder::new()
        .service(
            service("web")
                .version("stable", &[up.addr()], 1)
                .timeout("request", "10s"),
        )
        .yaml();
    let veer = VeerProcess::start(env!("CARGO_BIN_EXE_veer"), &yaml);
    let addr = veer.listener(LISTENER);
    let started_kib = veer.rss_kib();
    let client = http1_client();

    // Down: 256 MiB from the upstream, counted and dropped chunk by chunk.
    let resp = within(
        Duration::from_secs(20),
        "download head",
        client.request(get(&format!("http://{addr}/download/{SIZE}"), None)),
    )
    .await
    .expect("download through veer");
    assert_eq!(resp.status(), 200);
    let got = within(
        Duration::from_secs(60),
        "256 MiB download",
        count_body(resp.into_body()),
    )
    .await
    .expect("download body");
    assert_eq!(got, SIZE, "bytes downloaded through veer");
    let after_down_kib = veer.peak_rss_kib();

    // Up: 256 MiB to an upstream that counts and drops it.
    let req = Request::post(format!("http://{addr}/sink"))
        .body(generated_body(SIZE))
        .expect("request");
    let resp = within(
        Duration::from_secs(60),
        "256 MiB upload",
        client.request(req),
    )
    .await
    .expect("upload through veer");
    let answer = read_answer(resp).await.expect("upload answer");
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.text(),
        SIZE.to_string(),
        "bytes the upstream received"
    );
    let after_up_kib = veer.peak_rss_kib();

    // Both ways at once: 256 MiB echoed back while it is still being sent.
    let req = Request::post(format!("http://{addr}/echo"))
        .body(generated_body(SIZE))
        .expect("request");
    let resp = within(Duration::from_secs(20), "echo head", client.request(req))
        .await
        .expect("echo through veer");
    assert_eq!(resp.status(), 200);
    let got = within(
        Duration::from_secs(60),
        "256 MiB echo",
        count_body(resp.into_body()),
    )
    .await
    .expect("echo body");
    assert_eq!(got, SIZE, "bytes echoed through veer");
    let peak_kib = veer.peak_rss_kib();

    println!(
        "veer RSS: {started_kib} KiB at start; peak {after_down_kib} KiB after the download, \
         {after_up_kib} KiB after the upload, {peak_kib} KiB after the echo"
    );
    assert!(
        peak_kib < PEAK_LIMIT_KIB,
        "veer's peak RSS was {peak_kib} KiB while streaming {} MiB bodies; \
         it must stay under {PEAK_LIMIT_KIB} KiB (start {started_kib} KiB, after download \
         {after_down_kib} KiB, after upload {after_up_kib} KiB)\n{}",
        SIZE >> 20,
        veer.output()
    );
}
