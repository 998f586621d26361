//! `services[].rules`: A/B overrides, matched before the weights.

use super::*;

impl Validator {
    pub(super) fn rule(&mut self, path: &str, raw: RawRule, known: &[String]) -> Option<Rule> {
        let mut ok = true;
        let mut matcher = RuleMatch::default();
        if let Some(raw_match) = raw.matcher {
            for (name, value) in raw_match.headers.unwrap_or_default() {
                let at = format!("{path}.match.headers.{name}");
                let header = self.header_name(&at, &name);
                let value = self.text(&at, &value);
                if let Some(text) = &value {
                    if HeaderValue::from_str(text).is_err() {
                        self.err(
                            at.clone(),
                            format!(
                                "`{text}` is not a valid header value: use visible ASCII characters and spaces"
                            ),
                        );
                        ok = false;
                    }
                }
                match header {
                    Some(header) if matcher.headers.iter().any(|(h, _)| *h == header) => {
                        self.err(
                            at,
                            format!(
                                "header `{name}` is listed twice (header names ignore case): keep one"
                            ),
                        );
                        ok = false;
                    }
                    Some(header) => match value {
                        Some(value) => matcher.headers.push((header, value)),
                        None => ok = false,
                    },
                    None => ok = false,
                }
            }
            for (index, name) in raw_match
                .headers_present
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let at = format!("{path}.match.headers_present[{index}]");
                match self.header_name(&at, name) {
                    Some(header) => matcher.present.push(header),
                    None => ok = false,
                }
            }
            for (name, value) in raw_match.headers_regex.unwrap_or_default() {
                let at = format!("{path}.match.headers_regex.{name}");
                let header = self.header_name(&at, &name);
                let pattern = self.text(&at, &value);
                if let Some(pattern) = &pattern {
                    if let Err(err) = regex::Regex::new(pattern) {
                        let first = err.to_string();
                        let first = first.lines().last().unwrap_or("invalid").trim().to_string();
                        self.err(
                            at.clone(),
                            format!("`{pattern}` is not a valid regex: {first}"),
                        );
                        ok = false;
                    }
                }
                match (header, pattern) {
                    (Some(header), Some(pattern)) => matcher.regex.push((header, pattern)),
                    _ => ok = false,
                }
            }
            for (name, value) in raw_match.cookies.unwrap_or_default() {
                let at = format!("{path}.match.cookies.{name}");
                ok &= self.cookie_name(&at, &name);
                match self.text(&at, &value) {
                    Some(value) => matcher.cookies.push((name, value)),
                    None => ok = false,
                }
            }
            if let Some(prefix) = raw_match.path_prefix {
                match check_path_prefix(&prefix) {
                    Ok(()) => matcher.path_prefix = Some(prefix),
                    Err(reason) => {
                        self.err(format!("{path}.match.path_prefix"), reason);
                        ok = false;
                    }
                }
            }
        }
        let version = self.version_ref(
            &format!("{path}.version"),
            raw.version.as_deref(),
            "missing version: name the version that matching requests go to",
            known,
        );
        if !ok {
            return None;
        }
        Some(Rule {
            matcher,
            version: version?,
        })
    }
}
