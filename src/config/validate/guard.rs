//! `services[].guard`: the baseline, the window and the thresholds.

use super::*;

impl Validator {
    pub(super) fn guard(&mut self, path: &str, raw: RawGuard, known: &[String]) -> Option<Guard> {
        let baseline = self.version_ref(
            &format!("{path}.baseline"),
            raw.baseline.as_deref(),
            "missing baseline: name the version that traffic goes back to when another one trips",
            known,
        );
        let interval = self.positive_duration(
            &format!("{path}.interval"),
            raw.interval.as_ref(),
            GUARD_INTERVAL,
        );
        let window =
            self.positive_duration(&format!("{path}.window"), raw.window.as_ref(), GUARD_WINDOW);
        let mut ok = true;
        if let (Some(interval), Some(window)) = (interval, window) {
            if window < interval {
                self.err(
                    format!("{path}.window"),
                    format!(
                        "window ({}) is shorter than interval ({}): each verdict would miss requests; make window at least interval",
                        humantime::format_duration(window),
                        humantime::format_duration(interval)
                    ),
                );
                ok = false;
            }
        }
        let min_requests = match raw.min_requests {
            None => Some(GUARD_MIN_REQUESTS),
            Some(n) => self.int_in(
                &format!("{path}.min_requests"),
                &n,
                1,
                1_000_000_000,
                "requests in the window before the guard gives a verdict",
            ),
        };
        let consecutive = match raw.consecutive {
            None => Some(GUARD_CONSECUTIVE),
            Some(n) => self.int_in(
                &format!("{path}.consecutive"),
                &n,
                1,
                1000,
                "bad verdicts in a row before a trip",
            ),
        };
        let max_error_rate = self.optional_typed(
            format!("{path}.max_error_rate"),
            raw.max_error_rate.as_ref(),
            Fraction::from_scalar,
        );
        let max_error_rate_increase = self.optional_typed(
            format!("{path}.max_error_rate_increase"),
            raw.max_error_rate_increase.as_ref(),
            Fraction::from_scalar,
        );
        let max_latency_ratio = self.optional_typed(
            format!("{path}.max_latency_ratio"),
            raw.max_latency_ratio.as_ref(),
            Ratio::from_scalar,
        );
        let max_p95_latency = self.optional_positive_duration(
            &format!("{path}.max_p95_latency"),
            raw.max_p95_latency.as_ref(),
        );
        let max_p99_latency = self.optional_positive_duration(
            &format!("{path}.max_p99_latency"),
            raw.max_p99_latency.as_ref(),
        );
        let thresholds = [
            raw.max_error_rate.is_some(),
            raw.max_p95_latency.is_some(),
            raw.max_p99_latency.is_some(),
            raw.max_error_rate_increase.is_some(),
            raw.max_latency_ratio.is_some(),
        ];
        if !thresholds.contains(&true) {
            self.err(
                path,
                "no thresholds: set at least one of max_error_rate, max_p95_latency, max_p99_latency, max_error_rate_increase or max_latency_ratio, or the guard can never trip",
            );
            ok = false;
        }
        let on_revert = match raw.on_revert {
            None => Some(OnRevert::default()),
            Some(word) => self
                .word(
                    &format!("{path}.on_revert"),
                    &word,
                    "on_revert",
                    &["drain", "evict"],
                )
                .map(|i| {
                    if i == 0 {
                        OnRevert::Drain
                    } else {
                        OnRevert::Evict
                    }
                }),
        };
        let wilson = match raw.error_rate_test {
            None => Some(false),
            Some(word) => self
                .word(
                    &format!("{path}.error_rate_test"),
                    &word,
                    "error_rate_test",
                    &["threshold", "wilson"],
                )
                .map(|i| i == 1),
        };
        let webhook = match raw.webhook {
            None => Ok(None),
            Some(text) => self
                .url(&format!("{path}.webhook"), &text)
                .map(Some)
                .ok_or(()),
        };
        let checks = self.checks(&format!("{path}.checks"), raw.checks);
        if !ok {
            return None;
        }
        Some(Guard {
            baseline: baseline?,
            interval: interval?,
            window: window?,
            min_requests: min_requests?,
            max_error_rate: max_error_rate.ok()?,
            max_p95_latency: max_p95_latency.ok()?,
            max_p99_latency: max_p99_latency.ok()?,
            max_error_rate_increase: max_error_rate_increase.ok()?,
            max_latency_ratio: max_latency_ratio.ok()?,
            consecutive: consecutive?,
            on_revert: on_revert?,
            webhook: webhook.ok()?,
            wilson: wilson?,
            per_method: raw.per_method.unwrap_or(false),
            checks: checks?,
        })
    }
}
