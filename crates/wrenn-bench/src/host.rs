//! Readings of the host from `/proc`: load average, available memory, the CPU time all
//! processes used so far and the proportional set size of a process. Read-only; parse failures give zero or `None`, never an error.

use std::path::Path;

/// A `/proc/meminfo`-style `Key:   123 kB` line's value in kB.
fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

fn meminfo(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    kb_field(&text, key).unwrap_or(0) / 1024
}

/// `MemAvailable` in MiB.
pub fn mem_available_mb() -> u64 {
    meminfo("MemAvailable")
}

/// `MemTotal` in MiB.
pub fn mem_total_mb() -> u64 {
    meminfo("MemTotal")
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> [f64; 3] {
    parse_loadavg(&std::fs::read_to_string("/proc/loadavg").unwrap_or_default())
}

fn parse_loadavg(text: &str) -> [f64; 3] {
    let mut out = [0.0; 3];
    for (o, v) in out.iter_mut().zip(text.split_whitespace()) {
        *o = v.parse().unwrap_or(0.0);
    }
    out
}

/// CPU time the host's CPUs spent busy since boot (all but idle and I/O wait), in seconds, from
/// the `cpu` line of `/proc/stat` (in USER_HZ, 100 a second).
pub fn cpu_busy_s() -> f64 {
    parse_cpu_busy(&std::fs::read_to_string("/proc/stat").unwrap_or_default())
}

fn parse_cpu_busy(text: &str) -> f64 {
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest times are inside user).
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    busy as f64 / 100.0
}

/// Proportional set size of process `pid` in MB (MiB), from `smaps_rollup`.
pub fn pss_mb(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(
        Path::new("/proc")
            .join(pid.to_string())
            .join("smaps_rollup"),
    )
    .ok()?;
    kb_field(&text, "Pss").map(|kb| kb as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_cpu_leaves_out_idle_and_io_wait() {
        let stat = "cpu  100 20 30 5000 400 6 7 8 0 0\ncpu0 50 10 15 2500 200 3 3 4 0 0\n";
        assert!((parse_cpu_busy(stat) - 1.71).abs() < 1e-9);
        assert_eq!(parse_cpu_busy("nothing"), 0.0);
    }

    #[test]
    fn parses_proc_fields() {
        let rollup = "55a0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:  204800 kB\nPss:   51200 kB\nPss_Anon: 1 kB\n";
        assert_eq!(kb_field(rollup, "Pss"), Some(51200));
        assert_eq!(kb_field(rollup, "Rss"), Some(204800));
        assert_eq!(kb_field(rollup, "Swap"), None);
        assert_eq!(
            parse_loadavg("1.50 0.75 0.25 3/120 999\n"),
            [1.5, 0.75, 0.25]
        );
    }

    #[test]
    fn reads_this_process() {
        let pss = pss_mb(std::process::id()).expect("own smaps_rollup");
        assert!(pss > 0.0);
        assert!(mem_total_mb() >= mem_available_mb());
    }
}
