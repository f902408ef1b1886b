//! A small client of the public HTTP API, authenticated with an API key: the calls the
//! benchmark times (sandbox lifecycle, exec, streamed files). Every failure carries the HTTP
//! status and the API's error code and message. It times nothing itself.

use anyhow::{anyhow, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{json, Value};
use std::time::Duration;

/// Time allowed for lifecycle calls (create, pause, resume) under emulation and load.
const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(900);
/// Time allowed for a quick call (exec of a trivial command, destroy).
const QUICK_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed for moving a large file.
const FILE_TIMEOUT: Duration = Duration::from_secs(900);

/// A client of one control plane with one API key.
#[derive(Clone)]
pub struct Api {
    base: String,
    key: String,
    http: reqwest::Client,
}

/// Turns a non-success response into an error naming status, code and message.
async fn check(resp: Response) -> Result<Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("?");
    let msg = body["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| text.chars().take(200).collect());
    Err(anyhow!("{status} {code}: {msg}"))
}

impl Api {
    /// Signs up a fresh account on the control plane at `base` and creates an API key.
    pub async fn sign_up(base: &str) -> Result<Api> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        let password: String = (0..16)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let auth: Value = check(
            http.post(format!("{base}/v1/auth/signup"))
                .json(&json!({"email": "bench@example.com", "password": password}))
                .send()
                .await?,
        )
        .await?
        .json()
        .await?;
        let token = auth["token"]
            .as_str()
            .ok_or_else(|| anyhow!("signup answered without a token"))?;
        let key: Value = check(
            http.post(format!("{base}/v1/api-keys"))
                .bearer_auth(token)
                .json(&json!({"name": "bench"}))
                .send()
                .await?,
        )
        .await?
        .json()
        .await?;
        let key = key["key"]
            .as_str()
            .ok_or_else(|| anyhow!("API key answered without a key"))?
            .to_string();
        Ok(Api {
            base: base.to_string(),
            key,
            http,
        })
    }

    fn req(&self, method: Method, path: &str, timeout: Duration) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("x-api-key", &self.key)
            .timeout(timeout)
    }

    /// Creates a `minimal` sandbox; returns its id once the API answered 201 (envd ready).
    pub async fn create(&self, memory_mb: u32) -> Result<String> {
        let v: Value = check(
            self.req(Method::POST, "/v1/sandboxes", LIFECYCLE_TIMEOUT)
                .json(&json!({"template": "minimal", "vcpus": 1, "memory_mb": memory_mb}))
                .send()
                .await?,
        )
        .await?
        .json()
        .await?;
        if v["status"] != "running" {
            return Err(anyhow!("created sandbox is not running: {v}"));
        }
        v["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("create answered without an id: {v}"))
    }

    pub async fn destroy(&self, id: &str) -> Result<()> {
        check(
            self.req(
                Method::DELETE,
                &format!("/v1/sandboxes/{id}"),
                QUICK_TIMEOUT,
            )
            .send()
            .await?,
        )
        .await?;
        Ok(())
    }

    /// Runs a command and checks it exited 0; returns its stdout.
    pub async fn exec(&self, id: &str, cmd: &str, args: &[&str]) -> Result<String> {
        let v: Value = check(
            self.req(
                Method::POST,
                &format!("/v1/sandboxes/{id}/exec"),
                QUICK_TIMEOUT,
            )
            .json(&json!({"cmd": cmd, "args": args, "timeout_sec": 60}))
            .send()
            .await?,
        )
        .await?
        .json()
        .await?;
        if v["exit_code"] != 0 {
            return Err(anyhow!("{cmd} {args:?} failed: {v}"));
        }
        Ok(v["stdout"].as_str().unwrap_or_default().to_string())
    }

    /// Pauses or resumes (`action` is `pause` or `resume`).
    pub async fn lifecycle(&self, id: &str, action: &str) -> Result<()> {
        let v: Value = check(
            self.req(
                Method::POST,
                &format!("/v1/sandboxes/{id}/{action}"),
                LIFECYCLE_TIMEOUT,
            )
            .send()
            .await?,
        )
        .await?
        .json()
        .await?;
        let want = if action == "pause" {
            "paused"
        } else {
            "running"
        };
        if v["status"] != want {
            return Err(anyhow!("{action} left the sandbox {}", v["status"]));
        }
        Ok(())
    }

    /// Uploads `data` to `path` through `files/stream/write`.
    pub async fn upload(&self, id: &str, path: &str, data: Bytes) -> Result<()> {
        let len = data.len() as u64;
        let form = reqwest::multipart::Form::new()
            .text("path", path.to_string())
            .part(
                "file",
                reqwest::multipart::Part::stream_with_length(data, len).file_name("bench.bin"),
            );
        check(
            self.req(
                Method::POST,
                &format!("/v1/sandboxes/{id}/files/stream/write"),
                FILE_TIMEOUT,
            )
            .multipart(form)
            .send()
            .await?,
        )
        .await?;
        Ok(())
    }

    /// Downloads `path` through `files/stream/read`, checking it byte for byte against
    /// `expected` as it arrives.
    pub async fn download_and_compare(&self, id: &str, path: &str, expected: &[u8]) -> Result<()> {
        let resp = check(
            self.req(
                Method::POST,
                &format!("/v1/sandboxes/{id}/files/stream/read"),
                FILE_TIMEOUT,
            )
            .json(&json!({"path": path}))
            .send()
            .await?,
        )
        .await?;
        let mut stream = resp.bytes_stream();
        let mut at = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            let end = at + chunk.len();
            if end > expected.len() || expected[at..end] != chunk[..] {
                return Err(anyhow!("downloaded bytes differ from the upload at {at}"));
            }
            at = end;
        }
        if at != expected.len() {
            return Err(anyhow!(
                "downloaded {at} bytes, uploaded {}",
                expected.len()
            ));
        }
        Ok(())
    }
}
