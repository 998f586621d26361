//! Why a control command was refused. Each variant knows its HTTP status, so
//! the admin API maps by variant, never by the message's text; the messages
//! are what an operator reads (the CLI prints them as they come).

use http::StatusCode;

use crate::state::RolloutOutcome;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// 404.
    #[error("no service named `{0}` in the config")]
    NoService(String),
    /// A version the guard latched was given traffic (409).
    #[error(
        "version `{version}` of `{service}` is latched at revision `{revision}` ({reason}): it gets no traffic \
         until its revision changes or an operator runs `veer resume {service}`; \
         give it weight 0 or resume first"
    )]
    Latched {
        service: String,
        version: String,
        revision: String,
        reason: String,
    },
    /// Weights for a version the service does not have (400).
    #[error("service `{service}` has no version `{version}` (versions: {known})")]
    UnknownVersion {
        service: String,
        version: String,
        /// The service's versions, comma-separated.
        known: String,
    },
    /// Every weight would be zero (400).
    #[error(
        "refusing weights that are all zero for `{0}`: every request would fail; \
         give at least one version a weight above 0"
    )]
    AllZero(String),
    /// A rollback needs a baseline (409: the service exists, its config
    /// does not allow it).
    #[error(
        "service `{0}` has no guard block, so no baseline to roll back to; \
         add `guard: {{baseline: VERSION}}` or set weights with `veer weights`"
    )]
    NoGuard(String),
    /// 409.
    #[error("service `{0}` has no rollout block")]
    NoRollout(String),
    /// No rollout for the candidate's current revision (409).
    #[error("service `{0}` has no rollout in progress")]
    NotInProgress(String),
    /// 409.
    #[error("service `{0}` has no rollout in progress to pause")]
    NothingToPause(String),
    /// The rollout is over (409).
    #[error(
        "the rollout of `{service}` is {}, not in progress; `veer resume {service}` restarts a rolled-back one",
        crate::rollout::outcome_word(*.outcome)
    )]
    Finished {
        service: String,
        outcome: RolloutOutcome,
    },
    /// The control task gave no answer: the process is shutting down, or
    /// the command failed on a bug (500).
    #[error(
        "veer's control task gave no answer (veer is shutting down, or the command failed: \
         see veer's log); check `veer status` before trying again"
    )]
    Stopped,
}

impl ControlError {
    /// The admin API's answer for this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            ControlError::NoService(_) => StatusCode::NOT_FOUND,
            ControlError::UnknownVersion { .. } | ControlError::AllZero(_) => {
                StatusCode::BAD_REQUEST
            }
            ControlError::Latched { .. }
            | ControlError::NoGuard(_)
            | ControlError::NoRollout(_)
            | ControlError::NotInProgress(_)
            | ControlError::NothingToPause(_)
            | ControlError::Finished { .. } => StatusCode::CONFLICT,
            ControlError::Stopped => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_status_and_its_words() {
        let cases = [
            (
                ControlError::NoService("web".into()),
                StatusCode::NOT_FOUND,
                "no service named `web` in the config",
            ),
            (
                ControlError::AllZero("web".into()),
                StatusCode::BAD_REQUEST,
                "refusing weights that are all zero for `web`",
            ),
            (
                ControlError::UnknownVersion {
                    service: "web".into(),
                    version: "blue".into(),
                    known: "stable, canary".into(),
                },
                StatusCode::BAD_REQUEST,
                "service `web` has no version `blue` (versions: stable, canary)",
            ),
            (
                ControlError::NoGuard("web".into()),
                StatusCode::CONFLICT,
                "add `guard: {baseline: VERSION}`",
            ),
            (
                ControlError::Finished {
                    service: "web".into(),
                    outcome: RolloutOutcome::RolledBack,
                },
                StatusCode::CONFLICT,
                "the rollout of `web` is rolled_back, not in progress",
            ),
            (
                ControlError::NotInProgress("web".into()),
                StatusCode::CONFLICT,
                "service `web` has no rollout in progress",
            ),
            (
                ControlError::Stopped,
                StatusCode::INTERNAL_SERVER_ERROR,
                "check `veer status` before trying again",
            ),
        ];
        for (error, status, words) in cases {
            assert_eq!(error.status(), status, "{error}");
            assert!(error.to_string().contains(words), "{error}");
        }
    }
}
