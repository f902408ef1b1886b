//! Capsules: `/v1/capsules`' view of sandboxes. The operations are the sandboxes' own
//! (`lifecycle`, `sandboxes`); this file adds what the capsule API has beyond them: the
//! labels given at create (checked, stored with the row), the finer status words, and the
//! guest directory operations (list, mkdir, remove). It must not hold lifecycle rules.

use super::{ts, App};
use crate::error::ApiError;
use crate::store::{Operation, SandboxRecord};
use std::collections::HashMap;
use std::sync::Arc;
use wrenn_types::agent::{AgentErrorCode, SandboxStatus};
use wrenn_types::capsule::{self, status, Capsule, CreateCapsuleRequest};
use wrenn_types::fs::{FileEntry, ListDirRequest, ListDirResponse, MAX_LIST_DEPTH};
use wrenn_types::ids::{SandboxId, TeamId};

/// How far back a capsule's GET looks for a resource sample (its disk use).
const DISK_SAMPLE_RANGE_SECS: u32 = 600;
/// How long a capsule's GET waits for the agent's samples before answering without them.
const DISK_SAMPLE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The capsule status word of a record: the operation under way, else its state.
pub fn capsule_status(s: &SandboxRecord) -> &'static str {
    match s.intent.as_ref().map(|i| i.op) {
        Some(Operation::Creating) => status::STARTING,
        Some(Operation::Pausing) => status::PAUSING,
        Some(Operation::Resuming) => status::RESUMING,
        Some(Operation::Snapshotting) => status::SNAPSHOTTING,
        Some(Operation::Destroying) => status::STOPPING,
        None => match s.status {
            SandboxStatus::Pending => status::STARTING,
            SandboxStatus::Running => status::RUNNING,
            SandboxStatus::Paused => status::PAUSED,
            SandboxStatus::Stopped => status::STOPPED,
            SandboxStatus::Error => status::ERROR,
        },
    }
}

/// 409 unless the sandbox is running or paused with no operation under way (a capsule's
/// snapshot takes either).
pub(super) fn require_running_or_paused(sb: &SandboxRecord) -> Result<(), ApiError> {
    let ok = matches!(sb.status, SandboxStatus::Running | SandboxStatus::Paused);
    if sb.intent.is_some() || !ok {
        return Err(ApiError::NotRunning {
            id: sb.id.clone(),
            status: sb.state_word().into(),
        });
    }
    Ok(())
}

/// The record as `/v1/capsules` shows it, with its labels (`metadata`, the stored JSON) and
/// without its disk figures (a GET adds those).
pub(super) fn capsule_view(s: &SandboxRecord, metadata: Option<&str>) -> Capsule {
    Capsule {
        id: s.id.clone(),
        status: capsule_status(s).into(),
        template: s.template.clone(),
        vcpus: s.vcpus,
        memory_mb: s.memory_mb,
        timeout_sec: s.timeout_sec,
        created_at: ts(s.created_at),
        started_at: s.started_at.map(ts),
        last_active_at: s.last_active_at.map(ts),
        last_updated: ts(s.last_updated),
        metadata: metadata
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default(),
        disk_size_mb: None,
        disk_used_mb: None,
    }
}

/// A path for a directory operation: absolute, bounded, without NUL.
fn check_dir_path(path: &str) -> Result<(), ApiError> {
    if !path.starts_with('/') {
        return Err(ApiError::BadRequest("path must be absolute".into()));
    }
    if path.len() > crate::config::limits::MAX_PATH_BYTES || path.contains('\0') {
        return Err(ApiError::BadRequest("path too long or invalid".into()));
    }
    Ok(())
}

impl App {
    async fn capsule_record(
        &self,
        team_id: &TeamId,
        id: &SandboxId,
    ) -> Result<SandboxRecord, ApiError> {
        self.store
            .get_sandbox(team_id.as_str(), id.as_str())
            .await?
            .ok_or_else(|| ApiError::SandboxNotFound(id.to_string()))
    }

