//! Sandboxes: get, list, exec (buffered and streamed), file transfers, and the activity marks
//! the idle reaper reads (their life is `lifecycle`'s). An exec or transfer starts only after
//! its activity mark is written, which needs a running sandbox with no operation under way:
//! so the reaper, whose claim needs the activity it saw, never pauses one that just started.
//! It must not touch accounts, keys or snapshots.

use super::lifecycle::require_running;
use super::{ts, App};
use crate::agent::{ByteStream, ExecSession, HostAgent};
use crate::config::limits;
use crate::error::ApiError;
use crate::store::{self, SandboxRecord};
use std::sync::Arc;
use std::time::Duration;
use wrenn_types::api;
use wrenn_types::envd;
use wrenn_types::ids::{SandboxId, TeamId};

/// The public view of a record: an operation under way shows as the nearest public status.
pub(super) fn sandbox_view(s: &SandboxRecord) -> api::Sandbox {
    api::Sandbox {
        id: s.id.clone(),
        status: s.public_status().as_str().into(),
        template: s.template.clone(),
        vcpus: s.vcpus,
        memory_mb: s.memory_mb,
        timeout_sec: s.timeout_sec,
        guest_ip: s.guest_ip.clone(),
        host_ip: s.host_ip.clone(),
        created_at: ts(s.created_at),
        started_at: s.started_at.map(ts),
        last_active_at: s.last_active_at.map(ts),
        last_updated: ts(s.last_updated),
    }
}

fn check_path(path: &str) -> Result<(), ApiError> {
    if !path.starts_with('/') {
        return Err(ApiError::BadRequest("path must be absolute".into()));
    }
    if path.len() > limits::MAX_PATH_BYTES || path.contains('\0') {
        return Err(ApiError::BadRequest("path too long or invalid".into()));
    }
    Ok(())
}

impl App {
    async fn sandbox(&self, team_id: &str, id: &str) -> Result<SandboxRecord, ApiError> {
        self.store
            .get_sandbox(team_id, id)
            .await?
            .ok_or_else(|| ApiError::SandboxNotFound(id.into()))
    }

    /// The team's sandbox, if it is running: 404 unless the team has it, 409 unless it
    /// runs with no operation under way (an abandoned one is settled first). A request looks
    /// its sandbox up once with this and passes the record on.
    pub async fn running(
        &self,
        team_id: &TeamId,
        id: &SandboxId,
    ) -> Result<SandboxRecord, ApiError> {
        self.running_record(team_id.as_str(), id.as_str()).await
    }

    /// [`Self::running`] again for a sandbox a long request (a stream, a proxied connection)
    /// holds: 404 once it is gone, 409 once it stopped running or an operation began.
    pub async fn still_running(&self, sb: &SandboxRecord) -> Result<SandboxRecord, ApiError> {
        self.running_record(&sb.team_id, &sb.id).await
    }

    pub(super) async fn running_record(
        &self,
        team_id: &str,
        id: &str,
    ) -> Result<SandboxRecord, ApiError> {
        let sb = self.sandbox(team_id, id).await?;
        let sb = self.settle_if_abandoned(sb).await?;
        require_running(&sb)?;
        Ok(sb)
    }

    /// Marks the start of an exec, stream or transfer for the idle reaper; 409 if the sandbox
    /// stopped running (or an operation began) since it was looked up.
    pub(super) async fn begin_activity(&self, sb: &SandboxRecord) -> Result<(), ApiError> {
        for _ in 0..2 {
            if self
                .store
                .touch_sandbox(&sb.team_id, &sb.id, store::now())
                .await?
            {
                return Ok(());
            }
            require_running(&self.sandbox(&sb.team_id, &sb.id).await?)?;
        }
        Err(ApiError::NotRunning {
            id: sb.id.clone(),
            status: "changing".into(),
        })
    }

