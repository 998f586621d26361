//! `veer wait`: the gate of a CI pipeline. Polls `/status` until the
//! service's rollout completes or is rolled back, and says which by its exit
//! status, one meaning per code (see [`Exit`]): a pipeline rolls back only on
//! 1, and never because the network or its own command line failed.
//!
//! On a terminal it keeps one live progress line; elsewhere (a CI log) it
//! prints a line only when the step, the state or the guard's verdict
//! changes.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use http::Method;
use tokio::time::Instant;

use super::client::{AdminTarget, ClientError};
use super::status::{human_duration, rollout_line};
use crate::state::RolloutOutcome;
use crate::status::{RolloutReport, ServiceReport};

const POLL: Duration = Duration::from_millis(500);
/// Before veer has answered once, this many failed polls in a row mean it is
/// not there (a wrong `--admin`, veer not started): exit 3 soon.
const UNREACHABLE_AT_START: u32 = 4;
/// Once it has answered, veer may be restarting: failures are tolerated this
/// long before the admin API counts as gone.
const UNREACHABLE_AFTER: Duration = Duration::from_secs(30);
/// Without `--timeout`: the rollout's least remaining time times this, plus
/// [`DEFAULT_MARGIN`].
const DEFAULT_FACTOR: f64 = 1.5;
const DEFAULT_MARGIN: Duration = Duration::from_secs(600);
/// Without `--timeout`, how long to wait for a `--revision` veer has not
/// loaded yet (the pipeline may be ahead of the config's reload).
const DEFAULT_REVISION_WAIT: Duration = Duration::from_secs(600);

/// `veer wait`'s exit statuses, as the contract fixes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The last step held with no trip.
    Completed = 0,
    /// Rolled back by the guard or an operator (after completion too), or
    /// ended by manual weights: not a release to keep.
    RolledBack = 1,
    /// `--timeout` passed with the rollout still going.
    TimedOut = 2,
    /// The admin API could not be reached, or refused the token.
    Unreachable = 3,
    /// A wrong command line, or a service veer does not know.
    Usage = 64,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

