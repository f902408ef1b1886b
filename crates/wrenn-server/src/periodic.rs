//! Running a pass every interval until shutdown: the one loop under the background tasks
//! ([`crate::reaper`], [`crate::reconciler`]). It owns only the timing; what a pass does
//! and what it logs belong to its caller.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Runs `pass` at once and then every `interval(owner)` (a pass that overruns delays the
/// next tick rather than bunching them), until `owner` is gone; a pass holds the owner
/// only while it runs.
pub async fn every<T, F, Fut>(owner: Weak<T>, interval: impl FnOnce(&T) -> Duration, mut pass: F)
where
    F: FnMut(Arc<T>) -> Fut,
    Fut: Future<Output = ()>,
{
    let interval = match owner.upgrade() {
        Some(o) => interval(&o),
        None => return,
    };
    // The first tick is at once.
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(o) = owner.upgrade() else { return };
        pass(o).await;
    }
}
