//! Harness of the multi-host end-to-end test: a private PostgreSQL, three host agents (the
//! built `wrenn agent`, real VMs), each in a network namespace of its own acting as its own
//! machine on a test bridge, and two `wrenn server` processes on the bridge's address (the
//! agents join through it) sharing that PostgreSQL and one CA. It starts the cluster (tokens
//! from `wrenn hosts add`, the joins), runs `wrenn hosts`, says which host holds a sandbox (by
//! the agent's data directory), and cleans everything up when dropped, also after a failure
//! (processes, VMs, namespaces, bridge, data dirs). It judges nothing.

#![allow(dead_code)]

mod api;
#[path = "../machine/mod.rs"]
mod machine;
pub mod net;
/// The control plane's tests' private PostgreSQL server (one helper for both crates).
#[allow(dead_code)]
#[path = "../../../wrenn-server/tests/support/pg.rs"]
pub mod pg;
mod procs;

pub use api::Api;
pub use machine::processes_of;
use machine::{images_root, kill_processes_of};
use procs::log_tail;
pub use procs::{Host, Server};

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Network prefix and first slot of each agent (distinct from every other test's).
pub const HOSTS: [(&str, u32); 3] = [("ma", 10200), ("mb", 10220), ("mc", 10240)];
/// The hosts' network namespaces.
pub const HOST_NS: [&str; 3] = ["wmh-a", "wmh-b", "wmh-c"];
const AGENT_PORT: u16 = 7443;
const JWT_SECRET: &str = "multihost-e2e-jwt-secret-0123456789abcdef";
/// Longest wait for an agent (its warm snapshot made under TCG, three at once) or a server.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest one API request may take (a create under TCG on a loaded machine).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Copies a CA directory (the key stays owner-only).
fn copy_pki(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).expect("pki dir");
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    for e in std::fs::read_dir(from).expect("server 0's CA").flatten() {
        let dest = to.join(e.file_name());
        std::fs::copy(e.path(), &dest).expect("copy the CA");
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
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
    kill_processes_of(root);
    let mut prefixes: Vec<String> = HOSTS.iter().map(|(p, _)| format!("{p}-")).collect();
    prefixes.push("wmh-".into());
    let p: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    net::remove(&p);
    if root.exists() {
        let _ = std::fs::remove_dir_all(root);
    }
}

impl Cluster {
    /// PostgreSQL, the network, two servers sharing one CA, and three agents that join with
    /// one-time tokens (`wrenn hosts add`) and serve mutual TLS (started together, each ready
    /// with its warm snapshot); returns once both servers know all three as healthy.
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
        // Two control planes sharing the CA: the first token makes it in server 0's data
        // dir, and server 1 gets a copy, as a second machine would.
        for i in 0..2 {
            let data_dir = root.join(format!("server-{i}"));
            std::fs::create_dir_all(&data_dir).unwrap();
            let port = std::net::TcpListener::bind((net::BRIDGE_ADDR, 0))
                .and_then(|l| l.local_addr())
                .expect("free port on the bridge")
                .port();
            // On the bridge's address: the agents, in their namespaces, join through it.
            let listen = format!("{}:{port}", net::BRIDGE_ADDR);
            cluster.servers.push(Server {
                base: format!("http://{listen}"),
                data_dir,
                listen,
                child: None,
                log_from: 0,
            });
        }
        let tokens: Vec<String> = (0..HOSTS.len())
            .map(|_| {
                let v = cluster.hosts_cli(&["add", "--ttl", "10m"]);
                v["token"].as_str().expect("join token").to_string()
            })
            .collect();
        copy_pki(
            &cluster.servers[0].data_dir.join("pki"),
            &cluster.servers[1].data_dir.join("pki"),
        );
        let url = cluster.pg.url();
        for s in &mut cluster.servers {
            s.spawn(&url);
            s.wait_ready();
        }
        let join_url = cluster.servers[0].base.clone();
        for (i, (hn, token)) in nets.into_iter().zip(tokens).enumerate() {
            let (prefix, first_slot) = HOSTS[i];
            let data_dir = root.join(format!("host-{prefix}"));
            std::fs::create_dir_all(&data_dir).unwrap();
            // Same filesystem as the images: templates are hard-linked, not copied.
            std::os::unix::fs::symlink(images_root().join("images"), data_dir.join("images"))
                .expect("link the images");
            let url = format!("https://{}:{AGENT_PORT}", hn.addr);
            cluster.hosts.push(Host {
                name: HOST_NS[i],
                net: hn,
                data_dir,
                url,
                prefix,
                first_slot,
                child: None,
                starts: 0,
                join: Some((join_url.clone(), token)),
                id: String::new(),
            });
        }
        let t = Instant::now();
        for i in 0..cluster.hosts.len() {
            cluster.hosts[i].spawn();
        }
        for i in 0..cluster.hosts.len() {
            cluster.hosts[i].wait_ready();
            let id = std::fs::read_to_string(cluster.hosts[i].data_dir.join("identity/host_id"))
                .expect("the joined agent's host id");
            cluster.hosts[i].id = id.trim().to_string();
        }
        eprintln!(
            "[numbers] three agents joined and ready after {:?}",
            t.elapsed()
        );
        cluster.wait_hosts_healthy();
        cluster
    }

    /// Runs `wrenn --json hosts ARGS` against server 0's data dir and the database; asserts
    /// it succeeds and returns its JSON output.
    pub fn hosts_cli(&self, args: &[&str]) -> Value {
        let out = self.hosts_cli_raw(args);
        assert!(
            out.status.success(),
            "wrenn hosts {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Runs `wrenn --json hosts ARGS`; returns its output whatever the exit code.
    pub fn hosts_cli_raw(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_wrenn"))
            .args(["--json", "hosts"])
            .args(args)
            .arg("--data-dir")
            .arg(&self.servers[0].data_dir)
            .env("DATABASE_URL", self.pg.url())
            .stdin(Stdio::null())
            .output()
            .expect("run wrenn hosts")
    }

    /// Waits until every listed host's heartbeat has been written twice more (both servers
    /// then have seen a change made before the call).
    pub fn wait_heartbeats(&self) {
        let stamps = || -> Vec<String> {
            let v = self.hosts_cli(&["list"]);
            v.as_array()
                .map(|a| a.iter().map(|h| h["last_seen"].to_string()).collect())
                .unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        for _ in 0..2 {
            let before = stamps();
            while stamps().iter().zip(&before).any(|(a, b)| a == b) {
                assert!(
                    Instant::now() < deadline,
                    "no heartbeats written:\n{}",
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }

    /// Waits until the database lists the three hosts as healthy and their heartbeats have
    /// been written twice more (both servers then have them in their registries).
    pub fn wait_hosts_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen_at: Option<Vec<String>> = None;
        let mut rounds = 0;
        loop {
            let v = self.hosts_cli(&["list"]);
            let hosts = v.as_array().cloned().unwrap_or_default();
            let healthy = hosts.len() == HOSTS.len()
                && hosts
                    .iter()
                    .all(|h| h["status"] == "healthy" && h["draining"] == false);
            if healthy {
                let stamps: Vec<String> =
                    hosts.iter().map(|h| h["last_seen"].to_string()).collect();
                match &seen_at {
                    Some(before) if before.iter().zip(&stamps).all(|(a, b)| a != b) => {
                        rounds += 1;
                        if rounds >= 2 {
                            return;
                        }
                        seen_at = Some(stamps);
                    }
                    Some(_) => {}
                    None => seen_at = Some(stamps),
                }
            }
            assert!(
                Instant::now() < deadline,
                "the hosts are not all healthy: {v:#}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The index of the host whose agent holds sandbox `id`, if any.
    pub fn host_of(&self, id: &str) -> Option<usize> {
        self.hosts
            .iter()
            .position(|h| h.data_dir.join("sandboxes").join(id).exists())
    }

    /// Starts server `i` again (after a kill) and waits until it answers.
    pub fn restart_server(&mut self, i: usize) {
        let url = self.pg.url();
        self.servers[i].spawn(&url);
        self.servers[i].wait_ready();
    }

    /// Signs up an account through server `i`; returns its API key.
    pub async fn account(&self, i: usize, name: &str) -> String {
        let base = &self.servers[i].base;
        let r = self
            .http
            .post(format!("{base}/v1/auth/signup"))
            .json(&json!({
                "email": format!("{name}@example.com"),
                "password": "correct-horse-battery",
            }))
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

    /// The accelerator the first agent reports in its log ("Kvm" or "Tcg").
    pub fn accel(&self) -> String {
        let log =
            std::fs::read_to_string(self.hosts[0].data_dir.join("agent.log")).unwrap_or_default();
        log.lines()
            .find_map(|l| l.split_once(" guests)").map(|(a, _)| a))
            .and_then(|a| a.rsplit('(').next())
            .unwrap_or("unknown")
            .to_string()
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
