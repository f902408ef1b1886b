//! The idle reaper's pass: pause every running sandbox idle past its `timeout_sec`. The
//! loop that runs it is `crate::reaper`; the pause itself is the lifecycle's
//! (`pause_claimed`). A sandbox is claimed compare-and-set on the version the pass listed:
//! any activity mark (an exec or transfer that just started), operation or change since the
//! list makes the claim fail and the sandbox is left running. It must not decide anything
//! else about sandboxes.

use super::events::Actor;
use super::App;
use crate::error::ApiError;
use crate::store::{self, Operation, SandboxRecord};
use std::collections::BTreeMap;
use std::sync::Arc;
use wrenn_types::observe::event::CAPSULE_PAUSE;

impl App {
    /// One pass of the idle reaper: pauses every running sandbox whose `timeout_sec` has
    /// passed since its last activity. Returns the ids it paused.
    pub async fn reap_idle(self: &Arc<Self>) -> Result<Vec<String>, ApiError> {
        let now = store::now();
        let mut paused = Vec::new();
        for sb in self.store.list_running_with_timeout().await? {
            let last = sb.last_active_at.unwrap_or(sb.created_at);
            if last + chrono::Duration::seconds(sb.timeout_sec) > now {
                continue;
            }
            // Its host is silent: left as it is until the host returns.
            if self.hosts.is_unreachable(&sb.host_id) {
                continue;
            }
            self.fail("reaper.before_claim").await?;
            let id = sb.id.clone();
            let reaped = self
                .try_run(&id, Some(Operation::Pausing), move |app| async move {
                    app.reap_one(sb).await
                })
                .await;
            match reaped {
                // Busy with another operation, or claimed by someone else: not idle.
                None | Some(Ok(false)) => {}
                Some(Ok(true)) => paused.push(id),
                // The agent refused because an exec or a transfer is still under way: the
                // sandbox is not idle after all; a later pass tries again.
                Some(Err(ApiError::Conflict(why))) => {
                    tracing::debug!(sandbox = %id, %why, "auto-pause skipped: sandbox busy")
                }
                Some(Err(e)) => tracing::warn!(sandbox = %id, error = %e, "auto-pause failed"),
            }
        }
        Ok(paused)
    }

    /// Claims a sandbox as listed and pauses it; false if it changed since the list.
    async fn reap_one(&self, mut sb: SandboxRecord) -> Result<bool, ApiError> {
        sb.intent = Some(self.intent(Operation::Pausing));
        sb.last_updated = store::now();
        if !self.save(&mut sb).await? {
            return Ok(false);
        }
        let (team, id) = (sb.team_id.clone(), sb.id.clone());
        let r = self.pause_claimed(sb).await;
        let why = BTreeMap::from([("reason".to_string(), "ttl_expired".to_string())]);
        self.announce(
            CAPSULE_PAUSE,
            &team,
            ("capsule", &id),
            Actor::System,
            why,
            &r,
        );
        r.map(|_| true)
    }
}
