//! The VM layer: QEMU `-M microvm` processes driven over QMP.
//!
//! This module owns one thing: turning a [`VmSpec`] into a running QEMU and moving it through
//! boot, save-to-files, restore-from-files and destroy. It knows nothing of sandboxes, network
//! slots or templates; the caller decides paths and passes a hook that places the process in a
//! network namespace. The KVM/TCG difference is confined to [`Accel`] flags in [`qemu_args`].
//! How the guest RAM file is mapped ([`RamMapping`]) decides what a saved state holds.
//!
//! QEMU runs in a session of its own (not `-daemonize`, which the seccomp filter forbids), so
//! VMs outlive a restart of the agent; [`Vm::attach`] finds one again from its pid and QMP
//! socket. `console.rs` keeps each VM's console log bounded.
//!
//! Files: this one holds [`Vm`] (a QEMU process: start, save, load, quit, kill) and the pid
//! checks; `spec.rs` the spec and command line; `accel.rs` the accelerator choice; [`qmp`] the
//! QMP client.

mod accel;
pub mod cgroup;
pub mod console;
pub mod jail;
pub mod qmp;
mod spec;

pub use accel::{choose_accel, cpu_has_hw_virt, host_cpu_khz, AccelChoice};
use qmp::{Qmp, QmpError};
use serde_json::json;
pub use spec::{kernel_cmdline, qemu_args, Launch, RamMapping, Start, VmSpec};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use wrenn_types::agent::Accel;

/// A VM layer failure.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// QEMU could not be started, or exited during start-up.
    #[error("QEMU failed to start: {0}")]
    Start(String),
    /// Talking to QEMU failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// Saving or loading device state failed.
    #[error("migration {0}")]
    Migration(String),
    /// A file of the VM could not be read or written.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The process is gone or is not the VM it should be.
    #[error("QEMU process {0} is not running")]
    Gone(u32),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let context = context.into();
    move |source| VmError::Io { context, source }
}

/// A running (or stopped, not yet exited) QEMU.
pub struct Vm {
    pub pid: u32,
    pub qmp: Arc<Qmp>,
    pub spec: VmSpec,
    /// The inode of this QEMU's jail directory, so only its own jail is removed after it.
    jail_ino: Option<u64>,
}

/// Prepares QEMU's command before it is started (e.g. to run it inside a network namespace).
pub type PreExec<'a> =
    Box<dyn FnOnce(&mut std::process::Command) -> std::io::Result<()> + Send + 'a>;

impl Vm {
    /// Boots a fresh VM from its kernel.
    pub async fn boot(spec: VmSpec, pre_exec: Option<PreExec<'_>>) -> Result<Vm, VmError> {
        let vm = Self::spawn(spec, Start::Boot, pre_exec).await?;
        Ok(vm)
    }

    /// Starts a VM from a saved device state, running again. `saved_with` is how the VM that
    /// saved `state` mapped its RAM: [`RamMapping::CopyOnWrite`] means the state carries the
    /// RAM (which is loaded into the spec's RAM file); [`RamMapping::Shared`] means it does
    /// not, and the RAM is the spec's file as it is.
    pub async fn restore(
        spec: VmSpec,
        state: &Path,
        saved_with: RamMapping,
        pre_exec: Option<PreExec<'_>>,
    ) -> Result<Vm, VmError> {
        let vm = Self::load(spec, state, saved_with, pre_exec).await?;
        if let Err(e) = vm.cont().await {
            vm.kill().await;
            return Err(e);
        }
        Ok(vm)
    }

    /// Starts a QEMU and loads a saved device state into it, leaving the guest stopped.
    /// `saved_with`: as for [`Vm::restore`].
    pub async fn load(
        spec: VmSpec,
        state: &Path,
        saved_with: RamMapping,
        pre_exec: Option<PreExec<'_>>,
    ) -> Result<Vm, VmError> {
        let vm = Self::spawn(spec, Start::Incoming, pre_exec).await?;
        let r = async {
            // The capability changes the stream's format: it must be what the saver used.
            vm.set_migration_caps(saved_with.ignore_shared()).await?;
            let f = std::fs::File::open(state).map_err(io_err("open saved state"))?;
            vm.qmp.send_fd("state", f.as_fd()).await?;
            drop(f);
            vm.qmp
                .execute("migrate-incoming", json!({ "uri": "fd:state" }))
                .await?;
            vm.wait_migration("restore").await
        }
        .await;
        match r {
            Ok(()) => Ok(vm),
            Err(e) => {
                vm.kill().await;
                Err(e)
            }
        }
    }

