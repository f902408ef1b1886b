//! `POST /v1/hosts/join`: a host agent joins with a one-time token and its CSR and gets its
//! certificate (unauthenticated: the token is the credential). The rules are
//! [`App::join_host`]'s.

use super::extract::JsonBody;
use crate::app::host_join::JoinRequest;
use crate::app::App;
use crate::error::ApiError;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use std::sync::Arc;

/// The join route.
pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/v1/hosts/join", post(join))
}

async fn join(
    State(app): State<Arc<App>>,
    JsonBody(req): JsonBody<JoinRequest>,
) -> Result<Json<crate::app::host_join::JoinResponse>, ApiError> {
    Ok(Json(app.join_host(req).await?))
}
