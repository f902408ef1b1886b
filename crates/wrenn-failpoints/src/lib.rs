//! Named failure points: places where a test can make a process fail a step, panic, kill
//! itself or wait. The control plane and the host agent each declare their own points (a
//! list of names) and arm them from one spec, `WRENN_FAILPOINTS`, so one variable arms both
//! in `wrenn up`: names starting with [`AGENT_PREFIX`] are the agent's, every other name is
//! the control plane's, and each process leaves the other's names alone.
//!
//! The spec is a list of `name=action` separated by `;` or `,`. Actions: `error` (the step
//! fails), `panic` (the operation's task panics), `kill` (the process sends itself SIGKILL),
//! `sleep(MS)` (the step waits MS milliseconds), `off`. Disarmed, reaching a point costs one
//! relaxed atomic load.
//!
//! This crate owns the spec, the armed points and what `panic` and `kill` do; it knows no
//! point names and nothing of what the points guard. The waiting of `sleep` and the error of
//! `error` are the caller's ([`Failpoints::reach`]).

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The prefix of the host agent's points in a spec shared with the control plane.
pub const AGENT_PREFIX: &str = "agent.";

/// One process's failure points: their names, and which names of a spec are its own.
pub trait Points {
    /// Every failure point of the process.
    const NAMES: &'static [&'static str];
    /// Whether the process is the host agent (its names start with [`AGENT_PREFIX`]) or the
    /// control plane (every other name).
    const AGENT: bool;

    /// Whether a name of a spec is this process's (the others are left to the other one).
    fn owns(name: &str) -> bool {
        name.starts_with(AGENT_PREFIX) == Self::AGENT
    }

    /// How this process's names are written, for error messages.
    fn form() -> &'static str {
        if Self::AGENT {
            "agent.name"
        } else {
            "name"
        }
    }
}

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

/// A spec that names an unknown point or an unknown action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailpointError {
    /// The part of the spec that was refused.
    pub spec: String,
    /// How a name is written ("name", "agent.name").
    form: &'static str,
}

impl fmt::Display for FailpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid failpoint spec {:?} (expected {}=error|panic|kill|sleep(MS)|off)",
            self.spec, self.form
        )
    }
}

impl std::error::Error for FailpointError {}

/// A point armed with `error` was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected(pub &'static str);

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "failpoint {}", self.0)
    }
}

impl std::error::Error for Injected {}

/// The armed points of one process, out of its own [`Points::NAMES`].
pub struct Failpoints<P> {
    armed: AtomicBool,
    points: Mutex<HashMap<&'static str, Action>>,
    process: PhantomData<fn() -> P>,
}

impl<P> fmt::Debug for Failpoints<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failpoints")
            .field("armed", &self.armed)
            .field("points", &self.points)
            .finish()
    }
}

impl<P> Default for Failpoints<P> {
    fn default() -> Self {
        Failpoints {
            armed: AtomicBool::new(false),
            points: Mutex::new(HashMap::new()),
            process: PhantomData,
        }
    }
}

fn error<P: Points>(spec: &str) -> FailpointError {
    FailpointError {
        spec: spec.to_string(),
        form: P::form(),
    }
}

fn known<P: Points>(name: &str) -> Result<&'static str, FailpointError> {
    P::NAMES
        .iter()
        .copied()
        .find(|n| *n == name)
        .ok_or_else(|| error::<P>(name))
}

fn parse_action<P: Points>(s: &str) -> Result<Option<Action>, FailpointError> {
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
                .ok_or_else(|| error::<P>(s))?;
            Action::Sleep(Duration::from_millis(ms))
        }
    }))
}

impl<P: Points> Failpoints<P> {
    /// The process's points armed by a spec (see the crate doc); an empty spec arms none.
    pub fn parse(spec: &str) -> Result<Self, FailpointError> {
        let fp = Self::default();
        for item in spec
            .split([';', ','])
            .map(str::trim)
            .filter(|i| !i.is_empty())
        {
            let (name, action) = item.split_once('=').ok_or_else(|| error::<P>(item))?;
            let name = name.trim();
            if !P::owns(name) {
                continue; // the other process's points, armed by the same variable
            }
            let name = known::<P>(name)?;
            match parse_action::<P>(action.trim())? {
                Some(a) => fp.set(name, a)?,
                None => fp.clear(name),
            }
        }
        Ok(fp)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<&'static str, Action>> {
        self.points.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms `name` with `action`.
    pub fn set(&self, name: &str, action: Action) -> Result<(), FailpointError> {
        let name = known::<P>(name)?;
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

    /// Whether any point is armed.
    pub fn is_armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }

    /// The armed points and their actions.
    pub fn armed_points(&self) -> HashMap<&'static str, Action> {
        self.lock().clone()
    }

    /// Reaches the point `name`: nothing unless it is armed. `panic` and `kill` happen here;
    /// `error` is returned as [`Injected`], and `sleep` as the time the caller is to wait.
    pub fn reach(&self, name: &'static str) -> Result<Option<Duration>, Injected> {
        if !self.armed.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let action = self.lock().get(name).copied();
        match action {
            None => Ok(None),
            Some(Action::Error) => Err(Injected(name)),
            Some(Action::Panic) => panic!("failpoint {name}"),
            Some(Action::Sleep(d)) => Ok(Some(d)),
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

    struct Plane;
    impl Points for Plane {
        const NAMES: &'static [&'static str] = &["op.before", "op.after"];
        const AGENT: bool = false;
    }

    struct Agent;
    impl Points for Agent {
        const NAMES: &'static [&'static str] = &["agent.op.after"];
        const AGENT: bool = true;
    }

    #[test]
    fn each_process_takes_its_own_names_and_refuses_unknown_ones() {
        let spec = "op.before=error; agent.op.after=kill";
        let plane = Failpoints::<Plane>::parse(spec).unwrap();
        let want = HashMap::from([("op.before", Action::Error)]);
        assert_eq!(plane.armed_points(), want);
        let agent = Failpoints::<Agent>::parse(spec).unwrap();
        let want = HashMap::from([("agent.op.after", Action::Kill)]);
        assert_eq!(agent.armed_points(), want);
        let err = Failpoints::<Agent>::parse("agent.op=kill").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid failpoint spec \"agent.op\" \
             (expected agent.name=error|panic|kill|sleep(MS)|off)"
        );
        let err = Failpoints::<Plane>::parse("op.before=boom").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid failpoint spec \"boom\" (expected name=error|panic|kill|sleep(MS)|off)"
        );
    }

    #[test]
    fn reaching_a_point_errs_waits_or_passes() {
        let fp = Failpoints::<Plane>::default();
        assert_eq!(fp.reach("op.before"), Ok(None));
        fp.set("op.before", Action::Error).unwrap();
        let wait = Duration::from_millis(7);
        fp.set("op.after", Action::Sleep(wait)).unwrap();
        assert_eq!(fp.reach("op.before"), Err(Injected("op.before")));
        assert_eq!(fp.reach("op.after"), Ok(Some(wait)));
        fp.clear_all();
        assert!(!fp.is_armed());
        assert_eq!(fp.reach("op.before"), Ok(None));
    }
}
