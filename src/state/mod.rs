//! Keeps what operators and the guard decide at run time (run-time weights, guard
//! latches, rollout progress) in `state_dir/veer-state.json`, so that a restart
//! neither undoes a rollback nor forgets where a rollout stood.
//!
//! The file is written whole and atomically (temp file, fsync, rename, fsync of the
//! directory): a crash leaves the old state or the new, never part of one. A file
//! that can't be read back is set aside and reported, never fatal: the config file
//! alone is enough to serve.
//!
//! Where the layer lives is behind the [`Store`] trait (`store.rs`: the seam a
//! shared store plugs into); [`FileStore`] is this file through that trait, and
//! [`StateStore`] its blocking core, whose calls run on tokio's blocking pool.
//! Depends on serde, std and tokio (the blocking pool, the changes channel).
//!
//! Compatibility: fields this version doesn't know are ignored, and a file from a
//! newer `format` is read as far as it is understood, with a warning. Rolling the
//! binary back during an incident must not drop the latches that keep traffic off
//! a bad revision. The price: fields only a newer veer knows are lost at the next
//! save, and a new enum variant (a new `RolloutOutcome`) makes an older veer set
//! the file aside, so adding one needs a format bump and a note in the release.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub mod history;
mod store;

pub use store::{open_file, Changes, FileStore, Loaded, RemoteChange, Store, StoreFuture};

/// The state file's name inside `state_dir`.
pub const STATE_FILE: &str = "veer-state.json";
/// The format this version writes. Bump it when a change is not just a new
/// optional field, and migrate older formats in [`StateStore::open`].
pub const STATE_FORMAT: u32 = 1;

/// Temp files are `veer-state.json.tmp-<pid>-<n>`; whatever carries this prefix
/// when the store opens is left over from a crash.
const TEMP_PREFIX: &str = "veer-state.json.tmp-";
const CORRUPT_INFIX: &str = ".corrupt-";

/// Everything veer persists. `Default` is the empty state at [`STATE_FORMAT`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PersistedState {
    /// The format the file was read in. [`StateStore::save`] always writes
    /// [`STATE_FORMAT`], whatever this says.
    pub format: u32,
    pub services: BTreeMap<String, ServiceState>,
    /// How many of a shared store's changes this layer has taken in; never
    /// written (each store counts from zero at start).
    #[serde(skip)]
    pub remote_applied: u64,
    /// In a fleet's local copy: what the fleet held, per service, when this
    /// layer last took it in (the base of the next three-way merge), kept
    /// here so a restarted replica still merges three ways. Written with the
    /// layer in one file, so it is never newer than the layer it goes with.
    /// `None` outside a fleet, or before the first sync.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_base: Option<BTreeMap<String, ServiceState>>,
}

impl Default for PersistedState {
    fn default() -> Self {
        PersistedState {
            format: STATE_FORMAT,
            services: BTreeMap::new(),
            remote_applied: 0,
            fleet_base: None,
        }
    }
}

/// One service's run-time layer on top of its config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceState {
    /// Run-time weights, by version name, on top of the file's; replaced when a
    /// reload changes the service's weights.
    pub weights: Option<BTreeMap<String, u32>>,
    /// The file's weights when `weights` was set: if the file's weights are
    /// different now (changed by a reload, or while veer was down), the file
    /// is the newer desire and `weights` is dropped.
    pub file_weights: Option<BTreeMap<String, u32>>,
    /// Versions the guard (or an operator's rollback) took traffic from.
    pub latches: Vec<Latch>,
    pub rollout: Option<RolloutProgress>,
    /// The release history, oldest first, bounded by `history.keep`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<history::Record>,
}

/// A guard latch: `version` at `revision` gets no traffic until its revision
/// changes or an operator resumes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Fields in alphabetical order: `/status` lists latches too, and has always
// sent every object's keys sorted.
pub struct Latch {
    pub at_unix_ms: u64,
    /// Drawn at random when the latch is set, so that two trips of the same
    /// version and revision with the same reason in the same millisecond (on
    /// two replicas of a fleet) are still two latches: a resume of one must
    /// not be read as the removal of the other. 0 in files written before it
    /// existed, where the other fields are all there is to tell them apart.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u64,
    pub reason: String,
    pub revision: String,
    pub version: String,
}

