//! A create from a snapshot template whose host cannot take it (draining, silent or full)
//! runs on another host after the control plane copies the template there, agent to agent
//! over the agent API (two simulated agents served over HTTP): later creates use the copy,
//! a delete removes every copy, an interrupted transfer continues from the bytes the
//! receiver holds, and a corrupted byte is caught by the receiver's digest check (sent again
//! once; a copy that stays corrupt leaves nothing on the receiver).

mod support;

use reqwest::Method;
use serde_json::json;
use std::sync::Arc;
use support::*;
use wrenn_server::agent::sim::SimAgent;
use wrenn_server::agent::sim_copy::SIM_MEM_BYTES;
use wrenn_server::agent::sim_server;

/// A control plane with host A (`t.sim`) and a second simulated host B.
struct Two {
    t: TestServer,
    b: Arc<SimAgent>,
    a_id: String,
    b_id: String,
    key: String,
    team_id: String,
}

impl Two {
    async fn start(email: &str) -> Two {
        let t = TestServer::start().await;
        let acc = t.account(email).await;
        let b = Arc::new(SimAgent::new(&["minimal", "python"], 1).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = sim_server::router(b.clone(), AGENT_TOKEN);
        tokio::spawn(async move { axum::serve(listener, router).await });
        let store = t.server.store();
        let a_id = store.list_hosts().await.unwrap()[0].id.clone();
        let b_id = t.server.register_host(&url, AGENT_TOKEN).await.unwrap().id;
        t.server.heartbeat_now().await;
        Two {
            t,
            b,
            a_id,
            b_id,
            key: acc.key,
            team_id: acc.team_id,
        }
    }

    async fn drain(&self, host: &str, draining: bool) {
        let store = self.t.server.store();
        assert!(store.set_host_draining(host, draining).await.unwrap());
        self.t.server.heartbeat_now().await;
    }

    /// A snapshot `name` made on host A of a sandbox holding `/app/state` = `content`.
    async fn snapshot_on_a(&self, name: &str, content: &str) -> String {
        self.drain(&self.b_id, true).await;
        let sb = self.t.sandbox(&self.key, json!({"memory_mb": 512})).await;
        let id = sb["id"].as_str().unwrap();
        assert!(self.t.sim.sandbox_status(id).is_some(), "placed on A");
        self.t.write(&self.key, id, "/app/state", content).await;
        let r = self
            .t
            .keyed(Method::POST, "/v1/snapshots", &self.key)
            .json(&json!({"sandbox_id": id, "name": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        self.drain(&self.b_id, false).await;
        self.agent_name(name).await
    }

    async fn agent_name(&self, name: &str) -> String {
        let store = self.t.server.store();
        let t = store.get_template(&self.team_id, name).await.unwrap();
        t.expect("template recorded").agent_name
    }

    async fn copies(&self, agent_name: &str) -> Vec<String> {
        let store = self.t.server.store();
        store.template_copy_hosts(agent_name).await.unwrap()
    }

    /// A sandbox from `template`: its id, after checking it holds `/app/state` = `content`.
    async fn create_from(&self, template: &str, content: &str) -> String {
        let sb = self
            .t
            .sandbox(&self.key, json!({"template": template, "memory_mb": 512}))
            .await;
        let id = sb["id"].as_str().unwrap().to_string();
        assert_eq!(self.t.cat(&self.key, &id, "/app/state").await, content);
        id
    }

    /// Heartbeats until the control plane finds host A (silent) unreachable.
    async fn until_a_unreachable(&self) {
        let store = self.t.server.store();
        tokio::time::timeout(std::time::Duration::from_secs(60), async {
            loop {
                self.t.server.heartbeat_now().await;
                let hosts = store.list_hosts().await.unwrap();
                let a = hosts.iter().find(|h| h.id == self.a_id).unwrap();
                if a.status == wrenn_server::store::HostStatus::Unreachable {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
        })
        .await
        .expect("host A found unreachable");
    }

    fn mem_reads(&self, agent_name: &str) -> Vec<u64> {
        self.t
            .sim
            .template_reads()
            .into_iter()
            .filter(|(t, f, _)| t == agent_name && f == "mem")
            .map(|(_, _, at)| at)
            .collect()
    }
}

#[tokio::test]
async fn a_create_lands_on_another_host_after_a_copy_when_the_template_host_drains_or_goes_silent()
{
    let two = Two::start("copy-drain@example.com").await;
    let name = two.snapshot_on_a("env", "before the snapshot").await;
    assert!(two.t.sim.template_names().contains(&name));
    assert!(!two.b.template_names().contains(&name));

    // Both hosts can take it: the host that holds the template is preferred, no copy.
    let on_a = two.create_from("env", "before the snapshot").await;
    assert!(two.t.sim.sandbox_status(&on_a).is_some());
    assert!(two.t.sim.template_reads().is_empty());

    // A drains: the create goes to B, after a copy B commits.
    two.drain(&two.a_id, true).await;
    let on_b = two.create_from("env", "before the snapshot").await;
    assert!(two.b.sandbox_status(&on_b).is_some(), "placed on B");
    assert!(two.b.template_names().contains(&name));
    assert!(two.b.copies_under_way().is_empty());
    assert_eq!(two.copies(&name).await, vec![two.b_id.clone()]);
    assert_eq!(two.mem_reads(&name), vec![0], "mem read once, whole");

    // Another create uses B's copy: nothing is read from A again.
    let reads = two.t.sim.template_reads().len();
    let again = two.create_from("env", "before the snapshot").await;
    assert!(two.b.sandbox_status(&again).is_some());
    assert_eq!(two.t.sim.template_reads().len(), reads);

    // A goes silent (and is no longer draining): B holds a copy, so creates go on there.
    two.drain(&two.a_id, false).await;
    two.t.sim.set_silent(true);
    two.until_a_unreachable().await;
    let v = two
        .t
        .sandbox(&two.key, json!({"template": "env", "memory_mb": 512}))
        .await;
    assert!(two.b.sandbox_status(v["id"].as_str().unwrap()).is_some());

    // A template only the silent host holds cannot be copied: a clear 503.
    two.t.sim.set_silent(false);
    two.t.server.heartbeat_now().await;
    let only_a = two.snapshot_on_a("only-a", "x").await;
    two.t.sim.set_silent(true);
    two.until_a_unreachable().await;
    let r = two
        .t
        .keyed(Method::POST, "/v1/sandboxes", &two.key)
        .json(&json!({"template": "only-a", "memory_mb": 512}))
        .send()
        .await
        .unwrap();
    assert_error(r, 503, "host_unreachable").await;
    assert!(!two.b.template_names().contains(&only_a));
    two.t.sim.set_silent(false);
    two.t.server.heartbeat_now().await;

    // Deleting the snapshot deletes it on every host that holds it.
    for id in [on_a, on_b, again] {
        let r = two
            .t
            .keyed(Method::DELETE, &format!("/v1/sandboxes/{id}"), &two.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let r = two
        .t
        .keyed(Method::DELETE, "/v1/snapshots/env", &two.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(!two.t.sim.template_names().contains(&name));
    assert!(!two.b.template_names().contains(&name));
    assert!(two.copies(&name).await.is_empty());
}

#[tokio::test]
async fn a_create_goes_to_another_host_when_the_template_host_is_full() {
    let two = Two::start("copy-full@example.com").await;
    let name = two.snapshot_on_a("env", "v1").await;
    // Fill A (16 GiB) with two of the largest sandboxes while B takes nothing.
    two.drain(&two.b_id, true).await;
    for _ in 0..2 {
        let sb = two.t.sandbox(&two.key, json!({"memory_mb": 8192})).await;
        assert!(two
            .t
            .sim
            .sandbox_status(sb["id"].as_str().unwrap())
            .is_some());
    }
    two.drain(&two.b_id, false).await;
    let id = two.create_from("env", "v1").await;
    assert!(
        two.b.sandbox_status(&id).is_some(),
        "placed on B, which has room"
    );
    assert_eq!(two.copies(&name).await, vec![two.b_id.clone()]);
}

#[tokio::test]
async fn an_interrupted_copy_continues_and_a_corrupted_byte_is_caught() {
    let two = Two::start("copy-faults@example.com").await;
    let name = two.snapshot_on_a("env", "kept").await;
    two.drain(&two.a_id, true).await;

    // The RAM file's transfer breaks after 200 KB: it continues from what B holds.
    let cut = 200 * 1024;
    two.t.sim.cut_next_template_read(cut);
    let id = two.create_from("env", "kept").await;
    assert!(two.b.sandbox_status(&id).is_some());
    let reads = two.mem_reads(&name);
    assert_eq!(reads.len(), 2, "{reads:?}");
    assert_eq!(reads[0], 0);
    assert!(
        reads[1] > 0 && reads[1] <= cut && (reads[1] as usize) < SIM_MEM_BYTES,
        "resumed at {}",
        reads[1]
    );

    // A second snapshot whose first transfer has one byte flipped: B refuses it at commit,
    // the file is sent again, and the copy is intact.
    let name2 = {
        two.drain(&two.a_id, false).await;
        two.snapshot_on_a("env2", "second").await
    };
    two.drain(&two.a_id, true).await;
    let before = two.t.sim.template_reads().len();
    two.t.sim.corrupt_template_reads(1);
    let id2 = two.create_from("env2", "second").await;
    assert!(two.b.sandbox_status(&id2).is_some());
    let reads: Vec<_> = two.t.sim.template_reads()[before..].to_vec();
    let first = &reads[0];
    assert_eq!(
        reads.iter().filter(|r| r.1 == first.1).count(),
        2,
        "the corrupted file is read twice: {reads:?}"
    );
    assert!(two.b.template_names().contains(&name2));

    // Corrupt every time: the create fails, and B keeps neither a template nor a copy.
    two.drain(&two.a_id, false).await;
    let name3 = two.snapshot_on_a("env3", "third").await;
    two.drain(&two.a_id, true).await;
    two.t.sim.corrupt_template_reads(100);
    let r = two
        .t
        .keyed(Method::POST, "/v1/sandboxes", &two.key)
        .json(&json!({"template": "env3", "memory_mb": 512}))
        .send()
        .await
        .unwrap();
    let body = assert_error(r, 502, "agent_error").await;
    let text = body.to_string();
    assert!(!text.contains("127.0.0.1"), "{text}");
    assert!(!two.b.template_names().contains(&name3));
    assert!(two.b.copies_under_way().is_empty());
    assert!(two.copies(&name3).await.is_empty());
    two.t.sim.corrupt_template_reads(0);
}
