//! The control messages of an interactive terminal (`/v1/capsules/{id}/pty` and envd's
//! `/pty`), as the SDK frames them: JSON text messages for control ([`PtyClientMessage`] from
//! the client, [`PtyServerMessage`] from the server), raw binary messages for keystrokes and
//! output. Every hop passes both kinds through unchanged.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest keystroke (binary) message a client may send.
pub const MAX_PTY_INPUT: usize = 64 * 1024;
/// Largest control (text) message a client may send (a `start` with its arguments).
pub const MAX_PTY_CONTROL: usize = 256 * 1024;
/// Largest terminal side, in columns or rows.
pub const MAX_PTY_SIDE: u16 = 1000;
/// Longest tag.
pub const MAX_PTY_TAG: usize = 64;

fn default_cols() -> u16 {
    80
}
fn default_rows() -> u16 {
    24
}
fn default_cmd() -> String {
    "/bin/bash".into()
}

/// A control message from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PtyClientMessage {
    /// Starts a new terminal running `cmd` with `args`.
    Start {
        #[serde(default = "default_cmd")]
        cmd: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        args: Vec<String>,
        #[serde(default = "default_cols")]
        cols: u16,
        #[serde(default = "default_rows")]
        rows: u16,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        envs: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// Attaches to the running terminal named `tag`; its recent output is replayed first.
    Connect { tag: String },
    /// New window size.
    Resize { cols: u16, rows: u16 },
    /// SIGKILL to the terminal's process group.
    Kill,
    /// Answered with `pong`.
    Ping,
    /// The answer to a server's `ping`.
    Pong,
}

/// A control message from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PtyServerMessage {
    /// The terminal runs (started, or connected to): its process and its tag.
    Started { pid: u32, tag: String },
    /// The terminal's process ended with this code (128+n for a signal n).
    Exit { exit_code: i32 },
    /// Something went wrong; `fatal` ends the session.
    Error { data: String, fatal: bool },
    /// Keepalive; the client answers `pong`.
    Ping,
    /// The answer to a client's `ping`.
    Pong,
}

impl PtyServerMessage {
    /// A fatal or non-fatal error message.
    pub fn error(data: impl Into<String>, fatal: bool) -> Self {
        Self::Error {
            data: data.into(),
            fatal,
        }
    }

    /// The JSON text of this message.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"type":"error","data":"unencodable","fatal":true}"#.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_start_parses_with_defaults() {
        let m: PtyClientMessage =
            serde_json::from_str(r#"{"type":"start","cmd":"/bin/sh","cols":100,"rows":30}"#)
                .unwrap();
        match m {
            PtyClientMessage::Start {
                cmd,
                cols,
                rows,
                args,
                ..
            } => {
                assert_eq!((cmd.as_str(), cols, rows), ("/bin/sh", 100, 30));
                assert!(args.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let s = PtyServerMessage::Started {
            pid: 7,
            tag: "t".into(),
        }
        .to_text();
        assert_eq!(s, r#"{"type":"started","pid":7,"tag":"t"}"#);
        let e = PtyServerMessage::Exit { exit_code: 3 }.to_text();
        assert_eq!(e, r#"{"type":"exit","exit_code":3}"#);
    }
}
