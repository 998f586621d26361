//! `services[].mirror` and `services[].rollout.shadow`: which requests are
//! copied to a shadow version, within what budget, and how the shadow stage
//! judges the pairs.

use super::*;

/// Copies in flight per service when `concurrency` is omitted.
const MIRROR_CONCURRENCY: usize = 64;
/// The body cap when `max_body` is omitted.
const MIRROR_MAX_BODY: usize = 64 * 1024;
/// A copy's budget when `timeout` is omitted.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(5);
/// `max_body` may not exceed this: `concurrency × max_body` is the memory a
/// mirror may hold, and it should stay a budget, not a hazard.
const MIRROR_MAX_BODY_LIMIT: i128 = 16 * 1024 * 1024;

/// Methods that change nothing on the server (RFC 9110 §9.2.1): a copy of
/// them is harmless even to a shadow that ignores `x-veer-shadow`.
fn is_safe(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::TRACE
    )
}

impl Validator {
    pub(super) fn mirror(
        &mut self,
        path: &str,
        raw: RawMirror,
        known: &[String],
    ) -> Option<Mirror> {
        let version = self.version_ref(
            &format!("{path}.version"),
            raw.version.as_deref(),
            "missing version: name the version that gets the copies, such as canary",
            known,
        );
        let percent = match &raw.percent {
            None => Percent::new(100),
            Some(raw) => self.typed(
                format!("{path}.percent"),
                Percent::from_scalar(raw, 1, "percent of requests copied"),
            ),
        };
        let allow_unsafe = raw.allow_unsafe.unwrap_or(false);
        let mut ok = true;
        let methods = match raw.methods {
            None => vec![http::Method::GET, http::Method::HEAD],
            Some(list) => {
                if list.is_empty() {
                    self.err(
                        format!("{path}.methods"),
                        "no methods: list the methods to copy, such as [GET, HEAD], or remove methods for that default",
                    );
                    ok = false;
                }
                let mut methods = Vec::new();
                for (k, raw) in list.iter().enumerate() {
                    let at = format!("{path}.methods[{k}]");
                    let Some(text) = self.text(&at, raw) else {
                        ok = false;
                        continue;
                    };
                    let Ok(method) = http::Method::from_bytes(text.to_ascii_uppercase().as_bytes())
                    else {
                        self.err(&at, format!("`{text}` is not an HTTP method"));
                        ok = false;
                        continue;
                    };
                    if !is_safe(&method) && !allow_unsafe {
                        self.err(
                            &at,
                            format!(
                                "{method} is not a safe method: a copy would repeat its side effects on the shadow; set allow_unsafe: true only if the shadow skips side effects for requests carrying x-veer-shadow: 1"
                            ),
                        );
                        ok = false;
                    }
                    if methods.contains(&method) {
                        self.err(&at, format!("duplicate method {method}: remove one"));
                        ok = false;
                    }
                    methods.push(method);
                }
                methods
            }
        };
        let max_body = match &raw.max_body {
            None => Some(MIRROR_MAX_BODY),
            Some(raw) => self.int_in(
                &format!("{path}.max_body"),
                raw,
                0,
                MIRROR_MAX_BODY_LIMIT,
                "bytes of request body copied; a larger body is not mirrored",
            ),
        };
        let concurrency = match &raw.concurrency {
            None => Some(MIRROR_CONCURRENCY),
            Some(raw) => self.int_in(
                &format!("{path}.concurrency"),
                raw,
                1,
                100_000,
                "copies in flight at once; more are dropped",
            ),
        };
        let timeout = self.positive_duration(
            &format!("{path}.timeout"),
            raw.timeout.as_ref(),
            MIRROR_TIMEOUT,
        );
        let mut deterministic = Vec::new();
        for (k, prefix) in raw
            .deterministic
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            match check_path_prefix(&prefix) {
                Ok(()) => deterministic.push(prefix),
                Err(reason) => {
                    self.err(format!("{path}.deterministic[{k}]"), reason);
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        Some(Mirror {
            deterministic,
            version: version?,
            percent: percent?,
            methods,
            max_body: max_body?,
            concurrency: concurrency?,
            timeout: timeout?,
        })
    }

    pub(super) fn shadow(&mut self, path: &str, raw: RawShadow) -> Option<Shadow> {
        let hold_path = format!("{path}.hold");
        let hold = match &raw.hold {
            None => {
                self.err(
                    &hold_path,
                    "missing hold: say how long the candidate is judged on mirrored copies before its first live step, such as 10m",
                );
                None
            }
            Some(raw) => self.positive_duration(&hold_path, Some(raw), Duration::ZERO),
        };
        let max_mismatch_rate = match &raw.max_mismatch_rate {
            None => {
                self.err(
                    format!("{path}.max_mismatch_rate"),
                    "missing max_mismatch_rate: give the share of pairs where the shadow may fail and the live answer did not, such as 0.01",
                );
                None
            }
            Some(raw) => self.typed(
                format!("{path}.max_mismatch_rate"),
                Fraction::from_scalar(raw),
            ),
        };
        let max_latency_ratio = self.optional_typed(
            format!("{path}.max_latency_ratio"),
            raw.max_latency_ratio.as_ref(),
            Ratio::from_scalar,
        );
        let min_requests = match &raw.min_requests {
            None => Ok(None),
            Some(n) => self
                .int_in(
                    &format!("{path}.min_requests"),
                    n,
                    1,
                    1_000_000_000,
                    "pairs before the shadow stage gives a verdict",
                )
                .map(Some)
                .ok_or(()),
        };
        Some(Shadow {
            hold: hold?,
            max_mismatch_rate: max_mismatch_rate?,
            max_latency_ratio: max_latency_ratio.ok()?,
            min_requests: min_requests.ok()?,
        })
    }

    /// A shadow stage judges the copies the mirror sends to the candidate:
    /// without that mirror it would wait for pairs that never come.
    pub(super) fn shadow_needs_mirror(
        &mut self,
        path: &str,
        rollout: &Rollout,
        mirror: Option<&Mirror>,
        known: &[String],
    ) -> bool {
        if rollout.shadow.is_none() || mirror.is_some_and(|m| m.version == rollout.candidate) {
            return true;
        }
        let candidate = known
            .get(rollout.candidate)
            .map_or("the candidate", String::as_str);
        self.err(
            format!("{path}.rollout.shadow"),
            format!(
                "a shadow stage judges mirrored copies: add `mirror: {{ version: {candidate} }}` to the service (the mirror's version must be the rollout's candidate)"
            ),
        );
        false
    }
}
