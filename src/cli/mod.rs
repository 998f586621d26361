//! The command line (`veer run`, `check`, `demo`, and the operator commands
//! that talk to the admin API): parses arguments, sets up logging and the
//! runtime, and hands over to the library. Exit codes follow the contract.
//! The top of the layer order: nothing in the library depends on it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod client;
mod history;
mod preflight;
pub(crate) mod status;
mod wait;

use client::{AdminTarget, ClientError};
use http::Method;

use crate::config;
use crate::server::{signal, Proxy, StartOptions};

#[derive(Debug, Parser)]
#[command(
    name = "veer",
    version,
    about = "An L7 HTTP proxy that releases new versions safely"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log as `text` for people or `json` (one object a line) for a log
    /// pipeline. Default: `VEER_LOG_FORMAT`, else text.
    #[arg(long, global = true, value_name = "FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy with the config at FILE.
    Run {
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// Runtime worker threads (default: one per core).
        #[arg(long, env = "VEER_WORKERS")]
        workers: Option<usize>,
    },
    /// Validate a config without serving; prints every error. Reads every
    /// file `veer run` would (TLS files, the admin token).
    Check {
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// Check everything but the files the config names (for a pipeline
        /// without the secrets); lists the files it did not read.
        #[arg(long)]
        offline: bool,
    },
    /// The live state of services: versions, weights, rates, latencies.
    Status {
        /// Only this service.
        service: Option<String>,
        /// Print the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Set weights at run time: `veer weights svc green=100 blue=0`.
    Weights {
        service: String,
        /// VERSION=WEIGHT pairs.
        #[arg(required = true, value_name = "VERSION=WEIGHT")]
        weights: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Send every request to the guard's baseline now, and latch it.
    Rollback {
        service: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Move the rollout to its next step now (`--full`: to 100%).
    Promote {
        service: String,
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Hold the rollout at its current step until `veer resume`.
    Pause {
        service: String,
        /// Why, in words: kept with the pause, shown by `veer status` and
        /// written in `veer history`.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Wait until the rollout completes: exit 0 completed (its last step held
    /// with no trip), 1 rolled back or ended by hand, 2 timed out, 3 admin API
    /// unreachable or refusing the token, 64 usage error or unknown service.
    Wait {
        service: String,
        /// Give up after this long (e.g. 90m). Default: the rollout's least
        /// remaining time × 1.5 + 10m, printed at start; required when a
        /// manual step lies ahead.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Wait for the rollout of this candidate revision (a pipeline that
        /// just pushed a config would otherwise see the previous rollout).
        #[arg(long)]
        revision: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Clear the guard's latches and let a paused or rolled-back rollout go on.
    Resume {
        service: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A self-contained demo on loopback: stable and canary upstreams, the
    /// proxy, a load generator and a live per-version table.
    /// The release history of a service: rollouts with their steps and
    /// figures, switches, weight changes, trips, rollbacks and resumes,
    /// newest first (exit 0; 1 for an unknown service; 2 when the admin API
    /// can't be reached).
    History {
        service: String,
        /// The records as JSON, as `GET /services/NAME/history` sends them.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    Demo {
        /// How long the load runs.
        #[arg(long, default_value = "12s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
}

/// How the operator commands reach the admin API.
#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// The admin API's URL.
    #[arg(
        long = "admin",
        env = "VEER_ADMIN",
        default_value = "http://127.0.0.1:9901"
    )]
    url: String,
    /// A file holding the admin token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The admin token itself (prefer --token-file: env is visible to other users of `ps e`).
    #[arg(long = "token", env = "VEER_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl AdminArgs {
    fn target(&self) -> Result<AdminTarget, ClientError> {
        AdminTarget::new(&self.url, self.token_file.as_deref(), self.token.clone())
    }
}

/// A wrong command line (clap's own errors included): EX_USAGE, so that no
/// command's usage error reads as one of its results (`veer wait`'s 2 is a
/// timeout, `veer status`'s 2 an unreachable admin API).
const USAGE: u8 = 64;

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(USAGE)
            } else {
                // --help, --version
                ExitCode::SUCCESS
            };
        }
    };
    if matches!(cli.command, Command::Run { .. }) {
        // Before any thread: may start this process again, with the heap
        // on huge pages (see `heap`).
        crate::heap::use_huge_pages();
    }
    // The proxy logs what it does; the other commands print their results
    // and log only problems.
    init_logging(
        match cli.command {
            Command::Run { .. } => "info",
            _ => "warn",
        },
        cli.log_format
            .as_deref()
            .and_then(crate::logging::Format::parse),
    );
    match cli.command {
        Command::Run { config, workers } => run(&config, workers),
        Command::Check { config, offline } => check(&config, offline),
        Command::Demo { duration } => crate::demo::run(duration),
        Command::Status {
            service,
            json,
            admin,
        } => operator(&admin, |target| async move {
            show_status(&target, service, json).await
        }),
        Command::Weights {
            service,
            weights,
            admin,
        } => operator(&admin, |target| async move {
            set_weights(&target, &service, &weights).await
        }),
        Command::Rollback { service, admin } => operator(&admin, |target| async move {
            post_action(&target, &service, "rollback").await
        }),
        Command::Resume { service, admin } => operator(&admin, |target| async move {
            post_action(&target, &service, "resume").await
        }),
        Command::Promote {
            service,
            full,
            admin,
        } => operator(&admin, |target| async move {
            let action = if full { "promote?full=true" } else { "promote" };
            post_action(&target, &service, action).await
        }),
        Command::History {
            service,
            json,
            admin,
        } => operator(&admin, |target| async move {
            history::show(&target, &service, json).await
        }),
        Command::Pause {
            service,
            reason,
            admin,
        } => operator(&admin, |target| async move {
            match reason {
                Some(reason) => pause_with_reason(&target, &service, &reason).await,
                None => post_action(&target, &service, "pause").await,
            }
        }),
        Command::Wait {
            service,
            timeout,
            revision,
            admin,
        } => match admin.target() {
            Ok(target) => operator_runtime(|| async move {
                wait::wait(&target, &service, timeout, revision.as_deref()).await
            })
            .map_or(ExitCode::from(wait::Exit::Unreachable), ExitCode::from),
            Err(err) => {
                eprintln!("veer: {err}");
                ExitCode::from(wait::Exit::Usage)
            }
        },
    }
}

