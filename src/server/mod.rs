//! Listeners, connections and the drain; and, in `Proxy::start_with`, the
//! place that builds every part (telemetry, control, the proxy service, the
//! listeners, the admin API) and starts the background tasks (reload, guard,
//! rollout, health, the window ticker), all stopped by one signal on
//! shutdown.
//!
//! Each listener accepts in a task of its own and serves every connection with
//! hyper: HTTP/1.1 (keep-alive, pipelining, upgrades) and HTTP/2 with prior
//! knowledge share the port (the first bytes tell which); on a TLS listener,
//! after a handshake in the connection's task, ALPN tells (`h2` or
//! `http/1.1`). An idle HTTP/1.1 connection is parked as a bare socket
//! between requests (`park`). A semaphore caps open
//! connections (beyond the cap, clients wait in the kernel's backlog). On
//! shutdown the listeners close first, then every connection is told to finish
//! its in-flight requests (HTTP/1.1 stops keep-alive, HTTP/2 sends GOAWAY) and
//! is given `limits.drain_timeout` to do so. The admin API answers through the
//! drain (readiness says 503) and stops last.

mod idle;
mod listeners;
mod park;
pub mod runtime;
pub mod signal;
#[cfg(feature = "io-uring")]
mod uring;
mod woken;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::config::{Config, Listener};
use crate::control::Control;
use crate::guard::webhook::Webhooks;
use crate::guard::GuardRunner;
use crate::health::HealthRunner;
use crate::proxy::ProxyService;
use crate::reload::{Listeners, Reloader};
use crate::rollout::RolloutRunner;
use crate::telemetry::access::AccessLog;
use crate::telemetry::Telemetry;
pub use listeners::ListenerSet;

