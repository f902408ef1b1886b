//! The real agent's side of its internal API: [`ManagerAgent`] implements
//! [`wrenn_agent_api::HostAgent`] with one [`Manager`] call per operation (exec and files go on
//! to the sandbox's envd, a port connection to the guest's address in its slot), and the one
//! mapping of the manager's and envd's errors to the agent's wire codes. Routes, auth and the
//! HTTP layer are [`wrenn_agent_api::router`]'s. No VM, network or disk work happens here.

use crate::envd_client::EnvdError;
use crate::sandbox::{Activity, Manager, SandboxError};
use async_trait::async_trait;
use futures_util::StreamExt;
use std::sync::Arc;
use wrenn_agent_api::{
    ws_session, AgentApiError, AgentResult, ByteStream, ExecSession, FileBody, HostAgent,
};
use wrenn_types::agent::{
    AgentErrorCode, CreateSandbox, HostInfo, SandboxInfo, SnapshotRequest, TemplateInfo,
};
use wrenn_types::envd::{EnvdErrorCode, ExecRequest, ExecResponse};
use wrenn_types::fs::{FileEntry, ListDirRequest, ListDirResponse};
use wrenn_types::observe::MetricPoint;
use wrenn_types::process::{ProcessInfo, Signal, StartProcess};

/// How long a connection to a guest's port may take to be accepted.
const PORT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the agent's router serves.
#[derive(Clone)]
pub struct ApiState {
    pub manager: Arc<Manager>,
    /// The bearer token every request must carry.
    pub token: Arc<String>,
}

/// The agent's router: the agent API over the sandbox manager.
pub fn router(state: ApiState) -> axum::Router {
    wrenn_agent_api::router(Arc::new(ManagerAgent(state.manager)), &state.token)
}

/// The sandbox manager as a [`HostAgent`].
pub struct ManagerAgent(pub Arc<Manager>);

#[async_trait]
impl HostAgent for ManagerAgent {
    async fn host_info(&self) -> AgentResult<HostInfo> {
        Ok(self.0.host_info().await)
    }

    async fn list_sandboxes(&self) -> AgentResult<Vec<SandboxInfo>> {
        Ok(self.0.list().await)
    }

    async fn create(&self, req: &CreateSandbox) -> AgentResult<SandboxInfo> {
        let m = &self.0;
        Ok(m.create_with_network(
            &req.id,
            &req.template,
            req.vcpus,
            req.memory_mb,
            req.network.clone(),
        )
        .await?)
    }

    async fn get_sandbox(&self, id: &str) -> AgentResult<SandboxInfo> {
        Ok(self.0.get(id).await?)
    }

    async fn destroy(&self, id: &str) -> AgentResult<()> {
        Ok(self.0.destroy(id).await?)
    }

    async fn pause(&self, id: &str) -> AgentResult<SandboxInfo> {
        Ok(self.0.pause(id).await?)
    }

    async fn resume(&self, id: &str) -> AgentResult<SandboxInfo> {
        Ok(self.0.resume(id).await?)
    }

    async fn snapshot(&self, id: &str, req: &SnapshotRequest) -> AgentResult<TemplateInfo> {
        Ok(self.0.snapshot(id, &req.name, req.overwrite).await?)
    }

    // Exec and file transfers hold the sandbox's `Activity` until they end, so a pause waits
    // for them instead of cutting them off.

    async fn exec(&self, id: &str, req: &ExecRequest) -> AgentResult<ExecResponse> {
        let (envd, _active) = self.0.envd(id).await?;
        Ok(envd.exec(req).await?)
    }

    async fn exec_stream(&self, id: &str) -> AgentResult<ExecSession> {
        let (envd, active) = self.0.envd(id).await?;
        let session = ws_session(envd.exec_stream().await?, "envd");
        Ok(held_while_open(session, active))
    }

    async fn write_file(&self, id: &str, path: &str, body: ByteStream) -> AgentResult<()> {
        let (envd, _active) = self.0.envd(id).await?;
        Ok(envd
            .write_file(path, reqwest::Body::wrap_stream(body))
            .await?)
    }

