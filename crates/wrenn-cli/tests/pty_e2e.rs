//! Interactive terminals end to end: the real `wrenn up` and real microVMs. The SDK's
//! `capsule.pty()` suite (`tests/sdk/test_pty.py`: input, output, resize, envs, cwd, exit
//! code, reconnect by tag with replay, a terminal surviving a pause and resume) runs when the
//! SDK's virtualenv can be prepared (`scripts/sdk-env.sh`); and `wrenn sandbox shell` is driven
//! in a tmux pane: a command's output, `stty size` following a pane resize, Ctrl-C
//! interrupting `sleep 100`, `python3` interactively when the image has it, and `exit 3`
//! making the CLI exit 3.
//!
//! Needs root, tmux and the guest images (`WRENN_DATA_DIR`, default `/var/lib/wrenn`) built
//! with this tree's envd. Slots 9550-9599, network prefix `pt`.
//! Run: `flock -o /tmp/wrenn-vm-tests.lock cargo test -p wrenn-cli --test pty_e2e`

mod common;

use common::{enter, rt};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The SDK virtualenv's python, or `None` when `scripts/sdk-env.sh` cannot prepare it.
fn sdk_python() -> Option<PathBuf> {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/sdk-env.sh"))
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let python = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    (out.status.success() && python.is_file()).then_some(python)
}

/// A tmux server of its own (socket named after this process), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Self {
        Tmux {
            socket: format!("wrenn-pty-e2e-{}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-J", "-S", "-200", "-t", "t"])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Waits until the pane shows `want` (60 s at most); returns the screen.
    fn wait_for(&self, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.screen();
            if s.contains(want) {
                return s;
            }
            assert!(Instant::now() < deadline, "no {want:?} on the pane:\n{s}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn shell_in_tmux(base: &str, key: &str, id: &str) {
    let tmux = Tmux::new();
    let cmd = format!(
        "{} sandbox shell {id}; echo CLI-EXIT=$?; sleep 600",
        env!("CARGO_BIN_EXE_wrenn")
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "120",
        "-y",
        "40",
        "-e",
        &format!("WRENN_BASE_URL={base}"),
        "-e",
        &format!("WRENN_API_KEY={key}"),
        &cmd,
    ]);
    tmux.run(&["set-option", "-t", "t", "window-size", "manual"]);
    // A command and its output (the line typed is echoed; the output is computed).
    tmux.keys(&["echo hello-$((6*7))", "Enter"]);
    tmux.wait_for("hello-42");
    tmux.keys(&["stty size", "Enter"]);
    tmux.wait_for("40 120");
    tmux.run(&["resize-window", "-t", "t", "-x", "100", "-y", "30"]);
    std::thread::sleep(Duration::from_millis(500));
    tmux.keys(&["stty size", "Enter"]);
    tmux.wait_for("30 100");
    // Ctrl-C reaches the guest's foreground job.
    tmux.keys(&["sleep 100", "Enter"]);
    std::thread::sleep(Duration::from_secs(2));
    let before = Instant::now();
    tmux.keys(&["C-c"]);
    tmux.keys(&["echo interrupted-$((1+1))", "Enter"]);
    tmux.wait_for("interrupted-2");
    assert!(before.elapsed() < Duration::from_secs(60));
    // Python interactively, when the image has it.
    tmux.keys(&[
        "command -v python3 >/dev/null && echo has-$((2+3))py || echo no-$((2+3))py",
        "Enter",
    ]);
    let s = tmux.wait_for("5py");
    if s.contains("has-5py") {
        tmux.keys(&["python3 -q", "Enter"]);
        tmux.wait_for(">>>");
        tmux.keys(&["print(6 * 7 + 100)", "Enter"]);
        tmux.wait_for("142");
        tmux.keys(&["exit()", "Enter"]);
    } else {
        eprintln!("[pty_e2e] no python3 in the guest image; its step skipped");
    }
    tmux.keys(&["exit 3", "Enter"]);
    let s = tmux.wait_for("CLI-EXIT=");
    assert!(s.contains("CLI-EXIT=3"), "{s}");
}

#[test]
fn terminals_in_real_vms() {
    common::use_slots("pt", 9550);
    let python = sdk_python();
    rt().block_on(async {
        let t = enter().await;
        let s = t.suite;
        let api = s.api(&s.alice);
        let (sb, _) = api.create(json!({})).await;
        let id = sb["id"].as_str().expect("id").to_string();
        let (base, key) = (s.base.clone(), s.alice.key.clone());
        let shell_id = id.clone();
        let shell = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(|| shell_in_tmux(&base, &key, &shell_id))
        })
        .await
        .expect("tmux runner");

        let sdk = match python {
            Some(py) => {
                let (base, key) = (s.base.clone(), s.alice.key.clone());
                tokio::task::spawn_blocking(move || {
                    Command::new(py)
                        .args([
                            "-m",
                            "pytest",
                            "tests/sdk/test_pty.py",
                            "-p",
                            "no:cacheprovider",
                        ])
                        .args(["-v", "--tb=short"])
                        .current_dir(repo_root())
                        .env("WRENN_BASE_URL", base)
                        .env("WRENN_API_KEY", key)
                        .env("PYTHONDONTWRITEBYTECODE", "1")
                        .stdin(Stdio::null())
                        .status()
                        .expect("run pytest")
                })
                .await
                .ok()
            }
            None => {
                eprintln!("[pty_e2e] no SDK virtualenv; the SDK's pty tests skipped");
                None
            }
        };

        api.destroy(&id).await;
        drop(t);
        let x = common::enter_exclusive().await;
        let status = x.suite.stop(nix::sys::signal::Signal::SIGTERM).await;
        let _ = std::fs::remove_dir_all(&x.suite.data_dir);
        if let Err(p) = shell {
            std::panic::resume_unwind(p);
        }
        if let Some(st) = sdk {
            assert!(st.success(), "the SDK's pty tests failed ({st}); see above");
        }
        assert!(status.success(), "wrenn up exit: {status}");
    });
}
