//! A dry run of the CI examples' shell steps (`examples/ci/release.sh`, which
//! both `github-actions.yml` and `Jenkinsfile` call) against a local veer:
//! the real binary on loopback, its config file edited as a GitOps sync
//! would, paced load through it. Each phase's exit status is asserted: a
//! completed release (0), one veer rolls back (1) and its re-run (still 1:
//! the latch holds), a rollout with no verdict in time (2), an admin API
//! that is unreachable or refuses the token (3 after the retries), a revision
//! already stable (11).
//!
//! Needs bash and jq, so it runs only with `--features ci-examples`
//! (`.ci/ci-examples` does). The config edits of `start` and `finish` need
//! mikefarah yq v4; where it is missing, the test makes the same edits itself
//! and says so.
#![cfg(feature = "ci-examples")]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::binary::VeerProcess;

use support::load::status_and_upstream;
use support::release;

use support::release::{paced_load, BIN};
use support::upstream::Upstream;

const GUARD: &str =
    "    guard: { baseline: stable, interval: 100ms, window: 2s, min_requests: 10, \
                     consecutive: 2, max_error_rate: 0.2 }\n";

struct Site {
    token: PathBuf,
    state: PathBuf,
    stable: std::net::SocketAddr,
    canary: std::net::SocketAddr,
}

impl Site {
    /// `web` with stable at `stable_rev`, canary at `canary_rev`, and a
    /// rollout block when `rollout` is given (steps, hold).
    fn yaml(&self, stable_rev: &str, canary_rev: &str, rollout: Option<(&str, &str)>) -> String {
        let mut y = format!(
            "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n\
             admin:\n  address: \"127.0.0.1:0\"\n  token_file: {:?}\n\
             state_dir: {:?}\n\
             services:\n  - name: web\n    versions:\n\
             \x20     - name: stable\n        revision: \"{stable_rev}\"\n        endpoints: [\"{}\"]\n        weight: 100\n\
             \x20     - name: canary\n        revision: \"{canary_rev}\"\n        endpoints: [\"{}\"]\n        weight: 0\n{GUARD}",
            self.token.display().to_string(),
            self.state.display().to_string(),
            self.stable,
            self.canary,
        );
        if let Some((steps, hold)) = rollout {
            y.push_str(&format!(
                "    rollout: {{candidate: canary, steps: {steps}, hold: {hold}}}\n"
            ));
        }
        y
    }
}

fn mikefarah_yq() -> bool {
    Command::new("yq")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("mikefarah"))
}

/// Runs `release.sh PHASE` with `env`; (exit code, output).
fn release(phase: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ci/release.sh");
    let bin_dir = Path::new(BIN).parent().expect("the binary's directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(&script)
        .arg(phase)
        .env("PATH", path)
        .env_remove("VEER_ADMIN_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("run release.sh");
    let text = format!(
        "--- stdout ---\n{}--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_script_acts_on_every_answer_of_a_local_veer() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "s3cret\n").expect("token");
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "guess\n").expect("wrong token");
    let site = Site {
        token: token.clone(),
        state: dir.path().join("state"),
        stable: stable.addr(),
        canary: canary.addr(),
    };
    let mut veer = VeerProcess::start(BIN, &site.yaml("1.0.0", "1.0.0", None));
    let config = veer.config_path();
    let admin = format!("http://{}", release::admin_of(&veer));
    let proxy = veer.listener("public");
    let client = support::client::http1_client();
    let load = paced_load(
        client,
        format!("http://{proxy}/"),
        100,
        20_000,
        Duration::from_secs(120),
    )
    .start(status_and_upstream);
    let yq = mikefarah_yq();
    if !yq {
        eprintln!("note: mikefarah yq v4 is not installed: the test edits the config for `start` and `finish` itself");
    }
    let config_s = config.display().to_string();
    let token_s = token.display().to_string();
    let env = |revision: &'static str| {
        vec![
            ("SERVICE", "web".to_string()),
            ("REVISION", revision.to_string()),
            ("CONFIG_FILE", config_s.clone()),
            ("VEER_ADMIN", admin.clone()),
            ("VEER_TOKEN_FILE", token_s.clone()),
            ("STEPS_YAML", "[50, 100]".to_string()),
            ("HOLD", "300ms".to_string()),
            ("LOAD_POLL_DELAY", "0.2".to_string()),
            ("VEER_RETRY_DELAY", "0".to_string()),
        ]
    };
    let run = |phase: &str, env: &[(&str, String)]| {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        release(phase, &pairs)
    };
    // `start` as the pipeline runs it, or the same edit by hand.
    let start = |revision: &'static str, stable_rev: &str, hold: &str| {
        if yq {
            let mut e = env(revision);
            e.push(("HOLD", hold.to_string()));
            let (code, out) = run("start", &e);
            assert_eq!(code, Some(0), "{out}");
        } else {
            std::fs::write(
                &config,
                site.yaml(stable_rev, revision, Some(("[50, 100]", hold))),
            )
            .expect("write config");
        }
    };

    // A good release: loaded, gated (0), made stable.
    start("2.0.0", "1.0.0", "300ms");
    let (code, out) = run("loaded", &env("2.0.0"));
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run("gate", &env("2.0.0"));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("web 2.0.0 completed"), "{out}");
    assert!(
        out.contains("waiting up to 9"),
        "the computed timeout: {out}"
    );
    if yq {
        let (code, out) = run("finish", &env("2.0.0"));
        assert_eq!(code, Some(0), "{out}");
        // Released already: nothing to do.
        let (code, out) = run("start", &env("2.0.0"));
        assert_eq!(code, Some(11), "{out}");
    } else {
        std::fs::write(&config, site.yaml("2.0.0", "2.0.0", None)).expect("write config");
    }

    // A bad release: veer rolls it back, the gate says 1 ...
    canary.set_fail_ratio(1.0);
    start("3.0.0", "2.0.0", "300ms");
    let (code, out) = run("loaded", &env("3.0.0"));
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run("gate", &env("3.0.0"));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("veer rolled web 3.0.0 back"), "{out}");
    // ... and a re-run of the same release pushes nothing and says 1 again:
    // the revision stays latched.
    if yq {
        let (code, out) = run("start", &env("3.0.0"));
        assert_eq!(code, Some(10), "{out}");
    }
    let (code, out) = run("gate", &env("3.0.0"));
    assert_eq!(code, Some(1), "{out}");
    canary.set_fail_ratio(0.0);

    // No verdict in time: 2, and the rollout goes on.
    start("4.0.0", "2.0.0", "1h");
    let (code, out) = run("loaded", &env("4.0.0"));
    assert_eq!(code, Some(0), "{out}");
    let mut e = env("4.0.0");
    e.push(("VEER_WAIT_TIMEOUT", "1".to_string()));
    let (code, out) = run("gate", &e);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("the rollout goes on in veer"), "{out}");

    // Token refused, then admin API unreachable: 3 after the retries.
    let mut e = env("4.0.0");
    e.push(("VEER_TOKEN_FILE", wrong.display().to_string()));
    e.push(("VEER_RETRIES", "1".to_string()));
    let (code, out) = run("gate", &e);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("attempt 2 of 2"), "{out}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut e = env("4.0.0");
    e.push(("VEER_ADMIN", format!("http://{closed}")));
    e.push(("VEER_RETRIES", "0".to_string()));
    let (code, out) = run("gate", &e);
    assert_eq!(code, Some(3), "{out}");

    load.finish().await;
    veer.signal("TERM");
    veer.wait_exit(release::LIMIT).await;
}
