//! A snapshot template made on one host serves a create on another, with real VMs: two real
//! agents (A and B, each with its own data dir and network prefix) and a control plane in
//! this process. A sandbox on A gets a file, is snapshotted on A; A is drained; the create
//! from the snapshot lands on B after the control plane copied the template from A to B
//! (streamed and checked), and the new sandbox holds the file written before the snapshot.
//! Deleting the snapshot removes it from both hosts. The copy's size and time are printed.
//!
//! Needs root and the guest images (`WRENN_DATA_DIR`, default `/var/lib/wrenn`). Slots
//! 10100-10101 (prefix `tc`) and 10120-10121 (`td`).
//! Run: `flock -o /tmp/wrenn-vm-tests.lock cargo test -p wrenn-cli --test template_copy_e2e`

mod machine;

use machine::scratch_data_dir;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use wrenn_agent::images::NoProgress;
use wrenn_agent::net::NetConfig;
use wrenn_agent::startup::{self, AgentConfig};
use wrenn_server::{build, serve, ServerConfig};

const AGENT_TOKEN: &str = "template-copy-e2e-agent-token";

/// Starts a real agent on a fresh data dir beside the images; its URL and data dir.
async fn agent(tag: &str, prefix: &str, first_slot: u32) -> (String, PathBuf, startup::Agent) {
    let dir = scratch_data_dir(&format!("{tag}-{}", std::process::id()));
    let mut cfg = AgentConfig::new(dir.clone(), AGENT_TOKEN.into());
    cfg.net = NetConfig {
        prefix: prefix.into(),
        first_slot,
        max_slots: 2,
        pool_size: 0,
        ..NetConfig::default()
    };
    cfg.pool = wrenn_agent::sandbox::PoolConfig::OFF;
    let agent = startup::start(cfg, Box::new(NoProgress))
        .await
        .expect("agent starts (are the images built?)");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = agent.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, dir, agent)
}

struct Client {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Client {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-api-key", &self.key);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
}

#[test]
fn a_snapshot_made_on_one_host_serves_a_create_on_another() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (url_a, dir_a, agent_a) = agent("copy-a", "tc", 10100).await;
        let (url_b, dir_b, agent_b) = agent("copy-b", "td", 10120).await;

        let tmp = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut cfg = ServerConfig::new(tmp.path().join("data"), b"template-copy-e2e-jwt-secret-0123456789");
        cfg.public_url = Some(base.clone());
        let server = build(cfg).await.unwrap();
        let host_a = server.register_host(&url_a, AGENT_TOKEN).await.unwrap().id;
        let router = server.router();
        tokio::spawn(async move { serve(listener, router).await });
        server.heartbeat_now().await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(900))
            .build()
            .unwrap();
        let auth: Value = http
            .post(format!("{base}/v1/auth/signup"))
            .json(&json!({"email": "copy@example.com", "password": "password-123456"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let team_id = auth["team_id"].as_str().unwrap().to_string();
        let key: Value = http
            .post(format!("{base}/v1/api-keys"))
            .bearer_auth(auth["token"].as_str().unwrap())
            .json(&json!({"name": "copy"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let c = Client {
            base,
            key: key["key"].as_str().unwrap().to_string(),
            http,
        };
        use reqwest::Method;

        // A sandbox on A with a file, snapshotted on A.
        let (s, sb) = c
            .call(Method::POST, "/v1/sandboxes", Some(json!({"memory_mb": 256})))
            .await;
        assert_eq!(s, 201, "{sb}");
        let id = sb["id"].as_str().unwrap().to_string();
        let (s, out) = c
            .call(
                Method::POST,
                &format!("/v1/sandboxes/{id}/exec"),
                Some(json!({"cmd": "sh", "args": ["-c", "echo written-before > /root/kept && sync"]})),
            )
            .await;
        assert_eq!((s, out["exit_code"].as_i64()), (200, Some(0)), "{out}");
        let (s, t) = c
            .call(
                Method::POST,
                "/v1/snapshots",
                Some(json!({"sandbox_id": id, "name": "carried"})),
            )
            .await;
        assert_eq!(s, 201, "{t}");
        let store = server.store();
        let agent_name = store
            .list_templates(&team_id)
            .await
            .unwrap()
            .into_iter()
            .find(|t| t.name == "carried")
            .unwrap()
            .agent_name;
        assert!(dir_a.join("templates").join(&agent_name).exists());

        // B joins, A drains: the create from the snapshot lands on B after a copy.
        let host_b = server.register_host(&url_b, AGENT_TOKEN).await.unwrap().id;
        assert!(store.set_host_draining(&host_a, true).await.unwrap());
        server.heartbeat_now().await;
        let started = Instant::now();
        let (s, child) = c
            .call(
                Method::POST,
                "/v1/sandboxes",
                Some(json!({"template": "carried", "memory_mb": 256})),
            )
            .await;
        let took = started.elapsed();
        assert_eq!(s, 201, "{child}");
        let cid = child["id"].as_str().unwrap().to_string();
        assert!(dir_b.join("sandboxes").join(&cid).exists(), "placed on B");
        let copied = dir_b.join("templates").join(&agent_name);
        assert!(copied.exists());
        let bytes: u64 = std::fs::read_dir(&copied)
            .unwrap()
            .flatten()
            .map(|e| e.metadata().unwrap().len())
            .sum();
        println!(
            "[numbers] template copy A->B and create on B: {:.1} s for {} MiB of template",
            took.as_secs_f64(),
            bytes >> 20
        );
        assert_eq!(
            store.template_copy_hosts(&agent_name).await.unwrap(),
            vec![host_b.clone()]
        );
        let (s, out) = c
            .call(
                Method::POST,
                &format!("/v1/sandboxes/{cid}/exec"),
                Some(json!({"cmd": "cat", "args": ["/root/kept"]})),
            )
            .await;
        assert_eq!(s, 200, "{out}");
        assert_eq!(out["stdout"].as_str().unwrap().trim(), "written-before");

        // The snapshot's deletion removes it from both hosts.
        let (s, _) = c
            .call(Method::DELETE, &format!("/v1/sandboxes/{cid}"), None)
            .await;
        assert_eq!(s, 204);
        let (s, _) = c.call(Method::DELETE, "/v1/snapshots/carried", None).await;
        assert_eq!(s, 204);
        assert!(!dir_a.join("templates").join(&agent_name).exists());
        assert!(!copied.exists());

        for a in [&agent_a, &agent_b] {
            let _ = a.manager.slot_pool().shutdown();
        }
        drop(server);
        for d in [&dir_a, &dir_b] {
            let _ = std::fs::remove_dir_all(d);
        }
    });
}
