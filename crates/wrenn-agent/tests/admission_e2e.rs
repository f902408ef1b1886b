//! End-to-end test of admission against committed memory with real microVMs: an agent whose
//! memory reserve leaves room for one 256 MiB sandbox (256 MiB + the per-VM overhead) and not
//! two refuses the second create and a resume with its capacity error (503 `capacity`),
//! counts a paused sandbox as nothing, and of two creates arriving together admits exactly
//! one.
//!
//! Needs root and the guest images, as `vm_e2e.rs`. Slots 9250-9259, network prefix `en`.

use serde_json::{json, Value};
use wrenn_agent::sandbox::AdmissionConfig;

mod common;

use common::*;

/// The host's total memory in MiB.
fn total_memory_mb() -> u64 {
    common::proc_kib("/proc/meminfo", "MemTotal") / 1024
}

async fn try_create(a: &TestAgent, id: &str) -> (u16, Value) {
    a.call(
        reqwest::Method::POST,
        "/v1/sandboxes",
        Some(json!({"id": id, "template": "minimal", "vcpus": 1, "memory_mb": 256})),
    )
    .await
}

fn assert_capacity(answer: &(u16, Value), what: &str) {
    assert_eq!(
        (answer.0, answer.1["error"]["code"].as_str()),
        (503, Some("capacity")),
        "{what}: {}",
        answer.1
    );
}

#[test]
fn creates_and_resumes_are_admitted_against_committed_memory() {
    rt().block_on(async {
        let dir = scratch_dir("admission");
        let slots = Slots {
            prefix: "en",
            first: 9250,
            count: 4,
            pool: 0,
        };
        // 500 MiB may be committed: one 256 MiB VM (320 with its overhead), not two.
        let reserve = total_memory_mb() - 500;
        let a = TestAgent::start_with(dir, slots, |cfg| {
            cfg.admission = AdmissionConfig {
                memory_reserve_mb: reserve,
                ..AdmissionConfig::default()
            };
        })
        .await;

        let first = a.create("minimal", 256).await;
        let refused = try_create(&a, "sb-adm-second").await;
        assert_capacity(&refused, "a second create");
        // Refused before anything was made: the id is free, nothing is listed.
        let (_, list) = a.get("/v1/sandboxes").await;
        assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");

        // A paused sandbox commits no memory; resuming it while another runs is refused, and
        // leaves it paused.
        a.lifecycle(&first, "pause").await;
        let second = a.create("minimal", 256).await;
        let refused = a.post(&format!("/v1/sandboxes/{first}/resume")).await;
        assert_capacity(&refused, "a resume");
        let (_, v) = a.get(&format!("/v1/sandboxes/{first}")).await;
        assert_eq!(v["status"], "paused", "{v}");
        a.destroy(&second).await;
        a.lifecycle(&first, "resume").await;
        a.destroy(&first).await;

        // Two creates at once: exactly one is admitted.
        let (x, y) = tokio::join!(try_create(&a, "sb-adm-x"), try_create(&a, "sb-adm-y"));
        let admitted: Vec<&(u16, Value)> = [&x, &y].into_iter().filter(|r| r.0 == 201).collect();
        assert_eq!(admitted.len(), 1, "{x:?} {y:?}");
        let other = if x.0 == 201 { &y } else { &x };
        assert_capacity(other, "the concurrent create");
        a.destroy(admitted[0].1["id"].as_str().unwrap()).await;

        if let Err(err) = a.agent.manager.slot_pool().shutdown() {
            eprintln!("shutting down the admission test slots: {err}");
        }
        let _ = std::fs::remove_dir_all(&a.data_dir);
    });
}