    async fn read_file_body(&self, id: &str, path: &str) -> AgentResult<FileBody> {
        let (envd, active) = self.0.envd(id).await?;
        let resp = envd.read_file(path).await?;
        let len = resp.content_length();
        // The mark goes when the body has been read or dropped.
        let stream = resp.bytes_stream().map(move |chunk| {
            let _ = &active;
            chunk
        });
        Ok(FileBody::from_stream(len, stream))
    }

    async fn list_dir(&self, id: &str, req: &ListDirRequest) -> AgentResult<ListDirResponse> {
        let (envd, _active) = self.0.envd(id).await?;
        Ok(envd.list_dir(req).await?)
    }

    async fn make_dir(&self, id: &str, path: &str) -> AgentResult<FileEntry> {
        let (envd, _active) = self.0.envd(id).await?;
        Ok(envd.make_dir(path).await?)
    }

    async fn remove_path(&self, id: &str, path: &str) -> AgentResult<()> {
        let (envd, _active) = self.0.envd(id).await?;
        Ok(envd.remove_path(path).await?)
    }

    async fn list_templates(&self) -> AgentResult<Vec<TemplateInfo>> {
        Ok(self.0.templates())
    }

    fn template_copy(&self) -> Option<&dyn wrenn_agent_api::TemplateCopy> {
        Some(self)
    }

    async fn delete_template(&self, name: &str) -> AgentResult<()> {
        Ok(self.0.delete_template(name).await?)
    }

    async fn sandbox_metrics(&self, id: &str, range_secs: u32) -> AgentResult<Vec<MetricPoint>> {
        Ok(self.0.metrics(id, range_secs).await?)
    }

    // Background processes live in envd; the agent only passes requests on.

    async fn start_process(&self, id: &str, req: &StartProcess) -> AgentResult<ProcessInfo> {
        let (envd, _active) = self.0.envd(id).await?;
        Ok(envd.start_process(req).await?)
    }

    async fn list_processes(&self, id: &str) -> AgentResult<Vec<ProcessInfo>> {
        let (envd, _active) = self.0.envd(id).await?;
        Ok(envd.list_processes().await?)
    }

    async fn kill_process(&self, id: &str, selector: &str, signal: Signal) -> AgentResult<()> {
        let (envd, _active) = self.0.envd(id).await?;
        Ok(envd.kill_process(selector, signal).await?)
    }

    async fn attach_process(&self, id: &str, selector: &str) -> AgentResult<ExecSession> {
        // Unlike an exec stream, an attached client does not hold the sandbox's activity: a
        // process may run for days, and watching it must not keep its sandbox from pausing.
        let (envd, _active) = self.0.envd(id).await?;
        Ok(ws_session(envd.attach_process(selector).await?, "envd"))
    }

    async fn open_pty(&self, id: &str) -> AgentResult<wrenn_agent_api::PtySession> {
        // Like an attached client, a terminal does not hold the sandbox's activity: it
        // survives a pause (the client connects again by its tag after the resume).
        let (envd, _active) = self.0.envd(id).await?;
        let ws = envd.open_pty().await?;
        Ok(wrenn_agent_api::ws_pty_session(ws, "envd"))
    }

    async fn open_port(&self, id: &str, port: u16) -> AgentResult<wrenn_agent_api::PortStream> {
        // A proxied connection does not hold the sandbox's activity either: a WebSocket may
        // stay open for days, and a pause freezes it with the guest.
        let addr = self.0.guest_addr(id, port).await?;
        let unreachable = |why: String| {
            AgentApiError::new(
                AgentErrorCode::PortUnreachable,
                format!("nothing accepts connections on port {port} of sandbox {id}: {why}"),
            )
        };
        match tokio::time::timeout(PORT_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
        {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(Box::new(stream))
            }
            Ok(Err(e)) => Err(unreachable(e.kind().to_string())),
            Err(_) => Err(unreachable("connect timed out".into())),
        }
    }
}

/// An exec session whose events pass through a task holding `active` until the session ends.
fn held_while_open(session: ExecSession, active: Activity) -> ExecSession {
    let ExecSession {
        to_agent,
        mut from_agent,
    } = session;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let _active = active;
        while let Some(m) = from_agent.recv().await {
            if tx.send(m).await.is_err() {
                break;
            }
        }
    });
    ExecSession {
        to_agent,
        from_agent: rx,
    }
}

