//! A fresh Wrenn system for one benchmark run, wired as `wrenn up` wires it: the host agent and
//! the control plane in this process, SQLite, each API on a loopback port. It lives in a
//! scratch data directory beside the shared images (same filesystem, images linked in) with
//! its own network prefix and slot range, and [`System::shutdown`] removes every sandbox, every
//! network slot and the directory again. Leftovers of a run that was killed are removed when
//! the next run starts. It owns no measurement.

use crate::client::Api;
use anyhow::{anyhow, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::task::JoinHandle;
use wrenn_agent::images::NoProgress;
use wrenn_agent::net::NetConfig;
use wrenn_agent::startup::{self, Agent, AgentConfig};

/// Prefix of this benchmark's network namespaces and devices.
pub const NET_PREFIX: &str = "bn";
/// First network slot of this benchmark (apart from the test suites' ranges).
pub const FIRST_SLOT: u32 = 9800;
/// Slots this benchmark may use (more than it ever holds at once).
pub const MAX_SLOTS: u32 = 100;

/// A running agent and control plane with one account and API key.
pub struct System {
    pub dir: PathBuf,
    pub agent: Agent,
    pub api: Api,
    /// Kept alive for its auto-pause reaper.
    _server: wrenn_server::Server,
    tasks: Vec<JoinHandle<()>>,
}

/// The shared data directory holding the built images (`WRENN_DATA_DIR`, as for `wrenn up`).
pub fn images_root() -> PathBuf {
    std::env::var_os("WRENN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/wrenn".into())
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

impl System {
    /// Starts everything; `accel` is `auto`, `kvm` or `tcg`; `overcommit` is the agent's
    /// memory overcommit.
    pub async fn start(accel: &str, overcommit: f64) -> Result<System> {
        let root = images_root();
        if wrenn_agent::images::existing_images(&root).is_none() {
            return Err(anyhow!(
                "no guest images in {} (build them with `wrenn images build` or scripts/test)",
                root.display()
            ));
        }
        let runs = root.join("bench");
        std::fs::create_dir_all(&runs).with_context(|| format!("create {}", runs.display()))?;
        remove_stale_runs(&runs).await;
        let dir = runs.join(format!("run-{}-{}", std::process::id(), random_hex(3)));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        std::os::unix::fs::symlink(root.join("images"), dir.join("images"))
            .context("link the images into the scratch directory")?;
        match Self::start_in(dir.clone(), accel, overcommit).await {
            Ok(s) => Ok(s),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    async fn start_in(dir: PathBuf, accel: &str, overcommit: f64) -> Result<System> {
        let token = random_hex(24);
        let mut cfg = AgentConfig::new(dir.clone(), token.clone());
        cfg.accel = accel.parse().map_err(|e: String| anyhow!(e))?;
        cfg.admission.memory_overcommit = overcommit;
        cfg.net = NetConfig {
            prefix: NET_PREFIX.into(),
            first_slot: FIRST_SLOT,
            max_slots: MAX_SLOTS,
            ..NetConfig::default()
        };
        let agent = startup::start(cfg, Box::new(NoProgress))
            .await
            .context("start the host agent")?;
        let mut tasks = Vec::new();
        let agent_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let agent_url = format!("http://{}", agent_listener.local_addr()?);
        let router = agent.router.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(agent_listener, router).await {
                tracing::error!("agent API: {e}");
            }
        }));

        let mut cfg = wrenn_server::ServerConfig::new(dir.clone(), random_hex(32).into_bytes());
        // The benchmark measures the platform, not a team's quota: its bursts of creates and
        // its density run exceed the per-team defaults.
        cfg.quotas = wrenn_server::config::Quotas::UNLIMITED;
        cfg.database_url = None; // SQLite in the scratch directory
        let server = wrenn_server::build(cfg)
            .await
            .context("start the control plane")?;
        server
            .register_host(&agent_url, &token)
            .await
            .map_err(|e| anyhow!("register the agent: {e}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let router = server.router();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = wrenn_server::serve(listener, router).await {
                tracing::error!("public API: {e}");
            }
        }));
        let api = Api::sign_up(&base).await.context("create an account")?;
        Ok(System {
            dir,
            agent,
            api,
            _server: server,
            tasks,
        })
    }

    /// Destroys every sandbox of the agent, removes its network slots and the scratch
    /// directory. Errors are reported, not returned: clean-up goes as far as it can.
    pub async fn shutdown(self) {
        let mgr = self.agent.manager.clone();
        for sb in mgr.list().await {
            if let Err(e) = mgr.destroy(&sb.id).await {
                eprintln!("warning: destroying {}: {e}", sb.id);
            }
        }
        for t in &self.tasks {
            t.abort();
        }
        let pool = mgr.slot_pool().clone();
        match tokio::task::spawn_blocking(move || pool.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: removing network slots: {e}"),
            Err(e) => eprintln!("warning: removing network slots: {e}"),
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("warning: removing {}: {e}", self.dir.display());
        }
    }

    /// The QEMU process id of a running sandbox.
    pub fn qemu_pid(&self, id: &str) -> Option<u32> {
        read_pid(&self.dir.join("sandboxes").join(id).join("qemu.pid"))
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Removes the scratch directories of earlier runs whose process is gone, ending the QEMUs
/// they left running first (only processes whose command line names that directory).
async fn remove_stale_runs(runs: &Path) {
    let Ok(rd) = std::fs::read_dir(runs) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("run-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue; // still running (or the pid was reused: leave it alone)
        }
        let dir = e.path();
        if let Ok(sbs) = std::fs::read_dir(dir.join("sandboxes")) {
            for sb in sbs.flatten() {
                let Some(qpid) = read_pid(&sb.path().join("qemu.pid")) else {
                    continue;
                };
                let cmdline = std::fs::read(format!("/proc/{qpid}/cmdline")).unwrap_or_default();
                let dir_str = dir.display().to_string();
                if String::from_utf8_lossy(&cmdline).contains(&dir_str) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(qpid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        eprintln!(
            "removing the leftovers of an earlier run: {}",
            dir.display()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
