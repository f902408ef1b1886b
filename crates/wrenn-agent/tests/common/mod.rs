//! What the agent's end-to-end tests share: a real agent ([`TestAgent`]) on a scratch data
//! directory beside the guest images, serving its internal API on loopback, and the calls the
//! tests make through that API. A test file adds its own calls in an `impl TestAgent` block.
//!
//! Needs root and the guest images (`WRENN_DATA_DIR`, default `/var/lib/wrenn`; `scripts/test`
//! builds them). Each test file has a network prefix and slot range of its own, so a run
//! cleans up whatever a killed earlier run of the same file left behind.

#![allow(dead_code)]

pub mod child;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;
use wrenn_agent::images::NoProgress;
use wrenn_agent::net::NetConfig;
use wrenn_agent::startup::{self, Agent, AgentConfig};

/// The bearer token of every test agent.
pub const TOKEN: &str = "test-agent-token-0123456789";

/// A runtime for tests that share one agent across `#[test]`s.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// The data directory holding the guest images.
pub fn images_dir() -> PathBuf {
    std::env::var_os("WRENN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/wrenn".into())
}

/// A fresh data directory beside the images (same filesystem: templates are hard-linked),
/// with the images linked in.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let d =
        images_dir()
            .join("e2e")
            .join(format!("{tag}-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&d).unwrap();
    let images = d.join("images");
    if !images.exists() {
        std::os::unix::fs::symlink(images_dir().join("images"), &images).unwrap();
    }
    d
}

pub fn rand_suffix() -> String {
    format!("{:06}", rand::random::<u32>() % 1_000_000)
}

/// One agent serving its API on loopback.
pub struct TestAgent {
    pub base: String,
    pub http: reqwest::Client,
    pub agent: Agent,
    pub data_dir: PathBuf,
    pub prefix: String,
}

/// The network settings of a test agent: its prefix, first slot, slot count and ready pool.
pub struct Slots {
    pub prefix: &'static str,
    pub first: u32,
    pub count: u32,
    pub pool: usize,
}

impl TestAgent {
    /// Starts an agent on `data_dir` with the network `slots`.
    pub async fn start(data_dir: PathBuf, slots: Slots) -> TestAgent {
        Self::start_with(data_dir, slots, |_| {}).await
    }

    /// [`TestAgent::start`] with the configuration changed by `tweak` first.
    pub async fn start_with(
        data_dir: PathBuf,
        slots: Slots,
        tweak: impl FnOnce(&mut AgentConfig),
    ) -> TestAgent {
        let mut cfg = AgentConfig::new(data_dir.clone(), TOKEN.into());
        cfg.net = NetConfig {
            prefix: slots.prefix.into(),
            first_slot: slots.first,
            max_slots: slots.count,
            pool_size: slots.pool,
            ..NetConfig::default()
        };
        tweak(&mut cfg);
        let agent = startup::start(cfg, Box::new(NoProgress))
            .await
            .expect("agent starts (are the images built? run scripts/test)");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = agent.router.clone();
        tokio::spawn(async move { axum::serve(listener, router).await });
        TestAgent {
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()
                .unwrap(),
            agent,
            data_dir,
            prefix: slots.prefix.into(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// One call of the agent's API: its status and body (JSON, or the text as a string).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, None).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// Creates a running 1-vCPU sandbox of `template` with `memory_mb`; its id.
    pub async fn create(&self, template: &str, memory_mb: u32) -> String {
        let id = format!("sb-{}", rand_suffix());
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                "/v1/sandboxes",
                Some(json!({"id": id, "template": template, "vcpus": 1, "memory_mb": memory_mb})),
            )
            .await;
        assert_eq!(s, 201, "create: {v}");
        assert_eq!(v["status"], "running", "{v}");
        assert_eq!(v["guest_ip"], "172.16.0.2", "{v}");
        id
    }

    /// Runs `cmd args` (60 s at most); its answer, which must be a 200.
    pub async fn exec(&self, id: &str, cmd: &str, args: &[&str]) -> Value {
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{id}/exec"),
                Some(json!({"cmd": cmd, "args": args, "timeout_sec": 60})),
            )
            .await;
        assert_eq!(s, 200, "exec {cmd} {args:?}: {v}");
        v
    }

    /// Runs `sh -c script` with a timeout; the status and answer, whatever they are.
    pub async fn try_sh(&self, id: &str, script: &str, timeout_sec: u32) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"cmd": "sh", "args": ["-c", script], "timeout_sec": timeout_sec})),
        )
        .await
    }

    /// Runs `sh -c script`, which must succeed; its stdout.
    pub async fn sh(&self, id: &str, script: &str) -> String {
        let (s, v) = self.try_sh(id, script, 120).await;
        assert_eq!(s, 200, "exec {script:?}: {v}");
        assert_eq!(v["exit_code"], 0, "script {script:?} failed: {v}");
        v["stdout"].as_str().unwrap().to_string()
    }

    /// Pauses or resumes `id` (`op`), which must succeed.
    pub async fn lifecycle(&self, id: &str, op: &str) -> Value {
        let (s, v) = self.post(&format!("/v1/sandboxes/{id}/{op}")).await;
        assert_eq!(s, 200, "{op}: {v}");
        v
    }

    pub async fn destroy(&self, id: &str) {
        let (s, v) = self.delete(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(s, 204, "destroy: {v}");
    }

    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("sandboxes").join(id)
    }

    /// The pid of `id`'s QEMU, from its pid file.
    pub fn qemu_pid(&self, id: &str) -> u32 {
        read_pid(&self.sandbox_dir(id))
    }
}

/// The pid in a sandbox directory's `qemu.pid`.
pub fn read_pid(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("qemu.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A `Name:   N kB` field of a `/proc` file (`/proc/meminfo`, `/proc/PID/smaps_rollup`), in KiB.
pub fn proc_kib(path: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {path}"))
}
