//! Helpers shared by the integration tests: a control plane on a loopback port whose host is
//! the simulated agent served over the real agent HTTP API, a reqwest client, and the
//! private PostgreSQL server of `pg`.
#![allow(dead_code)]

pub mod pg;
pub mod pg_db;

use reqwest::{Method, RequestBuilder, Response};
use serde_json::{json, Value};
use std::sync::Arc;
use wrenn_server::agent::sim::SimAgent;
use wrenn_server::agent::sim_server;
use wrenn_server::{build, serve, Server, ServerConfig};

pub const AGENT_TOKEN: &str = "agent-test-token";
pub const JWT_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

pub struct TestServer {
    pub base: String,
    pub server: Server,
    pub sim: Arc<SimAgent>,
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// An account with a session token and an API key.
pub struct Account {
    pub token: String,
    pub team_id: String,
    pub key: String,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        // Bound first so the configuration can know its public URL.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut cfg = ServerConfig::new(dir.path().join("data"), JWT_SECRET);
        cfg.max_upload_bytes = 1024 * 1024;
        cfg.public_url = Some(base.clone());
        // Tests sign up many accounts from one address; `tests/auth_abuse.rs` sets limits.
        cfg.auth_limits = wrenn_server::config::AuthLimits::unlimited();
        tweak(&mut cfg);
        let server = build(cfg).await.expect("build server");

        let sim = Arc::new(SimAgent::new(&["minimal", "python"], 0).unwrap());
        let agent_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let agent_url = format!("http://{}", agent_listener.local_addr().unwrap());
        let agent_router = sim_server::router(sim.clone(), AGENT_TOKEN);
        tokio::spawn(async move { axum::serve(agent_listener, agent_router).await });
        server
            .register_host(&agent_url, AGENT_TOKEN)
            .await
            .expect("register host");

        let router = server.router();
        tokio::spawn(async move { serve(listener, router).await });
        TestServer {
            base,
            server,
            sim,
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// A request authenticated with an API key.
    pub fn keyed(&self, method: Method, path: &str, key: &str) -> RequestBuilder {
        self.req(method, path).header("x-api-key", key)
    }

    pub async fn signup(&self, email: &str) -> Value {
        let r = self
            .req(Method::POST, "/v1/auth/signup")
            .json(&json!({"email": email, "password": "password123"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "signup {email}");
        r.json().await.unwrap()
    }

    /// Signs up and creates an API key.
    pub async fn account(&self, email: &str) -> Account {
        let auth = self.signup(email).await;
        let token = auth["token"].as_str().unwrap().to_string();
        let r = self
            .req(Method::POST, "/v1/api-keys")
            .bearer_auth(&token)
            .json(&json!({"name": "test"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let k: Value = r.json().await.unwrap();
        Account {
            token,
            team_id: auth["team_id"].as_str().unwrap().to_string(),
            key: k["key"].as_str().unwrap().to_string(),
        }
    }

    /// Creates a sandbox and returns its JSON.
    pub async fn sandbox(&self, key: &str, body: Value) -> Value {
        let r = self
            .keyed(Method::POST, "/v1/sandboxes", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 201, "create sandbox: {v}");
        v
    }

    /// The sandbox's JSON, or `None` once it is gone (404).
    pub async fn get(&self, key: &str, id: &str) -> Option<Value> {
        let r = self
            .keyed(Method::GET, &format!("/v1/sandboxes/{id}"), key)
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            return None;
        }
        assert_eq!(r.status(), 200);
        Some(r.json().await.unwrap())
    }

    /// The sandbox's public status (`gone` once it is 404).
    pub async fn status(&self, key: &str, id: &str) -> String {
        match self.get(key, id).await {
            Some(v) => v["status"].as_str().unwrap().to_string(),
            None => "gone".into(),
        }
    }

    /// Waits (up to 5 s) for the sandbox's public status to be `want` (`gone`: 404).
    pub async fn wait_status(&self, key: &str, id: &str, want: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let now = self.status(key, id).await;
            if now == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sandbox {id} is {now}, not {want}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// A lifecycle request (`pause`, `resume`) on a sandbox.
    pub async fn op(&self, key: &str, id: &str, op: &str) -> Response {
        self.keyed(Method::POST, &format!("/v1/sandboxes/{id}/{op}"), key)
            .send()
            .await
            .unwrap()
    }

    /// Runs `cat path` in the sandbox and returns its stdout (asserting a 200).
    pub async fn cat(&self, key: &str, id: &str, path: &str) -> String {
        let r = self
            .exec(key, id, serde_json::json!({"cmd": "cat", "args": [path]}))
            .await;
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "cat {path} in {id}: {v}");
        v["stdout"].as_str().unwrap().to_string()
    }

    /// Writes a small file into the sandbox (asserting a 204).
    pub async fn write(&self, key: &str, id: &str, path: &str, data: &str) {
        let r = self
            .keyed(
                Method::POST,
                &format!("/v1/sandboxes/{id}/files/write"),
                key,
            )
            .multipart(
                reqwest::multipart::Form::new()
                    .text("path", path.to_string())
                    .part(
                        "file",
                        reqwest::multipart::Part::bytes(data.as_bytes().to_vec()),
                    ),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "write {path} in {id}");
    }

    pub async fn exec(&self, key: &str, id: &str, body: Value) -> Response {
        self.keyed(Method::POST, &format!("/v1/sandboxes/{id}/exec"), key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

/// Asserts an error answer: status, and the error body with the given code.
pub async fn assert_error(r: Response, status: u16, code: &str) -> Value {
    let got = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(got, status, "body: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert_eq!(v["error"]["code"], code, "body: {text}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "no message: {text}"
    );
    v
}