    /// Finds a VM started earlier (by this or a previous agent) from its pid file and QMP socket.
    pub async fn attach(spec: VmSpec) -> Result<Vm, VmError> {
        let pid = read_pid(&spec.pid_path())?;
        if !is_our_qemu(pid, &spec.qmp_path()) {
            return Err(VmError::Gone(pid));
        }
        let qmp = Qmp::connect(&spec.qmp_path()).await?;
        let vm = Vm {
            pid,
            qmp,
            jail_ino: dir_ino(&spec.jail_path()),
            spec,
        };
        vm.clean_up_after_exit();
        Ok(vm)
    }

    async fn spawn(
        spec: VmSpec,
        start: Start,
        pre_exec: Option<PreExec<'_>>,
    ) -> Result<Vm, VmError> {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let cfg = jail::config();
        std::fs::create_dir_all(&spec.run_dir).map_err(io_err("create run dir"))?;
        for p in [spec.qmp_path(), spec.pid_path()] {
            let _ = std::fs::remove_file(p);
        }
        // Descriptors QEMU inherits: the listening QMP socket (only the agent can reach its
        // path) and a placeholder whose number the TAP device takes in the child.
        let listener = std::os::unix::net::UnixListener::bind(spec.qmp_path())
            .map_err(io_err("bind QMP socket"))?;
        let tap_slot = std::fs::File::open("/dev/null").map_err(io_err("open /dev/null"))?;
        let console =
            console::open_for_qemu(&spec.console_path()).map_err(io_err("console log"))?;
        let log = std::fs::File::create(spec.log_path()).map_err(io_err("QEMU log"))?;
        let (qmp_fd, tap_fd) = (listener.as_raw_fd(), tap_slot.as_raw_fd());
        let lease;
        let (launch, jail_plan) = if jail::enabled() {
            lease = jail::allocate_uid(cfg).map_err(io_err("VM uid"))?;
            let files = jail::build(&spec.jail_path(), lease.0, cfg.shared_gid(), &spec)
                .map_err(io_err("build jail"))?;
            let plan =
                jail::JailPlan::new(&spec.jail_path(), lease.0, cfg.shared_gid(), spec.accel)
                    .map_err(io_err("jail path"))?;
            let launch = Launch {
                kernel: files.kernel,
                initrd: files.initrd,
                mem: files.mem,
                disk: files.disk,
                tap_fd,
                qmp_fd,
                sandbox: true,
            };
            (launch, Some(plan))
        } else {
            (Launch::plain(&spec, tap_fd, qmp_fd), None)
        };
        let cgroup_procs = match cgroup::cgroups() {
            Some(cg) => cg
                .create(&spec.run_dir, &limits_for(&spec, cg))
                .map_err(io_err("VM cgroup"))?,
            None => vec![],
        };
        let plan = jail::ChildPlan {
            cgroup_procs: cgroup_procs.iter().map(|f| f.as_raw_fd()).collect(),
            tap: Some((
                jail::ifname(&spec.tap).map_err(|e| VmError::Start(e.to_string()))?,
                tap_fd,
            )),
            keep: vec![qmp_fd],
            jail: jail_plan,
        };
        let qemu_bin = resolve_bin(&spec.qemu_bin)?;
        let mut std_cmd = std::process::Command::new(&qemu_bin);
        std_cmd
            .args(qemu_args(&spec, start, &launch))
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stdout(console)
            .stderr(log);
        if let Some(hook) = pre_exec {
            hook(&mut std_cmd).map_err(|e| VmError::Start(format!("prepare QEMU: {e}")))?;
        }
        // SAFETY: `ChildPlan::run` only makes system calls on data prepared before the fork.
        unsafe {
            std_cmd.pre_exec(move || plan.run());
        }
        let mut child = tokio::process::Command::from(std_cmd)
            .spawn()
            .map_err(|e| VmError::Start(format!("{}: {e}", qemu_bin.display())))?;
        drop((listener, tap_slot, cgroup_procs));
        let pid = child
            .id()
            .ok_or_else(|| VmError::Start("QEMU exited at once".into()))?;
        let failed = |why: String| {
            let log = std::fs::read_to_string(spec.log_path()).unwrap_or_default();
            let _ = std::fs::remove_dir_all(spec.jail_path());
            VmError::Start(format!("{} {why}: {}", qemu_bin.display(), log.trim()))
        };
        let qmp_path = spec.qmp_path();
        let qmp = tokio::select! {
            q = Qmp::connect(&qmp_path) => match q {
                Ok(q) => q,
                Err(e) => {
                    kill_pid(pid);
                    let _ = child.wait().await;
                    return Err(failed(e.to_string()));
                }
            },
            st = child.wait() => {
                return Err(failed(match st {
                    Ok(st) => format!("exited ({st})"),
                    Err(e) => e.to_string(),
                }));
            }
        };
        std::fs::write(spec.pid_path(), format!("{pid}\n")).map_err(io_err("write pid file"))?;
        // The child is left to run; tokio reaps it if it exits while this agent runs.
        drop(child);
        let vm = Vm {
            pid,
            qmp,
            jail_ino: dir_ino(&spec.jail_path()),
            spec,
        };
        vm.clean_up_after_exit();
        Ok(vm)
    }

