//! The HTTP surface of background processes (`/processes`, merged into [`crate::api`]'s
//! router): request parsing and the mapping of [`ProcError`] to envd's error codes. The
//! table is [`crate::procs`]'s, the attach session [`crate::attach`]'s.

use crate::api::{AppState, EnvdApiError};
use crate::attach;
use crate::procs::ProcError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use std::sync::Arc;
use wrenn_types::envd::EnvdErrorCode;
use wrenn_types::process::{KillQuery, ProcessList, Selector, Signal, StartProcess};

/// The `/processes` routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/processes", get(list).post(start))
        .route("/processes/{selector}", delete(kill))
        .route("/processes/{selector}/stream", get(attach_stream))
}

impl From<ProcError> for EnvdApiError {
    fn from(e: ProcError) -> Self {
        match e {
            ProcError::Spawn(s) => s.into(),
            ProcError::Invalid(m) => Self::new(EnvdErrorCode::BadRequest, m),
            ProcError::NotFound(m) => Self::new(EnvdErrorCode::ProcessNotFound, m),
            ProcError::Conflict(m) => Self::new(EnvdErrorCode::ProcessConflict, m),
        }
    }
}

fn selector(s: &str) -> Result<Selector, EnvdApiError> {
    Selector::parse(s).ok_or_else(|| {
        EnvdApiError::new(
            EnvdErrorCode::BadRequest,
            "a process is named by its pid or its tag",
        )
    })
}

async fn start(
    State(st): State<Arc<AppState>>,
    req: Result<Json<StartProcess>, JsonRejection>,
) -> Result<Response, EnvdApiError> {
    let Json(req) = req.map_err(|r| EnvdApiError::new(EnvdErrorCode::BadRequest, r.body_text()))?;
    let proc = st.procs.start(&st.users, &req)?;
    Ok((StatusCode::CREATED, Json(proc.info())).into_response())
}

async fn list(State(st): State<Arc<AppState>>) -> Json<ProcessList> {
    Json(ProcessList {
        processes: st.procs.list(),
    })
}

async fn kill(
    State(st): State<Arc<AppState>>,
    Path(sel): Path<String>,
    q: Result<Query<KillQuery>, QueryRejection>,
) -> Result<StatusCode, EnvdApiError> {
    let sel = selector(&sel)?;
    let Query(q) = q.map_err(|r| EnvdApiError::new(EnvdErrorCode::BadRequest, r.body_text()))?;
    let signal = match q.signal.as_deref() {
        None => Signal::default(),
        Some(s) => Signal::parse(s).ok_or_else(|| {
            EnvdApiError::new(
                EnvdErrorCode::BadRequest,
                "signal must be SIGKILL or SIGTERM",
            )
        })?,
    };
    st.procs.kill(&sel, signal)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The process is looked up before the upgrade, so an unknown one is a plain 404.
async fn attach_stream(
    State(st): State<Arc<AppState>>,
    Path(sel): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, EnvdApiError> {
    let proc = st.procs.find(&selector(&sel)?)?;
    let ws = ws.map_err(|r| EnvdApiError::new(EnvdErrorCode::BadRequest, r.body_text()))?;
    // The session only reads what it is sent to ignore it; a client still cannot send more
    // than a `start` message's worth.
    Ok(ws
        .max_message_size(crate::api::MAX_WS_MESSAGE)
        .max_frame_size(crate::api::MAX_WS_MESSAGE)
        .on_upgrade(move |socket| attach::session(socket, proc)))
}
