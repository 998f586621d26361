//! `GET /metrics`: the telemetry's text, then the gauges that describe the
//! release state of each service — the share of traffic each version gets,
//! its latch, the guard's verdict, the rollout's state — written from the
//! snapshot and `control` at scrape time, so a version or service removed
//! from the config drops out of them at once. (The telemetry's own series
//! of removed versions and endpoints left on the publish that removed them,
//! and the rare counters of present ones were declared at 0 then: see
//! `Telemetry::retain`.)
//!
//! A scrape streams: the text is written on a blocking thread in chunks of
//! about 64 KB that the response body sends as they come, so a large config
//! never builds its whole exposition in memory, and a client that goes away
//! stops the writing. With `telemetry.idle_series_after`, a version with no
//! request for that long is left out of every family, the release gauges
//! included (unless it is latched: an operator must see that).

use std::convert::Infallible;
use std::fmt::{self, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use tokio::sync::mpsc;

use crate::control::{outcome_word, Control};
use crate::state::RolloutOutcome;
use crate::telemetry::operator::{gauge_family, sample};

const VERDICTS: [&str; 4] = ["healthy", "insufficient", "bad", "none"];

const ROLLOUT_STATES: [&str; 6] = [
    "in_progress",
    "paused",
    "completed",
    "rolled_back",
    "abandoned",
    "none",
];

/// The size a chunk of the streamed text is sent at.
const CHUNK: usize = 64 * 1024;

/// Chunks of text in flight between the writer and the response body.
const IN_FLIGHT: usize = 4;

/// Starts writing the text on a blocking thread; the body sends it as it
/// is written.
pub fn stream(control: Arc<Control>) -> MetricsBody {
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut chunks = Chunks {
            buf: String::with_capacity(CHUNK + CHUNK / 4),
            tx: Some(tx),
        };
        // An error means the client went away: nothing more to do.
        if render_into(&control, &mut chunks).is_ok() {
            let _ = chunks.send();
        }
    });
    MetricsBody { rx }
}

/// The body of a streamed scrape.
pub struct MetricsBody {
    rx: mpsc::Receiver<Bytes>,
}

impl http_body::Body for MetricsBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// Text written in chunks: each sent once it holds `CHUNK` bytes.
struct Chunks {
    buf: String,
    tx: Option<mpsc::Sender<Bytes>>,
}

impl Chunks {
    /// Sends what is written so far; an error once the body is gone.
    fn send(&mut self) -> fmt::Result {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        if self.buf.is_empty() {
            return Ok(());
        }
        let text = std::mem::replace(&mut self.buf, String::with_capacity(CHUNK + CHUNK / 4));
        tx.blocking_send(Bytes::from(text)).map_err(|_| fmt::Error)
    }

    fn send_if_full(&mut self) -> fmt::Result {
        if self.buf.len() >= CHUNK {
            self.send()
        } else {
            Ok(())
        }
    }
}

impl Write for Chunks {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.buf.push_str(s);
        self.send_if_full()
    }
}

