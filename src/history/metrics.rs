//! `veer_rollouts_total{service,outcome}` and
//! `veer_rollout_duration_seconds{service,outcome}`: how rollouts end and how
//! long they take, from which a dashboard derives the success rate, the
//! rollback rate and the time to deploy.
//!
//! Counted by the control actor when a rollout's record closes, read when
//! `/metrics` is scraped. The one lock is a `Mutex` held for a few map
//! operations by those two alone, a handful of times per rollout: never on
//! the request path.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::Ended;
use crate::state::history::Outcome;

/// Upper bounds of the duration buckets, in seconds: from a test's seconds
/// to a cautious rollout's day.
const BUCKETS: [f64; 12] = [
    10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0, 86400.0,
];

/// The outcomes a rollout ends with, each declared at 0 for every service
/// with a rollout so a rate over them is defined from the start.
const OUTCOMES: [Outcome; 3] = [Outcome::Completed, Outcome::RolledBack, Outcome::Abandoned];

#[derive(Debug, Default, Clone)]
struct Series {
    count: u64,
    sum_seconds: f64,
    /// Per bucket of `BUCKETS`, not cumulative; `+Inf` is `count`.
    buckets: [u64; BUCKETS.len()],
}

/// The rollout counts, by service and outcome.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(String, Outcome), Series>>,
}

impl Metrics {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<(String, Outcome), Series>> {
        // A panic while holding it leaves whole numbers behind: go on.
        self.series.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts rollouts of `service` that ended.
    pub fn count(&self, service: &str, ended: &[Ended]) {
        if ended.is_empty() {
            return;
        }
        let mut series = self.lock();
        for end in ended {
            let entry = series
                .entry((service.to_string(), end.outcome))
                .or_default();
            let seconds = end.duration.as_secs_f64();
            entry.count += 1;
            entry.sum_seconds += seconds;
            if let Some(i) = BUCKETS.iter().position(|&le| seconds <= le) {
                entry.buckets[i] += 1;
            }
        }
    }

    /// Writes both families: every counted series, and zeros for the
    /// services in `with_rollout` not counted yet. Services that left the
    /// config (not in `present`) are dropped.
    pub fn render(&self, text: &mut String, present: &[&str], with_rollout: &[&str]) {
        let mut series = self.lock();
        series.retain(|(service, _), _| present.contains(&service.as_str()));
        for service in with_rollout {
            for outcome in OUTCOMES {
                series.entry(((*service).to_string(), outcome)).or_default();
            }
        }
        let series = series.clone();
        let _ = writeln!(
            text,
            "# HELP veer_rollouts_total Rollouts that ended, by how they ended."
        );
        let _ = writeln!(text, "# TYPE veer_rollouts_total counter");
        for ((service, outcome), s) in &series {
            let labels = labels(service, *outcome);
            let _ = writeln!(text, "veer_rollouts_total{{{labels}}} {}", s.count);
        }
        let _ = writeln!(
            text,
            "# HELP veer_rollout_duration_seconds How long rollouts took, from their first step to their end."
        );
        let _ = writeln!(text, "# TYPE veer_rollout_duration_seconds histogram");
        for ((service, outcome), s) in &series {
            let labels = labels(service, *outcome);
            let mut cumulative = 0;
            for (le, n) in BUCKETS.iter().zip(s.buckets) {
                cumulative += n;
                let _ = writeln!(
                    text,
                    "veer_rollout_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                text,
                "veer_rollout_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                text,
                "veer_rollout_duration_seconds_sum{{{labels}}} {}",
                s.sum_seconds
            );
            let _ = writeln!(
                text,
                "veer_rollout_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
    }
}

fn labels(service: &str, outcome: Outcome) -> String {
    let mut out = String::from("service=\"");
    for c in service.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    let _ = write!(out, "\",outcome=\"{}\"", outcome.word());
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn counts_and_buckets_are_cumulative_and_zeros_are_declared() {
        let metrics = Metrics::default();
        metrics.count(
            "web",
            &[
                Ended {
                    outcome: Outcome::Completed,
                    duration: Duration::from_secs(20),
                },
                Ended {
                    outcome: Outcome::Completed,
                    duration: Duration::from_secs(4000),
                },
            ],
        );
        metrics.count(
            "gone",
            &[Ended {
                outcome: Outcome::RolledBack,
                duration: Duration::from_secs(1),
            }],
        );
        let mut text = String::new();
        metrics.render(&mut text, &["web"], &["web"]);
        assert!(
            text.contains("veer_rollouts_total{service=\"web\",outcome=\"completed\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("veer_rollouts_total{service=\"web\",outcome=\"rolled_back\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("veer_rollout_duration_seconds_bucket{service=\"web\",outcome=\"completed\",le=\"10\"} 0\n"), "{text}");
        assert!(text.contains("veer_rollout_duration_seconds_bucket{service=\"web\",outcome=\"completed\",le=\"30\"} 1\n"), "{text}");
        assert!(text.contains("veer_rollout_duration_seconds_bucket{service=\"web\",outcome=\"completed\",le=\"+Inf\"} 2\n"), "{text}");
        assert!(
            text.contains(
                "veer_rollout_duration_seconds_sum{service=\"web\",outcome=\"completed\"} 4020\n"
            ),
            "{text}"
        );
        assert!(
            !text.contains("gone"),
            "a service that left is dropped: {text}"
        );
    }
}
