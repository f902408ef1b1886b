//! Sandbox life: create (a team snapshot or a base template on the least-loaded host), pause,
//! resume and destroy. Each runs to completion in a task of its own (`ops`) and follows one
//! pattern: record the intent (the create row, or a claim on the row) before the agent is
//! called; call the agent; record the result. A step that fails before the agent call undoes
//! the intent; an agent call that fails is settled from what the agent says (`settle`); a
//! failure after the agent answered leaves the intent for the reconciler, which settles it.
//! It must not touch accounts, keys or snapshots.

use super::events::{no_meta, Actor::ApiKey, Announced};
use super::ops::Ran;
use super::sandboxes::sandbox_view;
use super::settle::take_agent_state;
use super::App;
use crate::agent::HostAgent;
use crate::auth;
use crate::config::{limits, SandboxBounds};
use crate::error::ApiError;
use crate::metrics::SandboxOp;
use crate::placement::NoPlacement;
use crate::store::{self, Operation, SandboxRecord};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use wrenn_types::agent::{codes, AgentErrorCode, CreateSandbox, SandboxInfo, SandboxStatus};
use wrenn_types::api;
use wrenn_types::ids::{SandboxId, TeamId};
use wrenn_types::observe::event::{CAPSULE_CREATE, CAPSULE_DESTROY, CAPSULE_PAUSE, CAPSULE_RESUME};

/// 409 unless the sandbox runs with no operation under way.
pub(super) fn require_running(sb: &SandboxRecord) -> Result<(), ApiError> {
    if sb.intent.is_some() || sb.status != SandboxStatus::Running {
        return Err(ApiError::NotRunning {
            id: sb.id.clone(),
            status: sb.state_word().into(),
        });
    }
    Ok(())
}

/// 409 unless the sandbox is paused with no operation under way.
fn require_paused(sb: &SandboxRecord) -> Result<(), ApiError> {
    if sb.intent.is_some() || sb.status != SandboxStatus::Paused {
        return Err(ApiError::NotPaused {
            id: sb.id.clone(),
            status: sb.state_word().into(),
        });
    }
    Ok(())
}

fn check_create(
    req: &api::CreateSandboxRequest,
    b: &SandboxBounds,
) -> Result<(i64, i64, i64), ApiError> {
    let vcpus = req.vcpus.unwrap_or(limits::DEFAULT_VCPUS);
    let memory_mb = req.memory_mb.unwrap_or(limits::DEFAULT_MEMORY_MB);
    let timeout_sec = req.timeout_sec.unwrap_or(0);
    if !(limits::MIN_VCPUS..=b.max_vcpus).contains(&vcpus) {
        return Err(ApiError::BadRequest(format!(
            "vcpus must be between {} and {}",
            limits::MIN_VCPUS,
            b.max_vcpus
        )));
    }
    if !(limits::MIN_MEMORY_MB..=b.max_memory_mb).contains(&memory_mb) {
        return Err(ApiError::BadRequest(format!(
            "memory_mb must be between {} and {}",
            limits::MIN_MEMORY_MB,
            b.max_memory_mb
        )));
    }
    if !(0..=b.max_timeout_sec).contains(&timeout_sec) {
        return Err(ApiError::BadRequest(format!(
            "timeout_sec must be between 0 and {}",
            b.max_timeout_sec
        )));
    }
    Ok((vcpus, memory_mb, timeout_sec))
}

impl App {
    pub async fn create_sandbox(
        self: &Arc<Self>,
        team_id: &TeamId,
        req: api::CreateSandboxRequest,
    ) -> Result<api::Sandbox, ApiError> {
        Ok(sandbox_view(&self.create_record(team_id, req, None).await?))
    }