    /// `ignore_shared`: leave RAM that is a shared file out of the stream (and expect it left
    /// out when loading).
    async fn set_migration_caps(&self, ignore_shared: bool) -> Result<(), VmError> {
        self.qmp
            .execute(
                "migrate-set-capabilities",
                json!({ "capabilities": [ { "capability": "x-ignore-shared", "state": ignore_shared } ] }),
            )
            .await?;
        // The default bandwidth cap (32 MiB/s) would make saving RAM into a state file slow.
        self.qmp
            .execute(
                "migrate-set-parameters",
                json!({ "max-bandwidth": 64u64 << 30, "downtime-limit": 100_000 }),
            )
            .await?;
        Ok(())
    }

    async fn wait_migration(&self, what: &str) -> Result<(), VmError> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut sleep = Duration::from_micros(500);
        loop {
            let info = self
                .qmp
                .execute("query-migrate", serde_json::Value::Null)
                .await?;
            match info["status"].as_str().unwrap_or("") {
                "completed" => return Ok(()),
                "failed" | "cancelled" => {
                    return Err(VmError::Migration(format!(
                        "{what} failed: {}",
                        info["error-desc"].as_str().unwrap_or("no reason given")
                    )))
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(VmError::Migration(format!("{what} timed out")));
            }
            tokio::time::sleep(sleep).await;
            sleep = (sleep * 2).min(Duration::from_millis(5));
        }
    }

    /// Stops the guest and writes its device state (and its RAM when the RAM is not the shared
    /// file, see [`RamMapping`]) to `state`. The VM stays stopped; end it with [`Vm::quit`].
    pub async fn save(&self, state: &Path) -> Result<(), VmError> {
        self.set_migration_caps(self.spec.mem_mapping.ignore_shared())
            .await?;
        self.qmp.execute("stop", serde_json::Value::Null).await?;
        let tmp = state.with_extension("partial");
        let _ = std::fs::remove_file(&tmp);
        let f = std::fs::File::create(&tmp).map_err(io_err("create state file"))?;
        self.qmp.send_fd("state", f.as_fd()).await?;
        drop(f);
        self.qmp
            .execute("migrate", json!({ "uri": "fd:state" }))
            .await?;
        self.wait_migration("save").await?;
        std::fs::rename(&tmp, state).map_err(io_err("rename saved state"))?;
        Ok(())
    }

    /// Resumes a stopped guest.
    pub async fn cont(&self) -> Result<(), VmError> {
        self.qmp.execute("cont", serde_json::Value::Null).await?;
        Ok(())
    }

    /// Asks QEMU to exit and waits until the process is gone (its disk lock released).
    pub async fn quit(self) -> Result<(), VmError> {
        let _ = self
            .qmp
            .execute_timeout("quit", serde_json::Value::Null, Duration::from_secs(2))
            .await;
        if !wait_gone(self.pid, Duration::from_secs(5)).await {
            kill_pid(self.pid);
            wait_gone(self.pid, Duration::from_secs(5)).await;
        }
        release(&self.spec.run_dir, self.jail_ino).await;
        Ok(())
    }

    /// Follows this VM's run directory after the caller renamed it to `run_dir` (a pooled
    /// clone becoming a sandbox): the spec's paths and the VM's cgroup follow it (the group is
    /// renamed; where that fails, the process moves into a new group and the old one is
    /// removed). QEMU notices
    /// nothing: it holds its files open, and its QMP socket and jail moved with the directory.
    /// The directory should hold [`ORIGIN_FILE`] naming the QMP path QEMU was started with, so
    /// [`is_our_qemu`] still knows it.
    pub async fn moved_to(&mut self, run_dir: &Path) -> Result<(), VmError> {
        let old = std::mem::replace(&mut self.spec.run_dir, run_dir.to_path_buf());
        for p in [&mut self.spec.mem_path, &mut self.spec.disk] {
            if let Ok(rel) = p.strip_prefix(&old) {
                *p = run_dir.join(rel);
            }
        }
        if let Some(cg) = cgroup::cgroups() {
            // A rename keeps the process and its limits where they are, in one call.
            if let Err(e) = cg.rename(&old, run_dir) {
                tracing::debug!("renaming a VM's cgroup failed, moving the VM instead: {e}");
                use std::io::Write;
                let limits = limits_for(&self.spec, cg);
                let procs = cg.create(run_dir, &limits).map_err(io_err("VM cgroup"))?;
                for mut f in procs {
                    f.write_all(self.pid.to_string().as_bytes())
                        .map_err(io_err("move VM into its cgroup"))?;
                }
                cg.remove(&old).await;
            }
        }
        self.clean_up_after_exit();
        Ok(())
    }

