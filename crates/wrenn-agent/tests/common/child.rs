//! An agent in a child process: this test binary run again with one ignored test of its own
//! selected ([`serve_child`]), so that a test can kill the agent as a crash would (SIGKILL, its
//! VMs left running) and start a new one on the same data directory, as a restarted service.

use super::TOKEN;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wrenn_agent::images::NoProgress;
use wrenn_agent::startup::{self, AgentConfig};

/// The child's side, the body of the ignored test named when spawning: an agent configured by
/// `config` on the data directory named by the variable `dir_var`, serving its API on loopback
/// until it is killed; its port goes to `agent.port` in the data directory. Does nothing in a
/// normal run (the variable is unset).
pub fn serve_child(dir_var: &str, config: fn(&Path) -> AgentConfig) {
    let Some(dir) = std::env::var_os(dir_var).map(PathBuf::from) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let agent = startup::start(config(&dir), Box::new(NoProgress))
            .await
            .expect("agent starts (are the images built? run scripts/test)");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tmp = dir.join("agent.port.tmp");
        std::fs::write(&tmp, port.to_string()).unwrap();
        std::fs::rename(&tmp, dir.join("agent.port")).unwrap();
        axum::serve(listener, agent.router).await.unwrap();
    });
}

/// The agent under test: a child process serving on loopback.
pub struct ChildAgent {
    pub proc: std::process::Child,
    pub base: String,
    pub http: reqwest::Client,
    pub dir: PathBuf,
}

/// A test that fails leaves no agent behind (its VMs are removed by the next run's start).
impl Drop for ChildAgent {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

impl ChildAgent {
    /// Runs the ignored test `child_test` (which calls [`serve_child`] with `dir_var`) on
    /// `dir` with the extra environment `env`, and waits until it serves; calls through it
    /// give up after `timeout`.
    pub async fn spawn(
        child_test: &str,
        dir_var: &str,
        dir: &Path,
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> ChildAgent {
        let port_file = dir.join("agent.port");
        let _ = std::fs::remove_file(&port_file);
        let proc = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                child_test,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(dir_var, dir)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p;
            }
            assert!(Instant::now() < deadline, "the child agent never served");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        ChildAgent {
            proc,
            base: format!("http://127.0.0.1:{}", port.trim()),
            http: reqwest::Client::builder().timeout(timeout).build().unwrap(),
            dir: dir.to_path_buf(),
        }
    }

    /// Kills the agent as a crash would (its VMs stay).
    pub fn kill(self) {
        drop(self);
    }

    /// Waits until the agent has ended (a failure point killed it).
    pub async fn wait_killed(mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.proc.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the failure point never killed it"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    /// One call: its status and body (JSON, or the text as a string).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.request(method, path);
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
}
