//! A real etcd (Debian's `etcd-server`) on loopback for the fleet tests:
//! its own data directory, client and peer ports on 127.0.0.1. etcd takes
//! its ports as URLs, not sockets, so a port is picked free and etcd is
//! started on it; when another process took the port meanwhile, etcd exits
//! and the start is retried on new ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    child: Option<Child>,
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    data: PathBuf,
    _dir: Option<tempfile::TempDir>,
    cluster: String,
    state: &'static str,
    /// Serves clients over TLS and asks them for a certificate.
    tls: Option<EtcdTls>,
}

/// The files of an etcd that serves clients over TLS and requires a client
/// certificate signed by `ca`.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("pick a loopback port")
}

impl Etcd {
    /// One member, ready to serve.
    pub fn start() -> Etcd {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("etcd data dir");
            let peer_port = free_port();
            let name = "m1".to_string();
            let mut etcd = Etcd {
                child: None,
                client_port: free_port(),
                peer_port,
                data: dir.path().join("data"),
                _dir: Some(dir),
                cluster: format!("{name}=http://127.0.0.1:{peer_port}"),
                name,
                state: "new",
                tls: None,
            };
            if etcd.spawn() {
                return etcd;
            }
        }
        panic!("etcd did not start on loopback after 5 tries (is etcd-server installed?)");
    }

    /// One member whose ports are chosen but which does not run yet (for a
    /// veer started before its etcd): [`Etcd::begin`] starts it.
    pub fn unstarted() -> Etcd {
        let dir = tempfile::tempdir().expect("etcd data dir");
        let peer_port = free_port();
        let name = "m1".to_string();
        Etcd {
            child: None,
            client_port: free_port(),
            peer_port,
            data: dir.path().join("data"),
            _dir: Some(dir),
            cluster: format!("{name}=http://127.0.0.1:{peer_port}"),
            name,
            state: "new",
            tls: None,
        }
    }

    /// Starts an [`Etcd::unstarted`] member on its ports.
    pub fn begin(&mut self) {
        assert!(
            self.spawn(),
            "etcd did not start on its chosen port {} (taken meanwhile?)",
            self.client_port
        );
    }

    /// One member serving clients over TLS with `tls`'s server certificate,
    /// and requiring a client certificate signed by `tls.ca`.
    pub fn start_tls(tls: EtcdTls) -> Etcd {
        for _ in 0..5 {
            let mut etcd = Etcd::unstarted();
            etcd.tls = Some(tls.clone());
            if etcd.spawn() {
                return etcd;
            }
        }
        panic!("etcd with TLS did not start on loopback after 5 tries");
    }

    /// Stops the member with SIGSTOP: its sockets stay open, nothing answers.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// Lets a paused member go on (SIGCONT).
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    /// Runs `etcdctl` against this member; its output (panics if it fails).
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint())
            .args(args)
            .output()
            .expect("run etcdctl (Debian: etcd-client)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// A cluster of `n` members.
    pub fn cluster(n: usize) -> Vec<Etcd> {
        'attempt: for _ in 0..5 {
            let peers: Vec<(String, u16, u16)> = (1..=n)
                .map(|i| (format!("m{i}"), free_port(), free_port()))
                .collect();
            let cluster = peers
                .iter()
                .map(|(name, peer, _)| format!("{name}=http://127.0.0.1:{peer}"))
                .collect::<Vec<_>>()
                .join(",");
            let base = tempfile::tempdir().expect("etcd data dir");
            let mut members: Vec<Etcd> = peers
                .into_iter()
                .map(|(name, peer_port, client_port)| Etcd {
                    child: None,
                    data: base.path().join(&name),
                    name,
                    client_port,
                    peer_port,
                    _dir: None,
                    cluster: cluster.clone(),
                    state: "new",
                    tls: None,
                })
                .collect();
            for member in &mut members {
                member.launch();
            }
            for member in &mut members {
                if !member.ready(Duration::from_secs(20)) {
                    continue 'attempt;
                }
            }
            members[0]._dir = Some(base);
            return members;
        }
        panic!("an etcd cluster did not start on loopback after 5 tries");
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn launch(&mut self) {
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key);
        }
        let child = command
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--listen-client-urls")
            .arg(self.endpoint())
            .arg("--advertise-client-urls")
            .arg(self.endpoint())
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", self.peer_port))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", self.peer_port))
            .arg("--initial-cluster")
            .arg(&self.cluster)
            .arg("--initial-cluster-state")
            .arg(self.state)
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .arg("--log-level")
            .arg("error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run etcd (install Debian's etcd-server)");
        self.child = Some(child);
    }

    fn spawn(&mut self) -> bool {
        self.launch();
        self.ready(Duration::from_secs(20))
    }

    /// Waits for the member to answer `/health`; `false` if it exited.
    fn ready(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            let up = match self.tls {
                // /health would need a client certificate: an open port is
                // enough, the test's own client waits for the rest.
                Some(_) => std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_ok(),
                None => health(self.client_port),
            };
            if up {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Kills the member (its data stays).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the member again on its data and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.state = "existing";
        assert!(
            self.spawn(),
            "etcd member {} did not come back on its ports",
            self.name
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("etcd running")
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg("-s")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {sig} {pid} failed");
}

/// etcd's `/health` over plain HTTP/1.1.
fn health(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.contains("\"health\":\"true\"")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
