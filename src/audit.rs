//! The audit trail: one log event per control action — who asked, what
//! changed, and how it ended — all under the `veer::audit` target, as
//! structured fields (with `VEER_LOG_FORMAT=json`, one JSON object a line).
//!
//! Who asked is the admin client's address and the fingerprint of the token
//! it presented (never the token), or veer itself: `guard` for a trip,
//! `rollout` for a step, `file` or `signal` for a reload. What changed is the
//! weights of the service before and after, each as `version@revision=weight`.
//!
//! Cold path only. Depends on `snapshot` (the weights it writes down) and
//! `state` (a rollout's step) and nothing else in veer; `admin`, `guard`, `rollout` and `reload` call it.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::snapshot::{ServiceSnapshot, Snapshot};

/// The log target every audit event is written under.
pub const TARGET: &str = "veer::audit";

/// Who asked the admin API.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub peer: SocketAddr,
    /// First 8 hex digits of the SHA-256 of the token presented; `None`
    /// when the admin API takes no token.
    pub token: Option<&'a str>,
}

/// One control action and its result.
#[derive(Debug, Clone, Copy)]
pub struct Action<'a> {
    /// `weights`, `rollback`, `promote`, `pause`, `resume`, `reload`, …
    pub action: &'a str,
    /// The service acted on; `None` for a reload (all of them).
    pub service: Option<&'a str>,
    pub before: &'a str,
    pub after: &'a str,
    /// `ok` or `refused`.
    pub result: &'a str,
    /// The HTTP status the action was answered with (admin actions).
    pub status: Option<u16>,
    /// Why it was refused, or what it did, in words.
    pub detail: Option<&'a str>,
}

/// An action asked through the admin API.
pub fn admin(caller: Caller<'_>, action: Action<'_>) {
    tracing::info!(
        target: TARGET,
        actor = "admin",
        peer = %caller.peer,
        token = caller.token.unwrap_or("none"),
        action = action.action,
        service = action.service,
        before = action.before,
        after = action.after,
        result = action.result,
        status = action.status,
        detail = action.detail,
        "audit: {} {}",
        action.action,
        action.result
    );
}

/// An action veer took by itself: `actor` is `guard`, `rollout`, `file`
/// or `signal`.
pub fn system(actor: &str, action: Action<'_>) {
    tracing::info!(
        target: TARGET,
        actor,
        action = action.action,
        service = action.service,
        before = action.before,
        after = action.after,
        result = action.result,
        detail = action.detail,
        "audit: {} {}",
        action.action,
        action.result
    );
}

/// What the rollout does by itself: `promote` (a step to its next weight)
/// or `complete` (its last step held with no trip).
pub fn rollout<E: std::fmt::Display>(
    action: &str,
    service: &str,
    before: &Snapshot,
    after: &Snapshot,
    result: &Result<crate::state::RolloutProgress, E>,
) {
    let detail = match result {
        Ok(progress) if action == "complete" => format!(
            "the rollout of {} {} completed: its last step held",
            progress.candidate, progress.revision
        ),
        Ok(progress) => format!(
            "step {} of the rollout of {} {}",
            progress.step + 1,
            progress.candidate,
            progress.revision
        ),
        Err(reason) => reason.to_string(),
    };
    system(
        "rollout",
        Action {
            action,
            service: Some(service),
            before: &weights(before, Some(service)),
            after: &weights(after, Some(service)),
            result: if result.is_ok() { "ok" } else { "refused" },
            status: None,
            detail: Some(&detail),
        },
    );
}

/// The weights of one service as `stable@1.1.0=90 canary@1.2.0=10`, with
/// `(latched)` after a latched version.
pub fn service_weights(service: &ServiceSnapshot) -> String {
    let mut out = String::new();
    for (i, version) in service.versions.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = write!(
            out,
            "{}@{}={}",
            version.name, version.revision, version.weight
        );
        if version.latched {
            out.push_str("(latched)");
        }
    }
    out
}

/// The weights of `service` in `snapshot`, or of every service as
/// `name[...] name[...]` when `service` is `None`.
pub fn weights(snapshot: &Snapshot, service: Option<&str>) -> String {
    match service {
        Some(name) => snapshot
            .services
            .iter()
            .find(|s| &*s.name == name)
            .map(|s| service_weights(s))
            .unwrap_or_default(),
        None => {
            let mut out = String::new();
            for (i, service) in snapshot.services.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                let _ = write!(out, "{}[{}]", service.name, service_weights(service));
            }
            out
        }
    }
}

