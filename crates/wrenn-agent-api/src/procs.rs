//! The background-process routes of the agent API ([`paths::START_PROCESS`] and the three
//! beside it), merged into [`crate::router`]: parsing, one [`HostAgent`] call each, and the
//! attach session relayed like a streamed exec.

use crate::paths;
use crate::router::Operations;
use crate::{relay_exec, AgentApiError, AgentResult, HostAgent};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use std::sync::Arc;
use wrenn_types::agent::AgentErrorCode;
use wrenn_types::process::{KillQuery, ProcessList, Selector, Signal, StartProcess};

type Agent = State<Arc<dyn HostAgent>>;

/// The process routes, to be merged before the router's auth layer.
pub(crate) fn routes() -> Router<Arc<dyn HostAgent>> {
    Router::new()
        .operation(paths::START_PROCESS, start)
        .operation(paths::LIST_PROCESSES, list)
        .operation(paths::KILL_PROCESS, kill)
        .operation(paths::ATTACH_PROCESS, attach)
}

fn bad(message: impl Into<String>) -> AgentApiError {
    AgentApiError::new(AgentErrorCode::BadRequest, message)
}

fn selector(s: &str) -> AgentResult<String> {
    Selector::parse(s)
        .map(|s| s.to_string())
        .ok_or_else(|| bad("a process is named by its pid or its tag"))
}

async fn start(
    State(a): Agent,
    Path(id): Path<String>,
    body: Result<Json<StartProcess>, JsonRejection>,
) -> AgentResult<Response> {
    let Json(req) = body.map_err(|e| bad(e.body_text()))?;
    let info = a.start_process(&id, &req).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn list(State(a): Agent, Path(id): Path<String>) -> AgentResult<Json<ProcessList>> {
    Ok(Json(ProcessList {
        processes: a.list_processes(&id).await?,
    }))
}

async fn kill(
    State(a): Agent,
    Path((id, sel)): Path<(String, String)>,
    q: Result<Query<KillQuery>, QueryRejection>,
) -> AgentResult<StatusCode> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let signal = match q.signal.as_deref() {
        None => Signal::default(),
        Some(s) => Signal::parse(s).ok_or_else(|| bad("signal must be SIGKILL or SIGTERM"))?,
    };
    a.kill_process(&id, &selector(&sel)?, signal).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The session is opened before the upgrade, so an unknown process is an ordinary 404.
async fn attach(
    State(a): Agent,
    Path((id, sel)): Path<(String, String)>,
    ws: WebSocketUpgrade,
) -> AgentResult<Response> {
    let session = a.attach_process(&id, &selector(&sel)?).await?;
    Ok(ws
        .max_message_size(crate::MAX_WS_MESSAGE)
        .max_frame_size(crate::MAX_WS_MESSAGE)
        .on_upgrade(move |socket| relay_exec(socket, session)))
}
