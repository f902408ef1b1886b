//! Host checks (`wrenn doctor`): this host looked at the way the agent will use it — the
//! programs it runs ([`programs.txt`](programs::LIST), the list `scripts/deps.sh` installs), the
//! kernel features of its network slots, the accelerator, the VM cgroups (v2 or v1), disk and
//! memory, the data directory and the guest images. Each check gives one line: ok, warning or
//! fail, and for the last two what to do. `wrenn up` and `wrenn agent` run the same checks
//! before they start and refuse to start on a failing one.
//!
//! Owns: looking. The only change it makes is a throwaway network namespace (with a TAP device
//! and a few iptables rules inside), deleted before [`run`] returns. Must not: fix the host,
//! start VMs, build images; start-up ([`crate::host`]) does the fixing it can.

mod data_dir;
mod network;
pub mod programs;
mod system;

use crate::startup::AgentConfig;
use crate::vmm::AccelChoice;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// The agent works, with less (slower, fewer features, short on room); worth fixing.
    Warning,
    /// The agent cannot work like this: start-up refuses.
    Fail,
}

impl Status {
    /// The word printed at the start of the check's line.
    pub fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Fail => "fail",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub status: Status,
    /// What was checked: a program's name, `network namespaces`, `data dir`, ….
    pub name: String,
    /// What was found.
    pub detail: String,
    /// What to do about it (warnings and failures).
    pub fix: Option<String>,
}

impl Check {
    pub(crate) fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status: Status::Ok,
            name: name.into(),
            detail: detail.into(),
            fix: None,
        }
    }

    pub(crate) fn warning(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Warning,
            name: name.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub(crate) fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Fail,
            name: name.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// `ok       qemu-img            qemu-img version 10.0.2 (…)`, with `; fix: …` when there is one.
impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<8} {:<19} {}",
            self.status.word(),
            self.name,
            self.detail
        )?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

/// What the checks need to know about the agent that will run here.
#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    pub accel: AccelChoice,
    /// The QEMU the agent starts (checked in place of `qemu-system-x86_64` from the list).
    pub qemu_bin: PathBuf,
    /// The static envd given to the agent, if any (needed only when images are missing).
    pub envd_bin: Option<PathBuf>,
}

impl From<&AgentConfig> for Options {
    fn from(cfg: &AgentConfig) -> Self {
        Self {
            data_dir: cfg.data_dir.clone(),
            accel: cfg.accel,
            qemu_bin: cfg.qemu_bin.clone(),
            envd_bin: cfg.envd_bin.clone(),
        }
    }
}

/// Every check's outcome, in the order they ran.
#[derive(Debug, Clone)]
pub struct Report {
    pub checks: Vec<Check>,
    pub elapsed: Duration,
}

impl Report {
    /// The checks that came out as `status`.
    pub fn with_status(&self, status: Status) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(move |c| c.status == status)
    }

    /// True when no check failed (warnings allowed).
    pub fn passed(&self) -> bool {
        self.with_status(Status::Fail).next().is_none()
    }

    /// `31 ok, 2 warnings, 0 failed (0.35 s)`.
    pub fn summary(&self) -> String {
        let count = |s| self.with_status(s).count();
        format!(
            "{} ok, {} warnings, {} failed ({:.2} s)",
            count(Status::Ok),
            count(Status::Warning),
            count(Status::Fail),
            self.elapsed.as_secs_f64()
        )
    }
}

/// Runs every check (blocking: it runs programs; call it from a blocking thread in async code).
pub fn run(opts: &Options) -> Report {
    let start = Instant::now();
    let mut checks = vec![system::privileges()];
    let programs = programs::check_all(&opts.qemu_bin);
    let ip_runs = programs
        .iter()
        .any(|c| c.name == "ip" && c.status != Status::Fail);
    let iptables_runs = programs
        .iter()
        .any(|c| c.name == "iptables-restore" && c.status != Status::Fail);
    checks.extend(programs);
    checks.push(network::tun_device());
    checks.extend(network::namespace_and_rules(ip_runs, iptables_runs));
    checks.push(network::forwarding());
    checks.push(system::cgroups());
    checks.push(system::accelerator(opts.accel));
    checks.push(system::memory());
    checks.push(data_dir::free_disk(&opts.data_dir));
    checks.push(data_dir::reflink(&opts.data_dir));
    checks.push(data_dir::permissions(&opts.data_dir));
    checks.push(data_dir::images(&opts.data_dir, opts.envd_bin.as_deref()));
    Report {
        checks,
        elapsed: start.elapsed(),
    }
}

/// Bytes as `1.5 GiB` / `300.0 MiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.1} GiB", b / GIB)
    } else {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_status_name_detail_and_fix() {
        let c = Check::fail(
            "qemu-img",
            "not found on PATH",
            "apt-get install qemu-utils",
        );
        let line = c.to_string();
        assert!(line.starts_with("fail     qemu-img "), "{line}");
        assert!(
            line.ends_with("not found on PATH; fix: apt-get install qemu-utils"),
            "{line}"
        );
        assert_eq!(
            Check::ok("ip", "ip utility").to_string(),
            format!("ok       {:<19} ip utility", "ip")
        );
    }

    #[test]
    fn a_report_passes_with_warnings_but_not_with_a_failure() {
        let mut r = Report {
            checks: vec![Check::ok("a", "x"), Check::warning("b", "y", "z")],
            elapsed: Duration::from_millis(120),
        };
        assert!(r.passed());
        assert_eq!(r.summary(), "1 ok, 1 warnings, 0 failed (0.12 s)");
        r.checks.push(Check::fail("c", "gone", "install it"));
        assert!(!r.passed());
    }

    #[test]
    fn bytes_read_as_mib_or_gib() {
        assert_eq!(human_bytes(300 * 1024 * 1024), "300.0 MiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }
}
