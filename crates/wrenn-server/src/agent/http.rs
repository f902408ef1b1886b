//! [`HttpAgent`]: the [`HostAgent`] client for a real host agent at a base URL, over HTTP/JSON
//! (reqwest) and WebSocket (tokio-tungstenite), with `Authorization: Bearer <token>` on every
//! request. File bodies are streamed both ways and never collected here.

use super::{AgentError, ByteStream, ExecSession, HostAgent};
use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};
use wrenn_types::agent::{CreateSandbox, HostInfo, SandboxInfo, SnapshotRequest, TemplateInfo};
use wrenn_types::envd::{ExecRequest, ExecResponse};
use wrenn_types::stream::{ClientMessage, ServerMessage};
use wrenn_types::ErrorBody;

/// Time allowed for quick control calls (host info, lists, destroy).
const QUICK_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed for VM lifecycle calls (create, pause, resume, snapshot): under emulation
/// saving a guest's state can take a while.
const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Slack added to an exec's own timeout.
const EXEC_SLACK: Duration = Duration::from_secs(30);
/// Capacity of the message channels of a streamed exec.
const STREAM_CHANNEL: usize = 64;

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

fn transport(e: reqwest::Error) -> AgentError {
    AgentError::Transport(e.to_string())
}

impl HttpAgent {
    /// A client for the agent at `base` (e.g. `http://127.0.0.1:7070`).
    pub fn new(base: &str, token: &str) -> Result<Self, AgentError> {
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

    /// Sends and turns any non-success answer into [`AgentError::Api`].
    async fn send(&self, rb: RequestBuilder) -> Result<Response, AgentError> {
        let resp = rb.send().await.map_err(transport)?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(error_from_response(resp).await)
    }

    async fn json<T: DeserializeOwned>(&self, rb: RequestBuilder) -> Result<T, AgentError> {
        let resp = self.send(rb).await?;
        resp.json::<T>()
            .await
            .map_err(|e| AgentError::Protocol(e.to_string()))
    }
}

async fn error_from_response(resp: Response) -> AgentError {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    error_from_body(status, &text)
}

fn error_from_body(status: u16, text: &str) -> AgentError {
    match serde_json::from_str::<ErrorBody>(text) {
        Ok(b) => AgentError::Api {
            status,
            code: b.error.code,
            message: b.error.message,
        },
        Err(_) => AgentError::Protocol(format!(
            "status {status} without an error body: {}",
            text.chars().take(200).collect::<String>()
        )),
    }
}

#[async_trait]
impl HostAgent for HttpAgent {
    async fn host_info(&self) -> Result<HostInfo, AgentError> {
        self.json(self.req(Method::GET, "/v1/host").timeout(QUICK_TIMEOUT))
            .await
    }

    async fn list_sandboxes(&self) -> Result<Vec<SandboxInfo>, AgentError> {
        self.json(
            self.req(Method::GET, "/v1/sandboxes")
                .timeout(QUICK_TIMEOUT),
        )
        .await
    }

    async fn create(&self, req: &CreateSandbox) -> Result<SandboxInfo, AgentError> {
        self.json(
            self.req(Method::POST, "/v1/sandboxes")
                .json(req)
                .timeout(LIFECYCLE_TIMEOUT),
        )
        .await
    }

    async fn destroy(&self, id: &str) -> Result<(), AgentError> {
        self.send(
            self.req(Method::DELETE, &format!("/v1/sandboxes/{id}"))
                .timeout(LIFECYCLE_TIMEOUT),
        )
        .await?;
        Ok(())
    }

    async fn pause(&self, id: &str) -> Result<SandboxInfo, AgentError> {
        self.json(
            self.req(Method::POST, &format!("/v1/sandboxes/{id}/pause"))
                .timeout(LIFECYCLE_TIMEOUT),
        )
        .await
    }

    async fn resume(&self, id: &str) -> Result<SandboxInfo, AgentError> {
        self.json(
            self.req(Method::POST, &format!("/v1/sandboxes/{id}/resume"))
                .timeout(LIFECYCLE_TIMEOUT),
        )
        .await
    }

