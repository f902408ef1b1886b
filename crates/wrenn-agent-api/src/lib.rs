//! The host agent's internal API, declared once. The control plane calls it; one agent runs
//! per host.
//!
//! - [`HostAgent`]: the operations, one method per route, with the typed bodies of
//!   `wrenn_types::agent`. The real agent (`wrenn-agent`, over its sandbox manager), the
//!   simulated agent of the control plane's tests and the control plane's HTTP client all
//!   implement it.
//! - [`paths`]: the routes (method and path), used by the router and by the client.
//! - [`router`]: serves any `HostAgent` over HTTP: one constant-time bearer check, request
//!   parsing, one trait call per route, and one mapping of [`AgentApiError`] to a status and
//!   an error body.
//! - [`ws_session`] and [`relay_exec`]: the two ends of a streamed exec over WebSocket.
//! - [`PortStream`]: a connection to a port of a guest (an HTTP upgrade on the wire), under
//!   the control plane's port proxy.
//! - [`TemplateCopy`]: a snapshot template's copy between agents (manifest, ranged reads,
//!   writes at an offset, commit), reached through [`HostAgent::template_copy`].
//!
//! File bodies are streams both ways ([`ByteStream`], [`FileBody`]) and a streamed exec is a
//! pair of channels ([`ExecSession`]), so no hop holds a whole file or a whole output. This
//! crate does no VM, disk or network work of its own and must not depend on the agent or the
//! control plane.

mod copy;
mod error;
pub mod paths;
mod port;
mod procs;
mod pty;
mod router;
mod session;

pub use copy::{status_of, TemplateCopy};
pub use error::AgentApiError;
pub use port::{parse_port, PortIo, PortStream, PORT_UPGRADE};
pub use pty::{relay_pty, ws_pty_session, PtyFrame, PtySession, MAX_PTY_MESSAGE};
pub use router::router;
pub use session::{
    relay_exec, relay_exec_mapped, ws_client_config, ws_session, DEFAULT_SEND_STALL, MAX_WS_MESSAGE,
};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use std::pin::Pin;
use tokio::sync::mpsc;
use wrenn_types::agent::{CreateSandbox, HostInfo, SandboxInfo, SnapshotRequest, TemplateInfo};
use wrenn_types::envd::{ExecRequest, ExecResponse};
use wrenn_types::fs::{FileEntry, ListDirRequest, ListDirResponse};
use wrenn_types::observe::MetricPoint;
use wrenn_types::process::{ProcessInfo, Signal, StartProcess};
use wrenn_types::stream::{ClientMessage, ServerMessage};

/// The answer of an agent that keeps no background processes.
fn no_processes(id: &str) -> AgentApiError {
    AgentApiError::new(
        wrenn_types::agent::AgentErrorCode::ProcessNotFound,
        format!("sandbox {id} has no background processes on this agent"),
    )
}

/// What every operation of the agent API returns.
pub type AgentResult<T> = Result<T, AgentApiError>;

/// File bytes as they arrive, never collected whole.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// A file read out of a sandbox: its bytes as they arrive and, when the source knows it, its
/// length (sent as `Content-Length`).
pub struct FileBody {
    pub len: Option<u64>,
    pub stream: ByteStream,
}

impl FileBody {
    /// A body of `len` bytes (when known) arriving from `stream`, such as an HTTP answer's.
    pub fn from_stream<S, E>(len: Option<u64>, stream: S) -> Self
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        Self {
            len,
            stream: Box::pin(stream.map_err(std::io::Error::other)),
        }
    }
}

/// One streamed exec: messages to the process (`start`, `stop`) and events from it.
/// Dropping `to_agent` ends the session (the process is killed).
pub struct ExecSession {
    pub to_agent: mpsc::Sender<ClientMessage>,
    pub from_agent: mpsc::Receiver<ServerMessage>,
}

