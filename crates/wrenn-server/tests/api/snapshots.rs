//! Snapshots, the idle reaper and placement over several hosts.

use crate::support::{assert_error, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use wrenn_types::agent::SandboxStatus;

#[tokio::test]
async fn snapshots() {
    let t = TestServer::start().await;
    let a = t.account("snap-a@example.com").await;
    let b = t.account("snap-b@example.com").await;
    let k = a.key.as_str();
    let base_count = t.sim.template_names().len();

    let sb = t.sandbox(k, json!({"vcpus": 2, "memory_mb": 1024})).await;
    let id = sb["id"].as_str().unwrap().to_string();
    let r = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{id}/files/write"), k)
        .multipart(
            reqwest::multipart::Form::new()
                .text("path", "/app/state")
                .part("file", reqwest::multipart::Part::bytes(b"v1".to_vec())),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    for (name, status, code) in [
        ("Bad Name", 400, "bad_request"),
        ("-x", 400, "bad_request"),
        ("minimal", 409, "name_reserved"),
    ] {
        let r = t
            .keyed(Method::POST, "/v1/snapshots", k)
            .json(&json!({"sandbox_id": id, "name": name}))
            .send()
            .await
            .unwrap();
        assert_error(r, status, code).await;
    }

    let r = t
        .keyed(Method::POST, "/v1/snapshots", k)
        .json(&json!({"sandbox_id": id, "name": "py-env"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let tpl: Value = r.json().await.unwrap();
    assert_eq!(tpl["name"], "py-env");
    assert_eq!(tpl["type"], "snapshot");
    assert_eq!(tpl["vcpus"], 2);
    assert_eq!(tpl["memory_mb"], 1024);
    assert!(tpl["size_bytes"].as_i64().unwrap() > 0);
    // The sandbox is gone; the agent knows the template under an opaque name.
    let r = t
        .keyed(Method::GET, &format!("/v1/sandboxes/{id}"), k)
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "sandbox_not_found").await;
    let names = t.sim.template_names();
    assert_eq!(names.len(), base_count + 1);
    assert!(!names.contains(&"py-env".to_string()), "{names:?}");

    // A sandbox from the snapshot has the snapshot's files.
    let child = t.sandbox(k, json!({"template": "py-env"})).await;
    assert_eq!(child["template"], "py-env");
    let cid = child["id"].as_str().unwrap().to_string();
    let out: Value = t
        .exec(k, &cid, json!({"cmd": "cat", "args": ["/app/state"]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(out["stdout"], "v1");

    // Same name: 409 unless overwrite=true.
    let r = t
        .keyed(Method::POST, "/v1/snapshots", k)
        .json(&json!({"sandbox_id": cid, "name": "py-env"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "snapshot_exists").await;
    let r = t
        .keyed(Method::POST, "/v1/snapshots?overwrite=yes", k)
        .json(&json!({"sandbox_id": cid, "name": "py-env"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "bad_request").await;
    let r = t
        .keyed(Method::POST, "/v1/snapshots?overwrite=true", k)
        .json(&json!({"sandbox_id": cid, "name": "py-env"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // The old agent template was replaced, not kept.
    let after = t.sim.template_names();
    assert_eq!(after.len(), base_count + 1);
    assert_ne!(after, names);

    // Not running: 409.
    let paused = t.sandbox(k, json!({})).await;
    let pid = paused["id"].as_str().unwrap();
    t.keyed(Method::POST, &format!("/v1/sandboxes/{pid}/pause"), k)
        .send()
        .await
        .unwrap();
    let r = t
        .keyed(Method::POST, "/v1/snapshots", k)
        .json(&json!({"sandbox_id": pid, "name": "other"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "sandbox_not_running").await;

    // No name: a generated one.
    let s2 = t.sandbox(k, json!({})).await;
    let r = t
        .keyed(Method::POST, "/v1/snapshots", k)
        .json(&json!({"sandbox_id": s2["id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let gen: Value = r.json().await.unwrap();
    let gen_name = gen["name"].as_str().unwrap().to_string();
    assert!(gen_name.starts_with("snap-"), "{gen_name}");

    // Listing and filtering.
    let list = |q: &'static str, key: String| {
        let t = &t;
        async move {
            let r = t
                .keyed(Method::GET, &format!("/v1/snapshots{q}"), &key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let v: Vec<Value> = r.json().await.unwrap();
            v
        }
    };
    let all = list("", a.key.clone()).await;
    let mut names: Vec<(String, String)> = all
        .iter()
        .map(|t| {
            (
                t["type"].as_str().unwrap().into(),
                t["name"].as_str().unwrap().into(),
            )
        })
        .collect();
    names.sort();
    let mut want: Vec<(String, String)> = vec![
        ("base".into(), "minimal".into()),
        ("base".into(), "python".into()),
        ("snapshot".into(), gen_name.clone()),
        ("snapshot".into(), "py-env".into()),
    ];
    want.sort();
    assert_eq!(names, want);
    let base = list("?type=base", a.key.clone()).await;
    assert_eq!(base.len(), 2);
    assert!(base
        .iter()
        .all(|t| t["vcpus"].is_null() && t["memory_mb"].is_null()));
    let snaps = list("?type=snapshot", a.key.clone()).await;
    assert_eq!(snaps.len(), 2);
    let r = t
        .keyed(Method::GET, "/v1/snapshots?type=other", k)
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "bad_request").await;

    // Team B sees none of A's snapshots, may reuse the name, and cannot use A's.
    assert!(list("?type=snapshot", b.key.clone()).await.is_empty());
    let r = t
        .keyed(Method::POST, "/v1/sandboxes", &b.key)
        .json(&json!({"template": "py-env"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "template_not_found").await;
    let r = t
        .keyed(Method::DELETE, "/v1/snapshots/py-env", &b.key)
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "template_not_found").await;
    let bsb = t.sandbox(&b.key, json!({})).await;
    let r = t
        .keyed(Method::POST, "/v1/snapshots", &b.key)
        .json(&json!({"sandbox_id": bsb["id"], "name": "py-env"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Nor can a team name another team's agent-side template directly.
    for agent_name in t.sim.template_names() {
        if agent_name.starts_with("t-") {
            let r = t
                .keyed(Method::POST, "/v1/sandboxes", &b.key)
                .json(&json!({"template": agent_name}))
                .send()
                .await
                .unwrap();
            assert_error(r, 404, "template_not_found").await;
        }
    }

    // Delete.
    let before = t.sim.template_names().len();
    let r = t
        .keyed(Method::DELETE, "/v1/snapshots/py-env", k)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(t.sim.template_names().len(), before - 1);
    let r = t
        .keyed(Method::DELETE, "/v1/snapshots/py-env", k)
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "template_not_found").await;
    let r = t
        .keyed(Method::POST, "/v1/sandboxes", k)
        .json(&json!({"template": "py-env"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "template_not_found").await;
    // B's snapshot of the same name survives.
    assert_eq!(list("?type=snapshot", b.key.clone()).await.len(), 1);
}

async fn status_of(t: &TestServer, key: &str, id: &str) -> String {
    let v: Value = t
        .keyed(Method::GET, &format!("/v1/sandboxes/{id}"), key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["status"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn idle_sandboxes_are_auto_paused_and_can_resume() {
    let t = TestServer::start_with(|c| c.reaper_interval = Duration::from_millis(100)).await;
    let acc = t.account("idle@example.com").await;
    let k = acc.key.as_str();
    let idle = t.sandbox(k, json!({"timeout_sec": 1})).await;
    let idle_id = idle["id"].as_str().unwrap().to_string();
    let kept = t.sandbox(k, json!({"timeout_sec": 2})).await;
    let kept_id = kept["id"].as_str().unwrap().to_string();
    let forever = t.sandbox(k, json!({"timeout_sec": 0})).await;
    let forever_id = forever["id"].as_str().unwrap().to_string();

    // A sandbox kept alive by file transfers alone.
    let files_kept = t.sandbox(k, json!({"timeout_sec": 2})).await;
    let files_id = files_kept["id"].as_str().unwrap().to_string();
    let form = || {
        reqwest::multipart::Form::new()
            .text("path", "/home/user/keep.txt")
            .part(
                "file",
                reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("f"),
            )
    };

    // Keep one alive with pings and execs, another with files, while the first idles out.
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(4) {
        let file_op = if i % 2 == 0 {
            t.keyed(
                Method::POST,
                &format!("/v1/sandboxes/{files_id}/files/write"),
                k,
            )
            .multipart(form())
        } else {
            t.keyed(
                Method::POST,
                &format!("/v1/sandboxes/{files_id}/files/read"),
                k,
            )
            .json(&json!({"path": "/home/user/keep.txt"}))
        };
        let r = file_op.send().await.unwrap();
        assert!(r.status().is_success(), "file op: {}", r.status());
        let path = if i % 2 == 0 { "ping" } else { "exec" };
        let r = if path == "ping" {
            t.keyed(Method::POST, &format!("/v1/sandboxes/{kept_id}/ping"), k)
                .send()
                .await
                .unwrap()
        } else {
            t.exec(k, &kept_id, json!({"cmd": "true"})).await
        };
        assert!(r.status().is_success(), "{path}: {}", r.status());
        i += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(status_of(&t, k, &idle_id).await, "paused");
    assert_eq!(t.sim.sandbox_status(&idle_id), Some(SandboxStatus::Paused));
    assert_eq!(status_of(&t, k, &kept_id).await, "running");
    assert_eq!(status_of(&t, k, &files_id).await, "running");
    assert_eq!(status_of(&t, k, &forever_id).await, "running");

    // A paused sandbox resumes and works; it is paused again after idling.
    let r = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{idle_id}/resume"), k)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out: Value = t
        .exec(k, &idle_id, json!({"cmd": "echo", "args": ["back"]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(out["stdout"], "back\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_of(&t, k, &idle_id).await != "paused" {
        assert!(Instant::now() < deadline, "not paused again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status_of(&t, k, &forever_id).await, "running");
}

#[tokio::test]
async fn placement_spreads_load_and_keeps_snapshots_on_their_host() {
    use std::sync::Arc;
    use wrenn_server::agent::sim::SimAgent;
    let t = TestServer::start().await;
    let second = Arc::new(SimAgent::new(&["minimal"], 1).unwrap());
    t.server
        .register_agent("sim://second", second.clone())
        .await
        .unwrap();
    // A registered host that does not answer is skipped.
    t.server
        .register_host("http://127.0.0.1:1", "x")
        .await
        .unwrap();
    let acc = t.account("place@example.com").await;
    let k = acc.key.as_str();

    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            t.sandbox(k, json!({})).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let first_count = ids
        .iter()
        .filter(|i| t.sim.sandbox_status(i).is_some())
        .count();
    let second_count = ids
        .iter()
        .filter(|i| second.sandbox_status(i).is_some())
        .count();
    assert_eq!((first_count, second_count), (2, 2));

    // Only the first host has `python`.
    let py = t.sandbox(k, json!({"template": "python"})).await;
    assert!(t.sim.sandbox_status(py["id"].as_str().unwrap()).is_some());

    // A snapshot taken on the second host serves sandboxes from the second host only.
    let on_second = ids
        .iter()
        .find(|i| second.sandbox_status(i).is_some())
        .unwrap();
    let r = t
        .keyed(Method::POST, "/v1/snapshots", k)
        .json(&json!({"sandbox_id": on_second, "name": "home"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for _ in 0..3 {
        let sb = t.sandbox(k, json!({"template": "home"})).await;
        assert!(second.sandbox_status(sb["id"].as_str().unwrap()).is_some());
    }
    let hosts = t.server.store().list_hosts().await.unwrap();
    assert_eq!(hosts.len(), 3);
    assert!(hosts.iter().any(|h| h.url == "http://127.0.0.1:1"
        && h.status == wrenn_server::store::HostStatus::Unreachable));
}

#[tokio::test]
async fn no_reachable_host_is_an_agent_error_not_a_missing_template() {
    let t = TestServer::start().await;
    let acc = t.account("nohost@example.com").await;
    // The only host stops accepting the control plane (its token no longer matches).
    let hosts = t.server.store().list_hosts().await.unwrap();
    assert_eq!(hosts.len(), 1);
    t.server
        .register_host(&hosts[0].url, "not-the-agent-token")
        .await
        .unwrap();
    let r = t
        .keyed(Method::POST, "/v1/sandboxes", &acc.key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let body = assert_error(r, 502, "agent_error").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no host agent is reachable"),
        "{body}"
    );
    let r = t
        .keyed(Method::GET, "/v1/sandboxes", &acc.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!([]));
}
