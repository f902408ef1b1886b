//! The agent never loses a sandbox: end-to-end with real microVMs, the agent's internal API
//! served by a child process (this test binary run again, see [`serve_agent_for_durability`])
//! that a client can give up on and that a failure point can kill with SIGKILL mid-operation.
//! After each kill a new agent starts on the same data dir (as a restarted service would) and
//! the sandbox must be usable (running: exec works and a file written before is there; paused:
//! resume works and the file is there) or in `error` with its files kept, with no QEMU of the
//! data dir that no running sandbox owns.
//!
//! One sandbox is carried through every step (a cold boot of the warm snapshot is paid once);
//! the steps run in order in one test. Needs root and the guest images (`WRENN_DATA_DIR`,
//! default `/var/lib/wrenn`), like `vm_e2e.rs`.

use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use wrenn_agent::images::NoProgress;
use wrenn_agent::net::NetConfig;
use wrenn_agent::startup::{self, AgentConfig};

mod common;

use common::child::{self, ChildAgent};
use common::{scratch_dir, TOKEN};

/// Fixed prefix and slots: a run cleans up whatever a killed earlier run left behind.
const PREFIX: &str = "ed";
const FIRST_SLOT: u32 = 9500;
/// The child agent's data dir; set only in the child.
const CHILD_DIR_VAR: &str = "WRENN_DURABILITY_AGENT_DIR";

fn agent_config(dir: &Path) -> AgentConfig {
    let mut cfg = AgentConfig::new(dir.to_path_buf(), TOKEN.into());
    cfg.net = NetConfig {
        prefix: PREFIX.into(),
        first_slot: FIRST_SLOT,
        max_slots: 40,
        pool_size: 1,
        ..NetConfig::default()
    };
    cfg
}

/// The child: an agent on the data dir named by [`CHILD_DIR_VAR`] (see
/// [`common::child::serve_child`]). Does nothing in a normal run.
#[test]
#[ignore = "run by durability_e2e as its child agent"]
fn serve_agent_for_durability() {
    child::serve_child(CHILD_DIR_VAR, agent_config);
}

impl ChildAgent {
    /// Starts an agent on `dir` with the failure points of `failpoints` armed.
    async fn start(dir: &Path, failpoints: &str) -> ChildAgent {
        ChildAgent::spawn(
            "serve_agent_for_durability",
            CHILD_DIR_VAR,
            dir,
            &[("WRENN_FAILPOINTS", failpoints)],
            Duration::from_secs(180),
        )
        .await
    }

    /// Sends a request over a connection of its own and gives up on it (closes the
    /// connection) after `after` ms or when the answer ends, as an impatient client does. The
    /// request is written whole before the wait, so the agent has it.
    async fn give_up(&self, method: reqwest::Method, path: &str, body: Option<Value>, after: u64) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.base.trim_start_matches("http://");
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_millis(after), conn.read_to_end(&mut answer)).await;
    }

    async fn post(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, None).await
    }

    async fn status(&self, id: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, &format!("/v1/sandboxes/{id}"), None)
            .await
    }

    /// Waits until the sandbox is `want` (an operation a client gave up on finishing).
    async fn wait_status(&self, id: &str, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let (_, v) = self.status(id).await;
            if v["status"] == want {
                return v;
            }
            assert!(Instant::now() < deadline, "{id} never became {want}: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn sh(&self, id: &str, script: &str) -> String {
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{id}/exec"),
                Some(json!({"cmd": "sh", "args": ["-c", script], "timeout_sec": 60})),
            )
            .await;
        assert_eq!(s, 200, "exec {script:?}: {v}");
        assert_eq!(v["exit_code"], 0, "script {script:?} failed: {v}");
        v["stdout"].as_str().unwrap().to_string()
    }

    async fn pause(&self, id: &str) {
        let (s, v) = self.post(&format!("/v1/sandboxes/{id}/pause")).await;
        assert_eq!(s, 200, "pause: {v}");
    }

    async fn resume(&self, id: &str) {
        let (s, v) = self.post(&format!("/v1/sandboxes/{id}/resume")).await;
        assert_eq!(s, 200, "resume: {v}");
    }

    /// The sandbox runs, answers exec and still has the file written at the start.
    async fn assert_usable(&self, id: &str) {
        assert_eq!(self.sh(id, "cat /root/kept").await, "kept\n");
    }
}