impl Latch {
    /// A new latch's `id`: never 0, which marks a latch from an older file.
    pub fn fresh_id() -> u64 {
        fastrand::u64(1..)
    }
}

fn is_zero(id: &u64) -> bool {
    *id == 0
}

/// Where a rollout stands: its candidate at `revision`, at `steps[step]` since
/// `step_entered_unix_ms`, healthy there for `held_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutProgress {
    pub candidate: String,
    pub revision: String,
    pub step: usize,
    pub step_entered_unix_ms: u64,
    pub held_ms: u64,
    pub paused: bool,
    /// Why the rollout is paused, in words (an operator's reason, or the
    /// check that could not judge the candidate): kept with the pause so a
    /// restart still says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
    pub outcome: RolloutOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutOutcome {
    InProgress,
    Completed,
    RolledBack,
    Abandoned,
}

/// What is written: the state with this version's format stamped on it.
#[derive(Serialize)]
struct OnDisk<'a> {
    format: u32,
    services: &'a BTreeMap<String, ServiceState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fleet_base: Option<&'a BTreeMap<String, ServiceState>>,
}

/// Makes temp names unique across every store of the process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The state file in one `state_dir`. Two veer processes must not share a
/// `state_dir`: the last save would win, and each clears the other's temp files.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
    path: PathBuf,
}

impl StateStore {
    /// Creates `dir` if missing and reads the state file. A missing file is the
    /// empty state. A file that can't be read or parsed is renamed aside to
    /// `veer-state.json.corrupt-<unix_ms>`, the state starts empty, and the
    /// returned warning says what happened and where the old file went; a warning
    /// also comes when the file is from a newer veer. Errors only when the
    /// directory can't be created or written: better to refuse at start than to
    /// fail the first rollback's save.
    pub fn open(dir: &Path) -> Result<(StateStore, PersistedState, Option<String>), StateError> {
        let store = StateStore::create(dir)?;
        let (state, warning) = store.read()?;
        Ok((store, state, warning))
    }

    /// The first half of [`StateStore::open`]: creates `dir`, clears temp
    /// files a crash left, and checks that the directory can be written.
    pub fn create(dir: &Path) -> Result<StateStore, StateError> {
        // Absolute, so that every message names the directory unambiguously.
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        fs::create_dir_all(&dir).map_err(|source| StateError::CreateDir {
            dir: dir.clone(),
            source,
        })?;
        let store = StateStore {
            path: dir.join(STATE_FILE),
            dir,
        };
        store.remove_stale_temps();
        store.probe_writable()?;
        Ok(store)
    }

