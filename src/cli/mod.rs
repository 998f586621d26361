//! The command line (`veer run`, `veer check`, `veer demo`): parses arguments,
//! sets up logging and the runtime, and hands over to the library. Exit codes
//! follow the contract.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod client;
mod status;
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
    /// Validate a config without serving; prints every error.
    Check {
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
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
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Wait until the rollout completes (exit 0) or is rolled back (exit 1);
    /// exit 2 on timeout or when the admin API cannot be reached.
    Wait {
        service: String,
        /// Give up after this long (e.g. 30m).
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

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The proxy logs what it does; the other commands print their results
    // and log only problems.
    init_logging(match cli.command {
        Command::Run { .. } => "info",
        _ => "warn",
    });
    match cli.command {
        Command::Run { config, workers } => run(&config, workers),
        Command::Check { config } => check(&config),
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
        Command::Pause { service, admin } => operator(&admin, |target| async move {
            post_action(&target, &service, "pause").await
        }),
        Command::Wait {
            service,
            timeout,
            revision,
            admin,
        } => operator(&admin, |target| async move {
            wait::wait(&target, &service, timeout, revision.as_deref()).await
        }),
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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("veer: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(command(target)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("veer: {err}");
            ExitCode::from(2)
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
    let report: serde_json::Value = serde_json::from_str(&body).map_err(|e| {
        ClientError::Unreachable(format!(
            "the admin API answered something that is not JSON: {e}"
        ))
    })?;
    if json {
        let shown = match &service {
            Some(name) => report["services"]
                .as_array()
                .and_then(|all| all.iter().find(|s| s["name"] == name.as_str()))
                .cloned()
                .unwrap_or(serde_json::Value::Null),
            None => report,
        };
        if shown.is_null() {
            eprintln!("veer: no service named `{}`", service.unwrap_or_default());
            return Ok(ExitCode::from(1));
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&shown).unwrap_or_default()
        );
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

async fn set_weights(
    target: &AdminTarget,
    service: &str,
    pairs: &[String],
) -> Result<ExitCode, ClientError> {
    let mut body = serde_json::Map::new();
    for pair in pairs {
        let parsed = pair
            .split_once('=')
            .and_then(|(v, w)| w.trim().parse::<u32>().ok().map(|w| (v.trim(), w)));
        let Some((version, weight)) = parsed else {
            eprintln!(
                "veer: `{pair}` is not VERSION=WEIGHT (a non-negative integer), e.g. canary=25"
            );
            return Ok(ExitCode::from(1));
        };
        body.insert(version.to_string(), serde_json::json!(weight));
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

fn init_logging(default: &str) {
    crate::logging::init(default);
}

/// Loads the config and checks the files it names (certificates, keys).
fn load(
    path: &std::path::Path,
) -> Result<(config::Config, Vec<config::ConfigError>), config::ConfigErrors> {
    config::load_file_checked(path, crate::tls::check::files_now)
}

fn check(path: &std::path::Path) -> ExitCode {
    match load(path) {
        Ok((_, warnings)) => {
            for warning in &warnings {
                eprintln!("{warning}");
            }
            println!("{}: ok", path.display());
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

/// Builds the multi-threaded runtime, one worker per core unless told.
pub fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("veer-worker");
    if let Some(n) = workers.filter(|&n| n > 0) {
        builder.worker_threads(n);
    }
    builder.build()
}

fn run(path: &std::path::Path, workers: Option<usize>) -> ExitCode {
    let config = match load(path) {
        Ok((config, warnings)) => {
            for warning in &warnings {
                tracing::warn!("{warning}");
            }
            config
        }
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("{error}");
            }
            eprintln!("veer: refusing to start with an invalid config; fix it and retry (`veer check -c {}`)", path.display());
            return ExitCode::from(1);
        }
    };
    // A proxy holds two sockets per proxied connection; the default soft
    // limit (often 1024) would cap it far below what the machine allows.
    if let Err(err) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %err, "could not raise the open-files limit");
    }
    let runtime = match runtime(workers) {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("veer: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        let options = StartOptions {
            source: Some(path.to_path_buf()),
            admin: true,
        };
        let running = match Proxy::start_with(config, options).await {
            Ok(running) => running,
            Err(err) => {
                eprintln!("veer: {err}");
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
