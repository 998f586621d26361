//! Runs the real `veer` binary: `veer run -c FILE` on a config written to a temp
//! directory, waits for `veer: ready`, and reads the `veer: listener NAME on
//! IP:PORT` lines. The process is killed when the handle is dropped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the binary may take to print `veer: ready`.
pub const READY_LIMIT: Duration = Duration::from_secs(20);

pub struct VeerProcess {
    child: Child,
    pid: u32,
    listeners: HashMap<String, SocketAddr>,
    stdout_lines: Vec<String>,
    stderr_path: PathBuf,
    exited: Option<ExitStatus>,
    _dir: tempfile::TempDir,
}

impl VeerProcess {
    /// The config file veer runs on (`-c FILE`); rewrite it to reload.
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("veer.yaml")
    }

    /// Starts `bin run -c FILE` with `yaml` as FILE. Panics (with the process's
    /// output) if it does not print `veer: ready` within [`READY_LIMIT`].
    pub fn start(bin: &str, yaml: &str) -> VeerProcess {
        VeerProcess::start_with_env(bin, yaml, &[])
    }

    /// As [`VeerProcess::start`], with `env` added to the process's environment.
    pub fn start_with_env(bin: &str, yaml: &str, env: &[(&str, &str)]) -> VeerProcess {
        VeerProcess::start_with_args(bin, yaml, &[], env)
    }

    /// As [`VeerProcess::start_with_env`], with `args` after `run -c FILE`.
    pub fn start_with_args(
        bin: &str,
        yaml: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> VeerProcess {
        let dir = tempfile::tempdir().expect("temp dir for veer config");
        let config_path = dir.path().join("veer.yaml");
        std::fs::write(&config_path, yaml).expect("write veer config");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr log");
        let mut child = Command::new(bin)
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .args(args)
            .current_dir(dir.path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped stdout");
        // A thread forwards stdout lines, and keeps draining the pipe after ready
        // so the process never blocks on a full pipe.
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut proc = VeerProcess {
            child,
            pid,
            listeners: HashMap::new(),
            stdout_lines: Vec::new(),
            stderr_path,
            exited: None,
            _dir: dir,
        };
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    proc.stdout_lines.push(line.clone());
                    if let Some((name, addr)) = parse_listener_line(&line) {
                        proc.listeners.insert(name, addr);
                    } else if line.trim() == "veer: ready" {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "veer did not print `veer: ready` within {READY_LIMIT:?}\n{}",
                        proc.output()
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = proc.child.wait().ok();
                    panic!(
                        "veer exited ({status:?}) before `veer: ready`\n{}",
                        proc.output()
                    )
                }
            }
        }
        proc
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The address the listener `name` is bound to, from its stdout line.
    pub fn listener(&self, name: &str) -> SocketAddr {
        match self.listeners.get(name) {
            Some(addr) => *addr,
            None => panic!(
                "veer printed no listener line for {name:?}\n{}",
                self.output()
            ),
        }
    }

    /// Sends a signal (`"TERM"`, `"INT"`, ...) with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg("-s")
            .arg(sig)
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {sig} {} failed", self.pid);
    }

    /// Waits (without blocking the async runtime) until the process exits;
    /// `None` if it is still running after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait on veer");
        }
        self.exited
    }

    /// A field of `/proc/PID/status` in KiB (`VmHWM`: peak resident set size,
    /// `VmRSS`: current).
    pub fn proc_status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("read /proc/PID/status of veer");
        status
            .lines()
            .find_map(|line| {
                let rest = line.strip_prefix(field)?.strip_prefix(':')?;
                rest.trim().trim_end_matches("kB").trim().parse().ok()
            })
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid))
    }

    /// Peak resident set size so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM")
    }

    /// Current resident set size, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS")
    }

    /// Everything the process wrote to stderr so far: its log.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// What the process printed so far (stdout up to ready, then stderr).
    pub fn output(&self) -> String {
        let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- veer stdout ---\n{}\n--- veer stderr (last 60 lines) ---\n{}",
            self.stdout_lines.join("\n"),
            tail.join("\n")
        )
    }
}

impl Drop for VeerProcess {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `veer: listener NAME on IP:PORT` -> (NAME, IP:PORT)
pub fn parse_listener_line(line: &str) -> Option<(String, SocketAddr)> {
    let rest = line.trim().strip_prefix("veer: listener ")?;
    let (name, addr) = rest.split_once(" on ")?;
    Some((name.trim().to_string(), addr.trim().parse().ok()?))
}
