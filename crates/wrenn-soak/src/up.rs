//! One `wrenn up` child process on a scratch data directory beside the guest images (same
//! filesystem: templates are hard-linked), with its own network prefix and slots: started,
//! killed with SIGKILL or stopped with SIGTERM, started again on the same directory and
//! addresses. Whatever a killed earlier run of the same directory left (its processes, found by
//! the directory on their command lines) is ended before a first start. It owns the process's
//! life and its accounts' sign-up; it judges nothing.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Free space a run needs at least on the images' filesystem.
const MIN_FREE_BYTES: u64 = 1 << 30;
/// Longest wait for the daemon to say it is running after a start.
const READY_TIMEOUT: Duration = Duration::from_secs(240);

/// The shared data directory holding the built images (`WRENN_DATA_DIR`).
pub fn images_root() -> PathBuf {
    std::env::var_os("WRENN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/wrenn".into())
}

/// Every process whose command line names `dir` or a path in it.
pub fn processes_of(dir: &Path) -> Vec<i32> {
    let exact = dir.display().to_string();
    let inside = format!("{exact}/");
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let hit = raw
            .split(|b| *b == 0)
            .map(String::from_utf8_lossy)
            .any(|a| a == exact || a.contains(&inside));
        if hit && pid != me {
            out.push(pid);
        }
    }
    out
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A `wrenn up` and how to reach it.
pub struct Up {
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    pub prefix: String,
    pub first_slot: u32,
    pub listen: String,
    pub agent_listen: String,
    /// More arguments of `wrenn up` (e.g. `--prewarm`).
    pub extra_args: Vec<String>,
    child: Option<Child>,
    starts: usize,
}

impl Up {
    /// A fresh data dir `<images root>/<sub>` (a previous one is ended and removed).
    pub fn prepare(bin: &Path, sub: &str, prefix: &str, first_slot: u32) -> Result<Up> {
        let root = images_root();
        if !root.join("images").join("kernel").exists() {
            bail!("no guest images under {}", root.display());
        }
        let data_dir = root.join(sub);
        kill_all(&data_dir);
        let fs = nix::sys::statvfs::statvfs(&root)?;
        let free = fs.blocks_available() as u64 * fs.fragment_size() as u64;
        if free < MIN_FREE_BYTES {
            bail!(
                "only {} MiB free under {}: sandboxes' RAM files need more",
                free >> 20,
                root.display()
            );
        }
        if data_dir.exists() {
            std::fs::remove_dir_all(&data_dir)
                .with_context(|| format!("remove {}", data_dir.display()))?;
        }
        std::fs::create_dir_all(&data_dir)?;
        std::os::unix::fs::symlink(root.join("images"), data_dir.join("images"))?;
        Ok(Up {
            bin: bin.to_path_buf(),
            data_dir,
            prefix: prefix.into(),
            first_slot,
            listen: format!("127.0.0.1:{}", free_port()?),
            agent_listen: format!("127.0.0.1:{}", free_port()?),
            extra_args: Vec::new(),
            child: None,
            starts: 0,
        })
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn agent_url(&self) -> String {
        format!("http://{}", self.agent_listen)
    }

    fn log(&self) -> PathBuf {
        self.data_dir.join("wrenn-up.log")
    }

    /// The last lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Starts the daemon (with `failpoints` as `WRENN_FAILPOINTS`) and waits until it is
    /// running.
    pub async fn start(&mut self, failpoints: &str) -> Result<Duration> {
        let t = Instant::now();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())?;
        let child = Command::new(&self.bin)
            .arg("up")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--listen",
                &self.listen,
                "--agent-listen",
                &self.agent_listen,
            ])
            .args(["--net-prefix", &self.prefix])
            .args(["--first-slot", &self.first_slot.to_string()])
            .args(["--reconcile-interval-ms", "5000"])
            .args(&self.extra_args)
            .env_remove("DATABASE_URL")
            .env_remove("WRENN_JWT_SECRET")
            .env("WRENN_FAILPOINTS", failpoints)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        self.child = Some(child);
        self.starts += 1;
        let http = reqwest::Client::new();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("wrenn up exited with {status}:\n{}", self.log_tail());
            }
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            if log.matches("Wrenn is running at").count() >= self.starts {
                let probe = http
                    .get(format!("{}/openapi.yaml", self.base()))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                if matches!(probe, Ok(ref r) if r.status() == 200) {
                    return Ok(t.elapsed());
                }
            }
            if t.elapsed() > READY_TIMEOUT {
                bail!(
                    "wrenn up not ready after {READY_TIMEOUT:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` and waits (bounded) for the daemon to exit.
    pub async fn signal(&mut self, signal: nix::sys::signal::Signal) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
        self.wait(&mut child).await
    }

    /// Waits for the daemon to exit by itself (a failure point's `kill`).
    pub async fn wait_exit(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.child = Some(child);
                bail!("wrenn up still running after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait(&mut self, child: &mut Child) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("wrenn up did not exit in time:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// A new account (signup) and its API key.
    pub async fn account(&self, name: &str) -> Result<String> {
        let http = reqwest::Client::new();
        let email = format!("{name}@example.com");
        let r = http
            .post(format!("{}/v1/auth/signup", self.base()))
            .json(&json!({"email": email, "password": "correct-horse-battery"}))
            .send()
            .await?;
        if r.status() != 201 {
            bail!("signup {email}: {}", r.status());
        }
        let auth: Value = r.json().await?;
        let r = http
            .post(format!("{}/v1/api-keys", self.base()))
            .bearer_auth(auth["token"].as_str().unwrap_or_default())
            .json(&json!({"name": "soak"}))
            .send()
            .await?;
        if r.status() != 201 {
            bail!("api key for {email}: {}", r.status());
        }
        let k: Value = r.json().await?;
        Ok(k["key"].as_str().unwrap_or_default().to_string())
    }
}

/// Ends every process of `dir` with SIGKILL and waits (bounded) until they are gone.
pub fn kill_all(dir: &Path) {
    for pid in processes_of(dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_of(dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        kill_all(&self.data_dir);
    }
}
