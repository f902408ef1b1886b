//! Sandboxes: create (a team snapshot or a base template on the least-loaded host), get,
//! list, destroy, pause, resume, exec (buffered and streamed), file transfers, and the
//! activity marks the idle reaper reads. It must not touch accounts or keys, and only reads
//! snapshot records (to create from one).

use super::{ts, App};
use crate::agent::{ByteStream, ExecSession, HostAgent};
use crate::auth;
use crate::config::limits;
use crate::error::ApiError;
use crate::metrics::SandboxOp;
use crate::placement::NoPlacement;
use crate::store::{self, SandboxRecord};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wrenn_types::agent::{codes, CreateSandbox, SandboxStatus};
use wrenn_types::api;
use wrenn_types::envd;

fn sandbox_view(s: &SandboxRecord) -> api::Sandbox {
    api::Sandbox {
        id: s.id.clone(),
        status: s.status.as_str().into(),
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

fn parse_agent_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
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
    /// runs. A request looks its sandbox up once with this and passes the record on.
    pub async fn running(&self, team_id: &str, id: &str) -> Result<SandboxRecord, ApiError> {
        let sb = self.sandbox(team_id, id).await?;
        if sb.status != SandboxStatus::Running {
            return Err(ApiError::NotRunning {
                id: sb.id,
                status: sb.status.as_str().into(),
            });
        }
        Ok(sb)
    }

    /// Marks activity (exec, stream, ping) for the idle reaper.
    async fn touch(&self, sb: &SandboxRecord) {
        if let Err(e) = self
            .store
            .touch_sandbox(&sb.team_id, &sb.id, store::now())
            .await
        {
            tracing::warn!(sandbox = %sb.id, error = %e, "recording activity failed");
        }
    }

    pub async fn create_sandbox(
        &self,
        team_id: &str,
        req: api::CreateSandboxRequest,
    ) -> Result<api::Sandbox, ApiError> {
        let vcpus = req.vcpus.unwrap_or(limits::DEFAULT_VCPUS);
        let memory_mb = req.memory_mb.unwrap_or(limits::DEFAULT_MEMORY_MB);
        let timeout_sec = req.timeout_sec.unwrap_or(0);
        if !(limits::MIN_VCPUS..=limits::MAX_VCPUS).contains(&vcpus) {
            return Err(ApiError::BadRequest(format!(
                "vcpus must be between {} and {}",
                limits::MIN_VCPUS,
                limits::MAX_VCPUS
            )));
        }
        if !(limits::MIN_MEMORY_MB..=limits::MAX_MEMORY_MB).contains(&memory_mb) {
            return Err(ApiError::BadRequest(format!(
                "memory_mb must be between {} and {}",
                limits::MIN_MEMORY_MB,
                limits::MAX_MEMORY_MB
            )));
        }
        if !(0..=limits::MAX_TIMEOUT_SEC).contains(&timeout_sec) {
            return Err(ApiError::BadRequest(format!(
                "timeout_sec must be between 0 and {}",
                limits::MAX_TIMEOUT_SEC
            )));
        }
        let template = req
            .template
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| limits::DEFAULT_TEMPLATE.into());
        if template.len() > 63 {
            return Err(ApiError::TemplateNotFound(template));
        }
        // A team snapshot first, then a base template on the least-loaded host.
        let (host_id, agent, agent_template) =
            match self.store.get_template(team_id, &template).await? {
                Some(t) => (
                    t.host_id.clone(),
                    self.hosts.agent(&t.host_id)?,
                    t.agent_name,
                ),
                None => {
                    let host = self
                        .hosts
                        .place_base(&template, memory_mb)
                        .await
                        .map_err(|e| match e {
                            NoPlacement::NoTemplate => ApiError::TemplateNotFound(template.clone()),
                            NoPlacement::NoLiveHost => ApiError::NoHost,
                        })?;
                    (host.id, host.agent, template.clone())
                }
            };
        let now = store::now();
        let mut rec = SandboxRecord {
            id: format!("sb-{}", auth::random_id(12)),
            team_id: team_id.into(),
            host_id,
            status: SandboxStatus::Pending,
            template: template.clone(),
            vcpus,
            memory_mb,
            timeout_sec,
            guest_ip: String::new(),
            host_ip: String::new(),
            created_at: now,
            started_at: None,
            last_active_at: None,
            last_updated: now,
        };
        self.store.insert_sandbox(&rec).await?;
        let started = Instant::now();
        let created = agent
            .create(&CreateSandbox {
                id: rec.id.clone(),
                template: agent_template,
                vcpus: vcpus as u32,
                memory_mb: memory_mb as u32,
            })
            .await;
        let info = match created {
            Ok(info) => {
                self.metrics.observe_create(started.elapsed());
                info
            }
            Err(e) => {
                self.metrics.operation_failed(SandboxOp::Create);
                let _ = self.store.delete_sandbox(team_id, &rec.id).await;
                return Err(match e.code() {
                    Some(codes::TEMPLATE_NOT_FOUND) => ApiError::TemplateNotFound(template),
                    _ => e.into(),
                });
            }
        };
        let now = store::now();
        rec.status = info.status;
        rec.guest_ip = info.guest_ip;
        rec.host_ip = info.host_ip;
        rec.started_at = parse_agent_time(info.started_at.as_deref()).or(Some(now));
        rec.last_active_at = Some(now);
        rec.last_updated = now;
        self.store.update_sandbox(&rec).await?;
        Ok(sandbox_view(&rec))
    }

    pub async fn get_sandbox(&self, team_id: &str, id: &str) -> Result<api::Sandbox, ApiError> {
        Ok(sandbox_view(&self.sandbox(team_id, id).await?))
    }

    pub async fn list_sandboxes(&self, team_id: &str) -> Result<Vec<api::Sandbox>, ApiError> {
        Ok(self
            .store
            .list_sandboxes(team_id)
            .await?
            .iter()
            .map(sandbox_view)
            .collect())
    }

    pub async fn destroy_sandbox(&self, team_id: &str, id: &str) -> Result<(), ApiError> {
        let sb = self.sandbox(team_id, id).await?;
        let agent = self.hosts.agent(&sb.host_id)?;
        match agent.destroy(&sb.id).await {
            Ok(()) => {}
            // Already gone on the host: forgetting the record is all that is left.
            Err(e) if e.code() == Some(codes::NOT_FOUND) => {}
            Err(e) => return Err(ApiError::Agent(e)),
        }
        self.store.delete_sandbox(team_id, id).await?;
        Ok(())
    }

    pub async fn exec(
        &self,
        team_id: &str,
        id: &str,
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
        let agent = self.hosts.agent(&sb.host_id)?;
        self.touch(&sb).await;
        let request = envd::ExecRequest {
            cmd: req.cmd.clone(),
            args: req.args,
            env: req.env,
            cwd: req.cwd,
            user: None,
            timeout_sec: Some(timeout as u64),
            max_output_bytes: None,
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
        self.touch(&sb).await;
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
        })
    }

    /// Opens a streamed exec on a sandbox found by [`App::running`] (before the WebSocket
    /// upgrade, so that 404 and 409 are plain HTTP answers).
    pub async fn open_exec_stream(&self, sb: &SandboxRecord) -> Result<ExecSession, ApiError> {
        let agent = self.hosts.agent(&sb.host_id)?;
        let session = agent.exec_stream(&sb.id).await?;
        self.touch(sb).await;
        Ok(session)
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

    pub async fn ping(&self, team_id: &str, id: &str) -> Result<(), ApiError> {
        if self.store.touch_sandbox(team_id, id, store::now()).await? {
            return Ok(());
        }
        let sb = self.sandbox(team_id, id).await?;
        Err(ApiError::NotRunning {
            id: sb.id,
            status: sb.status.as_str().into(),
        })
    }

    /// Pauses a sandbox record's VM and records it (API and reaper share this).
    pub(super) async fn pause_record(
        &self,
        mut sb: SandboxRecord,
    ) -> Result<SandboxRecord, ApiError> {
        let agent = self.hosts.agent(&sb.host_id)?;
        let info = agent.pause(&sb.id).await.inspect_err(|_| {
            self.metrics.operation_failed(SandboxOp::Pause);
        })?;
        sb.status = info.status;
        sb.host_ip = info.host_ip;
        sb.last_updated = store::now();
        self.store.update_sandbox(&sb).await?;
        Ok(sb)
    }

    pub async fn pause(&self, team_id: &str, id: &str) -> Result<api::Sandbox, ApiError> {
        let sb = self.running(team_id, id).await?;
        Ok(sandbox_view(&self.pause_record(sb).await?))
    }

    pub async fn resume(&self, team_id: &str, id: &str) -> Result<api::Sandbox, ApiError> {
        let mut sb = self.sandbox(team_id, id).await?;
        if sb.status != SandboxStatus::Paused {
            return Err(ApiError::NotPaused {
                id: sb.id,
                status: sb.status.as_str().into(),
            });
        }
        let agent = self.hosts.agent(&sb.host_id)?;
        let started = Instant::now();
        let info = match agent.resume(&sb.id).await {
            Ok(info) => {
                self.metrics.observe_resume(started.elapsed());
                info
            }
            Err(e) => {
                self.metrics.operation_failed(SandboxOp::Resume);
                return Err(e.into());
            }
        };
        let now = store::now();
        sb.status = info.status;
        sb.guest_ip = info.guest_ip;
        sb.host_ip = info.host_ip;
        sb.started_at = parse_agent_time(info.started_at.as_deref()).or(Some(now));
        sb.last_active_at = Some(now);
        sb.last_updated = now;
        self.store.update_sandbox(&sb).await?;
        Ok(sandbox_view(&sb))
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
        self.touch(sb).await;
        self.hosts.agent(&sb.host_id)
    }

    pub async fn read_file(
        &self,
        team_id: &str,
        id: &str,
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
