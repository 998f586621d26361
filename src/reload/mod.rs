//! Hot reload: a change to the config file (seen by `watch`, which hands on
//! the bytes it read), a SIGHUP or `POST /reload` (which read the file) gives
//! the new text; it is validated whole, any new listener bound, and only then
//! the new snapshot published. A file that fails any of that changes nothing:
//! the old config keeps serving and the error is logged, counted and shown in
//! `/status`.
//!
//! Depends on `config`, `control`, `audit` and `watch`; the listeners are
//! reached through the `Listeners` trait so that this module does not depend
//! on `server`, and the files a config names (certificates, keys) are checked
//! by the function the server gives, before anything is applied.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::config::{self, Config, Listener};
use crate::control::Control;
use crate::watch;

/// How long a burst of file events must be quiet before it counts as one
/// change (an editor's save is several events within a millisecond or two).
const DEBOUNCE: Duration = Duration::from_millis(10);

/// The part of the server a reload may change.
pub trait Listeners: Send + Sync {
    /// Binds new listeners before closing removed ones; on error changes
    /// nothing and says why.
    fn reconcile(&self, wanted: &[Listener]) -> Result<(), String>;
}

/// What set off a reload, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    FileChanged,
    Signal,
    Admin,
}

impl Trigger {
    /// How the log and the audit trail name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::FileChanged => "file",
            Trigger::Signal => "signal",
            Trigger::Admin => "admin",
        }
    }
}

/// Checks the files a valid config names (`tls::check::files`).
pub type FileCheck = fn(&Config) -> Vec<config::FileIssue>;

pub struct Reloader {
    path: PathBuf,
    control: Arc<Control>,
    listeners: Arc<dyn Listeners>,
    check_files: FileCheck,
    /// Reloads run one at a time, whatever triggered them; the lock holds
    /// what the last read validated, so the next reload parses and checks
    /// only the services whose text changed. Off the request path.
    serial: tokio::sync::Mutex<Serial>,
}

