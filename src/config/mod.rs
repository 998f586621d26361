//! veer's config file: YAML in, a validated [`Config`] or every error out.
//!
//! Two stages (see `raw` and `validate`): serde types that refuse unknown
//! fields, then a conversion into the types of `model`, which cannot hold an
//! invalid weight, duration, address or reference. Every error carries the
//! field path and the file position, as `FILE:LINE:COL: path: reason`.
//!
//! The steps of [`parse_str`]:
//! 1. One parse (`source_map`, with yaml-rust2's marked events) builds the
//!    value tree (`yaml`) and maps every field path to its position; it
//!    reports syntax errors, duplicate keys and a second document. Values and
//!    positions come from the same events, so they cannot disagree.
//! 2. Each part (each listener, each service, `admin`, `limits`, ...) is
//!    deserialized on its own through `serde_path_to_error`, so a typo in one
//!    service does not hide the errors in the next. An unknown key comes back
//!    as data (the key and the expected fields), so it is reported with a
//!    "did you mean", taken out, and the rest of the part checked again.
//! 3. `validate` checks everything and applies the defaults.
//! 4. Each problem is placed in the file by its path; all are returned, in
//!    file order.
//!
//! A valid file takes a faster road to the same result (`parse_split`):
//! its services are cut apart on lines (`spans`), each parsed and checked
//! on its own, on every core, and a reload ([`Reuse`]) takes the services
//! whose text it has seen from what it kept; the rest of the file is read
//! whole every time, and the checks across services (no name, no route
//! twice) weigh the services added and taken out against counts kept of the
//! last valid file's (`validate::Across`). Any problem sends the file down
//! the road above, which places it.
//!
//! Depends only on `grpc` (the status codes a `grpc:` block names).

pub mod check;
mod duration;
mod error;
pub mod model;
mod raw;
mod source_map;
mod spans;
mod units;
mod validate;
mod yaml;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

pub use check::{Check, CheckSource, Template, ValuePath, WebCheck};
pub use duration::parse_duration;
pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use units::{Fraction, Percent, Ratio, Weight, MAX_WEIGHT};
pub use validate::{weight_rule, DEFAULT_ADMIN_ADDRESS};

use error::{Anchor, Issue};
use raw::{Invalid, Part, RawConfig, RawDocument};
use source_map::{Position, SourceMap};
use yaml::{DeError, Node};

/// The path shown for an error about the file as a whole.
const FILE_PATH: &str = "(file)";

/// Reads and validates the config file at `path`.
///
/// Relative paths inside it (`state_dir`, listener `tls` files,
/// `admin.token_file`) are resolved against the file's directory, so the
/// result does not depend on the working directory.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    load_file_checked(path, |_| Vec::new()).map(|(config, _)| config)
}

/// A problem with a file the config names (a certificate, a key), found by a
/// check run on the valid config; placed at its field like any other error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIssue {
    /// The field naming the file, as in `listeners[0].tls.cert`.
    pub path: String,
    pub reason: String,
    /// A warning is reported but does not refuse the config.
    pub warning: bool,
}

/// As [`load_file`], then runs `check` on the valid config (its paths
/// resolved) and places what it finds in the file. Errors refuse the config;
/// warnings come back beside it, their reasons starting with `warning: `.
pub fn load_file_checked(
    path: &Path,
    check: impl FnOnce(&Config) -> Vec<FileIssue>,
) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
    load_file_reusing(path, check, None)
}

/// What a reload keeps of the last file it read: each service's text (by
/// its digest) and the service it validated to, so that the next read
/// parses and checks only the services whose text changed. The services are
/// the `Arc`s the config holds, shared: an unchanged one is never copied.
/// Everything outside `services:` is still read and checked every time; the
/// checks across services (no name, no route twice) weigh the services that
/// changed against counts kept of all the others, which is the whole check
/// for the cost of the change (a first read runs it over every service).
#[derive(Debug, Default)]
pub struct Reuse {
    /// This file's services in its order, as validated (before relative
    /// paths were resolved), each beside the digest of its text. In order,
    /// so that an edit finds each unchanged service at its own index: one
    /// comparison of digests, no table to rebuild per reload.
    kept: Vec<(Digest, Arc<Service>)>,
    /// How many services the last successful read parsed and checked.
    parsed: usize,
    /// The names and routes of the services in `kept`, which passed the
    /// checks across services; `None` when `kept` is empty.
    across: Option<validate::Across>,
}

/// xxh3's 128 bits of a service's text: not a cryptographic hash (the file
/// is the operator's own), and two different texts of one file meeting on
/// the same 128 bits is beyond any chance worth counting.
type Digest = u128;

impl Reuse {
    /// How many services it holds (those of the last file read).
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// How many services the last successful read parsed and checked; the
    /// others were reused. A file read whole (see `spans`) counts them all.
    pub fn parsed(&self) -> usize {
        self.parsed
    }

    /// Takes `config`'s `Arc` for every service held here that is equal to
    /// it: after a read that was not applied (the file was what is in
    /// force), so that what is kept for the next read is the model in
    /// force, not a second copy of it.
    pub fn share_with(&mut self, config: &Config) {
        let live: HashMap<&str, &Arc<Service>> = config
            .services
            .iter()
            .map(|service| (service.name.as_str(), service))
            .collect();
        for (_, kept) in &mut self.kept {
            if let Some(&live) = live.get(kept.name.as_str()) {
                if !Arc::ptr_eq(live, kept) && **live == **kept {
                    *kept = Arc::clone(live);
                }
            }
        }
    }
}

