//! Watches one file — the config, a listener's certificate or key — and turns
//! each burst of filesystem events into one "the file changed" signal.
//!
//! The watch is on the file's directory, not the file: editors rename a new file
//! over the old one, Kubernetes swaps a `..data` symlink and cert-manager
//! rewrites a Secret the same way, and a watch on the file's inode would go deaf
//! after the first such save. A save is a burst of events (truncate, write,
//! close, rename, …), so events are debounced, and a burst is reported only when
//! the bytes a reader would read differ from the last ones seen: one save, one
//! signal.
//!
//! The debounce is there for writers that truncate and write the file in place,
//! whose half-written file must not be read. A file renamed over the watched
//! name (an editor's or a deploy tool's atomic save, Kubernetes' `..data` swap)
//! is complete by construction: [`watch_content`] reads it at once, skipping the
//! debounce, unless an in-place write follows the rename within the burst. It
//! also hands the bytes it read to the reader with the signal ([`Seen`]), so a
//! large config is read once per change, not twice.
//!
//! A leaf: depends on `notify`, tokio, `bytes`, `memmap2` and std only, so
//! that `reload` (the config) and `tls` (certificates) can both use it.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Kubernetes mounts a ConfigMap as `..data -> ..<timestamp>` and publishes a new
/// version by renaming a fresh `..data_tmp` symlink over `..data`.
const KUBE_DATA: &str = "..data";
const KUBE_DATA_TMP: &str = "..data_tmp";

/// Raw-event "pokes" waiting for the debounce task. A full queue loses nothing: a
/// poke still queued already guarantees the burst will be examined.
const POKE_QUEUE: usize = 64;

/// One raw event that may concern the file, as the debounce task sees it.
#[derive(Debug, Clone, Copy)]
struct Poke {
    /// When notify delivered it: the change it reports happened before, so a
    /// read of the file begun after this instant sees that change.
    at: std::time::Instant,
    /// The file was replaced whole by a rename (its name, or Kubernetes'
    /// `..data` link, was the target of one): what the name now leads to was
    /// written completely before it got the name, so there is no half-written
    /// file to wait out.
    replaced: bool,
}

/// The debounce task's end of the pokes.
struct Pokes {
    queue: mpsc::Receiver<Poke>,
    /// Set when a poke found the queue full and was dropped.
    overflowed: Arc<AtomicBool>,
}

impl Pokes {
    async fn recv(&mut self) -> Option<Poke> {
        self.queue.recv().await
    }

    fn try_recv(&mut self) -> Result<Poke, TryRecvError> {
        self.queue.try_recv()
    }

    fn take_overflow(&self) -> bool {
        self.overflowed.swap(false, Ordering::AcqRel)
    }
}

/// A burst that never goes quiet (a busy neighbour in a symlinked file's
/// directory) is still examined after this many debounce periods, so a change
/// can't be starved.
const MAX_BURST_PERIODS: u32 = 10;
const MIN_MAX_BURST: Duration = Duration::from_millis(100);

/// Keeps the OS watch alive; dropping it stops watching, and the receiver returned
/// by [`watch`] then yields `None`.
pub struct FileWatcher {
    file: PathBuf,
    // The debounce task holds only a `Weak` to this, so dropping the
    // `FileWatcher` drops notify's watcher: the OS watch goes and notify's
    // thread ends.
    _watcher: Arc<Mutex<RecommendedWatcher>>,
    task: JoinHandle<()>,
    #[cfg(test)]
    refreshes: Arc<std::sync::atomic::AtomicU64>,
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        // Ends the debounce task now rather than when notify's thread gets round
        // to dropping its end of the poke channel.
        self.task.abort();
    }
}

impl fmt::Debug for FileWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileWatcher")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// Watches the directory containing `file` (non-recursively) and sends one `()`
/// per burst of changes that concern `file`, once the burst has been quiet for
/// `debounce`, and only if the file's content (or its absence) differs from what
/// it was at the previous signal.
///
/// - A missing or unreadable file is a change like any other: the reloader reads
///   the file and reports the failure; a later create sends another signal.
/// - Rewriting identical bytes, `touch`, or reading the file sends nothing; SIGHUP
///   and `POST /reload` are the ways to force a reload.
/// - Call it before the first load of the file: the baseline is taken once the
///   OS watch is in place, so a change between the caller's load and this call
///   would be part of the baseline and go unreported.
/// - Must be called from inside a tokio runtime. The channel holds one pending
///   signal; more changes while one is pending coalesce into it, since the
///   reloader reads the latest file anyway.
/// - Every burst waits out the debounce, renames included: a certificate and
///   its key, renamed one after the other, land in one burst.
pub fn watch(
    file: &Path,
    debounce: Duration,
) -> Result<(FileWatcher, mpsc::Receiver<()>), WatchError> {
    let (signal, signals) = mpsc::channel(1);
    let watcher = start(file, debounce, Out::Signal(signal))?;
    Ok((watcher, signals))
}

/// As [`watch`], for a reader that wants the bytes: each change hands on the
/// content the watcher read to tell it was one ([`Seen`]), so the reader need
/// not read the file again; and a burst whose latest event renamed a file over
/// the watched name (or swapped Kubernetes' `..data` link) is read at once,
/// without the debounce, since the file a rename brings is complete.
/// [`Changes::next`] gives the latest content not yet taken: a change that
/// lands while the reader is busy replaces one it has not taken.
pub fn watch_content(
    file: &Path,
    debounce: Duration,
) -> Result<(FileWatcher, Changes), WatchError> {
    let (signal, signals) = mpsc::channel(1);
    let latest = Arc::new(Mutex::new(None));
    let out = Out::Content {
        signal,
        latest: Arc::clone(&latest),
    };
    let watcher = start(file, debounce, out)?;
    Ok((watcher, Changes { signals, latest }))
}

