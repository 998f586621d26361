//! The pure part of a check: what one run's result does to its streaks,
//! and when the streaks call for a trip or a pause. Tested without sockets.

use crate::config::Check;
use crate::status::CheckVerdict;

/// One check's state for one version (and, for a rollout's check, one step).
#[derive(Debug, Clone, PartialEq)]
pub struct Tally {
    pub verdict: CheckVerdict,
    pub value: Option<f64>,
    pub reason: Option<String>,
    pub consecutive_failures: u32,
    pub consecutive_inconclusive: u32,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            verdict: CheckVerdict::Pending,
            value: None,
            reason: None,
            consecutive_failures: 0,
            consecutive_inconclusive: 0,
        }
    }
}

/// What a run's result calls for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    Nothing,
    /// `failure_limit` failed runs in a row: the version trips, with the
    /// value and the bound it broke.
    Trip {
        value: f64,
        bound: f64,
    },
    /// `inconclusive_limit` inconclusive runs in a row: the rollout pauses.
    Pause,
}

impl Tally {
    /// Records one run: `Ok(value)` read a number, `Err(reason)` could not.
    /// A trip or a pause is called for once, on the run that reaches the
    /// limit.
    pub fn record(&mut self, check: &Check, run: Result<f64, String>) -> Act {
        match run {
            Ok(value) => {
                self.value = Some(value);
                self.consecutive_inconclusive = 0;
                match check.broken_bound(value) {
                    None => {
                        self.verdict = CheckVerdict::Pass;
                        self.reason = None;
                        self.consecutive_failures = 0;
                        Act::Nothing
                    }
                    Some(bound) => {
                        self.verdict = CheckVerdict::Fail;
                        let side = if Some(bound) == check.max && value > bound {
                            "above max"
                        } else {
                            "below min"
                        };
                        self.reason = Some(format!("{value} is {side} {bound}"));
                        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                        if self.consecutive_failures == check.failure_limit {
                            Act::Trip { value, bound }
                        } else {
                            Act::Nothing
                        }
                    }
                }
            }
            Err(reason) => {
                // The check failed, not the version: its failure streak
                // neither grows nor clears.
                self.verdict = CheckVerdict::Inconclusive;
                self.value = None;
                self.reason = Some(reason);
                self.consecutive_inconclusive = self.consecutive_inconclusive.saturating_add(1);
                if self.consecutive_inconclusive == check.inconclusive_limit {
                    Act::Pause
                } else {
                    Act::Nothing
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::check::Template;
    use crate::config::CheckSource;

    fn check(failure_limit: u32, inconclusive_limit: u32) -> Check {
        Check {
            name: "conversion".into(),
            source: CheckSource::Prometheus {
                address: http::Uri::from_static("http://127.0.0.1:9090"),
                query: Template::parse("x").expect("valid"),
            },
            min: Some(0.1),
            max: Some(0.5),
            failure_limit,
            inconclusive_limit,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn failures_in_a_row_trip_once_at_the_limit() {
        let c = check(2, 3);
        let mut t = Tally::default();
        assert_eq!(t.record(&c, Ok(0.9)), Act::Nothing);
        assert_eq!(t.reason.as_deref(), Some("0.9 is above max 0.5"));
        assert_eq!(
            t.record(&c, Ok(0.01)),
            Act::Trip {
                value: 0.01,
                bound: 0.1
            }
        );
        assert_eq!(t.reason.as_deref(), Some("0.01 is below min 0.1"));
        assert_eq!(t.record(&c, Ok(0.9)), Act::Nothing);
        assert_eq!(t.consecutive_failures, 3);
    }

    #[test]
    fn a_pass_clears_the_failure_streak() {
        let c = check(2, 3);
        let mut t = Tally::default();
        t.record(&c, Ok(0.9));
        assert_eq!(t.record(&c, Ok(0.3)), Act::Nothing);
        assert_eq!((t.verdict, t.consecutive_failures), (CheckVerdict::Pass, 0));
        assert_eq!(t.record(&c, Ok(0.9)), Act::Nothing);
    }

    #[test]
    fn inconclusive_runs_pause_at_their_limit_and_leave_failures_alone() {
        let c = check(2, 2);
        let mut t = Tally::default();
        t.record(&c, Ok(0.9));
        assert_eq!(t.record(&c, Err("down".into())), Act::Nothing);
        assert_eq!((t.consecutive_failures, t.value), (1, None));
        assert_eq!(t.record(&c, Err("down".into())), Act::Pause);
        assert_eq!(t.verdict, CheckVerdict::Inconclusive);
        // A conclusive run ends the inconclusive streak; the failure streak
        // goes on where it was.
        assert_eq!(
            t.record(&c, Ok(0.9)),
            Act::Trip {
                value: 0.9,
                bound: 0.5
            }
        );
        assert_eq!(t.consecutive_inconclusive, 0);
    }
}
