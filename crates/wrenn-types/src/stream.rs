//! Messages of a streamed exec over WebSocket. The same shapes are used by envd, the host
//! agent and the public `/v1/sandboxes/{id}/exec/stream` endpoint, so each hop only forwards.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a client sends: first a `start`, later optionally a `stop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Start {
        cmd: String,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    Stop,
}

/// What the server sends, as events happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Start {
        pid: u32,
    },
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    Exit {
        exit_code: i32,
    },
    Error {
        data: String,
    },
    /// Attaching to a background process: `bytes` of its earlier output were dropped from
    /// its bounded buffer before this client read them (sent before the output kept).
    Dropped {
        bytes: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_message_matches_spec_shape() {
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"start","cmd":"tail","args":["-f","/x"]}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Start {
                cmd: "tail".into(),
                args: vec!["-f".into(), "/x".into()],
                env: BTreeMap::new(),
                cwd: None,
                user: None
            }
        );
        let s = serde_json::to_string(&ServerMessage::Exit { exit_code: 3 }).unwrap();
        assert_eq!(s, r#"{"type":"exit","exit_code":3}"#);
    }
}
