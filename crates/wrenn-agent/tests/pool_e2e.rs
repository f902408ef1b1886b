//! End-to-end test of warm pools with real microVMs: an agent (a child process, so it can be
//! killed as a crash would) with pools on. A first create misses and the pool refills; a
//! create then takes the pooled clone (its directory carries the QMP origin file only a
//! pooled clone has) and works as any sandbox: exec, files, its own disk, its clock set,
//! pause and resume; a create of another shape misses and falls back to a plain clone. After
//! the agent is killed, a new one re-attaches the sandboxes made from the pool, kills the
//! pooled clones and removes their directories, so every QEMU of the data dir belongs to a
//! running sandbox. A pooled create snapshots into a template; deleting that template drains
//! its pool; destroying everything leaves no QEMU and no directory.
//!
//! Needs root and the guest images, as `vm_e2e.rs`. Slots 9960-9999, network prefix `wp`.

use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use wrenn_agent::images::NoProgress;
use wrenn_agent::net::NetConfig;
use wrenn_agent::sandbox::PoolConfig;
use wrenn_agent::startup::{self, AgentConfig};

mod common;

use common::child::{self, ChildAgent};
use common::{images_dir, rand_suffix, read_pid, TOKEN};

const CHILD_DIR_VAR: &str = "WRENN_POOL_AGENT_DIR";

fn agent_config(dir: &Path) -> AgentConfig {
    let mut cfg = AgentConfig::new(dir.to_path_buf(), TOKEN.into());
    cfg.net = NetConfig {
        prefix: "wp".into(),
        first_slot: 9960,
        max_slots: 40,
        pool_size: 1,
        ..NetConfig::default()
    };
    cfg.pool = PoolConfig {
        max_per_shape: 1,
        memory_budget_mb: 2048,
        idle_shrink: Duration::from_secs(3600),
    };
    cfg
}

/// The child: an agent with pools on (see [`common::child::serve_child`]).
#[test]
#[ignore = "run by pool_e2e as its child agent"]
fn serve_agent_for_pool() {
    child::serve_child(CHILD_DIR_VAR, agent_config);
}

impl ChildAgent {
    async fn start(dir: &Path) -> ChildAgent {
        ChildAgent::spawn(
            "serve_agent_for_pool",
            CHILD_DIR_VAR,
            dir,
            &[],
            Duration::from_secs(300),
        )
        .await
    }

    async fn create(&self, template: &str, memory_mb: u32) -> String {
        let id = format!("sb-p{}", rand_suffix());
        let body = json!({"id": id, "template": template, "vcpus": 1, "memory_mb": memory_mb});
        let (s, v) = self
            .call(reqwest::Method::POST, "/v1/sandboxes", Some(body))
            .await;
        assert_eq!(s, 201, "create: {v}");
        assert_eq!(v["status"], "running", "{v}");
        id
    }

