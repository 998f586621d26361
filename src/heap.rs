//! Gives the allocator's free memory back to the system after the bursts
//! that leave it: start-up's read of the config and each reload's.
//!
//! A read of a large config allocates and frees a great deal (the YAML's
//! trees, each service's raw form) between allocations that live on (the
//! model, the snapshot). glibc's malloc keeps those freed pages: only the
//! top of a heap is ever returned on its own, and the holes below it stay
//! resident, so an idle proxy with 10,000 services held about twice the heap
//! it used, and each reload stepped it up (docs/benchmarks.md, Scale).
//! `malloc_trim(0)` returns every whole free page of every arena, the holes
//! too (`madvise`), which neither `M_TRIM_THRESHOLD` nor `MALLOC_ARENA_MAX`
//! do. It is called on a blocking thread, never on a request's path; it
//! holds each arena's lock while it walks it, for a few milliseconds at
//! 10,000 services, once per reload.
//!
//! The one `unsafe` call in veer (the crate denies `unsafe_code`, and this
//! module alone allows it): no well-kept crate wraps `malloc_trim`. With the
//! `jemalloc` feature, or off glibc, there is nothing to do.
//!
//! It also asks glibc to back the heap with transparent huge pages
//! ([`use_huge_pages`]). A reload of a large config walks memory it has not
//! touched for seconds (every service kept, the file's bytes): with 4 KiB
//! pages that is one page-table entry, and on a virtual machine one nested
//! walk, per page, and on some hosts memory left alone for a second costs
//! tens of microseconds a page to touch again (`benches/cold_memory.c`:
//! 160-450 ms for 85 MB against 5-12 ms with huge pages, on this machine).
//! The kernel's default (`madvise`) gives huge pages only to memory that
//! asks, and glibc asks only when told at start (`GLIBC_TUNABLES`), so
//! `veer run` starts itself again, once, with the tunables set. glibc asks
//! for its main heap only, not for the arenas it gives other threads (a
//! reload's parse runs on one), so veer also keeps every thread on the main
//! heap (`arena_max=1`): the request path's small allocations are served
//! from each thread's own cache, without the arena's lock, and a side by
//! side at saturation (2 workers, wrk) showed no difference.
//!
//! Depends on nothing else in veer.

/// Returns the allocator's free pages to the system now; true if any were.
/// Takes milliseconds on a large heap: call it off the async workers
/// ([`release_free_memory_soon`]).
pub fn release_free_memory() -> bool {
    trim()
}

/// [`release_free_memory`] on tokio's blocking pool, logged at debug with
/// how long it took; `why` names the burst it follows.
pub fn release_free_memory_soon(why: &'static str) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn_blocking(move || {
        let started = std::time::Instant::now();
        let released = release_free_memory();
        tracing::debug!(
            after = why,
            released,
            took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "returned free heap pages to the system"
        );
    });
}

/// The glibc tunable that has malloc ask for transparent huge pages
/// (`madvise`) for the memory it takes from the kernel; glibc 2.35 and
/// later (older ones ignore it).
pub const HUGE_PAGES_TUNABLE: &str = "glibc.malloc.hugetlb=1";

/// Every thread on the main heap, the one glibc asks huge pages for.
pub const ONE_ARENA_TUNABLE: &str = "glibc.malloc.arena_max=1";

/// Set to `0` to keep veer's heap on 4 KiB pages (no start-up re-exec).
pub const HUGE_PAGES_ENV: &str = "VEER_HUGE_PAGES";

/// Set by the re-exec to the tunables it added: the process started again
/// never starts itself a third time. (Not `GLIBC_TUNABLES` itself: glibc
/// cuts that string at its first tunable in place as it reads it.)
pub const TUNED_ENV: &str = "VEER_HEAP_TUNED";

/// Makes this process's heap ask for transparent huge pages: when glibc was
/// not told to at start, and the kernel gives them, replaces this process
/// with itself (same PID, arguments and environment, the tunable added to
/// `GLIBC_TUNABLES`). Returns when nothing is to be done, or when the exec
/// failed (veer then runs as it is). Call it before any thread starts.
pub fn use_huge_pages() {
    if std::env::var_os(TUNED_ENV).is_some() {
        return;
    }
    let tunables = std::env::var_os("GLIBC_TUNABLES");
    let Some(tunables) = with_huge_pages(
        tunables.as_deref().and_then(std::ffi::OsStr::to_str),
        std::env::var_os(HUGE_PAGES_ENV).as_deref() == Some("0".as_ref()),
        &std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default(),
    ) else {
        return;
    };
    reexec(&tunables);
}

