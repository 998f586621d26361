//! Checks shared by every block: names, references, header and cookie
//! names, paths, and scalars read as text, numbers, words and durations.

use super::*;

impl Validator {
    /// Checks a service, version or listener name; true when valid.
    pub(super) fn name(&mut self, path: &str, name: &str, what: &str) -> bool {
        if name.is_empty() {
            self.err(path, format!("empty {what} name: {NAME_RULE}"));
            return false;
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            self.err(
                path,
                format!("{what} name `{name}` contains `{bad}`: {NAME_RULE}"),
            );
            return false;
        }
        true
    }

    /// Resolves a reference to a version; `missing` is the reason when the
    /// field is absent.
    pub(super) fn version_ref(
        &mut self,
        path: &str,
        name: Option<&str>,
        missing: &str,
        known: &[String],
    ) -> Option<usize> {
        let name = self.required(path, name, missing)?;
        if let Some(index) = known.iter().position(|k| k == name) {
            return Some(index);
        }
        let mut listed: Vec<String> = Vec::new();
        for k in known.iter().filter(|k| !k.is_empty()) {
            let quoted = format!("`{k}`");
            if !listed.contains(&quoted) {
                listed.push(quoted);
            }
        }
        let listed = listed.join(", ");
        let reason = if listed.is_empty() {
            format!("unknown version `{name}`: this service has no valid versions")
        } else {
            format!("unknown version `{name}`: this service's versions are {listed}")
        };
        self.err(path, reason);
        None
    }

    pub(super) fn header_name(&mut self, path: &str, name: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) => Some(header),
            Err(_) => {
                self.err(
                    path,
                    format!(
                        "`{name}` is not a valid header name: use letters, digits and `-`, such as x-user-id"
                    ),
                );
                None
            }
        }
    }

    pub(super) fn cookie_name(&mut self, path: &str, name: &str) -> bool {
        // RFC 6265: a cookie name is an RFC 7230 token.
        let is_token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !is_token {
            self.err(
                path,
                format!(
                    "`{name}` is not a valid cookie name: use letters, digits and `-` or `_`, such as session"
                ),
            );
        }
        is_token
    }

    /// A non-empty filesystem path.
    pub(super) fn path_field(&mut self, path: &str, value: &str, hint: &str) -> Option<PathBuf> {
        if value.trim().is_empty() {
            self.err(path, format!("empty path: {hint}"));
            return None;
        }
        Some(PathBuf::from(value))
    }

    /// Text that must be written as text: `revision: 1.10` would be read as
    /// the number 1.1, so numbers and booleans are refused.
    pub(super) fn text(&mut self, path: &str, raw: &Scalar) -> Option<String> {
        match raw {
            Scalar::Text(text) => Some(text.clone()),
            other => {
                self.err(
                    path,
                    format!(
                        "`{other}` was read as a {}, not text: put it in quotes so it is kept exactly as written",
                        if matches!(other, Scalar::Bool(_)) { "boolean" } else { "number" }
                    ),
                );
                None
            }
        }
    }

    pub(super) fn int(&mut self, path: &str, raw: &Scalar) -> Option<i128> {
        match raw {
            Scalar::Int(n) => Some(*n),
            other => {
                self.err(path, format!("`{other}` is not a whole number"));
                None
            }
        }
    }

    /// One of `choices`, by index.
    pub(super) fn word(
        &mut self,
        path: &str,
        raw: &Scalar,
        what: &str,
        choices: &[&str],
    ) -> Option<usize> {
        if let Scalar::Text(text) = raw {
            if let Some(index) = choices.iter().position(|c| c == text) {
                return Some(index);
            }
        }
        let listed = choices
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(" or ");
        self.err(path, format!("unknown {what} `{raw}`: expected {listed}"));
        None
    }

    pub(super) fn duration(&mut self, path: &str, raw: &Scalar) -> Option<Duration> {
        match parse_duration(&raw.to_string()) {
            Ok(duration) => Some(duration),
            Err(reason) => {
                self.err(path, reason);
                None
            }
        }
    }

    /// A duration above zero, or `default` when omitted.
    pub(super) fn positive_duration(
        &mut self,
        path: &str,
        raw: Option<&Scalar>,
        default: Duration,
    ) -> Option<Duration> {
        match raw {
            None => Some(default),
            Some(raw) => match self.duration(path, raw)? {
                Duration::ZERO => {
                    self.err(
                        path,
                        format!("`{raw}` is zero: this needs a duration above 0"),
                    );
                    None
                }
                duration => Some(duration),
            },
        }
    }

    /// An optional duration above zero: `Err` when present and invalid.
    pub(super) fn optional_positive_duration(
        &mut self,
        path: &str,
        raw: Option<&Scalar>,
    ) -> Result<Option<Duration>, ()> {
        match raw {
            None => Ok(None),
            Some(raw) => self
                .positive_duration(path, Some(raw), Duration::ZERO)
                .map(Some)
                .ok_or(()),
        }
    }

    /// A value of a type that checks itself (`units`); its refusal is
    /// reported at `path`.
    pub(super) fn typed<T>(
        &mut self,
        path: impl Into<String>,
        value: Result<T, String>,
    ) -> Option<T> {
        value.map_err(|reason| self.err(path, reason)).ok()
    }

    /// An optional value of a type that checks itself: `Err` when present
    /// and invalid.
    pub(super) fn optional_typed<T>(
        &mut self,
        path: String,
        raw: Option<&Scalar>,
        parse: impl FnOnce(&Scalar) -> Result<T, String>,
    ) -> Result<Option<T>, ()> {
        match raw {
            None => Ok(None),
            Some(raw) => self.typed(path, parse(raw)).map(Some).ok_or(()),
        }
    }

    /// A whole number in `min..=max`, converted to the field's type.
    pub(super) fn int_in<T: TryFrom<i128>>(
        &mut self,
        path: &str,
        raw: &Scalar,
        min: i128,
        max: i128,
        what: &str,
    ) -> Option<T> {
        let n = self.int(path, raw)?;
        if n < min || n > max {
            self.err(path, format!("{n} is outside {min}..={max} ({what})"));
            return None;
        }
        T::try_from(n).ok()
    }

    pub(super) fn url(&mut self, path: &str, text: &str) -> Option<Uri> {
        match parse_http_url(text) {
            Ok(uri) => Some(uri),
            Err(reason) => {
                self.err(path, reason);
                None
            }
        }
    }
}
