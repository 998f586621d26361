//! `services[].sticky`: a header or a cookie that keeps a user on one version.

use super::*;

impl Validator {
    pub(super) fn sticky(&mut self, path: &str, raw: RawSticky) -> Option<Sticky> {
        match (raw.header, raw.cookie) {
            (Some(_), Some(_)) => {
                self.err(
                    path,
                    "both header and cookie are set: keep one (`{ header: x-user-id }` or `{ cookie: session }`)",
                );
                None
            }
            (None, None) => {
                self.err(
                    path,
                    "neither header nor cookie is set: add one (`{ header: x-user-id }` or `{ cookie: session }`)",
                );
                None
            }
            (Some(header), None) => {
                if raw.max_age.is_some() {
                    self.err(
                        format!("{path}.max_age"),
                        "max_age applies only to a sticky cookie: remove it, or use `cookie:` instead of `header:`",
                    );
                }
                let name = self.header_name(&format!("{path}.header"), &header);
                if raw.max_age.is_some() {
                    return None;
                }
                Some(Sticky::Header(name?))
            }
            (None, Some(cookie)) => {
                let name_ok = self.cookie_name(&format!("{path}.cookie"), &cookie);
                let max_age = self.positive_duration(
                    &format!("{path}.max_age"),
                    raw.max_age.as_ref(),
                    DEFAULT_STICKY_MAX_AGE,
                );
                if !name_ok {
                    return None;
                }
                Some(Sticky::Cookie {
                    name: cookie,
                    max_age: max_age?,
                })
            }
        }
    }
}