impl ChildAgent {
    /// Waits (up to 30 s) until the guest's wall clock is within 3 s of the host's.
    async fn assert_clock_set(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let guest: i64 = self.sh(id, "date +%s").await.trim().parse().unwrap();
            let host = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            if (guest - host).abs() <= 3 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "guest clock {guest} stays {}s off the host's",
                host - guest
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn create_body(id: &str) -> Value {
    json!({"id": id, "template": "minimal", "vcpus": 1, "memory_mb": 256})
}

fn new_id() -> String {
    format!("sb-d{:06}", rand::random::<u32>() % 1_000_000)
}

/// The sandboxes some live QEMU of the data dir runs, found as the agent records them: by the
/// pid file in the sandbox's directory (a clone taken from a warm pool names its `pool/`
/// directory on its command line, not the sandbox's), else by the sandbox directory its
/// command line names (started, pid file not yet written). Pooled clones (a pid file in
/// `pool/`, or `pool/` on the command line) run no sandbox and are not listed.
fn qemu_sandboxes(dir: &Path) -> Vec<String> {
    let pid_files = |sub: &str| -> Vec<(u32, String)> {
        std::fs::read_dir(dir.join(sub))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let pid = std::fs::read_to_string(e.path().join("qemu.pid")).ok()?;
                Some((
                    pid.trim().parse().ok()?,
                    e.file_name().to_string_lossy().into(),
                ))
            })
            .collect()
    };
    let (sandboxes, pooled) = (pid_files("sandboxes"), pid_files("pool"));
    let prefix = |sub: &str| format!("{}/", dir.join(sub).display());
    let (in_sandboxes, in_pool) = (prefix("sandboxes"), prefix("pool"));
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.contains("qemu-system")) {
            continue;
        }
        let named = |p: &str| {
            args.iter().find_map(|a| {
                let (_, rest) = a.split_once(p)?;
                rest.split('/').next().map(str::to_string)
            })
        };
        let id = if let Some((_, id)) = sandboxes.iter().find(|(p, _)| *p == pid) {
            id.clone()
        } else if pooled.iter().any(|(p, _)| *p == pid) || named(&in_pool).is_some() {
            continue;
        } else if let Some(id) = named(&in_sandboxes) {
            id
        } else {
            continue;
        };
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out.sort();
    out
}

/// Every QEMU of the data dir belongs to a running sandbox, and every running one has one.
async fn assert_no_orphan_qemu(a: &ChildAgent, dir: &Path) {
    let (_, list) = a.call(reqwest::Method::GET, "/v1/sandboxes", None).await;
    let mut running: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "running")
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    running.sort();
    assert_eq!(
        qemu_sandboxes(dir),
        running,
        "QEMUs against running sandboxes"
    );
}

/// A failure point kills the agent during an operation on `id`; a new agent must find the
/// sandbox in one of `allowed` states with nothing orphaned. Returns the new agent and the
/// status found.
async fn kill_at(
    dir: &Path,
    a: ChildAgent,
    point: &str,
    id: &str,
    op: &str,
    allowed: &[&str],
) -> (ChildAgent, String) {
    a.kill();
    let a = ChildAgent::start(dir, &format!("{point}=kill")).await;
    a.give_up(
        reqwest::Method::POST,
        &format!("/v1/sandboxes/{id}/{op}"),
        None,
        180_000,
    )
    .await;
    a.wait_killed().await;
    let a = ChildAgent::start(dir, "").await;
    let (s, v) = a.status(id).await;
    assert_eq!(s, 200, "after {point}: {v}");
    let status = v["status"].as_str().unwrap().to_string();
    assert!(
        allowed.contains(&status.as_str()),
        "after {point}: {v} (allowed {allowed:?})"
    );
    assert_no_orphan_qemu(&a, dir).await;
    (a, status)
}

