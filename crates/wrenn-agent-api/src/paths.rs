//! The routes of the agent API: one [`Route`] (method and path) per [`crate::HostAgent`]
//! method, used by the router and by the client. Paths are in axum's syntax; a client fills
//! the one `{id}` or `{name}` with [`Route::fill`]. Bodies are JSON (`wrenn_types::agent`,
//! `wrenn_types::envd`) unless said otherwise; every route answers `401` without the agent's
//! bearer token.
//!
//! | route | body → answer |
//! |---|---|
//! | [`HOST_INFO`] | → `HostInfo` |
//! | [`LIST_SANDBOXES`] | → `[SandboxInfo]` |
//! | [`CREATE_SANDBOX`] | `CreateSandbox` → 201 `SandboxInfo` |
//! | [`GET_SANDBOX`] | → `SandboxInfo` |
//! | [`DESTROY_SANDBOX`] | → 204 |
//! | [`PAUSE`], [`RESUME`] | → `SandboxInfo` |
//! | [`SNAPSHOT`] | `SnapshotRequest` → 201 `TemplateInfo` (the sandbox is gone) |
//! | [`EXEC`] | `ExecRequest` → `ExecResponse` |
//! | [`EXEC_STREAM`] | WebSocket of `wrenn_types::stream` messages |
//! | [`WRITE_FILE`]`?path=/abs` | raw body, streamed → 204 |
//! | [`READ_FILE`]`?path=/abs` | → raw bytes, streamed (`Content-Length` when known) |
//! | [`LIST_DIR`] | `fs::ListDirRequest` → `fs::ListDirResponse` |
//! | [`MAKE_DIR`] | `fs::MakeDirRequest` → `fs::MakeDirResponse` (409 `already_exists`) |
//! | [`REMOVE_PATH`] | `fs::RemoveRequest` → 204 |
//! | [`START_PROCESS`] | `process::StartProcess` → 201 `process::ProcessInfo` |
//! | [`LIST_PROCESSES`] | → `process::ProcessList` |
//! | [`KILL_PROCESS`]`?signal=SIGKILL\|SIGTERM` | → 204 |
//! | [`ATTACH_PROCESS`] | WebSocket of `wrenn_types::stream` events (the process's output) |
//! | [`OPEN_PTY`] | WebSocket of a terminal: `wrenn_types::pty` control text, raw bytes |
//! | [`OPEN_PORT`] | HTTP/1.1 upgrade to `wrenn-port`: raw bytes to and from the guest's port (502 `port_unreachable` when nothing listens) |
//! | [`LIST_TEMPLATES`] | → `[TemplateInfo]` |
//! | [`DELETE_TEMPLATE`] | → 204 |
//! | [`SANDBOX_METRICS`]`?range_secs=N` | → `[MetricPoint]` (`wrenn_types::observe`), oldest first |
//! | [`TEMPLATE_MANIFEST`] | → `copy::TemplateManifest` (a snapshot template's files, sizes, SHA-256) |
//! | [`TEMPLATE_FILE`]`?offset=N` | → raw bytes of one file from `N` on, streamed |
//! | [`BEGIN_COPY`] | `copy::TemplateManifest` → `copy::CopyStatus` (what a copy under way holds) |
//! | [`RECEIVE_COPY_FILE`]`?offset=N` | raw body, streamed, appended at `N` → `copy::CopyHeld` (409 if `N` is not what it holds) |
//! | [`COMMIT_COPY`] | → 201 `TemplateInfo` (409 `conflict` when a digest differs) |
//! | [`ABORT_COPY`] | → 204 |

use axum::http::Method;

/// One operation's HTTP method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
}

impl Route {
    const fn new(method: Method, path: &'static str) -> Self {
        Self { method, path }
    }

    /// The path with its two `{…}` parameters replaced by `first` and `second`.
    pub fn fill_two(&self, first: &str, second: &str) -> String {
        let once = self.fill(first);
        match (once.find('{'), once.find('}')) {
            (Some(open), Some(close)) if open < close => {
                format!("{}{second}{}", &once[..open], &once[close + 1..])
            }
            _ => once,
        }
    }

