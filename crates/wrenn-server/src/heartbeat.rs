//! The heartbeat's loop: a background task in every control plane that runs one pass of
//! [`crate::placement::Hosts::beat`] at start and then every `heartbeat_interval` (new,
//! removed and draining hosts from the store; each host probed; health cached and written).
//! Placement and the sandboxes' read-time status read its cache. It owns only its loop; it
//! stops when the control plane is dropped.

use crate::app::App;
use std::sync::Weak;

/// Runs until the [`App`] is gone.
pub async fn run(app: Weak<App>) {
    crate::periodic::every(
        app,
        |a| a.cfg.heartbeat_interval,
        |app| async move { app.hosts.beat().await },
    )
    .await
}
