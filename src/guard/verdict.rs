//! The guard's judgement of one version, as a pure function of its window
//! figures, the baseline's figures over the same window, and the policy. No
//! clock, no I/O: everything here is tested without sockets.

use crate::config::{Fraction, Guard, Ratio};
use crate::telemetry::Figures;

/// Why a version was judged bad (or rolled back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    ErrorRate,
    /// p95 or p99 over its limit.
    Latency,
    /// Error rate above the baseline's by more than allowed.
    ErrorRateIncrease,
    /// p95 above the baseline's times the allowed ratio.
    LatencyRatio,
    /// An operator's `veer rollback`.
    Manual,
}

impl Reason {
    /// The `reason` label of `veer_guard_trips_total` and the webhook event.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ErrorRate => "error_rate",
            Reason::Latency => "latency",
            Reason::ErrorRateIncrease => "error_rate_increase",
            Reason::LatencyRatio => "latency_ratio",
            Reason::Manual => "manual",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Healthy,
    /// Fewer than `min_requests` in the window: no judgement either way.
    Insufficient {
        requests: u64,
        needed: u64,
    },
    Bad {
        reason: Reason,
        /// What was measured (a rate, seconds, or a ratio) ...
        observed: f64,
        /// ... and the limit it crossed, in the same unit.
        threshold: f64,
        /// Which figure: `error_rate`, `p95`, `p99`, ...
        figure: &'static str,
    },
}

/// z for a one-sided 95 % bound.
const Z95: f64 = 1.645;

/// Judges `candidate` against `policy`, and against `baseline` for the
/// relative thresholds (skipped while the baseline has too little data).
pub fn verdict(candidate: &Figures, baseline: Option<&Figures>, policy: &Guard) -> Verdict {
    if candidate.requests < policy.min_requests.max(1) {
        return Verdict::Insufficient {
            requests: candidate.requests,
            needed: policy.min_requests.max(1),
        };
    }
    let rate = candidate.error_rate();
    if let Some(max) = policy.max_error_rate.map(Fraction::get) {
        // With the statistical test, the error rate must be above the limit
        // with 95 % confidence: 3 errors in 40 requests is not 300 in 4,000.
        let judged = if policy.wilson {
            wilson_lower_bound(candidate.errors, candidate.requests, Z95)
        } else {
            rate
        };
        if judged > max {
            return bad(Reason::ErrorRate, "error_rate", rate, max);
        }
    }
    let seconds = |us: Option<f64>| us.map(|v| v / 1_000_000.0);
    if let (Some(max), Some(p95)) = (policy.max_p95_latency, seconds(candidate.p95_us)) {
        if p95 > max.as_secs_f64() {
            return bad(Reason::Latency, "p95", p95, max.as_secs_f64());
        }
    }
    if let (Some(max), Some(p99)) = (policy.max_p99_latency, seconds(candidate.p99_us)) {
        if p99 > max.as_secs_f64() {
            return bad(Reason::Latency, "p99", p99, max.as_secs_f64());
        }
    }
    let Some(base) = baseline.filter(|b| b.requests >= policy.min_requests.max(1)) else {
        return Verdict::Healthy;
    };
    if let Some(max_increase) = policy.max_error_rate_increase.map(Fraction::get) {
        let increase = rate - base.error_rate();
        if increase > max_increase {
            return bad(
                Reason::ErrorRateIncrease,
                "error_rate_increase",
                increase,
                max_increase,
            );
        }
    }
    if let (Some(max_ratio), Some(p95), Some(base_p95)) = (
        policy.max_latency_ratio.map(Ratio::get),
        candidate.p95_us,
        base.p95_us,
    ) {
        let ratio = p95 / base_p95.max(1.0);
        if ratio > max_ratio {
            return bad(Reason::LatencyRatio, "p95_ratio", ratio, max_ratio);
        }
    }
    Verdict::Healthy
}

fn bad(reason: Reason, figure: &'static str, observed: f64, threshold: f64) -> Verdict {
    Verdict::Bad {
        reason,
        observed,
        threshold,
        figure,
    }
}

