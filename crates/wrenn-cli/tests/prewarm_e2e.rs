//! "Ready means ready": a real `wrenn up` (root, guest images built; `WRENN_DATA_DIR`, default
//! `/var/lib/wrenn`) on a scratch data directory of its own, network prefix `pw`, slots from
//! 9300. It prepares the warm snapshot of the default create at start and prints its "running"
//! line only once that snapshot is on disk; creates sent while it is being made wait for it and
//! boot nothing themselves; a create after the "running" line restores; a restart on the same
//! data directory finds the snapshot and boots nothing. Judged by what the daemon's log and data
//! directory show (cold boots, the order of lines, the snapshot's files), not by timing.

mod machine;

use machine::{free_port, kill_processes_of, scratch_data_dir};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RUNNING: &str = "Wrenn is running at";
const COLD_BOOT: &str = "warm snapshot of minimal: cold boot";
const SAVED: &str = "warm snapshot of minimal: saved as";
const PREPARING: &str = "==> preparing the warm snapshot of minimal (1 vCPU, 512 MB)";
/// Longest wait for the API to answer, and for the "running" line (a cold boot under TCG).
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// A `wrenn up` child process; killed with its VMs, and its data directory removed, when
/// dropped (also when the test fails).
struct Up {
    child: Option<Child>,
    data_dir: PathBuf,
    base: String,
    agent_listen: String,
}

impl Up {
    fn new() -> Up {
        let data_dir = scratch_data_dir(&format!("prewarm-{}", std::process::id()));
        Up {
            child: None,
            data_dir,
            base: format!("http://127.0.0.1:{}", free_port()),
            agent_listen: format!("127.0.0.1:{}", free_port()),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.join("up.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts `wrenn up`; stdout and stderr go to one log, appended across restarts.
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_wrenn"))
            .arg("up")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", self.base.trim_start_matches("http://")])
            .args(["--agent-listen", &self.agent_listen])
            .args(["--net-prefix", "pw", "--first-slot", "9300"])
            .env_remove("DATABASE_URL")
            .env_remove("WRENN_JWT_SECRET")
            .env_remove("WRENN_PREWARM")
            .env_remove("WRENN_NO_PREWARM")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start wrenn up");
        self.child = Some(child);
    }

    fn assert_alive(&mut self) {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!("wrenn up exited ({status}):\n{}", self.log());
        }
    }

    /// Waits until the public API answers (it does before the warm snapshot is ready).
    async fn wait_api(&mut self, http: &reqwest::Client) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.assert_alive();
            let r = http
                .get(format!("{}/openapi.yaml", self.base))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if matches!(r, Ok(ref r) if r.status() == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "no API:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the log has `n` "running" lines; returns the log as it was then.
    async fn wait_running(&mut self, n: usize) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.assert_alive();
            let log = self.log();
            if log.matches(RUNNING).count() >= n {
                return log;
            }
            assert!(Instant::now() < deadline, "not running:\n{log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, and a clean exit within a minute.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "no exit:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(child.wait().unwrap().success(), "{}", self.log());
    }

    /// The published warm snapshots of `minimal` at 1 vCPU and 512 MB (their `meta.json`).
    fn warm_snapshots(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.data_dir.join("warm"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("minimal-1x512-"))
                            && p.join("meta.json").is_file()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        kill_processes_of(&self.data_dir);
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Signs up and makes an API key; returns the key.
async fn api_key(http: &reqwest::Client, base: &str) -> String {
    let r = http
        .post(format!("{base}/v1/auth/signup"))
        .json(&json!({"email": "prewarm@example.com", "password": "correct-horse-battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = http
        .post(format!("{base}/v1/api-keys"))
        .bearer_auth(token)
        .json(&json!({"name": "prewarm"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Creates a sandbox with the defaults (the prewarmed size); its id once it runs.
async fn create(http: reqwest::Client, base: String, key: String) -> String {
    let r = http
        .post(format!("{base}/v1/sandboxes"))
        .header("x-api-key", key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(
        (
            v["template"].as_str(),
            v["vcpus"].as_u64(),
            v["memory_mb"].as_u64()
        ),
        (Some("minimal"), Some(1), Some(512)),
        "{v}"
    );
    v["id"].as_str().unwrap().to_string()
}

/// Index of the first line containing `needle`.
fn line_of(log: &str, needle: &str) -> usize {
    log.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}:\n{log}"))
}

#[test]
fn up_is_running_only_once_the_default_warm_snapshot_is_made_and_creates_share_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(START_TIMEOUT)
            .build()
            .unwrap();
        let mut up = Up::new();
        up.start();
        up.wait_api(&http).await;
        // The API answers while the snapshot is made: two creates arrive during preparation.
        let key = api_key(&http, &up.base).await;
        let early_log = up.log();
        let early: Vec<_> = (0..2)
            .map(|_| tokio::spawn(create(http.clone(), up.base.clone(), key.clone())))
            .collect();
        let log = up.wait_running(1).await;
        // The snapshot was on disk before "running" was printed, and the log says so in order.
        assert_eq!(up.warm_snapshots().len(), 1, "{log}");
        let preparing = line_of(&log, PREPARING);
        let saved = line_of(&log, SAVED);
        assert!(preparing < saved && saved < line_of(&log, RUNNING), "{log}");
        let mut ids = Vec::new();
        for t in early {
            ids.push(t.await.unwrap());
        }
        if early_log.contains(RUNNING) {
            eprintln!("note: the snapshot was ready before the early creates were sent");
        }
        ids.push(create(http.clone(), up.base.clone(), key.clone()).await);
        // One cold boot in all: the creates during preparation waited for it, the one after
        // restored from it.
        let log = up.log();
        assert_eq!(log.matches(COLD_BOOT).count(), 1, "{log}");
        assert_eq!(up.warm_snapshots().len(), 1, "{log}");
        for id in &ids {
            let r = http
                .delete(format!("{}/v1/sandboxes/{id}", up.base))
                .header("x-api-key", &key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 204);
        }

        // A restart on the same data directory finds the snapshot: no boot, ready at once.
        up.stop();
        up.start();
        let log = up.wait_running(2).await;
        assert_eq!(log.matches(COLD_BOOT).count(), 1, "{log}");
        assert!(
            log.contains("warm snapshot of minimal (1 vCPU, 512 MB): ready (made before)"),
            "{log}"
        );
        up.stop();
    });
}
