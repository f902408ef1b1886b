//! Runs the repository README: every ```sh block, in order, in one `bash -euo pipefail`
//! session with a fresh HOME and the built `wrenn` on PATH.
//!
//! Default: against the real control plane with the simulated host agent (fast, no VMs).
//! `WRENN_README_E2E=1`: against a real `wrenn up` child process with a scratch data
//! directory beside the guest images (root, images built; `WRENN_DATA_DIR`, default
//! `/var/lib/wrenn`), its own ports, network prefix `rd` and slots from 9400.

mod machine;
mod support;

use machine::{free_port, images_root};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{rt, wrenn_bin, SimServer};

fn readme() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// The contents of the ```sh blocks, in order.
fn sh_blocks(md: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in md.lines() {
        match &mut current {
            None if line.trim_end() == "```sh" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.push(current.take().unwrap()),
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
        }
    }
    assert!(current.is_none(), "unclosed ```sh block in README.md");
    blocks
}

#[test]
fn readme_starts_with_the_two_commands() {
    let md = readme();
    let head: String = md.lines().take(6).collect::<Vec<_>>().join("\n");
    assert!(head.contains("sudo ./scripts/up"), "{head}");
    assert!(head.contains("sudo ./scripts/test"), "{head}");
    for doc in ["docs/ARCHITECTURE.md", "docs/oauth-github.md"] {
        assert!(md.contains(&format!("]({doc})")), "README links {doc}");
    }
    for script in ["scripts/up", "scripts/test"] {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(script);
        assert!(p.exists(), "{script} exists");
    }
}

#[test]
fn readme_blocks_run_in_order() {
    let blocks = sh_blocks(&readme());
    assert!(blocks.len() >= 5, "README has its runnable blocks");
    let mut script = String::new();
    for (i, b) in blocks.iter().enumerate() {
        script.push_str(&format!("echo '### README block {}' >&2\n{b}", i + 1));
    }

    let e2e = std::env::var("WRENN_README_E2E").is_ok_and(|v| v == "1");
    let (base, up) = if e2e {
        let up = Up::start();
        (up.base.clone(), Some(up))
    } else {
        (String::new(), None)
    };
    let sim = (!e2e).then(SimServer::start);
    let base = sim.as_ref().map_or(base, |s| s.base.clone());

    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let script_path = work.path().join("readme.sh");
    std::fs::write(&script_path, &script).unwrap();
    let bin_dir = wrenn_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let started = Instant::now();
    let out = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg(&script_path)
        .current_dir(work.path())
        .env("HOME", home.path())
        .env("PATH", path)
        .env("WRENN_BASE_URL", &base)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("WRENN_API_KEY")
        .env_remove("WRENN_PASSWORD")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Stops `wrenn up` (and destroys what the README left) before judging.
    drop(up);
    assert!(
        out.status.success(),
        "README failed ({:?}) after {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status,
        started.elapsed()
    );

    // What a reader is promised: the answer from the CLI (twice) and from curl (twice).
    let cli_answers = stdout.lines().filter(|l| *l == "42").count();
    assert_eq!(cli_answers, 2, "{stdout}");
    let curl_answers = stdout
        .lines()
        .filter(|l| l.contains(r#""stdout":"42\n""#))
        .count();
    assert_eq!(curl_answers, 2, "{stdout}");
    // The file written before pause and snapshot is still there after both.
    let file_reads = stdout
        .lines()
        .filter(|l| *l == "state that survives")
        .count();
    assert_eq!(file_reads, 3, "{stdout}");
    // Shown with --nocapture: what a reader would see.
    eprintln!("{stdout}");
    eprintln!(
        "README ran in {:?} against {}",
        started.elapsed(),
        if e2e {
            "wrenn up"
        } else {
            "the simulated agent"
        }
    );
}

/// A real `wrenn up` child process on its own ports and scratch data directory.
struct Up {
    child: Child,
    base: String,
    agent_base: String,
    data_dir: PathBuf,
}

impl Up {
    fn start() -> Up {
        let images = images_root();
        assert!(
            images.join("images").is_dir(),
            "no guest images under {} (run scripts/test or `wrenn images build`)",
            images.display()
        );
        let data_dir = images.join("e2e").join(format!(
            "readme-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
                % 1_000_000
        ));
        std::fs::create_dir_all(&data_dir).unwrap();
        std::os::unix::fs::symlink(images.join("images"), data_dir.join("images")).unwrap();
        let (port, agent_port) = (free_port(), free_port());
        let log = std::fs::File::create(data_dir.join("up.log")).unwrap();
        let child = Command::new(wrenn_bin())
            .args(["up", "--data-dir"])
            .arg(&data_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--agent-listen", &format!("127.0.0.1:{agent_port}")])
            .args(["--net-prefix", "rd", "--first-slot", "9400"])
            .env_remove("DATABASE_URL")
            .env_remove("WRENN_JWT_SECRET")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start wrenn up");
        let mut up = Up {
            child,
            base: format!("http://127.0.0.1:{port}"),
            agent_base: format!("http://127.0.0.1:{agent_port}"),
            data_dir,
        };
        up.wait_ready();
        up
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("up.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let url = format!("{}/openapi.yaml", self.base);
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("wrenn up exited ({status}):\n{}", self.log());
            }
            let ok = rt().block_on(async {
                reqwest::get(&url)
                    .await
                    .is_ok_and(|r| r.status().is_success())
            });
            // Ready when it says so: its warm snapshot made, so the README's first create
            // restores it.
            if ok && self.log().contains("Wrenn is running at") {
                return;
            }
            if Instant::now() > deadline {
                panic!("wrenn up not ready in time:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Up {
    /// Destroys every sandbox on the agent (whatever the README left behind), stops the
    /// process and removes the scratch directory.
    fn drop(&mut self) {
        let token = std::fs::read_to_string(self.data_dir.join("agent_token")).unwrap_or_default();
        let agent = self.agent_base.clone();
        rt().block_on(async {
            let http = reqwest::Client::new();
            let Ok(r) = http
                .get(format!("{agent}/v1/sandboxes"))
                .bearer_auth(token.trim())
                .send()
                .await
            else {
                return;
            };
            let list: serde_json::Value = r.json().await.unwrap_or_default();
            for sb in list.as_array().into_iter().flatten() {
                if let Some(id) = sb["id"].as_str() {
                    let _ = http
                        .delete(format!("{agent}/v1/sandboxes/{id}"))
                        .bearer_auth(token.trim())
                        .send()
                        .await;
                }
            }
        });
        // SAFETY: sending SIGTERM to our own child process by its pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

#[test]
fn sh_blocks_are_extracted_in_order() {
    let md = "x\n```sh\na\nb\n```\n```text\nno\n```\n```sh\nc\n```\n";
    assert_eq!(sh_blocks(md), ["a\nb\n", "c\n"]);
}
