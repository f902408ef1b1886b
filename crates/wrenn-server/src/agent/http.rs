//! [`HttpAgent`]: the [`HostAgent`] client for a real host agent at a base URL, over HTTP/JSON
//! (reqwest), WebSocket (tokio-tungstenite) and, for a guest's port, an upgraded connection,
//! with `Authorization: Bearer <token>` on every request, or, for an `https://` host (one that
//! joined), mutual TLS with this process's control-plane certificate
//! ([`crate::pki::client`]) and no token. URLs are built from the routes of
//! [`paths`]. File bodies are streamed both ways and never collected here; JSON answers and
//! error bodies are read up to a limit ([`MAX_ANSWER_BYTES`], [`MAX_EXEC_ANSWER_BYTES`],
//! [`MAX_ERROR_BYTES`]), so an agent cannot make the control plane hold an unbounded answer.

use super::{AgentApiError, AgentResult, ByteStream, ExecSession, FileBody, HostAgent};
use async_trait::async_trait;
use reqwest::{RequestBuilder, Response};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
use wrenn_agent_api::paths::{self, Route};
use wrenn_agent_api::ws_session;
use wrenn_types::agent::{
    AgentErrorCode, CreateSandbox, FileQuery, HostInfo, SandboxInfo, SnapshotRequest, TemplateInfo,
};
use wrenn_types::envd::{ExecRequest, ExecResponse};
use wrenn_types::fs::{
    FileEntry, ListDirRequest, ListDirResponse, MakeDirRequest, MakeDirResponse, RemoveRequest,
};
use wrenn_types::observe::{MetricPoint, MetricsQuery};
use wrenn_types::process::{ProcessInfo, ProcessList, Signal, StartProcess};
use wrenn_types::ErrorBody;

#[path = "http_copy.rs"]
mod copy;