    pub async fn create_capsule(
        self: &Arc<Self>,
        team_id: &TeamId,
        req: CreateCapsuleRequest,
    ) -> Result<Capsule, ApiError> {
        // Every capsule has a metadata row (`{}` when none was given): it is also how a
        // sandbox made through /v1/capsules is told from one of the seed API.
        let labels = req.metadata.unwrap_or_default();
        capsule::check_metadata(&labels).map_err(ApiError::BadRequest)?;
        let metadata =
            Some(serde_json::to_string(&labels).map_err(|e| ApiError::Internal(e.to_string()))?);
        let rec = self
            .create_record(team_id, req.sandbox, metadata.clone())
            .await?;
        Ok(capsule_view(&rec, metadata.as_deref()))
    }

    /// Whether the team's sandbox was made through `/v1/capsules`.
    pub(super) async fn is_capsule(
        &self,
        team_id: &TeamId,
        id: &SandboxId,
    ) -> Result<bool, ApiError> {
        Ok(!self
            .store
            .sandbox_metadata(team_id.as_str(), Some(id.as_str()))
            .await?
            .is_empty())
    }

    pub async fn get_capsule(&self, team_id: &TeamId, id: &SandboxId) -> Result<Capsule, ApiError> {
        let rec = self.capsule_record(team_id, id).await?;
        let meta = self
            .store
            .sandbox_metadata(team_id.as_str(), Some(id.as_str()))
            .await?;
        let mut view = capsule_view(&rec, meta.first().map(|(_, m)| m.as_str()));
        if self.unavailable(&rec) {
            view.status = status::MISSING.into();
            return Ok(view);
        }
        view.disk_used_mb = self.disk_used_mb(&rec).await;
        view.disk_size_mb = self.disk_size_mb(&rec).await;
        Ok(view)
    }

    /// MiB the capsule's disk holds at most, as its agent reports it; `None` when the agent
    /// does not say or does not answer in time (as [`Self::disk_used_mb`]).
    async fn disk_size_mb(&self, rec: &SandboxRecord) -> Option<i64> {
        if !matches!(rec.status, SandboxStatus::Running | SandboxStatus::Paused) {
            return None;
        }
        let agent = self.hosts.agent(&rec.host_id).ok()?;
        let info = tokio::time::timeout(DISK_SAMPLE_WAIT, agent.get_sandbox(&rec.id))
            .await
            .ok()?
            .ok()?;
        info.disk_size_mb.map(|mb| mb as i64)
    }

    /// MiB of the capsule's own disk layer (what it wrote beyond its template), from its
    /// latest resource sample; `None` when the agent has none or does not answer in time (a
    /// GET never waits long for it).
    async fn disk_used_mb(&self, rec: &SandboxRecord) -> Option<i64> {
        if !matches!(rec.status, SandboxStatus::Running | SandboxStatus::Paused) {
            return None;
        }
        let agent = self.hosts.agent(&rec.host_id).ok()?;
        let asked = agent.sandbox_metrics(&rec.id, DISK_SAMPLE_RANGE_SECS);
        let points = tokio::time::timeout(DISK_SAMPLE_WAIT, asked)
            .await
            .ok()?
            .ok()?;
        let bytes = points.last()?.disk_bytes;
        Some(bytes.div_ceil(1024 * 1024) as i64)
    }

    pub async fn list_capsules(&self, team_id: &TeamId) -> Result<Vec<Capsule>, ApiError> {
        let recs = self.store.list_sandboxes(team_id.as_str()).await?;
        let meta: HashMap<String, String> = self
            .store
            .sandbox_metadata(team_id.as_str(), None)
            .await?
            .into_iter()
            .collect();
        Ok(recs
            .iter()
            .map(|r| {
                let mut view = capsule_view(r, meta.get(&r.id).map(String::as_str));
                if self.unavailable(r) {
                    view.status = status::MISSING.into();
                }
                view
            })
            .collect())
    }

    pub async fn pause_capsule(
        self: &Arc<Self>,
        team_id: &TeamId,
        id: &SandboxId,
    ) -> Result<Capsule, ApiError> {
        self.pause(team_id, id).await?;
        self.get_capsule(team_id, id).await
    }