#[test]
fn operations_survive_dropped_clients_and_agent_crashes() {
    if std::env::var_os(CHILD_DIR_VAR).is_some() {
        return; // in the child agent
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = scratch_dir("durability");
        let a = ChildAgent::start(&dir, "").await;
        let id = new_id();
        // A client that gives up on a create (here the first, which boots the warm snapshot):
        // the create runs on and the sandbox is usable.
        a.give_up(
            reqwest::Method::POST,
            "/v1/sandboxes",
            Some(create_body(&id)),
            20,
        )
        .await;
        a.wait_status(&id, "running").await;
        a.sh(&id, "echo kept > /root/kept && sync").await;

        // A client that gives up on a pause: the pause finishes; the sandbox is not wedged
        // (a second pause is a conflict, not a failure), and it resumes with its file.
        a.give_up(
            reqwest::Method::POST,
            &format!("/v1/sandboxes/{id}/pause"),
            None,
            20,
        )
        .await;
        a.wait_status(&id, "paused").await;
        let (s, v) = a.post(&format!("/v1/sandboxes/{id}/pause")).await;
        assert_eq!(s, 409, "second pause: {v}");
        a.resume(&id).await;
        a.assert_usable(&id).await;

        // A client that gives up on a resume: the resume finishes.
        a.pause(&id).await;
        a.give_up(
            reqwest::Method::POST,
            &format!("/v1/sandboxes/{id}/resume"),
            None,
            20,
        )
        .await;
        a.wait_status(&id, "running").await;
        a.assert_usable(&id).await;
        assert_no_orphan_qemu(&a, &dir).await;

        // A destroy during a slow create waits for it and leaves nothing behind.
        a.kill();
        let a = ChildAgent::start(&dir, "agent.create.after_register=sleep(3000)").await;
        let other = new_id();
        let creating = {
            let req = a
                .request(reqwest::Method::POST, "/v1/sandboxes")
                .json(&create_body(&other));
            tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (s, v) = a.status(&other).await;
        assert_eq!((s, v["status"].as_str()), (200, Some("pending")), "{v}");
        let (s, v) = a
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/sandboxes/{other}"),
                None,
            )
            .await;
        assert_eq!(s, 204, "destroy during create: {v}");
        let _ = creating.await;
        let (s, _) = a.status(&other).await;
        assert_eq!(s, 404);
        assert!(!dir.join("sandboxes").join(&other).exists());
        assert!(!qemu_sandboxes(&dir).contains(&other));
        assert_no_orphan_qemu(&a, &dir).await;

        // Killed after the state is saved (QEMU still there, guest stopped): the restart
        // finishes the pause.
        let (a, status) =
            kill_at(&dir, a, "agent.pause.after_save", &id, "pause", &["paused"]).await;
        assert_eq!(status, "paused");
        a.resume(&id).await;
        a.assert_usable(&id).await;

        // Killed between the end of QEMU and the record `paused`: the saved state is kept.
        let (a, _) = kill_at(&dir, a, "agent.pause.after_stop", &id, "pause", &["paused"]).await;
        a.resume(&id).await;
        a.assert_usable(&id).await;

        // Killed during a resume before the guest ran: still paused, no QEMU holding the
        // disk, and it resumes.
        a.pause(&id).await;
        let (a, _) = kill_at(
            &dir,
            a,
            "agent.resume.after_load",
            &id,
            "resume",
            &["paused"],
        )
        .await;
        a.resume(&id).await;
        a.assert_usable(&id).await;

        // Killed during a resume after the guest ran again: running (re-attached) or in
        // `error` with its files kept, never back to paused. It stays paused a while first,
        // so a guest clock nobody set after the resume would be that far behind.
        a.pause(&id).await;
        tokio::time::sleep(Duration::from_secs(8)).await;
        let (a, status) = kill_at(
            &dir,
            a,
            "agent.resume.after_cont",
            &id,
            "resume",
            &["running", "error"],
        )
        .await;
        if status == "running" {
            a.assert_usable(&id).await;
            a.assert_clock_set(&id).await;
        } else {
            let sb = dir.join("sandboxes").join(&id);
            assert!(sb.join("state").exists() && sb.join("mem").exists());
        }

        // Destroyed, nothing of it is left: no QEMU, no slot, no files.
        let (s, v) = a
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/sandboxes/{id}"),
                None,
            )
            .await;
        assert_eq!(s, 204, "destroy: {v}");
        a.kill();
        assert!(qemu_sandboxes(&dir).is_empty());
        let agent = startup::start(agent_config(&dir), Box::new(NoProgress))
            .await
            .unwrap();
        assert!(agent.manager.list().await.is_empty());
        assert!(agent.manager.slot_pool().in_use().is_empty());
        agent.manager.slot_pool().shutdown().unwrap();
        let left = wrenn_agent::net::leftovers(PREFIX).unwrap();
        assert!(left.is_empty(), "leaked: {left:?}");
        assert!(!std::fs::read_dir(dir.join("sandboxes"))
            .unwrap()
            .any(|_| true));
        let _ = std::fs::remove_dir_all(&dir);
    });
}
