//! The live page's files, as the admin API serves them: `GET /` is HTML,
//! `/page/app.js` and `/page/style.css` its script and style sheet, each with
//! the strict Content-Security-Policy, `nosniff`, no framing and no caching;
//! the page names nothing outside its origin and carries no inline script
//! or style; unknown assets are 404; and the actions it sends are refused
//! without the token when one is configured. The fields the page reads to
//! show a mirror, a shadow stage, a pause's reason and a shadow stage's
//! history are the ones `/status` and the history send. (The page in a
//! browser: tests/page_browser.rs, feature `browser-tests`.)

mod support;

use http::{Method, Request};
use support::client::{empty, get, http1_client, send, Answer};
use support::harness::start_with_admin;
use support::release::{v, web_yaml};
use support::upstream::Upstream;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header: {:?}", answer.headers))
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_a_strict_policy() {
    let stable = Upstream::start("stable").await;
    let yaml = web_yaml(&[v("stable", stable.addr(), 1)], "", None);
    let (_running, _proxy, admin) = start_with_admin(&yaml, None).await;
    let client = http1_client();

    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/page/app.js", "text/javascript; charset=utf-8"),
        ("/page/style.css", "text/css; charset=utf-8"),
    ] {
        let answer = send(&client, get(&format!("http://{admin}{path}"), None)).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
        assert_eq!(header(&answer, "content-type"), content_type, "{path}");
        assert_eq!(header(&answer, "content-security-policy"), CSP, "{path}");
        assert_eq!(
            header(&answer, "x-content-type-options"),
            "nosniff",
            "{path}"
        );
        assert_eq!(header(&answer, "x-frame-options"), "DENY", "{path}");
        assert_eq!(header(&answer, "cache-control"), "no-store", "{path}");
        let text = answer.text().replace("'http://www.w3.org/2000/svg'", "");
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{path} names another origin"
        );
        assert!(!text.contains("innerHTML"), "{path} writes markup");
        assert!(
            text.len() < 40_000,
            "{path} is {} bytes: keep the page small",
            text.len()
        );
    }

    let index = send(&client, get(&format!("http://{admin}/"), None))
        .await
        .text();
    assert!(
        index.contains("<script src=\"/page/app.js\" defer></script>"),
        "{index}"
    );
    assert!(
        index.contains("<link rel=\"stylesheet\" href=\"/page/style.css\">"),
        "{index}"
    );
    assert_eq!(
        index.matches("<script").count(),
        1,
        "one script, from a file: {index}"
    );
    assert!(
        !index.contains("<style") && !index.contains(" style="),
        "inline style: {index}"
    );
    let handler = index.split(" on").skip(1).any(|rest| {
        let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
        !name.is_empty() && rest[name.len()..].starts_with('=')
    });
    assert!(!handler, "an inline handler: {index}");

    let missing = send(&client, get(&format!("http://{admin}/page/nope.js"), None)).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.text(), "no such page asset; the page is at GET /\n");

    let post = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{admin}/"))
        .body(empty())
        .expect("request");
    let answer = send(&client, post).await;
    assert_eq!(answer.status, 405, "{}", answer.text());
}

#[tokio::test]
async fn the_pages_actions_need_the_token_when_one_is_configured() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret").expect("token");
    let yaml = web_yaml(
        &[
            v("stable", stable.addr(), 90),
            v("canary", canary.addr(), 10),
        ],
        "    guard: { baseline: stable, max_error_rate: 0.5 }\n",
        None,
    )
    .replace(
        "admin:\n  address: \"127.0.0.1:0\"\n",
        &format!(
            "admin:\n  address: \"127.0.0.1:0\"\n  token_file: {}\n",
            serde_json::Value::String(token_file.display().to_string())
        ),
    );
    let (_running, _proxy, admin) = start_with_admin(&yaml, None).await;
    let client = http1_client();
    // What the page sends: a POST with the typed token, or without one.
    for (token, status) in [(None, 401), (Some("wrong"), 401), (Some("s3cret"), 200)] {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{admin}/services/web/rollback"))
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let answer = send(&client, request.body(empty()).expect("request")).await;
        assert_eq!(answer.status, status, "token {token:?}: {}", answer.text());
    }
    // Reading the page and the history needs no token.
    let answer = send(&client, get(&format!("http://{admin}/"), None)).await;
    assert_eq!(answer.status, 200);
    let answer = send(
        &client,
        get(&format!("http://{admin}/services/web/history"), None),
    )
    .await;
    assert_eq!(answer.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
    assert_eq!(body["records"][0]["kind"], "rollback", "{body:#}");
}