    /// The second half of [`StateStore::open`]: reads the state file, or
    /// sets it aside when it cannot be read.
    pub fn read(&self) -> Result<(PersistedState, Option<String>), StateError> {
        let store = self;
        let problem = match fs::read(&store.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok((PersistedState::default(), None));
            }
            Err(e) => format!("could not be read ({e})"),
            Ok(bytes) => match serde_json::from_slice::<PersistedState>(&bytes) {
                Ok(state) => {
                    let warning = (state.format > STATE_FORMAT).then(|| {
                        format!(
                            "state file {} was written by a newer veer (format {}, this veer \
                             writes {STATE_FORMAT}); it was read as far as this version \
                             understands it, and what it doesn't will be dropped at the next save",
                            store.path.display(),
                            state.format
                        )
                    });
                    return Ok((state, warning));
                }
                Err(e) => format!("is not valid veer state ({e})"),
            },
        };
        let to = store.set_aside(&problem)?;
        let warning = format!(
            "state file {} {problem}; it was moved to {} and veer starts with no run-time \
             weights, guard latches or rollout progress: check that file, and roll back or \
             pause again if a latch was lost",
            store.path.display(),
            to.display()
        );
        Ok((PersistedState::default(), Some(warning)))
    }

    /// Replaces the state file atomically: writes a temp file in the same
    /// directory, fsyncs it, renames it over the state file, fsyncs the directory.
    /// On error the previous file is intact and no temp file is left behind.
    pub fn save(&self, state: &PersistedState) -> Result<(), StateError> {
        let on_disk = OnDisk {
            format: STATE_FORMAT,
            services: &state.services,
            fleet_base: state.fleet_base.as_ref(),
        };
        let mut bytes = serde_json::to_vec_pretty(&on_disk).map_err(|e| StateError::Write {
            path: self.path.clone(),
            step: "serialize",
            source: io::Error::other(e),
        })?;
        bytes.push(b'\n');

        let tmp = self.dir.join(format!(
            "{TEMP_PREFIX}{}-{}",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let written = write_synced(&tmp, &bytes).and_then(|()| {
            fs::rename(&tmp, &self.path).map_err(|e| ("rename over the state file", e))
        });
        if let Err((step, source)) = written {
            // Best effort: the temp file may not exist if its creation failed.
            let _ = fs::remove_file(&tmp);
            return Err(StateError::Write {
                path: self.path.clone(),
                step,
                source,
            });
        }
        // Without this the rename itself may not survive a power cut.
        sync_dir(&self.dir).map_err(|source| StateError::Write {
            path: self.path.clone(),
            step: "fsync the directory",
            source,
        })
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes temp files left by a crash in the middle of a save.
    fn remove_stale_temps(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                match fs::remove_file(entry.path()) {
                    Ok(()) => tracing::info!(
                        file = %entry.path().display(),
                        "removed a temp file left by an interrupted state save"
                    ),
                    Err(e) => tracing::warn!(
                        file = %entry.path().display(),
                        error = %e,
                        "cannot remove a temp file left by an interrupted state save"
                    ),
                }
            }
        }
    }

    /// Creates and removes a file, the way `save` will need to.
    fn probe_writable(&self) -> Result<(), StateError> {
        let probe = self
            .dir
            .join(format!("{TEMP_PREFIX}{}-probe", std::process::id()));
        let created = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&probe)
            .and_then(|_| fs::remove_file(&probe));
        created.map_err(|source| StateError::NotWritable {
            dir: self.dir.clone(),
            source,
        })
    }

    /// Renames the unreadable state file to a free `.corrupt-<unix_ms>` name.
    fn set_aside(&self, problem: &str) -> Result<PathBuf, StateError> {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let base = format!("{STATE_FILE}{CORRUPT_INFIX}{stamp}");
        // Never overwrite an earlier set-aside file: it may be the one an
        // operator needs.
        let mut to = self.dir.join(&base);
        let mut n = 1;
        while to.exists() {
            n += 1;
            to = self.dir.join(format!("{base}-{n}"));
        }
        let renamed = fs::rename(&self.path, &to).and_then(|()| sync_dir(&self.dir));
        renamed.map_err(|source| StateError::SetAside {
            path: self.path.clone(),
            to: to.clone(),
            problem: problem.to_string(),
            source,
        })?;
        Ok(to)
    }
}

/// Writes `bytes` to a new file at `path` and fsyncs it; the error says which step failed.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), (&'static str, io::Error)> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| ("create the temp file", e))?;
    file.write_all(bytes)
        .map_err(|e| ("write the temp file", e))?;
    file.sync_all().map_err(|e| ("fsync the temp file", e))
}

/// Makes a rename in `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Elsewhere a directory can't be opened as a file; rename is as durable as the
/// platform makes it.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Why the state could not be opened or saved; each names the path and what to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum StateError {
    /// `state_dir` does not exist and could not be created.
    CreateDir { dir: PathBuf, source: io::Error },
    /// `state_dir` exists but veer cannot create files in it.
    NotWritable { dir: PathBuf, source: io::Error },
    /// The state file is unreadable and could not be moved aside.
    SetAside {
        path: PathBuf,
        to: PathBuf,
        problem: String,
        source: io::Error,
    },
    /// A save failed at `step`; the previous state file is intact.
    Write {
        path: PathBuf,
        step: &'static str,
        source: io::Error,
    },
    /// The blocking task that read or wrote the file panicked or was
    /// cancelled (the runtime is shutting down).
    Task { path: PathBuf, reason: String },
}

