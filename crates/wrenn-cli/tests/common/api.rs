//! Calls of the public API with one account's key, as the system tests make them: plain
//! requests, sandbox life, files and streamed exec. They assert only that a call was answered
//! the way its name promises (a create answers 201, a pause 200); the tests judge the rest.

use super::Suite;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Calls with one API key.
#[derive(Clone)]
pub struct Api {
    pub suite: &'static Suite,
    pub key: String,
}

/// A response: status and JSON body (or the text as a JSON string).
pub type Reply = (u16, Value);

impl Api {
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.suite
            .http
            .request(method, self.suite.url(path))
            .header("X-API-Key", &self.key)
    }

    async fn send(rb: reqwest::RequestBuilder) -> Reply {
        let r = rb.send().await.expect("request to wrenn up");
        let status = r.status().as_u16();
        let text = r.text().await.expect("response body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> Reply {
        Self::send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        Self::send(self.request(reqwest::Method::DELETE, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        Self::send(self.request(reqwest::Method::POST, path).json(&body)).await
    }

    /// POST without a body (pause, resume, ping).
    pub async fn post_empty(&self, path: &str) -> Reply {
        Self::send(self.request(reqwest::Method::POST, path)).await
    }

    /// Creates a sandbox; asserts 201 and `running`. Returns the body and the latency.
    pub async fn create(&self, body: Value) -> (Value, Duration) {
        let t = Instant::now();
        let (s, v) = self.post("/v1/sandboxes", body.clone()).await;
        let took = t.elapsed();
        assert_eq!(s, 201, "create {body}: {v}");
        assert_eq!(v["status"], "running", "{v}");
        (v, took)
    }

    pub async fn exec(&self, id: &str, body: Value) -> Value {
        let (s, v) = self.post(&format!("/v1/sandboxes/{id}/exec"), body).await;
        assert_eq!(s, 200, "exec: {v}");
        v
    }

    /// Runs a shell script; asserts exit code 0 and returns stdout.
    pub async fn sh(&self, id: &str, script: &str) -> String {
        let v = self
            .exec(
                id,
                json!({"cmd": "sh", "args": ["-c", script], "timeout_sec": 120}),
            )
            .await;
        assert_eq!(v["exit_code"], 0, "script {script:?} failed: {v}");
        assert_eq!(v["encoding"], "utf-8", "{v}");
        v["stdout"].as_str().expect("stdout").to_string()
    }

    pub async fn status(&self, id: &str) -> String {
        let (s, v) = self.get(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(s, 200, "get {id}: {v}");
        v["status"].as_str().expect("status").to_string()
    }

    /// Pauses; asserts 200 and `paused`.
    pub async fn pause(&self, id: &str) -> Duration {
        let t = Instant::now();
        let (s, v) = self.post_empty(&format!("/v1/sandboxes/{id}/pause")).await;
        assert_eq!(s, 200, "pause {id}: {v}");
        assert_eq!(v["status"], "paused", "{v}");
        t.elapsed()
    }

    /// Resumes; asserts 200 and `running`.
    pub async fn resume(&self, id: &str) -> Duration {
        let t = Instant::now();
        let (s, v) = self.post_empty(&format!("/v1/sandboxes/{id}/resume")).await;
        assert_eq!(s, 200, "resume {id}: {v}");
        assert_eq!(v["status"], "running", "{v}");
        t.elapsed()
    }

    /// Destroys; asserts 204 and that the sandbox is gone.
    pub async fn destroy(&self, id: &str) {
        let (s, v) = self.delete(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(s, 204, "destroy {id}: {v}");
        let (s, v) = self.get(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(s, 404, "destroyed sandbox still there: {v}");
        assert_eq!(v["error"]["code"], "sandbox_not_found");
    }

    /// Uploads through `files/write` (multipart `path` + `file`).
    pub async fn write_file(&self, id: &str, path: &str, data: Vec<u8>) -> Reply {
        let form = reqwest::multipart::Form::new()
            .text("path", path.to_string())
            .part(
                "file",
                reqwest::multipart::Part::bytes(data).file_name("data.bin"),
            );
        Self::send(
            self.request(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{id}/files/write"),
            )
            .multipart(form),
        )
        .await
    }

    /// Downloads through `files/read` or `files/stream/read` (`stream`), whole.
    pub async fn read_file(&self, id: &str, path: &str, stream: bool) -> (u16, Vec<u8>) {
        let route = if stream {
            "files/stream/read"
        } else {
            "files/read"
        };
        let r = self
            .request(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{id}/{route}"),
            )
            .json(&json!({ "path": path }))
            .send()
            .await
            .expect("read file");
        let status = r.status().as_u16();
        let mut body = r.bytes_stream();
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk.expect("read body"));
        }
        (status, out)
    }

    /// Opens the exec stream WebSocket; `Err` carries the HTTP status of a refused upgrade.
    pub async fn exec_stream(
        &self,
        id: &str,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        u16,
    > {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("ws://{}/v1/sandboxes/{id}/exec/stream", self.suite.listen);
        let mut req = url.into_client_request().expect("ws request");
        req.headers_mut()
            .insert("x-api-key", self.key.parse().expect("key header"));
        match tokio::time::timeout(
            Duration::from_secs(60),
            tokio_tungstenite::connect_async(req),
        )
        .await
        .expect("exec stream connect timed out")
        {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("exec stream connect: {e}"),
        }
    }
}
