//! The validated `checks:` of a rollout or a guard: a number read from
//! Prometheus or from a JSON answer, compared with bounds every `interval`.
//!
//! Queries, URLs, headers and bodies are [`Template`]s: their
//! `{{service}}`, `{{version}}`, `{{revision}}` and `{{baseline}}` are split
//! out when the config is validated, so a run only joins parts, escaping
//! each value for where it goes (a PromQL string, a URL, a JSON string).

use std::path::PathBuf;
use std::time::Duration;

use http::header::HeaderName;

/// One check: where its number comes from and what it must stay within.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Unique within its service; a metric label.
    pub name: String,
    pub source: CheckSource,
    /// The value passes when `min <= value <= max` (a missing bound does
    /// not limit); at least one is set, and `min <= max`.
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Failed runs in a row that trip the version; at least 1.
    pub failure_limit: u32,
    /// Inconclusive runs in a row that pause the rollout; at least 1.
    pub inconclusive_limit: u32,
    /// At least one second.
    pub interval: Duration,
    /// At most `interval`: runs of one check never overlap.
    pub timeout: Duration,
}

impl Check {
    /// Whether `value` lies within the bounds.
    pub fn passes(&self, value: f64) -> bool {
        self.min.is_none_or(|min| value >= min) && self.max.is_none_or(|max| value <= max)
    }

    /// The bound `value` broke (the one a report calls the threshold).
    pub fn broken_bound(&self, value: f64) -> Option<f64> {
        match (self.min, self.max) {
            (Some(min), _) if value < min => Some(min),
            (_, Some(max)) if value > max => Some(max),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckSource {
    /// An instant query against Prometheus's HTTP API.
    Prometheus {
        /// Prometheus's base URL (a path prefix is kept).
        address: http::Uri,
        query: Template,
    },
    Web(WebCheck),
}

impl CheckSource {
    /// `prometheus` or `web`, for `/status`.
    pub fn kind(&self) -> &'static str {
        match self {
            CheckSource::Prometheus { .. } => "prometheus",
            CheckSource::Web(_) => "web",
        }
    }
}

/// An HTTP endpoint answering JSON, and where the number is in the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct WebCheck {
    pub url: Template,
    /// GET or POST.
    pub method: http::Method,
    pub headers: Vec<(HeaderName, Template)>,
    /// Sent as `application/json` (placeholders escaped as JSON strings).
    pub body: Option<Template>,
    pub value: ValuePath,
    /// Sent as `Authorization: Bearer TOKEN`; read at every run, so a
    /// rotated token takes effect without a reload.
    pub token_file: Option<PathBuf>,
}

/// Where the number is in a JSON answer.
#[derive(Debug, Clone)]
pub enum ValuePath {
    /// An RFC 9535 JSONPath (`$.data.ratio`, `$.series[0].points[-1][1]`)
    /// that selects exactly one value.
    JsonPath {
        text: String,
        path: serde_json_path::JsonPath,
    },
    /// A dotted field path: `data.ratio`, `items.0.value`.
    Field(Vec<String>),
}

impl PartialEq for ValuePath {
    fn eq(&self, other: &ValuePath) -> bool {
        match (self, other) {
            (ValuePath::JsonPath { text: a, .. }, ValuePath::JsonPath { text: b, .. }) => a == b,
            (ValuePath::Field(a), ValuePath::Field(b)) => a == b,
            _ => false,
        }
    }
}

impl ValuePath {
    /// The one value the path selects, or why there is none.
    pub fn select<'a>(&self, json: &'a serde_json::Value) -> Result<&'a serde_json::Value, String> {
        match self {
            ValuePath::JsonPath { text, path } => {
                let found = path.query(json).all();
                match found.as_slice() {
                    [one] => Ok(one),
                    [] => Err(format!("`{text}` selects nothing in the answer")),
                    many => Err(format!(
                        "`{text}` selects {} values; it must select exactly one",
                        many.len()
                    )),
                }
            }
            ValuePath::Field(parts) => {
                let mut at = json;
                for (i, part) in parts.iter().enumerate() {
                    let next = match at {
                        serde_json::Value::Object(map) => map.get(part),
                        serde_json::Value::Array(items) => {
                            part.parse::<usize>().ok().and_then(|k| items.get(k))
                        }
                        _ => None,
                    };
                    at = next.ok_or_else(|| {
                        format!("the answer has no field `{}`", parts[..=i].join("."))
                    })?;
                }
                Ok(at)
            }
        }
    }
}

/// The names a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    Service,
    Version,
    Revision,
    Baseline,
}

impl Placeholder {
    pub const ALL: [(&'static str, Placeholder); 4] = [
        ("service", Placeholder::Service),
        ("version", Placeholder::Version),
        ("revision", Placeholder::Revision),
        ("baseline", Placeholder::Baseline),
    ];
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Value(Placeholder),
}

/// Text with placeholders, split once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// As written, for messages.
    pub text: String,
    parts: Vec<Part>,
}

