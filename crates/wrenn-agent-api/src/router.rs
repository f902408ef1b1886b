//! [`router`]: any [`HostAgent`] served over HTTP. Each handler parses, makes one trait call
//! and writes the answer; errors are written by [`AgentApiError`]'s one mapping.

use crate::{paths, AgentApiError, ExecSession, HostAgent};
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use wrenn_types::agent::{AgentErrorCode, CreateSandbox, FileQuery, SnapshotRequest};
use wrenn_types::envd::ExecRequest;
use wrenn_types::stream::{ClientMessage, ServerMessage};

type Agent = State<Arc<dyn HostAgent>>;
type Answer<T> = Result<T, AgentApiError>;

/// The agent API for `agent`, answering only requests with `Authorization: Bearer <token>`.
pub fn router(agent: Arc<dyn HostAgent>, token: &str) -> Router {
    let token: Arc<str> = token.into();
    Router::new()
        .route(paths::HOST, get(host_info))
        .route(paths::SANDBOXES, get(list_sandboxes).post(create))
        .route(paths::SANDBOX, get(get_sandbox).delete(destroy))
        .route(paths::PAUSE, post(pause))
        .route(paths::RESUME, post(resume))
        .route(paths::SNAPSHOT, post(snapshot))
        .route(paths::EXEC, post(exec))
        .route(paths::EXEC_STREAM, get(exec_stream))
        .route(paths::FILES, get(read_file).put(write_file))
        .route(paths::TEMPLATES, get(list_templates))
        .route(paths::TEMPLATE, delete(delete_template))
        .fallback(|| async { AgentApiError::new(AgentErrorCode::NotFound, "no such route") })
        .layer(middleware::from_fn_with_state(token, auth))
        .with_state(agent)
}

/// Compares the bearer token in constant time.
async fn auth(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| bool::from(t.as_bytes().ct_eq(token.as_bytes())));
    if !ok {
        let e = AgentApiError::new(AgentErrorCode::Unauthorized, "missing or wrong agent token");
        return e.into_response();
    }
    next.run(req).await
}

/// A JSON body whose rejection is a `bad_request` in the agent's error body.
struct JsonBody<T>(T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AgentApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AgentApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(AgentApiError::new(
                AgentErrorCode::BadRequest,
                e.body_text(),
            )),
        }
    }
}

async fn host_info(State(a): Agent) -> Answer<impl IntoResponse> {
    Ok(Json(a.host_info().await?))
}

async fn list_sandboxes(State(a): Agent) -> Answer<impl IntoResponse> {
    Ok(Json(a.list_sandboxes().await?))
}

async fn create(State(a): Agent, JsonBody(req): JsonBody<CreateSandbox>) -> Answer<Response> {
    Ok((StatusCode::CREATED, Json(a.create(&req).await?)).into_response())
}

async fn get_sandbox(State(a): Agent, Path(id): Path<String>) -> Answer<impl IntoResponse> {
    Ok(Json(a.get_sandbox(&id).await?))
}

