//! What `veer check` and `veer run` both look at beyond the YAML itself, so
//! that a config `check` passes is one `run` starts with: every file the
//! config names (TLS certificates and keys, CA bundles, the admin token),
//! and whether what the guard and rollouts decide will survive a restart.
//!
//! `veer check --offline` is for a GitOps pipeline that holds the config but
//! not the secrets: it checks everything else and lists the files it did not
//! read.

use std::path::Path;

use crate::config::{AccessLog, AccessLogTarget, Config, FileIssue};

/// The problems with the files `config` names (read now), and the warning
/// about persistence; with `offline`, the files are not read and their
/// fields and paths come back in the second list instead.
pub fn check(config: &Config, offline: bool) -> (Vec<FileIssue>, Vec<String>) {
    let mut issues = persistence(config).into_iter().collect::<Vec<_>>();
    if offline {
        return (issues, named_files(config));
    }
    issues.extend(crate::tls::check::files_now(config));
    if let Some(path) = &config.admin.token_file {
        if let Err(reason) = token(path) {
            issues.push(FileIssue {
                path: "admin.token_file".into(),
                reason,
                warning: false,
            });
        }
    }
    for (field, path) in check_token_files(config) {
        if let Err(reason) = check_token(&path) {
            issues.push(FileIssue {
                path: field,
                reason,
                warning: false,
            });
        }
    }
    if let Some(dir) = &config.state_dir {
        if dir.exists() && !dir.is_dir() {
            issues.push(FileIssue {
                path: "state_dir".into(),
                reason: format!(
                    "{} exists and is not a directory: name a directory veer may create and write",
                    dir.display()
                ),
                warning: false,
            });
        }
    }
    if let Some(path) = access_log_file(config) {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            issues.push(FileIssue {
                path: "access_log.path".into(),
                reason: format!(
                    "the directory of {} does not exist: create it, or name a file in an existing directory",
                    path.display()
                ),
                warning: false,
            });
        }
    }
    (issues, Vec::new())
}

fn access_log_file(config: &Config) -> Option<&Path> {
    match &config.access_log {
        Some(AccessLog {
            target: AccessLogTarget::File(path),
            ..
        }) => Some(path),
        _ => None,
    }
}

/// The admin token as `veer run` reads it: a readable file, not empty.
fn token(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the admin token from {}: {e}", path.display()))?;
    if text.trim().is_empty() {
        return Err(format!(
            "the admin token file {} is empty; put a long random token in it",
            path.display()
        ));
    }
    Ok(())
}

/// The bearer token files of the web checks, with their fields.
fn check_token_files(config: &Config) -> Vec<(String, std::path::PathBuf)> {
    let mut files = Vec::new();
    for (i, service) in config.services.iter().enumerate() {
        let guard = service
            .guard
            .iter()
            .flat_map(|g| g.checks.iter().enumerate());
        let rollout = service
            .rollout
            .iter()
            .flat_map(|r| r.checks.iter().enumerate());
        let blocks = guard
            .map(|c| ("guard", c))
            .chain(rollout.map(|c| ("rollout", c)));
        for (block, (k, check)) in blocks {
            if let crate::config::CheckSource::Web(crate::config::WebCheck {
                token_file: Some(path),
                ..
            }) = &check.source
            {
                files.push((
                    format!("services[{i}].{block}.checks[{k}].web.token_file"),
                    path.clone(),
                ));
            }
        }
    }
    files
}

/// A web check's token as each run reads it: a readable file, not empty.
fn check_token(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the check's bearer token from {}: {e}; create the file or fix the path",
            path.display()
        )
    })?;
    if text.trim().is_empty() {
        return Err(format!(
            "the check's token file {} is empty; put the token the endpoint expects in it",
            path.display()
        ));
    }
    Ok(())
}

/// A guard or a rollout with nowhere to keep its decisions: a restart would
/// forget a latch and send traffic back to a revision that tripped.
fn persistence(config: &Config) -> Option<FileIssue> {
    if config.state_dir.is_some() {
        return None;
    }
    let (index, service) = config
        .services
        .iter()
        .enumerate()
        .find(|(_, s)| s.guard.is_some() || s.rollout.is_some())?;
    let what = if service.rollout.is_some() {
        "rollout"
    } else {
        "guard"
    };
    Some(FileIssue {
        path: format!("services[{index}].{what}"),
        reason: format!(
            "no state_dir: service `{}` has a {what}, but guard latches, rollout progress and \
             run-time weights are kept in memory only; a restart forgets them and can send \
             traffic back to a version the guard tripped. Add `state_dir: state` (relative to \
             this file) on a persistent volume",
            service.name
        ),
        warning: true,
    })
}

/// Every file and directory the config names, as `field (path)`.
fn named_files(config: &Config) -> Vec<String> {
    let mut files = Vec::new();
    let mut add = |field: String, path: &Path| files.push(format!("{field} ({})", path.display()));
    if let Some(path) = &config.admin.token_file {
        add("admin.token_file".into(), path);
    }
    for (field, path) in check_token_files(config) {
        add(field, &path);
    }
    // Where veer runs, not where the pipeline checks.
    if let Some(dir) = &config.state_dir {
        add("state_dir".into(), dir);
    }
    if let Some(path) = access_log_file(config) {
        add("access_log.path".into(), path);
    }
    for file in crate::tls::check::named(config) {
        match file {
            crate::tls::check::TlsFile::Pair { cert, key } => {
                add(cert.0, cert.1);
                add(key.0, key.1);
            }
            crate::tls::check::TlsFile::Roots(field, path) => add(field, path),
        }
    }
    files
}
