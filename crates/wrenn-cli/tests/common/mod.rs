//! Harness of the system end-to-end tests: one real `wrenn up` process (control plane and host
//! agent, SQLite) on a scratch data directory beside the guest images, driven over loopback
//! HTTP. It owns the daemon's life (start, restart with SIGTERM or SIGKILL, stop), the test
//! accounts, and the clean-up of whatever a killed earlier run left behind; it does not judge
//! behaviour (the tests do).
//!
//! Tests share the daemon: each holds a [`Ticket`] (a read guard) while it uses it; a test that
//! restarts the daemon takes it exclusively. The daemon's VMs are found by the data directory
//! that appears on their command lines.

#![allow(dead_code)]

mod api;
#[path = "../machine/mod.rs"]
mod machine;

pub use api::Api;
#[allow(unused_imports)]
pub use machine::{assert_no_vm_files, processes_of};
use machine::{free_port, kill_processes_of, scratch_data_dir};

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{OnceCell, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Fixed prefix and first slot: a new run's agent removes the namespaces a killed run left.
/// These are system_e2e's; another test binary picks its own with [`use_slots`].
pub const NET_PREFIX: &str = "sx";
pub const FIRST_SLOT: u32 = 9600;
static SLOTS: OnceLock<(&'static str, u32)> = OnceLock::new();

/// Gives the daemon of this test binary its own network prefix and first slot (its data dir
/// is named after the prefix); call before the first [`enter`].
pub fn use_slots(prefix: &'static str, first_slot: u32) {
    let set = *SLOTS.get_or_init(|| (prefix, first_slot));
    assert_eq!(
        set,
        (prefix, first_slot),
        "slots chosen after the daemon started"
    );
}

/// The network prefix and first slot of this binary's daemon.
pub fn slots() -> (&'static str, u32) {
    *SLOTS.get_or_init(|| (NET_PREFIX, FIRST_SLOT))
}
/// Auto-pause reaper interval of the daemon under test.
pub const REAPER_INTERVAL_MS: u64 = 500;
/// Default timeout of one API request (VM creation under TCG with other tests running).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for the daemon to answer after a (re)start.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest wait for the daemon to exit after SIGTERM or SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a test waits for its turn on the shared daemon.
const LOCK_TIMEOUT: Duration = Duration::from_secs(45 * 60);

pub const PASSWORD: &str = "correct-horse-battery";

/// The runtime every test runs on (the suite's clients and tasks outlive single tests).
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// One API user with a JWT and an API key.
#[derive(Clone, Debug)]
pub struct Account {
    pub email: String,
    pub token: String,
    pub team_id: String,
    pub key: String,
}

/// The shared daemon and what the tests need to talk to it.
pub struct Suite {
    pub data_dir: PathBuf,
    pub listen: String,
    pub agent_listen: String,
    pub base: String,
    pub http: reqwest::Client,
    /// The account most tests use.
    pub alice: Account,
    /// An account of another team (isolation checks).
    pub bob: Account,
    daemon: Mutex<Option<Child>>,
    /// Starts of the daemon so far (each prints one "running" line).
    starts: AtomicUsize,
    lock: RwLock<()>,
    accounts: Mutex<Vec<Account>>,
}

/// Tests that have started and not yet finished (see [`Ticket`]).
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
static SUITE: OnceCell<Suite> = OnceCell::const_new();

/// Counts a running test from its first line until it is dropped (also when it panics).
pub struct Activity;

impl Activity {
    pub fn begin() -> Self {
        ACTIVE.fetch_add(1, Ordering::SeqCst);
        Activity
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Shared use of the daemon for one test.
pub struct Ticket {
    pub suite: &'static Suite,
    _guard: RwLockReadGuard<'static, ()>,
    _activity: Activity,
}

/// Sole use of the daemon (restarts).
pub struct Exclusive {
    pub suite: &'static Suite,
    _guard: RwLockWriteGuard<'static, ()>,
    _activity: Activity,
}

/// Starts a test that shares the daemon.
pub async fn enter() -> Ticket {
    let activity = Activity::begin();
    let suite = suite().await;
    let guard = tokio::time::timeout(LOCK_TIMEOUT, suite.lock.read())
        .await
        .expect("waited too long for the shared daemon");
    Ticket {
        suite,
        _guard: guard,
        _activity: activity,
    }
}

/// Starts a test that needs the daemon alone.
pub async fn enter_exclusive() -> Exclusive {
    let activity = Activity::begin();
    let suite = suite().await;
    let guard = tokio::time::timeout(LOCK_TIMEOUT, suite.lock.write())
        .await
        .expect("waited too long for sole use of the daemon");
    Exclusive {
        suite,
        _guard: guard,
        _activity: activity,
    }
}

/// The suite, if some test has started it.
pub fn started_suite() -> Option<&'static Suite> {
    SUITE.get()
}

/// Waits until no other test is running (the caller's own activity excluded) and stays so
/// for a moment, so that a test just dispatched has counted itself.
pub async fn wait_for_other_tests() {
    let deadline = Instant::now() + LOCK_TIMEOUT;
    let mut quiet_since: Option<Instant> = None;
    loop {
        if ACTIVE.load(Ordering::SeqCst) == 0 {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(2) {
                return;
            }
        } else {
            quiet_since = None;
        }
        assert!(
            Instant::now() < deadline,
            "other tests still running after {LOCK_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn suite() -> &'static Suite {
    SUITE.get_or_init(start_suite).await
}

async fn start_suite() -> Suite {
    // A killed earlier run's processes (found by this data dir) are ended, then afresh.
    let data_dir = scratch_data_dir(&format!("system-{}", slots().0));
    register_exit_cleanup(&data_dir);

    let listen = format!("127.0.0.1:{}", free_port());
    let agent_listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}");
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let started = Instant::now();
    let child = spawn_daemon(&data_dir, &listen, &agent_listen);
    let mut suite = Suite {
        data_dir,
        listen,
        agent_listen,
        base,
        http,
        alice: placeholder_account(),
        bob: placeholder_account(),
        daemon: Mutex::new(Some(child)),
        starts: AtomicUsize::new(0),
        lock: RwLock::new(()),
        accounts: Mutex::new(Vec::new()),
    };
    suite.wait_ready().await;
    eprintln!("[numbers] wrenn up ready after {:?}", started.elapsed());
    suite.alice = suite.new_account("alice").await;
    suite.bob = suite.new_account("bob").await;
    suite
}

fn placeholder_account() -> Account {
    Account {
        email: String::new(),
        token: String::new(),
        team_id: String::new(),
        key: String::new(),
    }
}

fn spawn_daemon(data_dir: &Path, listen: &str, agent_listen: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("wrenn-up.log"))
        .expect("open daemon log");
    let log2 = log.try_clone().expect("clone log handle");
    Command::new(env!("CARGO_BIN_EXE_wrenn"))
        .arg("up")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", listen, "--agent-listen", agent_listen])
        .args(["--net-prefix", slots().0])
        .args(["--first-slot", &slots().1.to_string()])
        .args(["--reaper-interval-ms", &REAPER_INTERVAL_MS.to_string()])
        // SQLite in the data dir, the persisted JWT secret, no OAuth.
        .env_remove("DATABASE_URL")
        .env_remove("WRENN_JWT_SECRET")
        .env_remove("GITHUB_CLIENT_ID")
        .env_remove("GITHUB_CLIENT_SECRET")
        .env_remove("CP_PUBLIC_URL")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .expect("spawn wrenn up")
}

static EXIT_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn kill_leftovers_at_exit() {
    if let Some(dir) = EXIT_DIR.get() {
        kill_processes_of(dir);
    }
}

/// When the test binary exits without the teardown test having run (a filtered run), the
/// daemon and its VMs are ended instead of being left running.
fn register_exit_cleanup(data_dir: &Path) {
    if EXIT_DIR.set(data_dir.to_path_buf()).is_ok() {
        // SAFETY: registers a plain `extern "C"` function without arguments; it only reads a
        // static and signals processes.
        unsafe {
            libc::atexit(kill_leftovers_at_exit);
        }
    }
}

/// Reads `VmRSS` (bytes) of a process.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl Suite {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The daemon's process id.
    pub fn daemon_pid(&self) -> u32 {
        self.daemon
            .lock()
            .unwrap()
            .as_ref()
            .expect("daemon is running")
            .id()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data_dir.join("wrenn-up.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits until the daemon says it is running (its warm snapshot made; every start adds a
    /// line to the appended log) and the public API answers; fails early when it exits.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let starts = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
        loop {
            if let Some(status) = self
                .daemon
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "wrenn up exited with {status} during start:\n{}",
                    self.log_tail()
                );
            }
            let probe = self
                .http
                .get(self.url("/openapi.yaml"))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            let log =
                std::fs::read_to_string(self.data_dir.join("wrenn-up.log")).unwrap_or_default();
            let running = log.matches("Wrenn is running at").count() >= starts;
            if running && matches!(probe, Ok(ref r) if r.status() == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "wrenn up not ready after {READY_TIMEOUT:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends `signal` to the daemon and waits (bounded) for it to exit; returns its status.
    pub async fn stop(&self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self
            .daemon
            .lock()
            .unwrap()
            .take()
            .expect("daemon is running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)
            .expect("signal wrenn up");
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for wrenn up") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "wrenn up did not exit within {EXIT_TIMEOUT:?} of {signal}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts the daemon again on the same data dir and addresses.
    pub async fn start_again(&self) -> Duration {
        let started = Instant::now();
        let child = spawn_daemon(&self.data_dir, &self.listen, &self.agent_listen);
        *self.daemon.lock().unwrap() = Some(child);
        self.wait_ready().await;
        started.elapsed()
    }

    /// A new account (signup) with one API key.
    pub async fn new_account(&self, name: &str) -> Account {
        let email = format!("{name}@example.com");
        let r = self
            .http
            .post(self.url("/v1/auth/signup"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .expect("signup");
        assert_eq!(r.status(), 201, "signup {email}");
        let auth: Value = r.json().await.expect("signup body");
        let token = auth["token"].as_str().expect("token").to_string();
        let r = self
            .http
            .post(self.url("/v1/api-keys"))
            .bearer_auth(&token)
            .json(&json!({"name": "e2e"}))
            .send()
            .await
            .expect("create key");
        assert_eq!(r.status(), 201, "create key for {email}");
        let k: Value = r.json().await.expect("key body");
        let account = Account {
            email,
            token,
            team_id: auth["team_id"].as_str().expect("team_id").to_string(),
            key: k["key"].as_str().expect("plaintext key").to_string(),
        };
        self.accounts.lock().unwrap().push(account.clone());
        account
    }

    /// Every account made with [`Suite::new_account`].
    pub fn accounts(&self) -> Vec<Account> {
        self.accounts.lock().unwrap().clone()
    }

    /// A client acting with `account`'s API key.
    pub fn api(&'static self, account: &Account) -> Api {
        Api {
            suite: self,
            key: account.key.clone(),
        }
    }
}
