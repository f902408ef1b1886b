//! Taking slots back: [`SlotPool::release`] resets a released slot for the next sandbox (or
//! removes it) before it returns; [`SlotPool::release_in_background`] takes it out of use at
//! once and leaves the reset to a blocking task, counted in the pool's state so that an
//! `acquire` with no other slot waits for it and a shutdown waits for all of them.

use std::sync::Arc;
use std::time::Duration;

use super::pool::{Inner, SlotPool};
use super::slot::{self, Slot};
use super::NetError;

/// How a released slot goes back, decided when it is taken out of use.
pub(super) struct Reuse {
    /// Reset it for the next sandbox (else it is removed).
    reset: bool,
    /// Its sandbox had rules of its own, to be replaced by the default ones.
    had_own_rules: bool,
    /// Released by [`SlotPool::release_in_background`]: counted in `releasing`.
    in_background: bool,
}

/// Longest wait of an `acquire` for a slot being released, and of a shutdown for the
/// releases under way.
pub(super) const RELEASE_WAIT: Duration = Duration::from_secs(30);

impl Inner {
    pub(super) fn release(&self, slot: Slot) -> Result<(), NetError> {
        let reuse = self.take_back(&slot, false)?;
        self.reset_or_remove(slot, reuse)
    }

    /// Takes slot `slot` out of use and drops its sandbox's own rules; says how it goes back
    /// ([`Reuse`]). With `in_background`, counts it as releasing until
    /// [`Inner::reset_or_remove`] ends.
    fn take_back(&self, slot: &Slot, in_background: bool) -> Result<Reuse, NetError> {
        let mut st = self.lock();
        if !st.in_use.remove(&slot.index) {
            return Err(NetError::Unknown {
                prefix: self.cfg.prefix.clone(),
                index: slot.index,
                reason: "released but not in use",
            });
        }
        let had_own_rules = st.sandbox.remove(&slot.index).is_some();
        let reset = self.conntrack
            && !st.closed
            && st.ready.len() + st.creating + st.resetting < self.cfg.pool_size;
        if in_background {
            st.releasing += 1;
            st.resetting += usize::from(reset);
        }
        Ok(Reuse {
            reset,
            had_own_rules,
            in_background,
        })
    }

    /// Resets a released slot and puts it back in `ready`, or removes it, as `reuse` says.
    fn reset_or_remove(&self, slot: Slot, reuse: Reuse) -> Result<(), NetError> {
        let index = slot.index;
        let mut back = false;
        if reuse.reset {
            // A slot whose sandbox had its own rules gets the default ones back first.
            let reset = if reuse.had_own_rules {
                self.restore_slot(index).map(drop)
            } else {
                Ok(())
            };
            match reset.and_then(|()| slot::reset(&self.cfg.prefix, &slot)) {
                Ok(()) => {
                    let mut st = self.lock();
                    if !st.closed {
                        st.ready.push_back(slot);
                        back = true;
                    }
                }
                Err(err) => tracing::warn!(%err, "resetting a network slot failed; removing it"),
            }
        }
        let result = if back { Ok(()) } else { self.remove(index) };
        if reuse.in_background {
            let mut st = self.lock();
            st.releasing -= 1;
            st.resetting -= usize::from(reuse.reset);
        }
        self.wake.notify_all();
        result
    }

    /// Waits (up to [`RELEASE_WAIT`]) until no release runs in the background.
    pub(super) fn wait_released(&self) {
        let st = self.lock();
        let _ = self
            .wake
            .wait_timeout_while(st, RELEASE_WAIT, |st| st.releasing > 0);
    }

    /// Tears down a reserved index and frees it; on failure the index stays reserved so it is
    /// not handed out again while something of it is left.
    pub(super) fn remove(&self, index: u32) -> Result<(), NetError> {
        let result = slot::destroy(&self.cfg.prefix, index, self.conntrack);
        let mut st = self.lock();
        if result.is_ok() {
            st.reserved.remove(&index);
        }
        self.wake.notify_all();
        result
    }
}

impl SlotPool {
    /// Takes a slot back once its VM has ended: resets it and returns it to the pool, or removes
    /// it (namespace, veths, route, tracked connections). Nothing of the old sandbox remains.
    pub async fn release(&self, slot: Slot) -> Result<(), NetError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.release(slot))
            .await
            .map_err(|e| NetError::Task(e.to_string()))?
    }

    /// Blocking form of [`SlotPool::release`].
    pub fn release_blocking(&self, slot: Slot) -> Result<(), NetError> {
        self.inner.release(slot)
    }

    /// [`SlotPool::release`] without waiting for the reset or removal (about 30 ms), for a
    /// caller whose answer does not depend on it (a pause). The slot is out of use at once and
    /// is handed out again only once reset; an `acquire` that finds no other slot waits for it,
    /// and [`SlotPool::close_idle`] and [`SlotPool::shutdown`] wait for every such release.
    /// Must be called within a Tokio runtime. A failure is logged.
    pub fn release_in_background(&self, slot: Slot) -> Result<(), NetError> {
        let reuse = self.inner.take_back(&slot, true)?;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            if let Err(err) = inner.reset_or_remove(slot, reuse) {
                tracing::warn!(%err, "releasing a network slot failed");
            }
        });
        Ok(())
    }
}
