//! [`App`], the control plane's domain layer: accounts, API keys, sandboxes, exec, files,
//! snapshots and the idle reaper's pass. Each public method is one operation of the public
//! API, scoped to a team, returning [`ApiError`]. It calls the store and host agents; it
//! knows nothing of HTTP requests, headers or JSON extraction (that is `api`).

use crate::agent::{ByteStream, ExecSession};
use crate::auth::{self, Claims, JwtKeys};
use crate::config::{limits, ServerConfig};
use crate::error::ApiError;
use crate::hosts::Hosts;
use crate::metrics::{Metrics, SandboxOp};
use crate::store::{
    self, ApiKeyRecord, NewAccount, SandboxRecord, Store, StoreError, TemplateRecord,
};
use chrono::{DateTime, SecondsFormat, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use wrenn_types::agent::{codes, CreateSandbox, SandboxStatus, SnapshotRequest};
use wrenn_types::api;
use wrenn_types::envd;

/// `last_used` of an API key is written at most this often per key.
const KEY_TOUCH_INTERVAL: Duration = Duration::from_secs(5);

/// The shared state behind every request.
pub struct App {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) hosts: Hosts,
    pub(crate) cfg: ServerConfig,
    /// OAuth providers and the signed-state machinery (`auth::oauth`).
    pub(crate) oauth: crate::auth::oauth::OAuth,
    /// Counters and histograms served at `/metrics`.
    pub(crate) metrics: Metrics,
    jwt: JwtKeys,
    key_touches: Mutex<HashMap<String, Instant>>,
}

/// RFC 3339 with milliseconds, UTC, as every timestamp of the public API.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

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

fn key_view(k: &ApiKeyRecord, plaintext: Option<String>) -> api::ApiKeyResponse {
    api::ApiKeyResponse {
        id: k.id.clone(),
        team_id: k.team_id.clone(),
        name: k.name.clone(),
        key_prefix: k.key_prefix.clone(),
        created_at: ts(k.created_at),
        last_used: k.last_used.map(ts),
        key: plaintext,
    }
}

fn template_view(t: &TemplateRecord) -> api::Template {
    api::Template {
        name: t.name.clone(),
        kind: "snapshot".into(),
        vcpus: Some(t.vcpus),
        memory_mb: Some(t.memory_mb),
        size_bytes: t.size_bytes,
        created_at: ts(t.created_at),
    }
}

fn parse_agent_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Normalises and checks an email: trimmed, lowercase, one `@`, a dotted domain.
fn normalize_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let bad = || ApiError::BadRequest("invalid email address".into());
    if email.is_empty() || email.len() > limits::MAX_EMAIL {
        return Err(bad());
    }
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    let ok = !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && domain.split('.').all(|p| !p.is_empty())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(email)
    } else {
        Err(bad())
    }
}

/// Snapshot names: `[a-z0-9][a-z0-9._-]{0,62}`.
pub fn valid_template_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

