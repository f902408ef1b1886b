//! The reconciler's loop: a background task that runs a pass every `reconcile_interval` (see
//! [`crate::app::App::reconcile`]), only on the leading control plane (`crate::leader`), and
//! one as soon as this control plane starts leading (at start on SQLite; on PostgreSQL within
//! a second of taking the lock, so a dead leader's cut-short operations are settled at once).
//! It owns only its loop; it stops when the control plane is dropped.

use crate::app::App;
use std::sync::Weak;
use std::time::{Duration, Instant};

/// How often the loop looks whether a pass is due (or leadership was gained).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Runs until the [`App`] is gone.
pub async fn run(app: Weak<App>) {
    let mut last: Option<Instant> = None;
    crate::periodic::every(
        app,
        |a| a.cfg.reconcile_interval.min(LOOK_EVERY),
        move |app| {
            // One control plane at a time (`crate::leader`); a new leader at once.
            let leads = app.leader.leads();
            let due = leads && last.is_none_or(|t| t.elapsed() >= app.cfg.reconcile_interval);
            if !leads {
                last = None;
            } else if due {
                last = Some(Instant::now());
            }
            async move {
                if !due {
                    return;
                }
                let pass = app.reconcile().await;
                app.leader.count_reconcile_pass();
                match pass {
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
        },
    )
    .await
}
