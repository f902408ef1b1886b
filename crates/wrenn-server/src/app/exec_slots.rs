//! Counts of the execs, exec streams and process attaches running at once, per sandbox and
//! per team, held to [`crate::config::ExecLimits`]: one over either limit is refused with
//! `429 quota_exceeded` before anything reaches the agent. A slot is a guard: it is given
//! back when the exec answers or the stream ends, however that happens.

use crate::error::ApiError;
use crate::store::QuotaExceeded;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
struct Counts {
    sandboxes: HashMap<String, usize>,
    teams: HashMap<String, usize>,
}

/// The counts of one control plane.
#[derive(Default, Clone)]
pub struct ExecSlots {
    counts: Arc<Mutex<Counts>>,
}

/// One running exec or stream; dropping it frees its slot.
pub struct ExecSlot {
    counts: Arc<Mutex<Counts>>,
    team: String,
    sandbox: String,
}

fn lock(m: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    // The counts stay consistent whatever panicked while holding the lock.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ExecSlots {
    /// Takes a slot on `sandbox` of `team`, or refuses when either already runs its limit.
    pub fn take(
        &self,
        team: &str,
        sandbox: &str,
        per_sandbox: usize,
        per_team: usize,
    ) -> Result<ExecSlot, ApiError> {
        let mut c = lock(&self.counts);
        let on_sandbox = c.sandboxes.get(sandbox).copied().unwrap_or(0);
        if on_sandbox >= per_sandbox {
            return Err(ApiError::QuotaExceeded(QuotaExceeded::ExecsPerSandbox(
                per_sandbox as i64,
            )));
        }
        let on_team = c.teams.get(team).copied().unwrap_or(0);
        if on_team >= per_team {
            return Err(ApiError::QuotaExceeded(QuotaExceeded::ExecsPerTeam(
                per_team as i64,
            )));
        }
        *c.sandboxes.entry(sandbox.to_string()).or_default() += 1;
        *c.teams.entry(team.to_string()).or_default() += 1;
        Ok(ExecSlot {
            counts: self.counts.clone(),
            team: team.to_string(),
            sandbox: sandbox.to_string(),
        })
    }

    /// Slots taken on `sandbox` now.
    #[cfg(test)]
    fn on_sandbox(&self, sandbox: &str) -> usize {
        lock(&self.counts)
            .sandboxes
            .get(sandbox)
            .copied()
            .unwrap_or(0)
    }
}

fn give_back(map: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Drop for ExecSlot {
    fn drop(&mut self) {
        let mut c = lock(&self.counts);
        give_back(&mut c.sandboxes, &self.sandbox);
        give_back(&mut c.teams, &self.team);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(r: Result<ExecSlot, ApiError>) -> QuotaExceeded {
        match r {
            Err(ApiError::QuotaExceeded(q)) => q,
            Err(e) => panic!("refused with {e}"),
            Ok(_) => panic!("a slot over the limit was given"),
        }
    }

    #[test]
    fn per_sandbox_limit_refuses_the_one_over_and_frees_on_drop() {
        let slots = ExecSlots::default();
        let held: Vec<_> = (0..3)
            .map(|_| slots.take("t", "a", 3, 10).expect("within the limit"))
            .collect();
        assert_eq!(
            refused(slots.take("t", "a", 3, 10)),
            QuotaExceeded::ExecsPerSandbox(3)
        );
        // Another sandbox of the same team still has room.
        let other = slots.take("t", "b", 3, 10).expect("another sandbox");
        drop(held);
        assert_eq!(slots.on_sandbox("a"), 0);
        let again = slots.take("t", "a", 3, 10).expect("freed by the drops");
        drop((other, again));
        assert!(lock(&slots.counts).teams.is_empty(), "no count left behind");
    }

    #[test]
    fn per_team_limit_spans_the_teams_sandboxes_only() {
        let slots = ExecSlots::default();
        let a = slots.take("t", "a", 16, 2).unwrap();
        let b = slots.take("t", "b", 16, 2).unwrap();
        assert_eq!(
            refused(slots.take("t", "c", 16, 2)),
            QuotaExceeded::ExecsPerTeam(2)
        );
        // Another team is not held back by this one.
        let _u = slots.take("u", "d", 16, 2).expect("another team");
        drop(a);
        let _c = slots.take("t", "c", 16, 2).expect("a slot was given back");
        drop(b);
    }
}
