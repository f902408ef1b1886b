//! `/v1/capsules`: the routes the Wrenn SDK calls for a capsule's life (create, list, get,
//! destroy, pause, resume, ping) and its files (read, write, streamed read and write — the
//! sandbox handlers of `api`, shared — and list, mkdir, remove in `capsule_files`). Each
//! handler calls one [`App`] method, the same as `/v1/sandboxes`'. Also here: the SDK's
//! error codes ([`sdk_error_codes`]), which every `/v1/capsules` answer is given.

use super::capsule_files;
use super::extract::{OptionalJson, Team};
use super::{
    destroy_sandbox, files_read, files_stream_write, files_write, ping, sandbox_id, PathArg, Res,
};
use crate::app::App;
use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::handler::Handler;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use wrenn_types::capsule::CreateCapsuleRequest;
use wrenn_types::ErrorBody;

/// Largest error body rewritten by [`sdk_error_codes`] (larger ones pass unchanged).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The capsule routes, merged into the public router; the quick ones answer `504 timeout`
/// after `cfg.request_timeout`, as `/v1/sandboxes`' do.
pub(super) fn routes(app: &Arc<App>) -> Router<Arc<App>> {
    let quick = axum::middleware::from_fn_with_state(app.clone(), super::deadline);
    Router::new()
        .route("/v1/capsules", post(create).get(list.layer(quick.clone())))
        .route(
            "/v1/capsules/{id}",
            get(get_one.layer(quick.clone())).delete(destroy_sandbox),
        )
        .route("/v1/capsules/{id}/pause", post(pause))
        .route("/v1/capsules/{id}/resume", post(resume))
        .route("/v1/capsules/{id}/ping", post(ping.layer(quick)))
        .route(
            "/v1/capsules/{id}/files/write",
            post(files_write).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/capsules/{id}/files/read", post(files_read))
        .route(
            "/v1/capsules/{id}/files/stream/write",
            post(files_stream_write).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/capsules/{id}/files/stream/read", post(files_read))
        .merge(capsule_files::routes())
}

/// The SDK's name for one of our error codes (`wrenn.exceptions` maps these to its
/// exception classes; `not_found` is how it sees a capsule gone after a destroy).
pub fn sdk_code(code: &str) -> &str {
    match code {
        "bad_request" | "invalid_json" | "unsupported_media_type" => "invalid_request",
        "sandbox_not_found" | "template_not_found" | "file_not_found" | "not_found" => "not_found",
        "sandbox_not_running" | "sandbox_not_paused" => "invalid_state",
        "snapshot_exists" | "name_reserved" => "conflict",
        "no_capacity" | "host_unreachable" => "host_unavailable",
        "invalid_credentials" => "unauthorized",
        other => other,
    }
}

/// Middleware: on `/v1/capsules` paths, an error body's `code` becomes the SDK's
/// ([`sdk_code`]); status and message are unchanged. Other paths, and a guest's answers
/// through the port proxy, pass untouched.
pub(super) async fn sdk_error_codes(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let capsules = path == "/v1/capsules" || path.starts_with("/v1/capsules/");
    let resp = next.run(req).await;
    // A capsule's own answer through the port proxy is the guest's, never rewritten.
    let guests = resp.extensions().get::<super::proxy::Proxied>().is_some();
    if !capsules || guests || !(resp.status().is_client_error() || resp.status().is_server_error())
    {
        return resp;
    }
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ERROR_BODY).await else {
        return ApiError::Internal("error body too large".into()).into_response();
    };
    let rewritten = serde_json::from_slice::<ErrorBody>(&bytes)
        .ok()
        .and_then(|mut b| {
            b.error.code = sdk_code(&b.error.code).to_string();
            serde_json::to_vec(&b).ok()
        });
    let out = rewritten.unwrap_or_else(|| bytes.to_vec());
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

async fn create(
    State(app): State<Arc<App>>,
    Team(team): Team,
    OptionalJson(req): OptionalJson<CreateCapsuleRequest>,
) -> Res<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(app.create_capsule(&team, req).await?),
    ))
}

async fn list(State(app): State<Arc<App>>, Team(team): Team) -> Res<impl IntoResponse> {
    Ok(Json(app.list_capsules(&team).await?))
}

async fn get_one(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
) -> Res<impl IntoResponse> {
    let id = sandbox_id(id)?;
    Ok(Json(app.get_capsule(&team, &id).await?))
}

async fn pause(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
) -> Res<impl IntoResponse> {
    let id = sandbox_id(id)?;
    Ok(Json(app.pause_capsule(&team, &id).await?))
}

async fn resume(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
) -> Res<impl IntoResponse> {
    let id = sandbox_id(id)?;
    Ok(Json(app.resume_capsule(&team, &id).await?))
}

#[cfg(test)]
mod tests {
    use super::sdk_code;

    #[test]
    fn codes_the_sdk_knows() {
        assert_eq!(sdk_code("sandbox_not_found"), "not_found");
        assert_eq!(sdk_code("file_not_found"), "not_found");
        assert_eq!(sdk_code("bad_request"), "invalid_request");
        assert_eq!(sdk_code("sandbox_not_running"), "invalid_state");
        assert_eq!(sdk_code("conflict"), "conflict");
        assert_eq!(sdk_code("agent_error"), "agent_error");
        assert_eq!(sdk_code("quota_exceeded"), "quota_exceeded");
    }
}