/// Why the proxy could not start.
#[derive(Debug)]
pub enum StartError {
    Bind {
        listener: String,
        address: SocketAddr,
        cause: std::io::Error,
    },
    Unsupported {
        listener: String,
        what: &'static str,
    },
    /// A listener's certificates or CA could not be loaded.
    Tls {
        listener: String,
        cause: String,
    },
    Token {
        path: std::path::PathBuf,
        cause: String,
    },
    State(String),
    /// The fleet store could not be set up (its password file).
    Fleet(String),
    /// The access log's file could not be opened.
    AccessLog(crate::telemetry::access::OpenError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind {
                listener,
                address,
                cause,
            } => write!(
                f,
                "listener `{listener}` cannot bind {address}: {cause} \
                 (is another process using the port, or does binding it need privileges?)"
            ),
            StartError::Unsupported { listener, what } => {
                write!(f, "listener `{listener}`: {what}")
            }
            StartError::Tls { listener, cause } => {
                write!(f, "listener `{listener}`: TLS: {cause}")
            }
            StartError::State(message) => write!(f, "state_dir: {message}"),
            StartError::Fleet(message) => write!(f, "fleet: {message}"),
            StartError::AccessLog(error) => write!(f, "access_log: {error}"),
            StartError::Token { path, cause } => write!(
                f,
                "cannot read the admin token from {} (admin.token_file): {cause}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StartError {}

/// Starts a proxy: `Proxy::start(config)`.
pub struct Proxy;

/// How to start beyond what the config says.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// The file the config came from: enables `POST /reload`.
    pub source: Option<std::path::PathBuf>,
    /// Serve the admin API on `admin.address` (the binary always does;
    /// in-process tests opt in, so parallel tests don't fight over a port).
    pub admin: bool,
}

impl Proxy {
    /// Binds every listener and starts serving, without the admin API.
    /// Returns once all listeners are bound, so a request sent after this
    /// returns is served.
    pub async fn start(config: Config) -> Result<RunningProxy, StartError> {
        Proxy::start_with(config, StartOptions::default()).await
    }

    pub async fn start_with(
        config: Config,
        options: StartOptions,
    ) -> Result<RunningProxy, StartError> {
        Proxy::start_seeded(config, options, crate::config::Reuse::default()).await
    }

    /// As [`Proxy::start_with`], with what the read of `config` validated
    /// (`config::load_file_reusing`), so that the reloader's first read of
    /// the file parses only what changed since, not every service again.
    pub async fn start_seeded(
        config: Config,
        options: StartOptions,
        reuse: crate::config::Reuse,
    ) -> Result<RunningProxy, StartError> {
        let limits = config.limits.clone();
        let listener_settings = config.listeners.clone();
        let access_log = config.access_log.clone();
        let admin_listener = if options.admin {
            let settings = Listener {
                name: "admin".into(),
                address: config.admin.address,
                tls: None,
            };
            let token = match &config.admin.token_file {
                Some(path) => Some(read_token(path)?),
                None => None,
            };
            Some((listeners::bind(&settings)?, token))
        } else {
            None
        };
        let (store, fleet) = open_store(&config).await?;
        let leadership = rollout_leadership(&config)?;
        let telemetry = Arc::new(Telemetry::new());
        let control = Arc::new(
            Control::start(
                config,
                Arc::clone(&telemetry),
                options.source.clone(),
                store,
            )
            .await
            .with_leadership(leadership),
        );
        let (stop, stopped) = watch::channel(false);
        let fleet_windows = fleet.map(|fleet| fleet.start(&control, stopped.clone()));
        let (health, health_events) = HealthRunner::new(Arc::clone(&control));
        // Opened once, at start: a reload that changes `access_log` takes
        // effect at the next start.
        let access = match &access_log {
            Some(settings) => Some(
                AccessLog::start(settings, telemetry.access_log_dropped_counter())
                    .await
                    .map_err(StartError::AccessLog)?,
            ),
            None => None,
        };
        let service = ProxyService::new(
            control.published(),
            Arc::clone(&telemetry),
            health_events,
            access,
        );
        let listeners = Arc::new(ListenerSet::start(
            &listener_settings,
            &limits,
            service,
            telemetry,
        )?);
        let webhooks = Webhooks::start();
        let reloader = options.source.as_ref().map(|path| {
            let as_listeners: Arc<dyn Listeners> = Arc::clone(&listeners) as Arc<dyn Listeners>;
            Arc::new(
                Reloader::new(
                    path.clone(),
                    Arc::clone(&control),
                    as_listeners,
                    crate::tls::check::files_now,
                )
                .seeded(reuse),
            )
        });
        let watching = reloader
            .as_ref()
            .map(|r| tokio::spawn(r.listen().run(stopped.clone())));
        let admin = match admin_listener {
            Some((listener, token)) => {
                let admin = Arc::new(Admin::new(
                    Arc::clone(&control),
                    reloader.clone(),
                    webhooks.clone(),
                    token,
                ));
                let address = listener.local_addr().ok();
                if let Some(address) = address {
                    tracing::info!(%address, "admin API listening");
                }
                let (stop, stopped) = watch::channel(false);
                let task = tokio::spawn(Arc::clone(&admin).serve(listener, stopped));
                admin.set_ready();
                Some(AdminServer {
                    admin,
                    task,
                    address,
                    stop,
                })
            }
            None => None,
        };
        let ticker = tokio::spawn({
            let control = Arc::clone(&control);
            let stopped = stopped.clone();
            async move { control.tick(stopped).await }
        });
        let checks = tokio::spawn(
            crate::checks::CheckRunner::new(Arc::clone(&control), webhooks.clone())
                .run(stopped.clone()),
        );
        let guard =
            tokio::spawn(GuardRunner::new(Arc::clone(&control), webhooks).run(stopped.clone()));
        let rollouts = tokio::spawn(RolloutRunner::new(Arc::clone(&control)).run(stopped.clone()));
        let health = tokio::spawn(health.run(stopped));
        Ok(RunningProxy {
            admin,
            listeners,
            control,
            stop,
            ticker,
            guard,
            rollouts,
            checks,
            health,
            watching,
            fleet_windows,
            drain_timeout: limits.drain_timeout,
        })
    }
}

/// A serving proxy. Dropping it without `shutdown` leaves the listeners to the
/// runtime's end.
pub struct RunningProxy {
    admin: Option<AdminServer>,
    listeners: Arc<ListenerSet>,
    control: Arc<Control>,
    /// Stops the background tasks (the window ticker).
    stop: watch::Sender<bool>,
    ticker: JoinHandle<()>,
    guard: JoinHandle<()>,
    rollouts: JoinHandle<()>,
    checks: JoinHandle<()>,
    health: JoinHandle<()>,
    /// Watches the config file, when there is one.
    watching: Option<JoinHandle<()>>,
    /// Publishes this replica's windows to its fleet, when in one.
    fleet_windows: Option<JoinHandle<()>>,
    drain_timeout: Duration,
}

struct AdminServer {
    admin: Arc<Admin>,
    task: JoinHandle<()>,
    address: Option<SocketAddr>,
    /// The admin API stops after the drain, so probes see it through.
    stop: watch::Sender<bool>,
}

impl RunningProxy {
    /// Where the admin API listens, when it was started.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.address)
    }

    /// The address a listener is bound to (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .addresses()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, addr)| addr)
    }