#[tokio::test]
async fn the_demo_prints_the_pages_address_first() {
    let out = support::within(
        std::time::Duration::from_secs(60),
        "veer demo",
        tokio::process::Command::new(env!("CARGO_BIN_EXE_veer"))
            .args(["demo", "--duration", "2s"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run veer demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("veer demo: watch the release live at http://127.0.0.1:")
            && first.ends_with('/'),
        "{text}"
    );
}

/// The page draws the mirror panel, the shadow-stage badge, the pause's
/// reason and the shadow step of the history from these fields: each is
/// read by the script, and sent by the admin API under that name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reads_the_mirror_shadow_stage_and_pause_fields_the_api_sends() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let yaml = web_yaml(
        &[
            v("stable", stable.addr(), 100),
            v("canary", canary.addr(), 0),
        ],
        "    guard: { baseline: stable, interval: 200ms, window: 5s, min_requests: 5, max_error_rate: 0.5 }\n\
         \x20   mirror: { version: canary }\n\
         \x20   rollout: { candidate: canary, steps: [50, 100], hold: 1h, shadow: { hold: 1h, max_mismatch_rate: 0.05 } }\n",
        None,
    );
    let (_running, proxy, admin) = start_with_admin(&yaml, None).await;
    let client = http1_client();
    let script = send(&client, get(&format!("http://{admin}/page/app.js"), None))
        .await
        .text();
    let status = |client: support::client::HttpClient| async move {
        let answer = send(&client, get(&format!("http://{admin}/status"), None)).await;
        let body: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
        body["services"][0].clone()
    };

    // In the shadow stage, with copies sent.
    let mut web = status(client.clone()).await;
    for _ in 0..200 {
        let answer = send(&client, get(&format!("http://{proxy}/"), None)).await;
        assert_eq!(answer.status, 200);
        web = status(client.clone()).await;
        if web["mirror"]["pairs"].as_u64() >= Some(5) {
            break;
        }
    }
    let mirror = &web["mirror"];
    let rollout = &web["rollout"];
    assert_eq!(
        (&rollout["step"], &rollout["percent"]),
        (&serde_json::json!(1), &serde_json::json!(0)),
        "the shadow stage: {web:#}"
    );
    for field in [
        "version",
        "percent",
        "copies",
        "in_flight",
        "pairs",
        "window_seconds",
        "mismatch_rate",
        "body_mismatches",
        "latency_ratio_p95",
        "live_errors",
        "verdict",
    ] {
        assert!(
            mirror.get(field).is_some(),
            "/status mirror.{field}: {web:#}"
        );
        assert!(
            script.contains(&format!("m.{field}")),
            "the page reads mirror.{field}"
        );
    }
    for result in ["sent", "dropped", "failed", "skipped"] {
        assert!(
            mirror["copies"].get(result).is_some(),
            "copies.{result}: {web:#}"
        );
        assert!(
            script.contains(&format!("'{result}'")),
            "the page shows {result}"
        );
    }
    assert!(mirror["verdict"].is_string(), "{web:#}");
    assert!(script.contains("Shadow stage in progress: "));

    // A pause with a reason.
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{admin}/services/web/pause"))
        .header("content-type", "application/json")
        .body(support::client::full(
            r#"{"reason": "look at the pairs"}"#.to_string(),
        ))
        .expect("request");
    let answer = send(&client, request).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let web = status(client.clone()).await;
    assert_eq!(
        web["rollout"]["pause_reason"], "by an operator: look at the pairs",
        "{web:#}"
    );
    assert!(script.contains("r.pause_reason"));

    // The history's pause record and its reason.
    let answer = send(
        &client,
        get(&format!("http://{admin}/services/web/history"), None),
    )
    .await;
    let body: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
    assert_eq!(body["records"][0]["kind"], "pause", "{body:#}");
    assert_eq!(
        body["records"][0]["reason"], "by an operator: look at the pairs",
        "{body:#}"
    );
    assert!(script.contains("r.reason"));
    // A shadow step's pairs, as the page reads them.
    for field in ["s.shadow", "p.pairs", "p.mismatch_rate", "p.verdict"] {
        assert!(script.contains(field), "the page reads {field}");
    }
}
