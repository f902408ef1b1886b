//! The processes of the multi-host cluster: a host's agent (started inside its namespace,
//! joining on its first start) and a control plane, each with its log in its data dir; their
//! start, readiness, SIGKILL, restart and SIGTERM stop.

use super::{net, AGENT_PORT, JWT_SECRET, READY_TIMEOUT};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether a plain HTTP/1.0 GET of `path` at `addr` answers 200 (no runtime needed).
fn http_ok(addr: &str, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(addr) = addr.parse::<std::net::SocketAddr>() else {
        return false;
    };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

pub(super) fn log_tail(path: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One host: its namespace, data dir and agent process.
pub struct Host {
    pub name: &'static str,
    pub net: net::HostNet,
    pub data_dir: PathBuf,
    pub url: String,
    pub(super) prefix: &'static str,
    pub(super) first_slot: u32,
    pub(super) child: Option<Child>,
    pub(super) starts: usize,
    /// Control plane URL and one-time token of its first start (the join).
    pub(super) join: Option<(String, String)>,
    /// Its host id, from the identity the join gave it.
    pub id: String,
}

/// One control plane process.
pub struct Server {
    pub base: String,
    pub data_dir: PathBuf,
    pub(super) listen: String,
    pub(super) child: Option<Child>,
    /// Where its log's latest run begins.
    pub(super) log_from: usize,
}

impl Host {
    pub(super) fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("agent.log"))
            .expect("agent log");
        let log2 = log.try_clone().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wrenn"));
        cmd.arg("agent")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", &format!("{}:{AGENT_PORT}", self.net.addr)])
            .args(["--net-prefix", self.prefix])
            .args(["--first-slot", &self.first_slot.to_string()])
            .args(["--max-slots", "16"])
            .args(["--pool-size", "0"])
            .env_remove("WRENN_AGENT_TOKEN")
            .env_remove("WRENN_JOIN_TOKEN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if let Some((url, token)) = self.join.take() {
            // The token in the environment, never on the command line.
            cmd.args(["--join", &url]).env("WRENN_JOIN_TOKEN", token);
        }
        self.net.enter(&mut cmd);
        self.child = Some(cmd.spawn().expect("spawn wrenn agent"));
        self.starts += 1;
    }

    pub(super) fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let log = self.data_dir.join("agent.log");
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "agent {} exited with {status} during start:\n{}",
                    self.name,
                    log_tail(&log, 30)
                );
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.matches("agent ready at").count() >= self.starts {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent {} not ready after {READY_TIMEOUT:?}:\n{}",
                self.name,
                log_tail(&log, 30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILLs the agent alone (its VMs keep running, as after a crash).
    pub fn kill(&mut self) {
        let mut c = self.child.take().expect("agent is running");
        c.kill().expect("SIGKILL agent");
        c.wait().expect("reap agent");
    }

    /// Starts the agent again on the same data dir and address; waits until it is ready.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// Stops the agent with SIGTERM and waits (bounded) for it to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("agent is running");
        stop_child(&mut c, "agent")
    }
}

fn stop_child(c: &mut Child, what: &str) -> std::process::ExitStatus {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = c.try_wait().expect("wait") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            panic!("{what} did not exit within 60 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Server {
    pub(super) fn spawn(&mut self, database_url: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("server.log"))
            .expect("server log");
        self.log_from = log.metadata().map_or(0, |m| m.len() as usize);
        let log2 = log.try_clone().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_wrenn"))
            .arg("server")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", &self.listen])
            .args(["--quota-concurrent-creates", "16"])
            .env_remove("WRENN_AGENTS")
            .env("DATABASE_URL", database_url)
            .env("WRENN_JWT_SECRET", JWT_SECRET)
            .env_remove("GITHUB_CLIENT_ID")
            .env_remove("GITHUB_CLIENT_SECRET")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("spawn wrenn server");
        self.child = Some(child);
    }

    pub(super) fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "server exited with {status} during start:\n{}",
                    log_tail(&self.data_dir.join("server.log"), 30)
                );
            }
            if http_ok(&self.listen, "/openapi.yaml") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server not ready:\n{}",
                log_tail(&self.data_dir.join("server.log"), 30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILLs the server.
    pub fn kill(&mut self) {
        let mut c = self.child.take().expect("server is running");
        c.kill().expect("SIGKILL server");
        c.wait().expect("reap server");
    }

    /// Stops the server with SIGTERM.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("server is running");
        stop_child(&mut c, "server")
    }

    /// Whether its latest run says it leads (runs the reaper and reconciler), from its log.
    pub fn leads(&self) -> bool {
        let log = std::fs::read(self.data_dir.join("server.log")).unwrap_or_default();
        let last_run = String::from_utf8_lossy(log.get(self.log_from..).unwrap_or_default());
        let gained = last_run.rfind("now leads");
        let lost = last_run.rfind("no longer leads");
        matches!((gained, lost), (Some(g), l) if l.is_none_or(|l| l < g))
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}
