//! Settling: an operation that was cut short (a failed agent call, a crash, a panic) left its
//! intent on the sandbox's row; settling asks the agent what became of the sandbox and records
//! that. A create, pause or resume takes the agent's state (`error` if the agent does not
//! know the sandbox); a destroy is finished (the row goes once the agent has no VM); a
//! snapshot whose sandbox is gone is committed if the agent has the template, and its name's
//! reservation is given up otherwise. The caller holds the sandbox's turn (`ops`).

use super::App;
use crate::error::ApiError;
use crate::store::{self, Operation, SandboxRecord, SnapshotReservation, TemplateRecord};
use wrenn_types::agent::{codes, SandboxInfo, SandboxStatus, TemplateInfo};

/// What settling did.
#[derive(Debug)]
pub(super) enum Settled {
    /// The record now says what the agent says (no intent left).
    Recorded,
    /// The record is gone: the sandbox was destroyed, or became a snapshot template.
    Removed,
    /// The agent is still working on the sandbox; the intent stays.
    Pending,
}

fn parse_agent_time(s: Option<&str>) -> Option<chrono::DateTime<chrono::Utc>> {
    s.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Takes the agent's view of a sandbox into its record (status, addresses, start time).
pub(super) fn take_agent_state(sb: &mut SandboxRecord, info: SandboxInfo) {
    let now = store::now();
    let started = info.status == SandboxStatus::Running && sb.status != SandboxStatus::Running;
    sb.status = info.status;
    if !info.guest_ip.is_empty() {
        sb.guest_ip = info.guest_ip;
    }
    sb.host_ip = info.host_ip;
    if started {
        sb.started_at = parse_agent_time(info.started_at.as_deref()).or(Some(now));
        sb.last_active_at = Some(now);
    }
    sb.intent = None;
    sb.last_updated = now;
}

/// The template record of a snapshot taken under `r`.
pub(super) fn template_record(
    r: &SnapshotReservation,
    info: &TemplateInfo,
    sb: &SandboxRecord,
) -> TemplateRecord {
    TemplateRecord {
        id: format!("tpl-{}", uuid::Uuid::new_v4().simple()),
        team_id: r.team_id.clone(),
        name: r.name.clone(),
        agent_name: r.agent_name.clone(),
        host_id: r.host_id.clone(),
        vcpus: info.vcpus.map(i64::from).unwrap_or(sb.vcpus),
        memory_mb: info.memory_mb.map(i64::from).unwrap_or(sb.memory_mb),
        size_bytes: i64::try_from(info.size_bytes).unwrap_or(i64::MAX),
        created_at: store::now(),
    }
}

impl App {
    /// Settles the operation `sb`'s intent names (see the module doc). An agent that cannot
    /// be asked is an error and leaves the intent as it is.
    pub(super) async fn settle(&self, sb: SandboxRecord) -> Result<Settled, ApiError> {
        let Some(intent) = sb.intent.clone() else {
            return Ok(Settled::Recorded);
        };
        let agent = self.hosts.agent(&sb.host_id)?;
        let seen = match agent.get_sandbox(&sb.id).await {
            Ok(info) => Some(info),
            Err(e) if e.code() == Some(codes::NOT_FOUND) => None,
            Err(e) => return Err(e.into()),
        };
        tracing::info!(sandbox = %sb.id, op = intent.op.as_str(),
            agent_status = seen.as_ref().map(|i| i.status.as_str()).unwrap_or("unknown"),
            "settling an unfinished operation");
        match (intent.op, seen) {
            (Operation::Destroying, seen) => {
                if seen.is_some() {
                    match agent.destroy(&sb.id).await {
                        Ok(()) => {}
                        Err(e) if e.code() == Some(codes::NOT_FOUND) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                self.forget(&sb).await?;
                Ok(Settled::Removed)
            }
            (Operation::Snapshotting, None) => self.settle_snapshot(sb).await,
            (op, Some(info)) => {
                if info.status == SandboxStatus::Pending {
                    return Ok(Settled::Pending);
                }
                if op == Operation::Snapshotting {
                    self.release_reservation(&sb.id).await?;
                }
                let mut sb = sb;
                take_agent_state(&mut sb, info);
                self.record(sb).await?;
                Ok(Settled::Recorded)
            }
            (_, None) => {
                self.mark_lost(sb).await?;
                Ok(Settled::Recorded)
            }
        }
    }

    /// A snapshot whose sandbox the agent no longer has: committed if the agent has the
    /// template, else the sandbox is lost.
    async fn settle_snapshot(&self, sb: SandboxRecord) -> Result<Settled, ApiError> {
        let Some(r) = self.store.snapshot_reservation(&sb.id).await? else {
            self.mark_lost(sb).await?;
            return Ok(Settled::Recorded);
        };
        let agent = self.hosts.agent(&r.host_id)?;
        let made = agent
            .list_templates()
            .await?
            .into_iter()
            .find(|t| t.name == r.agent_name);
        match made {
            Some(info) => {
                let old = self
                    .store
                    .commit_snapshot(&template_record(&r, &info, &sb), &sb.id)
                    .await?;
                if let Some(old) = old {
                    self.delete_agent_template(&old.host_id, &old.agent_name)
                        .await;
                }
                Ok(Settled::Removed)
            }
            None => {
                self.store.release_snapshot(&r.team_id, &r.name).await?;
                self.mark_lost(sb).await?;
                Ok(Settled::Recorded)
            }
        }
    }

    /// The agent does not know the sandbox: it is in `error` (its record is kept).
    pub(super) async fn mark_lost(&self, mut sb: SandboxRecord) -> Result<SandboxRecord, ApiError> {
        tracing::warn!(sandbox = %sb.id, "the agent does not know the sandbox; marking it error");
        sb.status = SandboxStatus::Error;
        sb.host_ip = String::new();
        sb.intent = None;
        sb.last_updated = store::now();
        self.record(sb).await
    }

    /// Deletes the record of a destroyed sandbox and any snapshot name it held.
    pub(super) async fn forget(&self, sb: &SandboxRecord) -> Result<(), ApiError> {
        self.release_reservation(&sb.id).await?;
        if self
            .store
            .delete_sandbox(&sb.team_id, &sb.id, sb.version)
            .await?
        {
            Ok(())
        } else {
            Err(ApiError::Conflict(format!(
                "sandbox {} changed meanwhile; try again",
                sb.id
            )))
        }
    }

    /// Gives up the snapshot name a sandbox held, if any.
    pub(super) async fn release_reservation(&self, sandbox_id: &str) -> Result<(), ApiError> {
        if let Some(r) = self.store.snapshot_reservation(sandbox_id).await? {
            self.store.release_snapshot(&r.team_id, &r.name).await?;
        }
        Ok(())
    }

    /// Deletes an agent template no record names any more; a failure is left to the
    /// reconciler (which removes templates nobody references).
    pub(super) async fn delete_agent_template(&self, host_id: &str, agent_name: &str) {
        let agent = match self.hosts.agent(host_id) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "a replaced template's host is gone");
                return;
            }
        };
        match agent.delete_template(agent_name).await {
            Ok(()) => {}
            Err(e) if e.code() == Some(codes::TEMPLATE_NOT_FOUND) => {}
            Err(e) => tracing::warn!(template = %agent_name, error = %e,
                "deleting a replaced agent template failed; the reconciler will"),
        }
    }
}
