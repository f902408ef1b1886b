//! Serves any [`HostAgent`] (in practice the [`super::sim::SimAgent`]) over the host agent's
//! internal HTTP API, routes and auth exactly as documented in `wrenn_types::agent`. Tests
//! use it to drive the real [`super::http::HttpAgent`] client end to end — its streaming
//! upload and download, its WebSocket proxying and its error decoding — without VMs.

use super::{AgentError, HostAgent};
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::{StreamExt, TryStreamExt};
use serde::Deserialize;
use std::sync::Arc;
use wrenn_types::agent::{codes, CreateSandbox, SnapshotRequest};
use wrenn_types::envd::ExecRequest;
use wrenn_types::stream::{ClientMessage, ServerMessage};
use wrenn_types::ErrorBody;

#[derive(Clone)]
struct Ctx {
    agent: Arc<dyn HostAgent>,
    token: Arc<str>,
}

struct Failure(AgentError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, code, message) = match self.0 {
            AgentError::Api {
                status,
                code,
                message,
            } => (status, code, message),
            other => (500, codes::INTERNAL.to_string(), other.to_string()),
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody::new(code, message))).into_response()
    }
}

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Self {
        Failure(e)
    }
}

type Res<T> = Result<T, Failure>;

/// The agent API router for `agent`, accepting only `Authorization: Bearer <token>`.
pub fn router(agent: Arc<dyn HostAgent>, token: &str) -> Router {
    let ctx = Ctx {
        agent,
        token: token.into(),
    };
    Router::new()
        .route("/v1/host", get(host))
        .route("/v1/sandboxes", get(list).post(create))
        .route("/v1/sandboxes/{id}", get(one).delete(destroy))
        .route("/v1/sandboxes/{id}/pause", post(pause))
        .route("/v1/sandboxes/{id}/resume", post(resume))
        .route("/v1/sandboxes/{id}/snapshot", post(snapshot))
        .route("/v1/sandboxes/{id}/exec", post(exec))
        .route("/v1/sandboxes/{id}/exec/stream", get(exec_stream))
        .route("/v1/sandboxes/{id}/files", get(read_file).put(write_file))
        .route("/v1/templates", get(templates))
        .route("/v1/templates/{name}", delete(delete_template))
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), auth))
        .with_state(ctx)
}

async fn auth(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == &*ctx.token);
    if !ok {
        return Failure(AgentError::api(401, codes::UNAUTHORIZED, "bad agent token"))
            .into_response();
    }
    next.run(req).await
}

async fn host(State(c): State<Ctx>) -> Res<impl IntoResponse> {
    Ok(Json(c.agent.host_info().await?))
}

async fn list(State(c): State<Ctx>) -> Res<impl IntoResponse> {
    Ok(Json(c.agent.list_sandboxes().await?))
}

async fn create(State(c): State<Ctx>, Json(req): Json<CreateSandbox>) -> Res<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(c.agent.create(&req).await?)))
}

async fn one(State(c): State<Ctx>, Path(id): Path<String>) -> Res<impl IntoResponse> {
    let all = c.agent.list_sandboxes().await?;
    let sb = all
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| AgentError::api(404, codes::NOT_FOUND, format!("sandbox {id} not found")))?;
    Ok(Json(sb))
}

async fn destroy(State(c): State<Ctx>, Path(id): Path<String>) -> Res<StatusCode> {
    c.agent.destroy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(State(c): State<Ctx>, Path(id): Path<String>) -> Res<impl IntoResponse> {
    Ok(Json(c.agent.pause(&id).await?))
}

async fn resume(State(c): State<Ctx>, Path(id): Path<String>) -> Res<impl IntoResponse> {
    Ok(Json(c.agent.resume(&id).await?))
}

async fn snapshot(
    State(c): State<Ctx>,
    Path(id): Path<String>,
    Json(req): Json<SnapshotRequest>,
) -> Res<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(c.agent.snapshot(&id, &req).await?),
    ))
}

async fn exec(
    State(c): State<Ctx>,
    Path(id): Path<String>,
    Json(req): Json<ExecRequest>,
) -> Res<impl IntoResponse> {
    Ok(Json(c.agent.exec(&id, &req).await?))
}

async fn exec_stream(
    State(c): State<Ctx>,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> Res<Response> {
    let session = c.agent.exec_stream(&id).await?;
    Ok(ws.on_upgrade(move |socket| pump(socket, session)))
}

async fn pump(socket: WebSocket, mut session: super::ExecSession) {
    let (mut sink, mut stream) = socket.split();
    use futures_util::SinkExt;
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    match serde_json::from_str::<ClientMessage>(t.as_str()) {
                        Ok(m) => { if session.to_agent.send(m).await.is_err() { break; } }
                        Err(e) => {
                            let m = ServerMessage::Error { data: format!("bad message: {e}") };
                            let _ = sink.send(Message::Text(json(&m).into())).await;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            event = session.from_agent.recv() => match event {
                Some(m) => {
                    let last = matches!(m, ServerMessage::Exit { .. });
                    if sink.send(Message::Text(json(&m).into())).await.is_err() { break; }
                    if last { let _ = sink.send(Message::Close(None)).await; break; }
                }
                None => { let _ = sink.send(Message::Close(None)).await; break; }
            },
        }
    }
}

fn json(m: &ServerMessage) -> String {
    serde_json::to_string(m).unwrap_or_else(|_| r#"{"type":"error","data":"encode"}"#.into())
}

#[derive(Deserialize)]
struct PathQuery {
    path: String,
}

async fn write_file(
    State(c): State<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
    body: Body,
) -> Res<StatusCode> {
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    c.agent.write_file(&id, &q.path, Box::pin(stream)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn read_file(
    State(c): State<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> Res<Response> {
    let stream = c.agent.read_file(&id, &q.path).await?;
    Ok((
        [("content-type", "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn templates(State(c): State<Ctx>) -> Res<impl IntoResponse> {
    Ok(Json(c.agent.list_templates().await?))
}

async fn delete_template(State(c): State<Ctx>, Path(name): Path<String>) -> Res<StatusCode> {
    c.agent.delete_template(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
