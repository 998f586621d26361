//! The routing table: exact and wildcard hosts (port ignored), the longest
//! path prefix, 404 for no match, and no forwarding to a host the config does
//! not name (no open proxy).

mod support;

use std::time::Duration;

use http::Request;
use support::client::{
    empty, get, h2c_connect, http1_client, raw_exchange, read_answer, send, HttpClient,
};
use support::config::{service, ConfigBuilder};
use support::harness::TestProxy;
use support::upstream::Upstream;
use support::within;

struct Fixture {
    app: Upstream,
    api: Upstream,
    api_v2: Upstream,
    wild: Upstream,
    proxy: TestProxy,
    client: HttpClient,
}

impl Fixture {
    fn upstreams(&self) -> [&Upstream; 4] {
        [&self.app, &self.api, &self.api_v2, &self.wild]
    }

    fn forwarded(&self) -> u64 {
        self.upstreams().iter().map(|u| u.total()).sum()
    }

    /// Which upstream answered `GET path` with `Host: host` (asserting a 200).
    async fn route(&self, host: &str, path: &str) -> String {
        let answer = send(&self.client, get(&self.proxy.url(path), Some(host))).await;
        assert_eq!(
            answer.status,
            200,
            "Host: {host}, path {path}: body {:?}",
            answer.text()
        );
        answer.upstream().unwrap_or("(none)").to_string()
    }
}

async fn fixture() -> Fixture {
    let app = Upstream::start("app").await;
    let api = Upstream::start("api").await;
    let api_v2 = Upstream::start("api-v2").await;
    let wild = Upstream::start("wild").await;
    let yaml = ConfigBuilder::new()
        .service(
            service("app")
                .hosts(&["app.example"])
                .version("v1", &[app.addr()], 1),
        )
        .service(
            service("app-api")
                .hosts(&["app.example"])
                .prefix("/api")
                .version("v1", &[api.addr()], 1),
        )
        .service(
            service("app-api-v2")
                .hosts(&["app.example"])
                .prefix("/api/v2")
                .version("v1", &[api_v2.addr()], 1),
        )
        .service(
            service("wild")
                .hosts(&["*.wild.example"])
                .version("v1", &[wild.addr()], 1),
        )
        .yaml();
    let proxy = TestProxy::start(&yaml).await;
    Fixture {
        app,
        api,
        api_v2,
        wild,
        proxy,
        client: http1_client(),
    }
}

#[tokio::test]
async fn exact_host_routes_and_its_port_is_ignored() {
    let f = fixture().await;
    assert_eq!(f.route("app.example", "/").await, "app");
    assert_eq!(f.route("app.example:8080", "/index.html").await, "app");
    assert_eq!(f.route("app.example:80", "/").await, "app");
    // Host names are case-insensitive.
    assert_eq!(f.route("APP.Example", "/").await, "app");
    // The upstream sees the Host the client sent.
    assert_eq!(
        f.app.last_request().and_then(|r| r.host()).as_deref(),
        Some("APP.Example")
    );
}

#[tokio::test]
async fn wildcard_host_matches_subdomains_only() {
    let f = fixture().await;
    assert_eq!(f.route("a.wild.example", "/").await, "wild");
    assert_eq!(f.route("x.y.wild.example:9000", "/deep/path").await, "wild");

    // `*.wild.example` does not match `wild.example` itself, nor a name that
    // merely ends in the same letters.
    for host in ["wild.example", "notwild.example", "a.wild.example.evil"] {
        let answer = send(&f.client, get(&f.proxy.url("/"), Some(host))).await;
        answer.assert_proxy_error(404);
    }
    assert_eq!(f.wild.total(), 2);
}

#[tokio::test]
async fn longest_path_prefix_wins() {
    let f = fixture().await;
    for (path, expected) in [
        ("/", "app"),
        ("/index.html", "app"),
        ("/api", "api"),
        ("/api/users", "api"),
        ("/api/v2", "api-v2"),
        ("/api/v2/users/7", "api-v2"),
        ("/api/v1/users", "api"),
    ] {
        assert_eq!(f.route("app.example", path).await, expected, "path {path}");
    }
    // The path reaches the upstream unchanged (no prefix stripping).
    assert_eq!(f.api_v2.count("/api/v2/users/7"), 1);
    // The query string is not part of the match, and passes unchanged.
    assert_eq!(f.route("app.example", "/api/v2/x?from=/y").await, "api-v2");
    assert_eq!(
        f.api_v2
            .last_request()
            .map(|r| r.uri.path_and_query().map(|p| p.to_string())),
        Some(Some("/api/v2/x?from=/y".to_string()))
    );
}