pub async fn wait(
    target: &AdminTarget,
    service: &str,
    timeout: Option<Duration>,
    revision: Option<&str>,
) -> Exit {
    let live = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut deadline = timeout.map(|t| started + t);
    if let Some(t) = timeout {
        println!(
            "veer wait: {service}: waiting at most {}",
            human_duration(t)
        );
    }
    let mut printed = Printed::default();
    // Without --timeout: whether the bound was taken from the rollout yet
    // (once, when veer first shows the rollout waited for).
    let mut sized = false;
    let mut reached = false;
    let mut failing_since: Option<(Instant, u32)> = None;
    loop {
        match poll(target, service).await {
            Ok(found) => {
                reached = true;
                failing_since = None;
                let Some(found) = found else {
                    finish(live, &format!("veer: no service named `{service}` in veer's config (see `veer status`)"));
                    return Exit::Usage;
                };
                let ours = found
                    .rollout
                    .as_ref()
                    .filter(|r| revision.is_none_or(|wanted| r.revision == wanted));
                match ours {
                    None => {
                        // A pipeline that just pushed the config may be ahead of veer.
                        let Some(revision) = revision else {
                            finish(
                            live,
                            &format!("veer: service `{service}` has no rollout to wait for (its config has no `rollout:` block)"),
                        );
                            return Exit::Usage;
                        };
                        if deadline.is_none() {
                            deadline = Some(started + DEFAULT_REVISION_WAIT);
                            println!(
                            "veer wait: {service}: no --timeout given; waiting at most {} for veer to load revision {revision}",
                            human_duration(DEFAULT_REVISION_WAIT)
                        );
                        }
                        let shows = found
                            .rollout
                            .as_ref()
                            .map_or("no rollout", |r| r.revision.as_str());
                        printed.show(
                            live,
                            format!(
                            "waiting for the rollout of revision {revision} (veer shows {shows})"
                        ),
                            String::new(),
                        );
                    }
                    Some(rollout) => {
                        if timeout.is_none() && !sized {
                            sized = true;
                            match default_timeout(rollout) {
                                Some(t) => {
                                    deadline = Some(Instant::now() + t);
                                    println!(
                                    "veer wait: {service}: no --timeout given; waiting at most {} (the rollout's least remaining time × {DEFAULT_FACTOR} + {})",
                                    human_duration(t),
                                    human_duration(DEFAULT_MARGIN)
                                );
                                }
                                None if rollout.state == RolloutOutcome::InProgress => {
                                    finish(
                                    live,
                                    &format!("veer: the rollout of `{service}` has a manual step ahead, which waits for `veer promote`: give --timeout (e.g. --timeout 2h)"),
                                );
                                    return Exit::Usage;
                                }
                                None => {}
                            }
                        }
                        let (line, key) = progress(rollout, &found);
                        printed.show(live, line, key);
                        if let Some(exit) = verdict(live, service, rollout) {
                            if let Some(why) = rollback_reason(&found, rollout) {
                                println!("{service}: {why}");
                            }
                            return exit;
                        }
                    }
                }
            }
            Err(ClientError::Refused(message)) => {
                finish(live, &format!("veer: {message}"));
                return Exit::Unreachable;
            }
            Err(ClientError::Usage(message)) => {
                finish(live, &format!("veer: {message}"));
                return Exit::Usage;
            }
            Err(ClientError::Unreachable(message)) => {
                let now = Instant::now();
                let (since, count) = failing_since.get_or_insert((now, 0));
                *count += 1;
                let gone = if reached {
                    now.duration_since(*since) >= UNREACHABLE_AFTER
                } else {
                    *count >= UNREACHABLE_AT_START
                };
                if gone {
                    finish(live, &format!("veer: {message}"));
                    return Exit::Unreachable;
                }
            }
        }
        if let Some(exit) = timed_out(live, service, deadline, started) {
            return exit;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `--timeout` (or the default bound) passed: the closing line and exit 2.
fn timed_out(
    live: bool,
    service: &str,
    deadline: Option<Instant>,
    started: Instant,
) -> Option<Exit> {
    if deadline.is_none_or(|d| Instant::now() < d) {
        return None;
    }
    let waited = human_duration(Instant::now().duration_since(started));
    finish(
        live,
        &format!("{service}: timed out after {waited} with the rollout still going; it goes on in veer (not rolled back)"),
    );
    Some(Exit::TimedOut)
}

/// The exit for a finished rollout, with its closing line; `None` while it runs.
fn verdict(live: bool, service: &str, rollout: &RolloutReport) -> Option<Exit> {
    let (exit, message) = match rollout.state {
        RolloutOutcome::Completed => (
            Exit::Completed,
            format!("{service}: rollout completed: the last step held with no trip"),
        ),
        RolloutOutcome::RolledBack => (Exit::RolledBack, format!("{service}: rollout rolled back")),
        RolloutOutcome::Abandoned => (
            Exit::RolledBack,
            format!("{service}: rollout ended by manual weights; not a completion"),
        ),
        RolloutOutcome::InProgress => return None,
    };
    finish(live, &message);
    Some(exit)
}

/// Why a rolled-back candidate was latched, with what was measured: the
/// guard's reason or a check's (`check:NAME`), for the pipeline's log.
fn rollback_reason(service: &ServiceReport, rollout: &RolloutReport) -> Option<String> {
    if rollout.state != RolloutOutcome::RolledBack {
        return None;
    }
    let guard = service.guard.as_ref()?;
    let latch = guard
        .latches
        .iter()
        .find(|l| l.version == rollout.candidate && l.revision == rollout.revision)?;
    let measured = guard
        .events
        .iter()
        .rev()
        .find(|e| e.version == latch.version && e.revision == latch.revision)
        .and_then(|e| {
            Some(format!(
                " (observed {}, threshold {})",
                e.observed?, e.threshold?
            ))
        })
        .unwrap_or_default();
    Some(format!(
        "{} {} latched: {}{measured}",
        latch.version, latch.revision, latch.reason
    ))
}

/// The rollout's least remaining time with a margin; `None` with a manual
/// step ahead (no time bounds it) or a rollout already over.
fn default_timeout(rollout: &RolloutReport) -> Option<Duration> {
    let remaining = Duration::from_millis(rollout.min_remaining_ms?);
    Some(remaining.mul_f64(DEFAULT_FACTOR) + DEFAULT_MARGIN)
}

/// What was last printed, so that a CI log gets a line per change only.
#[derive(Default)]
struct Printed {
    line: String,
    key: Option<String>,
}

impl Printed {
    /// `key` holds what matters off a terminal (step, state, verdict); the
    /// line's figures and countdown change every poll and are not news.
    fn show(&mut self, live: bool, line: String, key: String) {
        if live {
            if line != self.line {
                print!("\r\x1b[2K{line}");
                let _ = std::io::stdout().flush();
            }
        } else if self.key.as_ref() != Some(&key) {
            println!("{line}");
        }
        self.line = line;
        self.key = Some(key);
    }
}

async fn poll(target: &AdminTarget, service: &str) -> Result<Option<ServiceReport>, ClientError> {
    let (status, body) = target.call(Method::GET, "/status", None).await?;
    if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
        return Err(ClientError::Refused(format!(
            "the admin API at {} refused the token ({status}): check --token-file or VEER_ADMIN_TOKEN",
            target.authority
        )));
    }
    if !status.is_success() {
        return Err(ClientError::Unreachable(format!(
            "the admin API answered {status}: {}",
            body.trim()
        )));
    }
    let mut report = super::status::parse(&body).map_err(ClientError::Unreachable)?;
    Ok(report
        .services
        .iter()
        .position(|s| s.name == service)
        .map(|at| report.services.swap_remove(at)))
}

/// The progress line, and the part of it that is news: step, state, pause,
/// the gate's and the guard's words without their running counts.
fn progress(rollout: &RolloutReport, service: &ServiceReport) -> (String, String) {
    let version = service.version(&rollout.candidate);
    let figures = version
        .map(|v| {
            let p95 = v
                .window
                .p95_ms
                .map_or("-".to_string(), |ms| format!("{ms:.1}ms"));
            format!("; errors {:.2}%, p95 {p95}", v.window.error_rate * 100.0)
        })
        .unwrap_or_default();
    let verdict = version
        .and_then(|v| v.guard_verdict.as_deref())
        .unwrap_or("");
    let kind = |text: &str| text.split(':').next().unwrap_or("").to_string();
    let key = format!(
        "{}|{}|{}|{}|{}|{}",
        rollout.revision,
        rollout.step,
        crate::rollout::outcome_word(rollout.state),
        rollout.paused,
        kind(rollout.gate.as_deref().unwrap_or("")),
        kind(verdict),
    );
    let verdict = if verdict.is_empty() {
        String::new()
    } else {
        format!("; guard: {verdict}")
    };
    (format!("{}{figures}{verdict}", rollout_line(rollout)), key)
}

fn finish(live: bool, message: &str) {
    if live {
        println!();
    }
    println!("{message}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ProtocolName, VersionReport, WindowReport};

    fn rollout(held: u64, gate: &str, min_remaining_ms: Option<u64>) -> RolloutReport {
        RolloutReport {
            candidate: "canary".into(),
            gate: Some(gate.to_string()).filter(|g| !g.is_empty()),
            hold_ms: Some(10_000),
            hold_remaining_ms: Some(held),
            held_ms: 10_000 - held,
            manual: false,
            min_remaining_ms,
            min_total_ms: Some(30_000),
            paused: false,
            pause_reason: None,
            percent: 10,
            revision: "2".into(),
            state: RolloutOutcome::InProgress,
            step: 1,
            steps: 3,
        }
    }

    fn service(rate: f64, verdict: &str) -> ServiceReport {
        ServiceReport {
            checks: None,
            guard: None,
            mirror: None,
            name: "web".into(),
            rollout: None,
            versions: vec![VersionReport {
                dns: Vec::new(),
                endpoints: Vec::new(),
                fleet: None,
                grpc_methods: Default::default(),
                guard_verdict: Some(verdict.to_string()),
                latched: false,
                name: "canary".into(),
                protocol: ProtocolName::Http1,
                revision: "2".into(),
                unavailable: false,
                weight: 10,
                window: WindowReport {
                    error_rate: rate,
                    errors: 0,
                    p50_ms: None,
                    p95_ms: Some(3.0),
                    p99_ms: None,
                    requests: 0,
                    rps: 0.0,
                },
            }],
            window_seconds: 30,
        }
    }

    #[test]
    fn the_default_timeout_has_a_margin_and_none_past_a_manual_step() {
        assert_eq!(
            default_timeout(&rollout(0, "", Some(1_800_000))),
            Some(Duration::from_secs(2_700 + 600))
        );
        assert_eq!(default_timeout(&rollout(0, "", None)), None);
    }

    #[test]
    fn figures_that_change_every_poll_are_not_news() {
        let (a, key_a) = progress(
            &rollout(5_000, "waiting for traffic: 3/20 requests", None),
            &service(0.0, "insufficient data: 3/20 requests"),
        );
        let (b, key_b) = progress(
            &rollout(4_000, "waiting for traffic: 9/20 requests", None),
            &service(0.01, "insufficient data: 9/20 requests"),
        );
        assert_ne!(a, b);
        assert_eq!(key_a, key_b);
        let (_, key_c) = progress(&rollout(4_000, "", None), &service(0.01, "healthy"));
        assert_ne!(key_a, key_c);
    }

    #[test]
    fn a_finished_rollout_gives_its_exit_status() {
        let mut r = rollout(0, "", None);
        assert_eq!(verdict(false, "web", &r), None);
        for (state, exit) in [
            (RolloutOutcome::Completed, Exit::Completed),
            (RolloutOutcome::RolledBack, Exit::RolledBack),
            (RolloutOutcome::Abandoned, Exit::RolledBack),
        ] {
            r.state = state;
            assert_eq!(verdict(false, "web", &r), Some(exit));
        }
    }
}
