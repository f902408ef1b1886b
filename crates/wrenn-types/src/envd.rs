//! The API of envd, the daemon inside every guest (TCP port [`ENVD_PORT`]).
//!
//! Routes (all JSON unless said otherwise):
//! - `GET  /health`                       → [`Health`]
//! - `POST /exec`        [`ExecRequest`]  → [`ExecResponse`]
//! - `GET  /exec/stream`  WebSocket, messages of [`crate::stream`]
//! - `PUT  /files?path=/abs/path[&user=name]`  raw body streamed to disk → 204. The file is
//!   replaced atomically (temp file, fsync, rename); missing parent directories are created.
//!   Owned by root, or by `user` (also the directories created for it) when given.
//! - `GET  /files?path=/abs/path`  → raw bytes (`application/octet-stream`, `Content-Length`)
//! - `POST /files/list`   `fs::ListDirRequest` → `fs::ListDirResponse`
//! - `POST /files/mkdir`  `fs::MakeDirRequest` → `fs::MakeDirResponse` (409 `already_exists`)
//! - `POST /files/remove` `fs::RemoveRequest`  → 204 (a directory with everything in it)
//! - `POST /clock`       [`SetClock`]     → 204
//! - `POST /processes`  [`crate::process::StartProcess`] → 201 [`crate::process::ProcessInfo`]
//! - `GET  /processes`  → [`crate::process::ProcessList`] (running and recently finished)
//! - `DELETE /processes/{selector}?signal=SIGKILL|SIGTERM` → 204
//! - `GET  /processes/{selector}/stream`  WebSocket: the process's kept output, then live
//!   output and its exit (see [`crate::process`])
//!
//! Errors use [`crate::ErrorBody`] with an [`EnvdErrorCode`], each with its own HTTP status.

use crate::wire_enum::wire_enum;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The TCP port envd listens on inside the guest.
pub const ENVD_PORT: u16 = 49983;

/// Default cap on captured stdout and stderr (each) of a buffered exec.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 16 * 1024 * 1024;

/// The largest JSON answer to a buffered exec whose streams are capped at `cap` bytes each:
/// JSON writes one byte as at most six (`\u00XX`; base64 needs fewer), plus room for the
/// other fields. Every hop reads an exec answer up to this and refuses a longer one.
pub fn max_exec_answer_bytes(cap: usize) -> usize {
    cap.min(DEFAULT_MAX_OUTPUT_BYTES)
        .saturating_mul(2 * 6)
        .saturating_add(64 * 1024)
}

wire_enum! {
    /// The `code` of envd's error body, with the HTTP status it is answered with.
    pub enum EnvdErrorCode {
        /// Malformed body or query, relative path, bad cwd.
        BadRequest = "bad_request" (400),
        /// The command could not be started (e.g. it does not exist).
        ExecFailed = "exec_failed" (400),
        /// The user named in the request is not in the guest's /etc/passwd.
        UnknownUser = "unknown_user" (400),
        /// No such file, or no such route.
        NotFound = "not_found" (404),
        IsADirectory = "is_a_directory" (400),
        /// A parent of the path is a file.
        NotADirectory = "not_a_directory" (400),
        Forbidden = "forbidden" (403),
        PayloadTooLarge = "payload_too_large" (413),
        /// The upload's body broke off.
        UploadIncomplete = "upload_incomplete" (400),
        NoSpace = "no_space" (507),
        MethodNotAllowed = "method_not_allowed" (405),
        /// No background process has that pid or tag.
        ProcessNotFound = "process_not_found" (404),
        /// The tag names a running process, or the process table is full.
        ProcessConflict = "process_conflict" (409),
        /// `mkdir` of a path that exists.
        AlreadyExists = "already_exists" (409),
        Internal = "internal" (500),
        /// A code this build does not know (from an envd of another version); never sent.
        #[serde(other)]
        Unknown = "unknown" (500),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// Run one command to completion and return its output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub cmd: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// User to run as (a name from the guest's /etc/passwd); the daemon's user (root) if
    /// absent. The command starts in that user's home unless `cwd` is given.
    #[serde(default)]
    pub user: Option<String>,
    /// Kill the whole process group after this many seconds. `None` or 0: no limit.
    #[serde(default)]
    pub timeout_sec: Option<u64>,
    /// Cap on captured stdout and stderr, each; the rest is discarded and `truncated` set.
    #[serde(default)]
    pub max_output_bytes: Option<usize>,
}

impl ExecRequest {
    /// A request to run `cmd` without arguments, every option at its default.
    pub fn new(cmd: impl Into<String>) -> Self {
        Self {
            cmd: cmd.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            user: None,
            timeout_sec: None,
            max_output_bytes: None,
        }
    }
}

/// Output encoding of [`ExecResponse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    #[serde(rename = "utf-8")]
    Utf8,
    #[serde(rename = "base64")]
    Base64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResponse {
    pub stdout: String,
    pub stderr: String,
    /// Exit code; `-1` when killed by a signal or the timeout.
    pub exit_code: i32,
    pub duration_ms: u64,
    /// `base64` when stdout or stderr was not valid UTF-8 (then both are base64).
    pub encoding: Encoding,
    #[serde(default)]
    pub timed_out: bool,
    /// Either stream was cut at the cap (`stdout_truncated || stderr_truncated`).
    #[serde(default)]
    pub truncated: bool,
    /// stdout was cut at the cap: only its first bytes are in `stdout`, the rest was read
    /// and discarded (the command was not blocked or killed for printing).
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    /// Bytes the command wrote to stdout in all, kept or not.
    #[serde(default)]
    pub stdout_bytes: u64,
    #[serde(default)]
    pub stderr_bytes: u64,
}

/// Set the guest's wall clock (after a restore, the guest's clock is stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetClock {
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_keep_their_wire_names() {
        crate::wire_enum::assert_wire_names(EnvdErrorCode::ALL, |c| c.as_str());
        assert_eq!(EnvdErrorCode::IsADirectory.as_str(), "is_a_directory");
        assert_eq!(EnvdErrorCode::NoSpace.status(), 507);
        let body: crate::ErrorBody<EnvdErrorCode> =
            serde_json::from_str(r#"{"error":{"code":"brand_new","message":"m"}}"#).unwrap();
        assert_eq!(body.error.code, EnvdErrorCode::Unknown);
    }
}
