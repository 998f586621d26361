//! `access_log`: where each request's JSON line goes, and the share sampled.

use super::*;

impl Validator {
    pub(super) fn access_log(&mut self, raw: RawAccessLog) -> Option<AccessLog> {
        let target = match raw.path.as_deref() {
            None => {
                self.err(
                    "access_log.path",
                    "missing: name a file to append JSON lines to, or `stdout`",
                );
                None
            }
            Some("stdout" | "-") => Some(AccessLogTarget::Stdout),
            Some(path) => self
                .path_field(
                    "access_log.path",
                    path,
                    "name a file to append JSON lines to, or `stdout`",
                )
                .map(AccessLogTarget::File),
        };
        let sample = self.optional_typed(
            "access_log.sample".to_string(),
            raw.sample.as_ref(),
            Fraction::from_scalar,
        );
        Some(AccessLog {
            target: target?,
            sample: sample.ok()?.map_or(1.0, Fraction::get),
        })
    }
}