/// A config with at most this many services has every one written on its
/// reload line, changed or not, as it always was; a larger one names only the
/// services a reload changed, so a one-weight change at 10,000 services writes
/// one service, not 400 KB of log.
pub const RELOAD_LISTS_ALL_UP_TO: usize = 32;

/// What a reload line writes: `before`, `after` (as [`weights`] with
/// `service` `None`, but only the services whose versions, revisions, weights
/// or latches differ, added and removed ones included, unless the config is
/// small) and how many services it left out as unchanged (`None` when it
/// wrote them all).
pub fn reload_weights(before: &Snapshot, after: &Snapshot) -> (String, String, Option<usize>) {
    if before.services.len().max(after.services.len()) <= RELOAD_LISTS_ALL_UP_TO {
        return (weights(before, None), weights(after, None), None);
    }
    // A publish usually keeps the services where they were, and shares
    // the parts it did not rebuild: only the others are compared.
    if before.services.len() == after.services.len()
        && before
            .services
            .iter()
            .zip(&after.services)
            .all(|(a, b)| std::sync::Arc::ptr_eq(a, b) || a.name == b.name)
    {
        let (mut out_before, mut out_after) = (String::new(), String::new());
        let mut unchanged = 0;
        for (a, b) in before.services.iter().zip(&after.services) {
            if std::sync::Arc::ptr_eq(a, b) || same_weights(a, b) {
                unchanged += 1;
                continue;
            }
            for (out, service) in [(&mut out_before, a), (&mut out_after, b)] {
                if !out.is_empty() {
                    out.push(' ');
                }
                let _ = write!(out, "{}[{}]", service.name, service_weights(service));
            }
        }
        return (out_before, out_after, Some(unchanged));
    }
    fn by_name(snapshot: &Snapshot) -> std::collections::HashMap<&str, &ServiceSnapshot> {
        snapshot.services.iter().map(|s| (&*s.name, &**s)).collect()
    }
    let (old, new) = (by_name(before), by_name(after));
    let changed = |name: &str| match (old.get(name), new.get(name)) {
        (Some(a), Some(b)) => !same_weights(a, b),
        _ => true,
    };
    let (mut out_before, mut out_after) = (String::new(), String::new());
    let mut unchanged = 0;
    for (out, snapshot) in [(&mut out_before, before), (&mut out_after, after)] {
        for service in &snapshot.services {
            if !changed(&service.name) {
                continue;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            let _ = write!(out, "{}[{}]", service.name, service_weights(service));
        }
    }
    for service in &after.services {
        if !changed(&service.name) {
            unchanged += 1;
        }
    }
    (out_before, out_after, Some(unchanged))
}

/// The `before` and `after` of an action on `service`, or of a reload (all
/// services, written as [`reload_weights`] does) when `service` is `None`.
pub fn action_weights(
    before: &Snapshot,
    after: &Snapshot,
    service: Option<&str>,
) -> (String, String) {
    match service {
        Some(_) => (weights(before, service), weights(after, service)),
        None => {
            let (before, after, _) = reload_weights(before, after);
            (before, after)
        }
    }
}

/// A reload veer did by itself (`actor`: `file` or `signal`): the services it
/// changed (every service of a small config) and, when it left some out,
/// how many as `unchanged`.
pub fn reload(
    actor: &str,
    before: &Snapshot,
    after: &Snapshot,
    result: &str,
    detail: Option<&str>,
) {
    let (before, after, unchanged) = reload_weights(before, after);
    tracing::info!(
        target: TARGET,
        actor,
        action = "reload",
        before = before.as_str(),
        after = after.as_str(),
        unchanged,
        result,
        detail,
        "audit: reload {result}"
    );
}

/// Whether two builds of a service would be written the same by
/// [`service_weights`], without writing them.
fn same_weights(a: &ServiceSnapshot, b: &ServiceSnapshot) -> bool {
    std::ptr::eq(a, b)
        || (a.versions.len() == b.versions.len()
            && a.versions.iter().zip(&b.versions).all(|(x, y)| {
                x.weight == y.weight
                    && x.latched == y.latched
                    && x.name == y.name
                    && x.revision == y.revision
            }))
}

/// What the audit trail writes for a token: enough to tell two tokens
/// apart, nothing that helps guess one.
pub fn token_fingerprint(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = String::with_capacity(8);
    for byte in &digest.as_ref()[..4] {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_the_first_eight_hex_digits_of_sha256() {
        // sha256("secret") = 2bb80d53...
        assert_eq!(token_fingerprint("secret"), "2bb80d53");
    }
}
