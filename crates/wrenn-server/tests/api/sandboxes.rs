//! Sandboxes: life, exec, files, team isolation and error bodies.

use crate::support::{assert_error, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

use wrenn_types::agent::SandboxStatus;

#[tokio::test]
async fn sandbox_lifecycle() {
    let t = TestServer::start().await;
    let acc = t.account("life@example.com").await;
    let k = acc.key.as_str();

    // Defaults, and an empty body is fine.
    let r = t
        .keyed(Method::POST, "/v1/sandboxes", k)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let sb: Value = r.json().await.unwrap();
    let id = sb["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("sb-") && id.len() == 15, "{id}");
    assert_eq!(sb["status"], "running");
    assert_eq!(sb["template"], "minimal");
    assert_eq!(sb["vcpus"], 1);
    assert_eq!(sb["memory_mb"], 512);
    assert_eq!(sb["timeout_sec"], 0);
    assert_eq!(sb["guest_ip"], "172.16.0.2");
    assert!(sb["host_ip"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(sb["started_at"].is_string() && sb["last_active_at"].is_string());
    assert_eq!(t.sim.sandbox_status(&id), Some(SandboxStatus::Running));

    let custom = t
        .sandbox(
            k,
            json!({"template": "python", "vcpus": 2, "memory_mb": 1024, "timeout_sec": 60, "x": 1}),
        )
        .await;
    assert_eq!(custom["template"], "python");
    assert_eq!(custom["vcpus"], 2);
    assert_eq!(custom["memory_mb"], 1024);
    assert_eq!(custom["timeout_sec"], 60);

    for bad in [
        json!({"vcpus": 0}),
        json!({"vcpus": 9}),
        json!({"memory_mb": 127}),
        json!({"memory_mb": 8193}),
        json!({"timeout_sec": -1}),
        json!({"timeout_sec": 86401}),
    ] {
        let r = t
            .keyed(Method::POST, "/v1/sandboxes", k)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_error(r, 400, "bad_request").await;
    }
    let r = t
        .keyed(Method::POST, "/v1/sandboxes", k)
        .json(&json!({"vcpus": "two"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_json").await;
    let r = t
        .keyed(Method::POST, "/v1/sandboxes", k)
        .json(&json!({"template": "nope"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "template_not_found").await;

    let r = t
        .keyed(Method::GET, &format!("/v1/sandboxes/{id}"), k)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    assert_eq!(got["id"], sb["id"]);
    let list: Vec<Value> = t
        .keyed(Method::GET, "/v1/sandboxes", k)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id.as_str(), custom["id"].as_str().unwrap()]);

    // Pause, then everything that needs a running sandbox is 409.
    let r = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{id}/pause"), k)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["status"], "paused");
    assert_eq!(t.sim.sandbox_status(&id), Some(SandboxStatus::Paused));
    let r = t.exec(k, &id, json!({"cmd": "echo", "args": ["x"]})).await;
    assert_error(r, 409, "sandbox_not_running").await;
    for path in ["ping", "pause"] {
        let r = t
            .keyed(Method::POST, &format!("/v1/sandboxes/{id}/{path}"), k)
            .send()
            .await
            .unwrap();
        assert_error(r, 409, "sandbox_not_running").await;
    }

    let r = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{id}/resume"), k)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let resumed: Value = r.json().await.unwrap();
    assert_eq!(resumed["status"], "running");
    let r = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{id}/resume"), k)
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "sandbox_not_paused").await;
    let r = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{id}/ping"), k)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    let r = t
        .keyed(Method::DELETE, &format!("/v1/sandboxes/{id}"), k)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(t.sim.sandbox_status(&id), None);
    for (m, p) in [
        (Method::GET, format!("/v1/sandboxes/{id}")),
        (Method::DELETE, format!("/v1/sandboxes/{id}")),
        (Method::POST, format!("/v1/sandboxes/{id}/ping")),
        (Method::POST, format!("/v1/sandboxes/{id}/resume")),
    ] {
        let r = t.keyed(m, &p, k).send().await.unwrap();
        assert_error(r, 404, "sandbox_not_found").await;
    }
}

#[tokio::test]
async fn agent_failure_is_502_and_leaves_no_record() {
    let t = TestServer::start().await;
    let acc = t.account("fail@example.com").await;
    t.sim.set_fail_creates(true);
    let r = t
        .keyed(Method::POST, "/v1/sandboxes", &acc.key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_error(r, 502, "agent_error").await;
    let list: Vec<Value> = t
        .keyed(Method::GET, "/v1/sandboxes", &acc.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list.is_empty(), "{list:?}");
    t.sim.set_fail_creates(false);
    t.sandbox(&acc.key, json!({})).await;
}

#[tokio::test]
async fn exec() {
    let t = TestServer::start().await;
    let acc = t.account("exec@example.com").await;
    let k = acc.key.as_str();
    let id = t.sandbox(k, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let r = t
        .exec(k, &id, json!({"cmd": "echo", "args": ["hello", "world"]}))
        .await;
    assert_eq!(r.status(), 200);
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["sandbox_id"], id.as_str());
    assert_eq!(out["cmd"], "echo");
    assert_eq!(out["stdout"], "hello world\n");
    assert_eq!(out["stderr"], "");
    assert_eq!(out["exit_code"], 0);
    assert_eq!(out["encoding"], "utf-8");
    assert!(out["duration_ms"].is_u64());

    let out: Value = t
        .exec(k, &id, json!({"cmd": "sh", "args": ["-c", "exit 3"]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(out["exit_code"], 3);
    let out: Value = t
        .exec(
            k,
            &id,
            json!({"cmd": "env", "env": {"FOO": "bar", "A": "1"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(out["stdout"], "A=1\nFOO=bar\n");
    let out: Value = t
        .exec(k, &id, json!({"cmd": "pwd", "cwd": "/tmp"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(out["stdout"], "/tmp\n");
    let out: Value = t
        .exec(k, &id, json!({"cmd": "nosuch"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(out["exit_code"], 127);

    for bad in [
        json!({"cmd": "echo", "timeout_sec": 0}),
        json!({"cmd": "echo", "timeout_sec": 3601}),
        json!({"cmd": ""}),
    ] {
        assert_error(t.exec(k, &id, bad).await, 400, "bad_request").await;
    }
    assert_error(
        t.exec(k, &id, json!({"args": []})).await,
        400,
        "invalid_json",
    )
    .await;
    let r = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{id}/exec"), k)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_json").await;
    let r = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{id}/exec"), k)
        .body(r#"{"cmd":"echo"}"#)
        .send()
        .await
        .unwrap();
    assert_error(r, 415, "unsupported_media_type").await;
    assert_error(
        t.exec(k, "sb-doesnotexist", json!({"cmd": "echo"})).await,
        404,
        "sandbox_not_found",
    )
    .await;
}

#[tokio::test]
async fn team_isolation() {
    let t = TestServer::start().await;
    let a = t.account("a@example.com").await;
    let b = t.account("b@example.com").await;
    assert_ne!(a.team_id, b.team_id);
    let id = t.sandbox(&a.key, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let list: Vec<Value> = t
        .keyed(Method::GET, "/v1/sandboxes", &b.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list.is_empty());
    for (m, p) in [
        (Method::GET, format!("/v1/sandboxes/{id}")),
        (Method::DELETE, format!("/v1/sandboxes/{id}")),
        (Method::POST, format!("/v1/sandboxes/{id}/pause")),
        (Method::POST, format!("/v1/sandboxes/{id}/resume")),
        (Method::POST, format!("/v1/sandboxes/{id}/ping")),
    ] {
        let r = t.keyed(m, &p, &b.key).send().await.unwrap();
        assert_error(r, 404, "sandbox_not_found").await;
    }
    assert_error(
        t.exec(&b.key, &id, json!({"cmd": "echo"})).await,
        404,
        "sandbox_not_found",
    )
    .await;
    let r = t
        .keyed(
            Method::POST,
            &format!("/v1/sandboxes/{id}/files/read"),
            &b.key,
        )
        .json(&json!({"path": "/etc/hostname"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "sandbox_not_found").await;
    let r = t
        .keyed(Method::POST, "/v1/snapshots", &b.key)
        .json(&json!({"sandbox_id": id, "name": "stolen"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "sandbox_not_found").await;
    // Still there for its owner.
    assert_eq!(t.sim.sandbox_status(&id), Some(SandboxStatus::Running));
    let r = t
        .keyed(Method::GET, &format!("/v1/sandboxes/{id}"), &a.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn error_bodies_for_routing_and_limits() {
    let t = TestServer::start().await;
    let r = t.req(Method::GET, "/v2/nothing").send().await.unwrap();
    assert_error(r, 404, "not_found").await;
    let r = t.req(Method::PUT, "/v1/sandboxes").send().await.unwrap();
    assert_error(r, 405, "method_not_allowed").await;
    let r = t.req(Method::GET, "/v1/auth/signup").send().await.unwrap();
    assert_error(r, 405, "method_not_allowed").await;
    let big = format!(r#"{{"email":"{}","password":"x"}}"#, "a".repeat(2 << 20));
    let r = t
        .req(Method::POST, "/v1/auth/signup")
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_error(r, 413, "payload_too_large").await;
    let r = t
        .req(Method::GET, "/v1/auth/oauth/github")
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "oauth_provider_not_configured").await;

    let spec = t
        .req(Method::GET, "/openapi.yaml")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(spec.contains("/v1/sandboxes/{id}/exec/stream"));
}

#[tokio::test]
async fn files() {
    let t = TestServer::start().await;
    let acc = t.account("files@example.com").await;
    let k = acc.key.as_str();
    let id = t.sandbox(k, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let form = |path: &str, data: Vec<u8>| {
        reqwest::multipart::Form::new()
            .text("path", path.to_string())
            .part("file", reqwest::multipart::Part::bytes(data).file_name("f"))
    };
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();

    for (write, read) in [
        ("files/write", "files/read"),
        ("files/stream/write", "files/stream/read"),
    ] {
        let path = format!("/home/user/{}.bin", write.replace('/', "_"));
        let r = t
            .keyed(Method::POST, &format!("/v1/sandboxes/{id}/{write}"), k)
            .multipart(form(&path, data.clone()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{write}: {}", r.text().await.unwrap());
        let r = t
            .keyed(Method::POST, &format!("/v1/sandboxes/{id}/{read}"), k)
            .json(&json!({"path": path}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/octet-stream");
        assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice(), "{read}");

        let r = t
            .keyed(Method::POST, &format!("/v1/sandboxes/{id}/{read}"), k)
            .json(&json!({"path": "/missing"}))
            .send()
            .await
            .unwrap();
        assert_error(r, 404, "file_not_found").await;
    }

    // The buffered upload has a limit (1 MiB in these tests).
    let r = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{id}/files/write"), k)
        .multipart(form("/big", vec![1u8; 1024 * 1024 + 1]))
        .send()
        .await
        .unwrap();
    assert_error(r, 413, "payload_too_large").await;

    let r = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{id}/files/write"), k)
        .json(&json!({"path": "/x"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 415, "unsupported_media_type").await;
    let r = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{id}/files/write"), k)
        .multipart(reqwest::multipart::Form::new().text("path", "/x"))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "bad_request").await;
    // Streaming needs the path before the file.
    let r = t
        .keyed(
            Method::POST,
            &format!("/v1/sandboxes/{id}/files/stream/write"),
            k,
        )
        .multipart(
            reqwest::multipart::Form::new()
                .part("file", reqwest::multipart::Part::bytes(vec![1, 2, 3]))
                .text("path", "/x"),
        )
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "bad_request").await;
    let r = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{id}/files/write"), k)
        .multipart(form("relative/path", vec![1]))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "bad_request").await;

    // A file written through the API is visible to commands in the sandbox.
    let r = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{id}/files/write"), k)
        .multipart(form("/etc/motd", b"hi there".to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let out: Value = t
        .exec(k, &id, json!({"cmd": "cat", "args": ["/etc/motd"]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(out["stdout"], "hi there");

    t.keyed(Method::POST, &format!("/v1/sandboxes/{id}/pause"), k)
        .send()
        .await
        .unwrap();
    for write in ["files/write", "files/stream/write"] {
        let r = t
            .keyed(Method::POST, &format!("/v1/sandboxes/{id}/{write}"), k)
            .multipart(form("/x", vec![1]))
            .send()
            .await
            .unwrap();
        assert_error(r, 409, "sandbox_not_running").await;
    }
    for read in ["files/read", "files/stream/read"] {
        let r = t
            .keyed(Method::POST, &format!("/v1/sandboxes/{id}/{read}"), k)
            .json(&json!({"path": "/etc/motd"}))
            .send()
            .await
            .unwrap();
        assert_error(r, 409, "sandbox_not_running").await;
    }
}

/// The end of an exec counts as activity (for the idle reaper), also now that it is recorded
/// after the answer: a sandbox's `last_active_at` comes to lie after a long exec ended.
#[tokio::test]
async fn an_exec_end_is_recorded_as_activity() {
    let t = TestServer::start().await;
    let acc = t.account("exec-end@example.com").await;
    let k = acc.key.as_str();
    // A long idle timeout: no keep-alive mark falls inside the exec.
    let id = t.sandbox(k, json!({"timeout_sec": 3600})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let active = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v["last_active_at"].as_str().unwrap()).unwrap()
    };
    let began = chrono::Utc::now();
    let r = t
        .exec(k, &id, json!({"cmd": "sleep", "args": ["1.5"]}))
        .await;
    assert_eq!(r.status(), 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let at = active(&t.get(k, &id).await.unwrap());
        if at >= began + chrono::Duration::milliseconds(1400) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "last activity {at} still at the exec's start ({began})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
