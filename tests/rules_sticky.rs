//! A/B rules and sticky users, end to end on loopback.
//!
//! Sticky users: a user key hashed (salted per service) into 10,000 buckets,
//! the candidate owning the low ones. Raising the candidate's weight only
//! moves baseline users to it, never back; a rollback moves everyone to the
//! baseline; a missing sticky cookie is minted; a missing sticky header
//! leaves the request to the weighted split. Rules: header (exact, present,
//! regex), cookie and path prefix, first match wins, before sticky users and
//! weights; a rule to a latched version serves the baseline instead.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use support::load::{LoadPlan, Via};
use support::release::{request_with, v, web_yaml, weight, Fixture, SERVICE};
use support::upstream::Upstream;

// ---------------------------------------------------------------- sticky users

/// The user keys of the monotonicity test: `user-0` ... `user-9999`.
const KEYS: usize = 10_000;
/// Every 5th key (2,000 of them) is also sent through the proxy in each
/// phase; all 10,000 are checked against the live snapshot's
/// `veer::routing::sticky::StickyTable` (the table the request path reads),
/// and the sampled keys' answers must agree with that table. 10,000 requests
/// per phase would be slow on a small shared machine.
const SAMPLE_EVERY: usize = 5;
/// Requests in flight at once for the sample.
const CONCURRENCY: usize = 16;
/// Version indexes in the config: the baseline first.
const STABLE: usize = 0;
const CANARY: usize = 1;
const NAMES: [&str; 2] = ["stable", "canary"];

fn key(i: usize) -> String {
    format!("user-{i}")
}

/// Every key's version, by the sticky table of the snapshot in force.
fn by_table(f: &Fixture) -> Vec<usize> {
    let snapshot = f.control().snapshot();
    let sticky = snapshot.services[0]
        .sticky
        .as_ref()
        .expect("the service routes sticky users");
    let table = sticky.table.as_ref().expect("a sticky table");
    (0..KEYS)
        .map(|i| table.version(key(i).as_bytes()))
        .collect()
}

/// The sampled keys' versions, end to end (`x-upstream` of the answer).
async fn by_proxy(f: &Fixture) -> BTreeMap<usize, usize> {
    let url = f.url("/");
    let sampled: Vec<usize> = (0..KEYS).step_by(SAMPLE_EVERY).collect();
    let samples = LoadPlan::workers(url.clone(), &[Via::KeepAlive; CONCURRENCY])
        .client(f.client.clone())
        .max_requests(sampled.len() as u64)
        .request({
            let sampled = sampled.clone();
            move |n| request_with(&url, &[("x-user-id", &key(sampled[n as usize]))])
        })
        .start(|reply| reply.map_err(|e| e.to_string()))
        .join()
        .await;
    samples
        .into_iter()
        .map(|sample| {
            let i = sampled[sample.n as usize];
            let user = key(i);
            let answer = sample.record.unwrap_or_else(|e| panic!("{user}: {e}"));
            assert_eq!(answer.status, 200, "{user}: {}", answer.text());
            let version = NAMES
                .iter()
                .position(|n| answer.upstream() == Some(*n))
                .unwrap_or_else(|| panic!("{user}: answered by {:?}", answer.upstream()));
            (i, version)
        })
        .collect()
}

fn canary_share(versions: impl IntoIterator<Item = usize>) -> f64 {
    let (mut n, mut canary) = (0usize, 0usize);
    for v in versions {
        n += 1;
        canary += usize::from(v == CANARY);
    }
    100.0 * canary as f64 / n.max(1) as f64
}

/// One phase: the table and the proxy agree, the share is the weight, and
/// against the previous phase users only moved from stable to canary.
struct Phase {
    all: Vec<usize>,
    sample: BTreeMap<usize, usize>,
}

