//! Snapshots: turn a running sandbox into a team's named snapshot template (the agent's
//! name stays opaque and unique), list base and snapshot templates, delete a snapshot. A
//! snapshot runs to completion like the other lifecycle operations (`ops`): the sandbox is
//! claimed (`snapshotting`) and the name reserved in the database before the agent is called,
//! and the template, the sandbox's removal and the reservation's end are one transaction
//! after. It must not touch accounts, keys or sandboxes other than the one being snapshotted.

use super::capsules::require_running_or_paused;
use super::events::{no_meta, Actor::ApiKey};
use super::lifecycle::require_running;
use super::ops::Ran;
use super::settle::template_record;
use super::{ts, App};
use crate::auth;
use crate::error::ApiError;
use crate::store::{
    self, Operation, SandboxRecord, SnapshotReservation, StoreError, TemplateRecord,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use wrenn_types::agent::{codes, SnapshotRequest};
use wrenn_types::api;
use wrenn_types::ids::{SandboxId, TeamId, TemplateName};
use wrenn_types::observe::event::{SNAPSHOT_CREATE, SNAPSHOT_DELETE};

fn template_view(t: &TemplateRecord) -> api::Template {
    api::Template {
        name: t.name.clone(),
        kind: "snapshot".into(),
        vcpus: Some(t.vcpus),
        memory_mb: Some(t.memory_mb),
        size_bytes: t.size_bytes,
        created_at: ts(t.created_at),
        platform: false,
        protected: false,
    }
}

/// The agent's name for a new snapshot of a team: opaque and unique.
fn agent_template_name(team_id: &str) -> String {
    let team_short: String = team_id
        .trim_start_matches("team-")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect::<String>()
        .to_lowercase();
    format!("t-{team_short}-{}", auth::random_id(12))
}

/// Snapshot names: the one rule of `wrenn_types::names` (`[a-z0-9][a-z0-9._-]{0,62}`).
pub fn valid_template_name(name: &str) -> bool {
    wrenn_types::names::valid_name(name)
}

impl App {
    pub async fn create_snapshot(
        self: &Arc<Self>,
        team_id: &TeamId,
        req: api::CreateSnapshotRequest,
        overwrite: bool,
    ) -> Result<api::Template, ApiError> {
        let name = match req.name.filter(|n| !n.is_empty()) {
            Some(n) => n,
            None => format!("snap-{}", auth::random_id(10)),
        };
        let name = TemplateName::new(name).map_err(|_| {
            ApiError::BadRequest("snapshot name must match [a-z0-9][a-z0-9._-]{0,62}".into())
        })?;
        if self.hosts.is_base_template(name.as_str()).await {
            return Err(ApiError::ReservedName(name.into_string()));
        }
        if !overwrite
            && self
                .store
                .get_template(team_id.as_str(), name.as_str())
                .await?
                .is_some()
        {
            return Err(ApiError::SnapshotExists(name.into_string()));
        }
        // A sandbox id that breaks the naming rule names no sandbox: 404, as an unknown one.
        let sid = SandboxId::new(req.sandbox_id).map_err(|e| ApiError::SandboxNotFound(e.0))?;
        let (team, key) = (team_id.clone(), sid.clone());
        let ran = self
            .run_op(
                key.as_str(),
                Operation::Snapshotting,
                move |app| async move {
                    let tname = name.to_string();
                    let r = app.snapshot_body(&team, &sid, name, overwrite).await;
                    let meta = BTreeMap::from([("sandbox_id".to_string(), sid.to_string())]);
                    app.announce(
                        SNAPSHOT_CREATE,
                        team.as_str(),
                        ("template", &tname),
                        ApiKey,
                        meta,
                        &r,
                    );
                    r
                },
            )
            .await?;
        match ran {
            Ran::Done(t) => Ok(template_view(&t)),
            Ran::Joined => Err(ApiError::Internal("a snapshot joined another".into())),
        }
    }

    /// Claims the sandbox, reserves the name, has the agent take the snapshot, records it.
    async fn snapshot_body(
        &self,
        team_id: &TeamId,
        sandbox_id: &SandboxId,
        name: TemplateName,
        overwrite: bool,
    ) -> Result<TemplateRecord, ApiError> {
        // A capsule may be snapshotted paused too (the SDK's rule); a sandbox of the seed
        // API only running, as that spec says.
        let paused_too = self.is_capsule(team_id, sandbox_id).await?;
        let sb = self
            .claim(team_id, sandbox_id, Operation::Snapshotting, |sb| {
                if paused_too {
                    require_running_or_paused(sb)
                } else {
                    require_running(sb)
                }
            })
            .await?;
        let r = SnapshotReservation {
            team_id: team_id.to_string(),
            name: name.into_string(),
            agent_name: agent_template_name(team_id.as_str()),
            sandbox_id: sb.id.clone(),
            host_id: sb.host_id.clone(),
            overwrite,
            created_at: store::now(),
        };
        // The name is held before the agent is called: of two snapshots racing for one name,
        // the second is refused here, before its sandbox is touched.
        let reserved = self
            .store
            .reserve_snapshot_within(&r, self.cfg.quotas.templates)
            .await;
        if let Err(e) = reserved {
            self.release(sb).await;
            return Err(match e {
                StoreError::Duplicate => self.name_taken(team_id.as_str(), r.name, overwrite).await,
                e => e.into(),
            });
        }
        let agent = match self.hosts.agent(&sb.host_id) {
            Ok(a) => a,
            Err(e) => {
                self.give_up_snapshot(sb, &r).await;
                return Err(e);
            }
        };
        if let Err(e) = self.fail("snapshot.before_agent").await {
            self.give_up_snapshot(sb, &r).await;
            return Err(e);
        }
        let request = SnapshotRequest {
            name: r.agent_name.clone(),
            overwrite: false,
        };
        let info = match agent.snapshot(&sb.id, &request).await {
            Ok(info) => info,
            Err(e) => {
                self.settle_after_failure(sb).await;
                return Err(e.into());
            }
        };
        // From here a failure leaves the sandbox `snapshotting`: the reconciler commits the
        // template the agent made.
        self.fail("snapshot.after_agent").await?;
        let rec = template_record(&r, &info, &sb);
        if let Some(old) = self.store.commit_snapshot(&rec, &sb.id).await? {
            // The agent keeps the files alive for sandboxes still using the old one.
            self.delete_agent_template(&old.host_id, &old.agent_name)
                .await;
        }
        Ok(rec)
    }

    /// Why a name could not be reserved: a snapshot of that name exists, or one is being
    /// taken.
    async fn name_taken(&self, team_id: &str, name: String, overwrite: bool) -> ApiError {
        match self.store.get_template(team_id, &name).await {
            Ok(Some(_)) if !overwrite => ApiError::SnapshotExists(name),
            _ => ApiError::SnapshotInProgress(name),
        }
    }

    /// Gives up a snapshot before the agent was called: the name and the sandbox are free.
    async fn give_up_snapshot(&self, sb: SandboxRecord, r: &SnapshotReservation) {
        if let Err(e) = self.store.release_snapshot(&r.team_id, &r.name).await {
            tracing::warn!(sandbox = %sb.id, error = %e,
                "releasing a snapshot name failed; the reconciler will");
        }
        self.release(sb).await;
    }

    pub async fn list_templates(
        &self,
        team_id: &TeamId,
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
                    platform: true,
                    protected: true,
                });
            }
        }
        if snap {
            out.extend(
                self.store
                    .list_templates(team_id.as_str())
                    .await?
                    .iter()
                    .map(template_view),
            );
        }
        Ok(out)
    }

    pub async fn delete_template(
        &self,
        team_id: &TeamId,
        name: &TemplateName,
    ) -> Result<(), ApiError> {
        let r = self
            .delete_template_body(team_id.as_str(), name.as_str())
            .await;
        self.announce(
            SNAPSHOT_DELETE,
            team_id.as_str(),
            ("template", name.as_str()),
            ApiKey,
            no_meta(),
            &r,
        );
        r
    }

    async fn delete_template_body(&self, team_id: &str, name: &str) -> Result<(), ApiError> {
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
        self.delete_template_copies(&t.agent_name).await?;
        self.store.delete_template(team_id, name).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
