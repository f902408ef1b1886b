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
//! (`wrenn_agent::failpoints`) and are left to it. The spec and the armed points are
//! `wrenn_failpoints`'s; this module holds the control plane's names and knows nothing of what
//! the points guard.

pub use wrenn_failpoints::{Action, FailpointError};

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

/// The control plane's points in a spec shared with the host agent.
#[derive(Debug)]
pub enum ControlPlanePoints {}

impl wrenn_failpoints::Points for ControlPlanePoints {
    const NAMES: &'static [&'static str] = NAMES;
    const AGENT: bool = false;
}

/// The armed points of one control plane.
pub type Failpoints = wrenn_failpoints::Failpoints<ControlPlanePoints>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn specs_parse_and_typos_are_refused() {
        let fp = Failpoints::parse(
            " pause.after_agent=kill; create.before_agent=error,destroy.after_agent=sleep(25)",
        )
        .unwrap();
        let points = fp.armed_points();
        assert_eq!(points.get("pause.after_agent"), Some(&Action::Kill));
        assert_eq!(points.get("create.before_agent"), Some(&Action::Error));
        assert_eq!(
            points.get("destroy.after_agent"),
            Some(&Action::Sleep(Duration::from_millis(25)))
        );
        assert!(fp.is_armed());
        assert!(!Failpoints::parse("").unwrap().is_armed());
        let off = Failpoints::parse("pause.after_agent=panic;pause.after_agent=off").unwrap();
        assert!(!off.is_armed());
        let off = Failpoints::parse("agent.pause.after_save=kill").unwrap();
        assert!(!off.is_armed());
        for bad in [
            "pause.after=kill",
            "pause.after_agent",
            "pause.after_agent=explode",
            "pause.after_agent=sleep(x)",
        ] {
            assert!(Failpoints::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_armed_point_fails_and_a_cleared_one_does_not() {
        let fp = Failpoints::default();
        assert!(fp.reach("pause.before_agent").is_ok());
        fp.set("pause.before_agent", Action::Error).unwrap();
        assert!(fp.reach("pause.before_agent").is_err());
        assert!(fp.reach("pause.after_agent").is_ok());
        fp.clear("pause.before_agent");
        assert!(fp.reach("pause.before_agent").is_ok());
        assert!(fp.set("no.such_point", Action::Error).is_err());
    }
}