async fn destroy(State(a): Agent, Path(id): Path<String>) -> Answer<StatusCode> {
    a.destroy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(State(a): Agent, Path(id): Path<String>) -> Answer<impl IntoResponse> {
    Ok(Json(a.pause(&id).await?))
}

async fn resume(State(a): Agent, Path(id): Path<String>) -> Answer<impl IntoResponse> {
    Ok(Json(a.resume(&id).await?))
}

async fn snapshot(
    State(a): Agent,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<SnapshotRequest>,
) -> Answer<Response> {
    Ok((StatusCode::CREATED, Json(a.snapshot(&id, &req).await?)).into_response())
}

async fn exec(
    State(a): Agent,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ExecRequest>,
) -> Answer<impl IntoResponse> {
    Ok(Json(a.exec(&id, &req).await?))
}

/// The session is opened before the upgrade, so a missing or stopped sandbox is an ordinary
/// error answer.
async fn exec_stream(
    State(a): Agent,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> Answer<Response> {
    let session = a.exec_stream(&id).await?;
    Ok(ws.on_upgrade(move |socket| pump(socket, session)))
}

/// Moves messages between the client's socket and the session until either ends; the socket
/// is closed after the `exit` event.
async fn pump(socket: WebSocket, mut session: ExecSession) {
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    match serde_json::from_str::<ClientMessage>(t.as_str()) {
                        Ok(m) => {
                            if session.to_agent.send(m).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            let m = ServerMessage::Error { data: format!("bad message: {e}") };
                            let _ = sink.send(Message::Text(event_text(&m).into())).await;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            event = session.from_agent.recv() => match event {
                Some(m) => {
                    let last = matches!(m, ServerMessage::Exit { .. });
                    if sink.send(Message::Text(event_text(&m).into())).await.is_err() {
                        break;
                    }
                    if last {
                        let _ = sink.send(Message::Close(None)).await;
                        break;
                    }
                }
                None => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
            },
        }
    }
}

fn event_text(m: &ServerMessage) -> String {
    serde_json::to_string(m).unwrap_or_else(|_| r#"{"type":"error","data":"encode"}"#.into())
}

async fn write_file(
    State(a): Agent,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
    body: Body,
) -> Answer<StatusCode> {
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    a.write_file(&id, &q.path, Box::pin(stream)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn read_file(
    State(a): Agent,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
) -> Answer<Response> {
    let file = a.read_file_body(&id, &q.path).await?;
    let mut resp = Body::from_stream(file.stream).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = file.len {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok(resp)
}

async fn list_templates(State(a): Agent) -> Answer<impl IntoResponse> {
    Ok(Json(a.list_templates().await?))
}

async fn delete_template(State(a): Agent, Path(name): Path<String>) -> Answer<StatusCode> {
    a.delete_template(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ByteStream, FileBody};
    use async_trait::async_trait;
    use tower::ServiceExt;
    use wrenn_types::agent::{Accel, HostInfo, SandboxInfo, TemplateInfo};
    use wrenn_types::envd::ExecResponse;

    /// Answers `host_info`; every sandbox is missing.
    struct Empty;

    fn missing() -> AgentApiError {
        AgentApiError::new(AgentErrorCode::NotFound, "sandbox x not found")
    }

    #[async_trait]
    impl HostAgent for Empty {
        async fn host_info(&self) -> Result<HostInfo, AgentApiError> {
            Ok(HostInfo {
                accel: Accel::Tcg,
                cpus: 1,
                total_memory_mb: 1,
                free_memory_mb: 1,
                running: 0,
                paused: 0,
                templates: vec![],
            })
        }
        async fn list_sandboxes(&self) -> Result<Vec<SandboxInfo>, AgentApiError> {
            Ok(vec![])
        }
        async fn create(&self, _: &CreateSandbox) -> Result<SandboxInfo, AgentApiError> {
            Err(AgentApiError::new(AgentErrorCode::Capacity, "full"))
        }
        async fn get_sandbox(&self, _: &str) -> Result<SandboxInfo, AgentApiError> {
            Err(missing())
        }
        async fn destroy(&self, _: &str) -> Result<(), AgentApiError> {
            Err(missing())
        }
        async fn pause(&self, _: &str) -> Result<SandboxInfo, AgentApiError> {
            Err(missing())
        }
        async fn resume(&self, _: &str) -> Result<SandboxInfo, AgentApiError> {
            Err(missing())
        }
        async fn snapshot(
            &self,
            _: &str,
            _: &SnapshotRequest,
        ) -> Result<TemplateInfo, AgentApiError> {
            Err(missing())
        }
        async fn exec(&self, _: &str, _: &ExecRequest) -> Result<ExecResponse, AgentApiError> {
            Err(AgentApiError::Transport("envd gone".into()))
        }
        async fn exec_stream(&self, _: &str) -> Result<ExecSession, AgentApiError> {
            Err(missing())
        }
        async fn write_file(&self, _: &str, _: &str, _: ByteStream) -> Result<(), AgentApiError> {
            Err(missing())
        }
        async fn read_file_body(&self, _: &str, _: &str) -> Result<FileBody, AgentApiError> {
            Err(missing())
        }
        async fn list_templates(&self) -> Result<Vec<TemplateInfo>, AgentApiError> {
            Ok(vec![])
        }
        async fn delete_template(&self, _: &str) -> Result<(), AgentApiError> {
            Err(missing())
        }
    }

    const TOKEN: &str = "abc";

    async fn call(method: &str, path: &str, bearer: Option<&str>, body: &str) -> (u16, String) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = router(Arc::new(Empty), TOKEN)
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    fn code_of(body: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["error"]["code"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn only_the_exact_token_passes() {
        assert_eq!(call("GET", paths::HOST, Some("abc"), "").await.0, 200);
        for wrong in [Some("abd"), Some("abcd"), Some("ab"), None] {
            let (status, body) = call("GET", paths::HOST, wrong, "").await;
            assert_eq!((status, code_of(&body).as_str()), (401, "unauthorized"));
        }
        let (status, body) = call("GET", "/v1/nowhere", None, "").await;
        assert_eq!((status, code_of(&body).as_str()), (401, "unauthorized"));
    }

    #[tokio::test]
    async fn errors_are_written_with_their_status_and_code() {
        let (status, body) = call("GET", "/v1/nowhere", Some(TOKEN), "").await;
        assert_eq!((status, code_of(&body).as_str()), (404, "not_found"));
        let (status, body) = call("POST", paths::SANDBOXES, Some(TOKEN), "{").await;
        assert_eq!((status, code_of(&body).as_str()), (400, "bad_request"));
        let create = r#"{"id":"a","template":"t","vcpus":1,"memory_mb":128}"#;
        let (status, body) = call("POST", paths::SANDBOXES, Some(TOKEN), create).await;
        assert_eq!((status, code_of(&body).as_str()), (503, "capacity"));
        let exec = r#"{"cmd":"true"}"#;
        let (status, body) = call("POST", &paths::fill(paths::EXEC, "a"), Some(TOKEN), exec).await;
        assert_eq!((status, code_of(&body).as_str()), (500, "internal"));
        let (status, body) =
            call("DELETE", &paths::fill(paths::SANDBOX, "x"), Some(TOKEN), "").await;
        assert_eq!(status, 404);
        assert_eq!(
            body,
            r#"{"error":{"code":"not_found","message":"sandbox x not found"}}"#
        );
    }
}