    async fn snapshot(&self, id: &str, req: &SnapshotRequest) -> Result<TemplateInfo, AgentError> {
        self.json(
            self.req(Method::POST, &format!("/v1/sandboxes/{id}/snapshot"))
                .json(req)
                .timeout(LIFECYCLE_TIMEOUT),
        )
        .await
    }

    async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResponse, AgentError> {
        let limit = Duration::from_secs(req.timeout_sec.unwrap_or(0)) + EXEC_SLACK;
        self.json(
            self.req(Method::POST, &format!("/v1/sandboxes/{id}/exec"))
                .json(req)
                .timeout(limit),
        )
        .await
    }

    async fn exec_stream(&self, id: &str) -> Result<ExecSession, AgentError> {
        let ws_base = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            return Err(AgentError::Protocol(format!(
                "agent url {} is not http(s)",
                self.base
            )));
        };
        let mut request = format!("{ws_base}/v1/sandboxes/{id}/exec/stream")
            .into_client_request()
            .map_err(|e| AgentError::Protocol(e.to_string()))?;
        let auth = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| AgentError::Protocol("agent token is not a valid header".into()))?;
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
            Err(e) => return Err(AgentError::Transport(e.to_string())),
        };
        let (to_agent, mut client_rx) = mpsc::channel::<ClientMessage>(STREAM_CHANNEL);
        let (events_tx, from_agent) = mpsc::channel::<ServerMessage>(STREAM_CHANNEL);
        tokio::spawn(async move {
            let (mut sink, mut stream) = ws.split();
            loop {
                tokio::select! {
                    msg = client_rx.recv() => match msg {
                        Some(m) => {
                            let text = match serde_json::to_string(&m) {
                                Ok(t) => t,
                                Err(_) => break,
                            };
                            if sink.send(Message::Text(text.into())).await.is_err() {
                                let _ = events_tx
                                    .send(ServerMessage::Error { data: "agent connection lost".into() })
                                    .await;
                                break;
                            }
                        }
                        None => {
                            let _ = sink.send(Message::Close(None)).await;
                            break;
                        }
                    },
                    frame = stream.next() => match frame {
                        Some(Ok(Message::Text(t))) => {
                            let event = serde_json::from_str::<ServerMessage>(t.as_str())
                                .unwrap_or_else(|e| ServerMessage::Error {
                                    data: format!("unreadable event from agent: {e}"),
                                });
                            if events_tx.send(event).await.is_err() {
                                let _ = sink.send(Message::Close(None)).await;
                                break;
                            }
                        }
                        Some(Ok(Message::Close(_))) | None => break,
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            let _ = events_tx
                                .send(ServerMessage::Error { data: format!("agent connection lost: {e}") })
                                .await;
                            break;
                        }
                    },
                }
            }
        });
        Ok(ExecSession {
            to_agent,
            from_agent,
        })
    }

    async fn write_file(&self, id: &str, path: &str, body: ByteStream) -> Result<(), AgentError> {
        self.send(
            self.req(Method::PUT, &format!("/v1/sandboxes/{id}/files"))
                .query(&[("path", path)])
                .header("content-type", "application/octet-stream")
                .body(reqwest::Body::wrap_stream(body)),
        )
        .await?;
        Ok(())
    }

    async fn read_file(&self, id: &str, path: &str) -> Result<ByteStream, AgentError> {
        let resp = self
            .send(
                self.req(Method::GET, &format!("/v1/sandboxes/{id}/files"))
                    .query(&[("path", path)]),
            )
            .await?;
        Ok(Box::pin(resp.bytes_stream().map_err(std::io::Error::other)))
    }

    async fn list_templates(&self) -> Result<Vec<TemplateInfo>, AgentError> {
        self.json(
            self.req(Method::GET, "/v1/templates")
                .timeout(QUICK_TIMEOUT),
        )
        .await
    }

    async fn delete_template(&self, name: &str) -> Result<(), AgentError> {
        self.send(
            self.req(Method::DELETE, &format!("/v1/templates/{name}"))
                .timeout(LIFECYCLE_TIMEOUT),
        )
        .await?;
        Ok(())
    }
}
