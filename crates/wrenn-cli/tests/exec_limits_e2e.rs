//! Large exec output end to end: a real `wrenn up` and real microVMs. Twenty buffered execs at
//! once, each printing 32 MiB, on two sandboxes: every one answers 200 with exit code 0, the
//! first 1 MiB of its output (the default cap, kept by envd in the guest), `stdout_truncated`
//! and the total byte count, while the `wrenn up` process's resident memory (sampled all
//! through the run) stays under a stated bound.
//!
//! Needs root and the guest images (`WRENN_DATA_DIR`, default `/var/lib/wrenn`) built with
//! this tree's envd. Slots 9950-9999, network prefix `xl`. `WRENN_XL_EXECS` and `WRENN_XL_MIB`
//! change the number of execs and the MiB each prints (for measuring).
//! Run: `flock -o /tmp/wrenn-vm-tests.lock cargo test -p wrenn-cli --test exec_limits_e2e`

mod common;

use common::{enter, rss_bytes, rt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The default output cap of a buffered exec (`ExecLimits::default().max_output_bytes`).
const CAP: u64 = 1024 * 1024;
/// The bound on the `wrenn up` process's resident memory during the run. Measured (TCG, two
/// cores): 53 MiB before, a peak of 85 MiB during the twenty execs (VmHWM 86 MiB), all twenty
/// answered in 20 s; without the caps four such execs grew it from 119 to 211 MiB and failed.
const RSS_BOUND: u64 = 128 * 1024 * 1024;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn twenty_execs_printing_32_mib_each_are_capped_and_memory_stays_bounded() {
    common::use_slots("xl", 9950);
    rt().block_on(async {
        let t = enter().await;
        let api = t.suite.api(&t.suite.alice);
        let execs = env_num("WRENN_XL_EXECS", 20);
        let mib = env_num("WRENN_XL_MIB", 32);
        let total = mib * 1024 * 1024;

        // Two sandboxes, so the twenty stay within the default 16 per sandbox.
        let mut ids = Vec::new();
        for _ in 0..2 {
            let (sb, _) = api.create(json!({})).await;
            ids.push(sb["id"].as_str().unwrap().to_string());
        }

        let pid = t.suite.daemon_pid();
        let before = rss_bytes(pid).expect("daemon RSS");
        let peak = Arc::new(AtomicU64::new(before));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done) = (peak.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::SeqCst) {
                    if let Some(rss) = rss_bytes(pid) {
                        peak.fetch_max(rss, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };

        // Prints `total` bytes of 'x' on stdout and a short line on stderr.
        let script = format!("head -c {total} /dev/zero | tr '\\0' x; echo done >&2");
        let began = Instant::now();
        let tasks: Vec<_> = (0..execs)
            .map(|i| {
                let api = api.clone();
                let id = ids[i as usize % ids.len()].clone();
                let body = json!({"cmd": "sh", "args": ["-c", script], "timeout_sec": 1800});
                tokio::spawn(async move {
                    let (s, v) = api.post(&format!("/v1/sandboxes/{id}/exec"), body).await;
                    (s, v)
                })
            })
            .collect();
        let mut answers: Vec<(u16, Value)> = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        let took = began.elapsed();
        done.store(true, Ordering::SeqCst);
        sampler.await.unwrap();
        let peak = peak.load(Ordering::SeqCst);
        let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .map(str::to_string)
            })
            .unwrap_or_default();
        eprintln!(
            "[numbers] {execs} execs x {mib} MiB in {took:?}; wrenn up RSS before {} MiB, \
             peak {} MiB ({hwm})",
            before / (1024 * 1024),
            peak / (1024 * 1024)
        );

        for (s, v) in &answers {
            assert_eq!(*s, 200, "exec: {v}");
            assert_eq!(v["exit_code"], 0, "{v}");
            assert_eq!(v["encoding"], "utf-8");
            let stdout = v["stdout"].as_str().unwrap();
            let kept = CAP.min(total);
            assert_eq!(stdout.len() as u64, kept, "kept output");
            assert!(stdout.bytes().all(|b| b == b'x'));
            assert_eq!(
                v["stdout_truncated"],
                total > CAP,
                "{}",
                v["stdout_truncated"]
            );
            assert_eq!(v["stdout_bytes"], total);
            assert_eq!(v["stderr"], "done\n");
            assert_eq!(v["stderr_truncated"], false);
            assert_eq!(v["stderr_bytes"], 5);
        }
        assert!(
            peak < RSS_BOUND,
            "wrenn up's RSS peaked at {} MiB, over the bound of {} MiB",
            peak / (1024 * 1024),
            RSS_BOUND / (1024 * 1024)
        );

        for id in &ids {
            api.destroy(id).await;
        }
    });
}
