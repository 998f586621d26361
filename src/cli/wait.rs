//! `veer wait`: the gate of a CI pipeline. Polls `/status` until the
//! service's rollout completes (exit 0) or is rolled back (exit 1); exit 2 on
//! timeout or when the admin API cannot be reached. On a terminal it keeps one
//! live progress line; elsewhere it prints a line per change, for CI logs.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use http::Method;
use serde_json::Value;
use tokio::time::Instant;

use super::client::{AdminTarget, ClientError};
use super::status::rollout_line;

const POLL: Duration = Duration::from_millis(500);
/// Failed polls in a row before the admin API counts as gone.
const UNREACHABLE_AFTER: u32 = 10;

pub async fn wait(
    target: &AdminTarget,
    service: &str,
    timeout: Option<Duration>,
    revision: Option<&str>,
) -> Result<ExitCode, ClientError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let live = std::io::stdout().is_terminal();
    let mut last_line = String::new();
    let mut failures = 0;
    loop {
        match poll(target, service).await {
            Ok(Some((rollout, _))) if revision.is_some_and(|r| rollout["revision"] != r) => {
                failures = 0;
                let line = format!(
                    "waiting for the rollout of revision {} (veer shows {})",
                    revision.unwrap_or_default(),
                    rollout["revision"]
                );
                if line != last_line {
                    println!("{line}");
                    last_line = line;
                }
            }
            Ok(Some((rollout, service_json))) => {
                failures = 0;
                let line = progress_line(&rollout, &service_json);
                if line != last_line {
                    if live {
                        print!("\r\x1b[2K{line}");
                        let _ = std::io::stdout().flush();
                    } else {
                        println!("{line}");
                    }
                    last_line = line;
                }
                match rollout["state"].as_str() {
                    Some("completed") => {
                        finish(live, &format!("{service}: rollout completed"));
                        return Ok(ExitCode::SUCCESS);
                    }
                    Some("rolled_back") => {
                        finish(live, &format!("{service}: rollout rolled back"));
                        return Ok(ExitCode::from(1));
                    }
                    Some("abandoned") => {
                        finish(
                            live,
                            &format!(
                                "{service}: rollout ended by manual weights; not a completion"
                            ),
                        );
                        return Ok(ExitCode::from(1));
                    }
                    _ => {}
                }
            }
            // A pipeline that just pushed the config may be ahead of veer.
            Ok(None) if revision.is_some() => failures = 0,
            Ok(None) => {
                finish(
                    live,
                    &format!("veer: service `{service}` has no rollout to wait for"),
                );
                return Ok(ExitCode::from(2));
            }
            Err(err) => {
                failures += 1;
                if failures >= UNREACHABLE_AFTER {
                    return Err(err);
                }
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            finish(
                live,
                &format!("{service}: timed out waiting for the rollout"),
            );
            return Ok(ExitCode::from(2));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn poll(target: &AdminTarget, service: &str) -> Result<Option<(Value, Value)>, ClientError> {
    let (status, body) = target.call(Method::GET, "/status", None).await?;
    if !status.is_success() {
        return Err(ClientError::Unreachable(format!(
            "the admin API answered {status}: {}",
            body.trim()
        )));
    }
    let report: Value = serde_json::from_str(&body)
        .map_err(|e| ClientError::Unreachable(format!("/status is not JSON: {e}")))?;
    let found = report["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == service))
        .cloned();
    Ok(found.and_then(|s| {
        let rollout = s["rollout"].clone();
        (!rollout.is_null()).then_some((rollout, s))
    }))
}

fn progress_line(rollout: &Value, service: &Value) -> String {
    let candidate = rollout["candidate"].as_str().unwrap_or("");
    let figures = service["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == candidate))
        .map(|v| {
            let w = &v["window"];
            let p95 = w["p95_ms"]
                .as_f64()
                .map_or("-".to_string(), |ms| format!("{ms:.1}ms"));
            format!(
                "; errors {:.2}%, p95 {p95}",
                w["error_rate"].as_f64().unwrap_or(0.0) * 100.0
            )
        })
        .unwrap_or_default();
    format!("{}{figures}", rollout_line(rollout))
}

fn finish(live: bool, message: &str) {
    if live {
        println!();
    }
    println!("{message}");
}
