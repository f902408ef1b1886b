//! Named failure points: places in the lifecycle operations where a test can make the control
//! plane fail a step, panic, kill its own process or wait. They are armed by
//! `WRENN_FAILPOINTS` (read once by [`crate::build`] unless
//! [`crate::ServerConfig::failpoints`] is set) or at run time through
//! [`crate::Server::failpoints`]; disarmed, a point costs one relaxed atomic load.
//!
//! The spec is a list of `name=action` separated by `;` or `,`, e.g.
//! `WRENN_FAILPOINTS="pause.after_agent=kill;create.before_agent=error"`. Actions:
//! `error` (the step fails with an internal error), `panic` (the operation's task panics),
//! `kill` (the process sends itself SIGKILL), `sleep(MS)` (the step waits MS milliseconds),
//! `off`. The names are [`NAMES`]: `<op>.before_agent` is hit after the operation's intent is
//! recorded and right before the host agent is called, `<op>.after_agent` right after the agent
//! answered success and before the result is recorded, for each op of `create`, `pause`,
//! `resume`, `snapshot` and `destroy`; and `reaper.before_claim`, between the reaper's list of
//! idle sandboxes and its claim of one. Names starting with `agent.` are the host agent's
//! (`wrenn_agent::failpoints`) and are left to it. This module knows nothing of what the points guard.

use crate::error::ApiError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Every failure point.
pub const NAMES: &[&str] = &[
    "create.before_agent",
    "create.after_agent",
    "pause.before_agent",
    "pause.after_agent",
    "resume.before_agent",
    "resume.after_agent",
    "snapshot.before_agent",
    "snapshot.after_agent",
    "destroy.before_agent",
    "destroy.after_agent",
    "reaper.before_claim",
];

/// What an armed point does when reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The step fails with an internal error.
    Error,
    /// The operation's task panics.
    Panic,
    /// The process sends itself SIGKILL (as a crash would end it).
    Kill,
    /// The step waits, then goes on.
    Sleep(Duration),
}

/// A spec that names an unknown point or action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid failpoint spec {0:?} (expected name=error|panic|kill|sleep(MS)|off)")]
pub struct FailpointError(pub String);

/// The armed points of one control plane.
#[derive(Debug, Default)]
pub struct Failpoints {
    armed: AtomicBool,
    points: Mutex<HashMap<&'static str, Action>>,
}

fn known(name: &str) -> Result<&'static str, FailpointError> {
    NAMES
        .iter()
        .copied()
        .find(|n| *n == name)
        .ok_or_else(|| FailpointError(name.to_string()))
}

fn parse_action(s: &str) -> Result<Option<Action>, FailpointError> {
    let bad = || FailpointError(s.to_string());
    Ok(Some(match s {
        "off" => return Ok(None),
        "error" => Action::Error,
        "panic" => Action::Panic,
        "kill" => Action::Kill,
        _ => {
            let ms = s
                .strip_prefix("sleep(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .ok_or_else(bad)?;
            Action::Sleep(Duration::from_millis(ms))
        }
    }))
}

impl Failpoints {
    /// Points armed by a spec (see the module doc); an empty spec arms none.
    pub fn parse(spec: &str) -> Result<Self, FailpointError> {
        let fp = Self::default();
        for item in spec
            .split([';', ','])
            .map(str::trim)
            .filter(|i| !i.is_empty())
        {
            let (name, action) = item
                .split_once('=')
                .ok_or_else(|| FailpointError(item.to_string()))?;
            if name.trim().starts_with("agent.") {
                continue; // the host agent's points, armed by the same variable
            }
            let name = known(name.trim())?;
            match parse_action(action.trim())? {
                Some(a) => fp.set(name, a)?,
                None => fp.clear(name),
            }
        }
        Ok(fp)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, Action>> {
        self.points.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms `name` with `action`.
    pub fn set(&self, name: &str, action: Action) -> Result<(), FailpointError> {
        let name = known(name)?;
        let mut points = self.lock();
        points.insert(name, action);
        self.armed.store(true, Ordering::Release);
        Ok(())
    }

    /// Disarms `name`.
    pub fn clear(&self, name: &str) {
        let mut points = self.lock();
        points.remove(name);
        self.armed.store(!points.is_empty(), Ordering::Release);
    }

    /// Disarms every point.
    pub fn clear_all(&self) {
        self.lock().clear();
        self.armed.store(false, Ordering::Release);
    }

    /// Reaches the point `name`: nothing unless it is armed.
    pub(crate) async fn hit(&self, name: &'static str) -> Result<(), ApiError> {
        if !self.armed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let action = self.lock().get(name).copied();
        match action {
            None => Ok(()),
            Some(Action::Error) => Err(ApiError::Internal(format!("failpoint {name}"))),
            Some(Action::Panic) => panic!("failpoint {name}"),
            Some(Action::Sleep(d)) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            Some(Action::Kill) => {
                tracing::error!(failpoint = name, "failpoint kills the process");
                // SAFETY: kill and getpid have no memory-safety preconditions; the signal
                // goes to this process.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
                std::process::abort()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_typos_are_refused() {
        let fp = Failpoints::parse(
            " pause.after_agent=kill; create.before_agent=error,destroy.after_agent=sleep(25)",
        )
        .unwrap();
        let points = fp.lock().clone();
        assert_eq!(points.get("pause.after_agent"), Some(&Action::Kill));
        assert_eq!(points.get("create.before_agent"), Some(&Action::Error));
        assert_eq!(
            points.get("destroy.after_agent"),
            Some(&Action::Sleep(Duration::from_millis(25)))
        );
        assert!(fp.armed.load(Ordering::Relaxed));
        assert!(!Failpoints::parse("").unwrap().armed.load(Ordering::Relaxed));
        let off = Failpoints::parse("pause.after_agent=panic;pause.after_agent=off").unwrap();
        assert!(!off.armed.load(Ordering::Relaxed));
        let off = Failpoints::parse("agent.pause.after_save=kill").unwrap();
        assert!(!off.armed.load(Ordering::Relaxed));
        for bad in [
            "pause.after=kill",
            "pause.after_agent",
            "pause.after_agent=explode",
            "pause.after_agent=sleep(x)",
        ] {
            assert!(Failpoints::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn an_armed_point_fails_and_a_cleared_one_does_not() {
        let fp = Failpoints::default();
        assert!(fp.hit("pause.before_agent").await.is_ok());
        fp.set("pause.before_agent", Action::Error).unwrap();
        assert!(fp.hit("pause.before_agent").await.is_err());
        assert!(fp.hit("pause.after_agent").await.is_ok());
        fp.clear("pause.before_agent");
        assert!(fp.hit("pause.before_agent").await.is_ok());
        assert!(fp.set("no.such_point", Action::Error).is_err());
    }
}
