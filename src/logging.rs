//! Where veer's log goes and in what form: stderr, filtered by `VEER_LOG`
//! (`info`, `veer::audit=info,warn`, … as `tracing-subscriber`'s env filter
//! reads it; `RUST_LOG` when `VEER_LOG` is unset), as text for people or, with `--log-format json` or
//! `VEER_LOG_FORMAT=json`, one JSON object a line for a log pipeline (Loki,
//! Elasticsearch, Cloud Logging read it without a pattern). An event's own
//! fields (`service`, `version`, `revision`, `reason`, …) sit under
//! `fields`, beside `timestamp`, `level` and `target`. The audit trail
//! (`audit`) is the `veer::audit` target in either form.

use std::sync::OnceLock;

/// The environment variable that picks the log format.
pub const FORMAT_VAR: &str = "VEER_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One line per event for people; colours on a terminal.
    Text,
    /// One JSON object per line for a log pipeline.
    Json,
}

impl Format {
    /// Reads a format's name (`text`, `json`); `None` for anything else.
    pub fn parse(name: &str) -> Option<Format> {
        match name.trim() {
            "text" => Some(Format::Text),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    /// The format `VEER_LOG_FORMAT` asks for: text when unset, and text with a
    /// warning on stderr when it names no format (a typo must not silence the
    /// log).
    fn from_env() -> Format {
        let value = std::env::var(FORMAT_VAR).unwrap_or_default();
        if value.trim().is_empty() {
            return Format::Text;
        }
        Format::parse(&value).unwrap_or_else(|| {
            eprintln!(
                "veer: {FORMAT_VAR}=`{}` is not a log format; use `text` or `json` (logging as text)",
                value.trim()
            );
            Format::Text
        })
    }
}

/// Installs the global subscriber; `default` is the filter when neither
/// `VEER_LOG` nor `RUST_LOG` is set, and `format` (the command line's `--log-format`) wins over
/// `VEER_LOG_FORMAT`. A second call does nothing (tests start several
/// proxies).
pub fn init(default: &str, format: Option<Format>) {
    let format = *CHOSEN.get_or_init(|| format.unwrap_or_else(Format::from_env));
    // An empty variable counts as unset (`VEER_LOG=` in a manifest).
    let filter = ["VEER_LOG", "RUST_LOG"]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()))
        .and_then(|directives| tracing_subscriber::EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default));
    match format {
        Format::Json => {
            let _ = tracing_subscriber::fmt()
                .json()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_current_span(false)
                .with_target(true)
                .try_init();
        }
        Format::Text => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false)
                .try_init();
        }
    }
}

/// The format the first `init` picked, so that what is written around the
/// log (a refusal to start) can be written in it; text before `init`.
static CHOSEN: OnceLock<Format> = OnceLock::new();

/// The log's format, as `init` picked it.
pub fn format() -> Format {
    CHOSEN.get().copied().unwrap_or(Format::Text)
}

#[cfg(test)]
mod tests {
    use super::Format;

    #[test]
    fn format_names() {
        assert_eq!(Format::parse("json"), Some(Format::Json));
        assert_eq!(Format::parse(" text "), Some(Format::Text));
        assert_eq!(Format::parse("yaml"), None);
        assert_eq!(Format::parse(""), None);
    }
}