/// Time allowed for quick control calls (host info, lists, destroy).
const QUICK_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed for VM lifecycle calls (create, pause, resume, snapshot): under emulation
/// saving a guest's state can take a while.
const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Time allowed for listing, creating or removing guest paths (a deep listing or a large
/// tree's removal takes a while).
const FILES_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed for the agent to connect to a guest's port and answer.
const PORT_OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Slack added to an exec's own timeout.
const EXEC_SLACK: Duration = Duration::from_secs(30);
/// Largest JSON answer read from an agent (host info, lists, a sandbox, a template).
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// Largest exec answer read (its output, JSON-escaped or base64, is in it).
pub const MAX_EXEC_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// Largest error body read from an agent.
pub const MAX_ERROR_BYTES: usize = 64 * 1024;

/// A client for one host agent.
#[derive(Clone)]
pub struct HttpAgent {
    base: String,
    token: String,
    client: reqwest::Client,
    /// The TLS configuration of an `https://` host (shared by its WebSockets).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Why this `https://` host cannot be spoken to (no CA in this server's data dir): every
    /// call fails with it, so the host counts as unreachable and the others are unaffected.
    no_identity: Option<String>,
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
    /// A client for the agent at `base` (e.g. `http://127.0.0.1:7070`); an `https://` base
    /// is spoken to with this process's control-plane identity.
    pub fn new(base: &str, token: &str) -> AgentResult<Self> {
        Self::pinned(base, token, None)
    }

    /// [`HttpAgent::new`] for a joined host: an `https://` host must also present the
    /// certificate whose SHA-256 is `pin` (the one last issued to it), when one is given.
    pub fn pinned(base: &str, token: &str, pin: Option<&str>) -> AgentResult<Self> {
        if base.starts_with("https://") {
            let tls = match pin {
                Some(pin) => crate::pki::client::pinned_config(pin),
                None => crate::pki::client::config(),
            };
            return match tls {
                Ok(tls) => Self::with_tls(base, tls),
                Err(e) => {
                    tracing::warn!(host = %base, "no TLS identity for this host: {e}");
                    let mut agent = Self::build(base, "", None)?;
                    agent.no_identity = Some(format!("no TLS identity for {base}: {e}"));
                    Ok(agent)
                }
            };
        }
        Self::build(base, token, None)
    }

    /// A client for the `https://` agent at `base`, with mutual TLS configured by `tls`.
    pub fn with_tls(base: &str, tls: Arc<rustls::ClientConfig>) -> AgentResult<Self> {
        Self::build(base, "", Some(tls))
    }

    fn build(base: &str, token: &str, tls: Option<Arc<rustls::ClientConfig>>) -> AgentResult<Self> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(tls) = &tls {
            builder = builder
                .use_preconfigured_tls(rustls::ClientConfig::clone(tls))
                .https_only(true);
        }
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            client: builder.build().map_err(transport)?,
            tls,
            no_identity: None,
        })
    }

    /// Fails when this host cannot be spoken to (see `no_identity`).
    fn usable(&self) -> AgentResult<()> {
        match &self.no_identity {
            Some(why) => Err(AgentApiError::Transport(why.clone())),
            None => Ok(()),
        }
    }

    /// `rb` with the bearer token, when this host has one (a TLS host has none).
    fn auth(&self, rb: RequestBuilder) -> RequestBuilder {
        if self.token.is_empty() {
            rb
        } else {
            rb.bearer_auth(&self.token)
        }
    }

    /// A request for `route`, its parameter (if it has one) filled with `param`.
    fn req(&self, route: Route, param: &str) -> RequestBuilder {
        self.auth(self.client.request(
            route.method.clone(),
            format!("{}{}", self.base, route.fill(param)),
        ))
    }

    /// Sends and turns any non-success answer into [`AgentApiError::Api`].
    async fn send(&self, rb: RequestBuilder) -> AgentResult<Response> {
        self.usable()?;
        let resp = rb.send().await.map_err(transport)?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(error_from_response(resp).await)
    }

    async fn json<T: DeserializeOwned>(&self, rb: RequestBuilder) -> AgentResult<T> {
        self.json_within(rb, MAX_ANSWER_BYTES).await
    }

    /// [`HttpAgent::json`] for an answer of at most `limit` bytes.
    async fn json_within<T: DeserializeOwned>(
        &self,
        rb: RequestBuilder,
        limit: usize,
    ) -> AgentResult<T> {
        let resp = self.send(rb).await?;
        let body = read_limited(resp, limit).await?;
        serde_json::from_slice(&body).map_err(|e| AgentApiError::Protocol(e.to_string()))
    }

    /// A call without a body whose answer is JSON.
    async fn call<T: DeserializeOwned>(
        &self,
        route: Route,
        param: &str,
        timeout: Duration,
    ) -> AgentResult<T> {
        self.json(self.req(route, param).timeout(timeout)).await
    }

    /// A WebSocket to the agent at `path`, as an exec session; a refused upgrade is the
    /// agent's error answer.
    async fn open_ws(&self, path: &str) -> AgentResult<ExecSession> {
        Ok(ws_session(self.connect_ws(path).await?, "agent"))
    }

    /// A WebSocket to the agent at `path`; a refused upgrade is the agent's error answer.
    async fn connect_ws(
        &self,
        path: &str,
    ) -> AgentResult<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    > {
        self.usable()?;
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
        let mut request = format!("{ws_base}{path}")
            .into_client_request()
            .map_err(|e| AgentApiError::Protocol(e.to_string()))?;
        if !self.token.is_empty() {
            let auth = format!("Bearer {}", self.token)
                .parse()
                .map_err(|_| AgentApiError::Protocol("agent token is not a valid header".into()))?;
            request.headers_mut().insert("authorization", auth);
        }
        let connector = self
            .tls
            .as_ref()
            .map(|tls| tokio_tungstenite::Connector::Rustls(tls.clone()));
        let (ws, _) = match tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(wrenn_agent_api::ws_client_config()),
            false,
            connector,
        )
        .await
        {
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
        Ok(ws)
    }

    /// A call without a body whose answer is empty.
    async fn call_empty(&self, route: Route, param: &str, timeout: Duration) -> AgentResult<()> {
        self.send(self.req(route, param).timeout(timeout)).await?;
        Ok(())
    }
}