/// As [`load_file_checked`], reusing what `reuse` holds from the last file
/// read for every service whose text is unchanged, and leaving in it what
/// this file's services validated to. The result is the one a fresh read
/// gives: errors too, with their positions.
pub fn load_file_reusing(
    path: &Path,
    check: impl FnOnce(&Config) -> Vec<FileIssue>,
    reuse: Option<&mut Reuse>,
) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
    load_reusing(path, None, check, reuse)
}

/// As [`load_file_reusing`], for the file at `path` already read into
/// `bytes` (by the file watcher, which read it to tell it had changed): the
/// same result, errors and all, without a second read of a large file.
pub fn load_bytes_reusing(
    path: &Path,
    bytes: &[u8],
    check: impl FnOnce(&Config) -> Vec<FileIssue>,
    reuse: Option<&mut Reuse>,
) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
    load_reusing(path, Some(bytes), check, reuse)
}

/// The text of the config file, as `std::fs::read_to_string` gives it.
fn config_text<'a>(
    path: &Path,
    bytes: Option<&'a [u8]>,
    file: &str,
) -> Result<std::borrow::Cow<'a, str>, ConfigErrors> {
    let refused = |error: std::io::Error| {
        whole_file_error(file, format!("cannot read the config file: {error}"))
    };
    match bytes {
        None => std::fs::read_to_string(path)
            .map(std::borrow::Cow::Owned)
            .map_err(refused),
        // `read_to_string`'s own error, word for word.
        Some(bytes) => std::str::from_utf8(bytes)
            .map(std::borrow::Cow::Borrowed)
            .map_err(|_| {
                refused(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "stream did not contain valid UTF-8",
                ))
            }),
    }
}

fn load_reusing(
    path: &Path,
    bytes: Option<&[u8]>,
    check: impl FnOnce(&Config) -> Vec<FileIssue>,
    reuse: Option<&mut Reuse>,
) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
    let file = path.display().to_string();
    let started = std::time::Instant::now();
    let text = config_text(path, bytes, &file)?;
    let read_us = crate::clock::took_us(started);
    let mut reuse = reuse;
    let (mut config, source) = match parse_split(&text, reuse.as_deref_mut()) {
        Some(config) => (config, None),
        None => {
            let read = parse_with_source(&text, &file)?;
            if let Some(reuse) = reuse {
                // A file read whole leaves nothing to reuse.
                reuse.kept = Vec::new();
                reuse.across = None;
                reuse.parsed = read.0.services.len();
            }
            read
        }
    };
    let parse_us = crate::clock::took_us(started).saturating_sub(read_us);
    if let Some(base) = path.parent() {
        resolve_paths(&mut config, base);
    }
    let (warnings, errors): (Vec<FileIssue>, Vec<FileIssue>) =
        check(&config).into_iter().partition(|issue| issue.warning);
    // The read's stages: the file, its parse and checks, then the paths
    // resolved and the files it names checked.
    tracing::debug!(
        read_us,
        parse_us,
        files_us = crate::clock::took_us(started).saturating_sub(read_us + parse_us),
        "config file read"
    );
    let issues = |list: Vec<FileIssue>, prefix: &str| {
        list.into_iter()
            .map(|issue| Issue::at(issue.path, format!("{prefix}{}", issue.reason)))
            .collect::<Vec<_>>()
    };
    if !errors.is_empty() {
        return Err(place(issues(errors, ""), &positions(source, &text), &file));
    }
    if warnings.is_empty() {
        return Ok((config, Vec::new()));
    }
    let warnings = place(
        issues(warnings, "warning: "),
        &positions(source, &text),
        &file,
    );
    Ok((config, warnings.0))
}

/// Validates config text; `file` names it in errors. Relative paths are left
/// as written.
pub fn parse_str(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    match parse_split(text, None) {
        Some(config) => Ok(config),
        None => parse_with_source(text, file).map(|(config, _)| config),
    }
}

