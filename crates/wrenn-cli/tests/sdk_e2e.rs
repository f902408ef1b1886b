//! The official Wrenn Python SDK (0.3.0, sync and async) against a real `wrenn up`: the
//! pytest suite in `tests/sdk` drives capsules, commands, files, snapshots, events, stats,
//! usage and metrics exactly as a user's program would, with real microVMs.
//!
//! Needs root, the guest images (`WRENN_DATA_DIR`, default `/var/lib/wrenn`) and the SDK's
//! virtualenv, which `scripts/sdk-env.sh` prepares (run here; a no-op when it is ready). The
//! daemon is the system harness's (`common`) on its own network prefix `sk` and slots from
//! 9850; the suite gets an account's API key and the base URL in `WRENN_API_KEY` and
//! `WRENN_BASE_URL`. Afterwards whatever the suite left is destroyed through the API, the
//! daemon stopped, and no VM of its data dir may survive.
//!
//! Run: `cargo test -p wrenn-cli --test sdk_e2e` (`WRENN_SDK_PYTEST_ARGS="-k files"` narrows
//! the Python suite).

mod common;

use common::{enter, rt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NET_PREFIX: &str = "sk";
const FIRST_SLOT: u32 = 9850;
/// Longest run of the whole Python suite (it also bounds each test itself).
const SUITE_TIMEOUT: Duration = Duration::from_secs(25 * 60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The virtualenv's python, from `scripts/sdk-env.sh` (its last line of output).
fn sdk_python() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/sdk-env.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/sdk-env.sh");
    assert!(out.status.success(), "scripts/sdk-env.sh failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let python = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(python.is_file(), "no python from sdk-env.sh: {stdout:?}");
    python
}

/// Runs pytest on `tests/sdk` (its output goes straight to this test's output); ends it
/// when it outlives [`SUITE_TIMEOUT`].
fn run_pytest(python: &Path, base: &str, key: &str) -> Result<(), String> {
    let mut args = vec![
        "-m".to_string(),
        "pytest".into(),
        "tests/sdk".into(),
        "-p".into(),
        "no:cacheprovider".into(),
        "-v".into(),
        "--tb=short".into(),
        "-rfE".into(),
    ];
    if let Ok(extra) = std::env::var("WRENN_SDK_PYTEST_ARGS") {
        args.extend(extra.split_whitespace().map(str::to_string));
    }
    let mut child = Command::new(python)
        .args(&args)
        .current_dir(repo_root())
        .env("WRENN_BASE_URL", base)
        .env("WRENN_API_KEY", key)
        .env_remove("WRENN_PROXY_DOMAIN")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("start pytest: {e}"))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            eprintln!("[numbers] SDK suite ran in {:?}", started.elapsed());
            return if status.success() {
                Ok(())
            } else {
                Err(format!(
                    "the SDK suite failed ({status}); see its report above"
                ))
            };
        }
        if started.elapsed() > SUITE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the SDK suite still ran after {SUITE_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn python_sdk_against_wrenn_up() {
    let python = sdk_python();
    common::use_slots(NET_PREFIX, FIRST_SLOT);
    rt().block_on(async {
        let ticket = enter().await;
        let s = ticket.suite;
        let (base, key) = (s.base.clone(), s.alice.key.clone());
        let py = python.clone();
        let outcome = tokio::task::spawn_blocking(move || run_pytest(&py, &base, &key))
            .await
            .expect("pytest runner");

        // Whatever the suite left (a failed test's capsules and templates), through the API.
        let api = s.api(&s.alice);
        let mut problems = Vec::new();
        let (st, list) = api.get("/v1/sandboxes").await;
        for c in list.as_array().into_iter().flatten() {
            let id = c["id"].as_str().unwrap_or_default();
            let (st, v) = api.delete(&format!("/v1/sandboxes/{id}")).await;
            if st != 204 {
                problems.push(format!("destroy {id}: {st} {v}"));
            }
        }
        if st != 200 {
            problems.push(format!("list capsules: {st} {list}"));
        }
        let (_, snaps) = api.get("/v1/snapshots?type=snapshot").await;
        for t in snaps.as_array().into_iter().flatten() {
            let name = t["name"].as_str().unwrap_or_default();
            let (st, v) = api.delete(&format!("/v1/snapshots/{name}")).await;
            if st != 204 {
                problems.push(format!("delete template {name}: {st} {v}"));
            }
        }
        drop(ticket);
        let x = common::enter_exclusive().await;
        let vms: Vec<_> = common::processes_of(&x.suite.data_dir)
            .into_iter()
            .filter(|(pid, _)| *pid as u32 != x.suite.daemon_pid())
            .collect();
        let status = x.suite.stop(nix::sys::signal::Signal::SIGTERM).await;
        let left = common::processes_of(&x.suite.data_dir);

        if let Err(e) = outcome {
            panic!("{e}");
        }
        assert!(
            problems.is_empty(),
            "clean-up after the suite: {problems:?}"
        );
        assert!(vms.is_empty(), "VMs left after destroying all: {vms:?}");
        assert!(status.success(), "wrenn up exit: {status}");
        assert!(left.is_empty(), "processes left after stopping: {left:?}");
        let _ = std::fs::remove_dir_all(&x.suite.data_dir);
    });
}
