//! Where veer's log goes and in what form: stderr, filtered by `VEER_LOG`
//! (`info`, `veer::audit=info,warn`, … as `tracing-subscriber`'s env filter
//! reads it), as text for people or, with `VEER_LOG_FORMAT=json`, one JSON
//! object a line for a log pipeline. The audit trail (`audit`) is the
//! `veer::audit` target in either form.

/// The environment variable that picks the log format.
pub const FORMAT_VAR: &str = "VEER_LOG_FORMAT";

/// Installs the global subscriber; `default` is the filter when `VEER_LOG`
/// is unset. A second call does nothing (tests start several proxies).
pub fn init(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VEER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let format = std::env::var(FORMAT_VAR).unwrap_or_default();
    match format.trim() {
        "json" => {
            let _ = tracing_subscriber::fmt()
                .json()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_current_span(false)
                .with_target(true)
                .try_init();
        }
        other => {
            if !other.is_empty() && other != "text" {
                eprintln!(
                    "veer: {FORMAT_VAR}=`{other}` is not a log format; use `text` or `json` (logging as text)"
                );
            }
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false)
                .try_init();
        }
    }
}