/// What reloads pass on to the next, under the reloader's lock.
#[derive(Debug, Default)]
struct Serial {
    reuse: config::Reuse,
    /// When the reloader's own latest read of the file (SIGHUP, `POST
    /// /reload`, the first look) ended: the watcher's bytes of a read begun
    /// before then may be older than what that read applied, and are not used.
    own_read_done: Option<std::time::Instant>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        control: Arc<Control>,
        listeners: Arc<dyn Listeners>,
        check_files: FileCheck,
    ) -> Reloader {
        Reloader {
            path,
            control,
            listeners,
            check_files,
            serial: tokio::sync::Mutex::new(Serial::default()),
        }
    }

    /// Starts from what the first load of the file validated, so that the
    /// first read (when watching starts) and the first reload parse only the
    /// services whose text changed since.
    pub fn seeded(self, reuse: config::Reuse) -> Reloader {
        Reloader {
            serial: tokio::sync::Mutex::new(Serial {
                reuse,
                own_read_done: None,
            }),
            ..self
        }
    }

    /// Reloads now; the file is read and the listeners bound on a blocking
    /// thread. Returns every error, as `FILE:LINE:COL: path: reason`.
    pub async fn reload(&self, trigger: Trigger) -> Result<(), Vec<String>> {
        self.reload_seen(trigger, None).await
    }

    /// As [`Reloader::reload`], from the file's bytes as the watcher read
    /// them when it saw the change, when it has them and no read of the
    /// reloader's own may have seen newer content since.
    async fn reload_seen(
        &self,
        trigger: Trigger,
        seen: Option<watch::Seen>,
    ) -> Result<(), Vec<String>> {
        let mut serial = self.serial.lock().await;
        let started = std::time::Instant::now();
        let before = self.control.snapshot();
        let handed = seen.and_then(|seen| handed_bytes(seen, serial.own_read_done));
        let (loaded, handed) = self.read(&mut serial, handed, self.check_files).await;
        let loaded =
            loaded.map_err(|errors| errors.0.iter().map(ToString::to_string).collect::<Vec<_>>());
        let parsed = serial.reuse.parsed();
        let read_us = crate::clock::took_us(started);
        let result = match loaded {
            Ok((config, warnings)) => {
                for warning in &warnings {
                    tracing::warn!(trigger = trigger.as_str(), "{warning}");
                }
                self.apply(config).await
            }
            Err(errors) => Err(errors),
        };
        // The watcher's buffer of a large file is a mapping of its own:
        // unmapped once the change is in force, and off the workers.
        if let Some(bytes) = handed {
            tokio::task::spawn_blocking(move || drop(bytes));
        }
        // The stages of a reload, for whoever wonders where its time goes:
        // the read (file, parse of what changed, checks), then the apply
        // (listeners, names, the control plane's publish and write).
        tracing::debug!(
            read_us,
            apply_us = crate::clock::took_us(started).saturating_sub(read_us),
            "reload: read and applied"
        );
        match &result {
            Ok(()) => {
                // `parsed`: the services whose text changed; the others
                // were reused as last validated. `took_ms`: from the start
                // of the read to the new config in force.
                let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                tracing::info!(trigger = trigger.as_str(), file = %self.path.display(), parsed, took_ms, "config reloaded")
            }
            Err(errors) => {
                for error in errors {
                    tracing::error!(
                        trigger = trigger.as_str(),
                        file = %self.path.display(),
                        error = error.as_str(),
                        "reload refused, the previous config keeps serving: {error}"
                    );
                }
            }
        }
        let recorded = std::time::Instant::now();
        self.control.record_reload(&result).await;
        // The admin API writes its own line, with who asked.
        if trigger != Trigger::Admin {
            let detail = result.as_ref().err().map(|errors| errors.join("; "));
            crate::audit::reload(
                trigger.as_str(),
                &before,
                &self.control.snapshot(),
                if result.is_ok() { "ok" } else { "refused" },
                detail.as_deref(),
            );
        }
        tracing::debug!(
            took_us = crate::clock::took_us(recorded),
            "reload: recorded and audited"
        );
        // What the read freed (and the snapshot it replaced) goes back to
        // the system, so memory does not step up with each reload.
        crate::heap::release_free_memory_soon("reload");
        result
    }

    /// Checks the file on a blocking thread, reusing and updating what the
    /// last read validated: `bytes` when given (the file as the watcher
    /// read it, given back), else the file read now.
    async fn read(
        &self,
        serial: &mut Serial,
        bytes: Option<bytes::Bytes>,
        check_files: FileCheck,
    ) -> (
        Result<(Config, Vec<config::ConfigError>), config::ConfigErrors>,
        Option<bytes::Bytes>,
    ) {
        let path = self.path.clone();
        let mut taken = std::mem::take(&mut serial.reuse);
        let own = bytes.is_none();
        let task = tokio::task::spawn_blocking(move || {
            let loaded = match &bytes {
                Some(bytes) => {
                    config::load_bytes_reusing(&path, bytes, check_files, Some(&mut taken))
                }
                None => config::load_file_reusing(&path, check_files, Some(&mut taken)),
            };
            (loaded, taken, bytes)
        });
        let result = task.await;
        if own {
            serial.own_read_done = Some(std::time::Instant::now());
        }
        match result {
            Ok((loaded, taken, bytes)) => {
                serial.reuse = taken;
                (loaded, bytes)
            }
            Err(err) => (
                Err(config::ConfigErrors(vec![config::ConfigError {
                    file: self.path.display().to_string(),
                    line: 1,
                    column: 1,
                    path: "(file)".to_string(),
                    reason: format!("the reload task failed: {err}"),
                }])),
                None,
            ),
        }
    }

    async fn apply(&self, config: Config) -> Result<(), Vec<String>> {
        let current = self.control.config();
        if config.limits != current.limits {
            tracing::warn!("`limits` changed: they take effect at the next restart");
        }
        if config.admin != current.admin {
            tracing::warn!("`admin` changed: it takes effect at the next restart");
        }
        // Not held across the apply: the config it replaces is freed off
        // the workers (see the control actor).
        drop(current);
        let (listeners, wanted) = (Arc::clone(&self.listeners), config.listeners.clone());
        tokio::task::spawn_blocking(move || listeners.reconcile(&wanted))
            .await
            .unwrap_or_else(|err| Err(format!("the listener task failed: {err}")))
            .map_err(|reason| vec![format!("{}: listeners: {reason}", self.path.display())])?;
        self.control
            .apply_config(config)
            .await
            .map_err(|err| vec![err.to_string()])
    }

    /// Starts watching the file and listening for SIGHUP, now: when this
    /// returns, no change and no signal can be missed (before it, SIGHUP's
    /// default action would end the process). A change made between the
    /// first load and this call is caught when [`Listening::run`] starts, by
    /// comparing the file with the config in force.
    pub fn listen(self: &Arc<Self>) -> Listening {
        let (watcher, changes) = match watch::watch_content(&self.path, DEBOUNCE) {
            Ok((watcher, changes)) => (Some(watcher), Some(changes)),
            Err(err) => {
                tracing::error!(
                    "not watching the config file: {err}; reload with SIGHUP or POST /reload"
                );
                (None, None)
            }
        };
        let hangup = signal(SignalKind::hangup())
            .map_err(|err| tracing::error!(error = %err, "cannot listen for SIGHUP"))
            .ok();
        Listening {
            reloader: Arc::clone(self),
            _watcher: watcher,
            changes,
            hangup,
        }
    }
}

