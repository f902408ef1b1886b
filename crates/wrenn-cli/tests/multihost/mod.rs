//! Harness of the multi-host end-to-end test: a private PostgreSQL, three host agents (the
//! built `wrenn agent`, real VMs), each in a network namespace of its own acting as its own
//! machine on a test bridge, and two `wrenn server` processes on loopback sharing that
//! PostgreSQL. It starts, kills and restarts those processes, says which host holds a sandbox
//! (by the agent's data directory), and cleans everything up when dropped, also after a
//! failure (processes, VMs, namespaces, bridge, data dirs). It judges nothing.

#![allow(dead_code)]

pub mod net;
pub mod pg;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Network prefix and first slot of each agent (distinct from every other test's).
pub const HOSTS: [(&str, u32); 3] = [("ma", 10200), ("mb", 10220), ("mc", 10240)];
/// The hosts' network namespaces.
pub const HOST_NS: [&str; 3] = ["wmh-a", "wmh-b", "wmh-c"];
const AGENT_PORT: u16 = 7000;
const AGENT_TOKEN: &str = "multihost-agent-token-0123456789";
const JWT_SECRET: &str = "multihost-e2e-jwt-secret-0123456789abcdef";
/// Longest wait for an agent (its warm snapshot made under TCG, three at once) or a server.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest one API request may take (a create under TCG on a loaded machine).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

fn images_root() -> PathBuf {
    std::env::var_os("WRENN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/wrenn".into())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free loopback port")
        .port()
}

/// Every process whose command line names `dir` or a path inside it.
pub fn processes_of(dir: &Path) -> Vec<i32> {
    let d = dir.display().to_string();
    let inside = format!("{d}/");
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let raw = std::fs::read(e.path().join("cmdline")).ok()?;
            let hit = raw
                .split(|b| *b == 0)
                .map(String::from_utf8_lossy)
                .any(|a| a == d || a.contains(&inside));
            (hit && pid != me).then_some(pid)
        })
        .collect()
}