/// Runs an operator command on a small runtime of its own; exit 2 when the
/// admin API cannot be reached, as the contract says.
fn operator<F, Fut>(admin: &AdminArgs, command: F) -> ExitCode
where
    F: FnOnce(AdminTarget) -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, ClientError>>,
{
    let target = match admin.target() {
        Ok(t) => t,
        Err(err) => {
            eprintln!("veer: {err}");
            return ExitCode::from(2);
        }
    };
    match operator_runtime(|| command(target)) {
        Some(Ok(code)) => code,
        Some(Err(err)) => {
            eprintln!("veer: {err}");
            ExitCode::from(2)
        }
        None => ExitCode::from(2),
    }
}

/// Runs `command` on a small runtime of its own; `None` (reported) when the
/// runtime cannot start.
fn operator_runtime<F, Fut, T>(command: F) -> Option<T>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime.block_on(command())),
        Err(err) => {
            eprintln!("veer: cannot start the async runtime: {err}");
            None
        }
    }
}

async fn show_status(
    target: &AdminTarget,
    service: Option<String>,
    json: bool,
) -> Result<ExitCode, ClientError> {
    let (status, body) = target.call(Method::GET, "/status", None).await?;
    if !status.is_success() {
        eprintln!("veer: the admin API answered {status}: {}", body.trim());
        return Ok(ExitCode::from(2));
    }
    let report = status::parse(&body).map_err(ClientError::Unreachable)?;
    if json {
        let shown = match &service {
            Some(name) => match report.service(name) {
                Some(one) => serde_json::to_string_pretty(one),
                None => {
                    eprintln!("veer: no service named `{name}`");
                    return Ok(ExitCode::from(1));
                }
            },
            None => serde_json::to_string_pretty(&report),
        };
        println!("{}", shown.unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    match status::table(&report, service.as_deref()) {
        Some(table) => {
            print!("{table}");
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("veer: no service named `{}`", service.unwrap_or_default());
            Ok(ExitCode::from(1))
        }
    }
}

/// `POST /services/{service}/{action}`: 0 when applied, 1 when refused.
async fn post_action(
    target: &AdminTarget,
    service: &str,
    action: &str,
) -> Result<ExitCode, ClientError> {
    let path = format!("/services/{service}/{action}");
    let (status, text) = target.call(Method::POST, &path, None).await?;
    if status.is_success() {
        println!("{}", text.trim());
        Ok(ExitCode::SUCCESS)
    } else {
        let action = action.split('?').next().unwrap_or(action);
        eprintln!("veer: {action} refused ({status}): {}", text.trim());
        Ok(ExitCode::from(1))
    }
}

async fn pause_with_reason(
    target: &AdminTarget,
    service: &str,
    reason: &str,
) -> Result<ExitCode, ClientError> {
    let path = format!("/services/{service}/pause");
    let body = serde_json::json!({ "reason": reason }).to_string();
    let (status, text) = target.call(Method::POST, &path, Some(body)).await?;
    if status.is_success() {
        println!("{}", text.trim());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("veer: pause refused ({status}): {}", text.trim());
        Ok(ExitCode::from(1))
    }
}

async fn set_weights(
    target: &AdminTarget,
    service: &str,
    pairs: &[String],
) -> Result<ExitCode, ClientError> {
    let mut body = serde_json::Map::new();
    for pair in pairs {
        let Some((version, weight)) = pair.split_once('=') else {
            eprintln!("veer: `{pair}` is not VERSION=WEIGHT, e.g. canary=25");
            return Ok(ExitCode::from(1));
        };
        let (version, written) = (version.trim(), weight.trim());
        // Held to the config's rule, with its message; veer checks again.
        let whole = match written.parse::<i128>() {
            Ok(w) => Some(w),
            // Too long for i128, but still a whole number.
            Err(_) if is_digits(written) => Some(i128::MAX),
            Err(_) if written.strip_prefix('-').is_some_and(is_digits) => Some(i128::MIN),
            Err(_) => None,
        };
        match config::weight_rule(whole, written) {
            Ok(weight) => {
                body.insert(version.to_string(), serde_json::json!(weight));
            }
            Err(reason) => {
                eprintln!("veer: weights refused: `{version}`: {reason}");
                return Ok(ExitCode::from(1));
            }
        }
    }
    let path = format!("/services/{service}/weights");
    let (status, text) = target
        .call(
            Method::POST,
            &path,
            Some(serde_json::Value::Object(body).to_string()),
        )
        .await?;
    if status.is_success() {
        println!("{}", text.trim());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("veer: weights refused ({status}): {}", text.trim());
        Ok(ExitCode::from(1))
    }
}

fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

fn init_logging(default: &str, format: Option<crate::logging::Format>) {
    crate::logging::init(default, format);
}

/// Loads the config and checks the files it names (certificates, keys, the
/// admin token) unless `offline`; `veer check` and `veer run` share this, so
/// they agree. Returns the files not read beside the config and warnings.
fn load(path: &std::path::Path, offline: bool) -> Result<Loaded, config::ConfigErrors> {
    let mut not_read = Vec::new();
    let mut reuse = config::Reuse::default();
    let (config, warnings) = config::load_file_reusing(
        path,
        |config| {
            let (issues, skipped) = preflight::check(config, offline);
            not_read = skipped;
            issues
        },
        Some(&mut reuse),
    )?;
    Ok(Loaded {
        config,
        warnings,
        not_read,
        reuse,
    })
}

struct Loaded {
    config: config::Config,
    warnings: Vec<config::ConfigError>,
    not_read: Vec<String>,
    /// What the read validated, for the reloader to start from.
    reuse: config::Reuse,
}

fn check(path: &std::path::Path, offline: bool) -> ExitCode {
    match load(path, offline) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("{warning}");
            }
            println!("{}: ok", path.display());
            if offline {
                if loaded.not_read.is_empty() {
                    println!("offline: the config names no files; nothing was left unread");
                } else {
                    println!(
                        "offline: not read (`veer run` will read them; check them where they are): {}",
                        loaded.not_read.join(", ")
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("{error}");
            }
            ExitCode::from(1)
        }
    }
}

/// Why `veer run` stops before serving: a line on stderr as it always was,
/// or, with JSON logs, an error event, so that a log pipeline reading a pod
/// that cannot start gets JSON too (unless the filter hides errors: the
/// reason is never lost).
fn fatal(line: &str) {
    if crate::logging::format() == crate::logging::Format::Json
        && tracing::enabled!(tracing::Level::ERROR)
    {
        tracing::error!("{line}");
    } else {
        eprintln!("{line}");
    }
}

fn run(path: &std::path::Path, workers: Option<usize>) -> ExitCode {
    let (config, reuse) = match load(path, false) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                tracing::warn!("{warning}");
            }
            (loaded.config, loaded.reuse)
        }
        Err(errors) => {
            for error in &errors.0 {
                fatal(&error.to_string());
            }
            fatal(&format!("veer: refusing to start with an invalid config; fix it and retry (`veer check -c {}`)", path.display()));
            return ExitCode::from(1);
        }
    };
    // Said once the config is good: a refused start logs only its errors.
    crate::heap::log_huge_pages();
    // A proxy holds two sockets per proxied connection; the default soft
    // limit (often 1024) would cap it far below what the machine allows.
    if let Err(err) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %err, "could not raise the open-files limit");
    }
    let runtime = match crate::server::runtime::build(workers) {
        Ok(rt) => rt,
        Err(err) => {
            fatal(&format!("veer: cannot start the async runtime: {err}"));
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        let options = StartOptions {
            source: Some(path.to_path_buf()),
            admin: true,
        };
        let running = match Proxy::start_seeded(config, options, reuse).await {
            Ok(running) => running,
            Err(err) => {
                fatal(&format!("veer: {err}"));
                return ExitCode::from(1);
            }
        };
        for (name, address) in running.listeners() {
            println!("veer: listener {name} on {address}");
        }
        if let Some(address) = running.admin_addr() {
            println!("veer: admin on {address}");
        }
        println!("veer: ready");
        signal::shutdown().await;
        if running.shutdown().await {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    })
}
