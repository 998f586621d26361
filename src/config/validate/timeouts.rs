//! `services[].timeouts`: connect, request and idle.

use super::*;

impl Validator {
    pub(super) fn timeouts(&mut self, path: &str, raw: Option<RawTimeouts>) -> Option<Timeouts> {
        let defaults = Timeouts::default();
        let Some(raw) = raw else {
            return Some(defaults);
        };
        let connect = self.positive_duration(
            &format!("{path}.connect"),
            raw.connect.as_ref(),
            defaults.connect,
        );
        let request = self.positive_duration(
            &format!("{path}.request"),
            raw.request.as_ref(),
            defaults.request,
        );
        let idle =
            self.positive_duration(&format!("{path}.idle"), raw.idle.as_ref(), defaults.idle);
        Some(Timeouts {
            connect: connect?,
            request: request?,
            idle: idle?,
        })
    }
}
