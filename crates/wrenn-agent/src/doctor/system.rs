//! The machine itself: running as root, the accelerator (KVM, or TCG and why), the VM
//! cgroups' backend, memory.

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

/// The per-VM cgroups (`vmm::cgroup`): which backend the agent will use, v2 or v1, or none.
pub fn cgroups() -> Check {
    let name = "cgroups";
    match vmm::cgroup::Backend::probe() {
        Ok(b) => Check::ok(name, format!("a group per VM, {}", b.describe())),
        Err(why) => Check::warning(
            name,
            format!("VMs will run without CPU, memory and task limits: {why}"),
            "mount the cgroup v2 hierarchy with the cpu, memory and pids controllers \
             (systemd.unified_cgroup_hierarchy=1), or the cgroup v1 cpu, memory and pids \
             hierarchies writable",
        ),
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