fn kill_all_of(dir: &Path) {
    for pid in processes_of(dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_of(dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

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

fn log_tail(path: &Path, lines: usize) -> String {
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
    prefix: &'static str,
    first_slot: u32,
    child: Option<Child>,
    starts: usize,
}

/// One control plane process.
pub struct Server {
    pub base: String,
    pub data_dir: PathBuf,
    listen: String,
    child: Option<Child>,
}

/// The whole cluster; dropping it removes everything it made.
pub struct Cluster {
    pub root: PathBuf,
    pub pg: pg::PgServer,
    pub hosts: Vec<Host>,
    pub servers: Vec<Server>,
    pub http: reqwest::Client,
}

/// Removes what a run leaves: processes of the scratch dir, the agents' and the test's
/// namespaces, the bridge, the scratch dir.
fn clean(root: &Path) {
    kill_all_of(root);
    let mut prefixes: Vec<String> = HOSTS.iter().map(|(p, _)| format!("{p}-")).collect();
    prefixes.push("wmh-".into());
    let p: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    net::remove(&p);
    if root.exists() {
        let _ = std::fs::remove_dir_all(root);
    }
}

impl Cluster {
    /// PostgreSQL, the network, three agents (started together, each ready with its warm
    /// snapshot) and two servers registering all three.
    pub fn start() -> Cluster {
        assert!(
            images_root().join("images").join("kernel").exists(),
            "no guest images under {} (run scripts/test or `wrenn images build`)",
            images_root().display()
        );
        let root = images_root().join("e2e").join("multihost");
        clean(&root);
        std::fs::create_dir_all(&root).expect("scratch dir");
        let pg = pg::PgServer::start();
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        // Made before the network, so that a failure from here on cleans up.
        let mut cluster = Cluster {
            root: root.clone(),
            pg,
            hosts: Vec::new(),
            servers: Vec::new(),
            http,
        };
        let nets = net::create(&HOST_NS);
        for (i, hn) in nets.into_iter().enumerate() {
            let (prefix, first_slot) = HOSTS[i];
            let data_dir = root.join(format!("host-{prefix}"));
            std::fs::create_dir_all(&data_dir).unwrap();
            // Same filesystem as the images: templates are hard-linked, not copied.
            std::os::unix::fs::symlink(images_root().join("images"), data_dir.join("images"))
                .expect("link the images");
            let url = format!("http://{}:{AGENT_PORT}", hn.addr);
            cluster.hosts.push(Host {
                name: HOST_NS[i],
                net: hn,
                data_dir,
                url,
                prefix,
                first_slot,
                child: None,
                starts: 0,
            });
        }
        let t = Instant::now();
        for i in 0..cluster.hosts.len() {
            cluster.hosts[i].spawn();
        }
        for i in 0..cluster.hosts.len() {
            cluster.hosts[i].wait_ready();
        }
        eprintln!("[numbers] three agents ready after {:?}", t.elapsed());
        for i in 0..2 {
            let data_dir = root.join(format!("server-{i}"));
            std::fs::create_dir_all(&data_dir).unwrap();
            let listen = format!("127.0.0.1:{}", free_port());
            cluster.servers.push(Server {
                base: format!("http://{listen}"),
                data_dir,
                listen,
                child: None,
            });
            let agents = cluster.agent_flags();
            let url = cluster.pg.url();
            cluster.servers[i].spawn(&url, &agents);
            cluster.servers[i].wait_ready();
        }
        cluster
    }

    fn agent_flags(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| format!("{}={AGENT_TOKEN}", h.url))
            .collect()
    }

    /// The index of the host whose agent holds sandbox `id`, if any.
    pub fn host_of(&self, id: &str) -> Option<usize> {
        self.hosts
            .iter()
            .position(|h| h.data_dir.join("sandboxes").join(id).exists())
    }

    /// Starts server `i` again (after a kill) and waits until it answers.
    pub fn restart_server(&mut self, i: usize) {
        let agents = self.agent_flags();
        let url = self.pg.url();
        self.servers[i].spawn(&url, &agents);
        self.servers[i].wait_ready();
    }

    /// Signs up an account through server `i`; returns its API key.
    pub async fn account(&self, i: usize, name: &str) -> String {
        let base = &self.servers[i].base;
        let r = self
            .http
            .post(format!("{base}/v1/auth/signup"))
            .json(&json!({"email": format!("{name}@example.com"), "password": "correct-horse-battery"}))
            .send()
            .await
            .expect("signup");
        assert_eq!(r.status(), 201, "signup");
        let auth: Value = r.json().await.unwrap();
        let token = auth["token"].as_str().expect("token").to_string();
        let r = self
            .http
            .post(format!("{base}/v1/api-keys"))
            .bearer_auth(&token)
            .json(&json!({"name": "multihost"}))
            .send()
            .await
            .expect("create key");
        assert_eq!(r.status(), 201, "create key");
        let k: Value = r.json().await.unwrap();
        k["key"].as_str().expect("key").to_string()
    }

    /// A client of server `i` with `key`.
    pub fn api(&self, i: usize, key: &str) -> Api {
        Api {
            http: self.http.clone(),
            base: self.servers[i].base.clone(),
            key: key.to_string(),
        }
    }

    /// The last lines of every process's log (for failure messages).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for h in &self.hosts {
            out += &format!(
                "--- agent {} ---\n{}\n",
                h.name,
                log_tail(&h.data_dir.join("agent.log"), 20)
            );
        }
        for (i, s) in self.servers.iter().enumerate() {
            out += &format!(
                "--- server {i} ---\n{}\n",
                log_tail(&s.data_dir.join("server.log"), 20)
            );
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            if let Some(mut c) = s.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for h in &mut self.hosts {
            if let Some(mut c) = h.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        clean(&self.root);
    }
}

impl Host {
    fn spawn(&mut self) {
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
            .env("WRENN_AGENT_TOKEN", AGENT_TOKEN)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        self.net.enter(&mut cmd);
        self.child = Some(cmd.spawn().expect("spawn wrenn agent"));
        self.starts += 1;
    }

    fn wait_ready(&mut self) {
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
    fn spawn(&mut self, database_url: &str, agents: &[String]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("server.log"))
            .expect("server log");
        let log2 = log.try_clone().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_wrenn"))
            .arg("server")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", &self.listen])
            .args(["--quota-concurrent-creates", "16"])
            .env("WRENN_AGENTS", agents.join(","))
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

    fn wait_ready(&mut self) {
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

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// Calls of the public API through one server with one key.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    pub base: String,
    key: String,
}

/// Status and JSON body (or the text as a JSON string).
pub type Reply = (u16, Value);

impl Api {
    async fn send(&self, rb: reqwest::RequestBuilder) -> Reply {
        let r = rb
            .header("X-API-Key", &self.key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request to {}: {e}", self.base));
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    /// Creates a sandbox; asserts 201 and `running`; returns its id.
    pub async fn create(&self, body: Value) -> String {
        let (s, v) = self.post("/v1/sandboxes", body.clone()).await;
        assert_eq!(s, 201, "create {body} through {}: {v}", self.base);
        assert_eq!(v["status"], "running", "{v}");
        v["id"].as_str().expect("id").to_string()
    }

    /// Runs a shell script; asserts exit code 0; returns stdout.
    pub async fn sh(&self, id: &str, script: &str) -> String {
        let (s, v) = self
            .post(
                &format!("/v1/sandboxes/{id}/exec"),
                json!({"cmd": "sh", "args": ["-c", script], "timeout_sec": 120}),
            )
            .await;
        assert_eq!(s, 200, "exec in {id} through {}: {v}", self.base);
        assert_eq!(v["exit_code"], 0, "script {script:?} in {id}: {v}");
        v["stdout"].as_str().expect("stdout").to_string()
    }

    pub async fn status(&self, id: &str) -> Reply {
        self.get(&format!("/v1/sandboxes/{id}")).await
    }

    /// Destroys; asserts 204.
    pub async fn destroy(&self, id: &str) {
        let (s, v) = self.delete(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(s, 204, "destroy {id} through {}: {v}", self.base);
    }
}
