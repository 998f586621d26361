//! `veer demo`: everything on loopback in one process. Two built-in upstreams
//! (stable answers in about 2 ms, canary in about 3 ms), the proxy splitting
//! 90/10 between them, and a load generator; a live table shows each version's
//! requests, share and latency as the clients see them.

mod load;
mod upstream;

use std::process::ExitCode;
use std::time::Duration;

use crate::config;
use crate::server::Proxy;

pub fn run(duration: Duration) -> ExitCode {
    let runtime = match crate::cli::runtime(None) {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("veer demo: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        match demo(duration).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("veer demo: {err}");
                ExitCode::from(1)
            }
        }
    })
}

async fn demo(duration: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let stable = upstream::spawn("stable", Duration::from_millis(2)).await?;
    let canary = upstream::spawn("canary", Duration::from_millis(3)).await?;
    let yaml = format!(
        "listeners:\n  - name: demo\n    address: 127.0.0.1:0\n\
         services:\n  - name: demo\n    versions:\n\
         \x20     - name: stable\n        revision: \"1.1.0\"\n        endpoints: [{stable}]\n        weight: 90\n\
         \x20     - name: canary\n        revision: \"1.2.0\"\n        endpoints: [{canary}]\n        weight: 10\n"
    );
    let config = config::parse_str(&yaml, "demo.yaml")?;
    let proxy = Proxy::start(config).await?;
    let address = proxy
        .listener_addr("demo")
        .ok_or("the demo listener did not bind")?;
    println!("veer demo: stable on {stable}, canary on {canary}, proxy on {address} (90/10)");
    println!("sending load for {duration:?}...\n");
    load::drive(address, &["stable", "canary"], duration).await;
    proxy.shutdown().await;
    Ok(())
}
