//! A/B rules: conditions on headers (equal, present, matching a regex),
//! cookies and the path, compiled when the snapshot is built. The first rule
//! whose conditions all hold picks the version, before weights.

use http::header::{HeaderMap, HeaderName, COOKIE};
use regex::Regex;

use crate::config::Rule;

#[derive(Debug, Clone)]
pub struct CompiledRule {
    equal: Vec<(HeaderName, String)>,
    present: Vec<HeaderName>,
    regex: Vec<(HeaderName, Regex)>,
    cookies: Vec<(String, String)>,
    path_prefix: Option<String>,
    /// Index into the service's versions.
    pub version: usize,
}

impl CompiledRule {
    /// `None` only if a regex does not compile, which validation has ruled out.
    pub fn compile(rule: &Rule) -> Option<CompiledRule> {
        let regex = rule
            .matcher
            .regex
            .iter()
            .map(|(name, pattern)| Regex::new(pattern).ok().map(|r| (name.clone(), r)))
            .collect::<Option<Vec<_>>>()?;
        Some(CompiledRule {
            equal: rule.matcher.headers.clone(),
            present: rule.matcher.present.clone(),
            regex,
            cookies: rule.matcher.cookies.clone(),
            path_prefix: rule.matcher.path_prefix.clone(),
            version: rule.version,
        })
    }

    pub fn matches(&self, headers: &HeaderMap, path: &str) -> bool {
        self.path_prefix
            .as_deref()
            .is_none_or(|prefix| path.starts_with(prefix))
            && self.present.iter().all(|name| headers.contains_key(name))
            && self.equal.iter().all(|(name, value)| {
                headers
                    .get_all(name)
                    .iter()
                    .any(|v| v.as_bytes() == value.as_bytes())
            })
            && self.regex.iter().all(|(name, regex)| {
                headers
                    .get_all(name)
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|t| regex.is_match(t)))
            })
            && self
                .cookies
                .iter()
                .all(|(name, value)| cookie(headers, name) == Some(value.as_str()))
    }
}

/// The first rule that matches, as a version index.
pub fn first_match(rules: &[CompiledRule], headers: &HeaderMap, path: &str) -> Option<usize> {
    rules
        .iter()
        .find(|rule| rule.matches(headers, path))
        .map(|rule| rule.version)
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuleMatch;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn rule(matcher: RuleMatch, version: usize) -> CompiledRule {
        CompiledRule::compile(&Rule { matcher, version }).expect("compiles")
    }

    #[test]
    fn header_equal_present_regex_cookie_and_path() {
        let rules = vec![
            rule(
                RuleMatch {
                    headers: vec![(HeaderName::from_static("x-canary"), "always".into())],
                    ..Default::default()
                },
                1,
            ),
            rule(
                RuleMatch {
                    present: vec![HeaderName::from_static("x-beta")],
                    path_prefix: Some("/v2".into()),
                    ..Default::default()
                },
                2,
            ),
            rule(
                RuleMatch {
                    regex: vec![(HeaderName::from_static("x-user"), "^qa-[0-9]+$".into())],
                    ..Default::default()
                },
                3,
            ),
            rule(
                RuleMatch {
                    cookies: vec![("beta".into(), "yes".into())],
                    ..Default::default()
                },
                4,
            ),
        ];
        let pick =
            |h: &[(&'static str, &'static str)], path| first_match(&rules, &headers(h), path);
        assert_eq!(pick(&[("x-canary", "always")], "/"), Some(1));
        assert_eq!(pick(&[("x-canary", "never")], "/"), None);
        assert_eq!(pick(&[("x-beta", "")], "/v2/x"), Some(2));
        assert_eq!(pick(&[("x-beta", "1")], "/v1"), None);
        assert_eq!(pick(&[("x-user", "qa-17")], "/"), Some(3));
        assert_eq!(pick(&[("x-user", "qa-x")], "/"), None);
        assert_eq!(pick(&[("cookie", "a=1; beta=yes")], "/"), Some(4));
        assert_eq!(pick(&[("cookie", "beta=no")], "/"), None);
        // First match wins.
        assert_eq!(
            pick(&[("x-canary", "always"), ("cookie", "beta=yes")], "/"),
            Some(1)
        );
    }

    #[test]
    fn cookie_parsing() {
        let h = headers(&[("cookie", "a=1;b=\"two\""), ("cookie", "c=3")]);
        assert_eq!(cookie(&h, "b"), Some("two"));
        assert_eq!(cookie(&h, "c"), Some("3"));
        assert_eq!(cookie(&h, "d"), None);
    }
}
