//! `history`: how many release records each service keeps.

use super::*;
use crate::config::model::History;
use crate::config::raw::RawHistory;

impl Validator {
    pub(super) fn history(&mut self, raw: Option<Part<RawHistory>>) -> Option<History> {
        let defaults = History::default();
        let raw = match raw {
            None => return Some(defaults),
            Some(Err(_)) => return None,
            Some(Ok(raw)) => raw,
        };
        let keep = match raw.keep {
            None => Some(defaults.keep),
            Some(n) => self.int_in(
                "history.keep",
                &n,
                1,
                i128::try_from(History::MAX_KEEP).unwrap_or(i128::MAX),
                "release records kept per service, the newest",
            ),
        };
        Some(History { keep: keep? })
    }
}
