//! The live page in a real browser: headless Chromium driven through
//! chromedriver (WebDriver, with `fantoccini`) against the real binary.
//!
//! A rollout runs under paced load; the canary's revision carries markup
//! (`<img src=x onerror=...>`), which the page must show as text with no
//! script run. The page's charts fill; the canary starts failing and the
//! trip appears on the page (a mark on the chart, a row in the history);
//! without the token an action is refused, with the token typed into the
//! page `Resume` and `Rollback` act (checked through `/status`); the browser
//! console holds no Content-Security-Policy violation or script error.
//! A second release starts with a shadow stage: the page shows the mirror's
//! copies and pairs and the stage in progress, a pause's reason, and once the
//! shadow fails, the history's rollout row with the stage's pairs.
//! Screenshots go to `target/page-screenshots/` (or `VEER_PAGE_ARTIFACTS`).
//!
//! Needs `chromium` and `chromedriver` (Debian: `chromium`, `chromium-driver`;
//! `CHROMIUM` and `CHROMEDRIVER` name others): `.ci/page` installs them and
//! runs `cargo test --features browser-tests --test page_browser`.
#![cfg(feature = "browser-tests")]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use support::binary::VeerProcess;
use support::client::{get, http1_client, send, HttpClient};
use support::release::{admin_of, paced_load, status_at, web, BIN, LIMIT};
use support::upstream::Upstream;

const TOKEN: &str = "page-test-token";
const MARKUP: &str = "1.2.0<img src=x onerror=window.veerXss=1>";

/// chromedriver, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver(client: &HttpClient) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port for chromedriver")
        .port();
    let program = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let child = Command::new(&program)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("start {program} (Debian: apt-get install chromium-driver): {e}")
        });
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        // Listening first: the test client treats a refused connection as a failure.
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            let ready = tokio::time::timeout(
                Duration::from_secs(5),
                support::client::try_send(client, get(&format!("{}/status", driver.url), None)),
            )
            .await;
            // A driver still starting may reset the connection: try again.
            if matches!(ready, Ok(Ok(ref a)) if a.status == 200) {
                return driver;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromedriver did not answer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut options = json!({
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1800"],
    });
    if let Ok(binary) = std::env::var("CHROMIUM") {
        options["binary"] = Value::String(binary);
    } else if std::path::Path::new("/usr/bin/chromium").exists() {
        options["binary"] = Value::String("/usr/bin/chromium".into());
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);
    caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session through chromedriver")
}

/// Everything the browser console said since the last call.
async fn console(client: &HttpClient, driver: &Driver, browser: &Client) -> Vec<String> {
    let id = browser
        .session_id()
        .await
        .expect("session id")
        .expect("a session");
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("{}/session/{id}/se/log", driver.url))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(support::client::full(
            json!({"type": "browser"}).to_string(),
        ))
        .expect("log request");
    let answer = send(client, request).await;
    let body: Value = serde_json::from_slice(&answer.body).expect("log JSON");
    body["value"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|e| format!("{} {}", e["level"], e["message"]))
                .collect()
        })
        .unwrap_or_default()
}

