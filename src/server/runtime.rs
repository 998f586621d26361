//! The tokio runtime the proxy serves on, built the same way for `veer run`
//! and `veer demo`.

/// Builds the multi-threaded runtime, one worker per core unless `workers`
/// says how many (0 or `None`: one per core).
pub fn build(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("veer-worker");
    if let Some(n) = workers.filter(|&n| n > 0) {
        builder.worker_threads(n);
    }
    builder.build()
}
