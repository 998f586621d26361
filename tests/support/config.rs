//! Builds the YAML configs the tests run veer with: one listener `public` on
//! `127.0.0.1:0`, the admin API on `127.0.0.1:0` (so parallel runs never
//! collide), optional `limits`, and services.
//!
//! ```ignore
//! let yaml = ConfigBuilder::new()
//!     .limit("header_read_timeout", "1s")
//!     .service(
//!         service("web")
//!             .hosts(&["app.example"])
//!             .version("stable", &[stable.addr()], 90)
//!             .version("canary", &[canary.addr()], 10)
//!             .timeout("request", "1s"),
//!     )
//!     .yaml();
//! ```

use std::fmt::Write;
use std::net::SocketAddr;

/// The listener every test config has.
pub const LISTENER: &str = "public";

#[derive(Debug, Clone, Default)]
pub struct ConfigBuilder {
    limits: Vec<(String, String)>,
    services: Vec<ServiceBuilder>,
}

#[derive(Debug, Clone)]
pub struct ServiceBuilder {
    name: String,
    hosts: Option<Vec<String>>,
    path_prefix: Option<String>,
    versions: Vec<VersionSpec>,
    timeouts: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
struct VersionSpec {
    name: String,
    endpoints: Vec<SocketAddr>,
    weight: u32,
    http2: bool,
}

/// A service with no host match (any host), prefix `/`, and no versions yet.
pub fn service(name: &str) -> ServiceBuilder {
    ServiceBuilder {
        name: name.to_string(),
        hosts: None,
        path_prefix: None,
        versions: Vec::new(),
        timeouts: Vec::new(),
    }
}

impl ServiceBuilder {
    pub fn hosts(mut self, hosts: &[&str]) -> Self {
        self.hosts = Some(hosts.iter().map(|h| h.to_string()).collect());
        self
    }

    pub fn prefix(mut self, prefix: &str) -> Self {
        self.path_prefix = Some(prefix.to_string());
        self
    }

    /// A version speaking HTTP/1.1 to its endpoints.
    pub fn version(mut self, name: &str, endpoints: &[SocketAddr], weight: u32) -> Self {
        self.versions.push(VersionSpec {
            name: name.to_string(),
            endpoints: endpoints.to_vec(),
            weight,
            http2: false,
        });
        self
    }

    /// A version speaking HTTP/2 (h2c prior knowledge) to its endpoints.
    pub fn version_h2(mut self, name: &str, endpoints: &[SocketAddr], weight: u32) -> Self {
        self.versions.push(VersionSpec {
            name: name.to_string(),
            endpoints: endpoints.to_vec(),
            weight,
            http2: true,
        });
        self
    }

    /// `timeouts.KEY: VALUE`, e.g. `("request", "1s")`.
    pub fn timeout(mut self, key: &str, value: &str) -> Self {
        self.timeouts.push((key.to_string(), value.to_string()));
        self
    }
}

impl ConfigBuilder {
    pub fn new() -> Self {
        ConfigBuilder::default()
    }

    /// `limits.KEY: VALUE`, e.g. `("header_read_timeout", "1s")`.
    pub fn limit(mut self, key: &str, value: &str) -> Self {
        self.limits.push((key.to_string(), value.to_string()));
        self
    }

    pub fn service(mut self, service: ServiceBuilder) -> Self {
        self.services.push(service);
        self
    }

    pub fn yaml(&self) -> String {
        let mut y = String::new();
        let _ = writeln!(y, "listeners:");
        let _ = writeln!(y, "  - name: {LISTENER}");
        let _ = writeln!(y, "    address: \"127.0.0.1:0\"");
        let _ = writeln!(y, "admin:");
        let _ = writeln!(y, "  address: \"127.0.0.1:0\"");
        if !self.limits.is_empty() {
            let _ = writeln!(y, "limits:");
            for (k, v) in &self.limits {
                let _ = writeln!(y, "  {k}: {v}");
            }
        }
        let _ = writeln!(y, "services:");
        for s in &self.services {
            let _ = writeln!(y, "  - name: {}", quote(&s.name));
            if s.hosts.is_some() || s.path_prefix.is_some() {
                let _ = writeln!(y, "    match:");
                if let Some(hosts) = &s.hosts {
                    let list: Vec<String> = hosts.iter().map(|h| quote(h)).collect();
                    let _ = writeln!(y, "      hosts: [{}]", list.join(", "));
                }
                if let Some(prefix) = &s.path_prefix {
                    let _ = writeln!(y, "      path_prefix: {}", quote(prefix));
                }
            }
            let _ = writeln!(y, "    versions:");
            for v in &s.versions {
                let _ = writeln!(y, "      - name: {}", quote(&v.name));
                let eps: Vec<String> = v.endpoints.iter().map(|e| quote(&e.to_string())).collect();
                let _ = writeln!(y, "        endpoints: [{}]", eps.join(", "));
                let _ = writeln!(y, "        weight: {}", v.weight);
                if v.http2 {
                    let _ = writeln!(y, "        protocol: http2");
                }
            }
            if !s.timeouts.is_empty() {
                let _ = writeln!(y, "    timeouts:");
                for (k, v) in &s.timeouts {
                    let _ = writeln!(y, "      {k}: {v}");
                }
            }
        }
        y
    }
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}
