//! Readings of the host from `/proc`: load average, available memory and the proportional
//! set size of a process. Read-only; parse failures give zero or `None`, never an error.

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