/// The lower bound of the Wilson score interval for `errors` of `n`.
pub fn wilson_lower_bound(errors: u64, n: u64, z: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    let p = errors as f64 / n;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let margin = z * ((p * (1.0 - p) + z2 / (4.0 * n)) / n).sqrt();
    ((centre - margin) / (1.0 + z2 / n)).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy() -> Guard {
        Guard {
            per_method: false,
            checks: Vec::new(),
            baseline: 0,
            interval: Duration::from_secs(1),
            window: Duration::from_secs(30),
            min_requests: 50,
            max_error_rate: Fraction::new(0.05),
            max_p95_latency: Some(Duration::from_millis(500)),
            max_p99_latency: None,
            max_error_rate_increase: None,
            max_latency_ratio: None,
            consecutive: 2,
            on_revert: Default::default(),
            webhook: None,
            wilson: false,
        }
    }

    fn figures(requests: u64, errors: u64, p95_ms: f64) -> Figures {
        Figures {
            requests,
            errors,
            span: Duration::from_secs(30),
            p50_us: Some(p95_ms * 500.0),
            p95_us: Some(p95_ms * 1000.0),
            p99_us: Some(p95_ms * 1000.0),
        }
    }

    #[test]
    fn too_few_requests_give_no_verdict_however_bad() {
        let v = verdict(&figures(12, 12, 5_000.0), None, &policy());
        assert_eq!(
            v,
            Verdict::Insufficient {
                requests: 12,
                needed: 50
            }
        );
    }

    #[test]
    fn error_rate_and_latency_trip() {
        assert_eq!(
            verdict(&figures(100, 5, 10.0), None, &policy()),
            Verdict::Healthy
        );
        match verdict(&figures(100, 6, 10.0), None, &policy()) {
            Verdict::Bad {
                reason, observed, ..
            } => {
                assert_eq!(reason, Reason::ErrorRate);
                assert!((observed - 0.06).abs() < 1e-9);
            }
            other => panic!("{other:?}"),
        }
        match verdict(&figures(100, 0, 800.0), None, &policy()) {
            Verdict::Bad { reason, figure, .. } => {
                assert_eq!((reason, figure), (Reason::Latency, "p95"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn relative_thresholds_compare_with_the_baseline() {
        let mut p = policy();
        p.max_p95_latency = None;
        p.max_error_rate = None;
        p.max_latency_ratio = Ratio::new(1.5);
        p.max_error_rate_increase = Fraction::new(0.02);
        let slow = figures(200, 0, 800.0);
        // Both slow: the load, not the canary.
        assert_eq!(
            verdict(&slow, Some(&figures(2_000, 0, 790.0)), &p),
            Verdict::Healthy
        );
        // Only the canary slow.
        assert!(matches!(
            verdict(&slow, Some(&figures(2_000, 0, 100.0)), &p),
            Verdict::Bad {
                reason: Reason::LatencyRatio,
                ..
            }
        ));
        // Baseline errs as much: fine; canary errs more: bad.
        assert_eq!(
            verdict(
                &figures(200, 20, 10.0),
                Some(&figures(2_000, 190, 10.0)),
                &p
            ),
            Verdict::Healthy
        );
        assert!(matches!(
            verdict(&figures(200, 20, 10.0), Some(&figures(2_000, 20, 10.0)), &p),
            Verdict::Bad {
                reason: Reason::ErrorRateIncrease,
                ..
            }
        ));
        // A baseline with too little data is no yardstick.
        assert_eq!(
            verdict(&slow, Some(&figures(10, 0, 1.0)), &p),
            Verdict::Healthy
        );
    }

    #[test]
    fn wilson_needs_evidence() {
        let mut p = policy();
        p.min_requests = 20;
        p.wilson = true;
        // 3 errors in 40 (7.5 %) is not proof of more than 5 %...
        assert_eq!(verdict(&figures(40, 3, 1.0), None, &p), Verdict::Healthy);
        // ... 300 in 4,000 is.
        assert!(matches!(
            verdict(&figures(4_000, 300, 1.0), None, &p),
            Verdict::Bad {
                reason: Reason::ErrorRate,
                ..
            }
        ));
        assert!(wilson_lower_bound(0, 100, Z95) == 0.0);
        let lb = wilson_lower_bound(50, 100, 1.96);
        assert!((lb - 0.4038).abs() < 1e-3, "{lb}");
    }
}