/// What the placeholders stand for in one run.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    pub service: &'a str,
    pub version: &'a str,
    pub revision: &'a str,
    pub baseline: &'a str,
}

impl Template {
    /// Splits `text`; `Err` names the first unknown placeholder, or an
    /// opening `{{` that never closes.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                return Err(format!(
                    "`{{{{` at `{}` is never closed with `}}}}`",
                    &rest[open..]
                ));
            };
            let name = after[..close].trim();
            let Some((_, value)) = Placeholder::ALL.iter().find(|(n, _)| *n == name) else {
                return Err(format!(
                    "unknown placeholder `{{{{{name}}}}}`: use {{{{service}}}}, {{{{version}}}}, {{{{revision}}}} or {{{{baseline}}}}"
                ));
            };
            parts.push(Part::Value(*value));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template {
            text: text.to_string(),
            parts,
        })
    }

    /// The text with each placeholder's value written through `escape`.
    pub fn render(&self, values: &Values<'_>, escape: impl Fn(&str, &mut String)) -> String {
        let mut out = String::with_capacity(self.text.len() + 32);
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Value(which) => {
                    let value = match which {
                        Placeholder::Service => values.service,
                        Placeholder::Version => values.version,
                        Placeholder::Revision => values.revision,
                        Placeholder::Baseline => values.baseline,
                    };
                    escape(value, &mut out);
                }
            }
        }
        out
    }
}

/// For a PromQL string literal (`version="{{version}}"`): a value can end
/// neither the string nor the query.
pub fn escape_promql(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\'' => out.push_str("\\'"),
            '`' => out.push_str("\\`"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
}

/// For a URL's path or query: everything but RFC 3986's unreserved
/// characters is percent-encoded.
pub fn escape_url(value: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
}

/// For the inside of a JSON string.
pub fn escape_json(value: &str, out: &mut String) {
    let quoted = serde_json::Value::from(value).to_string();
    out.push_str(&quoted[1..quoted.len() - 1]);
}

/// For a header value: taken as it is (names and revisions are checked
/// text; a value a header cannot carry fails that run, inconclusive).
pub fn escape_none(value: &str, out: &mut String) {
    out.push_str(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUES: Values<'static> = Values {
        service: "shop",
        version: "can\"ary",
        revision: "1.2 b",
        baseline: "stable",
    };

    #[test]
    fn placeholders_are_split_once_and_escaped_for_their_place() {
        let t = Template::parse(r#"sum(x{service="{{service}}",version="{{ version }}"})"#)
            .expect("valid");
        assert_eq!(
            t.render(&VALUES, escape_promql),
            r#"sum(x{service="shop",version="can\"ary"})"#
        );
        let u = Template::parse("http://h/q?rev={{revision}}&b={{baseline}}").expect("valid");
        assert_eq!(
            u.render(&VALUES, escape_url),
            "http://h/q?rev=1.2%20b&b=stable"
        );
        let j = Template::parse(r#"{"v":"{{version}}"}"#).expect("valid");
        assert_eq!(j.render(&VALUES, escape_json), r#"{"v":"can\"ary"}"#);
    }

    #[test]
    fn unknown_and_unclosed_placeholders_are_refused() {
        assert_eq!(
            Template::parse("x{{versoin}}").expect_err("unknown"),
            "unknown placeholder `{{versoin}}`: use {{service}}, {{version}}, {{revision}} or {{baseline}}"
        );
        assert!(Template::parse("x{{version")
            .expect_err("unclosed")
            .contains("never closed"));
    }

    #[test]
    fn a_field_path_walks_objects_and_arrays() {
        let json = serde_json::json!({"data": {"items": [{"v": 1.5}]}});
        let path = ValuePath::Field(vec!["data".into(), "items".into(), "0".into(), "v".into()]);
        assert_eq!(path.select(&json).expect("found"), &serde_json::json!(1.5));
        let missing = ValuePath::Field(vec!["data".into(), "nope".into()]);
        assert_eq!(
            missing.select(&json).expect_err("missing"),
            "the answer has no field `data.nope`"
        );
    }

    #[test]
    fn bounds_pass_and_name_the_broken_one() {
        let check = Check {
            name: "c".into(),
            source: CheckSource::Prometheus {
                address: http::Uri::from_static("http://p:9090"),
                query: Template::parse("up").expect("valid"),
            },
            min: Some(0.5),
            max: Some(2.0),
            failure_limit: 1,
            inconclusive_limit: 1,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        assert!(check.passes(0.5) && check.passes(2.0));
        assert_eq!(check.broken_bound(0.1), Some(0.5));
        assert_eq!(check.broken_bound(3.0), Some(2.0));
        assert!(!check.passes(3.0));
    }
}
