//! The tokio runtime the proxy serves on, built the same way for `veer run`
//! and `veer demo`.
//!
//! The scheduler's tuning can be changed from the environment, read once at
//! start-up, so that `benches/syscalls.sh` can weigh each setting against
//! the default on one binary (docs/benchmarks.md has the figures):
//! `VEER_RUNTIME_FLAVOR=current_thread` (only with one worker),
//! `VEER_EVENT_INTERVAL`, `VEER_GLOBAL_QUEUE_INTERVAL` and
//! `VEER_MAX_IO_EVENTS` (tokio's settings of those names). A value that is
//! not a positive number is refused with a message, never ignored.
//!
//! `VEER_IO=uring` (a build with the `io-uring` feature, `--workers 1`)
//! serves client connections through io_uring on a tokio-uring runtime
//! instead (`uring`); `VEER_IO=epoll`, or unset, is the default.

use std::future::Future;
use std::io;

/// The runtime veer serves on: tokio's, or tokio-uring's around it.
pub enum Runtime {
    Tokio(tokio::runtime::Runtime),
    #[cfg(feature = "io-uring")]
    Uring(super::uring::Runtime),
}

impl Runtime {
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        match self {
            Runtime::Tokio(runtime) => runtime.block_on(future),
            #[cfg(feature = "io-uring")]
            Runtime::Uring(runtime) => runtime.block_on(future),
        }
    }
}

/// Builds the runtime: multi-threaded, one worker per core unless `workers`
/// says how many (0 or `None`: one per core).
pub fn build(workers: Option<usize>) -> io::Result<Runtime> {
    build_with(workers, &|name| std::env::var(name).ok())
}

fn build_with(workers: Option<usize>, env: &dyn Fn(&str) -> Option<String>) -> io::Result<Runtime> {
    let workers = workers.filter(|&n| n > 0);
    match env("VEER_IO").as_deref() {
        None | Some("epoll") => {}
        Some("uring") => return uring(workers, env),
        Some(other) => {
            return Err(invalid(format!(
                "VEER_IO={other:?} is not an I/O mode; use epoll or uring"
            )))
        }
    }
    let current_thread = match env("VEER_RUNTIME_FLAVOR").as_deref() {
        None | Some("multi_thread") => false,
        Some("current_thread") if workers == Some(1) => true,
        Some("current_thread") => {
            return Err(invalid(
                "VEER_RUNTIME_FLAVOR=current_thread needs --workers 1".to_string(),
            ))
        }
        Some(other) => {
            return Err(invalid(format!(
                "VEER_RUNTIME_FLAVOR={other:?} is not a runtime flavour; use multi_thread or current_thread"
            )))
        }
    };
    let mut builder = if current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().thread_name("veer-worker");
    if let (Some(n), false) = (workers, current_thread) {
        builder.worker_threads(n);
    }
    if let Some(n) = setting(env, "VEER_EVENT_INTERVAL")? {
        builder.event_interval(n);
    }
    if let Some(n) = setting(env, "VEER_GLOBAL_QUEUE_INTERVAL")? {
        builder.global_queue_interval(n);
    }
    if let Some(n) = setting(env, "VEER_MAX_IO_EVENTS")? {
        builder.max_io_events_per_tick(n as usize);
    }
    builder.build().map(Runtime::Tokio)
}

/// tokio-uring's runtime is one thread, and the tokio settings above do not
/// apply to it. `VEER_URING_SQPOLL=MS` and `VEER_URING_COOP_TASKRUN=1` set
/// the ring up with the kernel's options of those names
/// (`uring::RingSettings`); they are read, and refused when malformed, with
/// or without the feature.
fn uring(workers: Option<usize>, env: &dyn Fn(&str) -> Option<String>) -> io::Result<Runtime> {
    if workers != Some(1) {
        return Err(invalid(
            "VEER_IO=uring serves on one thread: run it with --workers 1".to_string(),
        ));
    }
    let _sqpoll = setting(env, "VEER_URING_SQPOLL")?;
    let _coop = setting(env, "VEER_URING_COOP_TASKRUN")?;
    #[cfg(feature = "io-uring")]
    return super::uring::Runtime::new(super::uring::RingSettings {
        sqpoll_idle_ms: _sqpoll,
        coop_taskrun: _coop.is_some(),
    })
    .map(Runtime::Uring);
    #[cfg(not(feature = "io-uring"))]
    Err(invalid(
        "VEER_IO=uring needs a veer built with `--features io-uring`; unset VEER_IO to serve with epoll"
            .to_string(),
    ))
}

