//! [`HttpAgent`]: the [`HostAgent`] client for a real host agent at a base URL, over HTTP/JSON
//! (reqwest) and WebSocket (tokio-tungstenite), with `Authorization: Bearer <token>` on every
//! request. URLs are built from the routes of [`paths`]. File bodies are streamed both ways
//! and never collected here.

use super::{AgentApiError, ByteStream, ExecSession, FileBody, HostAgent};
use async_trait::async_trait;
use futures_util::TryStreamExt;
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use std::time::Duration;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
use wrenn_agent_api::{paths, ws_session};
use wrenn_types::agent::{
    AgentErrorCode, CreateSandbox, FileQuery, HostInfo, SandboxInfo, SnapshotRequest,
    TemplateInfo,
};
use wrenn_types::envd::{ExecRequest, ExecResponse};
use wrenn_types::ErrorBody;

/// Time allowed for quick control calls (host info, lists, destroy).
const QUICK_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed for VM lifecycle calls (create, pause, resume, snapshot): under emulation
/// saving a guest's state can take a while.
const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Slack added to an exec's own timeout.
const EXEC_SLACK: Duration = Duration::from_secs(30);

/// A client for one host agent.
#[derive(Clone)]
pub struct HttpAgent {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for HttpAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never printed.
        f.debug_struct("HttpAgent")
            .field("base", &self.base)
            .finish()
    }
}

fn transport(e: reqwest::Error) -> AgentApiError {
    AgentApiError::Transport(e.to_string())
}

impl HttpAgent {
    /// A client for the agent at `base` (e.g. `http://127.0.0.1:7070`).
    pub fn new(base: &str, token: &str) -> Result<Self, AgentApiError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(transport)?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            client,
        })
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token)
    }

    /// Sends and turns any non-success answer into [`AgentApiError::Api`].
    async fn send(&self, rb: RequestBuilder) -> Result<Response, AgentApiError> {
        let resp = rb.send().await.map_err(transport)?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(error_from_response(resp).await)
    }

    async fn json<T: DeserializeOwned>(&self, rb: RequestBuilder) -> Result<T, AgentApiError> {
        let resp = self.send(rb).await?;
        resp.json::<T>()
            .await
            .map_err(|e| AgentApiError::Protocol(e.to_string()))
    }
}

fn file_query(path: &str) -> FileQuery {
    FileQuery {
        path: path.to_string(),
    }
}

async fn error_from_response(resp: Response) -> AgentApiError {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    error_from_body(status, &text)
}

fn error_from_body(status: u16, text: &str) -> AgentApiError {
    match serde_json::from_str::<ErrorBody<AgentErrorCode>>(text) {
        Ok(b) => AgentApiError::with_status(status, b.error.code, b.error.message),
        Err(_) => AgentApiError::Protocol(format!(
            "status {status} without an error body: {}",
            text.chars().take(200).collect::<String>()
        )),
    }
}

#[async_trait]
impl HostAgent for HttpAgent {
    async fn host_info(&self) -> Result<HostInfo, AgentApiError> {
        self.json(self.req(Method::GET, paths::HOST).timeout(QUICK_TIMEOUT))
            .await
    }

    async fn list_sandboxes(&self) -> Result<Vec<SandboxInfo>, AgentApiError> {
        self.json(
            self.req(Method::GET, paths::SANDBOXES)
                .timeout(QUICK_TIMEOUT),
        )
        .await
    }

    async fn create(&self, req: &CreateSandbox) -> Result<SandboxInfo, AgentApiError> {
        self.json(
            self.req(Method::POST, paths::SANDBOXES)
                .json(req)
                .timeout(LIFECYCLE_TIMEOUT),
        )
        .await
    }

    async fn get_sandbox(&self, id: &str) -> Result<SandboxInfo, AgentApiError> {
        self.json(
            self.req(Method::GET, &paths::fill(paths::SANDBOX, id))
                .timeout(QUICK_TIMEOUT),
        )
        .await
    }

    async fn destroy(&self, id: &str) -> Result<(), AgentApiError> {
        self.send(
            self.req(Method::DELETE, &paths::fill(paths::SANDBOX, id))
                .timeout(LIFECYCLE_TIMEOUT),
        )
        .await?;
        Ok(())
    }

    async fn pause(&self, id: &str) -> Result<SandboxInfo, AgentApiError> {
        self.json(
            self.req(Method::POST, &paths::fill(paths::PAUSE, id))
                .timeout(LIFECYCLE_TIMEOUT),
        )
        .await
    }

    async fn resume(&self, id: &str) -> Result<SandboxInfo, AgentApiError> {
        self.json(
            self.req(Method::POST, &paths::fill(paths::RESUME, id))
                .timeout(LIFECYCLE_TIMEOUT),
        )
        .await
    }

    async fn snapshot(
        &self,
        id: &str,
        req: &SnapshotRequest,
    ) -> Result<TemplateInfo, AgentApiError> {
        self.json(
            self.req(Method::POST, &paths::fill(paths::SNAPSHOT, id))
                .json(req)
                .timeout(LIFECYCLE_TIMEOUT),
        )
        .await
    }

    async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResponse, AgentApiError> {
        let limit = Duration::from_secs(req.timeout_sec.unwrap_or(0)) + EXEC_SLACK;
        self.json(
            self.req(Method::POST, &paths::fill(paths::EXEC, id))
                .json(req)
                .timeout(limit),
        )
        .await
    }

    async fn exec_stream(&self, id: &str) -> Result<ExecSession, AgentApiError> {
        let ws_base = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            return Err(AgentApiError::Protocol(format!(
                "agent url {} is not http(s)",
                self.base
            )));
        };
        let mut request = format!("{ws_base}{}", paths::fill(paths::EXEC_STREAM, id))
            .into_client_request()
            .map_err(|e| AgentApiError::Protocol(e.to_string()))?;
        let auth = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| AgentApiError::Protocol("agent token is not a valid header".into()))?;
        request.headers_mut().insert("authorization", auth);
        let (ws, _) = match tokio_tungstenite::connect_async(request).await {
            Ok(ok) => ok,
            Err(tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                return Err(error_from_body(status, &body));
            }
            Err(e) => return Err(AgentApiError::Transport(e.to_string())),
        };
        Ok(ws_session(ws, "agent"))
    }

    async fn write_file(
        &self,
        id: &str,
        path: &str,
        body: ByteStream,
    ) -> Result<(), AgentApiError> {
        self.send(
            self.req(Method::PUT, &paths::fill(paths::FILES, id))
                .query(&file_query(path))
                .header("content-type", "application/octet-stream")
                .body(reqwest::Body::wrap_stream(body)),
        )
        .await?;
        Ok(())
    }

    async fn read_file_body(&self, id: &str, path: &str) -> Result<FileBody, AgentApiError> {
        let resp = self
            .send(
                self.req(Method::GET, &paths::fill(paths::FILES, id))
                    .query(&file_query(path)),
            )
            .await?;
        Ok(FileBody {
            len: resp.content_length(),
            stream: Box::pin(resp.bytes_stream().map_err(std::io::Error::other)),
        })
    }

    async fn list_templates(&self) -> Result<Vec<TemplateInfo>, AgentApiError> {
        self.json(
            self.req(Method::GET, paths::TEMPLATES)
                .timeout(QUICK_TIMEOUT),
        )
        .await
    }

    async fn delete_template(&self, name: &str) -> Result<(), AgentApiError> {
        self.send(
            self.req(Method::DELETE, &paths::fill(paths::TEMPLATE, name))
                .timeout(LIFECYCLE_TIMEOUT),
        )
        .await?;
        Ok(())
    }
}