/// The file as the watcher read it when it found a change.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The file's bytes; `None` when it was missing or unreadable (the reader
    /// reads it itself, to report why).
    pub bytes: Option<Bytes>,
    /// When the read that got `bytes` began. A read of the file that ended
    /// before this instant got content no newer than `bytes`; one that ended
    /// after it may have newer content, and then `bytes` must not replace it.
    pub read_at: std::time::Instant,
}

/// The receiving end of [`watch_content`].
pub struct Changes {
    signals: mpsc::Receiver<()>,
    /// The latest content not yet taken. A lock, off the request path: the
    /// watcher and the reader take it once per change of the file.
    latest: Arc<Mutex<Option<Seen>>>,
}

impl Changes {
    /// The content of the file's latest change not yet taken; waits for one.
    /// `None` once the watcher is gone.
    pub async fn next(&mut self) -> Option<Seen> {
        loop {
            self.signals.recv().await?;
            // A signal may come after its content was taken with the signal
            // before it; then there is nothing new yet.
            if let Some(seen) = lock(&self.latest).take() {
                return Some(seen);
            }
        }
    }
}

impl fmt::Debug for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Changes").finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning can't leave an `Option` half-written.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where the debounce task reports a change.
enum Out {
    Signal(mpsc::Sender<()>),
    Content {
        signal: mpsc::Sender<()>,
        latest: Arc<Mutex<Option<Seen>>>,
    },
}

impl Out {
    fn signal(&self) -> &mpsc::Sender<()> {
        match self {
            Out::Signal(signal) | Out::Content { signal, .. } => signal,
        }
    }

    /// Whether a rename over the file is read without the debounce.
    fn reads_replacements_at_once(&self) -> bool {
        matches!(self, Out::Content { .. })
    }

    /// Reports a change; false once the receiver is gone.
    fn send(&self, seen: Seen) -> bool {
        if let Out::Content { latest, .. } = self {
            *lock(latest) = Some(seen);
        }
        match self.signal().try_send(()) {
            // Full: a signal is pending, and its reader takes this content.
            Ok(()) | Err(TrySendError::Full(())) => true,
            Err(TrySendError::Closed(())) => false,
        }
    }
}

fn start(file: &Path, debounce: Duration, out: Out) -> Result<FileWatcher, WatchError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| WatchError::NoRuntime)?;
    let name = file
        .file_name()
        .ok_or_else(|| WatchError::NotAFile {
            file: file.to_path_buf(),
        })?
        .to_os_string();
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Canonical, so that the paths in notify's events (the watched path joined
    // with an entry's name) compare equal to ours.
    let dir = std::fs::canonicalize(parent).map_err(|source| WatchError::Dir {
        dir: parent.to_path_buf(),
        source,
    })?;
    if !dir.is_dir() {
        return Err(WatchError::Dir {
            dir,
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let file = dir.join(&name);

    let (poke_tx, poke_rx) = mpsc::channel(POKE_QUEUE);
    let overflowed = Arc::new(AtomicBool::new(false));
    let pokes = Pokes {
        queue: poke_rx,
        overflowed: Arc::clone(&overflowed),
    };
    let relevance = Relevance {
        name,
        dir: dir.clone(),
        file: file.clone(),
        kube_data: dir.join(KUBE_DATA),
    };
    // Runs on notify's thread: decide cheaply and never block it.
    let handler = move |res: notify::Result<notify::Event>| {
        let at = std::time::Instant::now();
        let replaced = match res {
            Ok(event) => relevance.concerns_file(&event),
            Err(e) => {
                // An error may mean lost events; examining the file costs little.
                tracing::warn!(error = %e, "file watcher: error from the OS watch");
                Some(false)
            }
        };
        if let Some(replaced) = replaced {
            // Closed: the watcher is shutting down.
            if let Err(TrySendError::Full(_)) = poke_tx.try_send(Poke { at, replaced }) {
                // Pokes are queued, but all may be older than this one; a
                // look that began before it must not be the last.
                overflowed.store(true, Ordering::Release);
            }
        }
    };
    let mut watcher =
        notify::recommended_watcher(handler).map_err(|source| WatchError::Init { source })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError::from_notify(&dir, source))?;
    let watcher = Arc::new(Mutex::new(watcher));

    #[cfg(test)]
    let refreshes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tracker = Tracker {
        file: file.clone(),
        dir,
        last: Fingerprint::Missing,
        target_dir: None,
        watcher: Arc::downgrade(&watcher),
        #[cfg(test)]
        refreshes: refreshes.clone(),
    };
    // The baseline, taken with the OS watch in place: any later change is either
    // in it or raises an event. Direct std::fs here: this runs once, at start.
    let baseline = tracker.look();
    tracker.take(baseline, std::time::Instant::now());

    let task = runtime.spawn(debounce_loop(pokes, out, tracker, debounce));
    Ok(FileWatcher {
        file,
        _watcher: watcher,
        task,
        #[cfg(test)]
        refreshes,
    })
}

/// Why a file could not be watched, worded for the operator; the caller says
/// which file it was and what happens without the watch.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// `watch` was called outside a tokio runtime: a bug in the caller.
    #[error("the file watcher must be started inside a tokio runtime (a bug in veer)")]
    NoRuntime,
    /// The path has no file name (`/`, `..`).
    #[error("{} does not name a file; give the path of a file", file.display())]
    NotAFile { file: PathBuf },
    /// The directory holding the file is missing, unreadable or not a directory.
    #[error(
        "cannot watch the directory {}: {source}; it must exist and be readable when \
         veer starts (check the path)",
        dir.display()
    )]
    Dir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The OS watcher could not be created (on Linux: inotify instance or fd limit).
    #[error(
        "cannot start watching files: {source}; on Linux this usually means the \
         per-user inotify instance limit is reached: raise it \
         (sysctl -w fs.inotify.max_user_instances=512) or stop idle watchers, or \
         raise the open-file limit (ulimit -n)"
    )]
    Init {
        #[source]
        source: notify::Error,
    },
    /// The per-user inotify watch limit is reached.
    #[error(
        "cannot watch the directory {}: the inotify watch limit is reached; raise it \
         (sysctl -w fs.inotify.max_user_watches=524288) or stop idle watchers",
        dir.display()
    )]
    WatchLimit { dir: PathBuf },
    /// Any other failure to watch the directory.
    #[error("cannot watch the directory {}: {source}", dir.display())]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
}

