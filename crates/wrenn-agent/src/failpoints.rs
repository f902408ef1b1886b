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
//! one follows). The spec and the armed points are `wrenn_failpoints`'s; this module holds the
//! agent's names and knows nothing of what the points guard.

pub use wrenn_failpoints::{Action, FailpointError, Injected, AGENT_PREFIX as PREFIX};

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

/// The agent's points in a spec shared with the control plane.
#[derive(Debug)]
pub enum AgentPoints {}

impl wrenn_failpoints::Points for AgentPoints {
    const NAMES: &'static [&'static str] = NAMES;
    const AGENT: bool = true;
}

/// The armed points of one agent.
pub type Failpoints = wrenn_failpoints::Failpoints<AgentPoints>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn specs_parse_leave_the_control_planes_points_and_refuse_typos() {
        let fp = Failpoints::parse(
            "pause.after_agent=kill; agent.pause.after_save=kill,agent.resume.after_load=sleep(25)",
        )
        .unwrap();
        let points = fp.armed_points();
        assert_eq!(points.len(), 2);
        assert_eq!(points.get("agent.pause.after_save"), Some(&Action::Kill));
        assert_eq!(
            points.get("agent.resume.after_load"),
            Some(&Action::Sleep(Duration::from_millis(25)))
        );
        assert!(!Failpoints::parse("").unwrap().is_armed());
        let off =
            Failpoints::parse("agent.pause.after_save=panic;agent.pause.after_save=off").unwrap();
        assert!(!off.is_armed());
        for bad in [
            "agent.pause.after=kill",
            "agent.pause.after_save",
            "agent.pause.after_save=explode",
            "agent.pause.after_save=sleep(x)",
        ] {
            assert!(Failpoints::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_armed_point_fails_and_a_cleared_one_does_not() {
        let fp = Failpoints::default();
        assert!(fp.reach("agent.pause.after_save").is_ok());
        fp.set("agent.pause.after_save", Action::Error).unwrap();
        assert_eq!(
            fp.reach("agent.pause.after_save"),
            Err(Injected("agent.pause.after_save"))
        );
        assert!(fp.reach("agent.pause.after_stop").is_ok());
        fp.clear_all();
        assert!(fp.reach("agent.pause.after_save").is_ok());
        assert!(fp.set("agent.no.such_point", Action::Error).is_err());
    }
}
