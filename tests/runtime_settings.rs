//! The scheduler settings veer reads from its environment at start-up
//! (`src/server/runtime.rs`): a valid one serves as the default does, a bad
//! one stops veer before it binds anything, saying what is wrong.

mod support;

use std::process::{Command, Stdio};

use support::binary::VeerProcess;
use support::client::{get, http1_client, send};
use support::config::{service, ConfigBuilder};
use support::upstream::Upstream;

const BIN: &str = env!("CARGO_BIN_EXE_veer");

#[tokio::test]
async fn veer_serves_on_a_current_thread_runtime_with_other_intervals() {
    let up = Upstream::start("stable").await;
    let yaml = ConfigBuilder::new()
        .service(service("web").version("stable", &[up.addr()], 1))
        .yaml();
    let veer = VeerProcess::start_with_args(
        BIN,
        &yaml,
        &["--workers", "1"],
        &[
            ("VEER_RUNTIME_FLAVOR", "current_thread"),
            ("VEER_EVENT_INTERVAL", "128"),
            ("VEER_MAX_IO_EVENTS", "256"),
        ],
    );
    let url = format!("http://{}/", veer.listener("public"));
    let client = http1_client();
    for _ in 0..20 {
        let answer = send(&client, get(&url, None)).await;
        assert_eq!(answer.status, 200, "{}", veer.output());
        assert_eq!(answer.text(), "stable");
    }
}

#[test]
fn a_bad_setting_stops_veer_with_what_to_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("veer.yaml");
    let yaml = ConfigBuilder::new()
        .service(service("web").version("stable", &["127.0.0.1:9".parse().expect("addr")], 1))
        .yaml();
    std::fs::write(&config, yaml).expect("write config");
    let cases: [(&[&str], (&str, &str), &str); 2] = [
        (
            &["--workers", "2"],
            ("VEER_RUNTIME_FLAVOR", "current_thread"),
            "veer: cannot start the async runtime: VEER_RUNTIME_FLAVOR=current_thread needs --workers 1",
        ),
        (
            &[],
            ("VEER_EVENT_INTERVAL", "often"),
            "veer: cannot start the async runtime: VEER_EVENT_INTERVAL=\"often\" is not a positive number; unset it for tokio's default",
        ),
    ];
    for (args, (name, value), message) in cases {
        let out = Command::new(BIN)
            .arg("run")
            .arg("-c")
            .arg(&config)
            .args(args)
            .env(name, value)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run veer");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}={value}: {stderr}");
        assert!(stderr.contains(message), "{name}={value}: {stderr}");
    }
}