impl StateError {
    /// The directory or file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            StateError::CreateDir { dir, .. } | StateError::NotWritable { dir, .. } => dir,
            StateError::SetAside { path, .. }
            | StateError::Write { path, .. }
            | StateError::Task { path, .. } => path,
        }
    }
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::CreateDir { dir, source } => write!(
                f,
                "cannot create state_dir {}: {source}; create it with write access for the \
                 user veer runs as, or set state_dir to a directory veer can write",
                dir.display()
            ),
            StateError::NotWritable { dir, source } => write!(
                f,
                "state_dir {} is not writable ({source}); give the user veer runs as write \
                 access to it, or set state_dir to a directory veer can write",
                dir.display()
            ),
            StateError::SetAside {
                path,
                to,
                problem,
                source,
            } => write!(
                f,
                "state file {} {problem}, and moving it to {} failed: {source}; move or \
                 delete it by hand",
                path.display(),
                to.display()
            ),
            StateError::Write { path, step, source } => write!(
                f,
                "cannot save state to {} ({step}: {source}); run-time weights, guard latches \
                 and rollout progress are not persisted until this is fixed: check that {} \
                 exists, is writable and has free space",
                path.display(),
                path.parent().unwrap_or(path).display()
            ),
            StateError::Task { path, reason } => write!(
                f,
                "the task reading or writing {} did not finish ({reason}); the change is in \
                 force but may not be persisted: if veer is not shutting down, report this",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StateError::CreateDir { source, .. }
            | StateError::NotWritable { source, .. }
            | StateError::SetAside { source, .. }
            | StateError::Write { source, .. } => Some(source),
            StateError::Task { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PersistedState {
        let mut services = BTreeMap::new();
        services.insert(
            "agent-match".to_string(),
            ServiceState {
                weights: Some(BTreeMap::from([
                    ("stable".to_string(), 0),
                    ("canary".to_string(), 100),
                ])),
                file_weights: Some(BTreeMap::from([
                    ("stable".to_string(), 90),
                    ("canary".to_string(), 10),
                ])),
                latches: vec![Latch {
                    version: "canary".into(),
                    revision: "1.2.0".into(),
                    reason: "error_rate".into(),
                    at_unix_ms: 1_795_000_000_000,
                    id: 0,
                }],
                rollout: Some(RolloutProgress {
                    candidate: "canary".into(),
                    revision: "1.2.0".into(),
                    step: 2,
                    step_entered_unix_ms: 1_795_000_000_500,
                    held_ms: 12_000,
                    paused: true,
                    pause_reason: None,
                    outcome: RolloutOutcome::RolledBack,
                }),
                history: Vec::new(),
            },
        );
        services.insert("other".to_string(), ServiceState::default());
        PersistedState {
            format: STATE_FORMAT,
            services,
            remote_applied: 0,
            fleet_base: None,
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, state, warning) = StateStore::open(dir.path()).expect("open");
        assert_eq!(state, PersistedState::default());
        assert_eq!(warning, None);
        store.save(&sample()).expect("save");
        let (_store, back, warning) = StateStore::open(dir.path()).expect("reopen");
        assert_eq!(back, sample());
        assert_eq!(warning, None);
    }

    #[test]
    fn file_is_readable_json_with_snake_case_outcomes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _, _) = StateStore::open(dir.path()).expect("open");
        store.save(&sample()).expect("save");
        let text = fs::read_to_string(store.path()).expect("read");
        assert!(text.contains("\"format\": 1"), "{text}");
        assert!(text.contains("\"rolled_back\""), "{text}");
    }

    #[test]
    fn save_stamps_the_current_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _, _) = StateStore::open(dir.path()).expect("open");
        let mut state = sample();
        state.format = 7;
        store.save(&state).expect("save");
        let (_, back, warning) = StateStore::open(dir.path()).expect("reopen");
        assert_eq!(back.format, STATE_FORMAT);
        assert_eq!(warning, None);
    }

    #[test]
    fn missing_dir_and_file_give_empty_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state_dir = dir.path().join("a").join("state");
        let (store, state, warning) = StateStore::open(&state_dir).expect("open");
        assert!(state_dir.is_dir());
        assert_eq!(state, PersistedState::default());
        assert_eq!(warning, None);
        assert_eq!(store.path(), state_dir.join(STATE_FILE));
        assert!(names_in(&state_dir).is_empty(), "probe left behind");
    }

    #[test]
    fn corrupt_file_is_set_aside_and_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(STATE_FILE);
        fs::write(&path, b"{\"services\": {\"x\": ").expect("write corrupt");

        let (store, state, warning) = StateStore::open(dir.path()).expect("open never fails");
        assert_eq!(state, PersistedState::default());
        let warning = warning.expect("a warning");
        let names = names_in(dir.path());
        assert_eq!(names.len(), 1, "{names:?}");
        let aside = &names[0];
        assert!(
            aside.starts_with("veer-state.json.corrupt-"),
            "set aside as {aside}"
        );
        assert!(warning.contains(aside.as_str()), "{warning}");
        assert!(warning.contains("not valid"), "{warning}");
        assert_eq!(
            fs::read(dir.path().join(aside)).expect("read aside"),
            b"{\"services\": {\"x\": "
        );

        store.save(&sample()).expect("save after corruption");
        let (_, back, warning) = StateStore::open(dir.path()).expect("reopen");
        assert_eq!(back, sample());
        assert_eq!(warning, None);
    }

    #[test]
    fn empty_file_is_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(STATE_FILE), b"").expect("write empty");
        let (_, state, warning) = StateStore::open(dir.path()).expect("open");
        assert_eq!(state, PersistedState::default());
        assert!(warning.is_some());
    }

    #[test]
    fn set_aside_never_overwrites_an_earlier_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        for round in 0..3 {
            fs::write(dir.path().join(STATE_FILE), format!("garbage {round}")).expect("write");
            let (_, _, warning) = StateStore::open(dir.path()).expect("open");
            assert!(warning.is_some());
        }
        let names = names_in(dir.path());
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn unknown_fields_and_newer_format_are_read_with_a_warning() {
        // What a future veer might write: new fields everywhere, a newer format.
        let future = r#"{
            "format": 2,
            "cluster_id": "eu-1",
            "services": {
                "agent-match": {
                    "weights": {"stable": 100, "canary": 0},
                    "mirror": {"to": "shadow"},
                    "latches": [{"version": "canary", "revision": "1.2.0",
                                 "reason": "latency", "at_unix_ms": 5, "operator": "ann"}],
                    "rollout": null
                }
            }
        }"#;
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(STATE_FILE), future).expect("write");
        let (store, state, warning) = StateStore::open(dir.path()).expect("open");
        let svc = &state.services["agent-match"];
        assert_eq!(svc.latches.len(), 1, "the latch must survive a downgrade");
        assert_eq!(svc.latches[0].revision, "1.2.0");
        assert_eq!(svc.weights.as_ref().map(|w| w["stable"]), Some(100));
        let warning = warning.expect("newer format is reported");
        assert!(warning.contains("newer veer"), "{warning}");
        // Nothing was set aside.
        assert_eq!(names_in(dir.path()), vec![STATE_FILE.to_string()]);

        // Same format, an extra field: read silently.
        store.save(&state).expect("save");
        let text = fs::read_to_string(store.path()).expect("read");
        let text = text.replacen("\"services\"", "\"note\": \"hand edit\", \"services\"", 1);
        fs::write(store.path(), text).expect("write");
        let (_, again, warning) = StateStore::open(dir.path()).expect("open");
        assert_eq!(warning, None);
        assert_eq!(again.services, state.services);
    }

    #[test]
    fn missing_optional_parts_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join(STATE_FILE),
            r#"{"format": 1, "services": {"a": {}}}"#,
        )
        .expect("write");
        let (_, state, warning) = StateStore::open(dir.path()).expect("open");
        assert_eq!(warning, None);
        assert_eq!(state.services["a"], ServiceState::default());
    }

    fn big_state(services: usize, weight: u32) -> PersistedState {
        let mut state = PersistedState::default();
        for i in 0..services {
            let mut svc = sample().services["agent-match"].clone();
            svc.weights = Some(BTreeMap::from([("stable".to_string(), weight)]));
            svc.latches[0].reason = "x".repeat(100);
            state.services.insert(format!("service-{i:05}"), svc);
        }
        state
    }

    #[test]
    fn big_save_leaves_only_the_state_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _, _) = StateStore::open(dir.path()).expect("open");
        let state = big_state(5_000, 1);
        store.save(&state).expect("save");
        store.save(&state).expect("save again, over the first");
        assert!(fs::metadata(store.path()).expect("stat").len() > 1_000_000);
        assert_eq!(names_in(dir.path()), vec![STATE_FILE.to_string()]);
        let (_, back, _) = StateStore::open(dir.path()).expect("reopen");
        assert_eq!(back, state);
    }

    #[test]
    fn a_reader_never_sees_a_partial_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _, _) = StateStore::open(dir.path()).expect("open");
        let a = big_state(2_000, 1);
        let b = big_state(2_000, 2);
        store.save(&a).expect("first save");
        let path = store.path().to_path_buf();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut reads = 0;
                while !done.load(Ordering::Relaxed) || reads == 0 {
                    let bytes = fs::read(&path).expect("the state file always exists");
                    let seen: PersistedState =
                        serde_json::from_slice(&bytes).expect("always a whole file");
                    assert!(seen == a || seen == b);
                    reads += 1;
                }
                reads
            });
            for i in 0..20 {
                store.save(if i % 2 == 0 { &b } else { &a }).expect("save");
            }
            done.store(true, Ordering::Relaxed);
            assert!(reader.join().expect("reader") > 0);
        });
    }

    #[test]
    fn stale_temp_files_are_removed_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stale = dir.path().join(format!("{TEMP_PREFIX}999-3"));
        fs::write(&stale, b"{\"format\": 1, \"serv").expect("write stale");
        let (_, state, warning) = StateStore::open(dir.path()).expect("open");
        assert_eq!(state, PersistedState::default());
        assert_eq!(warning, None);
        assert!(!stale.exists());
    }

    #[test]
    fn save_into_a_vanished_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state_dir = dir.path().join("state");
        let (store, _, _) = StateStore::open(&state_dir).expect("open");
        fs::remove_dir(&state_dir).expect("remove the dir under the store");
        let err = store.save(&sample()).expect_err("save must fail");
        let msg = err.to_string();
        assert!(msg.contains(&*state_dir.to_string_lossy()), "{msg}");
        assert!(msg.contains("create the temp file"), "{msg}");
        assert!(msg.contains("not persisted"), "{msg}");
        assert_eq!(err.path(), state_dir.join(STATE_FILE));
    }

    #[test]
    fn dir_that_cannot_be_created_is_a_clear_error() {
        // A regular file in the way stops even root.
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("blocker");
        fs::write(&blocker, b"").expect("write blocker");
        let state_dir = blocker.join("state");
        let err = StateStore::open(&state_dir).expect_err("must fail");
        assert!(matches!(err, StateError::CreateDir { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&*state_dir.to_string_lossy()), "{msg}");
        assert!(msg.contains("cannot create state_dir"), "{msg}");
    }

    #[cfg(unix)]
    #[test]
    fn read_only_dir_is_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let state_dir = dir.path().join("state");
        fs::create_dir(&state_dir).expect("mkdir");
        fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o555)).expect("chmod");
        // Root (and CAP_DAC_OVERRIDE) writes anyway: then there is nothing to test.
        let bypass = state_dir.join("bypass-check");
        if fs::write(&bypass, b"").is_ok() {
            let _ = fs::remove_file(&bypass);
            eprintln!("skipped: permissions do not apply to this user (root?)");
            return;
        }
        let err = StateStore::open(&state_dir).expect_err("must fail");
        // Restore so the tempdir can be cleaned up.
        fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o755)).expect("chmod back");
        assert!(matches!(err, StateError::NotWritable { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("not writable"), "{msg}");
        assert!(msg.contains(&*state_dir.to_string_lossy()), "{msg}");
    }
}
