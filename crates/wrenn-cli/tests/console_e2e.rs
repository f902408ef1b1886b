//! The web console in a real browser against a real `wrenn up` with real microVMs: this test
//! starts the daemon (network prefix `wc`, slots from 9480, GitHub sign-in configured against
//! a stand-in GitHub on loopback) and runs `console/tests/console.e2e.mjs`, which drives
//! Debian's Chromium headless with `playwright-core` through sign up, an API key, a sandbox's
//! terminal and files, pause and resume, a snapshot and a sandbox from it, destroy, and GitHub
//! sign-in. Screenshots of every step are left in `target/console-screenshots/`.
//!
//! Needs root, the guest images (`WRENN_DATA_DIR`, default `/var/lib/wrenn`), a console built
//! into the binary and its npm packages (`scripts/build.sh` does both), and `/usr/bin/chromium`
//! (`scripts/deps.sh --with-test-deps`). Afterwards the daemon is stopped and no process of its
//! data dir may survive.
//!
//! Run: `scripts/build.sh && cargo test -p wrenn-cli --test console_e2e`.

mod machine;

use machine::{free_port, kill_processes_of, processes_of, scratch_data_dir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NET_PREFIX: &str = "wc";
const FIRST_SLOT: u32 = 9480;
/// Longest run of the browser script (each of its waits is bounded too).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const READY_TIMEOUT: Duration = Duration::from_secs(180);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The daemon; killed with everything of its data dir when dropped (a failed assertion).
struct Daemon {
    child: Child,
    data_dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_processes_of(&self.data_dir);
    }
}

fn log_tail(data_dir: &Path) -> String {
    let log = std::fs::read_to_string(data_dir.join("wrenn-up.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A plain HTTP GET over loopback: the status and body.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, out))
}

fn start_daemon(data_dir: &Path, listen: &str, github: &str) -> Daemon {
    let log = std::fs::File::create(data_dir.join("wrenn-up.log")).expect("daemon log");
    let child = Command::new(env!("CARGO_BIN_EXE_wrenn"))
        .arg("up")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", listen])
        .args(["--agent-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--net-prefix", NET_PREFIX])
        .args(["--first-slot", &FIRST_SLOT.to_string()])
        .env_remove("DATABASE_URL")
        .env_remove("WRENN_JWT_SECRET")
        .env_remove("OAUTH_REDIRECT_URL")
        .env("CP_PUBLIC_URL", format!("http://{listen}"))
        .env("GITHUB_CLIENT_ID", "console-e2e")
        .env("GITHUB_CLIENT_SECRET", "console-e2e-secret")
        .env("GITHUB_OAUTH_BASE_URL", github)
        .env("GITHUB_API_BASE_URL", github)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("spawn wrenn up");
    let mut d = Daemon {
        child,
        data_dir: data_dir.to_path_buf(),
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = d.child.try_wait() {
            panic!("wrenn up exited with {status}:\n{}", log_tail(&d.data_dir));
        }
        let log = std::fs::read_to_string(data_dir.join("wrenn-up.log")).unwrap_or_default();
        if log.contains("Wrenn is running at") && http_get(listen, "/openapi.yaml").is_some() {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "wrenn up not ready after {READY_TIMEOUT:?}:\n{}",
            log_tail(&d.data_dir)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the browser script (its output goes straight to this test's output).
fn run_script(base: &str, github_port: u16, shots: &Path) -> Result<(), String> {
    let console = repo_root().join("console");
    if !console.join("node_modules/playwright-core").is_dir() {
        return Err("console/node_modules is missing: run scripts/build.sh (npm ci)".into());
    }
    let mut child = Command::new("node")
        .arg("tests/console.e2e.mjs")
        .current_dir(&console)
        .env("WRENN_URL", base)
        .env("GITHUB_STUB_PORT", github_port.to_string())
        .env("WRENN_SCREENSHOTS", shots)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("start node: {e}"))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            eprintln!("[numbers] console browser run took {:?}", started.elapsed());
            return if status.success() {
                Ok(())
            } else {
                Err(format!(
                    "the browser run failed ({status}); see its steps above"
                ))
            };
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the browser run still ran after {SCRIPT_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn console_in_chromium_against_wrenn_up() {
    let data_dir = scratch_data_dir(&format!("console-{NET_PREFIX}"));

    let listen = format!("127.0.0.1:{}", free_port());
    let github_port = free_port();
    let started = Instant::now();
    let mut daemon = start_daemon(
        &data_dir,
        &listen,
        &format!("http://127.0.0.1:{github_port}"),
    );
    eprintln!("[numbers] wrenn up ready after {:?}", started.elapsed());
    let (status, page) = http_get(&listen, "/").expect("GET /");
    assert_eq!(status, 200, "{page}");
    assert!(
        !page.contains("was not built"),
        "the binary has no console: build it with scripts/build.sh"
    );

    let shots = repo_root().join("target/console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let outcome = run_script(&format!("http://{listen}"), github_port, &shots);

    // The script destroyed what it made: only the daemon may be left, and it stops cleanly.
    let pid = daemon.child.id() as i32;
    let vms: Vec<_> = processes_of(&data_dir)
        .into_iter()
        .filter(|(p, _)| *p != pid)
        .collect();
    // SAFETY: sending a signal has no memory effects.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(s) = daemon.child.try_wait().expect("wait for wrenn up") {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let left = processes_of(&data_dir);
    if let Err(e) = outcome {
        panic!("{e}\nwrenn up's log ends:\n{}", log_tail(&data_dir));
    }
    assert!(
        vms.is_empty(),
        "VMs left after the browser destroyed all: {vms:?}"
    );
    assert!(exit.is_some_and(|s| s.success()), "wrenn up exit: {exit:?}");
    assert!(left.is_empty(), "processes left after stopping: {left:?}");
    drop(daemon);
    let _ = std::fs::remove_dir_all(&data_dir);
}
