//! Named failure points of the agent: places in the sandbox operations where a test can make
//! the agent fail a step, panic, kill its own process or wait. They are armed by
//! `WRENN_FAILPOINTS`, the variable the control plane reads for its own points, read once when
//! the manager starts ([`crate::sandbox::Manager::start`]), or at run time through
//! [`crate::sandbox::Manager::failpoints`]; disarmed, a point costs one relaxed atomic load.
//!
//! The spec is a list of `name=action` separated by `;` or `,`. The agent's names start with
//! `agent.`; names without that prefix are the control plane's and are left to it, so one
//! variable arms both in `wrenn up`. Actions: `error` (the step fails with an internal error),
//! `panic` (the operation's task panics), `kill` (the process sends itself SIGKILL),
//! `sleep(MS)` (the step waits MS milliseconds), `off`. The names are [`NAMES`], one after each
//! step of create, pause, resume, snapshot and destroy (`docs/ARCHITECTURE.md` says what each
//! one follows). This module knows nothing of what the points guard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The prefix of the agent's points in a spec shared with the control plane.
pub const PREFIX: &str = "agent.";

/// Every failure point of the agent.
pub const NAMES: &[&str] = &[
    "agent.create.after_register",
    "agent.create.after_files",
    "agent.create.after_start",
    "agent.pause.after_intent",
    "agent.pause.after_save",
    "agent.pause.after_stop",
    "agent.pause.after_record",
    "agent.resume.after_intent",
    "agent.resume.after_load",
    "agent.resume.after_cont",
    "agent.snapshot.after_intent",
    "agent.snapshot.after_publish",
    "agent.destroy.after_intent",
    "agent.destroy.after_kill",
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

/// A spec that names an unknown agent point or an unknown action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid failpoint spec {0:?} (expected agent.name=error|panic|kill|sleep(MS)|off)")]
pub struct FailpointError(pub String);

/// A point armed with `error` was reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failpoint {0}")]
pub struct Injected(pub &'static str);

/// The armed points of one agent.
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
    /// The agent's points armed by a spec (see the module doc); an empty spec arms none.
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
            let name = name.trim();
            if !name.starts_with(PREFIX) {
                continue; // the control plane's
            }
            let name = known(name)?;
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
    pub async fn hit(&self, name: &'static str) -> Result<(), Injected> {
        if !self.armed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let action = self.lock().get(name).copied();
        match action {
            None => Ok(()),
            Some(Action::Error) => Err(Injected(name)),
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
    fn specs_parse_leave_the_control_planes_points_and_refuse_typos() {
        let fp = Failpoints::parse(
            "pause.after_agent=kill; agent.pause.after_save=kill,agent.resume.after_load=sleep(25)",
        )
        .unwrap();
        let points = fp.lock().clone();
        assert_eq!(points.len(), 2);
        assert_eq!(points.get("agent.pause.after_save"), Some(&Action::Kill));
        assert_eq!(
            points.get("agent.resume.after_load"),
            Some(&Action::Sleep(Duration::from_millis(25)))
        );
        assert!(!Failpoints::parse("").unwrap().armed.load(Ordering::Relaxed));
        let off =
            Failpoints::parse("agent.pause.after_save=panic;agent.pause.after_save=off").unwrap();
        assert!(!off.armed.load(Ordering::Relaxed));
        for bad in [
            "agent.pause.after=kill",
            "agent.pause.after_save",
            "agent.pause.after_save=explode",
            "agent.pause.after_save=sleep(x)",
        ] {
            assert!(Failpoints::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn an_armed_point_fails_and_a_cleared_one_does_not() {
        let fp = Failpoints::default();
        assert!(fp.hit("agent.pause.after_save").await.is_ok());
        fp.set("agent.pause.after_save", Action::Error).unwrap();
        assert_eq!(
            fp.hit("agent.pause.after_save").await,
            Err(Injected("agent.pause.after_save"))
        );
        assert!(fp.hit("agent.pause.after_stop").await.is_ok());
        fp.clear_all();
        assert!(fp.hit("agent.pause.after_save").await.is_ok());
        assert!(fp.set("agent.no.such_point", Action::Error).is_err());
    }
}
