//! Graceful shutdown of the real binary: on SIGTERM or SIGINT veer stops
//! accepting, lets the requests in flight finish, and exits 0.

mod support;

use std::time::Duration;

use support::binary::VeerProcess;
use support::client::{
    get, h2c_connect, http1_client, http1_connect, raw_exchange, read_answer, send, Answer,
};
use support::config::{service, ConfigBuilder, LISTENER};
use support::upstream::Upstream;
use support::{wait_until, within, BoxError};
use tokio::task::JoinHandle;

/// veer on one upstream, with the given drain timeout.
fn start(up: &Upstream, drain_timeout: &str) -> VeerProcess {
    let yaml = ConfigBuilder::new()
        .limit("drain_timeout", drain_timeout)
        .service(
            service("web")
                .version("stable", &[up.addr()], 1)
                .timeout("request", "30s"),
        )
        .yaml();
    VeerProcess::start(env!("CARGO_BIN_EXE_veer"), &yaml)
}

/// Starts `n` slow requests, each on its own HTTP/1.1 connection, plus `n` on
/// one shared h2 connection.
async fn in_flight(
    addr: std::net::SocketAddr,
    path: &str,
    n: usize,
) -> Vec<JoinHandle<Result<Answer, BoxError>>> {
    let url = format!("http://{addr}{path}");
    let mut tasks = Vec::new();
    for _ in 0..n {
        let mut conn = http1_connect(addr).await;
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let resp = conn.send_request(get(&url, None)).await?;
            read_answer(resp).await
        }));
    }
    let h2 = h2c_connect(addr).await;
    for _ in 0..n {
        let mut h2 = h2.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let resp = h2.send_request(get(&url, None)).await?;
            read_answer(resp).await
        }));
    }
    tasks
}

async fn drain_with(signal: &str) {
    let up = Upstream::start("stable").await;
    let mut veer = start(&up, "20s");
    let addr = veer.listener(LISTENER);
    const N: usize = 10;
    let tasks = in_flight(addr, "/delay/1500", N).await;
    // Signal only once every request has reached the upstream.
    wait_until(
        Duration::from_secs(10),
        "all requests in flight at the upstream",
        || up.total() == 2 * N as u64,
    )
    .await;
    veer.signal(signal);

    for (i, task) in tasks.into_iter().enumerate() {
        let result = within(Duration::from_secs(20), "an in-flight request", task)
            .await
            .expect("task");
        match result {
            Ok(answer) => {
                assert_eq!(answer.status, 200, "request {i}: {:?}", answer.text());
                assert_eq!(answer.text(), "stable", "request {i}");
            }
            Err(e) => panic!(
                "request {i} in flight at SIG{signal} failed: {e}\n{}",
                veer.output()
            ),
        }
    }
    let status = veer.wait_exit(Duration::from_secs(20)).await;
    match status {
        Some(status) => assert!(
            status.success(),
            "veer must exit 0 after a clean drain, got {status}\n{}",
            veer.output()
        ),
        None => panic!(
            "veer still running 20 s after SIG{signal}\n{}",
            veer.output()
        ),
    }
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish_then_exits_0() {
    drain_with("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_lets_requests_in_flight_finish_then_exits_0() {
    drain_with("INT").await;
}

/// Idle keep-alive connections do not hold the drain up: with nothing in
/// flight veer exits long before the (30 s) drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_do_not_delay_exit() {
    let up = Upstream::start("stable").await;
    let mut veer = start(&up, "30s");
    let addr = veer.listener(LISTENER);
    let client = http1_client();
    for _ in 0..5 {
        let answer = send(&client, get(&format!("http://{addr}/"), None)).await;
        assert_eq!(answer.status, 200);
    }
    let h2 = h2c_connect(addr).await;
    veer.signal("TERM");
    let status = veer.wait_exit(Duration::from_secs(15)).await;
    match status {
        Some(status) => assert!(status.success(), "exit status {status}\n{}", veer.output()),
        None => panic!(
            "veer waited on idle connections after SIGTERM (still running after 15 s, \
             drain timeout 30 s)\n{}",
            veer.output()
        ),
    }
    drop(h2);
}

/// A request that outlives the drain timeout does not keep veer alive: it is
/// cut at the timeout and veer exits all the same, with status 1 since the
/// drain was not clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_the_wait() {
    let up = Upstream::start("stable").await;
    let mut veer = start(&up, "1s");
    let addr = veer.listener(LISTENER);
    let client = http1_client();
    let url = format!("http://{addr}/hang");
    let hanging =
        tokio::spawn(async move { support::client::try_send(&client, get(&url, None)).await });
    wait_until(
        Duration::from_secs(10),
        "the request at the upstream",
        || up.total() == 1,
    )
    .await;
    veer.signal("TERM");
    let Some(status) = veer.wait_exit(Duration::from_secs(15)).await else {
        panic!(
            "veer still running 15 s after SIGTERM with a 1 s drain timeout\n{}",
            veer.output()
        )
    };
    let result = within(Duration::from_secs(10), "the cut request", hanging)
        .await
        .expect("task");
    assert!(
        result.is_err() || result.as_ref().is_ok_and(|a| a.status != 200),
        "{result:?}"
    );
    // Not a clean drain: the contract's exit 0 is for a clean one, and veer
    // says otherwise with 1 (it still exits on its own, not by a signal).
    assert_eq!(
        status.code(),
        Some(1),
        "exit status after a drain cut short: {status}\n{}",
        veer.output()
    );
}

/// A config change that lands while veer drains (a GitOps sync racing a
/// rolling restart) must not open a listener behind the drain's back: its
/// accept loop could take a connection permit before the drain counts them,
/// and the drain would then wait for it until the drain timeout (seen once
/// in a test run as exit 1 after 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_during_the_drain_opens_no_listener() {
    let up = Upstream::start("stable").await;
    let mut veer = start(&up, "20s");
    let addr = veer.listener(LISTENER);
    let tasks = in_flight(addr, "/delay/1500", 1).await;
    wait_until(
        Duration::from_secs(10),
        "both requests in flight at the upstream",
        || up.total() == 2,
    )
    .await;
    veer.signal("TERM");

    // The same config plus a listener on a port known to be free: on an
    // address of this process's own, so no other test can take it meanwhile
    // and answer the connect below.
    let free =
        std::net::TcpListener::bind((support::own_loopback(1), 0)).expect("probe a free port");
    let extra = free.local_addr().expect("free port");
    drop(free);
    let path = veer.config_path();
    let yaml = std::fs::read_to_string(&path).expect("read config");
    let with_extra = yaml.replacen(
        "listeners:\n",
        &format!("listeners:\n  - name: extra\n    address: \"{extra}\"\n"),
        1,
    );
    let staged = path.with_extension("new");
    std::fs::write(&staged, with_extra).expect("write config");
    std::fs::rename(&staged, &path).expect("replace config");
    // The admin API answers through the drain: the reload runs now.
    let admin = veer
        .output()
        .lines()
        .find_map(|l| l.trim().strip_prefix("veer: admin on ")?.parse().ok())
        .expect("the admin address");
    let reply = raw_exchange(
        admin,
        b"POST /reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    assert!(
        tokio::net::TcpStream::connect(extra).await.is_err(),
        "a listener was opened during the drain\n{}",
        veer.output()
    );

    for task in tasks {
        let answer = within(Duration::from_secs(20), "an in-flight request", task)
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("a request in flight failed: {e}\n{}", veer.output()));
        assert_eq!(answer.status, 200);
    }
    let status = veer.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "veer must exit 0 once its requests finished, got {status:?}\n{}",
        veer.output()
    );
}