    /// Every listener's name and bound address, in config order.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.listeners.addresses()
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain
    /// timeout), then returns. Returns whether every connection finished.
    pub async fn shutdown(self) -> bool {
        // Readiness turns 503 first; the admin API keeps answering through
        // the drain and stops last.
        if let Some(admin) = &self.admin {
            admin.admin.set_draining();
        }
        let drained = self.listeners.drain(self.drain_timeout).await;
        // Rollout hold time is saved every few seconds; save the rest.
        self.control.persist_now().await;
        // A sibling leads the rollouts now rather than after the lease's TTL.
        self.control
            .leadership()
            .resign(Duration::from_secs(2))
            .await;
        if drained {
            tracing::info!("drained");
        } else {
            tracing::warn!(
                timeout = ?self.drain_timeout,
                "drain timeout reached; closing the remaining connections (limits.drain_timeout)"
            );
        }
        let _ = self.stop.send(true);
        let _ = self.ticker.await;
        let _ = self.guard.await;
        let _ = self.rollouts.await;
        let _ = self.checks.await;
        let _ = self.health.await;
        if let Some(watching) = self.watching {
            let _ = watching.await;
        }
        if let Some(fleet_windows) = self.fleet_windows {
            let _ = fleet_windows.await;
        }
        if let Some(admin) = self.admin {
            let _ = admin.stop.send(true);
            let _ = admin.task.await;
        }
        drained
    }
}

fn read_token(path: &std::path::Path) -> Result<String, StartError> {
    let fail = |cause: String| StartError::Token {
        path: path.to_path_buf(),
        cause,
    };
    let token = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(fail(
            "the file is empty; put a long random token in it".into(),
        ));
    }
    Ok(token.to_string())
}

/// Who advances the rollouts: with a `fleet:` block, the replica elected
/// through etcd; else this process alone.
fn rollout_leadership(config: &Config) -> Result<crate::fleet::leader::Leadership, StartError> {
    #[cfg(feature = "fleet")]
    if let Some(fleet) = &config.fleet {
        let settings = crate::fleet::etcd::EtcdSettings::from_config(&fleet.etcd)
            .map_err(StartError::Fleet)?;
        let replica = crate::fleet::leader::replica_name(fleet.replica.as_deref());
        return Ok(crate::fleet::leader::start(
            settings,
            replica,
            fleet.leader_ttl,
        ));
    }
    let _ = config;
    Ok(crate::fleet::leader::Leadership::solo())
}

/// The run-time layer's store: the fleet's (etcd, with `state_dir` as this
/// replica's copy) when the config has a `fleet:` block, else `state_dir`'s
/// file, else none (run-time changes last until exit). With a fleet, also
/// what it takes to join it once the control plane runs.
async fn open_store(config: &Config) -> Result<(StoreAndLayer, Option<Joining>), StartError> {
    #[cfg(feature = "fleet")]
    if let Some(fleet) = &config.fleet {
        let settings = crate::fleet::etcd::EtcdSettings::from_config(&fleet.etcd)
            .map_err(StartError::Fleet)?;
        let replica = fleet
            .replica
            .clone()
            .unwrap_or_else(crate::fleet::windows::default_replica);
        tracing::info!(
            replica = replica.as_str(),
            endpoints = %settings.endpoints.join(", "),
            prefix = settings.prefix.as_str(),
            "fleet: run-time state shared through etcd"
        );
        let (store, loaded) =
            crate::fleet::store::open(settings.clone(), config.state_dir.as_deref())
                .await
                .map_err(|e| StartError::State(e.to_string()))?;
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        let view = Arc::new(crate::fleet::windows::FleetView::new(
            replica,
            store.connected_flag(),
        ));
        let fleet_store = Arc::clone(&store);
        let store: Arc<dyn crate::state::Store> = store;
        return Ok((
            Some((store, loaded.layer)),
            Some(Joining {
                settings,
                view,
                store: fleet_store,
            }),
        ));
    }
    let Some(dir) = &config.state_dir else {
        return Ok((None, None));
    };
    let (store, loaded) = crate::state::open_file(dir)
        .await
        .map_err(|e| StartError::State(e.to_string()))?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    Ok((Some((store, loaded.layer)), None))
}

type StoreAndLayer = Option<(Arc<dyn crate::state::Store>, crate::state::PersistedState)>;

/// A fleet to join once the control plane runs: its view, and the task that
/// publishes this replica's windows and reads its siblings'.
#[cfg_attr(not(feature = "fleet"), allow(dead_code))]
struct Joining {
    #[cfg(feature = "fleet")]
    settings: crate::fleet::etcd::EtcdSettings,
    view: Arc<crate::fleet::windows::FleetView>,
    /// Its rollout writes are fenced by the control plane's leadership.
    #[cfg(feature = "fleet")]
    store: Arc<crate::fleet::store::FleetStore>,
}

#[cfg_attr(not(feature = "fleet"), allow(dead_code))]
impl Joining {
    fn start(self, control: &Arc<Control>, stopped: watch::Receiver<bool>) -> JoinHandle<()> {
        control.set_fleet(Arc::clone(&self.view));
        #[cfg(feature = "fleet")]
        {
            self.store.follow_leadership(control.leadership().clone());
            let publisher = crate::fleet::windows::publish::Publisher::new(
                self.settings,
                self.view,
                control.published(),
                Arc::clone(control.telemetry()),
            );
            tokio::spawn(publisher.run(stopped))
        }
        #[cfg(not(feature = "fleet"))]
        {
            drop(stopped);
            tokio::spawn(async {})
        }
    }
}
