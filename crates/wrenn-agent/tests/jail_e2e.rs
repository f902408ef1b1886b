//! End-to-end test of the VM jail with a real microVM: the QEMU of a sandbox runs as its own
//! unprivileged uid, without capabilities, with `no_new_privs` and QEMU's seccomp filter, in
//! its jail directory as its root, and (where the host has usable cgroups, v2 or v1) in
//! cgroups of its own with its limits set; pause and resume keep working. A memory hog and a
//! fork bomb in one guest leave another sandbox answering and the host's memory alone.
//!
//! Needs root and the guest images, as `vm_e2e.rs`. Slots 9100-9149. `WRENN_JAIL_LATENCY=N` also times N
//! creates and resumes and prints them (run once more with `WRENN_JAIL=off` to compare).

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wrenn_agent::host::{self, Agent, AgentConfig};
use wrenn_agent::images::NoProgress;
use wrenn_agent::net::NetConfig;
use wrenn_agent::vmm::{cgroup, jail};

#[path = "jail_e2e/limits.rs"]
mod limits;

const TOKEN: &str = "test-agent-token-0123456789";
const PREFIX: &str = "ej";
/// The first slot of each test (20 each).
const JAIL_SLOTS: u32 = 9100;
const LIMIT_SLOTS: u32 = 9120;

struct TestAgent {
    base: String,
    http: reqwest::Client,
    _agent: Agent,
    data_dir: PathBuf,
}

fn images_dir() -> PathBuf {
    std::env::var_os("WRENN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/wrenn".into())
}