    pub async fn resume_capsule(
        self: &Arc<Self>,
        team_id: &TeamId,
        id: &SandboxId,
    ) -> Result<Capsule, ApiError> {
        self.resume(team_id, id).await?;
        self.get_capsule(team_id, id).await
    }

    /// Lists a directory of a running capsule.
    pub async fn list_dir(
        &self,
        team_id: &TeamId,
        id: &SandboxId,
        req: ListDirRequest,
    ) -> Result<ListDirResponse, ApiError> {
        check_dir_path(&req.path)?;
        if req.depth.is_some_and(|d| d > MAX_LIST_DEPTH) {
            return Err(ApiError::BadRequest(format!(
                "depth must be at most {MAX_LIST_DEPTH}"
            )));
        }
        let sb = self.running(team_id, id).await?;
        let agent = self.file_target(&sb, &req.path).await?;
        Ok(agent.list_dir(&sb.id, &req).await?)
    }

    /// Creates a directory (with parents) in a running capsule; 409 `conflict` when the
    /// path exists.
    pub async fn make_dir(
        &self,
        team_id: &TeamId,
        id: &SandboxId,
        path: &str,
    ) -> Result<FileEntry, ApiError> {
        check_dir_path(path)?;
        let sb = self.running(team_id, id).await?;
        let agent = self.file_target(&sb, path).await?;
        match agent.make_dir(&sb.id, path).await {
            Ok(entry) => Ok(entry),
            Err(e) if e.code() == Some(AgentErrorCode::AlreadyExists) => Err(ApiError::Conflict(
                format!("{path} already exists (already_exists)"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a file or a directory tree in a running capsule.
    pub async fn remove_path(
        &self,
        team_id: &TeamId,
        id: &SandboxId,
        path: &str,
    ) -> Result<(), ApiError> {
        check_dir_path(path)?;
        let sb = self.running(team_id, id).await?;
        let agent = self.file_target(&sb, path).await?;
        Ok(agent.remove_path(&sb.id, path).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{self, Intent};
    use std::collections::BTreeMap;

    fn labels(m: &[(&str, &str)]) -> BTreeMap<String, String> {
        m.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn rec(status: SandboxStatus, op: Option<Operation>) -> SandboxRecord {
        let now = store::now();
        SandboxRecord {
            id: "sb-1".into(),
            team_id: "t".into(),
            host_id: "h".into(),
            status,
            template: "minimal".into(),
            vcpus: 1,
            memory_mb: 512,
            timeout_sec: 0,
            guest_ip: String::new(),
            host_ip: String::new(),
            created_at: now,
            started_at: None,
            last_active_at: None,
            last_updated: now,
            intent: op.map(|op| Intent {
                op,
                owner: String::new(),
                since: now,
            }),
            version: 0,
        }
    }

    #[test]
    fn status_words() {
        use SandboxStatus as S;
        let cases = [
            (S::Pending, Some(Operation::Creating), "starting"),
            (S::Pending, None, "starting"),
            (S::Running, None, "running"),
            (S::Running, Some(Operation::Pausing), "pausing"),
            (S::Paused, None, "paused"),
            (S::Paused, Some(Operation::Resuming), "resuming"),
            (S::Running, Some(Operation::Snapshotting), "snapshotting"),
            (S::Paused, Some(Operation::Destroying), "stopping"),
            (S::Stopped, None, "stopped"),
            (S::Error, None, "error"),
        ];
        for (s, op, want) in cases {
            assert_eq!(capsule_status(&rec(s, op)), want, "{s:?} {op:?}");
        }
    }

    #[test]
    fn view_carries_metadata() {
        let r = rec(SandboxStatus::Running, None);
        let v = capsule_view(&r, Some(r#"{"env":"prod","team":"a"}"#));
        assert_eq!(v.metadata, labels(&[("env", "prod"), ("team", "a")]));
        assert!(capsule_view(&r, None).metadata.is_empty());
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["status"], "running");
        assert!(json.get("disk_used_mb").is_none());
    }
}