/// The fast read of a valid file: its services cut apart (`spans`), each
/// parsed and checked on its own (in parallel when there are many, or taken
/// from `reuse` when its text is unchanged), the rest of the file read as a
/// document of its own, then the checks across services. `None` for a file
/// the cut does not handle or that has any problem at all: the whole-file
/// read then gives the answer, errors placed. `reuse` is updated only when
/// this read succeeds.
fn parse_split(text: &str, reuse: Option<&mut Reuse>) -> Option<Config> {
    let split_started = std::time::Instant::now();
    let split = spans::split(text)?;
    let mut issues = Vec::new();
    let rest = match SourceMap::tree(&split.rest).ok()?? {
        Node::Null => Node::Mapping(Vec::new()),
        rest => rest,
    };
    let document: RawDocument = deserialize_at(rest, "", &mut issues).ok()?;
    if document.services.is_some() || !issues.is_empty() {
        return None;
    }
    let raw = raw_config(document, &mut issues);
    if !issues.is_empty() {
        return None;
    }

    let split_us = crate::clock::took_us(split_started);
    let Some(reuse) = reuse else {
        let all: Vec<usize> = (0..split.services.len()).collect();
        let services = service_spans(&all, &split.services)?;
        let config = validate::validate_prepared(raw, services, true, &mut issues)?;
        return issues.is_empty().then_some(config);
    };
    let started = std::time::Instant::now();
    let digests: Vec<Digest> = split.services.iter().map(|span| digest(span)).collect();
    let digest_us = crate::clock::took_us(started);
    // Each service's text is first looked for at its own index (an edit
    // leaves the others where they were), then among the kept services no
    // index claimed: as many as the file's services moved or changed.
    let mut found: Vec<Option<usize>> = digests
        .iter()
        .enumerate()
        .map(|(i, digest)| {
            reuse
                .kept
                .get(i)
                .filter(|(kept, _)| kept == digest)
                .map(|_| i)
        })
        .collect();
    if found.iter().any(Option::is_none) {
        let unclaimed: HashMap<&Digest, usize> = reuse
            .kept
            .iter()
            .enumerate()
            .filter(|&(k, _)| found.get(k).is_none_or(Option::is_none))
            .map(|(k, (digest, _))| (digest, k))
            .collect();
        for (i, slot) in found.iter_mut().enumerate() {
            if slot.is_none() {
                *slot = unclaimed.get(&digests[i]).copied();
            }
        }
    }
    let fresh: Vec<usize> = (0..digests.len()).filter(|&i| found[i].is_none()).collect();
    let parsed = fresh.len();
    let started = std::time::Instant::now();
    let made = service_spans(&fresh, &split.services)?;
    let parse_us = crate::clock::took_us(started);
    let started = std::time::Instant::now();
    let mut made = made.into_iter();
    let mut services = Vec::with_capacity(digests.len());
    let mut made_here: Vec<(usize, Arc<Service>)> = Vec::with_capacity(parsed);
    for (i, kept) in found.iter().enumerate() {
        let service = match kept {
            Some(k) => Arc::clone(&reuse.kept[*k].1),
            None => {
                let service = made.next()?;
                made_here.push((i, Arc::clone(&service)));
                service
            }
        };
        services.push(service);
    }
    let assemble_us = crate::clock::took_us(started);
    let started = std::time::Instant::now();
    // A first read checks every service against every other; a reread
    // checks the services it added or took out against the others' counts.
    let whole_check = reuse.across.is_none();
    let config = validate::validate_prepared(raw, services, whole_check, &mut issues)?;
    if !issues.is_empty() {
        return None;
    }
    if whole_check {
        reuse.across = Some(validate::Across::of(&config.services));
    } else {
        let (removed, added) = changed_services(&reuse.kept, &found, &config.services);
        let across = reuse.across.as_mut()?;
        if !across.change(&removed, &added) {
            return None;
        }
    }
    let validate_us = crate::clock::took_us(started);
    // Keep exactly this file's services, so what is kept never grows. An
    // edit in place replaces only what it changed.
    reuse.parsed = parsed;
    let in_place = digests.len() == reuse.kept.len()
        && found
            .iter()
            .enumerate()
            .all(|(i, k)| k.is_none_or(|k| k == i));
    if in_place {
        for (i, service) in made_here {
            reuse.kept[i] = (digests[i], service);
        }
    } else {
        let mut old: Vec<Option<(Digest, Arc<Service>)>> = std::mem::take(&mut reuse.kept)
            .into_iter()
            .map(Some)
            .collect();
        let mut made_here = made_here.into_iter().peekable();
        for (i, kept) in found.into_iter().enumerate() {
            let entry = match kept {
                // A service written twice, identically, is kept twice: each
                // is looked for at its own index first.
                Some(k) => old[k]
                    .take()
                    .or_else(|| Some((digests[i], config.services.get(i)?.clone()))),
                None => made_here
                    .next_if(|(at, _)| *at == i)
                    .map(|(_, service)| (digests[i], service)),
            };
            if let Some(entry) = entry {
                reuse.kept.push(entry);
            }
        }
    }
    tracing::debug!(
        services = digests.len(),
        parsed,
        split_us,
        digest_us,
        parse_us,
        assemble_us,
        validate_us,
        "config read service by service"
    );
    Some(config)
}

/// What a read took out of the services kept (`removed`: those no service of
/// the file was found equal to) and what it put in (`added`: those parsed
/// anew, and a second service found equal to one kept).
fn changed_services<'a>(
    kept: &'a [(Digest, Arc<Service>)],
    found: &[Option<usize>],
    services: &'a [Arc<Service>],
) -> (Vec<&'a Service>, Vec<&'a Service>) {
    let mut claimed = vec![false; kept.len()];
    let mut added = Vec::new();
    for (i, found) in found.iter().enumerate() {
        match found.and_then(|k| claimed.get_mut(k)) {
            Some(claimed) if !*claimed => *claimed = true,
            _ => added.extend(services.get(i).map(|service| &**service)),
        }
    }
    let removed = kept
        .iter()
        .zip(claimed)
        .filter(|(_, claimed)| !claimed)
        .map(|((_, service), _)| &**service)
        .collect();
    (removed, added)
}

fn digest(span: &str) -> Digest {
    xxhash_rust::xxh3::xxh3_128(span.as_bytes())
}

