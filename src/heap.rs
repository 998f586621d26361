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