impl WatchError {
    fn from_notify(dir: &Path, source: notify::Error) -> Self {
        match source.kind {
            notify::ErrorKind::MaxFilesWatch => WatchError::WatchLimit {
                dir: dir.to_path_buf(),
            },
            notify::ErrorKind::PathNotFound => WatchError::Dir {
                dir: dir.to_path_buf(),
                source: io::Error::new(io::ErrorKind::NotFound, "directory not found"),
            },
            _ => WatchError::Watch {
                dir: dir.to_path_buf(),
                source,
            },
        }
    }
}

/// Which raw events may concern the watched file. Errs towards yes: a false
/// positive costs one read of a small file, a false negative a missed reload.
struct Relevance {
    name: OsString,
    dir: PathBuf,
    file: PathBuf,
    /// Kubernetes' `..data` link in the directory.
    kube_data: PathBuf,
}

impl Relevance {
    /// `None`: the event does not concern the file. `Some(replaced)`: it
    /// may; `replaced` when it renamed something over the file's name or over
    /// `..data`, so the name now leads to a file written whole beforehand.
    fn concerns_file(&self, event: &notify::Event) -> Option<bool> {
        if let EventKind::Access(kind) = event.kind {
            // notify's inotify backend also reports opens and read-only closes.
            // Reading the file — our own fingerprint or the reloader — would start
            // a new burst and so another read, forever. Only a writer's close counts.
            if !matches!(kind, AccessKind::Close(AccessMode::Write)) {
                return None;
            }
        }
        if event.need_rescan() || event.paths.is_empty() {
            // The kernel queue overflowed: events were lost, look at the file.
            return Some(false);
        }
        // notify's inotify backend reports a rename as `To` (the new name)
        // and then `Both` (the old name, the new one).
        let renamed_to = match event.kind {
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => event.paths.first(),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => event.paths.get(1),
            _ => None,
        };
        if renamed_to.is_some_and(|to| *to == self.file || *to == self.kube_data) {
            return Some(true);
        }
        for path in &event.paths {
            if *path == self.dir {
                if matches!(
                    event.kind,
                    EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                ) {
                    tracing::warn!(
                        dir = %self.dir.display(),
                        file = %self.file.display(),
                        "the watched file's directory was removed or moved: changes to the \
                         file will not be seen until veer restarts"
                    );
                }
                return Some(false);
            }
            if let Some(name) = path.file_name() {
                if name == self.name || name == KUBE_DATA || name == KUBE_DATA_TMP {
                    return Some(false);
                }
            }
        }
        // When the file is a symlink, what it resolves to can change through any
        // entry of the directory (an intermediate link, a renamed folder), so every
        // event counts; the fingerprint drops those that changed nothing.
        std::fs::symlink_metadata(&self.file)
            .is_ok_and(|m| m.file_type().is_symlink())
            .then_some(false)
    }
}

/// What the reloader would read, reduced to a comparable value. Content rather
/// than mtime: a save that rewrites the same bytes, or a ConfigMap update that
/// changes other keys only, needs no reload; and coarse mtimes on some
/// filesystems could hide a real change.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fingerprint {
    Missing,
    Unreadable(io::ErrorKind),
    Content { len: u64, hash: u64 },
}

impl Fingerprint {
    /// The file's fingerprint, and its bytes when it could be read.
    fn read(file: &Path) -> (Self, Option<Bytes>) {
        match read_file(file) {
            Ok(bytes) => {
                let fingerprint = Fingerprint::Content {
                    len: bytes.len() as u64,
                    // xxh3: a large config is hashed in a fraction of a millisecond.
                    hash: xxhash_rust::xxh3::xxh3_64(&bytes),
                };
                (fingerprint, Some(bytes))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Fingerprint::Missing, None),
            Err(e) => (Fingerprint::Unreadable(e.kind()), None),
        }
    }
}

/// From this size up, a file is read into a mapping of its own.
const MAPPED_FROM: u64 = 1 << 20;