fn file_query(path: &str) -> FileQuery {
    FileQuery {
        path: path.to_string(),
    }
}

/// The answer's body, refused when over `limit` bytes (by its length, or as it arrives).
async fn read_limited(mut resp: Response, limit: usize) -> AgentResult<Vec<u8>> {
    let over = || AgentApiError::Protocol(format!("answer over {limit} bytes"));
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(over());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > limit {
            return Err(over());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn error_from_response(resp: Response) -> AgentApiError {
    let status = resp.status().as_u16();
    match read_limited(resp, MAX_ERROR_BYTES).await {
        Ok(body) => error_from_body(status, &String::from_utf8_lossy(&body)),
        Err(e) => e,
    }
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
    async fn host_info(&self) -> AgentResult<HostInfo> {
        self.call(paths::HOST_INFO, "", QUICK_TIMEOUT).await
    }

    async fn list_sandboxes(&self) -> AgentResult<Vec<SandboxInfo>> {
        self.call(paths::LIST_SANDBOXES, "", QUICK_TIMEOUT).await
    }

    async fn create(&self, req: &CreateSandbox) -> AgentResult<SandboxInfo> {
        self.json(
            self.req(paths::CREATE_SANDBOX, "")
                .json(req)
                .timeout(LIFECYCLE_TIMEOUT),
        )
        .await
    }

    async fn get_sandbox(&self, id: &str) -> AgentResult<SandboxInfo> {
        self.call(paths::GET_SANDBOX, id, QUICK_TIMEOUT).await
    }

    async fn destroy(&self, id: &str) -> AgentResult<()> {
        self.call_empty(paths::DESTROY_SANDBOX, id, LIFECYCLE_TIMEOUT)
            .await
    }

    async fn pause(&self, id: &str) -> AgentResult<SandboxInfo> {
        self.call(paths::PAUSE, id, LIFECYCLE_TIMEOUT).await
    }

    async fn resume(&self, id: &str) -> AgentResult<SandboxInfo> {
        self.call(paths::RESUME, id, LIFECYCLE_TIMEOUT).await
    }

    async fn snapshot(&self, id: &str, req: &SnapshotRequest) -> AgentResult<TemplateInfo> {
        self.json(
            self.req(paths::SNAPSHOT, id)
                .json(req)
                .timeout(LIFECYCLE_TIMEOUT),
        )
        .await
    }

    async fn exec(&self, id: &str, req: &ExecRequest) -> AgentResult<ExecResponse> {
        let limit = Duration::from_secs(req.timeout_sec.unwrap_or(0)) + EXEC_SLACK;
        let rb = self.req(paths::EXEC, id).json(req).timeout(limit);
        let cap = req
            .max_output_bytes
            .unwrap_or(wrenn_types::envd::DEFAULT_MAX_OUTPUT_BYTES);
        let limit = wrenn_types::envd::max_exec_answer_bytes(cap).min(MAX_EXEC_ANSWER_BYTES);
        self.json_within(rb, limit).await
    }

    async fn exec_stream(&self, id: &str) -> AgentResult<ExecSession> {
        self.open_ws(&paths::EXEC_STREAM.fill(id)).await
    }

    async fn start_process(&self, id: &str, req: &StartProcess) -> AgentResult<ProcessInfo> {
        let rb = self.req(paths::START_PROCESS, id).json(req);
        self.json(rb.timeout(QUICK_TIMEOUT)).await
    }

    async fn list_processes(&self, id: &str) -> AgentResult<Vec<ProcessInfo>> {
        let list: ProcessList = self.call(paths::LIST_PROCESSES, id, QUICK_TIMEOUT).await?;
        Ok(list.processes)
    }

    async fn kill_process(&self, id: &str, selector: &str, signal: Signal) -> AgentResult<()> {
        let route = paths::KILL_PROCESS;
        let url = format!("{}{}", self.base, route.fill_two(id, selector));
        let rb = self
            .auth(self.client.request(route.method.clone(), url))
            .query(&[("signal", signal.as_str())])
            .timeout(QUICK_TIMEOUT);
        self.send(rb).await?;
        Ok(())
    }

    async fn attach_process(&self, id: &str, selector: &str) -> AgentResult<ExecSession> {
        self.open_ws(&paths::ATTACH_PROCESS.fill_two(id, selector))
            .await
    }

    async fn open_pty(&self, id: &str) -> AgentResult<wrenn_agent_api::PtySession> {
        let ws = self.connect_ws(&paths::OPEN_PTY.fill(id)).await?;
        Ok(wrenn_agent_api::ws_pty_session(ws, "agent"))
    }

    async fn open_port(&self, id: &str, port: u16) -> AgentResult<wrenn_agent_api::PortStream> {
        self.usable()?;
        let path = paths::OPEN_PORT.fill_two(id, &port.to_string());
        let req = self
            .auth(self.client.request(
                paths::OPEN_PORT.method.clone(),
                format!("{}{path}", self.base),
            ))
            .header("connection", "upgrade")
            .header("upgrade", wrenn_agent_api::PORT_UPGRADE);
        // The agent answers once the guest accepted the connection (or refused it).
        let resp = tokio::time::timeout(PORT_OPEN_TIMEOUT, req.send())
            .await
            .map_err(|_| AgentApiError::Transport("the agent did not answer in time".into()))?
            .map_err(transport)?;
        if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            return Err(error_from_response(resp).await);
        }
        Ok(Box::new(resp.upgrade().await.map_err(transport)?))
    }

    async fn write_file(&self, id: &str, path: &str, body: ByteStream) -> AgentResult<()> {
        self.send(
            self.req(paths::WRITE_FILE, id)
                .query(&file_query(path))
                .header("content-type", "application/octet-stream")
                .body(reqwest::Body::wrap_stream(body)),
        )
        .await?;
        Ok(())
    }

    async fn read_file_body(&self, id: &str, path: &str) -> AgentResult<FileBody> {
        let req = self.req(paths::READ_FILE, id).query(&file_query(path));
        let resp = self.send(req).await?;
        Ok(FileBody::from_stream(
            resp.content_length(),
            resp.bytes_stream(),
        ))
    }

    async fn list_dir(&self, id: &str, req: &ListDirRequest) -> AgentResult<ListDirResponse> {
        let rb = self.req(paths::LIST_DIR, id).json(req);
        self.json(rb.timeout(FILES_TIMEOUT)).await
    }

    async fn make_dir(&self, id: &str, path: &str) -> AgentResult<FileEntry> {
        let req = MakeDirRequest { path: path.into() };
        let rb = self.req(paths::MAKE_DIR, id).json(&req);
        let made: MakeDirResponse = self.json(rb.timeout(FILES_TIMEOUT)).await?;
        Ok(made.entry)
    }

    async fn remove_path(&self, id: &str, path: &str) -> AgentResult<()> {
        let req = RemoveRequest { path: path.into() };
        let rb = self.req(paths::REMOVE_PATH, id).json(&req);
        self.send(rb.timeout(FILES_TIMEOUT)).await?;
        Ok(())
    }

    async fn list_templates(&self) -> AgentResult<Vec<TemplateInfo>> {
        self.call(paths::LIST_TEMPLATES, "", QUICK_TIMEOUT).await
    }

    fn template_copy(&self) -> Option<&dyn wrenn_agent_api::TemplateCopy> {
        Some(self)
    }

    async fn delete_template(&self, name: &str) -> AgentResult<()> {
        self.call_empty(paths::DELETE_TEMPLATE, name, LIFECYCLE_TIMEOUT)
            .await
    }

    async fn sandbox_metrics(&self, id: &str, range_secs: u32) -> AgentResult<Vec<MetricPoint>> {
        let q = MetricsQuery { range_secs };
        let rb = self.req(paths::SANDBOX_METRICS, id).query(&q);
        self.json(rb.timeout(QUICK_TIMEOUT)).await
    }
}
