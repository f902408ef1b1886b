//! The HTTP surface of envd: routes, request parsing and the one mapping from domain errors to
//! the [`EnvdErrorCode`]s of [`ErrorBody`] (each code carries its HTTP status).
//!
//! Handlers only parse and validate, call one function of [`crate::exec`], [`crate::stream`],
//! [`crate::files`], [`crate::fsops`] or [`crate::clock`], and translate its result. No
//! process or file logic lives here.

use crate::clock::{self, ClockError};
use crate::exec::{self, ExecError};
use crate::files::{self, FileError};
use crate::fsops;
use crate::process::SpawnError;
use crate::stream;
use crate::users::{UserDb, UserError};
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use tokio_util::io::ReaderStream;
use wrenn_types::envd::{EnvdErrorCode, ExecRequest, ExecResponse, Health, SetClock};
use wrenn_types::fs::{
    ListDirRequest, ListDirResponse, MakeDirRequest, MakeDirResponse, RemoveRequest,
};
use wrenn_types::ErrorBody;

/// Largest WebSocket message (and frame) a client may send (a `start` with its arguments).
pub(crate) const MAX_WS_MESSAGE: usize = 1024 * 1024;
/// Read size when streaming a file out.
const FILE_CHUNK: usize = 64 * 1024;

/// Settings shared by every request.
#[derive(Debug, Clone)]
pub struct AppState {
    pub users: UserDb,
    /// Upper bound on captured output per stream of a buffered exec.
    pub max_output_bytes: usize,
    /// Upper bound on one upload; `None`: only the disk limits it.
    pub max_upload_bytes: Option<u64>,
    /// Background processes (routes in [`crate::procs_api`]).
    pub procs: Arc<crate::procs::Table>,
    /// Interactive terminals (route in [`crate::pty_session`]).
    pub terminals: Arc<crate::pty::Terminals>,
}

/// envd's error answer: a code (with its status) and a message, sent as
/// `{"error":{"code","message"}}`.
#[derive(Debug)]
pub struct EnvdApiError {
    code: EnvdErrorCode,
    message: String,
}

impl EnvdApiError {
    pub(crate) fn new(code: EnvdErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(EnvdErrorCode::BadRequest, message)
    }
}

impl IntoResponse for EnvdApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(code = self.code.as_str(), message = %self.message, "request failed");
        } else {
            tracing::debug!(code = self.code.as_str(), message = %self.message, "request refused");
        }
        (status, Json(ErrorBody::with_code(self.code, self.message))).into_response()
    }
}

fn user_code(e: &UserError) -> EnvdErrorCode {
    match e {
        UserError::Unknown(_) => EnvdErrorCode::UnknownUser,
        UserError::Read { .. } => EnvdErrorCode::Internal,
    }
}

impl From<UserError> for EnvdApiError {
    fn from(e: UserError) -> Self {
        Self::new(user_code(&e), e.to_string())
    }
}

impl From<SpawnError> for EnvdApiError {
    fn from(e: SpawnError) -> Self {
        match e {
            SpawnError::Invalid(_) | SpawnError::Cwd { .. } => Self::bad_request(e.to_string()),
            SpawnError::User(u) => u.into(),
            SpawnError::Exec { .. } => Self::new(EnvdErrorCode::ExecFailed, e.to_string()),
        }
    }
}

impl From<ExecError> for EnvdApiError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Spawn(s) => s.into(),
            ExecError::Wait(_) => Self::new(EnvdErrorCode::Internal, e.to_string()),
        }
    }
}

impl From<FileError> for EnvdApiError {
    fn from(e: FileError) -> Self {
        let code = match &e {
            FileError::InvalidPath(_) => EnvdErrorCode::BadRequest,
            FileError::NotFound(_) => EnvdErrorCode::NotFound,
            FileError::IsADirectory(_) => EnvdErrorCode::IsADirectory,
            FileError::NotADirectory(_) => EnvdErrorCode::NotADirectory,
            FileError::AlreadyExists(_) => EnvdErrorCode::AlreadyExists,
            FileError::PermissionDenied(_) => EnvdErrorCode::Forbidden,
            FileError::User(u) => user_code(u),
            FileError::TooLarge { .. } => EnvdErrorCode::PayloadTooLarge,
            FileError::NoSpace(_) => EnvdErrorCode::NoSpace,
            FileError::Upload(_) => EnvdErrorCode::UploadIncomplete,
            FileError::Io { .. } => EnvdErrorCode::Internal,
        };
        Self::new(code, e.to_string())
    }
}

impl From<ClockError> for EnvdApiError {
    fn from(e: ClockError) -> Self {
        match e {
            ClockError::OutOfRange(_) => Self::bad_request(e.to_string()),
            ClockError::Set(_) => Self::new(EnvdErrorCode::Internal, e.to_string()),
        }
    }
}