/// The file watch and the SIGHUP handler of a reloader, set up by `listen`.
pub struct Listening {
    reloader: Arc<Reloader>,
    _watcher: Option<watch::FileWatcher>,
    changes: Option<watch::Changes>,
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Listening {
    /// Reloads on every change of the file and on SIGHUP until `stop` changes.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let reloader = Arc::clone(&self.reloader);
        // This read also leaves each service's text and validated form for
        // the first reload to reuse; seeded by the first load, it parses only
        // what changed since.
        let changed = {
            let mut serial = reloader.serial.lock().await;
            let changed = reloader
                .read(&mut serial, None, |_| Vec::new())
                .await
                .0
                .is_ok_and(|(now, _)| now != *reloader.control.config());
            if !changed {
                // Keep the model in force for the next read, not a copy.
                serial.reuse.share_with(&reloader.control.config());
            }
            changed
        };
        if changed {
            let _ = reloader.reload(Trigger::FileChanged).await;
        }
        // Start-up's reads of the file are over: what they freed goes back.
        crate::heap::release_free_memory_soon("start-up");
        loop {
            let (trigger, seen) = tokio::select! {
                Some(seen) = recv(&mut self.changes) => (Trigger::FileChanged, Some(seen)),
                Some(()) = recv_signal(&mut self.hangup) => (Trigger::Signal, None),
                _ = stop.changed() => return,
            };
            let _ = self.reloader.reload_seen(trigger, seen).await;
        }
    }
}

/// The watcher's bytes, when they are the newest content the reloader has
/// met: a read of its own that ended after the watcher's began may have
/// applied a newer file, which these bytes must not replace (the file is
/// then read again; a change after it is the watcher's next signal).
fn handed_bytes(
    seen: watch::Seen,
    own_read_done: Option<std::time::Instant>,
) -> Option<bytes::Bytes> {
    let fresh = own_read_done.is_none_or(|done| seen.read_at > done);
    seen.bytes.filter(|_| fresh)
}

async fn recv(changes: &mut Option<watch::Changes>) -> Option<watch::Seen> {
    match changes {
        Some(changes) => changes.next().await,
        None => std::future::pending().await,
    }
}

async fn recv_signal(hangup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hangup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_watcher_s_bytes_are_used_unless_an_own_read_may_be_newer() {
        let bytes = bytes::Bytes::from_static(b"services: []\n");
        let read_at = Instant::now();
        let seen = |bytes: Option<bytes::Bytes>| watch::Seen { bytes, read_at };
        // No read of its own yet, or one that ended before the watcher's
        // began: the bytes are the newest.
        assert_eq!(
            handed_bytes(seen(Some(bytes.clone())), None),
            Some(bytes.clone())
        );
        let before = read_at.checked_sub(Duration::from_millis(1));
        assert_eq!(
            handed_bytes(seen(Some(bytes.clone())), before),
            Some(bytes.clone())
        );
        // One that ended after (a SIGHUP or POST /reload raced the watcher):
        // the file is read again.
        let after = read_at + Duration::from_millis(1);
        assert_eq!(handed_bytes(seen(Some(bytes.clone())), Some(after)), None);
        assert_eq!(handed_bytes(seen(Some(bytes)), Some(read_at)), None);
        // A missing or unreadable file: read it, to say why.
        assert_eq!(handed_bytes(seen(None), None), None);
    }
}