fn render_into(control: &Control, out: &mut Chunks) -> fmt::Result {
    let telemetry = control.telemetry();
    let snapshot = control.snapshot();
    let listeners: Vec<String> = control
        .config()
        .listeners
        .iter()
        .map(|l| l.name.clone())
        .collect();
    let listeners: Vec<&str> = listeners.iter().map(String::as_str).collect();
    telemetry.retain_listeners(&listeners);

    let shown = telemetry.shown();
    telemetry.render_into(out, &shown)?;
    // A version is shown when it had traffic lately, or is latched.
    let is_shown = |version: &crate::snapshot::VersionSnapshot| {
        version.latched || telemetry.is_shown(&version.stats, &shown)
    };
    crate::mirror::render(
        &mut out.buf,
        snapshot.services.iter().filter_map(|s| s.mirror.as_deref()),
    );
    out.send_if_full()?;

    if let Some(fleet) = control.fleet() {
        gauge_family(
            &mut out.buf,
            "veer_fleet_connected",
            "1 while this replica holds a working connection to the fleet's etcd, else 0.",
        );
        let connected = if fleet.connected() { 1.0 } else { 0.0 };
        sample(&mut out.buf, "veer_fleet_connected", &[], connected);
    }

    gauge_family(
        &mut out.buf,
        "veer_version_weight_percent",
        "Each version's share of its service's weighted traffic, in percent (0-100).",
    );
    for service in &snapshot.services {
        let total: u64 = service.versions.iter().map(|v| u64::from(v.weight)).sum();
        for version in service.versions.iter().filter(|v| is_shown(v)) {
            let percent = if total == 0 {
                0.0
            } else {
                f64::from(version.weight) * 100.0 / total as f64
            };
            sample(
                &mut out.buf,
                "veer_version_weight_percent",
                &[("service", &service.name), ("version", &version.name)],
                percent,
            );
        }
        out.send_if_full()?;
    }

    gauge_family(
        &mut out.buf,
        "veer_version_latched",
        "1 while the guard's latch keeps this revision of the version at weight 0.",
    );
    for service in &snapshot.services {
        for version in service.versions.iter().filter(|v| is_shown(v)) {
            sample(
                &mut out.buf,
                "veer_version_latched",
                &[
                    ("service", &service.name),
                    ("version", &version.name),
                    ("revision", &version.revision),
                ],
                if version.latched { 1.0 } else { 0.0 },
            );
        }
        out.send_if_full()?;
    }

    gauge_family(
        &mut out.buf,
        "veer_guard_verdict",
        "The guard's last verdict on each judged version: 1 on the current one of healthy, insufficient, bad, none.",
    );
    for service in &snapshot.services {
        let Some(guard) = &service.guard else {
            continue;
        };
        for (index, version) in service.versions.iter().enumerate() {
            if index == guard.baseline || !is_shown(version) {
                continue;
            }
            let words = control.verdict(&service.name, &version.name);
            let current = match words.as_deref() {
                Some(w) if w.starts_with("healthy") => "healthy",
                Some(w) if w.starts_with("insufficient") => "insufficient",
                Some(w) if w.starts_with("bad") => "bad",
                _ => "none",
            };
            for verdict in VERDICTS {
                sample(
                    &mut out.buf,
                    "veer_guard_verdict",
                    &[
                        ("service", &service.name),
                        ("version", &version.name),
                        ("verdict", verdict),
                    ],
                    if verdict == current { 1.0 } else { 0.0 },
                );
            }
        }
        out.send_if_full()?;
    }

    gauge_family(
        &mut out.buf,
        "veer_rollout_state",
        "Each rollout's state: 1 on the current one of in_progress, paused, completed, rolled_back, abandoned, none.",
    );
    let rollouts = snapshot
        .services
        .iter()
        .filter(|s| s.rollout.is_some() && s.versions.iter().any(|v| is_shown(v)));
    for service in rollouts {
        let current = match control.rollout(&service.name) {
            None => "none",
            Some(p) if p.paused && p.outcome == RolloutOutcome::InProgress => "paused",
            Some(p) => outcome_word(p.outcome),
        };
        for state in ROLLOUT_STATES {
            sample(
                &mut out.buf,
                "veer_rollout_state",
                &[("service", &service.name), ("state", state)],
                if state == current { 1.0 } else { 0.0 },
            );
        }
        if !ROLLOUT_STATES.contains(&current) {
            sample(
                &mut out.buf,
                "veer_rollout_state",
                &[("service", &service.name), ("state", current)],
                1.0,
            );
        }
        out.send_if_full()?;
    }
    fleet_leader(&mut out.buf, control);
    history_families(control, &snapshot, &mut out.buf);
    crate::checks::render_metrics(&mut out.buf, &control.view());
    out.send_if_full()?;
    Ok(())
}

/// `veer_rollouts_total` and `veer_rollout_duration_seconds` (`history`).
fn history_families(control: &Control, snapshot: &crate::snapshot::Snapshot, text: &mut String) {
    let present: Vec<&str> = snapshot.services.iter().map(|s| &*s.name).collect();
    let with_rollout: Vec<&str> = snapshot
        .services
        .iter()
        .filter(|s| s.rollout.is_some())
        .map(|s| &*s.name)
        .collect();
    control
        .history_metrics()
        .render(text, &present, &with_rollout);
}

/// `veer_fleet_leader`: in a fleet only (a single veer is its own leader,
/// and says nothing of it).
fn fleet_leader(text: &mut String, control: &Control) {
    let leadership = control.leadership();
    if !leadership.in_fleet() {
        return;
    }
    gauge_family(
        text,
        "veer_fleet_leader",
        "1 on the replica that leads the fleet's rollout clock (advances steps, counts their hold), 0 on the others.",
    );
    sample(
        text,
        "veer_fleet_leader",
        &[("replica", leadership.replica())],
        if leadership.is_leader() { 1.0 } else { 0.0 },
    );
}

#[cfg(test)]
mod tests {
    use crate::guard::verdict::Reason;
    use crate::telemetry::registry::TRIP_REASONS;

    #[test]
    fn telemetry_knows_every_trip_reason() {
        for reason in [
            Reason::ErrorRate,
            Reason::Latency,
            Reason::ErrorRateIncrease,
            Reason::LatencyRatio,
            Reason::Manual,
        ] {
            assert!(TRIP_REASONS.contains(&reason.as_str()), "{reason:?}");
        }
    }
}
