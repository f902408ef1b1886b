//! Background processes in a sandbox, on every hop: envd keeps them (`/processes`), the agent
//! passes them on (`/v1/sandboxes/{id}/processes`), and the public API serves them under
//! `/v1/capsules/{id}/exec` (with `background: true`) and `/v1/capsules/{id}/processes`.
//!
//! A process is named by a *selector*: its pid (digits) or its tag. A tag is 1 to
//! [`MAX_TAG_BYTES`] bytes of `[A-Za-z0-9._-]` and not all digits, so a selector is never
//! ambiguous and is safe in a URL path as it is. Attaching to a process streams the messages
//! of [`crate::stream::ServerMessage`]: `start`, then `dropped` if older output is gone, the
//! output kept since then and live output, then `exit`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest tag.
pub const MAX_TAG_BYTES: usize = 64;

/// Whether `tag` may name a background process.
pub fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= MAX_TAG_BYTES
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !tag.bytes().all(|b| b.is_ascii_digit())
}

/// A process named by pid or by tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Pid(u32),
    Tag(String),
}

impl Selector {
    /// Reads a selector: digits are a pid, a valid tag is a tag; anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        if !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse().ok().filter(|p| *p > 0).map(Selector::Pid);
        }
        valid_tag(s).then(|| Selector::Tag(s.to_string()))
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Pid(p) => write!(f, "{p}"),
            Selector::Tag(t) => f.write_str(t),
        }
    }
}

/// Start a process in the background (envd's and the agent's `POST …/processes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartProcess {
    pub cmd: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// User to run as; the daemon's user (root) if absent.
    #[serde(default)]
    pub user: Option<String>,
    /// The process's tag; envd makes one (`proc-<pid>`) if absent.
    #[serde(default)]
    pub tag: Option<String>,
}

/// One background process, running or finished (a finished one is kept for a while with its
/// exit code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tag: String,
    pub cmd: String,
    #[serde(default)]
    pub args: Vec<String>,
    pub running: bool,
    /// Set once the process has exited (`-1` when a signal ended it).
    #[serde(default)]
    pub exit_code: Option<i32>,
}

/// `GET …/processes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessList {
    pub processes: Vec<ProcessInfo>,
}

/// The signals a process may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Signal {
    #[default]
    #[serde(rename = "SIGKILL")]
    Kill,
    #[serde(rename = "SIGTERM")]
    Term,
}

impl Signal {
    /// The wire name (`SIGKILL`, `SIGTERM`).
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Kill => "SIGKILL",
            Signal::Term => "SIGTERM",
        }
    }

    /// Reads a wire name; `KILL`/`TERM` and the numbers 9 and 15 are accepted too.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim_start_matches("SIG") {
            "KILL" | "9" => Some(Signal::Kill),
            "TERM" | "15" => Some(Signal::Term),
            _ => None,
        }
    }
}

/// The query of the kill routes: `?signal=SIGKILL|SIGTERM` (SIGKILL if absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillQuery {
    #[serde(default)]
    pub signal: Option<String>,
}

/// `POST /v1/capsules/{id}/exec`: a command in the foreground (answered with its output) or
/// in the background (answered 202 with its pid and tag).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapsuleExecRequest {
    pub cmd: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Foreground only.
    #[serde(default)]
    pub timeout_sec: Option<i64>,
    #[serde(default)]
    pub background: bool,
    /// Background only.
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default, alias = "env")]
    pub envs: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
}

/// The 202 answer of a background exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackgroundExecResponse {
    pub sandbox_id: String,
    pub capsule_id: String,
    pub cmd: String,
    pub pid: u32,
    pub tag: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_pids_or_tags() {
        assert_eq!(Selector::parse("42"), Some(Selector::Pid(42)));
        assert_eq!(
            Selector::parse("web-1"),
            Some(Selector::Tag("web-1".into()))
        );
        assert_eq!(Selector::parse("0"), None);
        assert_eq!(Selector::parse("99999999999"), None);
        assert_eq!(Selector::parse("a/b"), None);
        assert_eq!(Selector::parse(""), None);
        assert_eq!(Selector::parse(&"x".repeat(65)), None);
        assert!(valid_tag("proc-12"));
        assert!(!valid_tag("123"));
        assert!(!valid_tag("a b"));
    }

    #[test]
    fn signals_and_requests_keep_their_wire_shapes() {
        assert_eq!(
            serde_json::to_string(&Signal::Term).unwrap(),
            r#""SIGTERM""#
        );
        assert_eq!(Signal::parse("SIGKILL"), Some(Signal::Kill));
        assert_eq!(Signal::parse("TERM"), Some(Signal::Term));
        assert_eq!(Signal::parse("SIGHUP"), None);
        let r: CapsuleExecRequest = serde_json::from_str(
            r#"{"cmd":"/bin/sh","args":["-c","x"],"background":true,"envs":{"A":"1"},"tag":"t"}"#,
        )
        .unwrap();
        assert!(r.background);
        assert_eq!(r.envs.get("A").map(String::as_str), Some("1"));
        let r: CapsuleExecRequest = serde_json::from_str(r#"{"cmd":"x","env":{"B":"2"}}"#).unwrap();
        assert_eq!(r.envs.get("B").map(String::as_str), Some("2"));
    }
}
