//! The public HTTP API (`openapi.yaml`): the axum router, one thin handler per operation,
//! the WebSocket exec proxy and the streaming file transfers. Handlers parse and validate
//! the request, call one [`App`] method and shape the answer; errors go through
//! [`ApiError`]. Unknown routes, wrong methods and panics answer with the error body too.
//! `/v1/capsules` is `capsules` (with `capsule_files`), sharing the sandbox handlers.
//! Stats, usage, a capsule's metrics and the events stream are `capsule_observe`.
//! Also here: `GET /metrics` (not part of the public spec, unauthenticated), the OAuth
//! routes (`oauth`), the console's session cookie (`session`), the embedded web console
//! served at `/` (`console`) and the per-request middleware (`observe`). No rules: those are
//! [`App`]'s.

mod capsule_commands;
mod capsule_files;
mod capsule_observe;
mod capsule_pty;
mod capsules;
mod console;
mod extract;
mod hosts_join;
mod oauth;
mod observe;
mod proxy;
mod session;

use crate::agent::{ByteStream, ExecSession};
use crate::app::App;
use crate::config::limits;
use crate::error::ApiError;
use crate::metrics::CONTENT_TYPE_TEXT;
use crate::store::SandboxRecord;
use axum::body::{Body, Bytes};
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::rejection::PathRejection;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Multipart, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use extract::{ClientAddr, JsonBody, OptionalJson, QueryArgs, Team, User};
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::mpsc;
use tower_http::catch_panic::CatchPanicLayer;
use wrenn_types::api;
use wrenn_types::ids::{SandboxId, TemplateName};
use wrenn_types::stream::ServerMessage;

pub use console::built as console_built;

/// The spec this router implements, served at `GET /openapi.yaml`.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

/// Room for multipart headers and boundaries on top of the file size limit.
const MULTIPART_SLACK: u64 = 64 * 1024;
/// Chunks in flight between an upload and the agent request.
const UPLOAD_CHANNEL: usize = 8;

/// A path segment; rejections are API errors.
struct PathArg(String);

impl<S: Send + Sync> FromRequestParts<S> for PathArg {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| PathArg(p.0))
            .map_err(|e: PathRejection| ApiError::BadRequest(e.body_text()))
    }
}

/// A sandbox (capsule) id from a path, made once per request: one that breaks the naming
/// rule names no sandbox, and is answered as an unknown one is (404 `not_found`).
pub(super) fn sandbox_id(id: String) -> Result<SandboxId, ApiError> {
    SandboxId::new(id).map_err(|e| ApiError::SandboxNotFound(e.0))
}

/// A template (snapshot) name from a path: one that breaks the naming rule names no
/// template, and is answered as an unknown one is (404 `not_found`).
fn template_name(name: String) -> Result<TemplateName, ApiError> {
    TemplateName::new(name).map_err(|e| ApiError::TemplateNotFound(e.0))
}

