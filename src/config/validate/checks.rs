//! `services[].rollout.checks` and `services[].guard.checks`: a number from
//! Prometheus or a JSON endpoint, its bounds, its limits and its pace.
//!
//! Decisions written down here:
//! - A check reads one source: `prometheus` or `web`, never both.
//! - At least one bound: a check with neither `min` nor `max` passes
//!   whatever it reads, a silent pass.
//! - `interval` is at least 1 s, and `timeout` at most `interval`, so runs of
//!   one check never overlap.
//! - `web.json_path` is an RFC 9535 JSONPath (the `serde_json_path` crate);
//!   `web.field` is a plain dotted path (`data.items.0.value`) for answers
//!   that need nothing more.
//! - The token file must exist and hold a token when the config is checked
//!   (`veer check`, in `cli/preflight.rs` beside the other files); it is read
//!   again at every run, so a rotated token needs no reload.

use std::collections::HashSet;

use super::*;
use crate::config::check::{Check, CheckSource, Template, ValuePath, WebCheck};
use crate::config::raw::{RawCheck, RawPrometheusCheck, RawWebCheck};

/// `interval` when omitted.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// `timeout` when omitted (or `interval`, when that is shorter).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const FAILURE_LIMIT: u32 = 1;
const INCONCLUSIVE_LIMIT: u32 = 3;

impl Validator {
    /// A block's list of checks; `None` when any is invalid (each reported).
    pub(super) fn checks(&mut self, path: &str, raw: Option<Vec<RawCheck>>) -> Option<Vec<Check>> {
        let mut names = HashSet::new();
        let mut checks = Vec::new();
        let mut ok = true;
        for (i, raw) in raw.unwrap_or_default().into_iter().enumerate() {
            let at = format!("{path}[{i}]");
            if let Some(name) = &raw.name {
                if !names.insert(name.clone()) {
                    self.err(
                        format!("{at}.name"),
                        format!("check `{name}` is named twice: give each check its own name (it labels veer_check_runs_total)"),
                    );
                    ok = false;
                }
            }
            match self.check(&at, raw) {
                Some(check) => checks.push(check),
                None => ok = false,
            }
        }
        ok.then_some(checks)
    }

    /// A guard's and a rollout's checks share one metric label per service.
    pub(super) fn check_names_apart(&mut self, path: &str, guard: &[Check], rollout: &[Check]) {
        for (i, check) in rollout.iter().enumerate() {
            if guard.iter().any(|g| g.name == check.name) {
                self.err(
                    format!("{path}.rollout.checks[{i}].name"),
                    format!(
                        "check `{}` is also a guard check of this service: give it another name (both label veer_check_runs_total)",
                        check.name
                    ),
                );
            }
        }
    }

