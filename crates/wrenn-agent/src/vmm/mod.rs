//! The VM layer: QEMU `-M microvm` processes driven over QMP.
//!
//! This module owns one thing: turning a [`VmSpec`] into a running QEMU and moving it through
//! boot, save-to-files, restore-from-files and destroy. It knows nothing of sandboxes, network
//! slots or templates; the caller decides paths and passes a hook that places the process in a
//! network namespace. The KVM/TCG difference is confined to [`Accel`] flags in [`qemu_args`].
//! How the guest RAM file is mapped ([`RamMapping`]) decides what a saved state holds.
//!
//! QEMU runs daemonized (its own session, reparented to init), so VMs outlive a restart of the
//! agent; [`Vm::attach`] finds one again from its pid and QMP socket.

pub mod qmp;

use qmp::{Qmp, QmpError};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use wrenn_types::agent::Accel;

/// How the accelerator is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    /// KVM where `/dev/kvm` opens and the CPU has vmx/svm, else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            other => Err(format!("unknown accelerator {other:?} (auto, kvm or tcg)")),
        }
    }
}

/// Picks the accelerator. With `Auto`, KVM needs both an openable `/dev/kvm` and hardware
/// virtualisation flags in `/proc/cpuinfo`: a software `/dev/kvm` without vmx/svm cannot run
/// ordinary guest kernels.
pub fn choose_accel(choice: AccelChoice) -> Accel {
    match choice {
        AccelChoice::Kvm => Accel::Kvm,
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Auto => {
            let kvm_opens = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok();
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            if kvm_opens && cpu_has_hw_virt(&cpuinfo) {
                Accel::Kvm
            } else {
                Accel::Tcg
            }
        }
    }
}

/// True when some `flags` line of `/proc/cpuinfo` lists `vmx` or `svm`.
pub fn cpu_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// The host CPU frequency in kHz, for the guest's `tsc_early_khz` (TCG hangs in TSC
/// calibration now and then without it).
pub fn host_cpu_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// The guest kernel's command line.
pub fn kernel_cmdline(accel: Accel) -> String {
    let mut s = String::from(
        "console=ttyS0 quiet reboot=k panic=-1 no_timer_check mitigations=off \
         cryptomgr.notests audit=0 lsm=capability init_on_alloc=0",
    );
    if accel == Accel::Tcg {
        if let Some(khz) = host_cpu_khz() {
            s.push_str(&format!(" tsc_early_khz={khz}"));
        }
    }
    s
}

/// How QEMU maps the guest RAM file (`memory-backend-file,share=`), and so what saving the VM
/// writes: the state stream leaves out RAM that is a shared file (`x-ignore-shared`) and
/// carries any other. That capability changes the stream's format, so a loader must be told
/// how the VM that saved a state mapped its RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamMapping {
    /// `share=on`: the file is the guest's RAM. A saved state holds device state only; the RAM
    /// stays in the file.
    Shared,
    /// `share=off`: the file is a read-only starting point mapped copy-on-write (the guest's
    /// writes stay in the QEMU process). A saved state carries the RAM.
    CopyOnWrite,
}

impl RamMapping {
    /// The `share=` value of the memory backend.
    fn share(self) -> &'static str {
        match self {
            RamMapping::Shared => "on",
            RamMapping::CopyOnWrite => "off",
        }
    }

    /// The `x-ignore-shared` capability a save from a VM mapped like this uses, and a load of
    /// its state must use too.
    fn ignore_shared(self) -> bool {
        self == RamMapping::Shared
    }
}

/// How a QEMU process starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Boots the kernel.
    Boot,
    /// Waits for a saved state to be loaded (`-incoming defer`), the guest stopped.
    Incoming,
}

/// Everything QEMU needs to run one VM. The same spec (apart from `mem_path`/`mem_mapping`)
/// must be used to restore a VM that was saved with it: the device layout has to match.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub qemu_bin: PathBuf,
    pub accel: Accel,
    pub vcpus: u32,
    pub memory_mb: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// Guest RAM file.
    pub mem_path: PathBuf,
    /// How the RAM file is mapped (and so whether a saved state carries the RAM).
    pub mem_mapping: RamMapping,
    /// The root disk (qcow2).
    pub disk: PathBuf,
    /// TAP device inside the VM's network namespace.
    pub tap: String,
    pub mac: String,
    /// Directory for the QMP socket, pid file and console log.
    pub run_dir: PathBuf,
}

