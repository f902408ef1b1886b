//! `/v1/capsules/{id}/exec`, `/exec/stream` and `/processes…`: commands on a capsule as the
//! SDK's `Commands` calls them — a foreground exec (200 with its output) or a background one
//! (202 with pid and tag), the streamed exec (the sandbox handler, shared), and background
//! processes: list, kill by pid or tag (`?signal=SIGKILL|SIGTERM`), attach over WebSocket.
//! One [`App`] call each; errors get the SDK's codes from `capsules::sdk_error_codes`.

use super::extract::{JsonBody, QueryArgs, Team};
use super::{proxy_exec, sandbox_id, PathArg, Res};
use crate::app::{App, ExecOutcome};
use crate::config::limits;
use crate::error::ApiError;
use axum::extract::rejection::PathRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use std::sync::Arc;
use wrenn_types::process::{CapsuleExecRequest, KillQuery};

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/capsules/{id}/exec", post(exec))
        .route("/v1/capsules/{id}/exec/stream", get(super::exec_stream))
        .route("/v1/capsules/{id}/processes", get(list))
        .route("/v1/capsules/{id}/processes/{selector}", delete(kill))
        .route("/v1/capsules/{id}/processes/{selector}/stream", get(attach))
}

/// The capsule id and the process selector of a path; rejections are API errors.
struct ProcessPath(String, String);

impl<S: Send + Sync> FromRequestParts<S> for ProcessPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map(|p| ProcessPath(p.0 .0, p.0 .1))
            .map_err(|e: PathRejection| ApiError::BadRequest(e.body_text()))
    }
}

async fn exec(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
    JsonBody(req): JsonBody<CapsuleExecRequest>,
) -> Res<Response> {
    let id = sandbox_id(id)?;
    Ok(match app.capsule_exec(&team, &id, req).await? {
        ExecOutcome::Finished(out) => Json(out).into_response(),
        ExecOutcome::Started(bg) => (StatusCode::ACCEPTED, Json(bg)).into_response(),
    })
}

async fn list(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
) -> Res<impl IntoResponse> {
    let id = sandbox_id(id)?;
    Ok(Json(app.list_processes(&team, &id).await?))
}

async fn kill(
    State(app): State<Arc<App>>,
    Team(team): Team,
    ProcessPath(id, selector): ProcessPath,
    QueryArgs(q): QueryArgs<KillQuery>,
) -> Res<StatusCode> {
    let id = sandbox_id(id)?;
    app.kill_process(&team, &id, &selector, q.signal.as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// 404 (capsule or process) and 409 come before the upgrade, as plain HTTP answers; the
/// session is relayed like a streamed exec's.
async fn attach(
    State(app): State<Arc<App>>,
    Team(team): Team,
    ProcessPath(id, selector): ProcessPath,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Res<Response> {
    let id = sandbox_id(id)?;
    let sb = app.running(&team, &id).await?;
    let ws = ws.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let slot = app.exec_slot(&sb)?;
    let session = app.attach_process(&sb, &selector).await?;
    Ok(ws
        .max_message_size(limits::MAX_JSON_BODY)
        .max_frame_size(limits::MAX_JSON_BODY)
        .on_upgrade(move |socket| proxy_exec(socket, session, app, sb, slot)))
}
