//! `/v1/capsules/{id}/files/{list,mkdir,remove}`: a capsule's directories, as the SDK's
//! `Files.list`, `make_dir` and `remove` call them (JSON bodies). One [`App`] call each.

use super::extract::{JsonBody, Team};
use super::{sandbox_id, PathArg, Res};
use crate::app::App;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use std::sync::Arc;
use wrenn_types::fs::{ListDirRequest, MakeDirRequest, MakeDirResponse, RemoveRequest};

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/capsules/{id}/files/list", post(list))
        .route("/v1/capsules/{id}/files/mkdir", post(mkdir))
        .route("/v1/capsules/{id}/files/remove", post(remove))
}

async fn list(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
    JsonBody(req): JsonBody<ListDirRequest>,
) -> Res<impl IntoResponse> {
    let id = sandbox_id(id)?;
    Ok(Json(app.list_dir(&team, &id, req).await?))
}

async fn mkdir(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
    JsonBody(req): JsonBody<MakeDirRequest>,
) -> Res<impl IntoResponse> {
    let id = sandbox_id(id)?;
    let entry = app.make_dir(&team, &id, &req.path).await?;
    Ok(Json(MakeDirResponse { entry }))
}

async fn remove(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
    JsonBody(req): JsonBody<RemoveRequest>,
) -> Res<StatusCode> {
    let id = sandbox_id(id)?;
    app.remove_path(&team, &id, &req.path).await?;
    Ok(StatusCode::NO_CONTENT)
}