    /// Kills QEMU at once and waits until it is gone.
    pub async fn kill(&self) {
        kill_pid(self.pid);
        wait_gone(self.pid, Duration::from_secs(5)).await;
        release(&self.spec.run_dir, self.jail_ino).await;
    }

    /// The cgroups this VM runs in (one per v1 hierarchy), if the host has them.
    pub fn cgroup_dirs(&self) -> Vec<std::path::PathBuf> {
        cgroup::cgroups()
            .map(|c| c.dirs_for(&self.spec.run_dir))
            .unwrap_or_default()
    }

    /// Removes the jail and the cgroup when QEMU exits on its own (the QMP socket closes and
    /// the process is gone; a session dropped while QEMU runs leaves both).
    fn clean_up_after_exit(&self) {
        let closed = self.qmp.closed_signal();
        let (pid, run_dir, ino) = (self.pid, self.spec.run_dir.clone(), self.jail_ino);
        tokio::spawn(async move {
            closed.await;
            if wait_gone(pid, Duration::from_secs(2)).await {
                release(&run_dir, ino).await;
            }
        });
    }
}

/// The cgroup limits of a VM of `spec`.
fn limits_for(spec: &VmSpec, cg: &cgroup::Cgroups) -> cgroup::Limits {
    let overhead = match spec.accel {
        Accel::Tcg => cgroup::OVERHEAD_TCG_MB,
        Accel::Kvm => cgroup::OVERHEAD_KVM_MB,
    };
    cgroup::Limits::for_vm(spec.vcpus, spec.memory_mb, overhead, cg.cpu_ratio)
}

/// A file of a run directory naming the QMP socket path its QEMU was started with, when the
/// directory has moved since ([`Vm::moved_to`]).
pub const ORIGIN_FILE: &str = "qmp.origin";

fn dir_ino(p: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| m.ino())
}

/// Removes what a QEMU that is gone leaves: its jail (when it is still the one with inode
/// `jail_ino`: a newer QEMU of the same run dir may have made its own) and its cgroup.
async fn release(run_dir: &Path, jail_ino: Option<u64>) {
    let jail = run_dir.join("jail");
    if jail_ino.is_some() && dir_ino(&jail) == jail_ino {
        let _ = std::fs::remove_dir_all(&jail);
    }
    if let Some(cg) = cgroup::cgroups() {
        cg.remove(run_dir).await;
    }
}

/// QEMU's program as an absolute path (it is executed inside the jail, where only `/usr` is).
fn resolve_bin(bin: &Path) -> Result<std::path::PathBuf, VmError> {
    let found = if bin.is_absolute() {
        Some(bin.to_path_buf())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(bin))
                .find(|p| p.is_file())
        })
    };
    let p = found
        .and_then(|p| p.canonicalize().ok())
        .ok_or_else(|| VmError::Start(format!("{} not found", bin.display())))?;
    if jail::enabled() && !p.starts_with("/usr") {
        return Err(VmError::Start(format!(
            "{}: the VM jail holds /usr only; install QEMU there",
            p.display()
        )));
    }
    Ok(p)
}

fn read_pid(path: &Path) -> Result<u32, VmError> {
    let s = std::fs::read_to_string(path).map_err(io_err(format!("read {}", path.display())))?;
    s.trim()
        .parse()
        .map_err(|_| VmError::Start(format!("bad pid file {}: {s:?}", path.display())))
}

/// True when `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat.rsplit_once(')').map(|(_, r)| r.trim_start());
            !matches!(
                state.and_then(|s| s.chars().next()),
                Some('Z') | Some('X') | None
            )
        }
        Err(_) => false,
    }
}

/// True when `pid` is a live QEMU serving the QMP socket `qmp` (guards against pid reuse).
pub fn is_our_qemu(pid: u32, qmp: &Path) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut needles = vec![qmp.display().to_string()];
    if let Ok(origin) = std::fs::read_to_string(qmp.with_file_name(ORIGIN_FILE)) {
        needles.push(origin.trim().to_string());
    }
    cmdline.split(|b| *b == 0).any(|arg| {
        let arg = String::from_utf8_lossy(arg);
        needles
            .iter()
            .any(|n| !n.is_empty() && arg.contains(n.as_str()))
    })
}

fn kill_pid(pid: u32) {
    if pid > 1 {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Kills a QEMU found by its pid, after checking that it really is the one serving `qmp`.
pub async fn kill_stale(pid: u32, qmp: &Path) {
    if is_our_qemu(pid, qmp) {
        kill_pid(pid);
        wait_gone(pid, Duration::from_secs(5)).await;
    }
}

async fn wait_gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while pid_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_checks() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX - 1));
        assert!(!is_our_qemu(
            std::process::id(),
            Path::new("/nonexistent/qmp.sock")
        ));
    }
}
