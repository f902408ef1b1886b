//! The public API over real HTTP, against a control plane whose host is the simulated agent
//! reached through the real agent HTTP client.

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{assert_error, TestServer};
use wrenn_server::{build, BuildError, ConfigError, ServerConfig};
use wrenn_types::agent::SandboxStatus;

#[tokio::test]
async fn signup_and_login() {
    let t = TestServer::start().await;
    let r = t
        .req(Method::POST, "/v1/auth/signup")
        .json(&json!({"email": "Alice@Example.com", "password": "password123", "extra": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["email"], "alice@example.com");
    for f in ["token", "user_id", "team_id"] {
        assert!(a[f].as_str().is_some_and(|s| !s.is_empty()), "{f}: {a}");
    }

    // Same email in another case: 409.
    let r = t
        .req(Method::POST, "/v1/auth/signup")
        .json(&json!({"email": "ALICE@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "email_taken").await;

    for (email, pw, what) in [
        ("not-an-email", "password123", "email"),
        ("bob@example.com", "short", "8"),
        ("", "password123", "email"),
    ] {
        let r = t
            .req(Method::POST, "/v1/auth/signup")
            .json(&json!({"email": email, "password": pw}))
            .send()
            .await
            .unwrap();
        let v = assert_error(r, 400, "bad_request").await;
        assert!(
            v["error"]["message"].as_str().unwrap().contains(what),
            "{v}"
        );
    }

    let r = t
        .req(Method::POST, "/v1/auth/login")
        .json(&json!({"email": "alice@EXAMPLE.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let l: Value = r.json().await.unwrap();
    assert_eq!(l["user_id"], a["user_id"]);
    assert_eq!(l["team_id"], a["team_id"]);

    // Wrong password and unknown email: the same 401.
    let wrong = t
        .req(Method::POST, "/v1/auth/login")
        .json(&json!({"email": "alice@example.com", "password": "password124"}))
        .send()
        .await
        .unwrap();
    let wrong = assert_error(wrong, 401, "invalid_credentials").await;
    let unknown = t
        .req(Method::POST, "/v1/auth/login")
        .json(&json!({"email": "nobody@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    let unknown = assert_error(unknown, 401, "invalid_credentials").await;
    assert_eq!(wrong, unknown);

    // The login token works for key management.
    let r = t
        .req(Method::GET, "/v1/api-keys")
        .bearer_auth(l["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn oauth_only_account_cannot_log_in_with_password() {
    let t = TestServer::start().await;
    let store = t.server.store();
    store
        .create_oauth_account(
            &wrenn_server::store::NewAccount {
                user_id: "usr-oauth".into(),
                team_id: "team-oauth".into(),
                team_name: "octo".into(),
                email: "octo@example.com".into(),
                password_hash: None,
                created_at: wrenn_server::store::now(),
            },
            "github",
            "1",
        )
        .await
        .unwrap();
    for pw in ["", "password123"] {
        let r = t
            .req(Method::POST, "/v1/auth/login")
            .json(&json!({"email": "octo@example.com", "password": pw}))
            .send()
            .await
            .unwrap();
        assert_error(r, 401, "invalid_credentials").await;
    }
    // Signing up with that email is refused: the account exists.
    let r = t
        .req(Method::POST, "/v1/auth/signup")
        .json(&json!({"email": "octo@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "email_taken").await;
}

#[tokio::test]
async fn weak_jwt_secret_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServerConfig::new(dir.path(), vec![b'x'; 31]);
    match build(cfg).await {
        Err(BuildError::Config(ConfigError::WeakJwtSecret { len: 31 })) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("started with a 31-byte secret"),
    }
    let cfg = ServerConfig::new(dir.path(), vec![b'x'; 32]);
    assert!(build(cfg).await.is_ok());
}

#[tokio::test]
async fn api_keys() {
    let t = TestServer::start().await;
    let a = t.signup("keys@example.com").await;
    let token = a["token"].as_str().unwrap();

    let r = t.req(Method::GET, "/v1/api-keys").send().await.unwrap();
    assert_error(r, 401, "unauthorized").await;
    let r = t
        .req(Method::GET, "/v1/api-keys")
        .bearer_auth("not.a.jwt")
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
    // A token signed with another secret is refused.
    let forged = wrenn_server::auth::JwtKeys::new(&[9u8; 32])
        .issue("u", a["team_id"].as_str().unwrap(), "e")
        .unwrap();
    let r = t
        .req(Method::GET, "/v1/api-keys")
        .bearer_auth(forged)
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;

    // No body: default name.
    let r = t
        .req(Method::POST, "/v1/api-keys")
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let k: Value = r.json().await.unwrap();
    assert_eq!(k["name"], "Unnamed API Key");
    assert_eq!(k["team_id"], a["team_id"]);
    let key = k["key"].as_str().unwrap();
    assert!(key.starts_with("wrn_") && key.len() >= 4 + 32, "{key}");
    assert_eq!(k["key_prefix"], format!("{}...", &key[..12]));
    assert!(k["last_used"].is_null());

    let r = t
        .req(Method::POST, "/v1/api-keys")
        .bearer_auth(token)
        .json(&json!({"name": "x".repeat(101)}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "bad_request").await;
    let r = t
        .req(Method::POST, "/v1/api-keys")
        .bearer_auth(token)
        .json(&json!({"name": "ci"}))
        .send()
        .await
        .unwrap();
    let k2: Value = r.json().await.unwrap();
    assert_eq!(k2["name"], "ci");

    // The key works, and its use is recorded.
    let r = t
        .keyed(Method::GET, "/v1/sandboxes", key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let list: Vec<Value> = t
            .req(Method::GET, "/v1/api-keys")
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.iter().all(|k| k.get("key").is_none()), "{list:?}");
        let first = list.iter().find(|x| x["id"] == k["id"]).unwrap();
        if first["last_used"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "last_used never set");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Another team cannot delete it.
    let other = t.account("other@example.com").await;
    let id = k["id"].as_str().unwrap();
    let r = t
        .req(Method::DELETE, &format!("/v1/api-keys/{id}"))
        .bearer_auth(&other.token)
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "api_key_not_found").await;
    let r = t
        .req(Method::DELETE, &format!("/v1/api-keys/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = t
        .req(Method::DELETE, &format!("/v1/api-keys/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "api_key_not_found").await;
    // A deleted key no longer authenticates; a made-up one never did.
    for bad in [key, "wrn_0000", "garbage"] {
        let r = t
            .keyed(Method::GET, "/v1/sandboxes", bad)
            .send()
            .await
            .unwrap();
        assert_error(r, 401, "unauthorized").await;
    }
    let r = t.req(Method::GET, "/v1/sandboxes").send().await.unwrap();
    assert_error(r, 401, "unauthorized").await;
}

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
    assert!(hosts
        .iter()
        .any(|h| h.url == "http://127.0.0.1:1" && h.status == "unreachable"));
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