    /// [`App::touch`] in a task of its own: nothing waits for it.
    fn touch_later(&self, sb: &SandboxRecord) {
        let (store, team, id) = (self.store.clone(), sb.team_id.clone(), sb.id.clone());
        tokio::spawn(async move {
            if let Err(e) = store.touch_sandbox(&team, &id, store::now()).await {
                tracing::warn!(sandbox = %id, error = %e, "recording activity failed");
            }
        });
    }

    /// Marks activity while an exec or stream runs, and at its end.
    async fn touch(&self, sb: &SandboxRecord) {
        if let Err(e) = self
            .store
            .touch_sandbox(&sb.team_id, &sb.id, store::now())
            .await
        {
            tracing::warn!(sandbox = %sb.id, error = %e, "recording activity failed");
        }
    }

    pub async fn get_sandbox(
        &self,
        team_id: &TeamId,
        id: &SandboxId,
    ) -> Result<api::Sandbox, ApiError> {
        let rec = self.sandbox(team_id.as_str(), id.as_str()).await?;
        Ok(self.shown(&rec, sandbox_view(&rec)))
    }

    pub async fn list_sandboxes(&self, team_id: &TeamId) -> Result<Vec<api::Sandbox>, ApiError> {
        Ok(self
            .store
            .list_sandboxes(team_id.as_str())
            .await?
            .iter()
            .map(|r| self.shown(r, sandbox_view(r)))
            .collect())
    }

    pub async fn exec(
        &self,
        team_id: &TeamId,
        id: &SandboxId,
        req: api::ExecRequest,
    ) -> Result<api::ExecResponse, ApiError> {
        let timeout = req.timeout_sec.unwrap_or(limits::DEFAULT_EXEC_TIMEOUT_SEC);
        if !(1..=limits::MAX_EXEC_TIMEOUT_SEC).contains(&timeout) {
            return Err(ApiError::BadRequest(format!(
                "timeout_sec must be between 1 and {}",
                limits::MAX_EXEC_TIMEOUT_SEC
            )));
        }
        check_command(&req.cmd, &req.args, &req.env, req.cwd.as_deref())?;
        let sb = self.running(team_id, id).await?;
        let _slot = self.exec_slot(&sb)?;
        let agent = self.hosts.agent(&sb.host_id)?;
        self.begin_activity(&sb).await?;
        let request = envd::ExecRequest {
            cmd: req.cmd.clone(),
            args: req.args,
            env: req.env,
            cwd: req.cwd,
            user: None,
            timeout_sec: Some(timeout as u64),
            // envd keeps this much of each stream and discards the rest, so no more than
            // this ever crosses the hops.
            max_output_bytes: Some(self.cfg.exec_limits.max_output_bytes),
        };
        // A command that is still running is activity: the idle reaper must not pause the
        // sandbox under it (which would cut the exec off with an agent error).
        let out = {
            let run = agent.exec(&sb.id, &request);
            tokio::pin!(run);
            let mut keepalive = tokio::time::interval(self.activity_period(&sb));
            keepalive.tick().await;
            loop {
                tokio::select! {
                    out = &mut run => break out?,
                    _ = keepalive.tick() => self.touch(&sb).await,
                }
            }
        };
        // The exec's end is activity too, recorded without holding up its answer (a
        // database commit, with an fsync, per exec).
        self.touch_later(&sb);
        Ok(api::ExecResponse {
            sandbox_id: sb.id,
            cmd: req.cmd,
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
            duration_ms: out.duration_ms,
            encoding: match out.encoding {
                envd::Encoding::Utf8 => "utf-8".into(),
                envd::Encoding::Base64 => "base64".into(),
            },
            // An agent of an older build reports only `truncated`: read as stdout's.
            stdout_truncated: out.stdout_truncated || (out.truncated && !out.stderr_truncated),
            stderr_truncated: out.stderr_truncated,
            stdout_bytes: out.stdout_bytes,
            stderr_bytes: out.stderr_bytes,
        })
    }