/// A hash that no password matches, so unknown emails cost as much as wrong passwords.
fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| auth::hash_password("wrenn-timing-equaliser").unwrap_or_default())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("worker failed: {e}")))
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
    pub(crate) fn new(
        store: Arc<dyn Store>,
        cfg: ServerConfig,
        oauth: crate::auth::oauth::OAuth,
    ) -> Self {
        Self {
            hosts: Hosts::new(store.clone()),
            oauth,
            jwt: JwtKeys::new(&cfg.jwt_secret),
            store,
            cfg,
            key_touches: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
        }
    }

    // ----- accounts -----

    pub(crate) fn auth_response(
        &self,
        user_id: &str,
        team_id: &str,
        email: &str,
    ) -> Result<api::AuthResponse, ApiError> {
        let token = self
            .jwt
            .issue(user_id, team_id, email)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(api::AuthResponse {
            token,
            user_id: user_id.into(),
            team_id: team_id.into(),
            email: email.into(),
        })
    }

    /// Creates a user and their team; returns a session.
    pub async fn signup(&self, req: api::SignupRequest) -> Result<api::AuthResponse, ApiError> {
        let email = normalize_email(&req.email)?;
        let n = req.password.chars().count();
        if n < limits::MIN_PASSWORD {
            return Err(ApiError::BadRequest(format!(
                "password must be at least {} characters",
                limits::MIN_PASSWORD
            )));
        }
        if req.password.len() > limits::MAX_PASSWORD {
            return Err(ApiError::BadRequest(format!(
                "password must be at most {} bytes",
                limits::MAX_PASSWORD
            )));
        }
        if self.store.user_by_email(&email).await?.is_some() {
            return Err(ApiError::EmailTaken);
        }
        let password = req.password;
        let hash = blocking(move || auth::hash_password(&password))
            .await?
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let account = NewAccount {
            user_id: format!("usr-{}", uuid::Uuid::new_v4().simple()),
            team_id: format!("team-{}", uuid::Uuid::new_v4().simple()),
            team_name: format!("{email}'s team"),
            email: email.clone(),
            password_hash: Some(hash),
            created_at: store::now(),
        };
        match self.store.create_account(&account).await {
            Ok(()) => {}
            Err(StoreError::Duplicate) => return Err(ApiError::EmailTaken),
            Err(e) => return Err(e.into()),
        }
        self.auth_response(&account.user_id, &account.team_id, &email)
    }

    /// Checks email and password; returns a session.
    pub async fn login(&self, req: api::LoginRequest) -> Result<api::AuthResponse, ApiError> {
        let email = req.email.trim().to_lowercase();
        if email.len() > limits::MAX_EMAIL || req.password.len() > limits::MAX_PASSWORD {
            return Err(ApiError::InvalidCredentials);
        }
        let user = self.store.user_by_email(&email).await?;
        let hash = user
            .as_ref()
            .and_then(|u| u.password_hash.clone())
            .unwrap_or_else(|| dummy_hash().to_string());
        let password = req.password;
        let ok = blocking(move || auth::verify_password(&password, &hash)).await?;
        match user {
            Some(u) if ok && u.password_hash.is_some() => {
                self.auth_response(&u.id, &u.team_id, &u.email)
            }
            _ => Err(ApiError::InvalidCredentials),
        }
    }

    /// Checks a session token.
    pub fn verify_jwt(&self, token: &str) -> Result<Claims, ApiError> {
        self.jwt
            .verify(token)
            .map_err(|_| ApiError::Unauthorized("invalid or expired token".into()))
    }

    /// Checks an API key; returns the team it belongs to. Records `last_used` in the
    /// background, at most every few seconds per key.
    pub async fn verify_api_key(self: &Arc<Self>, key: &str) -> Result<String, ApiError> {
        let invalid = || ApiError::Unauthorized("invalid API key".into());
        if !key.starts_with(auth::API_KEY_PREFIX) || key.len() > 128 {
            return Err(invalid());
        }
        let rec = self
            .store
            .api_key_by_hash(&auth::hash_api_key(key))
            .await?
            .ok_or_else(invalid)?;
        let due = {
            let mut touches = self.key_touches.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            match touches.get(&rec.id) {
                Some(t) if now.duration_since(*t) < KEY_TOUCH_INTERVAL => false,
                _ => {
                    touches.insert(rec.id.clone(), now);
                    true
                }
            }
        };
        if due {
            let app = self.clone();
            let id = rec.id.clone();
            tokio::spawn(async move {
                if let Err(e) = app.store.touch_api_key(&id, store::now()).await {
                    tracing::warn!(error = %e, "recording API key use failed");
                }
            });
        }
        Ok(rec.team_id)
    }

    // ----- API keys -----

    pub async fn create_api_key(
        &self,
        claims: &Claims,
        req: api::CreateApiKeyRequest,
    ) -> Result<api::ApiKeyResponse, ApiError> {
        let name = req
            .name
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "Unnamed API Key".into());
        if name.chars().count() > limits::MAX_KEY_NAME {
            return Err(ApiError::BadRequest(format!(
                "name must be at most {} characters",
                limits::MAX_KEY_NAME
            )));
        }
        let key = auth::generate_api_key();
        let rec = ApiKeyRecord {
            id: format!("key-{}", uuid::Uuid::new_v4().simple()),
            team_id: claims.team_id.clone(),
            name,
            key_hash: key.hash,
            key_prefix: key.prefix,
            created_by: Some(claims.sub.clone()),
            created_at: store::now(),
            last_used: None,
        };
        self.store.insert_api_key(&rec).await?;
        Ok(key_view(&rec, Some(key.plaintext)))
    }

    pub async fn list_api_keys(&self, team_id: &str) -> Result<Vec<api::ApiKeyResponse>, ApiError> {
        Ok(self
            .store
            .list_api_keys(team_id)
            .await?
            .iter()
            .map(|k| key_view(k, None))
            .collect())
    }

    pub async fn delete_api_key(&self, team_id: &str, id: &str) -> Result<(), ApiError> {
        if self.store.delete_api_key(team_id, id).await? {
            Ok(())
        } else {
            Err(ApiError::ApiKeyNotFound(id.into()))
        }
    }

    // ----- sandboxes -----

    async fn sandbox(&self, team_id: &str, id: &str) -> Result<SandboxRecord, ApiError> {
        self.store
            .get_sandbox(team_id, id)
            .await?
            .ok_or_else(|| ApiError::SandboxNotFound(id.into()))
    }

    async fn running(&self, team_id: &str, id: &str) -> Result<SandboxRecord, ApiError> {
        let sb = self.sandbox(team_id, id).await?;
        if sb.status != SandboxStatus::Running {
            return Err(ApiError::NotRunning {
                id: sb.id,
                status: sb.status.as_str().into(),
            });
        }
        Ok(sb)
    }

    /// 404 unless the team has the sandbox, 409 unless it is running.
    pub async fn require_running(&self, team_id: &str, id: &str) -> Result<(), ApiError> {
        self.running(team_id, id).await.map(|_| ())
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
                            crate::hosts::NoPlacement::NoTemplate => {
                                ApiError::TemplateNotFound(template.clone())
                            }
                            crate::hosts::NoPlacement::NoLiveHost => ApiError::NoHost,
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
                self.metrics.sandbox_create.observe(started.elapsed());
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
            let mut keepalive = tokio::time::interval(activity_interval(sb.timeout_sec));
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

    /// Opens a streamed exec on a running sandbox (before the WebSocket upgrade, so that
    /// 404 and 409 are plain HTTP answers). Returns the session and the sandbox record.
    pub async fn open_exec_stream(
        &self,
        team_id: &str,
        id: &str,
    ) -> Result<(ExecSession, SandboxRecord), ApiError> {
        let sb = self.running(team_id, id).await?;
        let agent = self.hosts.agent(&sb.host_id)?;
        let session = agent.exec_stream(&sb.id).await?;
        self.touch(&sb).await;
        Ok((session, sb))
    }

    /// Marks activity of a streamed exec (called when it ends as well).
    pub async fn stream_activity(&self, sb: &SandboxRecord) {
        self.touch(sb).await;
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
    async fn pause_record(&self, mut sb: SandboxRecord) -> Result<SandboxRecord, ApiError> {
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
                self.metrics.sandbox_resume.observe(started.elapsed());
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

    /// Checks that a file operation may proceed and counts it as activity (so the idle reaper
    /// does not pause a sandbox a user is moving files in or out of); returns its host agent.
    pub async fn file_target(
        &self,
        team_id: &str,
        id: &str,
        path: &str,
    ) -> Result<Arc<dyn crate::agent::HostAgent>, ApiError> {
        check_path(path)?;
        let sb = self.running(team_id, id).await?;
        self.touch(&sb).await;
        self.hosts.agent(&sb.host_id)
    }

    pub async fn read_file(
        &self,
        team_id: &str,
        id: &str,
        path: &str,
    ) -> Result<ByteStream, ApiError> {
        let agent = self.file_target(team_id, id, path).await?;
        Ok(agent.read_file(id, path).await?)
    }

    // ----- snapshots -----

    pub async fn create_snapshot(
        &self,
        team_id: &str,
        req: api::CreateSnapshotRequest,
        overwrite: bool,
    ) -> Result<api::Template, ApiError> {
        let name = match req.name.filter(|n| !n.is_empty()) {
            Some(n) => n,
            None => format!("snap-{}", auth::random_id(10)),
        };
        if !valid_template_name(&name) {
            return Err(ApiError::BadRequest(
                "snapshot name must match [a-z0-9][a-z0-9._-]{0,62}".into(),
            ));
        }
        if self.hosts.is_base_template(&name).await {
            return Err(ApiError::ReservedName(name));
        }
        if !overwrite && self.store.get_template(team_id, &name).await?.is_some() {
            return Err(ApiError::SnapshotExists(name));
        }
        let sb = self.running(team_id, &req.sandbox_id).await?;
        let agent = self.hosts.agent(&sb.host_id)?;
        let team_short: String = team_id
            .trim_start_matches("team-")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(8)
            .collect::<String>()
            .to_lowercase();
        let agent_name = format!("t-{team_short}-{}", auth::random_id(12));
        let info = agent
            .snapshot(
                &sb.id,
                &SnapshotRequest {
                    name: agent_name.clone(),
                    overwrite: false,
                },
            )
            .await?;
        let rec = TemplateRecord {
            id: format!("tpl-{}", uuid::Uuid::new_v4().simple()),
            team_id: team_id.into(),
            name: name.clone(),
            agent_name: agent_name.clone(),
            host_id: sb.host_id.clone(),
            vcpus: info.vcpus.map(i64::from).unwrap_or(sb.vcpus),
            memory_mb: info.memory_mb.map(i64::from).unwrap_or(sb.memory_mb),
            size_bytes: info.size_bytes as i64,
            created_at: store::now(),
        };
        match self.store.commit_snapshot(&rec, &sb.id, overwrite).await {
            Ok(Some(old)) => {
                // The agent keeps the files alive for sandboxes still using the old one.
                match self.hosts.agent(&old.host_id) {
                    Ok(a) => {
                        if let Err(e) = a.delete_template(&old.agent_name).await {
                            tracing::warn!(template = %old.agent_name, error = %e,
                                "deleting replaced agent template failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "replaced template's host is gone"),
                }
            }
            Ok(None) => {}
            Err(StoreError::Duplicate) => {
                // Another request took the name meanwhile.
                let _ = agent.delete_template(&agent_name).await;
                return Err(ApiError::SnapshotExists(name));
            }
            Err(e) => {
                let _ = agent.delete_template(&agent_name).await;
                return Err(e.into());
            }
        }
        Ok(template_view(&rec))
    }

    pub async fn list_templates(
        &self,
        team_id: &str,
        kind: Option<&str>,
    ) -> Result<Vec<api::Template>, ApiError> {
        let (base, snap) = match kind {
            None => (true, true),
            Some("base") => (true, false),
            Some("snapshot") => (false, true),
            Some(_) => return Err(ApiError::BadRequest("type must be base or snapshot".into())),
        };
        let mut out = Vec::new();
        if base {
            for t in self.hosts.base_templates().await {
                out.push(api::Template {
                    name: t.name,
                    kind: "base".into(),
                    vcpus: None,
                    memory_mb: None,
                    size_bytes: t.size_bytes as i64,
                    created_at: t.created_at,
                });
            }
        }
        if snap {
            out.extend(
                self.store
                    .list_templates(team_id)
                    .await?
                    .iter()
                    .map(template_view),
            );
        }
        Ok(out)
    }

    pub async fn delete_template(&self, team_id: &str, name: &str) -> Result<(), ApiError> {
        let t = self
            .store
            .get_template(team_id, name)
            .await?
            .ok_or_else(|| ApiError::TemplateNotFound(name.into()))?;
        let agent = self.hosts.agent(&t.host_id)?;
        match agent.delete_template(&t.agent_name).await {
            Ok(()) => {}
            Err(e) if e.code() == Some(codes::TEMPLATE_NOT_FOUND) => {}
            Err(e) => return Err(ApiError::Agent(e)),
        }
        self.store.delete_template(team_id, name).await?;
        Ok(())
    }

    // ----- reaper -----

    /// One pass of the idle reaper: pauses every running sandbox whose `timeout_sec` has
    /// passed since its last activity. Returns the ids it paused.
    pub async fn reap_idle(&self) -> Result<Vec<String>, ApiError> {
        let now = store::now();
        let mut paused = Vec::new();
        for sb in self.store.list_running_with_timeout().await? {
            let last = sb.last_active_at.unwrap_or(sb.created_at);
            if last + chrono::Duration::seconds(sb.timeout_sec) > now {
                continue;
            }
            let id = sb.id.clone();
            match self.pause_record(sb).await {
                Ok(_) => paused.push(id),
                Err(e) => tracing::warn!(sandbox = %id, error = %e, "auto-pause failed"),
            }
        }
        Ok(paused)
    }
}

/// How often a long operation marks its sandbox active: well within its idle timeout.
fn activity_interval(timeout_sec: i64) -> Duration {
    Duration::from_millis((timeout_sec.max(1) as u64 * 1000 / 2).clamp(500, 5000))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_rules() {
        assert_eq!(
            normalize_email(" Bob@Example.COM ").unwrap(),
            "bob@example.com"
        );
        for bad in [
            "",
            "bob",
            "bob@",
            "@x.com",
            "bob@x",
            "a@b@c.com",
            "a b@c.com",
            "a@b..com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn template_name_rules() {
        for ok in ["a", "py3", "my-snap.v2_x", &"a".repeat(63)] {
            assert!(valid_template_name(ok), "{ok:?} refused");
        }
        for bad in ["", "-a", ".a", "A", "a/b", "a b", &"a".repeat(64), "é"] {
            assert!(!valid_template_name(bad), "{bad:?} accepted");
        }
    }
}