async fn start_agent(first_slot: u32) -> TestAgent {
    let d = images_dir().join("e2e").join(format!(
        "jail-{}-{:06}",
        std::process::id(),
        rand::random::<u32>() % 1_000_000
    ));
    std::fs::create_dir_all(&d).unwrap();
    std::os::unix::fs::symlink(images_dir().join("images"), d.join("images")).unwrap();
    let mut cfg = AgentConfig::new(d.clone(), TOKEN.into());
    cfg.net = NetConfig {
        prefix: PREFIX.into(),
        first_slot,
        max_slots: 20,
        pool_size: 2,
        ..NetConfig::default()
    };
    let agent = host::start(cfg, Box::new(NoProgress))
        .await
        .expect("agent starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = agent.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await });
    TestAgent {
        base,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
        _agent: agent,
        data_dir: d,
    }
}

impl TestAgent {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
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

    async fn create(&self) -> String {
        let id = format!("sb-{:06}", rand::random::<u32>() % 1_000_000);
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                "/v1/sandboxes",
                Some(json!({"id": id, "template": "minimal", "vcpus": 1, "memory_mb": 256})),
            )
            .await;
        assert_eq!(s, 201, "create: {v}");
        id
    }

    async fn exec(&self, id: &str, script: &str, timeout_sec: u32) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"cmd": "sh", "args": ["-c", script], "timeout_sec": timeout_sec})),
        )
        .await
    }

    async fn sh(&self, id: &str, script: &str) -> String {
        let (s, v) = self.exec(id, script, 60).await;
        assert_eq!(s, 200, "exec: {v}");
        assert_eq!(v["exit_code"], 0, "{v}");
        v["stdout"].as_str().unwrap().to_string()
    }

    async fn lifecycle(&self, id: &str, op: &str) {
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{id}/{op}"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{op}: {v}");
    }

    async fn destroy(&self, id: &str) {
        let (s, v) = self
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/sandboxes/{id}"),
                None,
            )
            .await;
        assert_eq!(s, 204, "destroy: {v}");
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("sandboxes").join(id)
    }

    fn qemu_pid(&self, id: &str) -> u32 {
        std::fs::read_to_string(self.sandbox_dir(id).join("qemu.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

fn status_field(pid: u32, name: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("{name} missing from /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// Everything the jail promises, checked on the running QEMU of sandbox `dir`.
fn assert_jailed(pid: u32, dir: &Path) {
    let cfg = jail::config();
    let uids: Vec<u32> = status_field(pid, "Uid")
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    let uid = uids[0];
    assert!(uids.iter().all(|u| *u == uid), "uids {uids:?}");
    assert_ne!(uid, 0);
    assert!(
        uid > cfg.base && uid <= cfg.base + cfg.count,
        "uid {uid} outside the range"
    );
    let gids = status_field(pid, "Gid");
    assert!(
        gids.split_whitespace().all(|g| g == uid.to_string()),
        "gids {gids}"
    );
    assert_eq!(status_field(pid, "Groups"), cfg.shared_gid().to_string());
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    for cap in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(
            u64::from_str_radix(&status_field(pid, cap), 16).unwrap(),
            0,
            "{cap}"
        );
    }
    // Its root is its jail: the same directory as the sandbox's `jail`, holding the VM's own
    // files and nothing of the data dir.
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata(format!("/proc/{pid}/root/")).unwrap();
    let jail = std::fs::metadata(dir.join("jail")).unwrap();
    assert_eq!(
        (root.dev(), root.ino()),
        (jail.dev(), jail.ino()),
        "root is not the jail"
    );
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root/"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    for want in ["vmlinux", "initrd", "mem", "usr", "dev"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from the jail: {names:?}"
        );
    }
    for bad in [
        "sandbox.json",
        "state",
        "qmp.sock",
        "sandboxes",
        "etc",
        "proc",
        "root",
    ] {
        assert!(
            !names.iter().any(|n| n == bad),
            "{bad} in the jail: {names:?}"
        );
    }
    // Its writable files are its own; a QEMU of this uid cannot reach the data dir at all.
    let top = std::fs::read_dir(dir.join("jail"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "qcow2")
                && std::fs::metadata(p).unwrap().uid() == uid
        });
    assert!(top.is_some(), "no disk layer owned by the VM's uid");
    // The cgroups, where the host has usable ones.
    match cgroup::cgroups() {
        Some(cg) => limits::assert_limits(cg, pid, dir),
        None => eprintln!("no usable cgroups on this host: cgroup limits not checked"),
    }
}

fn median(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

#[test]
fn qemu_runs_jailed_and_pause_resume_work() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let a = start_agent(JAIL_SLOTS).await;
        let id = a.create().await;
        let dir = a.sandbox_dir(&id);
        if jail::config().enabled {
            assert_jailed(a.qemu_pid(&id), &dir);
        }
        a.sh(&id, "echo kept > /root/note").await;
        a.lifecycle(&id, "pause").await;
        assert!(!dir.join("jail").exists(), "jail left after pause");
        if let Some(cg) = cgroup::cgroups() {
            for d in cg.dirs_for(&dir) {
                assert!(!d.exists(), "cgroup {d:?} left after pause");
            }
        }
        a.lifecycle(&id, "resume").await;
        assert_eq!(a.sh(&id, "cat /root/note").await, "kept\n");
        if jail::config().enabled {
            assert_jailed(a.qemu_pid(&id), &dir);
        }
        a.destroy(&id).await;

        if let Some(n) = std::env::var("WRENN_JAIL_LATENCY")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            let (mut create, mut resume) = (vec![], vec![]);
            for _ in 0..n {
                let t = Instant::now();
                let id = a.create().await;
                create.push(t.elapsed().as_secs_f64() * 1000.0);
                a.lifecycle(&id, "pause").await;
                let t = Instant::now();
                a.lifecycle(&id, "resume").await;
                resume.push(t.elapsed().as_secs_f64() * 1000.0);
                a.destroy(&id).await;
            }
            let jailed = if jail::config().enabled {
                "jail on"
            } else {
                "jail off"
            };
            eprintln!(
                "{jailed}: create ms min/median/max {:.1?}",
                median(&mut create)
            );
            eprintln!(
                "{jailed}: resume ms min/median/max {:.1?}",
                median(&mut resume)
            );
        }
        let _ = std::fs::remove_dir_all(&a.data_dir);
    });
}
