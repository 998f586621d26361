//! `services[].health_check` and `outlier_detection`.

use super::*;

impl Validator {
    pub(super) fn health_check(&mut self, path: &str, raw: RawHealthCheck) -> Option<HealthCheck> {
        let probe_path = match self.required(
            &format!("{path}.path"),
            raw.path,
            "missing path: give the path the probe requests, such as /health/readiness",
        ) {
            Some(probe) if probe.starts_with('/') => Some(probe),
            Some(probe) => {
                self.err(
                    format!("{path}.path"),
                    format!(
                        "`{probe}` does not start with `/`: write the path the probe requests, such as /health/readiness"
                    ),
                );
                None
            }
            None => None,
        };
        let interval = self.positive_duration(
            &format!("{path}.interval"),
            raw.interval.as_ref(),
            HEALTH_INTERVAL,
        );
        let timeout = self.positive_duration(
            &format!("{path}.timeout"),
            raw.timeout.as_ref(),
            HEALTH_TIMEOUT,
        );
        if let (Some(interval), Some(timeout)) = (interval, timeout) {
            if timeout > interval {
                self.err(
                    format!("{path}.timeout"),
                    format!(
                        "timeout ({}) is longer than interval ({}): a probe must end before the next one starts; shorten timeout or lengthen interval",
                        humantime::format_duration(timeout),
                        humantime::format_duration(interval)
                    ),
                );
                return None;
            }
        }
        let threshold = |this: &mut Self, name: &str, raw: Option<Scalar>, default: u32| match raw {
            None => Some(default),
            Some(n) => this.int_in(&format!("{path}.{name}"), &n, 1, 100, "probes in a row"),
        };
        let healthy_threshold = threshold(self, "healthy_threshold", raw.healthy_threshold, 1);
        let unhealthy_threshold =
            threshold(self, "unhealthy_threshold", raw.unhealthy_threshold, 3);
        let mut expected_statuses = Vec::new();
        let mut statuses_ok = true;
        for (k, status) in raw.expected_statuses.unwrap_or_default().iter().enumerate() {
            match status_range(status) {
                Some(range) => expected_statuses.push(range),
                None => {
                    self.err(
                        format!("{path}.expected_statuses[{k}]"),
                        format!("`{status}` is not a status (200) or a range (200-299) within 100..=599"),
                    );
                    statuses_ok = false;
                }
            }
        }
        if expected_statuses.is_empty() {
            expected_statuses.push((200, 399));
        }
        let initial_healthy = match raw.initial {
            None => Some(None),
            Some(word) => self
                .word(
                    &format!("{path}.initial"),
                    &word,
                    "initial state",
                    &["healthy", "unhealthy"],
                )
                .map(|i| Some(i == 0)),
        };
        if !statuses_ok {
            return None;
        }
        Some(HealthCheck {
            path: probe_path?,
            interval: interval?,
            timeout: timeout?,
            healthy_threshold: healthy_threshold?,
            unhealthy_threshold: unhealthy_threshold?,
            expected_statuses,
            initial_healthy: initial_healthy?,
        })
    }

    pub(super) fn outlier(&mut self, path: &str, raw: Option<RawOutlier>) -> Option<Outlier> {
        let defaults = Outlier::default();
        let Some(raw) = raw else {
            return Some(defaults);
        };
        let consecutive_failures = match raw.consecutive_failures {
            None => Some(defaults.consecutive_failures),
            Some(n) => self.int_in(
                &format!("{path}.consecutive_failures"),
                &n,
                0,
                10_000,
                "failures in a row before an ejection; 0 turns ejection off",
            ),
        };
        let base_ejection = self.positive_duration(
            &format!("{path}.base_ejection"),
            raw.base_ejection.as_ref(),
            defaults.base_ejection,
        );
        let max_ejection = self.positive_duration(
            &format!("{path}.max_ejection"),
            raw.max_ejection.as_ref(),
            defaults.max_ejection,
        );
        let max_ejected_percent = match raw.max_ejected_percent {
            None => Some(defaults.max_ejected_percent),
            Some(n) => self.typed(
                format!("{path}.max_ejected_percent"),
                Percent::from_scalar(
                    &n,
                    0,
                    "percent of a version's endpoints that may be ejected at once",
                ),
            ),
        };
        if let (Some(base), Some(max)) = (base_ejection, max_ejection) {
            if max < base {
                self.err(
                    format!("{path}.max_ejection"),
                    format!(
                        "max_ejection ({}) is shorter than base_ejection ({}): make it at least as long",
                        humantime::format_duration(max),
                        humantime::format_duration(base)
                    ),
                );
                return None;
            }
        }
        Some(Outlier {
            consecutive_failures: consecutive_failures?,
            count_5xx: raw.count_5xx.unwrap_or(defaults.count_5xx),
            base_ejection: base_ejection?,
            max_ejection: max_ejection?,
            max_ejected_percent: max_ejected_percent?,
        })
    }
}
