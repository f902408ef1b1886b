//! Commands on capsules beyond a buffered exec: `POST /v1/capsules/{id}/exec` (foreground
//! through [`App::exec`], or started in the background), and background processes — list,
//! kill by pid or tag, attach to one's output. The processes themselves live in the guest's
//! envd (they survive a pause and resume with the VM's memory); the control plane keeps no
//! state of them, only checks the request and finds the capsule as every capsule route does
//! (team-scoped, running, no operation under way).

use super::App;
use crate::agent::ExecSession;
use crate::error::ApiError;
use crate::store::SandboxRecord;
use std::sync::Arc;
use tokio::sync::mpsc;
use wrenn_types::api;
use wrenn_types::ids::{SandboxId, TeamId};
use wrenn_types::process::{
    valid_tag, BackgroundExecResponse, CapsuleExecRequest, ProcessInfo, ProcessList, Selector,
    Signal, StartProcess, MAX_TAG_BYTES,
};
use wrenn_types::stream::ServerMessage;

/// Events in flight between an attached process and its client.
const ATTACH_CHANNEL: usize = 16;

/// What `POST /v1/capsules/{id}/exec` answers.
pub enum ExecOutcome {
    /// A foreground command's output (200).
    Finished(api::ExecResponse),
    /// A background process started (202).
    Started(BackgroundExecResponse),
}

fn selector(s: &str) -> Result<Selector, ApiError> {
    Selector::parse(s).ok_or_else(|| {
        ApiError::BadRequest(
            "a process is named by its pid or by its tag (letters, digits, . _ -)".into(),
        )
    })
}

impl App {
    /// Runs a command in the foreground (with its timeout) or starts it in the background.
    pub async fn capsule_exec(
        &self,
        team_id: &TeamId,
        id: &SandboxId,
        req: CapsuleExecRequest,
    ) -> Result<ExecOutcome, ApiError> {
        if req.background {
            return Ok(ExecOutcome::Started(
                self.start_background(team_id, id, req).await?,
            ));
        }
        let fg = api::ExecRequest {
            cmd: req.cmd,
            args: req.args,
            timeout_sec: req.timeout_sec,
            env: req.envs,
            cwd: req.cwd,
        };
        Ok(ExecOutcome::Finished(self.exec(team_id, id, fg).await?))
    }

    /// Starts `req` in the background; its tag is envd's `proc-<pid>` when none is given.
    pub async fn start_background(
        &self,
        team_id: &TeamId,
        id: &SandboxId,
        req: CapsuleExecRequest,
    ) -> Result<BackgroundExecResponse, ApiError> {
        super::sandboxes::check_command(&req.cmd, &req.args, &req.envs, req.cwd.as_deref())?;
        if req.tag.as_deref().is_some_and(|t| !valid_tag(t)) {
            return Err(ApiError::BadRequest(format!(
                "tag must be 1 to {MAX_TAG_BYTES} characters of A-Z a-z 0-9 . _ - and not all digits"
            )));
        }
        let sb = self.running(team_id, id).await?;
        let agent = self.hosts.agent(&sb.host_id)?;
        self.begin_activity(&sb).await?;
        let start = StartProcess {
            cmd: req.cmd.clone(),
            args: req.args,
            env: req.envs,
            cwd: req.cwd,
            user: None,
            tag: req.tag,
        };
        let info = agent.start_process(&sb.id, &start).await?;
        tracing::info!(sandbox = %sb.id, pid = info.pid, tag = %info.tag, "background process started");
        Ok(BackgroundExecResponse {
            sandbox_id: sb.id.clone(),
            capsule_id: sb.id,
            cmd: req.cmd,
            pid: info.pid,
            tag: info.tag,
        })
    }

    /// The capsule's running background processes.
    pub async fn list_processes(
        &self,
        team_id: &TeamId,
        id: &SandboxId,
    ) -> Result<ProcessList, ApiError> {
        let sb = self.running(team_id, id).await?;
        let agent = self.hosts.agent(&sb.host_id)?;
        let processes: Vec<ProcessInfo> = agent
            .list_processes(&sb.id)
            .await?
            .into_iter()
            .filter(|p| p.running)
            .collect();
        Ok(ProcessList { processes })
    }

    /// Sends `signal` (`SIGKILL` if absent, or `SIGTERM`) to the process named by
    /// `selector` and its process group.
    pub async fn kill_process(
        &self,
        team_id: &TeamId,
        id: &SandboxId,
        selector_text: &str,
        signal: Option<&str>,
    ) -> Result<(), ApiError> {
        let sel = selector(selector_text)?;
        let signal = match signal {
            None => Signal::default(),
            Some(s) => Signal::parse(s)
                .ok_or_else(|| ApiError::BadRequest("signal must be SIGKILL or SIGTERM".into()))?,
        };
        let sb = self.running(team_id, id).await?;
        let agent = self.hosts.agent(&sb.host_id)?;
        agent.kill_process(&sb.id, &sel.to_string(), signal).await?;
        tracing::info!(sandbox = %sb.id, process = %sel, signal = signal.as_str(), "process signalled");
        Ok(())
    }

    /// Opens an attach session to a process of a capsule found by [`App::running`] (before
    /// the WebSocket upgrade, so an unknown process is a plain 404). The session ends with an
    /// `error` event once the capsule stops running: a pause freezes the guest (and a destroy
    /// removes it), after which its events would stop without an end.
    pub async fn attach_process(
        self: &Arc<Self>,
        sb: &SandboxRecord,
        selector_text: &str,
    ) -> Result<ExecSession, ApiError> {
        let sel = selector(selector_text)?;
        let agent = self.hosts.agent(&sb.host_id)?;
        let session = agent.attach_process(&sb.id, &sel.to_string()).await?;
        Ok(ending_when_stopped(self.clone(), sb.clone(), session))
    }
}

/// `session`'s events, passed on until the capsule is found not running (checked every
/// [`App::activity_period`]); then an `error` event saying so ends it.
fn ending_when_stopped(app: Arc<App>, sb: SandboxRecord, session: ExecSession) -> ExecSession {
    let ExecSession {
        to_agent,
        mut from_agent,
    } = session;
    let (tx, rx) = mpsc::channel(ATTACH_CHANNEL);
    tokio::spawn(async move {
        let mut check = tokio::time::interval(app.activity_period(&sb));
        check.tick().await;
        loop {
            tokio::select! {
                event = from_agent.recv() => match event {
                    Some(m) => {
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                },
                _ = check.tick() => {
                    if let Err(e) = app.still_running(&sb).await {
                        let data = format!("{e}; attach again once it runs");
                        let _ = tx.send(ServerMessage::Error { data }).await;
                        return;
                    }
                }
                () = tx.closed() => return,
            }
        }
    });
    ExecSession {
        to_agent,
        from_agent: rx,
    }
}