    /// Creates a sandbox and returns its record; `metadata` (a JSON object, for
    /// `/v1/capsules`) is stored with the row before the agent is called.
    pub(super) async fn create_record(
        self: &Arc<Self>,
        team_id: &TeamId,
        req: api::CreateSandboxRequest,
        metadata: Option<String>,
    ) -> Result<SandboxRecord, ApiError> {
        let (vcpus, memory_mb, timeout_sec) = check_create(&req, &self.cfg.sandbox_bounds)?;
        if let Some(network) = &req.network {
            network.validate().map_err(ApiError::BadRequest)?;
        }
        let template = req
            .template
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| limits::DEFAULT_TEMPLATE.into());
        if template.len() > wrenn_types::names::MAX_NAME_LEN {
            return Err(ApiError::TemplateNotFound(template));
        }
        // A team snapshot first (on a host that holds it, or copied to one that can take the
        // create), then a base template on the least-loaded host.
        let (host_id, agent, agent_template) =
            match self.store.get_template(team_id.as_str(), &template).await? {
                Some(t) => {
                    let (host_id, agent) = self.place_from_snapshot(&t, memory_mb).await?;
                    (host_id, agent, t.agent_name)
                }
                None => {
                    let host = self
                        .hosts
                        .place_base(&template, memory_mb)
                        .await
                        .map_err(|e| match e {
                            NoPlacement::NoTemplate => ApiError::TemplateNotFound(template.clone()),
                            NoPlacement::NoLiveHost => ApiError::NoHost,
                            NoPlacement::AllDraining => ApiError::NoCapacity,
                        })?;
                    (host.id, host.agent, template.clone())
                }
            };
        let now = store::now();
        let rec = SandboxRecord {
            id: format!("sb-{}", auth::random_id(12)),
            team_id: team_id.to_string(),
            host_id,
            status: SandboxStatus::Pending,
            template,
            vcpus,
            memory_mb,
            timeout_sec,
            guest_ip: String::new(),
            host_ip: String::new(),
            created_at: now,
            started_at: None,
            last_active_at: None,
            last_updated: now,
            intent: Some(self.intent(Operation::Creating)),
            version: 0,
        };
        let req = CreateSandbox {
            id: rec.id.clone(),
            template: agent_template,
            vcpus: vcpus as u32,
            memory_mb: memory_mb as u32,
            network: req.network,
        };
        let id = rec.id.clone();
        let (team, sid) = (team_id.to_string(), id.clone());
        let ran = self
            .run_op(&id, Operation::Creating, move |app| async move {
                let r = app.create_body(rec, agent, req, metadata).await;
                app.announce(
                    CAPSULE_CREATE,
                    &team,
                    ("capsule", &sid),
                    ApiKey,
                    no_meta(),
                    &r,
                );
                r
            })
            .await?;
        match ran {
            Ran::Done(rec) => Ok(rec),
            Ran::Joined => self
                .store
                .get_sandbox(team_id.as_str(), &id)
                .await?
                .ok_or(ApiError::SandboxNotFound(id)),
        }
    }

    async fn create_body(
        &self,
        mut rec: SandboxRecord,
        agent: Arc<dyn HostAgent>,
        req: CreateSandbox,
        metadata: Option<String>,
    ) -> Result<SandboxRecord, ApiError> {
        self.store
            .insert_sandbox_within(&rec, &self.cfg.quotas)
            .await?;
        if let Some(json) = metadata {
            if let Err(e) = self.store.put_sandbox_metadata(&rec.id, &json).await {
                self.undo_create(rec, agent.as_ref()).await;
                return Err(e.into());
            }
        }
        if let Err(e) = self.fail("create.before_agent").await {
            self.undo_create(rec, agent.as_ref()).await;
            return Err(e);
        }
        let started = Instant::now();
        let info = match agent.create(&req).await {
            Ok(info) => {
                self.metrics.observe_create(started.elapsed());
                info
            }
            Err(e) => {
                self.metrics.operation_failed(SandboxOp::Create);
                self.undo_create(rec.clone(), agent.as_ref()).await;
                return Err(match e.code() {
                    Some(codes::TEMPLATE_NOT_FOUND) => ApiError::TemplateNotFound(rec.template),
                    _ => e.into(),
                });
            }
        };
        // From here a failure leaves the row `creating`: the reconciler takes the agent's
        // sandbox into it.
        self.fail("create.after_agent").await?;
        take_agent_state(&mut rec, info);
        self.record(rec).await
    }

    /// Undoes a create that failed: the VM (if the agent made one) is destroyed and the row
    /// deleted; what cannot be done now stays `destroying` for the reconciler.
    async fn undo_create(&self, mut rec: SandboxRecord, agent: &dyn HostAgent) {
        rec.intent = Some(self.intent(Operation::Destroying));
        rec.last_updated = store::now();
        let undone = async {
            if !self.save(&mut rec).await? {
                return Err(ApiError::Conflict("the sandbox changed meanwhile".into()));
            }
            match agent.destroy(&rec.id).await {
                Ok(()) => {}
                Err(e) if e.code() == Some(codes::NOT_FOUND) => {}
                Err(e) => return Err(e.into()),
            }
            self.forget(&rec).await
        };
        if let Err(e) = undone.await {
            tracing::warn!(sandbox = %rec.id, error = %e,
                "undoing a failed create failed; the reconciler will finish it");
        }
    }

    pub async fn destroy_sandbox(
        self: &Arc<Self>,
        team_id: &TeamId,
        id: &SandboxId,
    ) -> Result<(), ApiError> {
        let claim = Claim {
            op: Operation::Destroying,
            allowed: |_| Ok(()),
            event: CAPSULE_DESTROY,
        };
        self.run_claimed(team_id, id, claim, |app, sb| async move {
            app.destroy_claimed(sb).await
        })
        .await?;
        Ok(())
    }

    async fn destroy_claimed(&self, sb: SandboxRecord) -> Result<(), ApiError> {
        let agent = self.claimed_agent(&sb, "destroy.before_agent").await?;
        match agent.destroy(&sb.id).await {
            Ok(()) => {}
            // Already gone on the host: forgetting the record is all that is left.
            Err(e) if e.code() == Some(codes::NOT_FOUND) => {}
            // The intent stays `destroying`: the reconciler finishes the destroy.
            Err(e) => return Err(ApiError::Agent(e)),
        }
        self.fail("destroy.after_agent").await?;
        self.forget(&sb).await
    }

    pub async fn pause(
        self: &Arc<Self>,
        team_id: &TeamId,
        id: &SandboxId,
    ) -> Result<api::Sandbox, ApiError> {
        self.change(team_id, id, Change::Pause).await
    }

    /// Pauses a sandbox whose row holds this process's `pausing` intent (the API's pause and
    /// the reaper's share this).
    pub(super) async fn pause_claimed(&self, sb: SandboxRecord) -> Result<SandboxRecord, ApiError> {
        let agent = self.claimed_agent(&sb, "pause.before_agent").await?;
        let info = match agent.pause(&sb.id).await {
            Ok(info) => info,
            Err(e) => {
                // A busy refusal (execs or transfers that did not end in time) leaves the
                // sandbox running and well: not a failed operation.
                if e.code() != Some(AgentErrorCode::Conflict) {
                    self.metrics.operation_failed(SandboxOp::Pause);
                }
                self.settle_after_failure(sb).await;
                return Err(e.into());
            }
        };
        self.record_answer(sb, info, "pause.after_agent").await
    }

    pub async fn resume(
        self: &Arc<Self>,
        team_id: &TeamId,
        id: &SandboxId,
    ) -> Result<api::Sandbox, ApiError> {
        self.change(team_id, id, Change::Resume).await
    }

    async fn resume_claimed(&self, sb: SandboxRecord) -> Result<SandboxRecord, ApiError> {
        let agent = self.claimed_agent(&sb, "resume.before_agent").await?;
        let started = Instant::now();
        let info = match agent.resume(&sb.id).await {
            Ok(info) => {
                self.metrics.observe_resume(started.elapsed());
                info
            }
            Err(e) => {
                self.metrics.operation_failed(SandboxOp::Resume);
                self.settle_after_failure(sb).await;
                return Err(e.into());
            }
        };
        self.record_answer(sb, info, "resume.after_agent").await
    }

    /// The sequence every API operation on an existing sandbox shares: one operation per
    /// sandbox in this process (`run_op`), the claim on its row (`claim.op`, when
    /// `claim.allowed`), `body` on the claimed row, and the event announcing the result.
    async fn run_claimed<T, F, Fut>(
        self: &Arc<Self>,
        team_id: &TeamId,
        id: &SandboxId,
        claim: Claim,
        body: F,
    ) -> Result<Ran<T>, ApiError>
    where
        T: Announced + Send + 'static,
        F: FnOnce(Arc<App>, SandboxRecord) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        let (team, sid) = (team_id.clone(), id.clone());
        self.run_op(id.as_str(), claim.op, move |app| async move {
            let r = match app.claim(&team, &sid, claim.op, claim.allowed).await {
                Ok(sb) => body(app.clone(), sb).await,
                Err(e) => Err(e),
            };
            let resource = ("capsule", sid.as_str());
            app.announce(claim.event, team.as_str(), resource, ApiKey, no_meta(), &r);
            r
        })
        .await
    }

    /// Pauses or resumes; the sandbox as the API shows it after: the operation's own result,
    /// or (when it joined one already under way) the row as that one left it.
    async fn change(
        self: &Arc<Self>,
        team_id: &TeamId,
        id: &SandboxId,
        change: Change,
    ) -> Result<api::Sandbox, ApiError> {
        let claim = match change {
            Change::Pause => Claim {
                op: Operation::Pausing,
                allowed: require_running,
                event: CAPSULE_PAUSE,
            },
            Change::Resume => Claim {
                op: Operation::Resuming,
                allowed: require_paused,
                event: CAPSULE_RESUME,
            },
        };
        let ran = self
            .run_claimed(team_id, id, claim, move |app, sb| async move {
                match change {
                    Change::Pause => app.pause_claimed(sb).await,
                    Change::Resume => app.resume_claimed(sb).await,
                }
            })
            .await?;
        match ran {
            Ran::Done(sb) => Ok(sandbox_view(&sb)),
            Ran::Joined => self.get_sandbox(team_id, id).await,
        }
    }

    /// The agent of a claimed sandbox's host, once the fault point `before_agent` passed; when
    /// either fails the claim is released and the sandbox stays as it was.
    async fn claimed_agent(
        &self,
        sb: &SandboxRecord,
        before_agent: &'static str,
    ) -> Result<Arc<dyn HostAgent>, ApiError> {
        let agent = async {
            let agent = self.hosts.agent(&sb.host_id)?;
            self.fail(before_agent).await?;
            Ok(agent)
        };
        match agent.await {
            Ok(agent) => Ok(agent),
            Err(e) => {
                self.release(sb.clone()).await;
                Err(e)
            }
        }
    }

    /// Records what the agent answered for a claimed sandbox (its state; the intent ends),
    /// once the fault point `after_agent` passed; a failure there leaves the intent for the
    /// reconciler.
    async fn record_answer(
        &self,
        mut sb: SandboxRecord,
        info: SandboxInfo,
        after_agent: &'static str,
    ) -> Result<SandboxRecord, ApiError> {
        self.fail(after_agent).await?;
        take_agent_state(&mut sb, info);
        self.record(sb).await
    }
}

/// The state changes the API asks for by name.
#[derive(Clone, Copy)]
enum Change {
    Pause,
    Resume,
}

/// What an operation on an existing sandbox claims its row for, when the row allows it, and
/// the event it announces.
struct Claim {
    op: Operation,
    allowed: fn(&SandboxRecord) -> Result<(), ApiError>,
    event: &'static str,
}