    fn check(&mut self, path: &str, raw: RawCheck) -> Option<Check> {
        let name = match &raw.name {
            None => {
                self.err(
                    path,
                    "missing name: name the check, such as `name: conversion`",
                );
                None
            }
            Some(name) => self
                .name(&format!("{path}.name"), name, "check name")
                .then(|| name.clone()),
        };
        let source = match (raw.prometheus, raw.web) {
            (Some(_), Some(_)) => {
                self.err(
                    path,
                    "both prometheus and web: a check reads one source; make two checks",
                );
                None
            }
            (None, None) => {
                self.err(
                    path,
                    "no source: add `prometheus: {address, query}` or `web: {url, json_path}`",
                );
                None
            }
            (Some(prometheus), None) => self.prometheus(&format!("{path}.prometheus"), prometheus),
            (None, Some(web)) => self.web(&format!("{path}.web"), web),
        };
        let min = self.bound(&format!("{path}.min"), raw.min.as_ref());
        let max = self.bound(&format!("{path}.max"), raw.max.as_ref());
        let mut ok = min.is_ok() && max.is_ok();
        match (min, max) {
            (Ok(None), Ok(None)) => {
                self.err(
                    path,
                    "neither min nor max: give the bounds the value must stay within, such as `max: 0.02`",
                );
                ok = false;
            }
            (Ok(Some(min)), Ok(Some(max))) if min > max => {
                self.err(
                    format!("{path}.min"),
                    format!("min {min} is above max {max}: no value could pass"),
                );
                ok = false;
            }
            _ => {}
        }
        let failure_limit = match &raw.failure_limit {
            None => Some(FAILURE_LIMIT),
            Some(n) => self.int_in(
                &format!("{path}.failure_limit"),
                n,
                1,
                1000,
                "failed runs in a row before the version trips",
            ),
        };
        let inconclusive_limit = match &raw.inconclusive_limit {
            None => Some(INCONCLUSIVE_LIMIT),
            Some(n) => self.int_in(
                &format!("{path}.inconclusive_limit"),
                n,
                1,
                1000,
                "inconclusive runs in a row before the rollout pauses",
            ),
        };
        let interval = self.positive_duration(
            &format!("{path}.interval"),
            raw.interval.as_ref(),
            CHECK_INTERVAL,
        );
        if let Some(short) = interval.filter(|i| *i < MIN_INTERVAL) {
            self.err(
                format!("{path}.interval"),
                format!(
                    "interval {} is below 1s: a check runs at most once a second",
                    humantime::format_duration(short)
                ),
            );
            ok = false;
        }
        let timeout = match &raw.timeout {
            None => interval.map(|i| i.min(CHECK_TIMEOUT)),
            Some(t) => self.positive_duration(&format!("{path}.timeout"), Some(t), CHECK_TIMEOUT),
        };
        if let (Some(t), Some(i), true) = (timeout, interval, raw.timeout.is_some()) {
            if t > i {
                self.err(
                    format!("{path}.timeout"),
                    format!(
                        "timeout {} is longer than interval {}: runs would overlap; make timeout at most interval",
                        humantime::format_duration(t),
                        humantime::format_duration(i)
                    ),
                );
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        Some(Check {
            name: name?,
            source: source?,
            min: min.ok()?,
            max: max.ok()?,
            failure_limit: failure_limit?,
            inconclusive_limit: inconclusive_limit?,
            interval: interval?,
            timeout: timeout?,
        })
    }

    /// A number, whole or not: `Ok(None)` when omitted.
    fn bound(&mut self, path: &str, raw: Option<&Scalar>) -> Result<Option<f64>, ()> {
        match raw {
            None => Ok(None),
            #[allow(clippy::cast_precision_loss)]
            Some(Scalar::Int(n)) => Ok(Some(*n as f64)),
            Some(Scalar::Float(f)) if f.is_finite() => Ok(Some(*f)),
            Some(other) => {
                self.err(path, format!("`{other}` is not a number"));
                Err(())
            }
        }
    }

    fn template(&mut self, path: &str, text: &str) -> Option<Template> {
        match Template::parse(text) {
            Ok(template) => Some(template),
            Err(reason) => {
                self.err(path, reason);
                None
            }
        }
    }

    fn prometheus(&mut self, path: &str, raw: RawPrometheusCheck) -> Option<CheckSource> {
        let address = match raw.address {
            None => {
                self.err(
                    path,
                    "missing address: give Prometheus's URL, such as http://prometheus:9090",
                );
                None
            }
            Some(text) => self.url(&format!("{path}.address"), &text),
        };
        let query = match raw.query.as_deref().map(str::trim) {
            None | Some("") => {
                self.err(
                    path,
                    "missing query: give a PromQL query that returns one number",
                );
                None
            }
            Some(text) => self.template(&format!("{path}.query"), text),
        };
        Some(CheckSource::Prometheus {
            address: address?,
            query: query?,
        })
    }

    fn web(&mut self, path: &str, raw: RawWebCheck) -> Option<CheckSource> {
        let url = match raw.url {
            None => {
                self.err(
                    path,
                    "missing url: give the endpoint that answers JSON, such as https://slo.example.com/api/ratio?version={{version}}",
                );
                None
            }
            Some(text) => self.template(&format!("{path}.url"), &text).and_then(|t| {
                // Checked with every placeholder filled in, as a run sends it.
                let sample = crate::config::check::Values {
                    service: "s",
                    version: "v",
                    revision: "r",
                    baseline: "b",
                };
                let rendered = t.render(&sample, crate::config::check::escape_url);
                match parse_http_url(&rendered) {
                    Ok(_) => Some(t),
                    Err(reason) => {
                        self.err(format!("{path}.url"), reason.replace(&rendered, &text));
                        None
                    }
                }
            }),
        };
        let method = match &raw.method {
            None => Some(http::Method::GET),
            Some(word) => self
                .word(&format!("{path}.method"), word, "method", &["GET", "POST"])
                .map(|i| {
                    if i == 0 {
                        http::Method::GET
                    } else {
                        http::Method::POST
                    }
                }),
        };
        let mut headers = Vec::new();
        let mut headers_ok = true;
        for (name, value) in raw.headers.unwrap_or_default() {
            let at = format!("{path}.headers.{name}");
            let header = self.header_name(&at, &name);
            let template = self.template(&at, &value);
            if let Some(bad) = value.chars().find(|c| c.is_control()) {
                self.err(&at, format!("the value holds the control character {bad:?}: a header value cannot carry it"));
                headers_ok = false;
            }
            match (header, template) {
                (Some(h), Some(t)) => headers.push((h, t)),
                _ => headers_ok = false,
            }
        }
        let body = match raw.body {
            None => Ok(None),
            Some(text) => self
                .template(&format!("{path}.body"), &text)
                .map(Some)
                .ok_or(()),
        };
        let value = match (raw.json_path, raw.field) {
            (Some(_), Some(_)) => {
                self.err(
                    path,
                    "both json_path and field: say where the number is one way",
                );
                None
            }
            (None, None) => {
                self.err(
                    path,
                    "missing json_path or field: say where the number is in the answer, such as `json_path: $.data.ratio` or `field: data.ratio`",
                );
                None
            }
            (Some(text), None) => {
                match serde_json_path::JsonPath::parse(&text) {
                    Ok(parsed) => Some(ValuePath::JsonPath { text, path: parsed }),
                    Err(err) => {
                        self.err(
                        format!("{path}.json_path"),
                        format!("`{text}` is not a JSONPath ({err}): write one such as $.data.ratio"),
                    );
                        None
                    }
                }
            }
            (None, Some(text)) => {
                let parts: Vec<String> = text.split('.').map(str::to_string).collect();
                if parts.iter().any(String::is_empty) {
                    self.err(
                        format!("{path}.field"),
                        format!("`{text}` has an empty part: write a dotted path such as data.ratio or items.0.value"),
                    );
                    None
                } else {
                    Some(ValuePath::Field(parts))
                }
            }
        };
        let token_file = match raw.token_file {
            None => Ok(None),
            Some(file) => self
                .path_field(
                    &format!("{path}.token_file"),
                    &file,
                    "name the file holding the bearer token, or remove token_file",
                )
                .map(Some)
                .ok_or(()),
        };
        if !headers_ok {
            return None;
        }
        Some(CheckSource::Web(WebCheck {
            url: url?,
            method: method?,
            headers,
            body: body.ok()?,
            value: value?,
            token_file: token_file.ok()?,
        }))
    }
}
