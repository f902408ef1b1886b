//! The reconciler's loop: a background task that runs a pass at start and then every
//! `reconcile_interval` (see [`crate::app::App::reconcile`]), only on the leading control
//! plane (`crate::leader`). It owns only its loop; it stops when the control plane is
//! dropped.

use crate::app::App;
use std::sync::Weak;

/// Runs until the [`App`] is gone.
pub async fn run(app: Weak<App>) {
    crate::periodic::every(
        app,
        |a| a.cfg.reconcile_interval,
        |app| async move {
            // One control plane at a time (`crate::leader`).
            if !app.leader.leads() {
                return;
            }
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
        },
    )
    .await
}