fn json_rejection(r: JsonRejection) -> EnvdApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        EnvdApiError::new(EnvdErrorCode::PayloadTooLarge, r.body_text())
    } else {
        EnvdApiError::bad_request(r.body_text())
    }
}

/// Builds the router with every envd route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/exec", post(exec_buffered))
        .route("/exec/stream", get(exec_stream))
        .route("/files", get(read_file).put(write_file))
        .route("/files/list", post(list_dir))
        .route("/files/mkdir", post(make_dir))
        .route("/files/remove", post(remove_path))
        .route("/clock", post(set_clock))
        .merge(crate::procs_api::routes())
        .merge(crate::pty_session::routes())
        .fallback(|| async { EnvdApiError::new(EnvdErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            EnvdApiError::new(
                EnvdErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .with_state(Arc::new(state))
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

async fn exec_buffered(
    State(st): State<Arc<AppState>>,
    req: Result<Json<ExecRequest>, JsonRejection>,
) -> Result<Json<ExecResponse>, EnvdApiError> {
    let Json(req) = req.map_err(json_rejection)?;
    Ok(Json(exec::run(&st.users, &req, st.max_output_bytes).await?))
}

async fn exec_stream(
    State(st): State<Arc<AppState>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, EnvdApiError> {
    let ws = ws.map_err(|r| EnvdApiError::bad_request(r.body_text()))?;
    let users = st.users.clone();
    Ok(ws
        .max_message_size(MAX_WS_MESSAGE)
        .max_frame_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| stream::session(socket, users)))
}

#[derive(Debug, Deserialize)]
struct FileQuery {
    path: String,
    /// Owner of a written file (and of directories created for it); root if absent.
    #[serde(default)]
    user: Option<String>,
}

fn file_query(q: Result<Query<FileQuery>, QueryRejection>) -> Result<FileQuery, EnvdApiError> {
    q.map(|Query(q)| q)
        .map_err(|r| EnvdApiError::bad_request(r.body_text()))
}

async fn read_file(q: Result<Query<FileQuery>, QueryRejection>) -> Result<Response, EnvdApiError> {
    let q = file_query(q)?;
    let path = files::parse_path(&q.path)?;
    let (file, len) = files::open_read(&path).await?;
    let body = Body::from_stream(ReaderStream::with_capacity(file, FILE_CHUNK));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

async fn write_file(
    State(st): State<Arc<AppState>>,
    q: Result<Query<FileQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, EnvdApiError> {
    let q = file_query(q)?;
    let path = files::parse_path(&q.path)?;
    if let (Some(limit), Some(len)) = (st.max_upload_bytes, content_length(&headers)) {
        if len > limit {
            return Err(FileError::TooLarge { limit }.into());
        }
    }
    let owner = match &q.user {
        Some(name) => Some(st.users.by_name(name)?),
        None => None,
    };
    let written = files::write(
        &path,
        body.into_data_stream(),
        owner.as_ref(),
        st.max_upload_bytes,
    )
    .await?;
    tracing::info!(path = %path.display(), bytes = written, "file written");
    Ok(StatusCode::NO_CONTENT)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

async fn list_dir(
    req: Result<Json<ListDirRequest>, JsonRejection>,
) -> Result<Json<ListDirResponse>, EnvdApiError> {
    let Json(req) = req.map_err(json_rejection)?;
    let dir = fsops::parse_any_path(&req.path)?;
    Ok(Json(fsops::list(dir, req.depth.unwrap_or(1)).await?))
}

async fn make_dir(
    req: Result<Json<MakeDirRequest>, JsonRejection>,
) -> Result<Json<MakeDirResponse>, EnvdApiError> {
    let Json(req) = req.map_err(json_rejection)?;
    let dir = fsops::parse_any_path(&req.path)?;
    let entry = fsops::mkdir(dir).await?;
    tracing::info!(path = %entry.path, "directory created");
    Ok(Json(MakeDirResponse { entry }))
}

async fn remove_path(
    req: Result<Json<RemoveRequest>, JsonRejection>,
) -> Result<StatusCode, EnvdApiError> {
    let Json(req) = req.map_err(json_rejection)?;
    let path = fsops::parse_any_path(&req.path)?;
    fsops::remove(path.clone()).await?;
    tracing::info!(path = %path.display(), "path removed");
    Ok(StatusCode::NO_CONTENT)
}

async fn set_clock(req: Result<Json<SetClock>, JsonRejection>) -> Result<StatusCode, EnvdApiError> {
    let Json(req) = req.map_err(json_rejection)?;
    clock::set_realtime(req.unix_ms)?;
    Ok(StatusCode::NO_CONTENT)
}