fn setting(env: &dyn Fn(&str) -> Option<String>, name: &str) -> io::Result<Option<u32>> {
    let Some(text) = env(name) else {
        return Ok(None);
    };
    match text.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(invalid(format!(
            "{name}={text:?} is not a positive number; unset it for tokio's default"
        ))),
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_string())
        }
    }

    fn error(workers: Option<usize>, pairs: &'static [(&'static str, &'static str)]) -> String {
        match build_with(workers, &with(pairs)) {
            Ok(_) => panic!("{pairs:?} should be refused"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_default_and_every_setting_build_a_runtime_that_runs() {
        let cases: [&'static [(&str, &str)]; 3] = [
            &[],
            &[("VEER_RUNTIME_FLAVOR", "current_thread")],
            &[
                ("VEER_EVENT_INTERVAL", "128"),
                ("VEER_GLOBAL_QUEUE_INTERVAL", "31"),
                ("VEER_MAX_IO_EVENTS", "256"),
            ],
        ];
        for pairs in cases {
            let runtime = build_with(Some(1), &with(pairs)).expect("a valid setting builds");
            assert_eq!(
                runtime.block_on(async { tokio::spawn(async { 7 }).await.expect("task runs") }),
                7
            );
        }
    }

    #[test]
    fn bad_settings_are_refused_with_what_to_do() {
        assert_eq!(
            error(Some(2), &[("VEER_RUNTIME_FLAVOR", "current_thread")]),
            "VEER_RUNTIME_FLAVOR=current_thread needs --workers 1"
        );
        assert_eq!(
            error(Some(1), &[("VEER_RUNTIME_FLAVOR", "single")]),
            "VEER_RUNTIME_FLAVOR=\"single\" is not a runtime flavour; use multi_thread or current_thread"
        );
        assert_eq!(
            error(Some(1), &[("VEER_EVENT_INTERVAL", "0")]),
            "VEER_EVENT_INTERVAL=\"0\" is not a positive number; unset it for tokio's default"
        );
        assert_eq!(
            error(None, &[("VEER_MAX_IO_EVENTS", "lots")]),
            "VEER_MAX_IO_EVENTS=\"lots\" is not a positive number; unset it for tokio's default"
        );
        assert_eq!(
            error(Some(1), &[("VEER_IO", "io_uring")]),
            "VEER_IO=\"io_uring\" is not an I/O mode; use epoll or uring"
        );
        assert_eq!(
            error(None, &[("VEER_IO", "uring")]),
            "VEER_IO=uring serves on one thread: run it with --workers 1"
        );
    }

    #[test]
    fn epoll_is_the_default_io_mode() {
        let runtime = build_with(Some(1), &with(&[("VEER_IO", "epoll")])).expect("epoll builds");
        assert!(matches!(runtime, Runtime::Tokio(_)));
    }

    #[cfg(not(feature = "io-uring"))]
    #[test]
    fn uring_without_the_feature_says_how_to_get_it() {
        assert_eq!(
            error(Some(1), &[("VEER_IO", "uring")]),
            "VEER_IO=uring needs a veer built with `--features io-uring`; unset VEER_IO to serve with epoll"
        );
    }

    #[cfg(feature = "io-uring")]
    #[test]
    fn uring_builds_a_runtime_that_runs_tokio_tasks() {
        let runtime = build_with(Some(1), &with(&[("VEER_IO", "uring")]))
            .expect("io_uring can be set up where these tests run");
        assert!(matches!(runtime, Runtime::Uring(_)));
        assert_eq!(
            runtime.block_on(async { tokio::spawn(async { 7 }).await.expect("task runs") }),
            7
        );
    }
}
