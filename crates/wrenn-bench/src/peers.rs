//! The peer and the limit, measured in the same run as Wrenn: gVisor (`runsc do`, ptrace
//! platform) starting a sandbox and running `echo` and Python; QEMU restoring the same warm
//! snapshot by hand (no agent, no API, no jail) until envd's first HTTP answer; and Wrenn's
//! create-to-first-result through the public API with the warm pool on and off, for `echo`
//! and for Python. Each row's note names the accelerator and its ratio to gVisor. It owns no
//! system: it drives the one [`Bench`] started, and leaves the pools off again.

use crate::report::Op;
use crate::runs::{record, timed, Bench};
use anyhow::{anyhow, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wrenn_agent::sandbox::records::ImageMeta;
use wrenn_agent::sandbox::{disk, PoolConfig};
use wrenn_agent::vmm::{self, RamMapping, Vm, VmSpec};

/// Memory of the sandboxes compared (the API's default, as most of the run).
const MEMORY_MB: u32 = 512;
/// The Python program every peer runs.
const PYTHON: &str = "print(6*7)";

impl Bench<'_> {
    /// Every row of the peers section.
    pub async fn peers(&mut self) -> Result<()> {
        let accel = format!("{:?}", self.sys.agent.manager.accel()).to_uppercase();
        let n = self.plan.peer_samples;
        self.gvisor(n).await;
        if let Err(e) = self.raw_restore(n, &accel).await {
            let mut op = Op::new("raw_restore", "raw QEMU restore to envd's answer", "ms");
            op.fail(format!("{e:#}"));
            self.peers.ops.push(op);
        }
        let wrenn = self.wrenn_first_results(n, &accel).await;
        self.sys
            .agent
            .manager
            .set_pool_config(PoolConfig::OFF)
            .await;
        wrenn?;
        self.ratios(&accel);
        Ok(())
    }

    /// `runsc --platform=ptrace --network=none do` of `echo` and of Python, `n` times each;
    /// a clear line and failed rows when runsc is missing or cannot run here.
    async fn gvisor(&mut self, n: usize) {
        let runs: [(&str, &str, &[&str], &str); 2] = [
            (
                "gvisor_echo",
                "gVisor: start + echo",
                &["echo", "hi"],
                "hi\n",
            ),
            (
                "gvisor_python",
                "gVisor: start + python3",
                &["python3", "-c", PYTHON],
                "42\n",
            ),
        ];
        for (key, name, argv, want) in runs {
            let mut op = Op::new(key, name, "ms");
            for _ in 0..n {
                let r = timed(runsc(argv, want)).await;
                if let Err(e) = record(&mut op, r) {
                    eprintln!("    gVisor skipped: {e:#}");
                    break;
                }
            }
            op.note =
                Some("runsc --platform=ptrace --network=none do, on the host (no KVM)".to_string());
            self.peers.ops.push(op);
        }
    }

    /// QEMU started by hand on a copy-on-write clone of the warm snapshot the API's creates
    /// use, in a slot of the agent's pool, until envd answers its first HTTP request.
    async fn raw_restore(&mut self, n: usize, accel: &str) -> Result<()> {
        let mut op = Op::new("raw_restore", "raw QEMU restore to envd's answer", "ms");
        let warm = warm_dir(&self.sys.dir, MEMORY_MB)?;
        let meta: ImageMeta = serde_json::from_slice(&std::fs::read(warm.join("meta.json"))?)
            .context("read the warm snapshot's meta.json")?;
        let images = wrenn_agent::images::existing_images(&crate::system::images_root())
            .ok_or_else(|| anyhow!("no guest images"))?;
        let mgr = self.sys.agent.manager.clone();
        vmm::jail::bypass_for_measurement(true);
        for i in 0..n {
            let dir = self.sys.dir.join(format!("raw-{i}"));
            let r = async {
                std::fs::create_dir_all(&dir)?;
                disk::link_layers(&warm, &dir, &meta.layers)?;
                disk::link(&warm.join("mem"), &dir.join("tmem"))?;
                let backing = meta.layers.last().cloned().unwrap_or_default();
                disk::create_overlay(&dir, &backing, "top.qcow2")?;
                let slot = mgr.slot_pool().acquire().await?;
                let spec = VmSpec {
                    qemu_bin: "qemu-system-x86_64".into(),
                    accel: mgr.accel(),
                    vcpus: meta.vcpus,
                    memory_mb: meta.memory_mb,
                    kernel: images.kernel.clone(),
                    initrd: images.initrd.clone(),
                    cmdline: vmm::kernel_cmdline(mgr.accel()),
                    mem_path: dir.join("tmem"),
                    mem_mapping: RamMapping::CopyOnWrite,
                    disk: dir.join("top.qcow2"),
                    tap: slot.tap.clone(),
                    mac: wrenn_agent::guest::GUEST_MAC.into(),
                    run_dir: dir.clone(),
                };
                let envd = wrenn_agent::envd_client::EnvdClient::new(std::net::SocketAddr::new(
                    slot.host_ip.into(),
                    wrenn_types::envd::ENVD_PORT,
                ))?;
                let t = Instant::now();
                let pre: vmm::PreExec<'_> = Box::new(|cmd| slot.enter_netns_pre_exec(cmd));
                let vm =
                    Vm::restore(spec, &warm.join("state"), RamMapping::Shared, Some(pre)).await;
                let answered = match &vm {
                    Ok(_) => envd
                        .wait_ready(Duration::from_secs(30))
                        .await
                        .map(|_| t.elapsed())
                        .map_err(anyhow::Error::from),
                    Err(e) => Err(anyhow!("restore: {e}")),
                };
                if let Ok(vm) = vm {
                    vm.kill().await;
                }
                let _ = mgr.slot_pool().release(slot).await;
                answered
            }
            .await;
            let _ = std::fs::remove_dir_all(&dir);
            match r {
                Ok(d) => op.add(d.as_secs_f64() * 1000.0),
                Err(e) => op.fail(format!("{e:#}")),
            }
        }
        vmm::jail::bypass_for_measurement(false);
        op.note = Some(format!(
            "{accel}; QEMU spawn + incoming migration + cont until GET /health answers; \
             files linked beforehand, no jail, no agent, no API"
        ));
        self.peers.ops.push(op);
        Ok(())
    }

    /// Create + first result through the public API: pool off, then on, for `echo` and for
    /// Python; every sandbox destroyed after its sample.
    async fn wrenn_first_results(&mut self, n: usize, accel: &str) -> Result<()> {
        let mgr = self.sys.agent.manager.clone();
        let echo: &[&str] = &["echo", "hi"];
        let python: &[&str] = &["python3", "-c", PYTHON];
        for pooled in [false, true] {
            let cfg = if pooled {
                PoolConfig::on(1)
            } else {
                PoolConfig::OFF
            };
            mgr.set_pool_config(cfg).await;
            if pooled {
                // The first create of the shape misses and makes the pool want a clone.
                let id = self.sys.api.create(MEMORY_MB).await?;
                self.sys.api.destroy(&id).await?;
            }
            let how = if pooled { "pool" } else { "no_pool" };
            let where_from = if pooled { "from the pool" } else { "pool off" };
            let mut create = Op::new(
                &format!("wrenn_create_{how}"),
                &format!("Wrenn: create (201, envd ready), {where_from}"),
                "ms",
            );
            for (what, argv) in [("echo", echo), ("python3", python)] {
                let mut op = Op::new(
                    &format!("wrenn_{what}_{how}"),
                    &format!("Wrenn: create + {what}, {where_from}"),
                    "ms",
                );
                for _ in 0..n {
                    if pooled {
                        wait_pooled(&mgr).await?;
                    }
                    let r = timed(async {
                        let (id, created) = timed(self.sys.api.create(MEMORY_MB)).await;
                        let id = record(&mut create, (id, created))?;
                        let out = self.sys.api.exec(&id, argv[0], &argv[1..]).await;
                        Ok::<_, anyhow::Error>((id, out))
                    })
                    .await;
                    let (ok, t) = r;
                    match ok {
                        Ok((id, out)) => {
                            match out {
                                Ok(_) => op.add(t),
                                Err(e) => op.fail(format!("{e:#}")),
                            }
                            self.sys.api.destroy(&id).await?;
                        }
                        Err(e) => op.fail(format!("{e:#}")),
                    }
                }
                op.note = Some(format!(
                    "{accel}; POST /v1/sandboxes ({MEMORY_MB} MB) then POST exec, sequential"
                ));
                self.peers.ops.push(op);
            }
            create.note = Some(format!(
                "{accel}; the create of each sample of the two rows below it"
            ));
            let at = self.peers.ops.len() - 2;
            self.peers.ops.insert(at, create);
        }
        Ok(())
    }

    /// Adds each Wrenn row's ratio to gVisor's row of the same program, and the limit's.
    fn ratios(&mut self, accel: &str) {
        let median = |ops: &[Op], key: &str| {
            let op = ops.iter().find(|o| o.key == key)?;
            crate::stats::summarize(&op.samples).map(|s| s.median)
        };
        let ops = self.peers.ops.clone();
        let raw = median(&ops, "raw_restore");
        for op in &mut self.peers.ops {
            let peer = if op.key.starts_with("wrenn_echo") {
                "gvisor_echo"
            } else if op.key.starts_with("wrenn_python3") {
                "gvisor_python"
            } else {
                continue;
            };
            let Some(mine) = median(&ops, &op.key) else {
                continue;
            };
            let mut note = op.note.clone().unwrap_or_default();
            if let Some(g) = median(&ops, peer) {
                note.push_str(&format!(
                    "; {:.2}x gVisor's median ({accel} vs ptrace)",
                    mine / g
                ));
            }
            if let Some(r) = raw {
                note.push_str(&format!("; {:.2}x the raw restore", mine / r));
            }
            op.note = Some(note);
        }
    }
}

/// The warm snapshot of `minimal` at 1 vCPU and `memory_mb` in the data dir `dir`.
fn warm_dir(dir: &Path, memory_mb: u32) -> Result<PathBuf> {
    let prefix = format!("minimal-1x{memory_mb}-");
    std::fs::read_dir(dir.join("warm"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                && p.join("meta.json").exists()
        })
        .ok_or_else(|| anyhow!("no warm snapshot {prefix}* (the API's creates make it)"))
}

/// Waits (up to two minutes) until the agent has a clone pooled.
async fn wait_pooled(mgr: &wrenn_agent::sandbox::Manager) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while mgr.pool_counts().pooled == 0 {
        if Instant::now() > deadline {
            return Err(anyhow!("the pool was not refilled within 120 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// One `runsc do`, checked to print `want`.
async fn runsc(argv: &[&str], want: &str) -> Result<()> {
    let out = tokio::process::Command::new("runsc")
        .args(["--platform=ptrace", "--network=none", "do"])
        .args(argv)
        .current_dir("/tmp")
        .output()
        .await
        .context("runsc is not installed (Debian package runsc)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || stdout != want {
        return Err(anyhow!(
            "runsc do {argv:?}: {} {stdout:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}
