//! The idle reaper's pass: pause every running sandbox idle past its `timeout_sec`. The
//! loop that runs it is `crate::reaper`; the pause itself is the sandboxes' (`pause_record`).
//! It must not decide anything else about sandboxes.

use super::App;
use crate::error::ApiError;
use crate::store;

impl App {
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
