//! The control plane's view of a host agent: the [`HostAgent`] trait with one method per
//! operation of the agent's internal API (`wrenn_types::agent`), implemented by
//! [`http::HttpAgent`] (the real agent over HTTP/WebSocket) and [`sim::SimAgent`] (an
//! in-memory simulation for tests, with [`sim_server`] serving it over the real API routes).
//! This module moves requests and bytes; it knows nothing of teams, the store or placement.

pub mod http;
pub mod sim;
pub mod sim_server;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use std::pin::Pin;
use tokio::sync::mpsc;
use wrenn_types::agent::{CreateSandbox, HostInfo, SandboxInfo, SnapshotRequest, TemplateInfo};
use wrenn_types::envd::{ExecRequest, ExecResponse};
use wrenn_types::stream::{ClientMessage, ServerMessage};

/// A stream of file bytes moving through the control plane without being buffered whole.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// One streamed exec: messages to the process (`start`, `stop`) and events from it.
/// Dropping `to_agent` closes the session on the agent side.
pub struct ExecSession {
    pub to_agent: mpsc::Sender<ClientMessage>,
    pub from_agent: mpsc::Receiver<ServerMessage>,
}

/// Failure of a call to a host agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent answered with an error body (`code` from `wrenn_types::agent::codes`).
    #[error("agent answered {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The agent could not be reached, or the connection broke mid-transfer.
    #[error("agent unreachable: {0}")]
    Transport(String),
    /// The agent answered something that does not follow its API.
    #[error("unexpected answer from agent: {0}")]
    Protocol(String),
}

impl AgentError {
    /// The agent's error code, if it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            AgentError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Builds an [`AgentError::Api`] from a code and message.
    pub fn api(status: u16, code: &str, message: impl Into<String>) -> Self {
        AgentError::Api {
            status,
            code: code.into(),
            message: message.into(),
        }
    }
}

/// The operations of one host agent.
#[async_trait]
pub trait HostAgent: Send + Sync + 'static {
    /// `GET /v1/host`: capacity, accelerator and the templates it can create from.
    async fn host_info(&self) -> Result<HostInfo, AgentError>;
    /// `GET /v1/sandboxes`.
    async fn list_sandboxes(&self) -> Result<Vec<SandboxInfo>, AgentError>;
    /// `POST /v1/sandboxes`.
    async fn create(&self, req: &CreateSandbox) -> Result<SandboxInfo, AgentError>;
    /// `DELETE /v1/sandboxes/{id}`.
    async fn destroy(&self, id: &str) -> Result<(), AgentError>;
    /// `POST /v1/sandboxes/{id}/pause`.
    async fn pause(&self, id: &str) -> Result<SandboxInfo, AgentError>;
    /// `POST /v1/sandboxes/{id}/resume`.
    async fn resume(&self, id: &str) -> Result<SandboxInfo, AgentError>;
    /// `POST /v1/sandboxes/{id}/snapshot`; the sandbox is gone afterwards.
    async fn snapshot(&self, id: &str, req: &SnapshotRequest) -> Result<TemplateInfo, AgentError>;
    /// `POST /v1/sandboxes/{id}/exec`.
    async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResponse, AgentError>;
    /// `GET /v1/sandboxes/{id}/exec/stream` (WebSocket).
    async fn exec_stream(&self, id: &str) -> Result<ExecSession, AgentError>;
    /// `PUT /v1/sandboxes/{id}/files?path=`, body streamed.
    async fn write_file(&self, id: &str, path: &str, body: ByteStream) -> Result<(), AgentError>;
    /// `GET /v1/sandboxes/{id}/files?path=`, answer streamed.
    async fn read_file(&self, id: &str, path: &str) -> Result<ByteStream, AgentError>;
    /// `GET /v1/templates`.
    async fn list_templates(&self) -> Result<Vec<TemplateInfo>, AgentError>;
    /// `DELETE /v1/templates/{name}`.
    async fn delete_template(&self, name: &str) -> Result<(), AgentError>;
}