fn artifacts() -> PathBuf {
    let dir = std::env::var_os("VEER_PAGE_ARTIFACTS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/page-screenshots"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    std::fs::write(artifacts().join(format!("{name}.png")), png).expect("write screenshot");
}

/// Polls the page until `script` (a function body returning a value) returns
/// something truthy; panics with `what` and a screenshot otherwise.
async fn until(browser: &Client, what: &str, script: &str) -> Value {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let value = browser.execute(script, vec![]).await.expect("execute");
        let truthy = match &value {
            Value::Null | Value::Bool(false) => false,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if truthy {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            screenshot(browser, &format!("failed-{}", what.replace(' ', "-"))).await;
            panic!("{what}: not seen on the page within {LIMIT:?} (last: {value})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn web_status(client: &HttpClient, admin: SocketAddr) -> Value {
    web(&status_at(client, admin).await).clone()
}

async fn click(browser: &Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_release_escapes_names_and_acts_only_with_the_token() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token file");
    let yaml = format!(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n\
         admin:\n  address: \"127.0.0.1:0\"\n  token_file: {token}\n\
         services:\n  - name: web\n    versions:\n\
         \x20     - {{ name: stable, revision: \"1.1.0\", endpoints: [\"{stable}\"], weight: 100 }}\n\
         \x20     - {{ name: canary, revision: {markup}, endpoints: [\"{canary}\"], weight: 0 }}\n\
         \x20   guard: {{ baseline: stable, interval: 200ms, window: 10s, min_requests: 20, consecutive: 2, max_error_rate: 0.2 }}\n\
         \x20   rollout: {{ candidate: canary, steps: [50, 100], hold: 1h }}\n",
        token = Value::String(token_file.display().to_string()),
        stable = stable.addr(),
        canary = canary.addr(),
        markup = Value::String(MARKUP.into()),
    );
    let client = http1_client();
    let veer = VeerProcess::start(BIN, &yaml);
    let admin = admin_of(&veer);
    let proxy = veer.listener(support::config::LISTENER);
    let load = paced_load(
        client.clone(),
        format!("http://{proxy}/"),
        60,
        6_000,
        Duration::from_secs(60),
    )
    .start(support::load::status_and_upstream);

    let driver = start_driver(&client).await;
    let page = browser(&driver).await;
    page.goto(&format!("http://{admin}/"))
        .await
        .expect("open the page");
    assert_eq!(page.title().await.expect("title"), "veer");

    // The markup in the revision is text, and nothing ran.
    let shown = until(
        &page,
        "the canary's revision",
        "const c = [...document.querySelectorAll('.version .muted')].find(e => e.textContent.includes('img'));\
         return c ? c.textContent : null;",
    )
    .await;
    assert_eq!(shown, Value::String(format!("revision {MARKUP}")));
    let images = page
        .execute("return document.querySelectorAll('img').length;", vec![])
        .await
        .expect("count images");
    assert_eq!(images, json!(0), "markup from the API became elements");

    // The charts fill as /status is polled.
    until(
        &page,
        "chart lines",
        "return document.querySelectorAll('section.service svg.chart polyline.s-rps').length >= 2;",
    )
    .await;
    screenshot(&page, "1-rollout").await;

    // The canary fails: the trip shows as a mark and a history row.
    canary.set_fail_ratio(1.0);
    until(
        &page,
        "the trip in the history",
        "return document.querySelector('tr.record[data-kind=trip]') !== null;",
    )
    .await;
    until(
        &page,
        "the trip mark",
        "return document.querySelector('svg.chart .trip-head') !== null;",
    )
    .await;
    screenshot(&page, "2-trip").await;
    canary.set_fail_ratio(0.0);

    // Resume without the token: refused, nothing changes.
    click(&page, "section.service button.resume").await;
    until(
        &page,
        "the refusal",
        "return document.getElementById('message').textContent.includes('refused (401)');",
    )
    .await;
    assert_eq!(
        web_status(&client, admin).await["guard"]["latches"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // With the token typed in: resume, then rollback.
    page.find(Locator::Id("token"))
        .await
        .expect("token field")
        .send_keys(TOKEN)
        .await
        .expect("type the token");
    click(&page, "section.service button.resume").await;
    until(
        &page,
        "resume done",
        "return document.getElementById('message').textContent === 'resume web: done';",
    )
    .await;
    let after = web_status(&client, admin).await;
    assert_eq!(after["guard"]["latches"], json!([]), "{after:#}");
    assert_eq!(after["rollout"]["state"], "in_progress", "{after:#}");

    click(&page, "section.service button.rollback").await;
    until(
        &page,
        "rollback done",
        "return document.getElementById('message').textContent === 'rollback web: done';",
    )
    .await;
    let after = web_status(&client, admin).await;
    let canary_now = after["versions"]
        .as_array()
        .and_then(|all| all.iter().find(|v| v["name"] == "canary"))
        .expect("canary in /status");
    assert_eq!(canary_now["weight"], 0, "{after:#}");
    assert_eq!(canary_now["latched"], true, "{after:#}");
    until(
        &page,
        "the rollback row",
        "return document.querySelector('tr.record[data-kind=rollback]') !== null;",
    )
    .await;
    screenshot(&page, "3-rolled-back").await;

    // The token is nowhere but in memory.
    let leaked = page
        .execute(
            "return [location.href, document.cookie, JSON.stringify(localStorage), JSON.stringify(sessionStorage)].join(' ');",
            vec![json!(TOKEN)],
        )
        .await
        .expect("read storage");
    assert!(!leaked.to_string().contains(TOKEN), "{leaked}");
    let ran = page
        .execute("return window.veerXss === undefined;", vec![])
        .await
        .expect("xss check");
    assert_eq!(ran, json!(true), "the revision's markup ran");

    // The console: the refused action's 401 is expected; nothing else.
    let log = console(&client, &driver, &page).await;
    let bad: Vec<&String> = log
        .iter()
        .filter(|line| !line.contains("401"))
        .filter(|line| {
            line.contains("SEVERE")
                || line.contains("Content Security Policy")
                || line.contains("Refused to")
        })
        .collect();
    assert!(bad.is_empty(), "console errors: {bad:#?}\nall: {log:#?}");
    let _ = page.close().await;
    let _ = load.finish().await;
}

/// A service that mirrors to its candidate in a shadow stage: the page
/// shows the copies, the pairs and the stage; a pause's reason; a failing
/// shadow's rolled-back rollout with the stage's pairs in the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_mirror_a_shadow_stage_and_a_pauses_reason() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let yaml = format!(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n\
         admin:\n  address: \"127.0.0.1:0\"\n\
         services:\n  - name: web\n    versions:\n\
         \x20     - {{ name: stable, revision: \"1.1.0\", endpoints: [\"{stable}\"], weight: 100 }}\n\
         \x20     - {{ name: canary, revision: \"1.2.0\", endpoints: [\"{canary}\"], weight: 0 }}\n\
         \x20   guard: {{ baseline: stable, interval: 200ms, window: 5s, min_requests: 20, consecutive: 2, max_error_rate: 0.5 }}\n\
         \x20   mirror: {{ version: canary }}\n\
         \x20   rollout: {{ candidate: canary, steps: [50, 100], hold: 1h, shadow: {{ hold: 1h, max_mismatch_rate: 0.05 }} }}\n",
        stable = stable.addr(),
        canary = canary.addr(),
    );
    let client = http1_client();
    let veer = VeerProcess::start(BIN, &yaml);
    let admin = admin_of(&veer);
    let proxy = veer.listener(support::config::LISTENER);
    let load = paced_load(
        client.clone(),
        format!("http://{proxy}/"),
        60,
        6_000,
        Duration::from_secs(60),
    )
    .start(support::load::status_and_upstream);

    let driver = start_driver(&client).await;
    let page = browser(&driver).await;
    page.goto(&format!("http://{admin}/"))
        .await
        .expect("open the page");

    until(
        &page,
        "the shadow stage",
        "const v = document.querySelector('section.service .mirror-verdict');\
         return v && v.textContent.startsWith('Shadow stage in progress: canary takes no live request');",
    )
    .await;
    until(
        &page,
        "copies sent",
        "const d = document.querySelector('.mirror dd[data-field=sent]');\
         return d && Number(d.textContent) > 0;",
    )
    .await;
    let title = page
        .execute(
            "return document.querySelector('section.service .mirror-title').textContent;",
            vec![],
        )
        .await
        .expect("mirror title");
    // Copies in flight at that moment, if any, follow in brackets.
    assert!(
        title
            .as_str()
            .is_some_and(|t| t.starts_with("Mirror: 100 % of requests copied to canary")),
        "{title}"
    );
    until(
        &page,
        "the shadow badge",
        "return [...document.querySelectorAll('section.service h2 .badge')].some(b => b.textContent === 'shadow stage');",
    )
    .await;
    screenshot(&page, "4-shadow-stage").await;

    // A pause with its reason, on the page and in the history.
    let pause = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("http://{admin}/services/web/pause"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(support::client::full(
            json!({"reason": "pairs look odd"}).to_string(),
        ))
        .expect("pause request");
    assert_eq!(send(&client, pause).await.status, 200);
    until(
        &page,
        "the pause's reason",
        "return document.querySelector('section.service .rollout').textContent.includes('paused: by an operator: pairs look odd');",
    )
    .await;
    until(
        &page,
        "the pause row",
        "const r = document.querySelector('tr.record[data-kind=pause]');\
         return r && r.textContent.includes('by an operator: pairs look odd');",
    )
    .await;
    let resume = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("http://{admin}/services/web/resume"))
        .body(support::client::empty())
        .expect("resume request");
    assert_eq!(send(&client, resume).await.status, 200);

    // The shadow fails: rolled back before a user saw it, with the pairs.
    canary.set_fail_ratio(0.5);
    until(
        &page,
        "the failed shadow stage in the history",
        "const r = [...document.querySelectorAll('tr.record[data-kind=rollout]')]\
           .find(r => r.textContent.includes('rolled back'));\
         return r && r.textContent.includes('shadow (') && r.textContent.includes('bad: shadow_mismatch');",
    )
    .await;
    screenshot(&page, "5-shadow-failed").await;
    let after = web_status(&client, admin).await;
    assert_eq!(after["rollout"]["state"], "rolled_back", "{after:#}");

    let log = console(&client, &driver, &page).await;
    let bad: Vec<&String> = log
        .iter()
        .filter(|line| {
            line.contains("SEVERE")
                || line.contains("Content Security Policy")
                || line.contains("Refused to")
        })
        .collect();
    assert!(bad.is_empty(), "console errors: {bad:#?}\nall: {log:#?}");
    let _ = page.close().await;
    let _ = load.finish().await;
}
