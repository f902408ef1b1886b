//! The agent's internal HTTP API (routes in [`wrenn_types::agent`]): a thin layer that checks
//! the bearer token, parses requests, calls one [`Manager`] function and maps its error to a
//! status and error code in [`ApiError`]. No VM, network or disk work happens here.

use crate::envd_client::{self, EnvdError};
use crate::sandbox::{Manager, SandboxError};
use axum::body::Body;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use serde::Deserialize;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Message as TMessage;
use wrenn_types::agent::{codes, CreateSandbox, SnapshotRequest};
use wrenn_types::envd::ExecRequest;
use wrenn_types::ErrorBody;

/// Shared state of the API.
#[derive(Clone)]
pub struct ApiState {
    pub manager: Arc<Manager>,
    /// The bearer token every request must carry.
    pub token: Arc<String>,
}

/// The agent's router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/host", get(host))
        .route("/v1/sandboxes", get(list).post(create))
        .route("/v1/sandboxes/{id}", get(get_one).delete(destroy))
        .route("/v1/sandboxes/{id}/pause", post(pause))
        .route("/v1/sandboxes/{id}/resume", post(resume))
        .route("/v1/sandboxes/{id}/snapshot", post(snapshot))
        .route("/v1/sandboxes/{id}/exec", post(exec))
        .route("/v1/sandboxes/{id}/exec/stream", get(exec_stream))
        .route("/v1/sandboxes/{id}/files", get(read_file).put(write_file))
        .route("/v1/templates", get(templates))
        .route(
            "/v1/templates/{name}",
            axum::routing::delete(delete_template),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "no such route")
        })
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

/// An error answer: status plus the error body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody::new(code, message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<SandboxError> for ApiError {
    fn from(e: SandboxError) -> Self {
        use SandboxError as E;
        let (status, code) = match &e {
            E::BadRequest(_) => (StatusCode::BAD_REQUEST, codes::BAD_REQUEST),
            E::NotFound(_) => (StatusCode::NOT_FOUND, codes::NOT_FOUND),
            E::TemplateNotFound(_) => (StatusCode::NOT_FOUND, codes::TEMPLATE_NOT_FOUND),
            E::Conflict(_) => (StatusCode::CONFLICT, codes::CONFLICT),
            E::AlreadyExists(_) => (StatusCode::CONFLICT, codes::ALREADY_EXISTS),
            E::Capacity(_) => (StatusCode::SERVICE_UNAVAILABLE, codes::CAPACITY),
            E::Envd(inner) => return envd_error(inner),
            E::Vm(_) | E::Net(_) | E::Disk(_) | E::Io { .. } => {
                tracing::error!("{e}");
                (StatusCode::INTERNAL_SERVER_ERROR, codes::INTERNAL)
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<EnvdError> for ApiError {
    fn from(e: EnvdError) -> Self {
        envd_error(&e)
    }
}

fn envd_error(e: &EnvdError) -> ApiError {
    match e {
        EnvdError::Api {
            status,
            code,
            message,
        } => {
            let code = match code.as_str() {
                "not_found" => codes::FILE_NOT_FOUND,
                "payload_too_large" => codes::TOO_LARGE,
                "internal" => codes::INTERNAL,
                _ => codes::BAD_REQUEST,
            };
            let status = StatusCode::from_u16(*status)
                .ok()
                .filter(|s| s.is_client_error())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            ApiError::new(status, code, message.clone())
        }
        other => ApiError::new(StatusCode::BAD_GATEWAY, codes::INTERNAL, other.to_string()),
    }
}

async fn auth(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.as_bytes(), st.token.as_bytes()));
    if !ok {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            codes::UNAUTHORIZED,
            "missing or wrong agent token",
        )
        .into_response();
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

type ApiResult<T> = Result<T, ApiError>;

/// JSON bodies with errors in our format instead of axum's plain-text rejections.
struct JsonBody<T>(T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                codes::BAD_REQUEST,
                e.body_text(),
            )),
        }
    }
}

async fn host(State(st): State<ApiState>) -> impl IntoResponse {
    Json(st.manager.host_info().await)
}

async fn list(State(st): State<ApiState>) -> impl IntoResponse {
    Json(st.manager.list().await)
}

async fn create(
    State(st): State<ApiState>,
    JsonBody(req): JsonBody<CreateSandbox>,
) -> ApiResult<impl IntoResponse> {
    let info = st
        .manager
        .create(&req.id, &req.template, req.vcpus, req.memory_mb)
        .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn get_one(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(st.manager.get(&id).await?))
}

async fn destroy(State(st): State<ApiState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    st.manager.destroy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(State(st): State<ApiState>, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    Ok(Json(st.manager.pause(&id).await?))
}

async fn resume(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(st.manager.resume(&id).await?))
}

async fn snapshot(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<SnapshotRequest>,
) -> ApiResult<impl IntoResponse> {
    let t = st.manager.snapshot(&id, &req.name, req.overwrite).await?;
    Ok((StatusCode::CREATED, Json(t)))
}

async fn exec(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ExecRequest>,
) -> ApiResult<impl IntoResponse> {
    let envd = st.manager.envd(&id).await?;
    Ok(Json(envd.exec(&req).await?))
}

#[derive(Deserialize)]
struct FileQuery {
    path: String,
}

async fn write_file(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
    body: Body,
) -> ApiResult<StatusCode> {
    let envd = st.manager.envd(&id).await?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    envd.write_file(&q.path, reqwest::Body::wrap_stream(stream))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn read_file(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
) -> ApiResult<Response> {
    let envd = st.manager.envd(&id).await?;
    let resp = envd.read_file(&q.path).await?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = resp.headers().get(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, len.clone());
    }
    let body = Body::from_stream(resp.bytes_stream());
    Ok((headers, body).into_response())
}

async fn exec_stream(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let envd = st.manager.envd(&id).await?;
    let upstream = envd.exec_stream().await?;
    Ok(ws.on_upgrade(move |socket| pipe(socket, upstream)))
}

/// Forwards text frames both ways until either side closes.
async fn pipe(client: WebSocket, upstream: envd_client::ExecStream) {
    let (mut c_tx, mut c_rx) = client.split();
    let (mut u_tx, mut u_rx) = upstream.split();
    let down = async {
        while let Some(Ok(m)) = u_rx.next().await {
            let out = match m {
                TMessage::Text(t) => WsMessage::Text(t.as_str().into()),
                TMessage::Close(_) => break,
                _ => continue,
            };
            if c_tx.send(out).await.is_err() {
                break;
            }
        }
        let _ = c_tx.send(WsMessage::Close(None)).await;
    };
    let up = async {
        while let Some(Ok(m)) = c_rx.next().await {
            let out = match m {
                WsMessage::Text(t) => TMessage::Text(t.as_str().into()),
                WsMessage::Close(_) => break,
                _ => continue,
            };
            if u_tx.send(out).await.is_err() {
                break;
            }
        }
        // The client went away: closing upstream makes envd kill the process.
        let _ = u_tx.send(TMessage::Close(None)).await;
    };
    tokio::select! {
        _ = down => {},
        _ = up => {},
    }
}

async fn templates(State(st): State<ApiState>) -> impl IntoResponse {
    Json(st.manager.templates())
}

async fn delete_template(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    st.manager.delete_template(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn envd_not_found_maps_to_file_not_found() {
        let e = envd_error(&EnvdError::Api {
            status: 404,
            code: "not_found".into(),
            message: "no such file".into(),
        });
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.body.error.code, codes::FILE_NOT_FOUND);
        let e = envd_error(&EnvdError::Protocol("x".into()));
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
    }
}