/// The services of the spans at `indices`, each parsed and checked on its
/// own; spread over the cores when there are many. `None` if any fails.
fn service_spans(indices: &[usize], spans: &[&str]) -> Option<Vec<Arc<Service>>> {
    /// Below this many, a thread costs more than it saves.
    const PER_THREAD: usize = 256;
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(indices.len() / PER_THREAD)
        .max(1);
    let one = |i: &usize| service_span(spans[*i]);
    if threads == 1 {
        return indices.iter().map(one).collect();
    }
    let chunk = indices.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = indices
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(one).collect::<Option<Vec<_>>>()))
            .collect();
        let mut services = Vec::with_capacity(indices.len());
        for worker in workers {
            services.extend(worker.join().ok()??);
        }
        Some(services)
    })
}

/// One `- name: ...` item of `services:`, read as a list of one.
fn service_span(span: &str) -> Option<Arc<Service>> {
    let Node::Sequence(mut items) = SourceMap::tree(span).ok()?? else {
        return None;
    };
    let item = match (items.pop(), items.is_empty()) {
        (Some(item), true) => item,
        _ => return None,
    };
    let mut issues = Vec::new();
    let raw: raw::RawService = deserialize_at(item, "services[0]", &mut issues).ok()?;
    if !issues.is_empty() {
        return None;
    }
    validate::service_alone(raw).map(Arc::new)
}

/// The config, and the map of where each field is if it was made (a valid
/// file is read without one: see `SourceMap::tree`).
fn parse_with_source(text: &str, file: &str) -> Result<(Config, Option<SourceMap>), ConfigErrors> {
    let (source, value) = match SourceMap::tree(text) {
        Ok(Some(value)) => (None, value),
        // A syntax error, a duplicate key, a second document: the full parse
        // places them.
        _ => {
            let (source, value) = parse_placed(text, file)?;
            (Some(source), value)
        }
    };
    if value.is_null() {
        return Err(whole_file_error(
            file,
            "the config is empty: it needs at least `listeners` and `services`".to_string(),
        ));
    }

    let mut issues = Vec::new();
    let config =
        deserialize_parts(value, &mut issues).and_then(|raw| validate::validate(raw, &mut issues));
    match config {
        Some(config) if issues.is_empty() => Ok((config, source)),
        _ => {
            if issues.is_empty() {
                // Every refusal should have pushed an issue; never fail silently.
                issues.push(Issue::at(
                    "",
                    "the config was refused without a reason (a bug in veer; please report it)",
                ));
            }
            Err(place(issues, &positions(source, text), file))
        }
    }
}

/// The map of positions: the one made already, or a parse that makes it.
fn positions(source: Option<SourceMap>, text: &str) -> SourceMap {
    source.unwrap_or_else(|| {
        SourceMap::parse(text)
            .map(|(source, _)| source)
            .unwrap_or_default()
    })
}

/// The parse that places every node, and its refusals: a syntax error,
/// duplicate keys, a second document.
fn parse_placed(text: &str, file: &str) -> Result<(SourceMap, Node), ConfigErrors> {
    let error_at = |position: Position, path: &str, reason: String| ConfigError {
        file: file.to_string(),
        line: position.line,
        column: position.column,
        path: path.to_string(),
        reason,
    };
    let (source, value) = SourceMap::parse(text).map_err(|syntax| {
        ConfigErrors(vec![error_at(
            syntax.position,
            FILE_PATH,
            format!("YAML syntax error: {}", syntax.message),
        )])
    })?;
    if !source.duplicates.is_empty() {
        return Err(ConfigErrors(
            source
                .duplicates
                .iter()
                .map(|duplicate| {
                    error_at(
                        duplicate.position,
                        &duplicate.path,
                        format!(
                            "duplicate key `{}` (first at line {}): keep one",
                            duplicate.key, duplicate.first.line
                        ),
                    )
                })
                .collect(),
        ));
    }
    if let Some(position) = source.second_document {
        return Err(error_at(
            position,
            FILE_PATH,
            "a second YAML document starts here: a config file holds one; remove this `---` and what follows".to_string(),
        )
        .into());
    }
    Ok((source, value))
}

fn whole_file_error(file: &str, reason: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        file: file.to_string(),
        line: 1,
        column: 1,
        path: FILE_PATH.to_string(),
        reason,
    }])
}

/// Deserializes the top level, then each part on its own so that errors in
/// different parts, listeners and services are all reported. `None` only when
/// the top level itself is wrong (not a mapping, or an unknown key).
fn deserialize_parts(value: Node, issues: &mut Vec<Issue>) -> Option<RawConfig> {
    let document: RawDocument = deserialize_at(value, "", issues).ok()?;
    Some(raw_config(document, issues))
}

/// Each part of the top level deserialized on its own.
fn raw_config(document: RawDocument, issues: &mut Vec<Issue>) -> RawConfig {
    RawConfig {
        listeners: document
            .listeners
            .and_then(|list| deserialize_list(list, "listeners", issues)),
        admin: document
            .admin
            .and_then(|admin| deserialize_optional(admin, "admin", issues)),
        state_dir: document
            .state_dir
            .and_then(|dir| deserialize_optional(dir, "state_dir", issues)),
        fleet: document
            .fleet
            .and_then(|fleet| deserialize_optional(fleet, "fleet", issues)),
        dns: document
            .dns
            .and_then(|dns| deserialize_optional(dns, "dns", issues)),
        limits: document
            .limits
            .and_then(|limits| deserialize_optional(limits, "limits", issues)),
        access_log: document
            .access_log
            .and_then(|log| deserialize_optional(log, "access_log", issues)),
        history: document
            .history
            .and_then(|history| deserialize_optional(history, "history", issues)),
        services: document
            .services
            .and_then(|list| deserialize_list(list, "services", issues)),
        telemetry: document
            .telemetry
            .and_then(|part| deserialize_optional(part, "telemetry", issues)),
    }
}

