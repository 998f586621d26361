//! Checks the TLS files a valid config names: that they exist and parse, that
//! each key belongs to its certificate, and (as warnings) that no certificate
//! expires within 14 days. Run by `veer check`, at start and on every reload,
//! so a broken file is refused before anything is swapped in.

use std::path::Path;
use std::time::SystemTime;

use crate::config::{Config, FileIssue};

/// [`files`] as of now.
pub fn files_now(config: &Config) -> Vec<FileIssue> {
    files(config, SystemTime::now())
}

/// A TLS file (or key pair) a config names, with the field path it is
/// named at.
pub enum TlsFile<'a> {
    /// A certificate chain and its private key.
    Pair {
        cert: (String, &'a Path),
        key: (String, &'a Path),
    },
    /// Trusted roots: a listener's `client_ca` or a version's `ca`.
    Roots(String, &'a Path),
}

/// Every TLS file `config` names, in config order: what `veer check` checks
/// and what `--offline` says it did not read.
pub fn named(config: &Config) -> Vec<TlsFile<'_>> {
    let mut named = Vec::new();
    for (i, listener) in config.listeners.iter().enumerate() {
        let Some(tls) = &listener.tls else { continue };
        let base = format!("listeners[{i}].tls");
        // The plain `cert`/`key` pair, when written, is the first and the
        // only one without hosts; the rest are `certificates[k]`.
        let plain = usize::from(tls.certificates.first().is_some_and(|c| c.hosts.is_empty()));
        for (j, pair) in tls.certificates.iter().enumerate() {
            let at = if pair.hosts.is_empty() {
                base.clone()
            } else {
                format!("{base}.certificates[{}]", j - plain)
            };
            named.push(TlsFile::Pair {
                cert: (format!("{at}.cert"), &pair.cert),
                key: (format!("{at}.key"), &pair.key),
            });
        }
        if let Some(ca) = &tls.client_ca {
            named.push(TlsFile::Roots(format!("{base}.client_ca"), ca));
        }
    }
    for (i, service) in config.services.iter().enumerate() {
        for (j, version) in service.versions.iter().enumerate() {
            let Some(tls) = &version.tls else { continue };
            let base = format!("services[{i}].versions[{j}].tls");
            if let Some(ca) = &tls.ca {
                named.push(TlsFile::Roots(format!("{base}.ca"), ca));
            }
            if let Some((cert, key)) = &tls.client_cert {
                named.push(TlsFile::Pair {
                    cert: (format!("{base}.client_cert"), cert),
                    key: (format!("{base}.client_key"), key),
                });
            }
        }
    }
    named
}

/// Every problem with the TLS files of `config`, by field path.
pub fn files(config: &Config, now: SystemTime) -> Vec<FileIssue> {
    let mut issues = Vec::new();
    for file in named(config) {
        match file {
            TlsFile::Pair { cert, key } => {
                check_pair(&mut issues, (&cert.0, cert.1), (&key.0, key.1), now);
            }
            TlsFile::Roots(field, path) => check_roots(&mut issues, &field, path),
        }
    }
    issues
}

fn error(issues: &mut Vec<FileIssue>, path: &str, reason: impl ToString) {
    issues.push(FileIssue {
        path: path.to_string(),
        reason: reason.to_string(),
        warning: false,
    });
}

fn check_pair(
    issues: &mut Vec<FileIssue>,
    (cert_path, cert): (&str, &Path),
    (key_path, key): (&str, &Path),
    now: SystemTime,
) {
    let chain = super::read_certificates(cert).map_err(|reason| error(issues, cert_path, reason));
    let private = super::read_private_key(key).map_err(|reason| error(issues, key_path, reason));
    let (Ok(chain), Ok(_)) = (chain, private) else {
        return;
    };
    if let Err(reason) = super::load_pair(cert, key) {
        error(issues, key_path, reason);
    }
    if let Some(warning) = chain
        .first()
        .and_then(|leaf| super::expiry_warning(leaf, now))
    {
        issues.push(FileIssue {
            path: cert_path.to_string(),
            reason: warning,
            warning: true,
        });
    }
}

fn check_roots(issues: &mut Vec<FileIssue>, path: &str, ca: &Path) {
    if let Err(reason) = super::load_roots(ca) {
        error(issues, path, reason);
    }
}
