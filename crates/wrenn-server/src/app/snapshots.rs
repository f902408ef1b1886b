//! Snapshots: turn a running sandbox into a team's named snapshot template (the agent's
//! name stays opaque and unique), list base and snapshot templates, delete a snapshot. It
//! must not touch accounts, keys or sandboxes other than the one being snapshotted.

use super::{ts, App};
use crate::auth;
use crate::error::ApiError;
use crate::store::{self, StoreError, TemplateRecord};
use wrenn_types::agent::{codes, SnapshotRequest};
use wrenn_types::api;

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

/// Snapshot names: `[a-z0-9][a-z0-9._-]{0,62}`.
pub fn valid_template_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

impl App {
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