/// A part that may be written empty (`admin:` alone): `None` then.
fn deserialize_optional<T: DeserializeOwned>(
    value: Node,
    base: &str,
    issues: &mut Vec<Issue>,
) -> Option<Part<T>> {
    if value.is_null() {
        return None;
    }
    Some(deserialize_at(value, base, issues))
}

/// A list whose items are deserialized one by one. Not a list at all: one
/// invalid item, reported, so the list is neither checked nor taken as empty.
fn deserialize_list<T: DeserializeOwned>(
    value: Node,
    base: &str,
    issues: &mut Vec<Issue>,
) -> Option<Vec<Part<T>>> {
    if value.is_null() {
        return None;
    }
    match deserialize_at::<Vec<Node>>(value, base, issues) {
        Ok(items) => Some(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| deserialize_at(item, &format!("{base}[{i}]"), issues))
                .collect(),
        ),
        Err(invalid) => Some(vec![Err(invalid)]),
    }
}

/// Deserializes `value`, found at `base` in the file; an error becomes an
/// issue at the full path of the field that failed.
///
/// serde stops at the first unknown key. So an unknown key is reported,
/// taken out of the value, and the value read again: every misspelled key is
/// reported in one run (a top-level one beside a nested one too), and the
/// rest of the part is still checked.
fn deserialize_at<T: DeserializeOwned>(
    mut value: Node,
    base: &str,
    issues: &mut Vec<Issue>,
) -> Part<T> {
    // Bounds the retries on a pathological file; each pass removes one key.
    const MAX_UNKNOWN: usize = 100;
    for _ in 0..MAX_UNKNOWN {
        let error = match serde_path_to_error::deserialize(&value) {
            Ok(parsed) => return Ok(parsed),
            Err(error) => error,
        };
        let inner = error.path().to_string();
        let path = match inner.as_str() {
            "." => base.to_string(),
            _ if base.is_empty() => inner,
            _ if inner.starts_with('[') => format!("{base}{inner}"),
            _ => format!("{base}.{inner}"),
        };
        let segments: Vec<serde_path_to_error::Segment> = error.path().iter().cloned().collect();
        let error = error.into_inner();
        let DeError::UnknownField { field, expected } = &error else {
            // A key that is not a name (a list, a mapping) has no name to
            // show: serde_path_to_error writes `?`. The key is the mistake.
            let anchor = if path.ends_with('?') {
                Anchor::Key
            } else {
                Anchor::Value
            };
            issues.push(Issue {
                path,
                reason: error.to_string(),
                anchor,
            });
            return Err(Invalid);
        };
        // serde names the unknown key in the path; point at the key itself,
        // since the key is the typo.
        let meant = suggestion(field, expected);
        let reason = match meant {
            Some(meant) => format!("{error}; did you mean `{meant}`?"),
            None => error.to_string(),
        };
        issues.push(Issue {
            path,
            reason,
            anchor: Anchor::Key,
        });
        if !remove_at(&mut value, &segments, meant) {
            return Err(Invalid);
        }
    }
    Err(Invalid)
}

/// Removes the mapping entry at `path` (the last segment is its key); false
/// when there is none. With `meant` (the key it surely stands for, when that
/// one is not written too) the value is kept under that key, so it is still
/// checked and no "missing" error follows the typo.
fn remove_at(value: &mut Node, path: &[serde_path_to_error::Segment], meant: Option<&str>) -> bool {
    use serde_path_to_error::Segment;
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = value;
    for segment in parents {
        let next = match (segment, node) {
            (Segment::Seq { index }, Node::Sequence(items)) => items.get_mut(*index),
            (Segment::Map { key }, node) => node.entry_mut(key),
            _ => None,
        };
        match next {
            Some(next) => node = next,
            None => return false,
        }
    }
    let (Segment::Map { key }, Node::Mapping(entries)) = (last, node) else {
        return false;
    };
    let is_key = |k: &Node, name: &str| matches!(k, Node::Text(text) if text == name);
    let Some(index) = entries.iter().position(|(k, _)| is_key(k, key)) else {
        return false;
    };
    let (_, removed) = entries.remove(index);
    if let Some(meant) = meant.filter(|m| !entries.iter().any(|(k, _)| is_key(k, m))) {
        entries.push((Node::Text(meant.to_string()), removed));
    }
    true
}

