//! The rules watcher, a thread of the [`SlotPool`](super::SlotPool): every
//! `rules_check_interval` it checks the prefix's host rules and, in turn,
//! [`SLOTS_CHECKED_PER_ROUND`] built slots' namespace rules, and puts back whatever was
//! flushed or changed. It also re-reads the host's directly connected networks and, when they
//! changed, rewrites every built slot's rules. It creates and removes no slot.

use super::pool::Inner;
use super::{host_rules, policy};

/// How many slots' namespace rules the watcher checks per round, in turn, so a round costs
/// the same with many sandboxes.
pub const SLOTS_CHECKED_PER_ROUND: usize = 8;

impl Inner {
    /// The rules watcher: every `rules_check_interval` until told to stop, checks the host
    /// rules and the next [`SLOTS_CHECKED_PER_ROUND`] built slots (in index order, wrapping
    /// around), and puts back whatever differs from what was installed.
    pub(super) fn watch_rules(&self) {
        let mut next = self.cfg.first_slot;
        loop {
            {
                let st = self.lock();
                let (st, _) = self
                    .wake
                    .wait_timeout_while(st, self.cfg.rules_check_interval, |st| !st.stopping)
                    .unwrap_or_else(|e| e.into_inner());
                if st.stopping {
                    return;
                }
            }
            let prefix = &self.cfg.prefix;
            match host_rules::restore(prefix, &self.host_rules) {
                Ok(true) => tracing::warn!(
                    prefix = %prefix,
                    "the host network rules had been removed or changed; restored them"
                ),
                Ok(false) => {}
                Err(err) => tracing::warn!(%err, "checking the host network rules failed"),
            }
            // When the host's networks changed, every built slot gets the new list now.
            let (addrs, nets) = policy::host_networks();
            let batch = {
                let mut st = self.lock();
                st.host_addrs = addrs;
                if st.host_nets != nets {
                    tracing::info!(networks = ?nets, "the host's directly connected networks changed");
                    st.host_nets = nets;
                    st.built_from(self.cfg.first_slot, usize::MAX)
                } else {
                    st.built_from(next, SLOTS_CHECKED_PER_ROUND)
                }
            };
            for index in batch {
                next = index + 1;
                match self.restore_slot(index) {
                    Ok(true) => tracing::warn!(
                        prefix = %prefix,
                        index,
                        "a network slot's rules had been removed or changed; restored them"
                    ),
                    Ok(false) => {}
                    // A slot removed while it was being checked is no failure.
                    Err(err) if !self.lock().built_from(index, 1).contains(&index) => {
                        tracing::debug!(%err, "checked a network slot while it was removed");
                    }
                    Err(err) => tracing::warn!(%err, "checking a network slot's rules failed"),
                }
            }
            if self.lock().built_from(next, 1).is_empty() {
                next = self.cfg.first_slot;
            }
        }
    }
}