/// Builds the public API router over an [`App`].
pub fn router(app: Arc<App>) -> Router {
    // Quick requests are answered `504 timeout` after `cfg.request_timeout`.
    let quick = axum::middleware::from_fn_with_state(app.clone(), deadline);
    Router::new()
        .route("/openapi.yaml", get(openapi))
        .route("/metrics", get(metrics))
        .route("/v1/auth/signup", post(signup.layer(quick.clone())))
        .route("/v1/auth/login", post(login.layer(quick.clone())))
        .route("/v1/auth/oauth/{provider}", get(oauth::start))
        .route(
            "/v1/auth/oauth/{provider}/callback",
            get(oauth::callback.layer(quick.clone())),
        )
        .route(
            "/v1/api-keys",
            post(create_key.layer(quick.clone())).get(list_keys.layer(quick.clone())),
        )
        .route("/v1/api-keys/{id}", delete(delete_key.layer(quick.clone())))
        .route(
            "/v1/sandboxes",
            post(create_sandbox).get(list_sandboxes.layer(quick.clone())),
        )
        .route(
            "/v1/sandboxes/{id}",
            get(get_sandbox.layer(quick.clone())).delete(destroy_sandbox),
        )
        .route("/v1/sandboxes/{id}/exec", post(exec))
        .route("/v1/sandboxes/{id}/exec/stream", get(exec_stream))
        .route("/v1/sandboxes/{id}/ping", post(ping.layer(quick.clone())))
        .route("/v1/sandboxes/{id}/pause", post(pause))
        .route("/v1/sandboxes/{id}/resume", post(resume))
        .route(
            "/v1/sandboxes/{id}/files/write",
            post(files_write).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/sandboxes/{id}/files/read", post(files_read))
        .route(
            "/v1/sandboxes/{id}/files/stream/write",
            post(files_stream_write).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/sandboxes/{id}/files/stream/read", post(files_read))
        .route(
            "/v1/snapshots",
            post(create_snapshot).get(list_snapshots.layer(quick)),
        )
        .route("/v1/snapshots/{name}", delete(delete_snapshot))
        .merge(capsule_observe::routes(&app))
        .merge(capsules::routes(&app))
        .merge(capsule_commands::routes())
        .merge(capsule_pty::routes())
        .merge(proxy::routes())
        .merge(hosts_join::routes())
        .merge(session::routes())
        .fallback(console::fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits::MAX_JSON_BODY))
        .layer(axum::middleware::from_fn(capsules::sdk_error_codes))
        // A request whose Host names a capsule's port is the proxy's, whatever its path.
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            proxy::by_host,
        ))
        .layer(CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                ApiError::Internal("request handler panicked".into()).into_response()
            },
        ))
        // Outermost, so the request id, span, log line and metrics cover every answer.
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            observe::observe,
        ))
        .with_state(app)
}

type Res<T> = Result<T, ApiError>;

/// Answers `504 timeout` when the request takes longer than `cfg.request_timeout` (for the
/// quick routes only).
async fn deadline(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(app.cfg.request_timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

async fn route_not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().chars().take(200).collect())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn openapi() -> impl IntoResponse {
    ([("content-type", "application/yaml")], OPENAPI_YAML)
}

/// `GET /metrics`: unauthenticated, Prometheus text format 0.0.4.
async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [("content-type", CONTENT_TYPE_TEXT)],
        app.metrics_text().await,
    )
}

// ----- auth -----

async fn signup(
    State(app): State<Arc<App>>,
    ClientAddr(client): ClientAddr,
    JsonBody(req): JsonBody<api::SignupRequest>,
) -> Res<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(app.signup(req, client).await?)))
}

async fn login(
    State(app): State<Arc<App>>,
    ClientAddr(client): ClientAddr,
    JsonBody(req): JsonBody<api::LoginRequest>,
) -> Res<impl IntoResponse> {
    Ok(Json(app.login(req, client).await?))
}

// ----- API keys -----

async fn create_key(
    State(app): State<Arc<App>>,
    User(claims): User,
    OptionalJson(req): OptionalJson<api::CreateApiKeyRequest>,
) -> Res<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(app.create_api_key(&claims, req).await?),
    ))
}

async fn list_keys(State(app): State<Arc<App>>, User(claims): User) -> Res<impl IntoResponse> {
    Ok(Json(app.list_api_keys(&claims).await?))
}

async fn delete_key(
    State(app): State<Arc<App>>,
    User(claims): User,
    PathArg(id): PathArg,
) -> Res<StatusCode> {
    app.delete_api_key(&claims, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- sandboxes -----

async fn create_sandbox(
    State(app): State<Arc<App>>,
    Team(team): Team,
    OptionalJson(req): OptionalJson<api::CreateSandboxRequest>,
) -> Res<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(app.create_sandbox(&team, req).await?),
    ))
}

async fn list_sandboxes(State(app): State<Arc<App>>, Team(team): Team) -> Res<impl IntoResponse> {
    Ok(Json(app.list_sandboxes(&team).await?))
}

async fn get_sandbox(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
) -> Res<impl IntoResponse> {
    let id = sandbox_id(id)?;
    Ok(Json(app.get_sandbox(&team, &id).await?))
}