async fn phase(f: &Fixture, canary_percent: u32, previous: Option<&Phase>) -> Phase {
    let web = f.web().await;
    assert_eq!(
        (weight(&web, "stable"), weight(&web, "canary")),
        (u64::from(100 - canary_percent), u64::from(canary_percent)),
        "{web:#}"
    );
    let all = by_table(f);
    let sample = by_proxy(f).await;
    for (&i, &version) in &sample {
        assert_eq!(
            version,
            all[i],
            "at {canary_percent}%: {} was served by {} but its bucket belongs to {}",
            key(i),
            NAMES[version],
            NAMES[all[i]]
        );
    }
    let share = canary_share(all.iter().copied());
    assert!(
        (share - f64::from(canary_percent)).abs() <= 2.0,
        "at {canary_percent}%: {share:.2}% of {KEYS} users on the canary"
    );
    let sampled = canary_share(sample.values().copied());
    assert!(
        (sampled - f64::from(canary_percent)).abs() <= 4.0,
        "at {canary_percent}%: {sampled:.2}% of the {} sampled users on the canary",
        sample.len()
    );
    if let Some(before) = previous {
        let back: Vec<String> = (0..KEYS)
            .filter(|&i| before.all[i] == CANARY && all[i] == STABLE)
            .map(key)
            .collect();
        assert!(
            back.is_empty(),
            "at {canary_percent}%: {} users moved back from canary to stable, e.g. {:?}",
            back.len(),
            &back[..back.len().min(5)]
        );
        let back_e2e = sample
            .iter()
            .filter(|&(i, &v)| before.sample[i] == CANARY && v == STABLE)
            .count();
        assert_eq!(
            back_e2e, 0,
            "at {canary_percent}%: sampled users moved back"
        );
        let moved = (0..KEYS).filter(|&i| before.all[i] != all[i]).count();
        let grew = share - canary_share(before.all.iter().copied());
        assert!(
            (100.0 * moved as f64 / KEYS as f64 - grew).abs() < 0.01,
            "at {canary_percent}%: {moved} users moved, the canary grew by {grew:.2} points"
        );
    }
    Phase { all, sample }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_candidate_only_moves_baseline_users_and_rollback_moves_every_user_back() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let blocks = "    sticky: { header: x-user-id }\n\
                  \x20   guard: { baseline: stable, max_error_rate: 0.5 }\n";
    let versions = [
        v("stable", stable.addr(), 90),
        v("canary", canary.addr(), 10),
    ];
    let f = Fixture::start(&web_yaml(&versions, blocks, None)).await;

    let at_10 = phase(&f, 10, None).await;

    // 25 % through the admin API, 50 % through control: both are run-time weights.
    let set = f
        .post(
            &format!("/services/{SERVICE}/weights"),
            Some(json!({"stable": 75, "canary": 25})),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text());
    let at_25 = phase(&f, 25, Some(&at_10)).await;
    f.control()
        .set_weights(SERVICE, &[("stable", 50), ("canary", 50)])
        .await
        .expect("weights 50/50");
    let at_50 = phase(&f, 50, Some(&at_25)).await;
    // Over the whole climb, the 10 % users are still on the canary.
    assert!(
        (0..KEYS).all(|i| at_10.all[i] != CANARY || at_50.all[i] == CANARY),
        "a 10 % user left the canary by 50 %"
    );

    // A rollback puts every user on the baseline.
    let rolled = f.post(&format!("/services/{SERVICE}/rollback"), None).await;
    assert_eq!(rolled.status, 200, "{}", rolled.text());
    let web = f.web().await;
    assert_eq!((weight(&web, "stable"), weight(&web, "canary")), (100, 0));
    let all = by_table(&f);
    assert!(
        all.iter().all(|&v| v == STABLE),
        "{} users still on the canary after the rollback",
        all.iter().filter(|&&v| v == CANARY).count()
    );
    let canary_before = canary.total();
    let sample = by_proxy(&f).await;
    assert!(
        sample.values().all(|&v| v == STABLE),
        "sampled users on the canary after the rollback"
    );
    assert_eq!(
        canary.total(),
        canary_before,
        "the canary got requests after the rollback"
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_sticky_header_are_split_by_weight_and_a_key_keeps_its_version() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let blocks = "    sticky: { header: x-user-id }\n\
                  \x20   guard: { baseline: stable, max_error_rate: 0.5 }\n";
    let versions = [
        v("stable", stable.addr(), 80),
        v("canary", canary.addr(), 20),
    ];
    let f = Fixture::start(&web_yaml(&versions, blocks, None)).await;

    // No header: the weighted split (exact per cycle of 5 at 80/20).
    let mut to_canary = 0;
    for _ in 0..200 {
        let answer = f.get_with("/", &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        to_canary += usize::from(answer.upstream() == Some("canary"));
    }
    assert!(
        (36..=44).contains(&to_canary),
        "without the sticky header, {to_canary}/200 went to the canary at 80/20"
    );

    // With it: each user keeps one version, the one its bucket says.
    let table =
        veer::routing::sticky::StickyTable::new(SERVICE, &[80, 20], STABLE).expect("a table");
    let mut seen = BTreeSet::new();
    for i in 0..40 {
        let user = key(i);
        let expected = NAMES[table.version(user.as_bytes())];
        for _ in 0..5 {
            let answer = f.get_with("/", &[("x-user-id", &user)]).await;
            assert_eq!(answer.upstream(), Some(expected), "{user}");
        }
        seen.insert(expected);
    }
    assert_eq!(seen.len(), 2, "40 users at 80/20 all landed on {seen:?}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_sticky_cookie_gets_one_and_keeps_its_version_with_it() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let blocks = "    sticky: { cookie: session, max_age: 1h }\n";
    let versions = [
        v("stable", stable.addr(), 50),
        v("canary", canary.addr(), 50),
    ];
    let f = Fixture::start(&web_yaml(&versions, blocks, None)).await;

    // Anonymous clients: each gets a cookie of its own; keep one that landed
    // on each version.
    let mut keys = BTreeSet::new();
    let mut kept: BTreeMap<String, String> = BTreeMap::new();
    for _ in 0..40 {
        let answer = f.get_with("/", &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let set = answer
            .header("set-cookie")
            .unwrap_or_else(|| {
                panic!(
                    "no Set-Cookie for a client without one: {:?}",
                    answer.headers
                )
            })
            .to_string();
        let attributes: Vec<&str> = set.split(';').map(str::trim).collect();
        let pair = attributes[0];
        let value = pair
            .strip_prefix("session=")
            .unwrap_or_else(|| panic!("Set-Cookie names another cookie: {set}"));
        assert!(!value.is_empty(), "{set}");
        assert!(attributes.contains(&"HttpOnly"), "{set}");
        assert!(attributes.contains(&"Max-Age=3600"), "max_age 1h: {set}");
        assert!(attributes.contains(&"Path=/"), "{set}");
        assert_eq!(
            answer.headers.get_all("set-cookie").iter().count(),
            1,
            "{:?}",
            answer.headers
        );
        keys.insert(value.to_string());
        let upstream = answer.upstream().expect("x-upstream").to_string();
        kept.entry(upstream).or_insert_with(|| pair.to_string());
    }
    assert_eq!(
        keys.len(),
        40,
        "every anonymous client gets a key of its own"
    );
    assert_eq!(
        kept.len(),
        2,
        "40 minted keys at 50/50 all landed on {kept:?}"
    );

    // Sent back, the cookie keeps its client on the version that minted it,
    // and no new cookie is minted.
    for (upstream, pair) in &kept {
        let cookie = format!("theme=dark; {pair}");
        for n in 0..50 {
            let answer = f.get_with("/", &[("cookie", &cookie)]).await;
            assert_eq!(
                answer.upstream(),
                Some(upstream.as_str()),
                "request {n} with {pair} (first served by {upstream})"
            );
            assert!(
                answer.header("set-cookie").is_none(),
                "{:?}",
                answer.headers
            );
        }
    }
    f.shutdown().await;
}

// ---------------------------------------------------------------- A/B rules

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_by_header_cookie_regex_and_path_first_match_wins_latched_falls_back() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let beta = Upstream::start("beta").await;
    // Weights send everything to stable: only a rule reaches canary or beta.
    let versions = [
        v("stable", stable.addr(), 100),
        v("canary", canary.addr(), 0),
        v("beta", beta.addr(), 0),
    ];
    let blocks = r#"    sticky: { header: x-user-id }
    rules:
      - match: { headers: { x-canary: always } }
        version: canary
      - match: { headers_present: [x-beta] }
        version: beta
      - match: { headers_regex: { x-user: "^qa-[0-9]+$" } }
        version: canary
      - match: { cookies: { ab: b } }
        version: beta
      - match: { path_prefix: /v2 }
        version: canary
    guard: { baseline: stable, max_error_rate: 0.5 }
"#;
    let f = Fixture::start(&web_yaml(&versions, blocks, None)).await;

    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
    );
    let cases: &[Case] = &[
        ("/", &[], "stable"),
        // header, exact value
        ("/", &[("x-canary", "always")], "canary"),
        ("/", &[("x-canary", "never")], "stable"),
        // header present, any value
        ("/", &[("x-beta", "1")], "beta"),
        ("/", &[("x-beta", "")], "beta"),
        // header regex (anchored)
        ("/", &[("x-user", "qa-17")], "canary"),
        ("/", &[("x-user", "qa-x")], "stable"),
        ("/", &[("x-user", "xqa-17")], "stable"),
        // cookie value
        ("/", &[("cookie", "a=1; ab=b")], "beta"),
        ("/", &[("cookie", "ab=a")], "stable"),
        // path prefix
        ("/v2/items", &[], "canary"),
        ("/v1/items", &[], "stable"),
        // first match wins
        ("/", &[("x-canary", "always"), ("x-beta", "1")], "canary"),
        ("/v2/items", &[("x-beta", "1")], "beta"),
        ("/", &[("cookie", "ab=b"), ("x-user", "qa-1")], "canary"),
        // rules come before sticky users (whose buckets are all stable's here)
        (
            "/",
            &[("x-user-id", "u-1"), ("x-canary", "always")],
            "canary",
        ),
        ("/", &[("x-user-id", "u-1")], "stable"),
    ];
    let check = |expect_latched: bool| {
        let f = &f;
        async move {
            for &(path, headers, expected) in cases {
                let expected = if expect_latched { "stable" } else { expected };
                for _ in 0..3 {
                    let answer = f.get_with(path, headers).await;
                    assert_eq!(answer.status, 200, "{}", answer.text());
                    assert_eq!(
                        answer.upstream(),
                        Some(expected),
                        "GET {path} with {headers:?} (latched: {expect_latched})"
                    );
                }
            }
        }
    };
    check(false).await;

    // Latch canary and beta: their rules serve the baseline.
    let rolled = f.post(&format!("/services/{SERVICE}/rollback"), None).await;
    assert_eq!(rolled.status, 200, "{}", rolled.text());
    let web = f.web().await;
    let latched: BTreeSet<String> = web["guard"]["latches"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["version"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        latched,
        BTreeSet::from(["beta".to_string(), "canary".to_string()]),
        "{web:#}"
    );
    let (canary_before, beta_before) = (canary.total(), beta.total());
    check(true).await;
    assert_eq!(
        (canary.total(), beta.total()),
        (canary_before, beta_before),
        "a latched version got rule traffic"
    );

    // Resumed, the rules apply again.
    let resumed = f.post(&format!("/services/{SERVICE}/resume"), None).await;
    assert_eq!(resumed.status, 200, "{}", resumed.text());
    check(false).await;
    f.shutdown().await;
}
