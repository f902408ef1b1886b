//! What QEMU is asked to run: the [`VmSpec`] of one VM, how its RAM file is mapped
//! ([`RamMapping`]), how the process starts ([`Start`]), and the command line made of them
//! ([`qemu_args`], where the KVM/TCG difference is two flags) with the guest kernel's
//! ([`kernel_cmdline`]). Plain data and strings; it must not start or talk to QEMU.

use super::accel::host_cpu_khz;
use super::Accel;
use std::path::PathBuf;

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

    /// Extra backend options: a copy-on-write file is opened read-only (the jailed QEMU may
    /// only read a template's RAM file), the guest's RAM still writable (`rom=off`).
    fn open_flags(self) -> &'static str {
        match self {
            RamMapping::Shared => "",
            RamMapping::CopyOnWrite => ",readonly=on,rom=off",
        }
    }

    /// The `x-ignore-shared` capability a save from a VM mapped like this uses, and a load of
    /// its state must use too.
    pub(super) fn ignore_shared(self) -> bool {
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
    /// Directory for the QMP socket, pid file, console log and the jail.
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
    /// QEMU's own messages (its stderr).
    pub fn log_path(&self) -> PathBuf {
        self.run_dir.join("qemu.log")
    }
    /// The root QEMU sees: links to the VM's files (see `jail.rs`).
    pub fn jail_path(&self) -> PathBuf {
        self.run_dir.join("jail")
    }
}

/// How one QEMU process is wired up: where it finds its files (inside its jail when jailed),
/// the descriptors it inherits, and whether its seccomp filter is on.
#[derive(Debug, Clone)]
pub struct Launch {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub mem: PathBuf,
    pub disk: PathBuf,
    /// The open TAP device.
    pub tap_fd: i32,
    /// The listening QMP socket.
    pub qmp_fd: i32,
    /// QEMU's own seccomp filter.
    pub sandbox: bool,
}

impl Launch {
    /// The spec's own paths (no jail).
    pub fn plain(spec: &VmSpec, tap_fd: i32, qmp_fd: i32) -> Launch {
        Launch {
            kernel: spec.kernel.clone(),
            initrd: spec.initrd.clone(),
            mem: spec.mem_path.clone(),
            disk: spec.disk.clone(),
            tap_fd,
            qmp_fd,
            sandbox: false,
        }
    }
}

/// QEMU's seccomp filter: no obsolete system calls, no setuid/setgid, no fork or exec, no
/// scheduler or affinity changes.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// `-name` of a VM: names its QMP socket's host path, which is how [`super::is_our_qemu`]
/// recognises it (QEMU gets the socket as a descriptor, so no path of it is on the command
/// line otherwise). Commas are doubled for QEMU's option parser.
pub fn identity(spec: &VmSpec) -> String {
    format!(
        "guest={}",
        spec.qmp_path().display().to_string().replace(',', ",,")
    )
}

/// The QEMU command line for `spec` started as `launch` says; [`Start::Incoming`] adds
/// `-incoming defer` for a restore. QEMU stays in the foreground (the agent starts it in a
/// session of its own): `-daemonize` forks after the seccomp filter is on, which `spawn=deny`
/// forbids. The console is its stdout.
pub fn qemu_args(spec: &VmSpec, start: Start, launch: &Launch) -> Vec<String> {
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
        // No `x-option-roms=off`: QEMU 10 loads the PVH kernel through an option ROM, and
        // with it off the guest never starts (7.2 booted either way).
        "microvm,pic=off,memory-backend=mem".into(),
        "-m".into(),
        format!("{}M", spec.memory_mb),
        "-smp".into(),
        spec.vcpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-no-reboot".into(),
        "-display".into(),
        "none".into(),
        "-name".into(),
        identity(spec),
        "-serial".into(),
        "stdio".into(),
        "-chardev".into(),
        format!("socket,id=qmp,fd={},server=on,wait=off", launch.qmp_fd),
        "-mon".into(),
        "chardev=qmp,mode=control".into(),
        "-kernel".into(),
        launch.kernel.display().to_string(),
        "-initrd".into(),
        launch.initrd.display().to_string(),
        "-append".into(),
        spec.cmdline.clone(),
        "-object".into(),
        format!(
            "memory-backend-file,id=mem,size={}M,mem-path={},share={}{}",
            spec.memory_mb,
            launch.mem.display(),
            spec.mem_mapping.share(),
            spec.mem_mapping.open_flags()
        ),
        "-drive".into(),
        format!(
            "id=root,file={},format=qcow2,if=none,discard=unmap",
            launch.disk.display()
        ),
        "-device".into(),
        "virtio-blk-device,drive=root".into(),
        "-netdev".into(),
        format!("tap,id=net0,fd={}", launch.tap_fd),
        "-device".into(),
        format!("virtio-net-device,netdev=net0,mac={}", spec.mac),
        "-device".into(),
        "virtio-rng-device".into(),
    ];
    if launch.sandbox {
        a.push("-sandbox".into());
        a.push(SANDBOX.into());
    }
    match start {
        Start::Boot => {}
        Start::Incoming => {
            a.push("-incoming".into());
            a.push("defer".into());
        }
    }
    a
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

    fn launch() -> Launch {
        Launch {
            sandbox: true,
            ..Launch::plain(&spec(), 7, 8)
        }
    }

    #[test]
    fn jailed_command_line_takes_descriptors_and_names_its_socket() {
        let a = qemu_args(&spec(), Start::Boot, &launch());
        assert!(a.iter().any(|x| x == "tap,id=net0,fd=7"));
        assert!(a.iter().any(|x| x.contains("socket,id=qmp,fd=8,server=on")));
        assert!(a.iter().any(|x| x == "guest=/s/qmp.sock"));
        assert!(a.windows(2).any(|w| w[0] == "-sandbox" && w[1] == SANDBOX));
        assert!(!a.iter().any(|x| x == "-daemonize"));
    }

    #[test]
    fn accel_differs_only_in_accel_and_cpu_flags() {
        let tcg = qemu_args(&spec(), Start::Boot, &launch());
        let kvm = qemu_args(
            &VmSpec {
                accel: Accel::Kvm,
                ..spec()
            },
            Start::Boot,
            &launch(),
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
        let a = qemu_args(&spec(), Start::Incoming, &launch());
        assert!(a.iter().any(|x| x.contains("mem-path=/s/mem,share=off")));
        assert!(a.iter().any(|x| x == "512M"));
        assert_eq!(&a[a.len() - 2..], ["-incoming", "defer"]);
        let b = qemu_args(
            &VmSpec {
                mem_mapping: RamMapping::Shared,
                ..spec()
            },
            Start::Boot,
            &launch(),
        );
        assert!(b.iter().any(|x| x.contains("share=on")));
        assert!(!b.iter().any(|x| x == "-incoming"));
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
}