/// The expected field that an unknown one surely stands for: the nearest by
/// edit distance, when that is small (at most 2, and less than the unknown
/// name's length, so `x` does not "mean" `tls`).
fn suggestion(unknown: &str, expected: &[&'static str]) -> Option<&'static str> {
    let (distance, field) = expected
        .iter()
        .map(|field| (strsim::levenshtein(unknown, field), *field))
        .min_by_key(|(distance, _)| *distance)?;
    (distance <= 2 && distance < unknown.chars().count()).then_some(field)
}

/// Gives every issue its file position and sorts them into file order.
fn place(issues: Vec<Issue>, source: &SourceMap, file: &str) -> ConfigErrors {
    let mut errors: Vec<ConfigError> = issues
        .into_iter()
        .map(|issue| {
            let position = match issue.anchor {
                Anchor::Value => source.value(&issue.path),
                Anchor::Key => source.key(&issue.path),
            };
            ConfigError {
                file: file.to_string(),
                line: position.line,
                column: position.column,
                path: if issue.path.is_empty() {
                    FILE_PATH.to_string()
                } else {
                    issue.path
                },
                reason: issue.reason,
            }
        })
        .collect();
    // Stable: errors at one position keep the order they were found in.
    errors.sort_by_key(|error| (error.line, error.column));
    ConfigErrors(errors)
}

/// Makes relative paths in `config` relative to `base` (the file's directory).
fn resolve_paths(config: &mut Config, base: &Path) {
    let resolve = |path: &mut PathBuf| {
        if path.is_relative() {
            *path = base.join(&*path);
        }
    };
    if let Some(dir) = config.state_dir.as_mut() {
        resolve(dir);
    }
    if let Some(AccessLog {
        target: AccessLogTarget::File(path),
        ..
    }) = config.access_log.as_mut()
    {
        resolve(path);
    }
    if let Some(token_file) = config.admin.token_file.as_mut() {
        resolve(token_file);
    }
    if let Some(file) = config.dns.resolv_conf.as_mut() {
        resolve(file);
    }
    if let Some(etcd) = config.fleet.as_mut().map(|f| &mut f.etcd) {
        if let Some(file) = etcd.password_file.as_mut() {
            resolve(file);
        }
        if let Some(tls) = etcd.tls.as_mut() {
            for path in [&mut tls.ca, &mut tls.cert, &mut tls.key]
                .into_iter()
                .flatten()
            {
                resolve(path);
            }
        }
    }
    for listener in &mut config.listeners {
        if let Some(tls) = listener.tls.as_mut() {
            for pair in &mut tls.certificates {
                resolve(&mut pair.cert);
                resolve(&mut pair.key);
            }
            if let Some(ca) = tls.client_ca.as_mut() {
                resolve(ca);
            }
        }
    }
    for service in &mut config.services {
        // Shared with `Reuse` (which keeps paths as written): copied only
        // when it names a relative path, which few services do.
        if service_paths(service).any(|path| path.is_relative()) {
            service_paths_mut(Arc::make_mut(service)).for_each(resolve);
        }
    }
}

/// The files a service names: checks' token files, upstream TLS files.
fn service_paths(service: &Service) -> impl Iterator<Item = &PathBuf> {
    let guard = service.guard.iter().flat_map(|g| g.checks.iter());
    let rollout = service.rollout.iter().flat_map(|r| r.checks.iter());
    let checks = guard
        .chain(rollout)
        .filter_map(|check| match &check.source {
            CheckSource::Web(WebCheck {
                token_file: Some(file),
                ..
            }) => Some(file),
            _ => None,
        });
    let tls = service.versions.iter().filter_map(|v| v.tls.as_ref());
    let tls = tls.flat_map(|tls| {
        let pair = tls.client_cert.as_ref();
        tls.ca
            .iter()
            .chain(pair.map(|(cert, _)| cert))
            .chain(pair.map(|(_, key)| key))
    });
    checks.chain(tls)
}

/// As [`service_paths`], to resolve them.
fn service_paths_mut(service: &mut Service) -> impl Iterator<Item = &mut PathBuf> {
    let guard = service.guard.iter_mut().flat_map(|g| g.checks.iter_mut());
    let rollout = service.rollout.iter_mut().flat_map(|r| r.checks.iter_mut());
    let checks = guard
        .chain(rollout)
        .filter_map(|check| match &mut check.source {
            CheckSource::Web(WebCheck {
                token_file: Some(file),
                ..
            }) => Some(file),
            _ => None,
        });
    let tls = service.versions.iter_mut().filter_map(|v| v.tls.as_mut());
    let tls = tls.flat_map(|tls| {
        let (cert, key) = match tls.client_cert.as_mut() {
            Some((cert, key)) => (Some(cert), Some(key)),
            None => (None, None),
        };
        tls.ca.as_mut().into_iter().chain(cert).chain(key)
    });
    checks.chain(tls)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MINIMAL: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
services:
  - name: app
    versions:
      - name: stable
        endpoints: [127.0.0.1:18081]
        weight: 1
";

    #[test]
    fn unknown_fields_get_a_suggestion() {
        assert_eq!(suggestion("wieght", &["name", "weight"]), Some("weight"));
        assert_eq!(suggestion("colour", &["cert", "key"]), None);
        // A one-letter key is not taken for any field.
        assert_eq!(suggestion("x", &["tls"]), None);
        assert_eq!(suggestion("servics", &[]), None);
    }

    #[test]
    fn scalars_are_typed_once() {
        // Quoted numbers stay text; `revision: 1.10` is refused as a number,
        // while an unquoted one that is no number is text.
        let text = MINIMAL.replace("weight: 1", "weight: 1\n        revision: 1.2.0");
        let config = parse_str(&text, "t.yaml").expect("valid");
        assert_eq!(config.services[0].versions[0].revision, "1.2.0");
        let text = MINIMAL.replace("weight: 1", "weight: \"1\"");
        let errors = parse_str(&text, "t.yaml").expect_err("a quoted weight is text");
        assert!(
            errors.0[0].reason.contains("not a whole number"),
            "{errors:?}"
        );
    }

    #[test]
    fn keys_that_are_not_names_are_refused_in_the_file_s_terms() {
        let text = format!("{MINIMAL}? [a, b]\n: 1\n");
        let errors = parse_str(&text, "t.yaml").expect_err("a list as a key");
        assert_eq!(
            errors.0[0].to_string(),
            "t.yaml:10:3: ?: invalid type: sequence, expected a field name"
        );
        let text = format!("{MINIMAL}    match: {{ hosts: [~] }}\n");
        let errors = parse_str(&text, "t.yaml").expect_err("an empty host");
        assert_eq!(
            errors.0[0].to_string(),
            "t.yaml:10:22: services[0].match.hosts[0]: invalid type: empty value, expected a string"
        );
    }

    #[test]
    fn merge_keys_fill_in_what_a_mapping_does_not_set() {
        let text = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
services:
  - name: app
    versions:
      - &base { name: stable, endpoints: [127.0.0.1:18081], weight: 1 }
      - <<: *base
        name: canary
      - <<: [{ name: late, weight: 7 }, *base]
";
        let config = parse_str(text, "t.yaml").expect("valid");
        let versions = &config.services[0].versions;
        assert_eq!(versions[1].name, "canary");
        assert_eq!(versions[1].endpoints, versions[0].endpoints);
        assert_eq!(
            (versions[2].name.as_str(), versions[2].weight.get()),
            ("late", 7)
        );
        let errors = parse_str(&text.replace("<<: *base", "<<: 5"), "t.yaml")
            .expect_err("a merge of a number");
        assert!(
            errors.0[0].to_string().starts_with(
                "t.yaml:8:9: services[0].versions[1].<<: unknown field `<<`, expected one of"
            ),
            "{errors}"
        );
    }

    #[test]
    fn anchors_and_aliases_are_read() {
        let text = MINIMAL.replace(
            "endpoints: [127.0.0.1:18081]",
            "endpoints: &eps [127.0.0.1:18081]",
        ) + "  - name: other\n    match: { hosts: [other] }\n    versions:\n      - name: stable\n        endpoints: *eps\n        weight: 1\n";
        let config = parse_str(&text, "t.yaml").expect("valid");
        assert_eq!(
            config.services[1].versions[0].endpoints,
            config.services[0].versions[0].endpoints
        );
    }

    #[test]
    fn omitted_fields_take_their_defaults() {
        let config = parse_str(MINIMAL, "t.yaml").expect("valid");
        assert_eq!(config.admin.address, DEFAULT_ADMIN_ADDRESS);
        assert_eq!(config.admin.token_file, None);
        assert_eq!(config.state_dir, None);
        assert_eq!(config.limits, Limits::default());
        let service = &config.services[0];
        assert!(service.hosts.is_empty());
        assert_eq!(service.path_prefix, "/");
        assert_eq!(service.timeouts, Timeouts::default());
        assert_eq!(service.versions[0].revision, "");
        assert_eq!(service.versions[0].protocol, Protocol::Http1);
        assert_eq!(service.sticky, None);
        assert!(service.rules.is_empty());
        assert_eq!(service.guard, None);
        assert_eq!(service.rollout, None);
    }

    #[test]
    fn guard_sticky_and_health_defaults() {
        let text = format!(
            "{MINIMAL}    sticky: {{ cookie: s }}\n    health_check: {{ path: /h }}\n    guard: {{ baseline: stable, max_error_rate: 0.1 }}\n"
        );
        let config = parse_str(&text, "t.yaml").expect("valid");
        let service = &config.services[0];
        assert_eq!(
            service.sticky,
            Some(Sticky::Cookie {
                name: "s".into(),
                max_age: Duration::from_secs(24 * 3600)
            })
        );
        let health = service.health_check.as_ref().expect("health check");
        assert_eq!(health.interval, Duration::from_secs(5));
        assert_eq!(health.timeout, Duration::from_secs(1));
        let guard = service.guard.as_ref().expect("guard");
        assert_eq!(guard.baseline, 0);
        assert_eq!(guard.interval, Duration::from_secs(1));
        assert_eq!(guard.window, Duration::from_secs(30));
        assert_eq!(guard.min_requests, 50);
        assert_eq!(guard.consecutive, 2);
        assert_eq!(guard.on_revert, OnRevert::Drain);
        assert_eq!(guard.max_error_rate, Fraction::new(0.1));
        assert_eq!(guard.max_p95_latency, None);
    }

    #[test]
    fn empty_parts_are_omitted_parts() {
        let text = format!("{MINIMAL}admin:\nlimits:\nstate_dir:\n");
        let config = parse_str(&text, "t.yaml").expect("valid");
        assert_eq!(config.admin.address, DEFAULT_ADMIN_ADDRESS);
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.state_dir, None);
    }

    #[test]
    fn a_reread_shares_each_unchanged_service_and_resolves_paths_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("veer.yaml");
        let text = format!(
            "{MINIMAL}        tls: {{ ca: certs/ca.pem }}\n  - name: other\n    match: {{ hosts: [other] }}\n    versions:\n      - name: stable\n        endpoints: [127.0.0.1:18082]\n        weight: 1\n"
        );
        std::fs::write(&path, &text).expect("write");
        let mut reuse = Reuse::default();
        let read = |reuse: &mut Reuse| {
            load_file_reusing(&path, |_| Vec::new(), Some(reuse))
                .expect("valid")
                .0
        };
        let first = read(&mut reuse);
        let second = read(&mut reuse);
        assert_eq!(reuse.parsed(), 0, "nothing changed: nothing parsed again");
        // A service naming no relative path is the one `Arc`, not a copy.
        assert!(Arc::ptr_eq(&first.services[1], &second.services[1]));
        // One that does is resolved on every read from the text as written,
        // never joined twice.
        for config in [&first, &second] {
            let tls = config.services[0].versions[0].tls.as_ref().expect("tls");
            assert_eq!(tls.ca, Some(dir.path().join("certs/ca.pem")));
        }
    }

    #[test]
    fn a_reuse_shares_the_model_in_force_once_told_of_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("veer.yaml");
        std::fs::write(&path, MINIMAL).expect("write");
        let in_force = load_file(&path).expect("valid");
        let mut reuse = Reuse::default();
        let read = |reuse: &mut Reuse| {
            load_file_reusing(&path, |_| Vec::new(), Some(reuse))
                .expect("valid")
                .0
        };
        assert!(!Arc::ptr_eq(
            &read(&mut reuse).services[0],
            &in_force.services[0]
        ));
        reuse.share_with(&in_force);
        let again = read(&mut reuse);
        assert_eq!(reuse.parsed(), 0);
        assert!(Arc::ptr_eq(&again.services[0], &in_force.services[0]));
    }

    #[test]
    fn share_unchanged_takes_the_previous_arc_of_an_equal_service() {
        let before = parse_str(MINIMAL, "t.yaml").expect("valid");
        let mut again = parse_str(MINIMAL, "t.yaml").expect("valid");
        assert!(!Arc::ptr_eq(&before.services[0], &again.services[0]));
        again.share_unchanged(&before);
        assert!(Arc::ptr_eq(&before.services[0], &again.services[0]));
        // A changed service stays its own.
        let mut changed =
            parse_str(&MINIMAL.replace("weight: 1", "weight: 2"), "t.yaml").expect("valid");
        changed.share_unchanged(&before);
        assert!(!Arc::ptr_eq(&before.services[0], &changed.services[0]));
        assert_eq!(changed.services[0].versions[0].weight.get(), 2);
    }

    #[test]
    fn bytes_handed_on_read_as_the_file_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("veer.yaml");
        let text = format!("{MINIMAL}state_dir: state\n");
        std::fs::write(&path, &text).expect("write");
        let mut reuse = Reuse::default();
        let (from_file, _) =
            load_file_reusing(&path, |_| Vec::new(), Some(&mut reuse)).expect("valid");
        let (from_bytes, _) =
            load_bytes_reusing(&path, text.as_bytes(), |_| Vec::new(), Some(&mut reuse))
                .expect("valid");
        assert_eq!(from_file, from_bytes);
        assert_eq!(
            reuse.parsed(),
            0,
            "the bytes reuse what the file's read kept"
        );
        assert_eq!(from_bytes.state_dir, Some(dir.path().join("state")));
        // Errors, placed in the file named, word for word.
        let bad = MINIMAL.replace("weight: 1", "weight: one");
        std::fs::write(&path, &bad).expect("write");
        let from_file =
            load_file_reusing(&path, |_| Vec::new(), Some(&mut reuse)).expect_err("invalid");
        let from_bytes =
            load_bytes_reusing(&path, bad.as_bytes(), |_| Vec::new(), Some(&mut reuse))
                .expect_err("invalid");
        assert_eq!(from_file.to_string(), from_bytes.to_string());
        // Not UTF-8: the same refusal as reading the file gives.
        let latin1 = b"listeners: []\n# caf\xe9\n";
        std::fs::write(&path, latin1).expect("write");
        let from_file = load_file(&path).expect_err("not utf-8");
        let from_bytes =
            load_bytes_reusing(&path, latin1, |_| Vec::new(), None).expect_err("not utf-8");
        assert_eq!(from_file.to_string(), from_bytes.to_string());
        assert_eq!(
            from_bytes.0[0].to_string(),
            format!(
                "{}:1:1: (file): cannot read the config file: stream did not contain valid UTF-8",
                path.display()
            )
        );
    }

    #[test]
    fn load_file_resolves_relative_paths_against_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("veer.yaml");
        let text = format!("{MINIMAL}state_dir: state\nadmin: {{ token_file: secrets/token }}\n")
            .replace(
                "address: 127.0.0.1:8080",
                "address: 127.0.0.1:8080\n    tls: { cert: /etc/c.pem, key: k.pem }",
            );
        std::fs::write(&path, text).expect("write");
        let config = load_file(&path).expect("valid");
        assert_eq!(config.state_dir, Some(dir.path().join("state")));
        assert_eq!(
            config.admin.token_file,
            Some(dir.path().join("secrets/token"))
        );
        let tls = &config.listeners[0].tls.as_ref().expect("tls").certificates[0];
        assert_eq!(tls.cert, PathBuf::from("/etc/c.pem"));
        assert_eq!(tls.key, dir.path().join("k.pem"));

        // parse_str leaves them as written.
        let config = parse_str(&std::fs::read_to_string(&path).expect("read"), "x").expect("valid");
        assert_eq!(config.state_dir, Some(PathBuf::from("state")));
    }
}