impl From<SandboxError> for AgentApiError {
    fn from(e: SandboxError) -> Self {
        use SandboxError as E;
        let code = match &e {
            E::BadRequest(_) => AgentErrorCode::BadRequest,
            E::NotFound(_) => AgentErrorCode::NotFound,
            E::TemplateNotFound(_) => AgentErrorCode::TemplateNotFound,
            E::Conflict(_) => AgentErrorCode::Conflict,
            E::AlreadyExists(_) => AgentErrorCode::AlreadyExists,
            E::Capacity(_) => AgentErrorCode::Capacity,
            E::Envd(inner) => return envd_error(inner),
            E::Vm(_) | E::Net(_) | E::Disk(_) | E::Io { .. } | E::Internal(_) => {
                tracing::error!("{e}");
                AgentErrorCode::Internal
            }
        };
        AgentApiError::new(code, e.to_string())
    }
}

impl From<EnvdError> for AgentApiError {
    fn from(e: EnvdError) -> Self {
        envd_error(&e)
    }
}

/// envd's answer keeps its status when it is a client error (otherwise 502) and its meaning
/// in the agent's codes; envd out of reach is a 502 `internal`.
fn envd_error(e: &EnvdError) -> AgentApiError {
    let EnvdError::Api {
        status,
        code,
        message,
    } = e
    else {
        return AgentApiError::with_status(502, AgentErrorCode::Internal, e.to_string());
    };
    let code = match code {
        EnvdErrorCode::NotFound => AgentErrorCode::FileNotFound,
        EnvdErrorCode::AlreadyExists => AgentErrorCode::AlreadyExists,
        EnvdErrorCode::PayloadTooLarge => AgentErrorCode::TooLarge,
        EnvdErrorCode::ProcessNotFound => AgentErrorCode::ProcessNotFound,
        EnvdErrorCode::ProcessConflict => AgentErrorCode::Conflict,
        EnvdErrorCode::Internal => AgentErrorCode::Internal,
        EnvdErrorCode::BadRequest
        | EnvdErrorCode::ExecFailed
        | EnvdErrorCode::UnknownUser
        | EnvdErrorCode::IsADirectory
        | EnvdErrorCode::NotADirectory
        | EnvdErrorCode::Forbidden
        | EnvdErrorCode::UploadIncomplete
        | EnvdErrorCode::NoSpace
        | EnvdErrorCode::MethodNotAllowed
        | EnvdErrorCode::Unknown => AgentErrorCode::BadRequest,
    };
    let status = if (400..500).contains(status) {
        *status
    } else {
        502
    };
    AgentApiError::with_status(status, code, message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(e: AgentApiError) -> (u16, AgentErrorCode) {
        match e {
            AgentApiError::Api { status, code, .. } => (status, code),
            other => panic!("not an answer: {other}"),
        }
    }

    #[test]
    fn envd_not_found_maps_to_file_not_found() {
        let e = envd_error(&EnvdError::Api {
            status: 404,
            code: EnvdErrorCode::NotFound,
            message: "no such file".into(),
        });
        assert_eq!(answer(e), (404, AgentErrorCode::FileNotFound));
        let e = envd_error(&EnvdError::Protocol("x".into()));
        assert_eq!(answer(e), (502, AgentErrorCode::Internal));
    }

    #[test]
    fn envd_errors_keep_client_statuses_only() {
        use AgentErrorCode as A;
        use EnvdErrorCode as E;
        let check = |status, code, want| {
            let message = "m".to_string();
            let e = EnvdError::Api {
                status,
                code,
                message,
            };
            assert_eq!(answer(envd_error(&e)), want, "{code}");
        };
        check(403, E::Forbidden, (403, A::BadRequest));
        check(500, E::Internal, (502, A::Internal));
        check(507, E::NoSpace, (502, A::BadRequest));
        check(413, E::PayloadTooLarge, (413, A::TooLarge));
    }

    #[test]
    fn sandbox_errors_map_to_agent_codes() {
        let e = AgentApiError::from(SandboxError::Capacity("full".into()));
        assert_eq!(answer(e), (503, AgentErrorCode::Capacity));
        let e = AgentApiError::from(SandboxError::AlreadyExists("t".into()));
        assert_eq!(answer(e), (409, AgentErrorCode::AlreadyExists));
    }
}
