//! The reconciler's loop: a background task that runs a pass at start and then every
//! `reconcile_interval` (see [`crate::app::App::reconcile`]). It owns only its loop; it
//! stops when the control plane is dropped.

use crate::app::App;
use std::sync::Weak;

/// Runs until the [`App`] is gone.
pub async fn run(app: Weak<App>) {
    let interval = match app.upgrade() {
        Some(a) => a.cfg.reconcile_interval,
        None => return,
    };
    // The first tick is at once: a pass at start.
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(app) = app.upgrade() else { return };
        match app.reconcile().await {
            Ok(report) if report.changed_anything() => {
                tracing::info!(
                    ?report,
                    "reconciler brought the database and agents together"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reconciler pass failed"),
        }
    }
}
