//! The machine itself: running as root, the accelerator (KVM, or TCG and why), cgroup v2,
//! memory.

use super::{human_bytes, Check};
use crate::vmm::{self, Accel, AccelChoice};

pub fn privileges() -> Check {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        Check::ok("root", "running as root")
    } else {
        Check::fail(
            "root",
            format!("running as uid {uid}: network namespaces, iptables and debootstrap need root"),
            "run it with sudo",
        )
    }
}

/// Why KVM cannot be used here, or `None` when it can. The rule is [`vmm::choose_accel`]'s:
/// `/dev/kvm` opens read-write and the CPU has vmx/svm.
fn kvm_unusable() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw_virt = vmm::cpu_has_hw_virt(&cpuinfo);
    let opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    match (opens, hw_virt) {
        (Ok(_), true) => None,
        (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => Some(if hw_virt {
            "no /dev/kvm (the kvm_intel or kvm_amd module is not loaded)".into()
        } else {
            "no /dev/kvm, and the CPU has no vmx/svm flags (no hardware virtualisation, e.g. a VM \
             without nested virtualisation)"
                .into()
        }),
        (Err(e), _) => Some(format!("/dev/kvm does not open read-write: {e}")),
        (Ok(_), false) => Some(
            "/dev/kvm opens but the CPU reports no vmx/svm flags, so it cannot run ordinary \
             guest kernels (a VM without nested virtualisation)"
                .into(),
        ),
    }
}

pub fn accelerator(choice: AccelChoice) -> Check {
    let name = "accelerator";
    let chosen = vmm::choose_accel(choice);
    let why_not = kvm_unusable();
    match (choice, chosen, why_not) {
        (_, Accel::Kvm, None) => Check::ok(name, "KVM: /dev/kvm opens and the CPU has vmx/svm"),
        (_, Accel::Kvm, Some(why)) => Check::fail(
            name,
            format!("KVM was asked for (--accel kvm), but {why}"),
            "use --accel auto (TCG fallback), or a host with hardware virtualisation",
        ),
        (AccelChoice::Tcg, _, _) => Check::ok(name, "TCG emulation, as asked (--accel tcg)"),
        (_, Accel::Tcg, why) => Check::warning(
            name,
            format!(
                "TCG emulation, several times slower than KVM: {}",
                why.unwrap_or_else(|| "KVM is not usable".into())
            ),
            "for KVM, run on bare metal or a VM with nested virtualisation, with the kvm module \
             loaded",
        ),
    }
}

/// The jail of every VM (to come) puts each QEMU in a cgroup v2 of its own.
pub fn cgroup_v2() -> Check {
    let name = "cgroup v2";
    let fix = "boot with systemd.unified_cgroup_hierarchy=1 (the VM jail will need the unified \
               hierarchy; nothing uses it yet)";
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let cgroup2: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then_some(dir)
        })
        .collect();
    if cgroup2.contains(&"/sys/fs/cgroup") {
        let controllers =
            std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
        let missing: Vec<_> = ["cpu", "memory", "pids", "io"]
            .into_iter()
            .filter(|c| !controllers.split_whitespace().any(|x| x == *c))
            .collect();
        if missing.is_empty() {
            Check::ok(
                name,
                format!(
                    "unified hierarchy at /sys/fs/cgroup ({})",
                    controllers.trim()
                ),
            )
        } else {
            Check::warning(
                name,
                format!(
                    "unified hierarchy without the {} controllers",
                    missing.join(", ")
                ),
                fix,
            )
        }
    } else if let Some(dir) = cgroup2.first() {
        Check::warning(
            name,
            format!("hybrid mode: cgroup v2 at {dir} beside cgroup v1 controllers"),
            fix,
        )
    } else {
        Check::warning(name, "not mounted (cgroup v1 only)", fix)
    }
}

pub fn memory() -> Check {
    let name = "memory";
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |key: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(key))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    let (Some(available), Some(total)) = (field("MemAvailable:"), field("MemTotal:")) else {
        return Check::warning(name, "cannot read /proc/meminfo", "mount /proc");
    };
    let detail = format!(
        "{} available of {}",
        human_bytes(available),
        human_bytes(total)
    );
    // A default sandbox has 512 MiB; below 1 GiB there is room for one at most. Never a
    // failure: a restarted agent finds its running VMs holding most of the memory.
    if available < 1 << 30 {
        Check::warning(
            name,
            format!("{detail}: room for one default sandbox (512 MiB) at most"),
            "free memory or add some; each sandbox needs its --memory",
        )
    } else {
        Check::ok(name, detail)
    }
}
