//! The auto-pause reaper: a background task that, every `reaper_interval`, pauses running
//! sandboxes idle for longer than their `timeout_sec` (see [`crate::app::App::reap_idle`]).
//! It runs only on the leading control plane (`crate::leader`). It owns only its loop; it
//! stops when the control plane is dropped.

use crate::app::App;
use std::sync::Weak;

/// Runs until the [`App`] is gone.
pub async fn run(app: Weak<App>) {
    crate::periodic::every(
        app,
        |a| a.cfg.reaper_interval,
        |app| async move {
            // One control plane at a time (`crate::leader`).
            if !app.leader.leads() {
                return;
            }
            app.leader.count_reaper_pass();
            match app.reap_idle().await {
                Ok(paused) if !paused.is_empty() => {
                    tracing::info!(count = paused.len(), "auto-paused idle sandboxes");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reaper pass failed"),
            }
        },
    )
    .await
}
