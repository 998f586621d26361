//! The command line (`veer run`, `veer check`, `veer demo`): parses arguments,
//! sets up logging and the runtime, and hands over to the library. Exit codes
//! follow the contract.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config;
use crate::server::{signal, Proxy};

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
    /// A self-contained demo on loopback: stable and canary upstreams, the
    /// proxy, a load generator and a live per-version table.
    Demo {
        /// How long the load runs.
        #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Run { config, workers } => run(&config, workers),
        Command::Check { config } => check(&config),
        Command::Demo { duration } => crate::demo::run(duration),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VEER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load_file(path) {
        Ok(_) => {
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
    let config = match config::load_file(path) {
        Ok(config) => config,
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
        let running = match Proxy::start(config).await {
            Ok(running) => running,
            Err(err) => {
                eprintln!("veer: {err}");
                return ExitCode::from(1);
            }
        };
        for (name, address) in running.listeners() {
            println!("veer: listener {name} on {address}");
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