    /// The path with its `{…}` parameter replaced by `value` (unchanged if it has none).
    pub fn fill(&self, value: &str) -> String {
        let p = self.path;
        match (p.find('{'), p.find('}')) {
            (Some(open), Some(close)) if open < close => {
                format!("{}{value}{}", &p[..open], &p[close + 1..])
            }
            _ => p.to_string(),
        }
    }
}

pub const HOST_INFO: Route = Route::new(Method::GET, "/v1/host");
pub const LIST_SANDBOXES: Route = Route::new(Method::GET, "/v1/sandboxes");
pub const CREATE_SANDBOX: Route = Route::new(Method::POST, "/v1/sandboxes");
pub const GET_SANDBOX: Route = Route::new(Method::GET, "/v1/sandboxes/{id}");
pub const DESTROY_SANDBOX: Route = Route::new(Method::DELETE, "/v1/sandboxes/{id}");
pub const PAUSE: Route = Route::new(Method::POST, "/v1/sandboxes/{id}/pause");
pub const RESUME: Route = Route::new(Method::POST, "/v1/sandboxes/{id}/resume");
pub const SNAPSHOT: Route = Route::new(Method::POST, "/v1/sandboxes/{id}/snapshot");
pub const EXEC: Route = Route::new(Method::POST, "/v1/sandboxes/{id}/exec");
pub const EXEC_STREAM: Route = Route::new(Method::GET, "/v1/sandboxes/{id}/exec/stream");
pub const WRITE_FILE: Route = Route::new(Method::PUT, "/v1/sandboxes/{id}/files");
pub const READ_FILE: Route = Route::new(Method::GET, "/v1/sandboxes/{id}/files");
pub const LIST_DIR: Route = Route::new(Method::POST, "/v1/sandboxes/{id}/files/list");
pub const MAKE_DIR: Route = Route::new(Method::POST, "/v1/sandboxes/{id}/files/mkdir");
pub const REMOVE_PATH: Route = Route::new(Method::POST, "/v1/sandboxes/{id}/files/remove");
pub const START_PROCESS: Route = Route::new(Method::POST, "/v1/sandboxes/{id}/processes");
pub const LIST_PROCESSES: Route = Route::new(Method::GET, "/v1/sandboxes/{id}/processes");
pub const KILL_PROCESS: Route =
    Route::new(Method::DELETE, "/v1/sandboxes/{id}/processes/{selector}");
pub const ATTACH_PROCESS: Route = Route::new(
    Method::GET,
    "/v1/sandboxes/{id}/processes/{selector}/stream",
);
pub const OPEN_PTY: Route = Route::new(Method::GET, "/v1/sandboxes/{id}/pty");
pub const OPEN_PORT: Route = Route::new(Method::GET, "/v1/sandboxes/{id}/ports/{port}");
pub const LIST_TEMPLATES: Route = Route::new(Method::GET, "/v1/templates");
pub const DELETE_TEMPLATE: Route = Route::new(Method::DELETE, "/v1/templates/{name}");
pub const SANDBOX_METRICS: Route = Route::new(Method::GET, "/v1/sandboxes/{id}/metrics");
pub const TEMPLATE_MANIFEST: Route = Route::new(Method::GET, "/v1/templates/{name}/manifest");
pub const TEMPLATE_FILE: Route = Route::new(Method::GET, "/v1/templates/{name}/files/{file}");
pub const BEGIN_COPY: Route = Route::new(Method::PUT, "/v1/template-copies/{name}");
pub const RECEIVE_COPY_FILE: Route =
    Route::new(Method::PUT, "/v1/template-copies/{name}/files/{file}");
pub const COMMIT_COPY: Route = Route::new(Method::POST, "/v1/template-copies/{name}/commit");
pub const ABORT_COPY: Route = Route::new(Method::DELETE, "/v1/template-copies/{name}");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_replaces_the_parameter() {
        assert_eq!(PAUSE.fill("sb-1"), "/v1/sandboxes/sb-1/pause");
        assert_eq!(EXEC_STREAM.fill("x"), "/v1/sandboxes/x/exec/stream");
        assert_eq!(DELETE_TEMPLATE.fill("t"), "/v1/templates/t");
        assert_eq!(HOST_INFO.fill("x"), "/v1/host");
        assert_eq!(
            ATTACH_PROCESS.fill_two("sb", "web"),
            "/v1/sandboxes/sb/processes/web/stream"
        );
    }
}
