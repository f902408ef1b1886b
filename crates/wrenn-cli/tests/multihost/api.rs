//! Calls of the public API through one server with one API key, as the multi-host test makes
//! them; they assert only that a call was answered as its name promises (the test judges the
//! rest).

use serde_json::{json, Value};

/// Calls of the public API through one server with one key.
#[derive(Clone)]
pub struct Api {
    pub(super) http: reqwest::Client,
    pub base: String,
    pub(super) key: String,
}

/// Status and JSON body (or the text as a JSON string).
pub type Reply = (u16, Value);

impl Api {
    async fn send(&self, rb: reqwest::RequestBuilder) -> Reply {
        let r = rb
            .header("X-API-Key", &self.key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request to {}: {e}", self.base));
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    /// Creates a sandbox; asserts 201 and `running`; returns its id.
    pub async fn create(&self, body: Value) -> String {
        self.create_within(body, super::REQUEST_TIMEOUT).await
    }

    /// [`Api::create`] allowed `limit` (a create that first copies a template between hosts).
    pub async fn create_within(&self, body: Value, limit: std::time::Duration) -> String {
        let rb = self
            .http
            .post(format!("{}/v1/sandboxes", self.base))
            .timeout(limit)
            .json(&body);
        let (s, v) = self.send(rb).await;
        assert_eq!(s, 201, "create {body} through {}: {v}", self.base);
        assert_eq!(v["status"], "running", "{v}");
        v["id"].as_str().expect("id").to_string()
    }

    /// Runs a shell script; asserts exit code 0; returns stdout.
    pub async fn sh(&self, id: &str, script: &str) -> String {
        let (s, v) = self
            .post(
                &format!("/v1/sandboxes/{id}/exec"),
                json!({"cmd": "sh", "args": ["-c", script], "timeout_sec": 120}),
            )
            .await;
        assert_eq!(s, 200, "exec in {id} through {}: {v}", self.base);
        assert_eq!(v["exit_code"], 0, "script {script:?} in {id}: {v}");
        v["stdout"].as_str().expect("stdout").to_string()
    }

    pub async fn status(&self, id: &str) -> Reply {
        self.get(&format!("/v1/sandboxes/{id}")).await
    }

    /// Runs `script` through the exec stream WebSocket; returns its stdout and exit code.
    pub async fn stream_sh(&self, id: &str, script: &str) -> (String, i64) {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
        let url = format!(
            "ws://{}/v1/sandboxes/{id}/exec/stream",
            self.base.trim_start_matches("http://")
        );
        let mut req = url.into_client_request().expect("ws request");
        req.headers_mut()
            .insert("x-api-key", self.key.parse().expect("key header"));
        let limit = std::time::Duration::from_secs(120);
        let (mut ws, _) = tokio::time::timeout(limit, tokio_tungstenite::connect_async(req))
            .await
            .expect("exec stream connect timed out")
            .unwrap_or_else(|e| panic!("exec stream through {}: {e}", self.base));
        let start = json!({"type": "start", "cmd": "sh", "args": ["-c", script]});
        ws.send(Message::Text(start.to_string().into()))
            .await
            .expect("send start");
        let (mut out, mut exit) = (String::new(), None);
        while let Some(frame) = tokio::time::timeout(limit, ws.next())
            .await
            .expect("no exec stream event in time")
        {
            match frame.expect("exec stream broke") {
                Message::Text(t) => {
                    let ev: Value = serde_json::from_str(t.as_str()).expect("event is JSON");
                    match ev["type"].as_str() {
                        Some("stdout") => out.push_str(ev["data"].as_str().unwrap_or_default()),
                        Some("exit") => exit = ev["exit_code"].as_i64(),
                        _ => {}
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        (out, exit.expect("the stream ended without an exit event"))
    }

    /// Destroys; asserts 204.
    pub async fn destroy(&self, id: &str) {
        let (s, v) = self.delete(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(s, 204, "destroy {id} through {}: {v}", self.base);
    }
}