async fn destroy_sandbox(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
) -> Res<StatusCode> {
    let id = sandbox_id(id)?;
    app.destroy_sandbox(&team, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn exec(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
    JsonBody(req): JsonBody<api::ExecRequest>,
) -> Res<impl IntoResponse> {
    let id = sandbox_id(id)?;
    Ok(Json(app.exec(&team, &id, req).await?))
}

async fn ping(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
) -> Res<StatusCode> {
    let id = sandbox_id(id)?;
    app.ping(&team, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
) -> Res<impl IntoResponse> {
    let id = sandbox_id(id)?;
    Ok(Json(app.pause(&team, &id).await?))
}

async fn resume(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
) -> Res<impl IntoResponse> {
    let id = sandbox_id(id)?;
    Ok(Json(app.resume(&team, &id).await?))
}

// ----- exec stream -----

async fn exec_stream(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Res<Response> {
    let id = sandbox_id(id)?;
    // 404 and 409 come before the upgrade, as plain HTTP answers.
    let sb = app.running(&team, &id).await?;
    let ws = ws.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let slot = app.exec_slot(&sb)?;
    let session = app.open_exec_stream(&sb).await?;
    Ok(ws
        .max_message_size(limits::MAX_JSON_BODY)
        .max_frame_size(limits::MAX_JSON_BODY)
        .on_upgrade(move |socket| proxy_exec(socket, session, app, sb, slot)))
}

/// Forwards client messages to the agent and events back ([`wrenn_agent_api::relay_exec_mapped`])
/// until the process exits or either side goes away (a client that takes no event for the
/// configured stall time is disconnected); keeps the sandbox marked active meanwhile and holds
/// `slot` (one of the sandbox's and team's concurrent execs) until the end.
async fn proxy_exec(
    socket: WebSocket,
    session: ExecSession,
    app: Arc<App>,
    sb: SandboxRecord,
    slot: crate::app::ExecSlot,
) {
    let _slot = slot;
    // An error event is the agent's words: stripped of the host's details.
    let stall = app.cfg.exec_limits.stream_stall;
    let relay = wrenn_agent_api::relay_exec_mapped(
        socket,
        session,
        |m| match m {
            ServerMessage::Error { data } => ServerMessage::Error {
                data: crate::redact::for_tenant(&data),
            },
            m => m,
        },
        stall,
    );
    tokio::pin!(relay);
    let mut keepalive = tokio::time::interval(app.activity_period(&sb));
    keepalive.tick().await;
    loop {
        tokio::select! {
            () = &mut relay => break,
            _ = keepalive.tick() => app.stream_activity(&sb).await,
        }
    }
    app.stream_activity(&sb).await;
}

// ----- files -----

fn multipart_rejection(r: MultipartRejection) -> ApiError {
    ApiError::UnsupportedMediaType(format!("expected multipart/form-data: {}", r.body_text()))
}

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(e.body_text())
    } else {
        ApiError::BadRequest(format!("malformed multipart body: {}", e.body_text()))
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Reads a small text field (the destination path).
async fn small_text(field: &mut Field<'_>) -> Res<String> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        buf.extend_from_slice(&chunk);
        if buf.len() > limits::MAX_PATH_BYTES {
            return Err(ApiError::BadRequest("path too long".into()));
        }
    }
    String::from_utf8(buf).map_err(|_| ApiError::BadRequest("path is not UTF-8".into()))
}

/// `files/write`: the file is collected (up to the configured limit) and then sent.
async fn files_write(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
    headers: HeaderMap,
    mp: Result<Multipart, MultipartRejection>,
) -> Res<StatusCode> {
    let id = sandbox_id(id)?;
    let limit = app.cfg.max_upload_bytes;
    let sb = app.running(&team, &id).await?;
    if content_length(&headers).is_some_and(|n| n > limit + MULTIPART_SLACK) {
        return Err(ApiError::too_large(limit));
    }
    let mut mp = mp.map_err(multipart_rejection)?;
    let mut path = None;
    let mut data: Option<Vec<u8>> = None;
    while let Some(mut field) = mp.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("path") => path = Some(small_text(&mut field).await?),
            Some("file") => {
                let mut buf = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    if buf.len() as u64 + chunk.len() as u64 > limit {
                        return Err(ApiError::too_large(limit));
                    }
                    buf.extend_from_slice(&chunk);
                }
                data = Some(buf);
            }
            _ => {}
        }
    }
    let path = path.ok_or_else(|| ApiError::BadRequest("missing form field `path`".into()))?;
    let data = data.ok_or_else(|| ApiError::BadRequest("missing form field `file`".into()))?;
    let agent = app.file_target(&sb, &path).await?;
    let body: ByteStream = Box::pin(futures_util::stream::once(async move {
        Ok::<_, std::io::Error>(Bytes::from(data))
    }));
    agent.write_file(&sb.id, &path, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `files/stream/write`: the `file` field's chunks go straight into the agent request as
/// they arrive; at most [`UPLOAD_CHANNEL`] chunks are held at once. The `path` field must
/// come first.
async fn files_stream_write(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
    mp: Result<Multipart, MultipartRejection>,
) -> Res<StatusCode> {
    let id = sandbox_id(id)?;
    let limit = app.cfg.max_stream_upload_bytes;
    let sb = app.running(&team, &id).await?;
    let mut mp = mp.map_err(multipart_rejection)?;
    let mut path = None;
    let mut written = false;
    while let Some(mut field) = mp.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("path") => path = Some(small_text(&mut field).await?),
            Some("file") if !written => {
                let path = path.clone().ok_or_else(|| {
                    ApiError::BadRequest("form field `path` must come before `file`".into())
                })?;
                let agent = app.file_target(&sb, &path).await?;
                let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(UPLOAD_CHANNEL);
                let body: ByteStream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async {
                    rx.recv().await.map(|item| (item, rx))
                }));
                let pump = async move {
                    let mut total = 0u64;
                    loop {
                        match field.chunk().await {
                            Ok(Some(chunk)) => {
                                total += chunk.len() as u64;
                                if total > limit {
                                    let _ = tx.send(Err(std::io::Error::other("too large"))).await;
                                    return Err(ApiError::too_large(limit));
                                }
                                if tx.send(Ok(chunk)).await.is_err() {
                                    // The agent request ended early; its error says why.
                                    return Ok(());
                                }
                            }
                            Ok(None) => return Ok(()),
                            Err(e) => {
                                let _ = tx.send(Err(std::io::Error::other("upload broken"))).await;
                                return Err(multipart_error(e));
                            }
                        }
                    }
                };
                let (sent, pumped) = tokio::join!(agent.write_file(&sb.id, &path, body), pump);
                pumped?;
                sent?;
                written = true;
            }
            _ => {}
        }
    }
    if !written {
        return Err(ApiError::BadRequest(
            "missing form fields `path` and `file`".into(),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `files/read` and `files/stream/read`: the agent's bytes are streamed through.
async fn files_read(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(id): PathArg,
    JsonBody(req): JsonBody<api::ReadFileRequest>,
) -> Res<Response> {
    let id = sandbox_id(id)?;
    let stream = app.read_file(&team, &id, &req.path).await?;
    Ok((
        [("content-type", "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}

// ----- snapshots -----

#[derive(Deserialize)]
struct SnapshotQuery {
    overwrite: Option<String>,
}

async fn create_snapshot(
    State(app): State<Arc<App>>,
    Team(team): Team,
    QueryArgs(q): QueryArgs<SnapshotQuery>,
    JsonBody(req): JsonBody<api::CreateSnapshotRequest>,
) -> Res<impl IntoResponse> {
    let overwrite = match q.overwrite.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::BadRequest("overwrite must be true".into())),
    };
    Ok((
        StatusCode::CREATED,
        Json(app.create_snapshot(&team, req, overwrite).await?),
    ))
}

#[derive(Deserialize)]
struct TypeQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
}

async fn list_snapshots(
    State(app): State<Arc<App>>,
    Team(team): Team,
    QueryArgs(q): QueryArgs<TypeQuery>,
) -> Res<impl IntoResponse> {
    Ok(Json(app.list_templates(&team, q.kind.as_deref()).await?))
}

async fn delete_snapshot(
    State(app): State<Arc<App>>,
    Team(team): Team,
    PathArg(name): PathArg,
) -> Res<StatusCode> {
    let name = template_name(name)?;
    app.delete_template(&team, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