    async fn sh(&self, id: &str, script: &str) -> String {
        let body = json!({"cmd": "sh", "args": ["-c", script], "timeout_sec": 60});
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{id}/exec"),
                Some(body),
            )
            .await;
        assert_eq!(s, 200, "exec {script:?}: {v}");
        assert_eq!(v["exit_code"], 0, "{script:?}: {v}");
        v["stdout"].as_str().unwrap().to_string()
    }

    async fn op(&self, id: &str, op: &str) {
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

    async fn pooled(&self) -> u64 {
        let (s, v) = self.call(reqwest::Method::GET, "/v1/host", None).await;
        assert_eq!(s, 200, "{v}");
        v["pooled"].as_u64().expect("host info has pooled")
    }

    /// Waits (generously: a refill restores a VM under TCG) until `n` clones are pooled.
    async fn wait_pooled(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let got = self.pooled().await;
            if got == n {
                return;
            }
            assert!(Instant::now() < deadline, "pooled stays {got}, not {n}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether the sandbox was made from a pooled clone.
    fn made_from_pool(&self, id: &str) -> bool {
        self.dir
            .join("sandboxes")
            .join(id)
            .join(wrenn_agent::vmm::ORIGIN_FILE)
            .exists()
    }

    /// The sandbox's QEMU runs in the groups named for the sandbox's directory (the pooled
    /// clone's groups, renamed), with its memory limit, and the pool's groups are gone.
    fn assert_own_cgroups(&self, id: &str) {
        use wrenn_agent::vmm::cgroup;
        let Some(cg) = cgroup::cgroups() else {
            eprintln!("no usable cgroups on this host: a pooled create's groups not checked");
            return;
        };
        let dir = self.dir.join("sandboxes").join(id);
        let pid = read_pid(&dir).to_string();
        for group in cg.dirs_for(&dir) {
            let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap();
            assert!(
                procs.lines().any(|l| l == pid),
                "QEMU {pid} is not in {}",
                group.display()
            );
            for limit in ["memory.max", "memory.limit_in_bytes"] {
                if let Ok(v) = std::fs::read_to_string(group.join(limit)) {
                    assert_ne!(v.trim(), "max", "{} has no memory limit", group.display());
                }
            }
        }
        let qmp = std::fs::read_to_string(dir.join(wrenn_agent::vmm::ORIGIN_FILE)).unwrap();
        let pooled_dir = Path::new(qmp.trim()).parent().unwrap();
        for group in cg.dirs_for(pooled_dir) {
            assert!(
                !group.exists(),
                "the pool's group {} is left",
                group.display()
            );
        }
    }

    /// The guest's wall clock is within 3 s of the host's.
    async fn assert_clock(&self, id: &str) {
        let guest: i64 = self.sh(id, "date +%s").await.trim().parse().unwrap();
        let host = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(
            (guest - host).abs() <= 3,
            "guest clock {guest}, host {host}"
        );
    }

    /// Every QEMU naming this data dir is the QEMU of a running sandbox (by its pid file),
    /// and every running sandbox has one; `pool/` holds nothing.
    async fn assert_no_orphans(&self) {
        let (_, list) = self.call(reqwest::Method::GET, "/v1/sandboxes", None).await;
        let mut want: Vec<u32> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["status"] == "running")
            .map(|s| read_pid(&self.dir.join("sandboxes").join(s["id"].as_str().unwrap())))
            .collect();
        want.sort();
        assert_eq!(
            qemus_naming(&self.dir),
            want,
            "QEMUs against running sandboxes"
        );
        let left: Vec<_> = std::fs::read_dir(self.dir.join("pool"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "pool dirs left: {left:?}");
    }
}

/// The pids of the QEMUs whose command line names a path in `dir`.
fn qemus_naming(dir: &Path) -> Vec<u32> {
    let needle = format!("{}/", dir.display());
    let mut out: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.first().is_some_and(|a| a.contains("qemu-system"))
                && args.iter().any(|a| a.contains(&needle))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn creates_take_pooled_clones_and_nothing_outlives_the_pool() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir =
            images_dir()
                .join("e2e")
                .join(format!("pool-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(images_dir().join("images"), dir.join("images")).unwrap();

        let a = ChildAgent::start(&dir).await;
        assert_eq!(a.pooled().await, 0, "no demand, no pool");
        // The first create of a shape misses (and boots its warm snapshot).
        let first = a.create("minimal", 256).await;
        assert!(!a.made_from_pool(&first));
        a.wait_pooled(1).await;
        // The next takes the pooled clone, and the pool refills.
        let t = Instant::now();
        let pooled = a.create("minimal", 256).await;
        eprintln!("create from the pool: {:?}", t.elapsed());
        assert!(a.made_from_pool(&pooled), "the create took no pooled clone");
        a.assert_own_cgroups(&pooled);
        a.wait_pooled(1).await;
        // A sandbox of its own: exec, files, its disk, its clock.
        assert_eq!(a.sh(&pooled, "echo hi").await, "hi\n");
        a.sh(&first, "echo first > /root/who").await;
        a.sh(&pooled, "echo pooled > /root/who").await;
        assert_eq!(a.sh(&first, "cat /root/who").await, "first\n");
        assert_eq!(a.sh(&pooled, "cat /root/who").await, "pooled\n");
        a.assert_clock(&pooled).await;
        // Pause and resume keep its files and processes' world.
        a.op(&pooled, "pause").await;
        a.op(&pooled, "resume").await;
        assert_eq!(a.sh(&pooled, "cat /root/who").await, "pooled\n");
        a.assert_clock(&pooled).await;
        // A shape with no pool misses and falls back to a clone.
        let other = a.create("minimal", 384).await;
        assert!(!a.made_from_pool(&other));
        assert_eq!(a.sh(&other, "echo other").await, "other\n");
        // A second pooled create: a distinct sandbox.
        a.wait_pooled(2).await; // minimal 256 and, after its miss, minimal 384
        let second = a.create("minimal", 256).await;
        assert!(a.made_from_pool(&second));
        assert_eq!(
            a.sh(&second, "cat /root/who 2>/dev/null || echo none")
                .await,
            "none\n"
        );
        a.assert_clock(&second).await;

        // A crash: the next agent keeps the sandboxes, pooled ones included, and nothing else.
        drop(a);
        let a = ChildAgent::start(&dir).await;
        for id in [&first, &pooled, &other, &second] {
            let (s, v) = a
                .call(reqwest::Method::GET, &format!("/v1/sandboxes/{id}"), None)
                .await;
            assert_eq!(
                (s, v["status"].as_str()),
                (200, Some("running")),
                "{id}: {v}"
            );
        }
        assert_eq!(a.sh(&pooled, "cat /root/who").await, "pooled\n");
        assert_eq!(a.pooled().await, 0);
        a.assert_no_orphans().await;

        // A pooled create snapshots into a template; deleting the template drains its pool.
        let name = format!("pool-tpl-{}", rand_suffix());
        let (s, v) = a
            .call(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{second}/snapshot"),
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(s, 201, "snapshot: {v}");
        let from_tpl = a.create(&name, 256).await;
        a.wait_pooled(1).await;
        let (s, v) = a
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/templates/{name}"),
                None,
            )
            .await;
        assert_eq!(s, 204, "delete template: {v}");
        assert_eq!(a.pooled().await, 0, "the template's pool is drained");
        a.assert_no_orphans().await;

        for id in [&first, &pooled, &other, &from_tpl] {
            a.destroy(id).await;
        }
        a.assert_no_orphans().await;
        assert!(qemus_naming(&dir).is_empty());
        let left: Vec<_> = std::fs::read_dir(dir.join("sandboxes"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "sandbox dirs left: {left:?}");
        // The killed agent's own slots go with a last start's clean-up: none in use, none
        // left after its shutdown.
        drop(a);
        let agent = startup::start(agent_config(&dir), Box::new(NoProgress))
            .await
            .unwrap();
        assert!(agent.manager.list().await.is_empty());
        assert!(agent.manager.slot_pool().in_use().is_empty());
        agent.manager.pool_shutdown().await;
        agent.manager.slot_pool().shutdown().unwrap();
        let left = wrenn_agent::net::leftovers("wp").unwrap();
        assert!(left.is_empty(), "leaked: {left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    });
}
