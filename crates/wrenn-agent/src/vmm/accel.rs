//! Which accelerator guests run with (KVM where the host really has it, else TCG) and what
//! the host CPU tells the guest kernel. It reads the host only; it must not start QEMU.

use super::Accel;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hw_virt_detection_reads_flags() {
        assert!(cpu_has_hw_virt("flags\t: fpu vme vmx sse\n"));
        assert!(cpu_has_hw_virt("flags\t: fpu svm\n"));
        assert!(!cpu_has_hw_virt(
            "flags\t: fpu vme sse hypervisor\nmodel name: vmx-like\n"
        ));
    }
}