/// The file's bytes. A large one goes into an anonymous mapping, unmapped
/// when the last holder drops it: the buffer is made on one thread and
/// freed on another (the reader's, after its parse), and glibc keeps a
/// freed block at the top of a thread's heap resident, out of
/// `malloc_trim`'s reach: megabytes of a large config for good.
fn read_file(file: &Path) -> io::Result<Bytes> {
    use std::io::Read;
    let mut handle = std::fs::File::open(file)?;
    let expected = handle.metadata()?.len();
    let Some(room) = (expected >= MAPPED_FROM)
        .then(|| usize::try_from(expected).ok())
        .flatten()
    else {
        let mut bytes = Vec::new();
        handle.read_to_end(&mut bytes)?;
        return Ok(Bytes::from(bytes));
    };
    // One byte more than the file had: filling it means the file grew.
    // The buffer starts on a huge page's boundary, in a mapping one huge
    // page longer (address space only: what is never written never gets a
    // page), and asks for huge pages: a few faults for megabytes, where
    // fresh 4 KiB pages cost one each (and, on some virtual machines, tens
    // of microseconds each: see `heap`). Advice only; without it the read
    // faults 4 KiB pages in as it fills them.
    let mut mapped = memmap2::MmapOptions::new()
        .len(room + 1 + HUGE_PAGE)
        .map_anon()?;
    let start = mapped.as_ptr().align_offset(HUGE_PAGE).min(HUGE_PAGE);
    let end = start + room + 1;
    #[cfg(target_os = "linux")]
    let _ = mapped.advise_range(memmap2::Advice::HugePage, start, room + 1);
    let mut filled = 0;
    loop {
        match handle.read(&mut mapped[start + filled..end]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if start + filled == end {
            // Written to as it is read: the rest as it comes, on the heap.
            let mut bytes = mapped[start..end].to_vec();
            handle.read_to_end(&mut bytes)?;
            return Ok(Bytes::from(bytes));
        }
    }
    Ok(Bytes::from_owner(mapped).slice(start..start + filled))
}

/// x86-64's and aarch64's (4 KiB base pages) transparent huge page.
const HUGE_PAGE: usize = 2 << 20;

/// The debounce task's view of the file: the last fingerprint, and a second watch
/// on a symlinked file's target directory.
struct Tracker {
    file: PathBuf,
    dir: PathBuf,
    last: Fingerprint,
    target_dir: Option<PathBuf>,
    watcher: Weak<Mutex<RecommendedWatcher>>,
    #[cfg(test)]
    refreshes: Arc<std::sync::atomic::AtomicU64>,
}

impl Tracker {
    /// Looks at the file again: its fingerprint and bytes. Blocking: reads
    /// the file and talks to notify's thread.
    fn look(&mut self) -> (Fingerprint, Option<Bytes>) {
        #[cfg(test)]
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Watch first, read second: a change after the read then raises an event.
        self.follow_symlink_target();
        let started = std::time::Instant::now();
        let looked = Fingerprint::read(&self.file);
        // `took_us`: reading and fingerprinting the file.
        let took_us = crate::clock::took_us(started);
        if looked.0 != self.last {
            tracing::debug!(file = %self.file.display(), fingerprint = ?looked.0, took_us, "watched file changed");
        }
        looked
    }

    /// Takes a look, begun at `read_at`, as the file's content: what it read
    /// when that differs from the last content taken.
    fn take(
        &mut self,
        (now, bytes): (Fingerprint, Option<Bytes>),
        read_at: std::time::Instant,
    ) -> Option<Seen> {
        let changed = now != self.last;
        self.last = now;
        changed.then_some(Seen { bytes, read_at })
    }

    /// A symlinked file may resolve outside the watched directory, where its
    /// target can be edited in place with no event in our directory: watch the
    /// target's directory too, and follow it when the link moves.
    fn follow_symlink_target(&mut self) {
        let wanted = std::fs::canonicalize(&self.file)
            .ok()
            .and_then(|target| target.parent().map(Path::to_path_buf))
            .filter(|d| *d != self.dir);
        if wanted == self.target_dir {
            return;
        }
        let Some(watcher) = self.watcher.upgrade() else {
            return;
        };
        // Poisoning can't leave the watcher half-changed: each call is one message
        // to notify's thread.
        let mut watcher = match watcher.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(old) = self.target_dir.take() {
            // Fails when the directory is gone (a ConfigMap's previous timestamped
            // folder): the OS dropped that watch already.
            let _ = watcher.unwatch(&old);
        }
        if let Some(new) = wanted {
            match watcher.watch(&new, RecursiveMode::NonRecursive) {
                Ok(()) => self.target_dir = Some(new),
                // Retried at the next burst. Meanwhile, replacing the link is seen,
                // editing its target in place is not.
                Err(e) => tracing::warn!(
                    dir = %new.display(),
                    error = %e,
                    "file watcher: cannot watch the symlinked file's target directory"
                ),
            }
        }
    }
}

/// After a renamed-over file was read at once, how long its in-place
/// writes, if one began before that read, have to show: their events come
/// through notify's thread.
const AT_ONCE_GRACE: Duration = Duration::from_millis(1);

/// Waits for a burst, waits for it to go quiet (or not, when it ended with the
/// file replaced whole and `out` reads replacements at once), looks at the
/// file, and reports a change. Ends when the watcher or the receiver is
/// dropped.
async fn debounce_loop(mut pokes: Pokes, out: Out, mut tracker: Tracker, debounce: Duration) {
    let max_burst = (debounce * MAX_BURST_PERIODS).max(MIN_MAX_BURST);
    let at_once = out.reads_replacements_at_once();
    // A poke that came after the last look began: the next burst's first.
    let mut carried: Option<Poke> = None;
    loop {
        let first = match carried.take() {
            Some(poke) => poke,
            None => tokio::select! {
                poke = pokes.recv() => match poke {
                    Some(poke) => poke,
                    None => return,
                },
                () = out.signal().closed() => return,
            },
        };
        let cap = Instant::now() + max_burst;
        let mut quiet_at = (Instant::now() + debounce).min(cap);
        // Whether the burst's latest event replaced the file whole: then it
        // is read now. Any later event of the burst (an in-place write
        // after the rename) brings the debounce back.
        let mut complete = at_once && first.replaced;
        let (looked, read_at) = loop {
            loop {
                let poke = if complete {
                    // What is queued already still counts.
                    match pokes.try_recv() {
                        Ok(poke) => poke,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return,
                    }
                } else {
                    tokio::select! {
                        poke = pokes.recv() => match poke {
                            Some(poke) => poke,
                            None => return,
                        },
                        () = tokio::time::sleep_until(quiet_at) => break,
                    }
                };
                complete = at_once && poke.replaced;
                quiet_at = (Instant::now() + debounce).min(cap);
                if Instant::now() >= cap {
                    break;
                }
            }
            // spawn_blocking: the file may live on a network or FUSE mount, and a
            // stalled read must not stall a runtime worker that serves requests.
            let read_at = std::time::Instant::now();
            let looked = tokio::task::spawn_blocking(move || {
                let looked = tracker.look();
                (tracker, looked)
            })
            .await;
            let looked = match looked {
                Ok((back, looked)) => {
                    tracker = back;
                    looked
                }
                Err(e) => {
                    tracing::error!(error = %e, "file watcher stopped: changes will not be seen");
                    return;
                }
            };
            if !complete {
                break (looked, read_at);
            }
            // Read at once after a rename: an in-place write that began
            // before the read may have been read half done. Its events get
            // a moment to show; if any did, the read is dropped and the
            // burst waited out as any other.
            tokio::time::sleep(AT_ONCE_GRACE).await;
            let mut in_place = false;
            loop {
                match pokes.try_recv() {
                    Ok(poke) if !poke.replaced => in_place = true,
                    Ok(poke) if poke.at >= read_at => carried = carried.or(Some(poke)),
                    Ok(_) => {}
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            // Events were lost: what they were is unknown.
            in_place |= pokes.take_overflow();
            if !in_place || Instant::now() >= cap {
                break (looked, read_at);
            }
            // This burst's next read covers what came after this one.
            carried = None;
            complete = false;
            quiet_at = (Instant::now() + debounce).min(cap);
        };
        if let Some(seen) = tracker.take(looked, read_at) {
            // `took_us`: from the first event of the burst to this signal,
            // the debounce's wait (if any) and the read included.
            let took_us = crate::clock::took_us(first.at);
            tracing::debug!(took_us, "watched file: change signalled");
            if !out.send(seen) {
                return;
            }
        }
        // An event delivered before the look began reports a change the look
        // saw: it needs no look of its own.
        while carried.is_none() {
            match pokes.try_recv() {
                Ok(poke) if poke.at < read_at => {}
                Ok(poke) => carried = Some(poke),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        if pokes.take_overflow() && carried.is_none() {
            // A poke was dropped on a full queue: it may have been later
            // than the look. Look again.
            carried = Some(Poke {
                at: std::time::Instant::now(),
                replaced: false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::symlink;
    use tokio::time::timeout;

    /// Longer than production's few milliseconds so that a busy CI machine
    /// preempting the writer between truncate and write doesn't split one save
    /// into two bursts; the property under test doesn't depend on the value.
    const DEBOUNCE: Duration = Duration::from_millis(50);
    const FIRST_WITHIN: Duration = Duration::from_secs(2);
    const NONE_WITHIN: Duration = Duration::from_millis(300);

    fn setup(content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("veer.yaml");
        fs::write(&file, content).expect("write config");
        (dir, file)
    }

    async fn expect_one(rx: &mut mpsc::Receiver<()>, what: &str) {
        expect_signal(rx, what).await;
        expect_none(rx, what).await;
    }

    async fn expect_signal(rx: &mut mpsc::Receiver<()>, what: &str) {
        match timeout(FIRST_WITHIN, rx.recv()).await {
            Ok(Some(())) => {}
            Ok(None) => panic!("{what}: watcher channel closed"),
            Err(_) => panic!("{what}: no notification within {FIRST_WITHIN:?}"),
        }
    }

    async fn expect_none(rx: &mut mpsc::Receiver<()>, what: &str) {
        if let Ok(got) = timeout(NONE_WITHIN, rx.recv()).await {
            panic!("{what}: unexpected extra notification ({got:?})");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_in_place_is_one_notification() {
        let (_dir, file) = setup("weight: 1\n");
        let (_w, mut rx) = watch(&file, DEBOUNCE).expect("watch");
        fs::write(&file, "weight: 2\n").expect("rewrite");
        expect_one(&mut rx, "write in place").await;
        fs::write(&file, "weight: 3\n").expect("rewrite again");
        expect_one(&mut rx, "second write in place").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rename_over_is_one_notification() {
        let (dir, file) = setup("weight: 1\n");
        let (_w, mut rx) = watch(&file, DEBOUNCE).expect("watch");
        let tmp = dir.path().join(".veer.yaml.tmp");
        fs::write(&tmp, "weight: 2\n").expect("write temp");
        fs::rename(&tmp, &file).expect("rename over");
        expect_one(&mut rx, "rename over").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn editor_backup_dance_is_one_notification() {
        // vim with `backupcopy=no`: move the original aside, write a new file,
        // delete the backup.
        let (dir, file) = setup("weight: 1\n");
        let (_w, mut rx) = watch(&file, DEBOUNCE).expect("watch");
        let backup = dir.path().join("veer.yaml~");
        fs::rename(&file, &backup).expect("move aside");
        fs::write(&file, "weight: 2\n").expect("write new");
        fs::remove_file(&backup).expect("remove backup");
        expect_one(&mut rx, "editor save").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delete_then_create_signals_after_the_create() {
        let (_dir, file) = setup("weight: 1\n");
        let (_w, mut rx) = watch(&file, DEBOUNCE).expect("watch");
        fs::remove_file(&file).expect("delete");
        // The missing file is itself a change: the reloader reports a failed reload.
        expect_signal(&mut rx, "delete").await;
        fs::write(&file, "weight: 2\n").expect("create");
        expect_one(&mut rx, "create after delete").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quick_delete_then_create_ends_on_the_created_file() {
        let (_dir, file) = setup("weight: 1\n");
        let (_w, mut rx) = watch(&file, DEBOUNCE).expect("watch");
        fs::remove_file(&file).expect("delete");
        fs::write(&file, "weight: 2\n").expect("create");
        // Act as the reloader: read the file at each signal. One or two signals,
        // depending on whether the two steps fell in one burst; what matters is
        // that the last one leads to the created file, not to its absence.
        expect_signal(&mut rx, "delete+create").await;
        let mut seen = vec![fs::read_to_string(&file).ok()];
        while let Ok(Some(())) = timeout(NONE_WITHIN, rx.recv()).await {
            seen.push(fs::read_to_string(&file).ok());
        }
        assert!(seen.len() <= 2, "signals: {seen:?}");
        assert_eq!(seen.last(), Some(&Some("weight: 2\n".to_string())));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unrelated_file_in_the_dir_is_ignored() {
        let (dir, file) = setup("weight: 1\n");
        let (_w, mut rx) = watch(&file, DEBOUNCE).expect("watch");
        let other = dir.path().join("notes.txt");
        fs::write(&other, "hello").expect("create other");
        fs::write(&other, "hello again").expect("modify other");
        fs::remove_file(&other).expect("remove other");
        expect_none(&mut rx, "unrelated file").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_content_rewrite_is_ignored() {
        let (_dir, file) = setup("weight: 1\n");
        let (_w, mut rx) = watch(&file, DEBOUNCE).expect("watch");
        fs::write(&file, "weight: 1\n").expect("rewrite same");
        expect_none(&mut rx, "identical rewrite").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reading_the_file_does_not_loop() {
        // notify reports opens; if they counted, each look at the file would
        // start the next burst and the task would read the file forever.
        let (_dir, file) = setup("weight: 1\n");
        let (w, mut rx) = watch(&file, DEBOUNCE).expect("watch");
        fs::write(&file, "weight: 2\n").expect("rewrite");
        expect_signal(&mut rx, "write").await;
        for _ in 0..5 {
            fs::read(&file).expect("read as the reloader would");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let looks = w.refreshes.load(Ordering::SeqCst);
        // The baseline, the write's burst, possibly one split-off tail; not one
        // per debounce period.
        assert!(looks <= 4, "file looked at {looks} times");
        expect_none(&mut rx, "reads").await;
    }

    /// Lays out a directory the way kubelet mounts a ConfigMap.
    fn configmap_version(root: &Path, version: &str, content: &str) {
        let folder = root.join(version);
        fs::create_dir(&folder).expect("version folder");
        fs::write(folder.join("veer.yaml"), content).expect("version file");
    }

    /// Mounts `content` as kubelet does (version `..2026_A`); the file's path.
    fn configmap_mount(root: &Path, content: &str) -> PathBuf {
        configmap_version(root, "..2026_A", content);
        symlink("..2026_A", root.join("..data")).expect("..data");
        symlink("..data/veer.yaml", root.join("veer.yaml")).expect("veer.yaml link");
        root.join("veer.yaml")
    }

    /// Publishes `content` as `version`, as kubelet does: a fresh
    /// `..data_tmp` link renamed over `..data`.
    fn configmap_swap(root: &Path, version: &str, content: &str) {
        configmap_version(root, version, content);
        symlink(version, root.join("..data_tmp")).expect("..data_tmp");
        fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn configmap_symlink_swap_is_one_notification() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let file = configmap_mount(root, "weight: 1\n");
        let (_w, mut rx) = watch(&file, DEBOUNCE).expect("watch");

        configmap_swap(root, "..2026_B", "weight: 2\n");
        fs::remove_dir_all(root.join("..2026_A")).expect("remove old");
        expect_one(&mut rx, "configmap swap").await;
        assert_eq!(fs::read_to_string(&file).expect("read"), "weight: 2\n");

        // And the next update after that, through the newly watched folder.
        configmap_swap(root, "..2026_C", "weight: 3\n");
        fs::remove_dir_all(root.join("..2026_B")).expect("remove old");
        expect_one(&mut rx, "second configmap swap").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn configmap_swap_with_unchanged_content_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let file = configmap_mount(root, "weight: 1\n");
        let (_w, mut rx) = watch(&file, DEBOUNCE).expect("watch");

        configmap_swap(root, "..2026_B", "weight: 1\n");
        fs::remove_dir_all(root.join("..2026_A")).expect("remove old");
        expect_none(&mut rx, "swap to identical content").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn symlink_to_another_dir_sees_edits_of_the_target() {
        let conf = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let target = elsewhere.path().join("real.yaml");
        fs::write(&target, "weight: 1\n").expect("target");
        let file = conf.path().join("veer.yaml");
        symlink(&target, &file).expect("link");
        let (_w, mut rx) = watch(&file, DEBOUNCE).expect("watch");
        fs::write(&target, "weight: 2\n").expect("edit target in place");
        expect_one(&mut rx, "edit of symlink target").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relative_path_works() {
        // A bare file name resolves against the working directory; use a path
        // whose parent is given relative to an absolute one instead of changing
        // the process-wide cwd under parallel tests.
        let (dir, _file) = setup("weight: 1\n");
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).expect("sub");
        let file = sub.join("..").join("veer.yaml");
        let (_w, mut rx) = watch(&file, DEBOUNCE).expect("watch");
        fs::write(dir.path().join("veer.yaml"), "weight: 2\n").expect("rewrite");
        expect_one(&mut rx, "write via a path with ..").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("nope").join("veer.yaml");
        let err = watch(&file, DEBOUNCE).expect_err("missing dir must fail");
        assert!(matches!(err, WatchError::Dir { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("nope"), "{msg}");
        assert!(msg.contains("must exist"), "{msg}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_file_at_start_is_fine_and_its_creation_signals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("veer.yaml");
        let (_w, mut rx) = watch(&file, DEBOUNCE).expect("watch without the file");
        fs::write(&file, "weight: 1\n").expect("create");
        expect_one(&mut rx, "create").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_watcher_closes_the_channel() {
        let (_dir, file) = setup("weight: 1\n");
        let (w, mut rx) = watch(&file, DEBOUNCE).expect("watch");
        drop(w);
        let end = timeout(FIRST_WITHIN, rx.recv()).await;
        assert!(matches!(end, Ok(None)), "{end:?}");
    }

    #[test]
    fn outside_a_runtime_is_an_error_not_a_panic() {
        let (_dir, file) = setup("weight: 1\n");
        let err = watch(&file, DEBOUNCE).expect_err("no runtime");
        assert!(matches!(err, WatchError::NoRuntime));
        assert_eq!(
            err.to_string(),
            "the file watcher must be started inside a tokio runtime (a bug in veer)"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_path_without_a_file_name_is_a_clear_error() {
        let err = watch(Path::new("/"), DEBOUNCE).expect_err("`/` is no file");
        assert!(matches!(err, WatchError::NotAFile { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "/ does not name a file; give the path of a file"
        );
    }

    /// Far longer than any test waits: a signal that comes within
    /// `FIRST_WITHIN` did not wait it out.
    const LONG_DEBOUNCE: Duration = Duration::from_secs(60);

    async fn next_seen(changes: &mut Changes, what: &str) -> Option<String> {
        match timeout(FIRST_WITHIN, changes.next()).await {
            Ok(Some(seen)) => seen
                .bytes
                .map(|b| String::from_utf8(b.to_vec()).expect("utf-8")),
            Ok(None) => panic!("{what}: watcher gone"),
            Err(_) => panic!("{what}: no change within {FIRST_WITHIN:?}"),
        }
    }

    async fn no_seen(changes: &mut Changes, what: &str) {
        if let Ok(got) = timeout(NONE_WITHIN, changes.next()).await {
            panic!("{what}: unexpected change {got:?}");
        }
    }

    fn rename_over(file: &Path, content: &str) {
        let tmp = file.with_file_name(".veer.yaml.tmp");
        fs::write(&tmp, content).expect("write temp");
        fs::rename(&tmp, file).expect("rename over");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn content_changes_hand_on_the_bytes_read() {
        let (_dir, file) = setup("weight: 1\n");
        let (_w, mut changes) = watch_content(&file, DEBOUNCE).expect("watch");
        fs::write(&file, "weight: 2\n").expect("rewrite");
        let seen = next_seen(&mut changes, "write in place").await;
        assert_eq!(seen.as_deref(), Some("weight: 2\n"));
        no_seen(&mut changes, "write in place").await;
        // A missing file hands on no bytes: the reader reads it and says why.
        fs::remove_file(&file).expect("delete");
        assert_eq!(next_seen(&mut changes, "delete").await, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rename_over_is_read_without_the_debounce() {
        let (_dir, file) = setup("weight: 1\n");
        let (_w, mut changes) = watch_content(&file, LONG_DEBOUNCE).expect("watch");
        rename_over(&file, "weight: 2\n");
        let seen = next_seen(&mut changes, "rename over, long debounce").await;
        assert_eq!(seen.as_deref(), Some("weight: 2\n"));
        no_seen(&mut changes, "rename over").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_configmap_swap_is_read_without_the_debounce() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let file = configmap_mount(root, "weight: 1\n");
        let (_w, mut changes) = watch_content(&file, LONG_DEBOUNCE).expect("watch");
        configmap_swap(root, "..2026_B", "weight: 2\n");
        let seen = next_seen(&mut changes, "configmap swap, long debounce").await;
        assert_eq!(seen.as_deref(), Some("weight: 2\n"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_in_place_write_still_waits_out_the_debounce() {
        let (_dir, file) = setup("weight: 1\n");
        let (_w, mut changes) = watch_content(&file, LONG_DEBOUNCE).expect("watch");
        fs::write(&file, "weight: 2\n").expect("rewrite in place");
        no_seen(&mut changes, "write in place, long debounce").await;
        // And the plain signal (certificates) waits out a rename too: a
        // certificate and its key land one after the other.
        let (_dir, file) = setup("weight: 1\n");
        let (_w, mut rx) = watch(&file, LONG_DEBOUNCE).expect("watch");
        rename_over(&file, "weight: 2\n");
        expect_none(&mut rx, "rename over, signal only").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_in_place_write_after_a_rename_is_never_read_half_written() {
        // A rename brings a whole file; an in-place write right after it, in
        // the same burst, must still be waited out. The half is valid on its
        // own, as a half-written config may be.
        let debounce = Duration::from_millis(200);
        let (_dir, file) = setup("weight: 1\n");
        let (_w, mut changes) = watch_content(&file, debounce).expect("watch");
        rename_over(&file, "weight: 2\n");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&file)
            .expect("open in place");
        f.write_all(b"weight: 3\n").expect("first half");
        tokio::time::sleep(Duration::from_millis(20)).await;
        f.write_all(b"# and the rest\n").expect("second half");
        drop(f);
        let mut seen = vec![next_seen(&mut changes, "rename + write").await];
        while let Ok(Some(next)) = timeout(Duration::from_millis(600), changes.next()).await {
            seen.push(
                next.bytes
                    .map(|b| String::from_utf8(b.to_vec()).expect("utf-8")),
            );
        }
        assert!(
            !seen.iter().any(|s| s.as_deref() == Some("weight: 3\n")),
            "a half-written file was read: {seen:?}"
        );
        assert_eq!(
            seen.last(),
            Some(&Some("weight: 3\n# and the rest\n".to_string())),
            "{seen:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_not_taken_yet_is_replaced_by_the_newest() {
        // The reader is busy (reloading) while the file changes twice: it
        // must get the newest content next, and nothing older after it.
        let (_dir, file) = setup("weight: 1\n");
        let (w, mut changes) = watch_content(&file, DEBOUNCE).expect("watch");
        rename_over(&file, "weight: 2\n");
        until_looked(&w, 2).await;
        rename_over(&file, "weight: 3\n");
        until_looked(&w, 3).await;
        let seen = next_seen(&mut changes, "two changes, one take").await;
        assert_eq!(seen.as_deref(), Some("weight: 3\n"));
        no_seen(&mut changes, "after the newest").await;
    }

    /// Waits until the watcher has looked at the file `looks` times (the
    /// baseline is the first).
    async fn until_looked(w: &FileWatcher, looks: u64) {
        let deadline = Instant::now() + FIRST_WITHIN;
        while w.refreshes.load(Ordering::SeqCst) < looks {
            assert!(Instant::now() < deadline, "the watcher never looked again");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The look has ended once its signal is sent: give it a moment.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[test]
    fn a_large_file_is_read_whole_into_its_own_mapping() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("veer.yaml");
        for len in [
            0,
            10,
            MAPPED_FROM as usize - 1,
            MAPPED_FROM as usize,
            3 << 20,
        ] {
            let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            fs::write(&file, &content).expect("write");
            let read = read_file(&file).expect("read");
            assert_eq!(read.len(), len);
            assert!(read[..] == content[..], "{len} bytes read back different");
        }
        assert_eq!(
            read_file(&dir.path().join("nope"))
                .expect_err("missing")
                .kind(),
            io::ErrorKind::NotFound
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poke_dropped_on_a_full_queue_brings_another_look() {
        // The queue was full while the file was looked at: a change after
        // the look may have lost its poke, so the task looks once more
        // rather than trust the pokes it has, all older than the look.
        let (_dir, file) = setup("weight: 1\n");
        let refreshes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tracker = Tracker {
            file: file.clone(),
            dir: file.parent().expect("dir").to_path_buf(),
            last: Fingerprint::Missing,
            target_dir: None,
            watcher: Weak::new(),
            refreshes: Arc::clone(&refreshes),
        };
        let baseline = tracker.look();
        tracker.take(baseline, std::time::Instant::now());
        let (tx, queue) = mpsc::channel(1);
        let overflowed = Arc::new(AtomicBool::new(false));
        let pokes = Pokes {
            queue,
            overflowed: Arc::clone(&overflowed),
        };
        let (signal, mut rx) = mpsc::channel(1);
        let task = tokio::spawn(debounce_loop(pokes, Out::Signal(signal), tracker, DEBOUNCE));
        fs::write(&file, "weight: 2\n").expect("rewrite");
        overflowed.store(true, Ordering::SeqCst);
        tx.send(Poke {
            at: std::time::Instant::now(),
            replaced: false,
        })
        .await
        .expect("poke");
        expect_signal(&mut rx, "the change").await;
        let deadline = Instant::now() + FIRST_WITHIN;
        while refreshes.load(Ordering::SeqCst) < 3 {
            assert!(
                Instant::now() < deadline,
                "no second look after an overflow"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Nothing changed since: no second signal, and no third look.
        expect_none(&mut rx, "the look after the overflow").await;
        assert_eq!(refreshes.load(Ordering::SeqCst), 3);
        task.abort();
    }

    #[test]
    fn limit_errors_name_the_sysctl() {
        let err = WatchError::WatchLimit {
            dir: PathBuf::from("/etc/veer"),
        };
        assert!(err.to_string().contains("fs.inotify.max_user_watches"));
        let err = WatchError::Init {
            source: notify::Error::io(io::Error::from_raw_os_error(24)),
        };
        assert!(err.to_string().contains("fs.inotify.max_user_instances"));
    }
}