#[tokio::test]
async fn no_match_is_404_naming_host_and_path() {
    let f = fixture().await;
    let answer = send(
        &f.client,
        get(&f.proxy.url("/some/path?q=1"), Some("other.example")),
    )
    .await;
    answer.assert_proxy_error(404);
    let body = answer.text();
    assert!(
        body.contains("other.example"),
        "the 404 body names the host: {body:?}"
    );
    assert!(
        body.contains("/some/path"),
        "the 404 body names the path: {body:?}"
    );
    assert_eq!(f.forwarded(), 0, "nothing reached any upstream");

    // A request without any Host at all (HTTP/1.0) matches nothing either:
    // every service here names its hosts (404, or 400 for the missing Host).
    let reply = raw_exchange(
        f.proxy.addr(),
        b"GET /api HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        matches!(reply.status(), Some(400 | 404)),
        "reply {:?}",
        reply.text()
    );
    assert_eq!(f.forwarded(), 0, "nothing reached any upstream");

    // The proxy keeps serving.
    assert_eq!(f.route("app.example", "/").await, "app");
}

/// veer is no open proxy: whatever a client names (the upstream's own
/// address, an absolute-form URI, CONNECT, an h2 `:authority`), a host the
/// config does not name never reaches an upstream.
#[tokio::test]
async fn a_host_not_in_config_is_never_forwarded() {
    let f = fixture().await;
    let target = f.app.addr();

    // The upstream's own address as Host.
    let answer = send(&f.client, get(&f.proxy.url("/"), Some(&target.to_string()))).await;
    answer.assert_proxy_error(404);

    // Absolute-form request line pointing at the upstream, forward-proxy style.
    for request in [
        format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"),
        format!("GET http://{target}/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"),
        "GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
            .to_string(),
    ] {
        let reply = raw_exchange(f.proxy.addr(), request.as_bytes(), Duration::from_secs(5)).await;
        let status = reply.status();
        assert!(
            matches!(status, Some(400..=499)),
            "{request:?} must be refused, got {:?}",
            reply.text()
        );
    }

    // CONNECT: no tunnel to anywhere.
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    let reply = raw_exchange(f.proxy.addr(), request.as_bytes(), Duration::from_secs(3)).await;
    let status = reply.status();
    assert!(
        !matches!(status, Some(200..=299)),
        "CONNECT must not open a tunnel, got {:?}",
        reply.text()
    );

    // HTTP/2 with an unknown :authority.
    let mut h2 = h2c_connect(f.proxy.addr()).await;
    for authority in ["evil.example", &target.to_string()] {
        let req = Request::get(format!("http://{authority}/"))
            .body(empty())
            .expect("request");
        let resp = within(Duration::from_secs(20), "h2 request", h2.send_request(req))
            .await
            .expect("h2 response");
        let answer = read_answer(resp).await.expect("h2 body");
        answer.assert_proxy_error(404);
    }

    assert_eq!(
        f.forwarded(),
        0,
        "an upstream received a request for a host the config does not name"
    );
    assert_eq!(f.app.connections(), 0, "veer must not even connect");
}

#[tokio::test]
async fn h2_authority_routes_like_host() {
    let f = fixture().await;
    let mut h2 = h2c_connect(f.proxy.addr()).await;
    for (uri, expected) in [
        ("http://app.example/", "app"),
        ("http://app.example:8080/api/v2/x", "api-v2"),
        ("http://b.wild.example/", "wild"),
    ] {
        let req = Request::get(uri).body(empty()).expect("request");
        let resp = within(Duration::from_secs(20), "h2 request", h2.send_request(req))
            .await
            .expect("h2 response");
        let answer = read_answer(resp).await.expect("h2 body");
        assert_eq!(answer.status, 200, "{uri}: {:?}", answer.text());
        assert_eq!(answer.upstream(), Some(expected), "{uri}");
    }
    // An HTTP/1.1 upstream gets a Host header built from :authority.
    assert_eq!(
        f.wild.last_request().and_then(|r| r.host()).as_deref(),
        Some("b.wild.example")
    );
}

#[tokio::test]
async fn a_service_without_hosts_matches_any_host() {
    let named = Upstream::start("named").await;
    let any = Upstream::start("any").await;
    let yaml = ConfigBuilder::new()
        .service(
            service("named")
                .hosts(&["app.example"])
                .version("v1", &[named.addr()], 1),
        )
        .service(
            service("any")
                .prefix("/public")
                .version("v1", &[any.addr()], 1),
        )
        .yaml();
    let proxy = TestProxy::start(&yaml).await;
    let client = http1_client();
    for host in ["random.example", "10.1.2.3:8080", "localhost"] {
        let answer = send(&client, get(&proxy.url("/public/x"), Some(host))).await;
        assert_eq!(answer.status, 200, "Host {host}: {:?}", answer.text());
        assert_eq!(answer.upstream(), Some("any"), "Host {host}");
    }
    // Outside its prefix, the host-less service does not match.
    let answer = send(&client, get(&proxy.url("/private"), Some("random.example"))).await;
    answer.assert_proxy_error(404);
    assert_eq!(named.total(), 0);
}