impl VmSpec {
    pub fn qmp_path(&self) -> PathBuf {
        self.run_dir.join("qmp.sock")
    }
    pub fn pid_path(&self) -> PathBuf {
        self.run_dir.join("qemu.pid")
    }
    pub fn console_path(&self) -> PathBuf {
        self.run_dir.join("console.log")
    }
}

/// The QEMU command line for `spec`; [`Start::Incoming`] adds `-incoming defer` for a restore.
pub fn qemu_args(spec: &VmSpec, start: Start) -> Vec<String> {
    let (accel, cpu) = match spec.accel {
        Accel::Kvm => ("kvm", "host,-arch-capabilities"),
        Accel::Tcg => ("tcg", "max"),
    };
    let mut a: Vec<String> = vec![
        "-accel".into(),
        accel.into(),
        "-cpu".into(),
        cpu.into(),
        "-M".into(),
        "microvm,x-option-roms=off,pic=off,memory-backend=mem".into(),
        "-m".into(),
        format!("{}M", spec.memory_mb),
        "-smp".into(),
        spec.vcpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-no-reboot".into(),
        "-display".into(),
        "none".into(),
        "-daemonize".into(),
        "-pidfile".into(),
        spec.pid_path().display().to_string(),
        "-serial".into(),
        format!("file:{}", spec.console_path().display()),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", spec.qmp_path().display()),
        "-kernel".into(),
        spec.kernel.display().to_string(),
        "-initrd".into(),
        spec.initrd.display().to_string(),
        "-append".into(),
        spec.cmdline.clone(),
        "-object".into(),
        format!(
            "memory-backend-file,id=mem,size={}M,mem-path={},share={}",
            spec.memory_mb,
            spec.mem_path.display(),
            spec.mem_mapping.share()
        ),
        "-drive".into(),
        format!(
            "id=root,file={},format=qcow2,if=none,discard=unmap",
            spec.disk.display()
        ),
        "-device".into(),
        "virtio-blk-device,drive=root".into(),
        "-netdev".into(),
        format!("tap,id=net0,ifname={},script=no,downscript=no", spec.tap),
        "-device".into(),
        format!("virtio-net-device,netdev=net0,mac={}", spec.mac),
        "-device".into(),
        "virtio-rng-device".into(),
    ];
    match start {
        Start::Boot => {}
        Start::Incoming => {
            a.push("-incoming".into());
            a.push("defer".into());
        }
    }
    a
}

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
            vm.qmp
                .execute(
                    "migrate-incoming",
                    json!({ "uri": format!("exec:cat {}", shell_path(state)?) }),
                )
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
        Ok(Vm { pid, qmp, spec })
    }

    async fn spawn(
        spec: VmSpec,
        start: Start,
        pre_exec: Option<PreExec<'_>>,
    ) -> Result<Vm, VmError> {
        std::fs::create_dir_all(&spec.run_dir).map_err(io_err("create run dir"))?;
        for p in [spec.qmp_path(), spec.pid_path()] {
            let _ = std::fs::remove_file(p);
        }
        let mut std_cmd = std::process::Command::new(&spec.qemu_bin);
        std_cmd
            .args(qemu_args(&spec, start))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if let Some(hook) = pre_exec {
            hook(&mut std_cmd).map_err(|e| VmError::Start(format!("prepare QEMU: {e}")))?;
        }
        let out = tokio::process::Command::from(std_cmd)
            .output()
            .await
            .map_err(|e| VmError::Start(format!("{}: {e}", spec.qemu_bin.display())))?;
        if !out.status.success() {
            return Err(VmError::Start(format!(
                "{} ({}): {}",
                spec.qemu_bin.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let pid = read_pid(&spec.pid_path())?;
        let qmp = match Qmp::connect_retry(&spec.qmp_path(), Duration::from_secs(5)).await {
            Ok(q) => q,
            Err(e) => {
                kill_pid(pid);
                return Err(e.into());
            }
        };
        Ok(Vm { pid, qmp, spec })
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
        self.qmp
            .execute(
                "migrate",
                json!({ "uri": format!("exec:cat > {}", shell_path(&tmp)?) }),
            )
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
        Ok(())
    }

    /// Kills QEMU at once and waits until it is gone.
    pub async fn kill(&self) {
        kill_pid(self.pid);
        wait_gone(self.pid, Duration::from_secs(5)).await;
    }
}

/// Paths go into QEMU's `exec:` migration URI, which runs through `/bin/sh`; only plain paths
/// are accepted so nothing in them can be interpreted by the shell.
fn shell_path(p: &Path) -> Result<String, VmError> {
    let s = p.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        Ok(s)
    } else {
        Err(VmError::Migration(format!(
            "path {s:?} has characters that are not allowed in a state path"
        )))
    }
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
    let needle = qmp.display().to_string();
    cmdline
        .split(|b| *b == 0)
        .any(|arg| String::from_utf8_lossy(arg).contains(&needle))
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

    fn spec() -> VmSpec {
        VmSpec {
            qemu_bin: "qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            vcpus: 2,
            memory_mb: 512,
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd.img".into(),
            cmdline: "console=ttyS0".into(),
            mem_path: "/s/mem".into(),
            mem_mapping: RamMapping::CopyOnWrite,
            disk: "/s/disk.qcow2".into(),
            tap: "tap0".into(),
            mac: "02:fc:00:00:00:02".into(),
            run_dir: "/s".into(),
        }
    }

    #[test]
    fn accel_differs_only_in_accel_and_cpu_flags() {
        let tcg = qemu_args(&spec(), Start::Boot);
        let kvm = qemu_args(
            &VmSpec {
                accel: Accel::Kvm,
                ..spec()
            },
            Start::Boot,
        );
        let diff: Vec<_> = tcg.iter().zip(&kvm).filter(|(a, b)| a != b).collect();
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(tcg.windows(2).any(|w| w[0] == "-accel" && w[1] == "tcg"));
        assert!(kvm
            .windows(2)
            .any(|w| w[0] == "-cpu" && w[1] == "host,-arch-capabilities"));
    }

    #[test]
    fn memory_backend_share_and_incoming() {
        let a = qemu_args(&spec(), Start::Incoming);
        assert!(a.iter().any(|x| x.contains("mem-path=/s/mem,share=off")));
        assert!(a.iter().any(|x| x == "512M"));
        assert_eq!(&a[a.len() - 2..], ["-incoming", "defer"]);
        let b = qemu_args(
            &VmSpec {
                mem_mapping: RamMapping::Shared,
                ..spec()
            },
            Start::Boot,
        );
        assert!(b.iter().any(|x| x.contains("share=on")));
        assert!(!b.iter().any(|x| x == "-incoming"));
    }

    #[test]
    fn hw_virt_detection_reads_flags() {
        assert!(cpu_has_hw_virt("flags\t: fpu vme vmx sse\n"));
        assert!(cpu_has_hw_virt("flags\t: fpu svm\n"));
        assert!(!cpu_has_hw_virt(
            "flags\t: fpu vme sse hypervisor\nmodel name: vmx-like\n"
        ));
    }

    #[test]
    fn state_paths_are_shell_safe() {
        assert!(shell_path(Path::new("/var/lib/wrenn/sb-1/state")).is_ok());
        assert!(shell_path(Path::new("/tmp/a;rm -rf /")).is_err());
        assert!(shell_path(Path::new("/tmp/a b")).is_err());
    }

    #[test]
    fn tcg_cmdline_sets_tsc_khz() {
        let c = kernel_cmdline(Accel::Tcg);
        assert!(c.contains("console=ttyS0"));
        if host_cpu_khz().is_some() {
            assert!(c.contains("tsc_early_khz="));
        }
        assert!(!kernel_cmdline(Accel::Kvm).contains("tsc_early_khz"));
    }

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