/// The operations of one host agent; the route of each is the [`paths`] constant named beside
/// it.
#[async_trait]
pub trait HostAgent: Send + Sync + 'static {
    /// [`paths::HOST_INFO`]: capacity, accelerator and the templates it can create from.
    async fn host_info(&self) -> AgentResult<HostInfo>;
    /// [`paths::LIST_SANDBOXES`].
    async fn list_sandboxes(&self) -> AgentResult<Vec<SandboxInfo>>;
    /// [`paths::CREATE_SANDBOX`].
    async fn create(&self, req: &CreateSandbox) -> AgentResult<SandboxInfo>;
    /// [`paths::GET_SANDBOX`].
    async fn get_sandbox(&self, id: &str) -> AgentResult<SandboxInfo>;
    /// [`paths::DESTROY_SANDBOX`].
    async fn destroy(&self, id: &str) -> AgentResult<()>;
    /// [`paths::PAUSE`].
    async fn pause(&self, id: &str) -> AgentResult<SandboxInfo>;
    /// [`paths::RESUME`].
    async fn resume(&self, id: &str) -> AgentResult<SandboxInfo>;
    /// [`paths::SNAPSHOT`]; the sandbox is gone afterwards.
    async fn snapshot(&self, id: &str, req: &SnapshotRequest) -> AgentResult<TemplateInfo>;
    /// [`paths::EXEC`]: one command run to completion.
    async fn exec(&self, id: &str, req: &ExecRequest) -> AgentResult<ExecResponse>;
    /// [`paths::EXEC_STREAM`]: a session of `wrenn_types::stream` messages.
    async fn exec_stream(&self, id: &str) -> AgentResult<ExecSession>;
    /// [`paths::WRITE_FILE`]: `body` streamed into the file `path`.
    async fn write_file(&self, id: &str, path: &str, body: ByteStream) -> AgentResult<()>;
    /// [`paths::READ_FILE`]: the file `path` streamed out.
    async fn read_file_body(&self, id: &str, path: &str) -> AgentResult<FileBody>;
    /// [`paths::LIST_TEMPLATES`].
    async fn list_templates(&self) -> AgentResult<Vec<TemplateInfo>>;
    /// [`paths::DELETE_TEMPLATE`].
    async fn delete_template(&self, name: &str) -> AgentResult<()>;
    /// [`paths::SANDBOX_METRICS`]: the sandbox's resource samples of the last `range_secs`
    /// seconds, oldest first (finer for short ranges; see the agent's sampler).
    async fn sandbox_metrics(&self, id: &str, range_secs: u32) -> AgentResult<Vec<MetricPoint>>;

    /// [`paths::START_PROCESS`]: `req` started in the background in the sandbox.
    async fn start_process(&self, id: &str, req: &StartProcess) -> AgentResult<ProcessInfo> {
        let _ = req;
        Err(no_processes(id))
    }
    /// [`paths::LIST_PROCESSES`]: the sandbox's background processes, running and recently
    /// finished.
    async fn list_processes(&self, id: &str) -> AgentResult<Vec<ProcessInfo>> {
        Err(no_processes(id))
    }
    /// [`paths::KILL_PROCESS`]: `signal` sent to the process (and its group) named by
    /// `selector` (a pid or a tag).
    async fn kill_process(&self, id: &str, selector: &str, signal: Signal) -> AgentResult<()> {
        let _ = (selector, signal);
        Err(no_processes(id))
    }
    /// [`paths::ATTACH_PROCESS`]: the output of the process named by `selector`, the kept
    /// part first, as exec-stream events ending with its exit.
    async fn attach_process(&self, id: &str, selector: &str) -> AgentResult<ExecSession> {
        let _ = selector;
        Err(no_processes(id))
    }

    /// [`paths::OPEN_PTY`]: a terminal session (its first frame `start` or `connect`).
    async fn open_pty(&self, id: &str) -> AgentResult<PtySession> {
        Err(AgentApiError::new(
            wrenn_types::agent::AgentErrorCode::NotFound,
            format!("sandbox {id} has no terminals on this agent"),
        ))
    }

    /// [`paths::OPEN_PORT`]: a connection to `port` of the sandbox's guest; a port with
    /// nothing listening is `port_unreachable`.
    async fn open_port(&self, id: &str, port: u16) -> AgentResult<PortStream> {
        let _ = port;
        Err(AgentApiError::new(
            wrenn_types::agent::AgentErrorCode::NotFound,
            format!("sandbox {id} has no ports on this agent"),
        ))
    }

    /// [`paths::LIST_DIR`]: the directory `req.path`, `req.depth` levels deep.
    async fn list_dir(&self, id: &str, req: &ListDirRequest) -> AgentResult<ListDirResponse>;
    /// [`paths::MAKE_DIR`]: the directory `path` with its parents; `already_exists` if
    /// something is there.
    async fn make_dir(&self, id: &str, path: &str) -> AgentResult<FileEntry>;
    /// [`paths::REMOVE_PATH`]: the file, link or directory tree at `path`.
    async fn remove_path(&self, id: &str, path: &str) -> AgentResult<()>;

    /// The template copy operations of this agent ([`paths::TEMPLATE_MANIFEST`] and the
    /// routes beside it); `None` when it does not copy templates.
    fn template_copy(&self) -> Option<&dyn TemplateCopy> {
        None
    }

    /// [`Self::read_file_body`] without the length.
    async fn read_file(&self, id: &str, path: &str) -> AgentResult<ByteStream> {
        Ok(self.read_file_body(id, path).await?.stream)
    }
}
