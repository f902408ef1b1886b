//! The routes of the agent API, in axum's syntax; a client fills the one `{id}` or `{name}`
//! with [`fill`]. Bodies are JSON (`wrenn_types::agent`, `wrenn_types::envd`) unless said
//! otherwise; every route answers `401` without the agent's bearer token.
//!
//! | route | methods |
//! |---|---|
//! | [`HOST`] | `GET` → `HostInfo` |
//! | [`SANDBOXES`] | `GET` → `[SandboxInfo]`; `POST` `CreateSandbox` → 201 `SandboxInfo` |
//! | [`SANDBOX`] | `GET` → `SandboxInfo`; `DELETE` → 204 |
//! | [`PAUSE`], [`RESUME`] | `POST` → `SandboxInfo` |
//! | [`SNAPSHOT`] | `POST` `SnapshotRequest` → 201 `TemplateInfo` (the sandbox is gone) |
//! | [`EXEC`] | `POST` `ExecRequest` → `ExecResponse` |
//! | [`EXEC_STREAM`] | `GET`, WebSocket of `wrenn_types::stream` messages |
//! | [`FILES`]`?path=/abs` | `PUT` raw body, streamed → 204; `GET` → raw bytes, streamed |
//! | [`TEMPLATES`] | `GET` → `[TemplateInfo]` |
//! | [`TEMPLATE`] | `DELETE` → 204 |

pub const HOST: &str = "/v1/host";
pub const SANDBOXES: &str = "/v1/sandboxes";
pub const SANDBOX: &str = "/v1/sandboxes/{id}";
pub const PAUSE: &str = "/v1/sandboxes/{id}/pause";
pub const RESUME: &str = "/v1/sandboxes/{id}/resume";
pub const SNAPSHOT: &str = "/v1/sandboxes/{id}/snapshot";
pub const EXEC: &str = "/v1/sandboxes/{id}/exec";
pub const EXEC_STREAM: &str = "/v1/sandboxes/{id}/exec/stream";
pub const FILES: &str = "/v1/sandboxes/{id}/files";
pub const TEMPLATES: &str = "/v1/templates";
pub const TEMPLATE: &str = "/v1/templates/{name}";

/// `route` with its `{…}` parameter replaced by `value`.
pub fn fill(route: &str, value: &str) -> String {
    match (route.find('{'), route.find('}')) {
        (Some(open), Some(close)) if open < close => {
            format!("{}{value}{}", &route[..open], &route[close + 1..])
        }
        _ => route.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_replaces_the_parameter() {
        assert_eq!(fill(PAUSE, "sb-1"), "/v1/sandboxes/sb-1/pause");
        assert_eq!(fill(EXEC_STREAM, "x"), "/v1/sandboxes/x/exec/stream");
        assert_eq!(fill(TEMPLATE, "t"), "/v1/templates/t");
        assert_eq!(fill(HOST, "x"), "/v1/host");
    }
}