/// The `GLIBC_TUNABLES` to start again with, or `None` to go on as is:
/// already set (by veer's own re-exec or the operator, either way), opted
/// out, or a kernel without transparent huge pages.
fn with_huge_pages(tunables: Option<&str>, opted_out: bool, thp_enabled: &str) -> Option<String> {
    if opted_out
        || !cfg!(all(
            target_os = "linux",
            target_env = "gnu",
            not(feature = "jemalloc")
        ))
    {
        return None;
    }
    // `always [madvise] never`: the bracketed one is in force.
    if !(thp_enabled.contains("[madvise]") || thp_enabled.contains("[always]")) {
        return None;
    }
    let set = tunables.unwrap_or_default();
    let names = |name: &str| set.split(':').any(|t| t.split('=').next() == Some(name));
    // The operator's own choice of huge pages (veer's re-exec's too) is
    // left alone: no loop. Their arena count is kept.
    if names("glibc.malloc.hugetlb") {
        return None;
    }
    let mut wanted: Vec<&str> = set.split(':').filter(|t| !t.is_empty()).collect();
    wanted.push(HUGE_PAGES_TUNABLE);
    if !names("glibc.malloc.arena_max") {
        wanted.push(ONE_ARENA_TUNABLE);
    }
    Some(wanted.join(":"))
}

#[cfg(target_os = "linux")]
fn reexec(tunables: &str) {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let Some(argv0) = args.next() else { return };
    // This very binary: by its path (what a tool that runs veer, such as
    // valgrind, says it is), or through `/proc/self/exe` when its file was
    // replaced or removed since it started (an upgrade in place).
    let binary = std::env::current_exe()
        .ok()
        .filter(|path| path.exists())
        .unwrap_or_else(|| "/proc/self/exe".into());
    let error = std::process::Command::new(binary)
        .arg0(argv0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .env(TUNED_ENV, tunables)
        .exec();
    // Only returns on failure: veer runs on without huge pages.
    eprintln!(
        "veer: could not restart itself with huge pages for its heap ({error}); \
         running on 4 KiB pages (set {HUGE_PAGES_ENV}=0 to skip this)"
    );
}

#[cfg(not(target_os = "linux"))]
fn reexec(_tunables: &str) {}

/// Says, once logging is up, what the start-up re-exec asked of glibc.
pub fn log_huge_pages() {
    match std::env::var(TUNED_ENV) {
        Ok(tunables) => tracing::info!(
            glibc_tunables = tunables.as_str(),
            "heap: on transparent huge pages, one arena (set {HUGE_PAGES_ENV}=0 for glibc's defaults)"
        ),
        Err(_) => tracing::debug!("heap: glibc's defaults (4 KiB pages unless the kernel's are always huge)"),
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc")))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: `malloc_trim` takes a plain integer and touches only glibc's
    // own allocator state, under that allocator's locks; it is safe to call
    // from any thread at any time, and veer's global allocator is glibc's
    // here (not jemalloc), so the pages it returns are only ever free ones.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc"))))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const MADVISE: &str = "always [madvise] never\n";

    #[test]
    fn the_tunable_is_added_once_and_the_operators_own_are_kept() {
        if !cfg!(all(
            target_os = "linux",
            target_env = "gnu",
            not(feature = "jemalloc")
        )) {
            assert_eq!(with_huge_pages(None, false, MADVISE), None);
            return;
        }
        let both = "glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1";
        assert_eq!(with_huge_pages(None, false, MADVISE).as_deref(), Some(both));
        assert_eq!(
            with_huge_pages(Some(""), false, "[always] madvise never").as_deref(),
            Some(both)
        );
        // The operator's arena count and other tunables are kept.
        assert_eq!(
            with_huge_pages(Some("glibc.malloc.arena_max=2"), false, MADVISE).as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
        );
        assert_eq!(
            with_huge_pages(Some("glibc.malloc.tcache_count=16"), false, MADVISE).as_deref(),
            Some("glibc.malloc.tcache_count=16:glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1")
        );
        // Already there (veer's re-exec, or the operator's own choice, 0
        // included): nothing to do, so no loop.
        assert_eq!(
            with_huge_pages(Some(HUGE_PAGES_TUNABLE), false, MADVISE),
            None
        );
        assert_eq!(
            with_huge_pages(Some("glibc.malloc.hugetlb=0:x=1"), false, MADVISE),
            None
        );
        // Opted out, or a kernel that gives none.
        assert_eq!(with_huge_pages(None, true, MADVISE), None);
        assert_eq!(with_huge_pages(None, false, "always madvise [never]"), None);
        assert_eq!(with_huge_pages(None, false, ""), None);
    }

    #[test]
    fn freed_memory_can_be_returned_at_any_time() {
        // A burst of allocations freed again, then a trim: it must not
        // disturb what is still alive.
        let kept: Vec<Vec<u8>> = (0..64).map(|i| vec![i; 4096]).collect();
        let freed: Vec<Vec<u8>> = (0..4096).map(|i| vec![(i % 251) as u8; 4096]).collect();
        drop(freed);
        super::release_free_memory();
        for (i, block) in kept.iter().enumerate() {
            assert!(block.iter().all(|&b| usize::from(b) == i));
        }
    }
}
