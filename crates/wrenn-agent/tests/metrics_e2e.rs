//! End-to-end test of a sandbox's resource samples with a real microVM, through the agent's
//! HTTP API (`GET /v1/sandboxes/{id}/metrics`): a running guest gets samples every two
//! seconds; a busy loop in the guest shows as CPU, the QEMU's resident memory is within what
//! the guest and QEMU can hold, and a file written in the guest grows the disk layer's
//! allocated bytes. A paused sandbox keeps its samples; a destroyed one has none (404).
//!
//! Needs root and the guest images, as `vm_e2e.rs`. Slots 9750-9799, network prefix `cm`.

use serde_json::Value;
use std::time::Duration;

mod common;

use common::*;

const PREFIX: &str = "cm";
const FIRST_SLOT: u32 = 9750;
const MEMORY_MB: u64 = 256;

async fn start_agent() -> TestAgent {
    let slots = Slots {
        prefix: PREFIX,
        first: FIRST_SLOT,
        count: 50,
        pool: 1,
    };
    TestAgent::start(scratch_dir("metrics"), slots).await
}

impl TestAgent {
    /// The sandbox's samples of the last `range_secs` seconds.
    async fn metrics(&self, id: &str, range_secs: u32) -> (u16, Vec<Value>) {
        let (s, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/sandboxes/{id}/metrics?range_secs={range_secs}"),
                None,
            )
            .await;
        (s, v.as_array().cloned().unwrap_or_default())
    }

    /// Waits until the sandbox has more than `n` samples; returns them.
    async fn more_than(&self, id: &str, n: usize) -> Vec<Value> {
        for _ in 0..60 {
            let (s, points) = self.metrics(id, 600).await;
            assert_eq!(s, 200);
            if points.len() > n {
                return points;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("sandbox {id} did not get more than {n} samples");
    }
}

fn num(p: &Value, k: &str) -> f64 {
    p[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {p}"))
}

#[test]
fn a_running_guest_is_sampled_with_plausible_values() {
    rt().block_on(async {
        let a = start_agent().await;
        let id = a.create("minimal", MEMORY_MB as u32).await;

        // Samples come every two seconds while the guest runs.
        let idle = a.more_than(&id, 1).await;
        let before = idle.len();
        let last = idle.last().unwrap();
        let t0 = last["timestamp_unix"].as_i64().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(
            (now - 30..=now + 1).contains(&t0),
            "sample time {t0}, now {now}"
        );
        let disk_before = num(last, "disk_bytes");
        assert!(disk_before > 0.0, "{last}");

        // Busy for six seconds and a 16 MiB file written and synced.
        a.sh(
            &id,
            "end=$(( $(date +%s) + 6 )); while [ $(date +%s) -lt $end ]; do :; done; \
             dd if=/dev/urandom of=/root/blob bs=1M count=16 2>/dev/null && sync",
        )
        .await;
        let busy = a.more_than(&id, before + 1).await;
        let max_cpu = busy.iter().map(|p| num(p, "cpu_pct")).fold(0.0, f64::max);
        assert!(max_cpu > 10.0, "a busy guest shows no CPU: {busy:?}");
        for p in &busy {
            let cpu = num(p, "cpu_pct");
            assert!((0.0..=100.0).contains(&cpu), "{p}");
            let mem = num(p, "mem_bytes");
            // QEMU holds at least some of the guest, and not more than the guest's RAM plus
            // QEMU's own (its translation buffer under TCG included).
            assert!(mem > 16.0 * 1048576.0, "{p}");
            assert!(mem < (MEMORY_MB + 1024) as f64 * 1048576.0, "{p}");
        }
        let times: Vec<i64> = busy
            .iter()
            .map(|p| p["timestamp_unix"].as_i64().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        // The file is in the sandbox's own disk layer; a new sample sees it.
        let grown = a.more_than(&id, busy.len()).await;
        let disk_after = num(grown.last().unwrap(), "disk_bytes");
        assert!(
            disk_after >= disk_before + 8.0 * 1048576.0,
            "disk {disk_before} -> {disk_after}"
        );
        // A long range answers one-minute averages: the minute under way at least.
        let (s, day) = a.metrics(&id, 86_400).await;
        assert_eq!(s, 200);
        assert!(!day.is_empty() && day.len() <= 2, "{day:?}");

        // Paused: the samples it had stay, and no new ones come.
        let (s, v) = a
            .call(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{id}/pause"),
                None,
            )
            .await;
        assert_eq!(s, 200, "pause: {v}");
        let (_, kept) = a.metrics(&id, 600).await;
        assert!(!kept.is_empty());
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (_, later) = a.metrics(&id, 600).await;
        assert_eq!(kept.len(), later.len());

        a.destroy(&id).await;
        let (s, _) = a.metrics(&id, 600).await;
        assert_eq!(s, 404);
        let (s, _) = a.metrics("sb-none", 0).await;
        assert_eq!(s, 400, "a zero range is refused before the lookup");
        let _ = std::fs::remove_dir_all(&a.data_dir);
    });
}