    /// Takes one of the execs and streams a sandbox and its team may run at once
    /// ([`crate::config::ExecLimits`]); `429 quota_exceeded` when either runs its limit. The
    /// slot is given back when the returned guard is dropped.
    pub(crate) fn exec_slot(&self, sb: &SandboxRecord) -> Result<super::ExecSlot, ApiError> {
        let l = &self.cfg.exec_limits;
        self.exec_slots
            .take(&sb.team_id, &sb.id, l.per_sandbox, l.per_team)
    }

    /// Opens a streamed exec on a sandbox found by [`App::running`] (before the WebSocket
    /// upgrade, so that 404 and 409 are plain HTTP answers).
    pub async fn open_exec_stream(&self, sb: &SandboxRecord) -> Result<ExecSession, ApiError> {
        let agent = self.hosts.agent(&sb.host_id)?;
        self.begin_activity(sb).await?;
        Ok(agent.exec_stream(&sb.id).await?)
    }

    /// Marks activity of a streamed exec: every [`App::activity_period`] while it runs, and
    /// when it ends.
    pub async fn stream_activity(&self, sb: &SandboxRecord) {
        self.touch(sb).await;
    }

    /// How often a long operation (an exec, a streamed exec) marks its sandbox active: well
    /// within the sandbox's idle timeout, so the idle reaper never pauses it underneath.
    pub fn activity_period(&self, sb: &SandboxRecord) -> Duration {
        Duration::from_millis((sb.timeout_sec.max(1) as u64 * 1000 / 2).clamp(500, 5000))
    }

    pub async fn ping(&self, team_id: &TeamId, id: &SandboxId) -> Result<(), ApiError> {
        if self
            .store
            .touch_sandbox(team_id.as_str(), id.as_str(), store::now())
            .await?
        {
            return Ok(());
        }
        let sb = self.sandbox(team_id.as_str(), id.as_str()).await?;
        Err(ApiError::NotRunning {
            id: sb.id.clone(),
            status: sb.state_word().into(),
        })
    }

    /// Checks that a file operation on a sandbox found by [`App::running`] may proceed and
    /// counts it as activity (so the idle reaper does not pause a sandbox a user is moving
    /// files in or out of); returns its host agent.
    pub async fn file_target(
        &self,
        sb: &SandboxRecord,
        path: &str,
    ) -> Result<Arc<dyn HostAgent>, ApiError> {
        check_path(path)?;
        self.file_agent(sb).await
    }

    /// Counts a file operation as activity; returns the sandbox's host agent.
    async fn file_agent(&self, sb: &SandboxRecord) -> Result<Arc<dyn HostAgent>, ApiError> {
        let agent = self.hosts.agent(&sb.host_id)?;
        self.begin_activity(sb).await?;
        Ok(agent)
    }

    pub async fn read_file(
        &self,
        team_id: &TeamId,
        id: &SandboxId,
        path: &str,
    ) -> Result<ByteStream, ApiError> {
        check_path(path)?;
        let sb = self.running(team_id, id).await?;
        let agent = self.file_agent(&sb).await?;
        Ok(agent.read_file(&sb.id, path).await?)
    }
}

/// Limits on a command to run.
pub fn check_command(
    cmd: &str,
    args: &[String],
    env: &std::collections::BTreeMap<String, String>,
    cwd: Option<&str>,
) -> Result<(), ApiError> {
    if cmd.is_empty() {
        return Err(ApiError::BadRequest("cmd must not be empty".into()));
    }
    let too_big = cmd.len() > limits::MAX_ARG_BYTES
        || args.len() > limits::MAX_ARGS
        || args.iter().any(|a| a.len() > limits::MAX_ARG_BYTES)
        || env.len() > limits::MAX_ENV_VARS
        || env
            .iter()
            .any(|(k, v)| k.is_empty() || k.contains('=') || v.len() > limits::MAX_ARG_BYTES)
        || cwd.is_some_and(|c| c.len() > limits::MAX_PATH_BYTES);
    if too_big {
        return Err(ApiError::BadRequest(
            "command, arguments, env or cwd too large or invalid".into(),
        ));
    }
    Ok(())
}
